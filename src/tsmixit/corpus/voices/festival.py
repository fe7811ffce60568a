"""Festival voices (Debian `festival` and its `festvox-*` voice packages): eleven people, each
recorded for a diphone, unit-selection or HTS voice, in seven languages. They read the corpus
grammar's English sentences with their own language's phonetics: what they bring is a real
person's timbre, not English.

    ked          festvox-kdlpc16k      US English male (diphone)
    pc, lp       festvox-itapc16k/-italp16k   Italian male, female (diphone)
    dita, machac, ph, krb   festvox-czech-*   Czech female, male, male, boy
    nsh          festvox-ru            Russian male (unit selection)
    lj, mv       festvox-suopuhe-lj/-mv       Finnish female, male (diphone)
    ona          festvox-ca-ona-hts    Catalan female (HTS)

A voice's own setting is its speaking rate (`Duration_Stretch` 0.85-1.2); WORLD transforms
(world.py) do the rest. Festival runs as a subprocess (`text2wave -eval "(voice_V)"`):
deterministic, well under a second per sentence, so not cached. The Hindi voice
(festvox-hi-nsk) is left out: its front end crashes on English text.
Set-up (root): apt-get install -y festival festvox-kdlpc16k ... (or make voices-apt).
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tsmixit.corpus.voices.base import (
    BaseVoice,
    Line,
    Voice,
    VoiceSourceError,
    run_synthesis_program,
)

name = "festival"
cached = False
recorded = False
VOICE_ROOT = Path("/usr/share/festival/voices")


class FestivalVoice(NamedTuple):
    voice: str     # Festival's name: `(voice_<voice>)` selects it
    folder: str    # where its package installs it, under VOICE_ROOT
    gender: str
    language: str
    package: str   # the Debian package that brings it


#: base voice (the name after "festival:") -> its Festival voice
VOICES: dict[str, FestivalVoice] = {k: FestivalVoice(*v) for k, v in {
    "ked": ("ked_diphone", "english/ked_diphone", "m", "en-US", "festvox-kdlpc16k"),
    "pc": ("pc_diphone", "italian/pc_diphone", "m", "it-IT", "festvox-itapc16k"),
    "lp": ("lp_diphone", "italian/lp_diphone", "f", "it-IT", "festvox-italp16k"),
    "dita": ("czech_dita", "czech/czech_dita", "f", "cs-CZ", "festvox-czech-dita"),
    "machac": ("czech_machac", "czech/czech_machac", "m", "cs-CZ", "festvox-czech-machac"),
    "ph": ("czech_ph", "czech/czech_ph", "m", "cs-CZ", "festvox-czech-ph"),
    "krb": ("czech_krb", "czech/czech_krb", "m", "cs-CZ", "festvox-czech-krb"),
    "nsh": ("msu_ru_nsh_clunits", "russian/msu_ru_nsh_clunits", "m", "ru-RU", "festvox-ru"),
    "lj": ("suo_fi_lj_diphone", "finnish/suo_fi_lj_diphone", "f", "fi-FI",
           "festvox-suopuhe-lj"),
    "mv": ("hy_fi_mv_diphone", "finnish/hy_fi_mv_diphone", "m", "fi-FI", "festvox-suopuhe-mv"),
    "ona": ("upc_ca_ona_hts", "catalan/upc_ca_ona_hts", "f", "ca-ES", "festvox-ca-ona-hts"),
}.items()}
# The Italian front end fails on questions (SIOD "wrong type of argument to get_c_val", an
# empty file): these voices read them as statements.
_NO_QUESTIONS = {"pc", "lp"}
PACKAGES = ("festival", *sorted({v.package for v in VOICES.values()}))
licence = ("Festival 2.5 (Debian festival): free licence (University of Edinburgh, CMU; "
           "use, modify, redistribute); voices per their Debian copyright files: ked "
           "(festvox-kdlpc16k) and nsh (festvox-ru) the same free Festival licence (festvox-ru's "
           "scheme code GPL-3), pc, lp GPL-2+, Czech dita, machac, krb GPL-3+ and ph GPL-2+, "
           "Finnish lj, mv LGPL, Catalan ona LGPL-2.1+ (training audio only, no weights "
           "derived from their code)")
_FIX = f"apt-get install -y {' '.join(PACKAGES)} (or make voices-apt)"


def check() -> None:
    missing = [v.package for v in VOICES.values() if not (VOICE_ROOT / v.folder).is_dir()]
    if shutil.which("text2wave") is None:
        missing.insert(0, "festival")
    if missing:
        raise VoiceSourceError(f"voice source 'festival' needs {', '.join(missing)}, not "
                               f"installed; fix: {_FIX}")


def base_voices() -> list[BaseVoice]:
    return [BaseVoice(f"festival:{k}", name, v.gender, v.language) for k, v in VOICES.items()]


def sample_settings(rng: np.random.Generator, base: BaseVoice,
                    same_split: list[BaseVoice]) -> dict[str, Any]:
    return {"duration_stretch": round(float(rng.uniform(0.85, 1.2)), 4)}


def version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *PACKAGES],
                             capture_output=True, text=True, timeout=10)
        return "; ".join(out.stdout.splitlines()) or "festival"
    except (OSError, subprocess.SubprocessError):
        return "festival (version unknown)"


class _Engine:
    sample_rate = 16000

    def render(self, voice: Voice, line: Line) -> np.ndarray:
        base = voice.base.split(":", 1)[1]
        festival_voice = VOICES[base].voice
        stretch = voice.settings["duration_stretch"]
        words = (line.text or "").replace("?", ".") if base in _NO_QUESTIONS else line.text

        def argv(folder: str) -> list[str]:
            text = Path(folder) / "in.txt"
            text.write_text(words or "")
            return ["text2wave", "-o", os.path.join(folder, "out.wav"),
                    "-eval", f"(voice_{festival_voice})",
                    "-eval", f"(Parameter.set 'Duration_Stretch {stretch})", str(text)]

        return run_synthesis_program(argv, self.sample_rate,
                                     f"festival voice {festival_voice} on {line.text!r}")


def engine() -> _Engine:
    check()
    return _Engine()
