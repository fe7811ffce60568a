"""CMU Flite voices (Debian package `flite`; engine and voices under CMU's free licence, a
few engine files GPL-2): the CMU ARCTIC clustergen voices awb (Scottish English male), rms
(US male), slt (US female) and the kal diphone voice (US male), 16 kHz (kal: 8 kHz).

Four base voices, one person each; a voice's own setting is its speaking rate
(`duration_stretch` 0.85-1.2), the rest comes from WORLD transforms (world.py). Flite is run
as a subprocess (`flite -voice V -t TEXT -o FILE`): deterministic, about 0.02 s per second of
speech, so not cached. Set-up (root): apt-get install -y flite.
"""

import os
import shutil
import subprocess
from typing import Any

import numpy as np

from tsmixit.corpus.voices.base import (
    BaseVoice,
    Line,
    Voice,
    VoiceSourceError,
    run_synthesis_program,
)

name = "flite"
licence = ("CMU Flite 2.2 (Debian flite): CMU licence (free use and redistribution), some "
           "engine files GPL-2; voices awb, rms, slt from CMU ARCTIC (free licence)")
cached = False
recorded = False
_VOICES = {"awb": ("m", "en-GB"), "rms": ("m", "en-US"), "slt": ("f", "en-US"),
           "kal16": ("m", "en-US")}
_FIX = "apt-get install -y flite (or make voices-apt)"


def check() -> None:
    if shutil.which("flite") is None:
        raise VoiceSourceError(f"voice source 'flite' needs the flite program, which is not "
                               f"installed; fix: {_FIX}")


def base_voices() -> list[BaseVoice]:
    return [BaseVoice(f"flite:{v}", name, g, lang) for v, (g, lang) in _VOICES.items()]


def sample_settings(rng: np.random.Generator, base: BaseVoice,
                    same_split: list[BaseVoice]) -> dict[str, Any]:
    return {"duration_stretch": round(float(rng.uniform(0.85, 1.2)), 4)}


def version() -> str:
    try:
        out = subprocess.run(["flite", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.stdout else "flite"
    except (OSError, subprocess.SubprocessError):
        return "flite missing"


class _Engine:
    sample_rate = 16000

    def render(self, voice: Voice, line: Line) -> np.ndarray:
        v = voice.base.split(":", 1)[1]
        stretch = voice.settings["duration_stretch"]
        return run_synthesis_program(
            lambda folder: ["flite", "-voice", v, "-t", line.text or "", "-o",
                            os.path.join(folder, "out.wav"), "--setf",
                            f"duration_stretch={stretch}"],
            self.sample_rate, f"flite on {line.text!r}")


def engine() -> _Engine:
    check()
    return _Engine()
