"""tsmixit.data.render: rendered rows equal the hand-computed sum of their parts, in every
window and at microphone 0 alone."""

import numpy as np
import pytest

from conftest import pcm_noise, write_pcm16
from tsmixit.data import render
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ManifestError


def test_rendered_rows_equal_the_hand_computed_sum(tmp_path):
    a, b, n = pcm_noise(50, seed=1)[0], pcm_noise(40, seed=2)[0], pcm_noise(70, seed=3)[0]
    write_pcm16(tmp_path / "utt" / "a.flac", a[None])
    write_pcm16(tmp_path / "utt" / "b.flac", b[None])
    write_pcm16(tmp_path / "utt" / "n.flac", n[None])
    rirs = np.random.default_rng(4).normal(size=(2, 3, 6)).astype(np.float32)  # 2 rooms, 3 mics
    np.savez(tmp_path / "rooms.npz", rirs=rirs)
    T = 60
    parts = [
        {"audio": "utt/a.flac", "offset": 5, "gain": 0.7, "role": "source", "rir": 1},
        {"audio": "utt/b.flac", "offset": -3, "gain": 1.3, "role": "source", "rir": 0},
        {"audio": "utt/n.flac", "offset": 0, "gain": 0.1, "role": "noise", "rir": 1},
    ]
    row = {"id": "r", "split": "test", "labelled": True, "sample_rate": 8000, "channels": 3,
           "num_frames": T, "n_speakers": 2, "parts": parts, "rooms": "rooms.npz"}
    Manifest([row], root=tmp_path).save(tmp_path / "manifest.jsonl")
    manifest = Manifest.load(tmp_path / "manifest.jsonl")

    def image(x, rir, gain, offset):
        out = np.zeros((3, T))
        for c in range(3):
            full = gain * np.convolve(x.astype(np.float64), rirs[rir, c].astype(np.float64))
            for t, v in enumerate(full):
                if 0 <= t + offset < T:
                    out[c, t + offset] = v
        return out

    ia, ib, inoise = image(a, 1, 0.7, 5), image(b, 0, 1.3, -3), image(n, 1, 0.1, 0)
    mixture = manifest.load_mixture(0)
    sources = manifest.load_sources(0)
    assert mixture.shape == (3, T) and mixture.dtype == np.float32
    np.testing.assert_allclose(mixture, ia + ib + inoise, atol=1e-6)
    np.testing.assert_allclose(sources, np.stack([ia[0], ib[0]]), atol=1e-6)
    # A window renders only the input samples that reach it: every window, both ends included,
    # equals the hand-computed sum there, and so do mic 0 alone and the (mixture, sources) pair.
    expected_sources = np.stack([ia[0], ib[0]])
    for start in range(0, T, 7):
        for frames in (1, 6, 13, T - start):
            frames = min(frames, T - start)
            window = slice(start, start + frames)
            np.testing.assert_allclose(manifest.load_mixture(0, start, frames),
                                       (ia + ib + inoise)[:, window], atol=1e-6)
            x0, s = manifest.load_example(0, False, start, frames, reference_only=True)
            np.testing.assert_allclose(x0, (ia + ib + inoise)[:1, window], atol=1e-6)
            np.testing.assert_allclose(s, expected_sources[:, window], atol=1e-6)


def test_rendered_row_without_rir_is_the_same_on_every_microphone(tmp_path):
    a = pcm_noise(30, seed=5)[0]
    write_pcm16(tmp_path / "a.flac", a[None])
    row = {"id": "r", "split": "train", "labelled": False, "sample_rate": 8000, "channels": 2,
           "num_frames": 40, "n_speakers": 1, "rooms": None,
           "parts": [{"audio": "a.flac", "offset": 4, "gain": 2.0, "role": "source",
                      "rir": None}]}
    manifest = Manifest([row], root=tmp_path)
    expected = np.zeros(40)
    expected[4:34] = 2.0 * a
    np.testing.assert_allclose(manifest.load_mixture(0), np.stack([expected] * 2), atol=1e-7)
    with pytest.raises(ManifestError, match="unlabelled"):
        manifest.load_sources(0)
    np.testing.assert_allclose(manifest.load_sources(0, allow_unlabelled=True)[0], expected)


