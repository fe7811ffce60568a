"""The embedded offline corpus: speakers from the voice sources (eSpeak NG; Piper, Kokoro and
real recordings, transformed with WORLD: `voices/`), optional channel augmentation
(`augment.py`), mixed like WSJ0-2mix, optionally noisy and reverberant with several
microphones (see `build.build_corpus`)."""

from tsmixit.corpus.build import PRESETS, CorpusConfig, build_corpus, make_config

__all__ = ["PRESETS", "CorpusConfig", "build_corpus", "make_config"]
