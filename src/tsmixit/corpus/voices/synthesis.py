"""Making a realistic voice's utterances: the source's audio, trimmed, resampled,
WORLD-transformed and passed through a channel, cached where synthesis is slow, one freshly
forked worker per voice (so a voice's bytes do not depend on what ran before it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soxr

import tsmixit.corpus.augment as augment
import tsmixit.corpus.voices.world as world
from tsmixit.audio import write_audio
from tsmixit.corpus.voices.base import (
    Engine,
    Line,
    Voice,
    VoiceSource,
    VoiceSourceError,
    _cached,
    _store,
    cache_key,
    trim_silence,
)
from tsmixit.corpus.voices.sources import get_source


def make_utterance(source: VoiceSource, engine: Engine, voice: Voice, line: Line,
                   sample_rate: int, cache_dir: Path | None) -> np.ndarray:
    """One utterance of `voice` at `sample_rate`, float64, peak 0.9: the source's audio,
    trimmed, resampled, WORLD-transformed, passed through a channel. With `cache_dir`, the
    source's raw output (slow sources) and the voice before its channel are cached."""
    vpath, x, rate = _cached(cache_dir, f"{source.name}-voice",
                             cache_key(source, voice, line, "voice", sample_rate))
    if x is None or rate != sample_rate:
        rpath, raw, rate = (_cached(cache_dir, source.name, cache_key(source, voice, line))
                            if source.cached else (None, None, 0))
        if raw is None or rate != engine.sample_rate:
            raw = np.asarray(engine.render(voice, line), dtype=np.float64)
            if not np.any(raw):
                raise VoiceSourceError(f"voice source '{source.name}' made silence for "
                                       f"{line.id}")
            raw = _store(rpath, raw, engine.sample_rate)
        x = trim_silence(raw, engine.sample_rate)
        if engine.sample_rate != sample_rate:
            x = soxr.resample(x, engine.sample_rate, sample_rate, quality="HQ")
        if voice.world is not None:
            x = world.transform(x, sample_rate, world.WorldTransform(**voice.world))
        x = _store(vpath, x, sample_rate)
    rng = np.random.default_rng([line.seed, 17])
    if voice.augment > 0 and rng.random() < voice.augment:
        x = augment.apply(x, sample_rate, augment.sample_channel(rng, sample_rate), rng)
    peak = np.abs(x).max()
    if peak == 0:
        raise VoiceSourceError(f"voice {voice.id}: utterance {line.id} is silent")
    return 0.9 * x / peak


def synthesize_voice(source_name: str, voice: Voice, lines: list[Line], sample_rate: int,
                     cache_dir: str | None) -> list[int]:
    """Worker task: make and write (16-bit FLAC) every utterance of one voice; frame counts."""
    source = get_source(source_name)
    engine = source.engine()
    frames = []
    for line in lines:
        x = make_utterance(source, engine, voice, line, sample_rate,
                           Path(cache_dir) if cache_dir else None)
        write_audio(line.path, x.astype(np.float32), sample_rate, subtype="PCM_16")
        frames.append(len(x))
    return frames


def _task(args: tuple) -> list[int]:
    return synthesize_voice(*args)


def synthesize_voices(jobs: list[tuple[Voice, list[Line]]], sample_rate: int, workers: int,
                      progress: bool, cache_dir: str | os.PathLike | None) -> None:
    """Make every (voice, lines) job, each voice in a fresh forked process (`workers` at a
    time), with a progress bar over utterances."""
    import multiprocessing as mp

    from tqdm import tqdm

    if not jobs:
        return
    ctx = mp.get_context("fork")
    total = sum(len(lines) for _, lines in jobs)
    cache = str(cache_dir) if cache_dir else None
    with tqdm(total=total, desc="synthesising realistic voices", unit="utt",
              disable=not progress) as bar, ctx.Pool(min(workers, len(jobs)),
                                                      maxtasksperchild=1) as pool:
        tasks = [(v.source, v, lines, sample_rate, cache) for v, lines in jobs]
        for frames in pool.imap_unordered(_task, tasks):
            bar.update(len(frames))
