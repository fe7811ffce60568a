"""Real people reading letters and syllables, from two Debian packages, for TRAINING corpora
only.

KLettres (klettres-data, KDE's alphabet tutor, GPL-2+): native speakers read the letters and
common syllables of 20 languages (one folder per language; the German letters and syllables
are two people). gcin-voice (an input method's pronunciation files): two people read the
1,200 syllables of Mandarin (3.ogg: Edward Der-Hua Liu, GPL-3 or LGPL-3; 5.ogg: Chu Lo for
the ChionMeilin project, CC BY 3.0). 23 base voices, one per person as far as the packages
tell (a person who recorded two languages would count twice); the gender is the one their
median F0 gives (below 165 Hz: "m"):

  syllables:klettres-LANG   ar cs da de-alpha de-syllab en en_GB es fr he hu it lt ml nb nds
                            nl pt_BR ru tn uk
  syllables:gcin-liu        m   zh-TW
  syllables:gcin-lo         f   zh-TW

An utterance joins random recordings of one person (first channel, resampled to 16 kHz,
trimmed at -40 dB re. their peak, 0.15 s or longer) with 0.05-0.25 s pauses until it lasts
3-6 s: a voice reading a list, not running speech, but a real voice. Set-up (root):
apt-get install -y klettres-data gcin-voice (in the Makefile's `voices-apt` target).
"""

import re
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from tsmixit.corpus.voices.base import BaseVoice, Line, Voice, VoiceSourceError, trim_silence
from tsmixit.corpus.voices.recordings import join_prompts, listed_files

name = "syllables"
licence = ("KLettres sounds (Debian klettres-data; KDE, Anne-Marie Mahfouf et al.): GPL-2+; "
           "gcin-voice (Debian gcin-voice): */3.ogg Edward Der-Hua Liu, GPL-3 or LGPL-3, "
           "*/5.ogg Chu Lo / ChionMeilin, CC BY 3.0 (per the packages' copyright files); "
           "training audio only")
cached = False
recorded = True  # utterances are joined recordings, not sentences of the grammar
SAMPLE_RATE = 16000
PACKAGES = ("klettres-data", "gcin-voice")
_FIX = "apt-get update && apt-get install -y " + " ".join(PACKAGES) + " (or make voices-apt)"
_KLETTRES = {"ar": ("f", "ar"), "cs": ("f", "cs-CZ"), "da": ("m", "da-DK"),
             "de-alpha": ("f", "de-DE"), "de-syllab": ("m", "de-DE"), "en": ("m", "en-US"),
             "en_GB": ("f", "en-GB"), "es": ("f", "es-ES"), "fr": ("m", "fr-FR"),
             "he": ("m", "he-IL"), "hu": ("m", "hu-HU"), "it": ("f", "it-IT"),
             "lt": ("m", "lt-LT"), "ml": ("m", "ml-IN"), "nb": ("f", "nb-NO"),
             "nds": ("m", "nds-DE"), "nl": ("f", "nl-NL"), "pt_BR": ("f", "pt-BR"),
             "ru": ("f", "ru-RU"), "tn": ("f", "tn-ZA"), "uk": ("f", "uk-UA")}


def _klettres_pattern(voice: str) -> str:
    folder = voice.replace("-", "/")  # de-alpha -> de/alpha (a folder of its own person)
    return rf"/usr/share/klettres/{re.escape(folder)}/"


#: base voice -> (gender, language, Debian package, pattern its file paths match)
VOICES: dict[str, tuple[str, str, str, str]] = {
    **{f"klettres-{v}": (g, lang, "klettres-data", _klettres_pattern(v))
       for v, (g, lang) in _KLETTRES.items()},
    "gcin-liu": ("m", "zh-TW", "gcin-voice", r"/usr/share/gcin-voice/ogg/[^/]+/3\.ogg$"),
    "gcin-lo": ("f", "zh-TW", "gcin-voice", r"/usr/share/gcin-voice/ogg/[^/]+/5\.ogg$"),
}


def files_by_voice() -> dict[str, list[str]]:
    """Every base voice's recordings, from the dpkg file lists (each package's read once)."""
    listed = {}
    for package in PACKAGES:
        listed[package] = listed_files(package, ".ogg")
        if listed[package] is None:
            raise VoiceSourceError(f"voice source 'syllables' needs the Debian package "
                                   f"{package}, which is not installed; fix: {_FIX}")
    return {voice: [f for f in listed[package] if re.search(pattern, f)]
            for voice, (_, _, package, pattern) in VOICES.items()}


def _checked_files() -> dict[str, list[str]]:
    files = files_by_voice()
    for voice, found in files.items():
        if not found:
            package = VOICES[voice][2]
            raise VoiceSourceError(f"the Debian package {package} lists no recordings of "
                                   f"{voice}; fix: apt-get install --reinstall -y {package}")
    return files


def check() -> None:
    _checked_files()


def base_voices() -> list[BaseVoice]:
    return [BaseVoice(f"syllables:{v}", name, g, lang) for v, (g, lang, _, _) in VOICES.items()]


def sample_settings(rng: np.random.Generator, base: BaseVoice,
                    same_split: list[BaseVoice]) -> dict[str, Any]:
    return {}


def version() -> str:
    return "debian klettres-data 4:22.12.3-1 / gcin-voice 0~20170223-3"


def _recording(path: str, min_seconds: float = 0.15) -> np.ndarray | None:
    """A recording's first channel at 16 kHz, trimmed; None when shorter than `min_seconds`."""
    try:
        x, rate = sf.read(path, dtype="float64")
    except sf.LibsndfileError as e:
        raise VoiceSourceError(f"{path}: unreadable ({e}); fix: apt-get install --reinstall -y "
                               f"{' '.join(PACKAGES)}") from e
    if x.ndim > 1:
        x = x[:, 0]
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    x = trim_silence(x, SAMPLE_RATE, pad_seconds=0.02)
    return x if len(x) >= min_seconds * SAMPLE_RATE and np.any(x) else None


class _Engine:
    sample_rate = SAMPLE_RATE

    def __init__(self, files: dict[str, list[str]]) -> None:
        self.files = files  # base voice -> its recordings

    def render(self, voice: Voice, line: Line) -> np.ndarray:
        files = self.files[voice.base.split(":", 1)[1]]
        return join_prompts(files, _recording, np.random.default_rng([line.seed, 5]),
                            SAMPLE_RATE, pause=(0.05, 0.25))


def engine() -> _Engine:
    return _Engine(_checked_files())
