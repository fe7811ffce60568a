"""The registry of realistic voice sources: name -> module, and every source's licence."""

from types import ModuleType

import tsmixit.corpus.voices.festival as festival
import tsmixit.corpus.voices.flite as flite
import tsmixit.corpus.voices.kokoro as kokoro
import tsmixit.corpus.voices.kokoro_js as kokoro_js
import tsmixit.corpus.voices.piper as piper
import tsmixit.corpus.voices.recordings as recordings
import tsmixit.corpus.voices.syllables as syllables
import tsmixit.corpus.voices.world as world
from tsmixit.corpus.voices.base import VoiceSourceError

SOURCES: dict[str, ModuleType] = {"piper": piper, "kokoro": kokoro, "recordings": recordings,
                                   "flite": flite, "festival": festival, "kokoro_js": kokoro_js,
                                   "syllables": syllables}
LICENCES: dict[str, str] = {
    "espeak": "eSpeak NG (espeakng-loader wheel): GPL-3.0-or-later engine and voice data",
    **{k: m.licence for k, m in SOURCES.items()},
    "world": world.licence,
}


def get_source(name: str) -> ModuleType:
    """The source module `name`; VoiceSourceError listing the known ones otherwise."""
    if name not in SOURCES:
        raise VoiceSourceError(f"unknown voice source {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]
