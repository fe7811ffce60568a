"""The embedded offline corpus: eSpeak NG speakers mixed like WSJ0-2mix, optionally noisy
and reverberant with several microphones (see `build.build_corpus`)."""

from tsmixit.corpus.build import PRESETS, CorpusConfig, build_corpus, make_config

__all__ = ["PRESETS", "CorpusConfig", "build_corpus", "make_config"]
