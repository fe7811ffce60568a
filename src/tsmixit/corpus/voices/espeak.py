"""Synthetic speakers and their utterances, from eSpeak NG called in-process through ctypes.

The library and its data come from the `espeakng-loader` wheel (nothing from apt, no
subprocess). A speaker is an eSpeak *voice variant* (a small text file: pitch base and top,
formant frequency/height/width scales, breath, roughness, flutter, voicing, spectral tone,
optionally a Klatt voicing source) combined with an English accent and its own rate, pitch
and pitch range; every utterance adds a small jitter to rate, pitch and range.

Written by hand because no library drives eSpeak NG's C API with custom voice variants
in-process. Two properties of eSpeak shape the design:
- the library is process-global and not thread-safe, and its waveform generator keeps
  state between utterances (the flutter phase, among others) that neither
  `espeak_Terminate` nor `espeak_ng_SetRandSeed` resets. Each speaker is therefore
  synthesised in a freshly forked worker process (a pool with one task per child; the parent
  never synthesises), so its bytes depend only on the speaker, not on which worker ran it or
  on what was built before: same seed, same bytes. Forking (not spawning) also spares
  callers the `if __name__ == "__main__"` guard.
- variants are looked up under `<data>/voices/!v/`; the wheel's data folder is shared and
  must not be written to, so a private data folder of symbolic links to the wheel's files
  plus a `voices/!v/` folder holding our variants is made for each build.
"""

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soxr

from tsmixit.audio import write_audio
from tsmixit.errors import TsmixitError

