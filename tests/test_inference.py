"""Inference: the Separator and the chunked separation of files (stitching, channel policy,
resampling and bad input)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from tsmixit.inference import (
    ChunkStitcher,
    Separator,
    align_to_previous,
    crossfade_windows,
    separate_files,
)
from tsmixit.models.conv_tasnet import ConvTasNet

SR = 8000


class HalfWaveSplit(nn.Module):
    """A separator that is an exact known operation: outputs the positive and the negative
    half-waves of x, [max(x, 0), min(x, 0)], swapped at random on each call. It acts per
    sample, so chunking can change only the output order: the stitched result must equal the
    one-pass result exactly once the order is aligned."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.hparams = {"n_sources": 2, "n_channels": 1}
        self.anchor = nn.Parameter(torch.zeros(()))
        self.gen = torch.Generator().manual_seed(seed)
        self.swaps: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 2, T)
        out = torch.stack([x.clamp_min(0.0), x.clamp_max(0.0)], dim=1)
        swap = bool(torch.rand((), generator=self.gen) < 0.5)
        self.swaps.append(swap)
        return out.flip(1) if swap else out


def _speechlike(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    return (0.3 * envelope * rng.standard_normal(t.size)).astype(np.float32)


def _read(path) -> np.ndarray:
    data, _ = sf.read(path, dtype="float32")
    return data


def _assert_matches_either_order(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    errors = [np.abs(got - want[order]).max() for order in ([0, 1], [1, 0])]
    assert min(errors) < atol, errors


def test_crossfade_windows_sum_to_one():
    fade_in, fade_out = crossfade_windows(101)
    np.testing.assert_allclose(fade_in + fade_out, 1.0, atol=1e-6)
    assert fade_in[0] < 1e-3 and fade_in[-1] > 1 - 1e-3


def test_align_to_previous_finds_permutation():
    rng = np.random.default_rng(1)
    prev = rng.standard_normal((3, 400))
    head = prev[[2, 0, 1]] + 0.1 * rng.standard_normal((3, 400))
    perm = align_to_previous(prev, head)
    np.testing.assert_array_equal(perm, [1, 2, 0])  # head[perm[k]] continues prev[k]


def test_stitcher_equals_one_pass_and_buffer_is_bounded():
    x = _speechlike(7.3, SR)[None]  # (1, T)
    model = HalfWaveSplit(seed=3)

    def fn(chunk: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(chunk))[0].numpy()

    stitcher = ChunkStitcher(fn, chunk=SR, overlap=SR // 4)
    pieces, block = [], 700
    for start in range(0, x.shape[1], block):
        out = stitcher.push(x[:, start : start + block])
        if out.size:
            pieces.append(out)
        assert stitcher._buffered <= stitcher.chunk + stitcher.hop // 2 + block
    pieces.append(stitcher.finish())
    got = np.concatenate(pieces, axis=1)
    assert got.shape == (2, x.shape[1])
    assert stitcher.n_chunks >= 8
    assert any(model.swaps) and not all(model.swaps)  # the order really changed
    want = np.stack([np.maximum(x[0], 0), np.minimum(x[0], 0)])
    _assert_matches_either_order(got, want, atol=1e-6)


@pytest.mark.parametrize("file_sr", [SR, 16000])
def test_separate_files_chunked_equals_unchunked(tmp_path, file_sr):
    wav = _speechlike(12.0, file_sr, seed=file_sr)
    sf.write(tmp_path / "talk.flac", wav, file_sr, subtype="PCM_24")
    wav = _read(tmp_path / "talk.flac")
    whole = Separator(HalfWaveSplit(seed=9), SR, {}).separate(wav, file_sr)  # (2, T)
    separator = Separator(HalfWaveSplit(seed=5), SR, {})
    [result] = separate_files(separator, [tmp_path / "talk.flac"], tmp_path / "out",
                              chunk_seconds=2.0, overlap_seconds=0.5, progress=False)
    assert result["error"] is None and result["chunks"] >= 6
    assert any(separator.model.swaps) and not all(separator.model.swaps)
    got = np.stack([_read(p) for p in result["outputs"]])
    assert got.shape == (2, wav.size)
    assert sf.info(result["outputs"][0]).samplerate == file_sr
    _assert_matches_either_order(got, whole, atol=1e-5)
    log = [json.loads(line) for line in (tmp_path / "out" / "separation.jsonl").open()]
    assert log[0]["seconds"] == pytest.approx(12.0)
    assert log[0]["rtf"] == pytest.approx(log[0]["wall_seconds"] / 12.0)


def test_stereo_feeds_microphone_0_with_a_note(tmp_path):
    left, right = _speechlike(3.0, SR, 1), _speechlike(3.0, SR, 2)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], 1), SR, subtype="FLOAT")
    separator = Separator(HalfWaveSplit(), SR, {})
    [result] = separate_files(separator, [tmp_path], tmp_path / "out", progress=False)
    assert result["error"] is None
    assert "stereo.wav has 2 channels" in result["notes"][0]
    assert "fed microphone 0" in result["notes"][0]
    got = np.stack([_read(p) for p in result["outputs"]])
    # What training feeds a single-channel model: the reference microphone, not the average.
    _assert_matches_either_order(got, np.stack([np.maximum(left, 0), np.minimum(left, 0)]), 1e-6)


