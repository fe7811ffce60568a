"""Audio input/output, validation, and the channel policy.

Every waveform is a float32 array of shape (channels, time). Reading goes through soundfile,
resampling through soxr; every failure is an `AudioError` whose message names the file and
the fix. `model_channels` is the one place that decides which microphones a model is fed
(training, evaluation, separation and export all follow it).
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import soundfile as sf
import soxr

from tsmixit.errors import AudioError
from tsmixit.files import atomic_path

if TYPE_CHECKING:
    import torch

Channels = None | list[int] | Literal["mix"]
#: A (..., C, T) waveform: a NumPy array or a torch tensor.
Waveform = TypeVar("Waveform", np.ndarray, "torch.Tensor")

#: RMS level (dB re full scale) below which a recording counts as silent.
SILENCE_DB = -80.0

#: File name endings taken as audio when a folder is searched (importers, separation).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")


class ResampleWarning(UserWarning):
    """A file was resampled on load because its rate differs from the requested one."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file, read without decoding the samples."""

    sample_rate: int
    channels: int
    frames: int


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of `path` (rate, channel count, length); AudioError if unusable."""
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as err:
        raise _corrupt(path, err) from err
    if info.frames <= 0:
        raise AudioError(f"{path}: the file is empty (0 samples); replace or remove it.")
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def read_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    channels: Channels = None,
    expect_channels: int | None = None,
    strict: bool = False,
    start: int = 0,
    frames: int | None = None,
    check_silent: bool = False,
) -> tuple[np.ndarray, int]:
    """Read `path` as float32 (C, T) and return it with its sample rate.

    sample_rate: wanted rate; a file at another rate is resampled with a `ResampleWarning`,
        or refused with an AudioError when `strict`.
    channels: None keeps all channels, a list selects those (in that order), "mix" averages
        them into one.
    expect_channels: the file must have exactly this many channels (before selection).
    start, frames: read only frames [start, start + frames) of the file (at its own rate).
    check_silent: refuse a recording whose RMS is below `SILENCE_DB`.
    """
    path = Path(path)
    info = audio_info(path)
    if expect_channels is not None and info.channels != expect_channels:
        raise AudioError(
            f"{path}: has {info.channels} channel(s), expected {expect_channels}; "
            "convert the file or choose the channels to use."
        )
    stop = info.frames if frames is None else start + frames
    if start < 0 or stop > info.frames or stop <= start:
        raise AudioError(
            f"{path}: cannot read frames [{start}, {stop}) of a file of {info.frames} frames; "
            "the manifest row does not match the file: re-import the corpus."
        )
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as err:
        raise _corrupt(path, err) from err
    wav = np.ascontiguousarray(data.T)  # (T, C) -> (C, T)
    if wav.shape[1] == 0:
        raise AudioError(f"{path}: the file is empty (0 samples); replace or remove it.")
    if not np.isfinite(wav).all():
        raise AudioError(
            f"{path}: contains NaN or infinite samples; regenerate or remove the file."
        )
    wav = select_channels(wav, channels, path)
    if sample_rate is not None and sr != sample_rate:
        if strict:
            raise AudioError(
                f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz; resample the file "
                f"to {sample_rate} Hz or re-import the corpus at {sr} Hz."
            )
        warnings.warn(
            f"{path}: resampled from {sr} Hz to {sample_rate} Hz on load",
            ResampleWarning,
            stacklevel=2,
        )
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    if check_silent:
        check_not_silent(wav, path)
    return wav, sr


def select_channels(wav: np.ndarray, channels: Channels, path: str | os.PathLike) -> np.ndarray:
    """Pick channels of a (C, T) waveform: None = all, list = those, "mix" = their mean."""
    if channels is None:
        return wav
    if isinstance(channels, str):
        if channels != "mix":
            raise AudioError(f"{path}: unknown channel choice {channels!r}; use a list or 'mix'.")
        return wav.mean(axis=0, keepdims=True)
    bad = [c for c in channels if not 0 <= c < wav.shape[0]]
    if bad or not channels:
        raise AudioError(
            f"{path}: has {wav.shape[0]} channel(s); cannot select channels {list(channels)}; "
            f"choose indices in 0..{wav.shape[0] - 1}."
        )
    return np.ascontiguousarray(wav[list(channels)])


def model_channels(x: Waveform, n_model: int, where: str) -> tuple[Waveform, str | None]:
    """The channel policy: what a model taking `n_model` microphones is fed from an input of
    C channels, and a note when the input is changed (None otherwise).

    C == n_model: the input as it is. n_model == 1 and C > 1: microphone 0 alone, the
    reference microphone a single-channel model is trained on. n_model > 1 and C != n_model:
    AudioError naming `where` (the file or row) and the fix; the channels must be the
    training array's microphones in its order.

    x: (..., C, T) NumPy array or torch tensor -> (..., n_model, T), the same type
    """
    n_in = x.shape[-2]
    if n_in == n_model:
        return x, None
    if n_model == 1 and n_in > 1:
        note = (f"{where} has {n_in} channels: the single-channel model is fed microphone 0, "
                "the reference microphone it is trained on")
        return x[..., :1, :], note
    unit = "channel" if n_model == 1 else "channels"
    raise AudioError(
        f"{where} has {n_in} channel(s), the model takes {n_model} microphone {unit}; pass a "
        f"{n_model}-channel recording with the training array's microphones in its order."
    )


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a (C, T) or (T,) float waveform from `sr_in` to `sr_out` Hz (soxr, HQ)."""
    if sr_in == sr_out:
        return wav.astype(np.float32, copy=False)
    if wav.ndim == 1:
        return soxr.resample(wav.astype(np.float32), sr_in, sr_out).astype(np.float32)
    out = soxr.resample(np.ascontiguousarray(wav.T, dtype=np.float32), sr_in, sr_out)
    return np.ascontiguousarray(out.reshape(out.shape[0], -1).T, dtype=np.float32)


