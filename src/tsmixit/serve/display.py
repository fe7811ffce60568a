"""What the page draws of a recording: its waveform as (min, max) peaks per column and its
spectrogram as a PNG image, both from one streaming pass (bounded memory for any length).

Notation: x[n], n = 0..T-1, the signal at f_s Hz (channel 0 of a file: the reference
microphone); W the wanted number of columns. Waveform: column c of W_p = min(W, T) holds
(min, max) of x[n] over the samples with floor(n W_p / T) = c. Spectrogram: frames m of
N = 2^round(log2(0.032 f_s)) samples every H = N / 4 (M = 1 + floor((T - N) / H) frames;
a signal shorter than N is zero-padded to one frame), Hann window w,

    P[m, f] = |sum_n w[n] x[m H + n] exp(-2 pi i f n / N)|^2 / (sum_n w[n])^2,

so a full-scale sinusoid peaks at about -6 dB. Column c of W_s = min(W, M) is the mean of
P over the frames with floor(m W_s / M) = c; adjacent bins f < N / 2 are averaged to at
most `MAX_ROWS` rows; the image shows 10 log10 P from `FLOOR_DB` to `CEIL_DB` (one fixed
scale, so a separated voice and its mixture compare by eye).
"""

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from matplotlib import image

from tsmixit.audio import audio_info
from tsmixit.errors import AudioError

#: Level range of the spectrogram image, dB (see the module docstring for the scale).
FLOOR_DB = -90.0
CEIL_DB = -20.0
#: Most frequency rows in a spectrogram image.
MAX_ROWS = 256
#: Frames per block read from a file: bounds the memory of one pass.
FRAMES_PER_BLOCK = 512


@dataclass(frozen=True)
class Drawing:
    """peaks: (W_p, 2) float32 (min, max) per column; levels: (rows, W_s) 10 log10 P, low
    frequencies first; png: `levels` as an image; seconds: T / f_s."""

    peaks: np.ndarray
    levels: np.ndarray
    png: bytes
    seconds: float

    def peaks_json(self) -> list[list[float]]:
        """The peaks rounded to 1e-4 for the page (full scale is 1)."""
        return np.round(self.peaks.astype(np.float64), 4).tolist()


def fft_size(sample_rate: int) -> int:
    """N = the power of two nearest 32 ms at `sample_rate` (256 at 8 kHz)."""
    return 1 << int(round(np.log2(0.032 * sample_rate)))


def _file_blocks(path: Path, blocksize: int, overlap: int) -> Iterator[np.ndarray]:
    """(n,) float32 blocks of channel 0 of `path`, each starting `blocksize - overlap`
    samples after the previous one."""
    try:
        for block in sf.blocks(str(path), blocksize=blocksize, overlap=overlap,
                               dtype="float32", always_2d=True):
            yield np.ascontiguousarray(block[:, 0])
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot decode the audio ({err}); re-export it.") from err


def _array_blocks(x: np.ndarray, blocksize: int, overlap: int) -> Iterator[np.ndarray]:
    step = blocksize - overlap
    for start in range(0, max(x.size - overlap, 1), step):
        yield x[start : start + blocksize]


def draw(source: str | os.PathLike | np.ndarray, sample_rate: int | None = None,
         width: int = 800) -> Drawing:
    """Peaks and spectrogram of a file (channel 0) or of a (T,) array at `sample_rate`.

    Reads the file once in blocks of `FRAMES_PER_BLOCK` frames (memory independent of T).
    """
    if isinstance(source, np.ndarray):
        x = np.asarray(source, dtype=np.float32).reshape(-1)
        if sample_rate is None:
            raise ValueError("draw(array) needs its sample_rate")
        n_samples, rate = x.size, int(sample_rate)
    else:
        info = audio_info(source)
        n_samples, rate = info.frames, info.sample_rate
    if n_samples == 0:
        raise AudioError("nothing to draw: the signal has no samples")
    n_fft = fft_size(rate)
    hop = n_fft // 4
    n_frames = 1 + (n_samples - n_fft) // hop if n_samples >= n_fft else 1
    blocksize = FRAMES_PER_BLOCK * hop + n_fft - hop  # FRAMES_PER_BLOCK whole frames
    overlap = n_fft - hop
    blocks = (_array_blocks(x, blocksize, overlap) if isinstance(source, np.ndarray)
              else _file_blocks(Path(source), blocksize, overlap))

    w_peaks, w_spec = min(width, n_samples), min(width, n_frames)
    lows = np.full(w_peaks, np.inf, np.float32)
    highs = np.full(w_peaks, -np.inf, np.float32)
    power = np.zeros((w_spec, n_fft // 2), np.float64)  # (W_s, N / 2) summed P
    counts = np.zeros(w_spec, np.int64)
    window = np.hanning(n_fft + 2)[1:-1]  # (N,) float64, nonzero ends
    norm = float(window.sum()) ** 2

    for k, block in enumerate(blocks):
        start = k * (blocksize - overlap)
        fresh = block if k == 0 else block[overlap:]  # samples no earlier block held
        first = start if k == 0 else start + overlap
        if fresh.size:
            cols = (np.arange(first, first + fresh.size, dtype=np.int64) * w_peaks) // n_samples
            starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
            at = cols[starts]  # distinct columns
            lows[at] = np.minimum(lows[at], np.minimum.reduceat(fresh, starts))
            highs[at] = np.maximum(highs[at], np.maximum.reduceat(fresh, starts))
        if k == 0 and block.size < n_fft:
            block = np.pad(block, (0, n_fft - block.size))
        if block.size < n_fft:
            continue
        frames = np.lib.stride_tricks.sliding_window_view(block, n_fft)[::hop]  # (F, N)
        frames = frames[: max(0, n_frames - k * FRAMES_PER_BLOCK)]
        if not frames.size:
            continue
        spectrum = np.fft.rfft(frames * window, axis=1)[:, : n_fft // 2]  # (F, N / 2) float64
        level = (spectrum.real ** 2 + spectrum.imag ** 2) / norm
        index = k * FRAMES_PER_BLOCK + np.arange(frames.shape[0], dtype=np.int64)
        cols = index * w_spec // n_frames  # (F,) non-decreasing
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        power[cols[starts]] += np.add.reduceat(level, starts, axis=0)  # distinct columns
        counts[cols[starts]] += np.diff(np.r_[starts, cols.size])

    mean = power / np.maximum(counts, 1)[:, None]  # (W_s, N / 2)
    group = max(1, (n_fft // 2) // MAX_ROWS)
    rows = mean.reshape(w_spec, -1, group).mean(axis=2)  # (W_s, rows)
    level_db = 10.0 * np.log10(rows.T + 1e-20)  # (rows, W_s), low frequencies first
    buffer = io.BytesIO()
    image.imsave(buffer, level_db, cmap="magma", vmin=FLOOR_DB, vmax=CEIL_DB, origin="lower",
                 format="png")
    peaks = np.stack([lows, highs], axis=1)  # (W_p, 2)
    return Drawing(peaks=peaks, levels=level_db, png=buffer.getvalue(),
                   seconds=n_samples / rate)
