import numpy as np
import pytest
import soundfile as sf
import torch

from tsmixit import audio
from tsmixit.audio import (
    ResampleWarning,
    check_not_silent,
    model_channels,
    read_audio,
    resample,
    write_audio,
)
from tsmixit.errors import AudioError


def _noise(channels: int, frames: int, seed: int = 0, scale: float = 0.3) -> np.ndarray:
    return (scale * np.random.default_rng(seed).uniform(-1, 1, (channels, frames))).astype(
        np.float32
    )


def test_float_wav_round_trip_is_exact_and_flac_within_quantisation(tmp_path):
    wav = _noise(2, 1000)
    write_audio(tmp_path / "a.wav", wav, 8000, subtype="FLOAT")
    out, sr = read_audio(tmp_path / "a.wav")
    assert sr == 8000 and out.dtype == np.float32
    np.testing.assert_array_equal(out, wav)
    write_audio(tmp_path / "a.flac", wav[0], 16000)  # (T,) accepted, PCM_16
    out, sr = read_audio(tmp_path / "a.flac")
    assert sr == 16000 and out.shape == (1, 1000)
    assert np.abs(out[0] - wav[0]).max() <= 0.5 / 32768 + 1e-7


def test_channel_selection_mixdown_and_partial_read(tmp_path):
    wav = _noise(3, 500)
    sf.write(tmp_path / "m.wav", wav.T, 8000, subtype="FLOAT")
    picked, _ = read_audio(tmp_path / "m.wav", channels=[2, 0])
    np.testing.assert_array_equal(picked, wav[[2, 0]])
    mixed, _ = read_audio(tmp_path / "m.wav", channels="mix")
    np.testing.assert_allclose(mixed[0], wav.mean(axis=0), atol=1e-7)
    part, _ = read_audio(tmp_path / "m.wav", start=100, frames=50)
    np.testing.assert_array_equal(part, wav[:, 100:150])


def test_resample_matches_an_analytic_sine():
    t16 = np.arange(16000) / 16000
    t8 = np.arange(8000) / 8000
    out = resample(np.stack([np.sin(2 * np.pi * 440 * t16)]).astype(np.float32), 16000, 8000)
    assert out.shape == (1, 8000) and out.dtype == np.float32
    expected = np.sin(2 * np.pi * 440 * t8)
    assert np.abs(out[0, 200:-200] - expected[200:-200]).max() < 1e-3
    mono = resample(np.sin(2 * np.pi * 440 * t16).astype(np.float32), 16000, 8000)
    np.testing.assert_allclose(mono, out[0], atol=1e-6)


def test_wrong_sample_rate_is_resampled_with_a_note_or_refused_when_strict(tmp_path):
    path = tmp_path / "hi.wav"
    sf.write(path, _noise(1, 1600)[0], 16000)
    with pytest.warns(ResampleWarning, match="hi.wav"):
        out, sr = read_audio(path, sample_rate=8000)
    assert sr == 8000 and out.shape == (1, 800)
    with pytest.raises(AudioError, match=r"hi\.wav.*16000 Hz, expected 8000"):
        read_audio(path, sample_rate=8000, strict=True)


def _bad_file(tmp_path, kind: str):
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x01garbage that is not a wave file" * 3)
    elif kind == "empty":
        sf.write(path, np.zeros((0, 1), np.float32), 8000)
    elif kind == "nan":
        sf.write(path, np.full(100, np.nan, np.float32), 8000, subtype="FLOAT")
    elif kind == "silent":
        sf.write(path, np.zeros(800, np.float32), 8000)
    elif kind == "stereo":
        sf.write(path, _noise(2, 100).T, 8000)
    return path


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("missing", {}, "does not exist"),
        ("corrupt", {}, "cannot decode"),
        ("empty", {}, "empty"),
        ("nan", {}, "NaN"),
        ("silent", {"check_silent": True}, "silent"),
        ("stereo", {"expect_channels": 1}, "2 channel"),
        ("stereo", {"channels": [0, 5]}, "cannot select channels"),
    ],
)
def test_bad_audio_raises_audio_error_naming_the_file(tmp_path, kind, kwargs, message):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(AudioError, match=message) as info:
        read_audio(path, **kwargs)
    assert f"{kind}.wav" in str(info.value)


def test_check_not_silent_threshold():
    check_not_silent(np.full((1, 100), 1e-3, np.float32), "loud.wav")  # -60 dBFS: fine
    with pytest.raises(AudioError, match="quiet.wav.*-100.0 dBFS"):
        check_not_silent(np.full((1, 100), 1e-5, np.float32), "quiet.wav")


def test_write_refuses_clipping_and_nan(tmp_path):
    with pytest.raises(AudioError, match="loud.wav.*exceeds full scale"):
        write_audio(tmp_path / "loud.wav", np.full(10, 1.5, np.float32), 8000)
    with pytest.raises(AudioError, match="nan.wav"):
        write_audio(tmp_path / "nan.wav", np.full(10, np.nan, np.float32), 8000)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_partial_file_when_the_writer_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    write_audio(target, np.full(10, 0.5, np.float32), 8000)  # an older complete version

    def failing_write(path, data, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"RIFF partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(audio.sf, "write", failing_write)
    with pytest.raises(AudioError, match="out.wav.*disk full"):
        write_audio(target, _noise(1, 100), 8000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    np.testing.assert_allclose(read_audio(target)[0], 0.5, atol=1e-4)  # old file intact


def test_channel_policy_keeps_a_matching_input():
    x = _noise(3, 50)
    fed, note = model_channels(x, 3, "a.wav")
    assert fed is x and note is None
    mono = torch.from_numpy(_noise(1, 50))
    fed, note = model_channels(mono, 1, "a.wav")
    assert fed is mono and note is None


def test_channel_policy_feeds_a_mono_model_microphone_0():
    x = _noise(4, 60, seed=1)  # (C, T)
    fed, note = model_channels(x, 1, "room.wav")
    np.testing.assert_array_equal(fed, x[:1])  # microphone 0, not the average of the four
    assert not np.allclose(fed, x.mean(axis=0, keepdims=True))
    assert note.startswith("room.wav has 4 channels") and "microphone 0" in note
    batch = torch.from_numpy(np.stack([_noise(2, 30, seed=2), _noise(2, 30, seed=3)]))
    fed, note = model_channels(batch, 1, "batch")  # (B, C, T) -> (B, 1, T)
    assert torch.is_tensor(fed) and fed.shape == (2, 1, 30)
    assert torch.equal(fed[:, 0], batch[:, 0]) and "2 channels" in note


@pytest.mark.parametrize("n_in, n_model", [(2, 4), (6, 4), (0, 1)])
def test_channel_policy_refuses_another_array(n_in, n_model):
    x = np.zeros((n_in, 10), np.float32)
    with pytest.raises(AudioError, match=rf"row 'm1' has {n_in} channel\(s\), the model takes "
                                         rf"{n_model} microphone.*training array"):
        model_channels(x, n_model, "test.jsonl: row 'm1'")