def check_not_silent(
    wav: np.ndarray, path: str | os.PathLike, threshold_db: float = SILENCE_DB
) -> None:
    """Raise AudioError when the RMS level of `wav` is below `threshold_db` dBFS."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    if rms <= 10.0 ** (threshold_db / 20.0):
        level = "digital silence" if rms == 0.0 else f"{20 * np.log10(rms):.1f} dBFS RMS"
        raise AudioError(
            f"{path}: the recording is silent ({level}, threshold {threshold_db:g} dBFS); "
            "remove it or check the recording chain."
        )


def write_audio(
    path: str | os.PathLike,
    wav: np.ndarray,
    sample_rate: int,
    subtype: Literal["PCM_16", "PCM_24", "FLOAT"] = "PCM_16",
) -> Path:
    """Write a (C, T) or (T,) waveform atomically; the format follows the suffix (.wav, .flac).

    Integer subtypes refuse samples beyond [-1, 1] instead of letting them wrap or clip.
    """
    path = Path(path)
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[1] == 0:
        raise AudioError(f"{path}: expected a non-empty (channels, time) waveform, "
                         f"got shape {wav.shape}.")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples.")
    peak = float(np.abs(wav).max())
    if subtype.startswith("PCM") and peak > 1.0:
        raise AudioError(
            f"{path}: peak {peak:.3f} exceeds full scale for {subtype}; scale the signal "
            "or write with subtype='FLOAT' (WAV only)."
        )
    try:
        with atomic_path(path) as tmp:
            sf.write(str(tmp), wav.T, sample_rate, subtype=subtype)
    except (sf.SoundFileError, RuntimeError, ValueError) as err:
        raise AudioError(f"{path}: cannot write audio ({err}); check the folder and the "
                         "subtype (FLAC supports PCM_16/PCM_24 only).") from err
    return path


def _check_exists(path: Path) -> None:
    if not path.is_file():
        what = "is a folder, not an audio file" if path.is_dir() else "does not exist"
        raise AudioError(f"{path}: {what}; check the path (manifest paths are relative to "
                         "the manifest's folder: move a corpus folder as a whole).")


def _corrupt(path: Path, err: Exception) -> AudioError:
    return AudioError(
        f"{path}: cannot decode the audio ({err}); the file is corrupt or not in a format "
        "soundfile reads (WAV, FLAC, OGG): re-export or remove it."
    )