def test_rendered_row_with_pseudo_target_files_reads_those_files(tmp_path):
    a = pcm_noise(30, seed=5)
    write_pcm16(tmp_path / "a.flac", a)
    targets = [write_pcm16(tmp_path / f"pseudo{k}.wav", pcm_noise(30, seed=k)) for k in (7, 8)]
    row = {"id": "r", "split": "train", "labelled": False, "sample_rate": 8000, "channels": 1,
           "num_frames": 30, "n_speakers": 2, "rooms": None,
           "sources": [str(t) for t in targets],
           "parts": [{"audio": "a.flac", "offset": 0, "gain": 1.0, "role": "source",
                      "rir": None}]}
    manifest = Manifest([row], root=tmp_path)
    np.testing.assert_array_equal(manifest.load_mixture(0), a)
    pseudo = np.concatenate([pcm_noise(30, seed=7), pcm_noise(30, seed=8)])  # (2, 30)
    np.testing.assert_array_equal(manifest.load_sources(0, allow_unlabelled=True, start=3),
                                  pseudo[:, 3:])
    # The (mixture, sources) pair too: the pseudo-targets, never the row's own parts.
    mixture, sources = manifest.load_example(0, allow_unlabelled=True, start=3, frames=20)
    np.testing.assert_array_equal(mixture, a[:, 3:23])
    np.testing.assert_array_equal(sources, pseudo[:, 3:23])



def test_reference_only_convolves_mic_0_alone_and_equals_rendering_every_mic(tmp_path,
                                                                              monkeypatch):
    C, T = 4, 3000
    write_pcm16(tmp_path / "a.flac", pcm_noise(2500, seed=1))
    write_pcm16(tmp_path / "b.flac", pcm_noise(2000, seed=2))
    write_pcm16(tmp_path / "n.flac", pcm_noise(3200, C, seed=3))  # one channel per mic
    rirs = np.random.default_rng(4).normal(scale=0.1, size=(2, C, 300)).astype(np.float32)
    np.savez(tmp_path / "rooms.npz", rirs=rirs)
    parts = [
        {"audio": "a.flac", "offset": 200, "gain": 0.7, "role": "source", "rir": 1},
        {"audio": "b.flac", "offset": -150, "gain": 1.3, "role": "source", "rir": 0},
        {"audio": "n.flac", "offset": 0, "gain": 0.1, "role": "noise", "rir": None},
        {"audio": "a.flac", "offset": 900, "gain": 0.2, "role": "noise", "rir": None},
    ]
    row = {"id": "r", "split": "test", "labelled": True, "sample_rate": 8000, "channels": C,
           "num_frames": T, "n_speakers": 2, "parts": parts, "rooms": "rooms.npz"}
    manifest = Manifest([row], root=tmp_path)
    convolved = []  # microphones of every RIR convolved
    real = render.fftconvolve

    def spy(audio, rir, **kwargs):
        convolved.append(rir.shape[0])
        return real(audio, rir, **kwargs)

    monkeypatch.setattr(render, "fftconvolve", spy)
    for start, frames in ((0, None), (123, 1000), (2500, 500), (0, 1)):
        every = manifest.load_mixture(0, start, frames)  # (C, frames)
        convolved.clear()
        mic0 = manifest.load_mixture(0, start, frames, reference_only=True)
        assert convolved and set(convolved) == {1}  # microphone 0's RIR only
        assert every.shape[0] == C and mic0.shape == (1, every.shape[1])
        np.testing.assert_array_equal(mic0, every[:1])  # bit-identical
        x0, s0 = manifest.load_example(0, False, start, frames, reference_only=True)
        x, s = manifest.load_example(0, False, start, frames)
        np.testing.assert_array_equal(x0, x[:1])
        np.testing.assert_array_equal(s0, s)
        np.testing.assert_array_equal(s0, manifest.load_sources(0, start=start, frames=frames))
    convolved.clear()
    manifest.load_mixture(0)
    assert set(convolved) == {C}
