"""Mixtures rendered from the rows of the embedded corpus: parts, gains and rooms.

Notation: a rendered row (see `tsmixit.data.manifest.Row`) has parts p, each an utterance or
noise a_p (c_p, L_p) with a linear gain g_p, a frame offset o_p (may be negative) and a role
("source" or "noise"), and optionally a room impulse response h_p = rirs[rir_p] (C, L_h) from
the row's room bank, an npz array "rirs" (n_rirs, C, L_h). The mixture at C microphones is

    x = sum_p g_p (a_p * h_p) placed at o_p, cut or zero-padded to the row's T frames,

where a_p * h_p is the convolution (C, L_p + L_h - 1) of a mono part; a part without a RIR
is the same signal on every microphone (c_p = 1) or already has one channel per microphone
(c_p = C). The sources s (S, T) are the "source" parts' images at microphone 0; noise parts
only enter the mixture.

Only the requested window [start, start + frames) is computed, in float64 and returned as
float32: a reverberant part convolves just the input samples that reach the window, and
`reference_only` convolves microphone 0's RIR alone (C' = 1 instead of C), which gives the
same numbers as rendering every microphone and keeping the first. Decoded parts and room
banks are kept in an `AudioCache`.
"""

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.signal import fftconvolve

from tsmixit.audio import read_audio
from tsmixit.errors import ManifestError

# A row and a part, as `tsmixit.data.manifest.Row` / `Part` describe them (not imported:
# the manifest module imports this one).
RowLike = Mapping[str, Any]


class AudioCache:
    """Bounded LRU of decoded utterances (by bytes) and a dict of RIR banks."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._audio: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._rirs: dict[str, np.ndarray] = {}

    def audio(self, path: str, sample_rate: int) -> np.ndarray:
        """The part at `path` as float32 (c, L), decoded once."""
        key = (path, sample_rate)
        if key in self._audio:
            self._audio.move_to_end(key)
            return self._audio[key]
        wav = read_audio(path, sample_rate=sample_rate, strict=True)[0]
        self._audio[key] = wav
        self._bytes += wav.nbytes
        while self._bytes > self.max_bytes and len(self._audio) > 1:
            self._bytes -= self._audio.popitem(last=False)[1].nbytes
        return wav

    def rirs(self, path: str) -> np.ndarray:
        """The room bank at `path` as float32 (n_rirs, C, L_h), read once."""
        if path not in self._rirs:
            try:
                with np.load(path) as bank:
                    rirs = np.asarray(bank["rirs"], dtype=np.float32)
            except (OSError, KeyError, ValueError) as err:
                raise ManifestError(
                    f"{path}: cannot read the room bank ({err}); it must be an npz with an "
                    "array 'rirs' (n_rirs, channels, length): rebuild the corpus."
                ) from err
            if rirs.ndim != 3 or not np.isfinite(rirs).all():
                raise ManifestError(
                    f"{path}: 'rirs' must be a finite (n_rirs, channels, length) array, got "
                    f"shape {rirs.shape}; rebuild the corpus."
                )
            self._rirs[path] = rirs
        return self._rirs[path]


def render(
    row: RowLike,
    start: int,
    frames: int,
    *,
    cache: AudioCache,
    with_sources: bool,
    reference_only: bool,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Mix frames [start, start + frames) of a rendered row (a checked window of it):
    x = sum_p g_p (a_p * h_p) at o_p, and, when `with_sources`, the sources at mic 0.

    name: the manifest's, for error messages.
    Returns (mixture (C', frames), sources (S, frames), or (0, frames) without sources),
    float32; C' = 1 (mic 0) when `reference_only`, else C.
    """
    C, T, sr = row["channels"], row["num_frames"], row["sample_rate"]
    mics = slice(0, 1) if reference_only else slice(None)
    end = start + frames
    mixture = np.zeros((1 if reference_only else C, frames))  # (C', frames)
    sources = []
    for part in row["parts"]:
        audio = cache.audio(part["audio"], sr)  # (c, L) float32
        off, length = part["offset"], audio.shape[1]
        if part["rir"] is not None:
            rir = _part_rir(row, part, audio, mics, cache, name)  # (C', L_h)
            length += rir.shape[1] - 1
        elif audio.shape[0] not in (1, C):
            raise ManifestError(
                f"{part['audio']}: has {audio.shape[0]} channels; a part of a "
                f"{C}-microphone row must have 1 or {C} (row {row['id']!r})."
            )
        d0, d1 = max(off, start), min(off + length, end, T)  # row frames of this part
        source = None
        if with_sources and part["role"] == "source":
            source = np.zeros(frames)  # stays silent when the part misses the window
            sources.append(source)
        if d1 <= d0:
            continue
        n0, n1 = d0 - off, d1 - off  # the same frames in the part's own time
        if part["rir"] is None:
            # (1 or C', n1 - n0): a mono part is the same signal on every microphone
            image = audio[mics if audio.shape[0] > 1 else slice(None), n0:n1]
            image = image.astype(np.float64)
        else:
            a0, a1 = max(0, n0 - rir.shape[1] + 1), min(audio.shape[1], n1)  # inputs used
            image = fftconvolve(audio[:, a0:a1].astype(np.float64), rir, axes=-1)
            image = image[:, n0 - a0 : n1 - a0]  # (C', n1 - n0)
        piece = part["gain"] * image
        mixture[:, d0 - start : d1 - start] += piece
        if source is not None:
            source[d0 - start : d1 - start] = piece[0]
    return (mixture.astype(np.float32),
            np.asarray(sources, dtype=np.float32).reshape(-1, frames))


def _part_rir(row: RowLike, part: RowLike, audio: np.ndarray, mics: slice,
              cache: AudioCache, name: str) -> np.ndarray:
    """The RIRs h_p of a reverberant part at microphones `mics`, (C', L_h) float64;
    checks the part fits the row's room bank."""
    C = row["channels"]
    rirs = cache.rirs(row["rooms"])  # (n_rirs, C, L_h)
    if not 0 <= part["rir"] < len(rirs) or rirs.shape[1] != C:
        raise ManifestError(
            f"{name}: row {row['id']!r} asks for RIR {part['rir']} with {C} "
            f"microphone(s), but {row['rooms']} holds {rirs.shape[0]} RIRs of "
            f"{rirs.shape[1]} microphone(s); rebuild the corpus."
        )
    if audio.shape[0] != 1:
        raise ManifestError(
            f"{part['audio']}: a part convolved with a RIR must be mono, it has "
            f"{audio.shape[0]} channels (row {row['id']!r})."
        )
    return rirs[part["rir"], mics].astype(np.float64)
