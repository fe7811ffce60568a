"""What every realistic voice source shares: the voice record, the source interface, the
cache and the per-speaker worker.

A *source* (piper.py, kokoro.py, recordings.py) knows its BASE voices (a real or neural voice
as shipped: one person) and how to make one utterance for a voice. A *voice* is a base voice
plus the source's own synthesis settings (speed, noise, a style blend) and an optional WORLD
transform (world.py) that moves F0, pitch range and the spectral envelope, and an optional
channel (augment.py) drawn per utterance. Corpus splits are made by base voice (build.py): every
voice derived from a base belongs to that base's split.

Synthesis runs like eSpeak's (espeak.py): each speaker in a freshly forked worker (one task
per child), so its bytes depend only on the speaker and the seed, not on the worker or on what
ran before; the neural sources' random draws are seeded per utterance (see piper.py). The raw
output of the slow engines is cached (one FLAC per (source, settings, text, seed) under
`cache_dir`), so corpora that share voices synthesise them once.
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from tsmixit.audio import write_audio
from tsmixit.errors import TsmixitError


class VoiceSourceError(TsmixitError):
    """A voice source is missing, broken or asked for something it does not have."""


@dataclass(frozen=True)
class BaseVoice:
    """One voice as a source ships it (one person, or one neural voice)."""

    id: str        # "<source>:<name>", unique over all sources; the unit of the splits
    source: str
    gender: str    # "m" | "f"
    language: str  # BCP-47-ish, e.g. "en-US"; what the voice was recorded/trained in


@dataclass(frozen=True)
class Voice:
    """A corpus speaker from a realistic source: a base voice, the source's settings
    (JSON-able), a WORLD transform (None: unchanged) and the channel-augmentation share."""

    id: str
    split: str
    base: str
    source: str
    gender: str
    settings: dict[str, Any] = field(default_factory=dict)
    world: dict[str, float] | None = None
    augment: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Line:
    """One utterance to make: its id, the text (None for recordings), where it goes and the
    seed of its random draws."""

    id: str
    text: str | None
    path: str
    seed: int


class Engine(Protocol):
    """A loaded source in a worker process."""

    sample_rate: int

    def render(self, voice: Voice, line: Line) -> np.ndarray:
        """The utterance as float samples at `sample_rate` (any level; silence trimmed later)."""


class VoiceSource(Protocol):
    """What a source module provides (see piper.py for an example)."""

    name: str
    licence: str
    cached: bool  # worth caching (slow neural synthesis)
    recorded: bool  # utterances joined from recordings (no text): recordings, syllables

    def check(self) -> None:
        """Raise VoiceSourceError naming the fix when the source is not installed."""

    def base_voices(self) -> list[BaseVoice]:
        """The base voices, in a fixed order."""

    def sample_settings(self, rng: np.random.Generator, base: BaseVoice,
                        same_split: list[BaseVoice]) -> dict[str, Any]:
        """Random synthesis settings of a new voice of `base`; `same_split` lists the base
        voices of the same split (a blend may only use those)."""

    def version(self) -> str:
        """Versions of the packages behind the audio (part of the cache key)."""

    def engine(self) -> Engine:
        """Load the source in this (worker) process."""


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version(name)
    except PackageNotFoundError:
        return "missing"


def require(module: str, fix: str, source: str) -> None:
    """Import `module` or raise one VoiceSourceError naming the install command."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise VoiceSourceError(
            f"voice source '{source}' needs the Python module {module!r}, which is not "
            f"installed ({e}); fix: {fix}"
        ) from e


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("TSMIXIT_VOICE_CACHE") or os.path.join(base, "tsmixit", "voices"))


def cache_key(source: VoiceSource, voice: Voice, line: Line, stage: str = "raw",
              sample_rate: int | None = None) -> str:
    """The cache key of an utterance: "raw" (the source's output) or "voice" (trimmed,
    resampled to `sample_rate` and WORLD-transformed: everything but the channel)."""
    record = {"source": source.name, "version": source.version(), "base": voice.base,
              "settings": voice.settings, "text": line.text, "seed": line.seed}
    if stage != "raw":
        record.update(stage=stage, world=voice.world, sample_rate=sample_rate,
                      world_version=WORLD_VERSION)
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


WORLD_VERSION = 2  # bump when world.py changes what a transform makes


def _cached(cache_dir: Path | None, folder: str, key: str) -> tuple[Path | None,
                                                                     np.ndarray | None, int]:
    if cache_dir is None:
        return None, None, 0
    path = cache_dir / folder / key[:2] / f"{key}.flac"
    if path.exists():
        x, rate = sf.read(str(path), dtype="float64")
        return path, x, rate
    return path, None, 0


def _store(path: Path | None, x: np.ndarray, rate: int) -> np.ndarray:
    """Peak 0.9, written as 16-bit FLAC when `path`; returns what a later read gives."""
    x = 0.9 * x / np.abs(x).max()
    if path is None:
        return x
    write_audio(path, x.astype(np.float32), rate, subtype="PCM_16")
    return sf.read(str(path), dtype="float64")[0]


def trim_silence(x: np.ndarray, sample_rate: int, floor_db: float = -40.0,
                 pad_seconds: float = 0.05) -> np.ndarray:
    """Cut leading/trailing 10 ms frames below `floor_db` re. the peak, keeping `pad_seconds`."""
    frame = max(1, sample_rate // 100)
    n = len(x) // frame
    if n == 0 or not np.any(x):
        return x
    level = np.abs(x[: n * frame]).reshape(n, frame).max(axis=1)
    loud = np.flatnonzero(level > np.abs(x).max() * 10 ** (floor_db / 20))
    if len(loud) == 0:
        return x
    pad = int(pad_seconds * sample_rate)
    return x[max(0, loud[0] * frame - pad): min(len(x), (loud[-1] + 1) * frame + pad)]


def run_synthesis_program(argv: Callable[[str], list[str]], sample_rate: int,
                          what: str) -> np.ndarray:
    """Run a program that writes a WAV file (`argv(folder)`: its command line, writing
    folder/out.wav; it may put its inputs in the temporary folder too) and return that audio
    resampled to `sample_rate`, float64 (T,). VoiceSourceError naming `what` if it fails or
    writes no audio (a bare 44-byte WAV header or less)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tsmixit-voice-") as folder:
        path = os.path.join(folder, "out.wav")
        done = subprocess.run(argv(folder), capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not os.path.exists(path) or os.path.getsize(path) <= 44:
            raise VoiceSourceError(f"{what} failed: {done.stderr.strip()[-300:]}")
        x, rate = sf.read(path, dtype="float64")
    if rate != sample_rate:
        import soxr

        x = soxr.resample(x, rate, sample_rate, quality="HQ")
    return x
