"""Folders of unlabelled recordings, cut into segments.

Notation: every audio file below the folder (searched recursively) is a recording (C, T_file)
at the manifest's rate, converted once when it is not; it gives rows of `segment_seconds`,
each a window [start, start + T) of the file (T frames, the last one possibly shorter), with
no sources.
"""

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tsmixit.audio import (
    AUDIO_SUFFIXES,
    SILENCE_DB,
    ResampleWarning,
    audio_info,
    read_audio,
    resample,
    write_audio,
)
from tsmixit.data.importers._common import check_fraction
from tsmixit.data.manifest import Manifest
from tsmixit.errors import AudioError, ManifestError


def import_folder(
    path: str | os.PathLike,
    *,
    audio_dir: str | os.PathLike | None = None,
    sample_rate: int = 8000,
    segment_seconds: float = 4.0,
    min_segment_seconds: float | None = None,
    channels: list[int] | Literal["mix"] | None = "mix",
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> Manifest:
    """Import a folder of unlabelled recordings (searched recursively), cut into segments.

    Files already at `sample_rate` whose channels need no mixing are referenced where they
    are; any other file is converted once (resampled with soxr, channels selected or mixed
    down), written as float WAV below `audio_dir` (required then), and a `ResampleWarning`
    says how many were. Rows are segments of `segment_seconds` given by start/num_frames
    into the file; a shorter tail is kept when at least `min_segment_seconds` (default: half
    a segment) long. Silent segments are
    dropped; a silent, empty, NaN or corrupt file is an AudioError. channels: "mix" averages
    the channels, a list keeps those microphones, None keeps all (counts must agree).
    round(valid_fraction * n) segments, drawn with `seed` (at least one when valid_fraction > 0
    and n >= 2), go to "valid", the rest to "train".
    """
    check_fraction(valid_fraction, "valid_fraction")
    folder = Path(path)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: folder not found; give a folder of recordings.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
                   and p.is_file())
    if not files:
        raise ManifestError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found.")
    seg = round(segment_seconds * sample_rate)
    min_len = seg // 2 if min_segment_seconds is None else round(min_segment_seconds * sample_rate)
    if seg <= 0 or min_len <= 0:
        raise ManifestError("segment_seconds and min_segment_seconds must be positive.")
    rows: list[dict[str, Any]] = []
    n_channels: int | None = None
    converted: list[Path] = []
    threshold = 10.0 ** (SILENCE_DB / 20.0)
    for file in files:
        info = audio_info(file)
        wav, sr = read_audio(file, channels=channels, check_silent=True)
        if n_channels is not None and wav.shape[0] != n_channels:
            raise AudioError(f"{file}: gives {wav.shape[0]} channel(s), earlier files "
                             f"{n_channels}; choose channels=... or 'mix'.")
        n_channels = wav.shape[0]
        rel = file.relative_to(folder)
        stored, channel_map = file, channels if isinstance(channels, list) else None
        if sr != sample_rate or (channels == "mix" and info.channels > 1):
            if audio_dir is None:
                raise ManifestError(f"{file}: needs conversion ({sr} Hz, {info.channels} "
                                    "channel(s)); pass audio_dir=FOLDER to write converted "
                                    "copies.")
            wav = resample(wav, sr, sample_rate)
            stored = Path(audio_dir).resolve() / rel.with_suffix(".wav")
            write_audio(stored, wav, sample_rate, subtype="FLOAT")
            channel_map = None
            converted.append(file)
        T = wav.shape[1]
        starts = list(range(0, T - seg + 1, seg))
        tail = starts[-1] + seg if starts else 0
        if T - tail >= min_len:
            starts.append(tail)
        for k, s0 in enumerate(starts):
            piece = wav[:, s0 : s0 + seg]
            if float(np.sqrt(np.mean(np.square(piece, dtype=np.float64)))) <= threshold:
                continue
            row: dict[str, Any] = {
                "id": f"{rel.with_suffix('').as_posix()}/{k:05d}",
                "split": "train",
                "labelled": False,
                "sample_rate": sample_rate,
                "channels": wav.shape[0],
                "num_frames": piece.shape[1],
                "n_speakers": None,
                "mixture": str(stored),
                "sources": None,
                "start": s0,
            }
            if channel_map is not None:
                row["channel_map"] = list(channel_map)
            rows.append(row)
    if converted:
        warnings.warn(
            f"{len(converted)} recording(s) of {folder} (first {converted[0]}) converted to "
            f"{sample_rate} Hz / {n_channels} channel(s) and written below {audio_dir}",
            ResampleWarning,
            stacklevel=2,
        )
    if not rows:
        raise ManifestError(f"{folder}: no segment of at least {min_len} frames with sound.")
    n_valid = round(valid_fraction * len(rows))
    if valid_fraction > 0 and len(rows) >= 2:
        n_valid = min(max(n_valid, 1), len(rows) - 1)
    for k in np.random.default_rng(seed).choice(len(rows), n_valid, replace=False):
        rows[k]["split"] = "valid"
    return Manifest(rows, name=str(folder))
