"""Inference: a trained separator applied to users' recordings, in memory or file by file.

`Separator` wraps a trained network (y_hat = f(x), K outputs at the input's rate, resampled
in and out with soxr) and feeds it the microphones the channel policy names
(`tsmixit.audio.model_channels`: a single-channel model gets microphone 0, with a
`ChannelNote`). `tsmixit.model_files.load_model` returns one.

Long recordings are processed in overlapping chunks, one at a time, so memory stays bounded
whatever the length: the file is read in blocks (soundfile), resampled as a stream (soxr),
each chunk is separated, its outputs are put in the order of the previous chunk's (the
permutation maximising their correlation on the overlap), cross-faded with complementary
Hann windows and written out incrementally. The chunk stitching is written by hand because
no maintained library streams a separator over overlapping chunks with output alignment.
"""

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from tqdm import tqdm

from tsmixit.audio import AUDIO_SUFFIXES, SILENCE_DB, audio_info, model_channels, resample
from tsmixit.errors import AudioError, ModelFileError, TsmixitError
from tsmixit.files import atomic_path
from tsmixit.models._cpu_kernels import allow_bf16_inference

#: Recordings shorter than this are refused: too short to hold speech to separate.
MIN_SECONDS = 0.25
#: Name of the per-file timing log written in the output folder.
LOG_NAME = "separation.jsonl"


class ChannelNote(UserWarning):
    """A multi-channel input was reduced to microphone 0 for a single-channel model."""


