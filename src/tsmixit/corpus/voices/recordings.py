"""Real recorded voices from Debian packages of telephone-system prompts (8 kHz, 16-bit wav),
for TRAINING corpora only.

Five people, each a base voice (the same "Allison" voice reads both the US English and the
Mexican Spanish prompts: one base voice, two packages):

  recordings:allison   f  asterisk-core-sounds-en-wav, asterisk-core-sounds-es-wav   CC BY-SA 3.0
  recordings:june      f  asterisk-core-sounds-fr-wav (Canadian French)              CC BY-SA 3.0
  recordings:carlo     m  asterisk-core-sounds-it-wav                                CC BY-SA 3.0
  recordings:menardi   f  asterisk-prompt-it-menardi-wav                             CC BY-SA 3.0 IT
  recordings:ivrvoice  f  asterisk-core-sounds-ru-wav                                CC BY-SA 3.0

The two voices of the real-voice development set (asterisk-prompt-es-co,
asterisk-prompt-fr-armelle) are never read: files are taken from each listed package's own
dpkg file list, and those two packages are refused by name. An utterance joins random prompts
of one voice (each trimmed at -40 dB re. its peak) with 0.1-0.3 s pauses until it lasts
3-6 s. Set-up (root): apt-get install -y followed by the packages above (the Makefile's
`voices-apt` target).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tsmixit.corpus.voices.base import BaseVoice, Line, Voice, VoiceSourceError

name = "recordings"
licence = ("Asterisk core sounds 1.6.1 (Digium; voices en_US/es_MX_f_Allison, fr_CA_f_June, "
           "it_IT_m_Carlo, ru_RU_f_IvrvoiceRU): Creative Commons BY-SA 3.0; it_IT_f_Menardi "
           "prompts: CC BY-SA 3.0 Italy (per the packages' copyright files); training audio "
           "only")
cached = False
recorded = True  # utterances are joined recordings, not sentences of the grammar
SAMPLE_RATE = 8000
DPKG_INFO = Path("/var/lib/dpkg/info")
PACKAGES = {
    "allison": ("f", "en-US", ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-es-wav")),
    "june": ("f", "fr-CA", ("asterisk-core-sounds-fr-wav",)),
    "carlo": ("m", "it-IT", ("asterisk-core-sounds-it-wav",)),
    "menardi": ("f", "it-IT", ("asterisk-prompt-it-menardi-wav",)),
    "ivrvoice": ("f", "ru-RU", ("asterisk-core-sounds-ru-wav",)),
}
DEV_SET_PACKAGES = ("asterisk-prompt-es-co", "asterisk-prompt-fr-armelle")
ALL_PACKAGES = tuple(p for _, _, pkgs in PACKAGES.values() for p in pkgs)
_FIX = "apt-get update && apt-get install -y " + " ".join(ALL_PACKAGES) + " (or make voices-apt)"


def listed_files(package: str, suffix: str) -> list[str] | None:
    """The files ending in `suffix` that a Debian package installed and that are still on
    disk, from its dpkg file list; None when the package is not installed."""
    listing = DPKG_INFO / f"{package}.list"
    if not listing.exists():
        return None
    return sorted(p for p in listing.read_text().split("\n")
                  if p.endswith(suffix) and Path(p).is_file())


def files_of(package: str) -> list[str]:
    """The .wav files a Debian package installed, from its dpkg file list."""
    if package in DEV_SET_PACKAGES:
        raise VoiceSourceError(f"{package} holds a voice of the real-voice development set: "
                               "it is for measuring only, never for training")
    files = listed_files(package, ".wav")
    if files is None:
        raise VoiceSourceError(f"voice source 'recordings' needs the Debian package {package}, "
                               f"which is not installed; fix: {_FIX}")
    return files


def check() -> None:
    for package in ALL_PACKAGES:
        if not files_of(package):
            raise VoiceSourceError(f"the Debian package {package} lists no wav files; fix: "
                                   f"apt-get install --reinstall -y {package}")


def base_voices() -> list[BaseVoice]:
    return [BaseVoice(f"recordings:{v}", name, g, lang) for v, (g, lang, _) in PACKAGES.items()]


def sample_settings(rng: np.random.Generator, base: BaseVoice,
                    same_split: list[BaseVoice]) -> dict[str, Any]:
    return {}


def version() -> str:
    return "debian asterisk sounds 1.6.1 / menardi 20110907"


def trim(x: np.ndarray, floor_db: float = -40.0, pad: int = 80) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > np.abs(x).max() * 10 ** (floor_db / 20)) if np.any(x) \
        else np.zeros(0, int)
    return x[max(idx[0] - pad, 0): idx[-1] + pad] if len(idx) else x


def join_prompts(files: list[str], load: Callable[[str], np.ndarray | None],
                 rng: np.random.Generator, sample_rate: int, pause: tuple[float, float],
                 seconds: tuple[float, float] = (3.0, 6.0)) -> np.ndarray:
    """One utterance of a recorded voice: `load`ed prompts (None: skip that file) in random
    order, joined by U(`pause`) s of silence until the utterance lasts U(`seconds`) s, cut at
    the longest; float64 (T,)."""
    target = rng.uniform(*seconds) * sample_rate
    pieces, n = [], 0
    for k in rng.permutation(len(files)):
        x = load(files[k])
        if x is None:
            continue
        pieces += [x, np.zeros(int(rng.uniform(*pause) * sample_rate))]
        n += len(x) + len(pieces[-1])
        if n >= target:
            break
    if not pieces:
        raise VoiceSourceError(f"none of the {len(files)} recordings of this voice could be "
                               f"used (first: {files[0] if files else 'none'})")
    return np.concatenate(pieces[:-1])[: int(seconds[1] * sample_rate)]


def _prompt(path: str) -> np.ndarray | None:
    """A prompt's first channel, trimmed; None when not 8 kHz or shorter than 0.3 s."""
    x, rate = sf.read(path, dtype="float64")
    if x.ndim > 1:
        x = x[:, 0]
    if rate != SAMPLE_RATE or len(x) == 0:
        return None
    x = trim(x)
    return x if len(x) >= 0.3 * SAMPLE_RATE else None


class _Engine:
    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        self.files = {v: [f for p in pkgs for f in files_of(p)]
                      for v, (_, _, pkgs) in PACKAGES.items()}

    def render(self, voice: Voice, line: Line) -> np.ndarray:
        files = self.files[voice.base.split(":", 1)[1]]
        return join_prompts(files, _prompt, np.random.default_rng([line.seed, 5]), SAMPLE_RATE,
                            pause=(0.1, 0.3))


def engine() -> _Engine:
    check()
    return _Engine()