ESPEAK_RATE = 22050
ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PARAM = {"rate": 1, "pitch": 3, "range": 4}


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: accent (eSpeak language voice), variant file text, and the
    speaking rate (words per minute), pitch and pitch range (eSpeak's 0-100 scales)."""

    id: str
    split: str
    gender: str  # "m" | "f"
    accent: str
    rate: int
    pitch: int
    pitch_range: int
    variant: str

    def to_dict(self) -> dict:
        return asdict(self)


def sample_speaker(rng: np.random.Generator, speaker_id: str, split: str, gender: str) -> Speaker:
    """Draw a random voice: F0 base/top (Hz) and formant scales (%) by gender, voice quality
    (breath, roughness, flutter, voicing, tone, Klatt source) and accent, rate, pitch, range."""
    female = gender == "f"
    base = rng.uniform(135, 185) if female else rng.uniform(60, 95)
    top = base + (rng.uniform(50, 110) if female else rng.uniform(25, 60))
    scale = rng.uniform(105, 117) if female else rng.uniform(93, 104)
    lines = [
        "language variant",
        f"name {speaker_id}",
        f"gender {'female' if female else 'male'}",
        f"pitch {base:.0f} {top:.0f}",
    ]
    for k in range(9):
        freq = 100 if k == 0 else scale + rng.uniform(-3, 3)
        height = rng.uniform(80, 120)
        width = rng.uniform(110, 160) if female else rng.uniform(90, 125)
        lines.append(f"formant {k} {freq:.0f} {height:.0f} {width:.0f}")
    lines += [
        f"flutter {rng.integers(0, 90)}",
        f"roughness {rng.integers(0, 6)}",
        f"voicing {rng.integers(75, 111)}",
        f"consonants {rng.integers(80, 131)} {rng.integers(80, 131)}",
        f"tone 600 {rng.integers(120, 256)} 1200 {rng.integers(100, 220)} "
        f"2000 {rng.integers(80, 200)} 3000 {rng.integers(60, 180)}",
    ]
    if rng.random() < 0.4:
        amps = rng.integers(0, 5, size=8)
        amps[0] = 0
        lines.append("breath " + " ".join(str(a) for a in amps))
    if rng.random() < 0.2:
        lines.append(f"klatt {rng.integers(1, 5)}")
    return Speaker(
        id=speaker_id,
        split=split,
        gender=gender,
        accent=ACCENTS[int(rng.integers(len(ACCENTS)))],
        rate=int(rng.integers(145, 201)),
        pitch=int(rng.integers(38, 63)),
        pitch_range=int(rng.integers(30, 85)),
        variant="\n".join(lines) + "\n",
    )


@dataclass(frozen=True)
class Utterance:
    """One sentence to synthesise with a jittered rate/pitch/range, and where it goes."""

    id: str
    text: str
    rate: int
    pitch: int
    pitch_range: int
    path: str


def jittered(speaker: Speaker, rng: np.random.Generator) -> tuple[int, int, int]:
    """Per-utterance jitter: rate +-6 %, pitch +-4 and range +-8 (eSpeak's 0-100 scales)."""
    rate = int(round(speaker.rate * rng.uniform(0.94, 1.06)))
    pitch = int(np.clip(speaker.pitch + rng.integers(-4, 5), 0, 100))
    span = int(np.clip(speaker.pitch_range + rng.integers(-8, 9), 0, 100))
    return rate, pitch, span


@contextlib.contextmanager
def espeak_home(speakers: list[Speaker]) -> Iterator[Path]:
    """A private eSpeak data folder: links to the wheel's data plus our variant files."""
    import espeakng_loader

    source = Path(espeakng_loader.get_data_path())
    with tempfile.TemporaryDirectory(prefix="tsmixit-espeak-") as tmp:
        home = Path(tmp) / "espeak-ng-data"
        home.mkdir()
        for entry in source.iterdir():
            if entry.name != "voices":
                (home / entry.name).symlink_to(entry)
        variants = home / "voices" / "!v"
        variants.mkdir(parents=True)
        for speaker in speakers:
            (variants / speaker.id).write_text(speaker.variant)
        yield home


class _Espeak:
    """The process-wide eSpeak NG engine (synchronous mode, samples collected by callback)."""

    _CALLBACK = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )

    def __init__(self, home: Path):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(home).encode(), 0)
        if rate != ESPEAK_RATE:
            raise TsmixitError(
                f"eSpeak NG failed to start from {home} (returned {rate}); reinstall the "
                "espeakng-loader wheel"
            )
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: C holds a pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, voice: str, text: str, rate: int, pitch: int, pitch_range: int,
              seed: int) -> np.ndarray:
        """Synthesise `text` with voice "accent+variant"; int16 samples at 22050 Hz."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise TsmixitError(f"eSpeak NG has no voice {voice!r}")
        for name, value in (("rate", rate), ("pitch", pitch), ("range", pitch_range)):
            self.lib.espeak_SetParameter(_PARAM[name], value, 0)
        self.lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        data = text.encode()
        status = self.lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
        )
        if status != 0 or not self._chunks:
            raise TsmixitError(f"eSpeak NG could not synthesise {text!r} (status {status})")
        return np.concatenate(self._chunks)


_ENGINE: _Espeak | None = None


def trim_silence(x: np.ndarray, sample_rate: int, floor_db: float = -40.0,
                 pad_seconds: float = 0.05) -> np.ndarray:
    """Cut leading/trailing samples below `floor_db` re. the peak (10 ms frames), keeping
    `pad_seconds` on each side."""
    frame = max(1, sample_rate // 100)
    n = len(x) // frame
    level = np.abs(x[: n * frame]).reshape(n, frame).max(axis=1)
    loud = np.flatnonzero(level > np.abs(x).max() * 10 ** (floor_db / 20))
    pad = int(pad_seconds * sample_rate)
    start = max(0, loud[0] * frame - pad)
    stop = min(len(x), (loud[-1] + 1) * frame + pad)
    return x[start:stop]


def synthesize_speaker(home: str, speaker: Speaker, utterances: list[Utterance],
                       sample_rate: int, seed: int) -> list[int]:
    """Worker task: synthesise, trim, resample (soxr) and peak-normalise (0.9) each
    utterance, write it as 16-bit FLAC; return the frame counts. Must run in a fresh process
    (see the module docstring)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak(Path(home))
    frames = []
    for k, utt in enumerate(utterances):
        pcm = _ENGINE.synth(
            f"{speaker.accent}+{speaker.id}", utt.text, utt.rate, utt.pitch, utt.pitch_range,
            seed=(seed * 1_000_003 + k) % 2**31,
        )
        x = trim_silence(pcm.astype(np.float64) / 32768.0, ESPEAK_RATE)
        x = soxr.resample(x, ESPEAK_RATE, sample_rate, quality="HQ")
        x = 0.9 * x / np.abs(x).max()
        write_audio(utt.path, x.astype(np.float32), sample_rate, subtype="PCM_16")
        frames.append(len(x))
    return frames


def _speaker_task(args: tuple) -> list[int]:
    return synthesize_speaker(*args)


def synthesize_all(
    jobs: list[tuple[Speaker, list[Utterance], int]],
    sample_rate: int,
    workers: int,
    progress: bool,
) -> None:
    """Synthesise every (speaker, utterances, seed) job, each in a fresh forked process
    (`workers` at a time), with a progress bar over utterances."""
    import multiprocessing as mp

    from tqdm import tqdm

    if not jobs:
        return
    if _ENGINE is not None:
        raise TsmixitError("eSpeak NG already synthesised in this process; forked workers "
                           "would inherit its state: build corpora from a fresh process")
    ctx = mp.get_context("fork")  # a child per speaker, forked from a parent that never synthesises
    total = sum(len(u) for _, u, _ in jobs)
    with espeak_home([s for s, _, _ in jobs]) as home, tqdm(
        total=total, desc="synthesising speech", unit="utt", disable=not progress
    ) as bar, ctx.Pool(min(workers, len(jobs)), maxtasksperchild=1) as pool:
        tasks = [(str(home), s, u, sample_rate, seed) for s, u, seed in jobs]
        for frames in pool.imap_unordered(_speaker_task, tasks):
            bar.update(len(frames))


def speaker_is_done(utterances: list[Utterance]) -> bool:
    """True when every utterance file exists (they are written atomically)."""
    return all(os.path.exists(u.path) for u in utterances)