def test_short_file_with_conv_tasnet_equals_separator(tmp_path):
    wav = _speechlike(1.5, SR)
    sf.write(tmp_path / "a.wav", wav, SR, subtype="FLOAT")
    separator = Separator(ConvTasNet.from_preset("tiny"), SR, {})
    [result] = separate_files(separator, [tmp_path / "a.wav"], tmp_path / "out", progress=False)
    got = np.stack([_read(p) for p in result["outputs"]])
    np.testing.assert_allclose(got, separator.separate(wav, SR), atol=1e-5)


def test_bad_inputs_fail_one_by_one_and_the_rest_is_separated(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    sf.write(data / "good.wav", _speechlike(2.0, SR), SR, subtype="FLOAT")
    sf.write(data / "empty.wav", np.zeros(0, np.float32), SR)
    sf.write(data / "silent.wav", np.zeros(SR, np.float32), SR)
    nan = _speechlike(2.0, SR)
    nan[100] = np.nan
    sf.write(data / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(data / "short.wav", _speechlike(0.05, SR), SR, subtype="FLOAT")
    sf.write(data / "lowrate.wav", _speechlike(2.0, 4000), 4000, subtype="FLOAT")
    (data / "corrupt.wav").write_bytes(b"RIFF\x00\x01not really audio" * 10)
    (tmp_path / "nothing").mkdir()
    separator = Separator(HalfWaveSplit(), SR, {})
    results = separate_files(
        separator, [data, tmp_path / "nothing", tmp_path / "missing.wav"], tmp_path / "out",
        progress=False,
    )
    errors = {r["input"].rsplit("/", 1)[-1]: r["error"] for r in results}
    assert errors.pop("good.wav") is None
    expected = {
        "corrupt.wav": "cannot decode", "empty.wav": "empty", "lowrate.wav": "below the model",
        "nan.wav": "NaN", "short.wav": "at least", "silent.wav": "silent",
        "nothing": "no audio files", "missing.wav": "does not exist",
    }
    assert set(errors) == set(expected)
    for name, phrase in expected.items():
        assert phrase in errors[name], (name, errors[name])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good_s1.wav", "good_s2.wav", "separation.jsonl"
    ]


def test_multichannel_model_needs_its_channel_count(tmp_path):
    sf.write(tmp_path / "two.wav", np.stack([_speechlike(1.0, SR)] * 2, 1), SR, subtype="FLOAT")
    separator = Separator(ConvTasNet.from_preset("tiny", n_channels=4), SR, {})
    [result] = separate_files(separator, [tmp_path / "two.wav"], tmp_path / "o", progress=False)
    assert "4 microphone channels" in result["error"]


def test_separator_takes_the_bf16_path_where_it_pays_and_float32_when_switched_off(monkeypatch):
    """On a CPU with bfloat16 units (here pretended) Separator runs the bfloat16 inference
    path: not float32's bits, but an SNR above 35 dB against it (measured about 41 dB with
    these random weights); TSMIXIT_CPU_BF16=off gives the model's own float32 output."""
    from tsmixit.models import _cpu_kernels as ck

    monkeypatch.setattr(ck, "cpu_bf16_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(ck, "bf16_matmul_speedup", lambda: 3.0)
    monkeypatch.setattr(ck, "BF16_INFERENCE_MIN_CHANNELS", 1)  # tiny's H = 64 qualifies
    torch.manual_seed(0)
    separator = Separator(ConvTasNet.from_preset("tiny"), SR, {})
    wav = _speechlike(2.0, SR)
    with torch.inference_mode():
        want = separator.model(torch.from_numpy(wav)[None])[0].numpy()  # float32
    monkeypatch.setenv(ck.BF16_MODE_ENV, "auto")
    got = separator.separate(wav, SR)
    error = np.square(got - want).sum(-1) / np.square(want).sum(-1)
    assert (-10 * np.log10(error) > 35.0).all() and np.abs(got - want).max() > 1e-5
    monkeypatch.setenv(ck.BF16_MODE_ENV, "off")
    np.testing.assert_allclose(separator.separate(wav, SR), want, atol=1e-6)