class Separator:
    """A trained separator ready for inference: y_hat = f(x), K outputs at the input's rate.

    Attributes: model (the nn.Module, eval mode), sample_rate (Hz the model was trained at),
    n_outputs (K), n_channels (C the model takes), config (the config.json contents).
    """

    def __init__(self, model: nn.Module, sample_rate: int, config: dict[str, Any]):
        self.model = model.eval()
        self.sample_rate = int(sample_rate)
        self.config = config
        self.n_outputs = int(model.hparams["n_sources"])
        self.n_channels = int(model.hparams.get("n_channels", 1))

    def __repr__(self) -> str:
        return (
            f"Separator({type(self.model).__name__}, {self.sample_rate} Hz, "
            f"{self.n_channels} channel(s) in, {self.n_outputs} outputs)"
        )

    @torch.inference_mode()
    def forward_model_rate(self, wav: np.ndarray) -> np.ndarray:
        """Run the network on a (C, T) float32 input at the model's rate, C = n_channels (as
        `model_channels` returns it) -> (K, T).

        On a CPU with bfloat16 units a separator with a bfloat16 inference path takes it
        where it is faster (`allow_bf16_inference`); its distance from float32 is measured
        by benchmarks/bench_separate.py and quoted in the README. TSMIXIT_CPU_BF16=off
        keeps float32."""
        device = next(self.model.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(device)
        x = x[0][None] if self.n_channels == 1 else x[None]  # (1, T) or (1, C, T)
        with allow_bf16_inference():
            return self.model(x)[0].float().cpu().numpy()  # (K, T)

    def separate(
        self, waveform: np.ndarray | torch.Tensor, sample_rate: int
    ) -> np.ndarray:
        """Separate one recording in a single pass: (T,) or (C, T) at `sample_rate` -> (K, T)
        float32 at the same rate. Resampled in and out with soxr when the rates differ.
        For long recordings use `separate_files` (bounded memory).
        """
        wav = waveform.detach().cpu().numpy() if torch.is_tensor(waveform) else waveform
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 1:
            wav = wav[None]
        if wav.ndim != 2 or wav.shape[1] == 0:
            raise ModelFileError(
                f"expected a waveform of shape (T,) or (C, T), got {tuple(wav.shape)}"
            )
        if not np.isfinite(wav).all():
            raise ModelFileError("the waveform contains NaN or infinite samples")
        wav, note = model_channels(wav, self.n_channels, "the waveform")
        if note:
            warnings.warn(note, ChannelNote, stacklevel=2)
        n_frames = wav.shape[1]
        est = self.forward_model_rate(resample(wav, sample_rate, self.sample_rate))
        est = resample(est, self.sample_rate, sample_rate)  # (K, T')
        return _fit_length(est, n_frames)


def _fit_length(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """Crop or zero-pad (K, T') to (K, n_frames): resampling may be off by a sample."""
    if wav.shape[1] >= n_frames:
        return np.ascontiguousarray(wav[:, :n_frames])
    return np.pad(wav, ((0, 0), (0, n_frames - wav.shape[1])))


def crossfade_windows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Complementary Hann fades of length n: fade_in = sin^2, fade_out = cos^2, summing to 1."""
    phase = (np.arange(n, dtype=np.float64) + 0.5) / n * (np.pi / 2)
    fade_in = np.sin(phase) ** 2
    return fade_in.astype(np.float32), (1.0 - fade_in).astype(np.float32)


def align_to_previous(prev_tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Order of the new chunk's outputs that best matches the previous chunk's.

    prev_tail, head: (K, O), the two chunks' outputs on their shared overlap. Returns perm
    (K,) such that head[perm[k]] continues output k: the assignment maximising the summed
    normalised correlation (cosine similarity), solved with scipy's linear_sum_assignment.
    """
    a = prev_tail / (np.linalg.norm(prev_tail, axis=1, keepdims=True) + 1e-8)  # (K, O)
    b = head / (np.linalg.norm(head, axis=1, keepdims=True) + 1e-8)  # (K, O)
    _, perm = linear_sum_assignment(a @ b.T, maximize=True)  # (K,)
    return perm


class ChunkStitcher:
    """Streams a separator over overlapping chunks of a signal and stitches its outputs.

    push() takes consecutive (C, n) blocks of the input at the model's rate and returns the
    (K, n') output samples that are final; finish() returns the rest. A chunk of `chunk`
    samples is separated once `chunk + hop / 2` samples are buffered (hop = chunk - overlap),
    so the last chunk always holds at least `overlap + hop / 2` samples; the buffer never
    exceeds chunk + hop / 2 + the block size.
    """

    def __init__(
        self, separate_fn: Callable[[np.ndarray], np.ndarray], chunk: int, overlap: int
    ) -> None:
        if not 0 < overlap < chunk:
            raise ValueError(f"need 0 < overlap < chunk, got overlap={overlap}, chunk={chunk}")
        self.separate_fn, self.chunk, self.overlap = separate_fn, chunk, overlap
        self.hop = chunk - overlap
        self.fade_in, self.fade_out = crossfade_windows(overlap)
        self.n_chunks = 0
        self._blocks: list[np.ndarray] = []
        self._buffered = 0
        self._tail: np.ndarray | None = None  # (K, overlap) previous chunk's last outputs

    def _take_buffer(self) -> np.ndarray:
        buffer = np.concatenate(self._blocks, axis=1)  # (C, buffered)
        self._blocks = [buffer]
        return buffer

    def _run_chunk(self, x: np.ndarray, final: bool) -> np.ndarray:
        """Separate chunk x (C, n); returns its final samples, keeps its tail for the next."""
        out = self.separate_fn(x)  # (K, n)
        self.n_chunks += 1
        pieces = []
        start = 0
        if self._tail is not None:
            perm = align_to_previous(self._tail, out[:, : self.overlap])
            out = out[perm]
            blend = self._tail * self.fade_out + out[:, : self.overlap] * self.fade_in
            pieces.append(blend)  # (K, overlap)
            start = self.overlap
        stop = out.shape[1] if final else out.shape[1] - self.overlap
        pieces.append(out[:, start:stop])
        self._tail = None if final else out[:, stop:].copy()
        return np.concatenate(pieces, axis=1)

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add input samples (C, n); return the output samples (K, n') that are now final."""
        self._blocks.append(block)
        self._buffered += block.shape[1]
        done = []
        while self._buffered >= self.chunk + self.hop // 2:
            buffer = self._take_buffer()
            done.append(self._run_chunk(buffer[:, : self.chunk], final=False))
            self._blocks = [buffer[:, self.hop :]]
            self._buffered -= self.hop
        return np.concatenate(done, axis=1) if done else np.zeros((0, 0), np.float32)

    def finish(self) -> np.ndarray:
        """Separate what is left as the last chunk; return all remaining output samples."""
        if self._buffered == 0:
            return np.zeros((0, 0), np.float32)
        out = self._run_chunk(self._take_buffer(), final=True)
        self._blocks, self._buffered = [], 0
        return out


def _read_blocks(path: Path, block: int) -> Iterator[np.ndarray]:
    """(C, n) float32 blocks of a file, read with soundfile without loading the whole file."""
    try:
        with sf.SoundFile(str(path)) as handle:
            while True:
                data = handle.read(block, dtype="float32", always_2d=True)  # (n, C)
                if data.shape[0] == 0:
                    return
                yield np.ascontiguousarray(data.T)
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(
            f"{path}: cannot decode the audio ({err}); re-export or remove it."
        ) from err


def _scan(path: Path, block: int) -> None:
    """One streaming pass: refuse NaN/infinite samples and silent recordings."""
    energy, frames = 0.0, 0
    for data in _read_blocks(path, block):
        if not np.isfinite(data).all():
            raise AudioError(f"{path}: contains NaN or infinite samples; re-export the file.")
        energy += float(np.square(data, dtype=np.float64).sum())
        frames += data.size
    rms = math.sqrt(energy / max(frames, 1))
    if rms <= 10.0 ** (SILENCE_DB / 20.0):
        level = "digital silence" if rms == 0.0 else f"{20 * math.log10(rms):.1f} dBFS RMS"
        raise AudioError(
            f"{path}: the recording is silent ({level}, threshold {SILENCE_DB:g} dBFS); "
            "there is nothing to separate."
        )


class _Resampler:
    """soxr streaming resampler on (C, n) blocks; the identity when the rates agree."""

    def __init__(self, sr_in: int, sr_out: int, channels: int) -> None:
        self.stream = (
            None if sr_in == sr_out
            else soxr.ResampleStream(sr_in, sr_out, channels, dtype="float32")
        )
        self.channels = channels

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return block
        data = block.T if block.size else np.zeros((0, self.channels), np.float32)
        out = self.stream.resample_chunk(np.ascontiguousarray(data, dtype=np.float32), last=last)
        return np.ascontiguousarray(out.reshape(-1, self.channels).T)  # (C, n')


def separate_file(
    separator: Separator,
    path: str | os.PathLike,
    out_stem: str | os.PathLike,
    *,
    chunk_seconds: float = 8.0,
    overlap_seconds: float = 1.0,
    allow_upsampling: bool = False,
    subtype: str = "FLOAT",
) -> dict[str, Any]:
    """Separate one recording into `out_stem`_s1.wav ... _sK.wav at the file's own rate.

    Returns {"input", "outputs", "sample_rate", "channels", "seconds", "wall_seconds", "rtf",
    "chunks", "notes"}. Raises AudioError (or ModelFileError) with the reason on bad input;
    no partial outputs are left behind.
    """
    path, out_stem = Path(path), Path(out_stem)
    start_time = time.perf_counter()
    info = audio_info(path)
    sr_model = separator.sample_rate
    if info.sample_rate < sr_model and not allow_upsampling:
        raise AudioError(
            f"{path}: sample rate {info.sample_rate} Hz is below the model's {sr_model} Hz, so "
            f"the band above {info.sample_rate // 2} Hz the model relies on is missing; use a "
            f"recording at >= {sr_model} Hz or allow upsampling (--allow-upsampling)."
        )
    seconds = info.frames / info.sample_rate
    if seconds < MIN_SECONDS:
        raise AudioError(
            f"{path}: only {seconds:.3f} s of audio; at least {MIN_SECONDS} s is needed."
        )
    _, note = model_channels(np.zeros((info.channels, 1), np.float32), separator.n_channels,
                             str(path))
    notes = [note] if note else []
    chunk = int(round(chunk_seconds * sr_model))
    overlap = int(round(overlap_seconds * sr_model))
    if not 0 < overlap < chunk:
        raise TsmixitError(
            f"need 0 < overlap_seconds < chunk_seconds, got {overlap_seconds} and {chunk_seconds}"
        )
    block = max(1, int((chunk - overlap) * info.sample_rate / sr_model))
    _scan(path, block)

    n_out = separator.n_outputs
    to_model = _Resampler(info.sample_rate, sr_model, separator.n_channels)
    to_input = _Resampler(sr_model, info.sample_rate, n_out)
    stitcher = ChunkStitcher(separator.forward_model_rate, chunk, overlap)
    outputs = [out_stem.with_name(f"{out_stem.name}_s{k + 1}.wav") for k in range(n_out)]
    written = 0

    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in outputs]
        writers = [
            stack.enter_context(
                sf.SoundFile(str(t), "w", samplerate=info.sample_rate, channels=1,
                             subtype=subtype, format="WAV")
            )
            for t in tmps
        ]

        def emit(est: np.ndarray, last: bool = False) -> None:
            nonlocal written
            est = to_input(est if est.size else np.zeros((n_out, 0), np.float32), last)
            est = est[:, : info.frames - written]  # never beyond the input's length
            for writer, source in zip(writers, est, strict=True):
                writer.write(source)
            written += est.shape[1]

        for data in _read_blocks(path, block):
            data, _ = model_channels(data, separator.n_channels, str(path))  # (C_model, n)
            emit(stitcher.push(to_model(data)))
        emit(stitcher.push(to_model(np.zeros((separator.n_channels, 0), np.float32), last=True)))
        emit(stitcher.finish(), last=True)
        if written < info.frames:  # resampling may end a few samples short
            pad = np.zeros(info.frames - written, np.float32)
            for writer in writers:
                writer.write(pad)
    wall = time.perf_counter() - start_time
    return {
        "input": str(path),
        "outputs": [str(p) for p in outputs],
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "seconds": seconds,
        "wall_seconds": wall,
        "rtf": wall / seconds,
        "chunks": stitcher.n_chunks,
        "notes": notes,
        "error": None,
    }


def _expand(inputs: list[str | os.PathLike]) -> list[tuple[Path, Path | None, str | None]]:
    """(file, folder it was found in or None, error or None) for every input."""
    found: list[tuple[Path, Path | None, str | None]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not files:
                found.append((item, None, f"{item}: folder holds no audio files "
                              f"({', '.join(AUDIO_SUFFIXES)})"))
            found.extend((f, item, None) for f in files)
        elif item.is_file():
            found.append((item, None, None))
        else:
            found.append((item, None, f"{item}: does not exist; check the path."))
    return found


def separate_files(
    separator: Separator,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    chunk_seconds: float = 8.0,
    overlap_seconds: float = 1.0,
    progress: bool = True,
    allow_upsampling: bool = False,
    subtype: str = "FLOAT",
) -> list[dict[str, Any]]:
    """Separate every input file (and every audio file below input folders) into `out_dir`.

    Writes `out_dir`/<stem>_s1.wav ... _sK.wav per file (a folder's sub-folders are
    mirrored) and one JSON line per file in `out_dir`/separation.jsonl. A file that fails
    does not stop the batch: its result carries "error" (the reason) and no outputs.
    Returns the per-file results in input order (see `separate_file`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    claimed: dict[Path, Path] = {}
    items = _expand(inputs)
    with open(out_dir / LOG_NAME, "w") as log:
        for path, root, error in tqdm(items, desc="separate", unit="file", disable=not progress):
            rel = path.relative_to(root).with_suffix("") if root else Path(path.stem)
            stem = out_dir / rel
            if error is None and stem in claimed:
                error = f"{path}: its outputs would overwrite those of {claimed[stem]}; rename it"
            if error is None:
                claimed[stem] = path
                try:
                    result = separate_file(
                        separator, path, stem, chunk_seconds=chunk_seconds,
                        overlap_seconds=overlap_seconds, allow_upsampling=allow_upsampling,
                        subtype=subtype,
                    )
                except TsmixitError as err:
                    error = str(err)
            if error is not None:
                result = {"input": str(path), "outputs": [], "error": error}
            results.append(result)
            log.write(json.dumps(result) + "\n")
            log.flush()
    return results
