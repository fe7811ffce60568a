"""The realistic voices of a corpus: which base voice goes to which split, the voices derived
from each base, their utterances, and their synthesis (build.py calls `draw_voices` and
`synthesize`).

Splits by BASE voice: each source's base voices are dealt to the splits first (one base to
`valid` and one to `test` when the source has voices there, the rest to `train`; the held-out
bases are drawn from the source's majority gender, so a source's only male voice, say, stays
in training), then every voice of a split is derived from a base of that split (round robin
over them), and a Kokoro blend only mixes bases of its own split. No base voice of the test
split is heard in training, by construction; `base_splits` shows the deal.

Voice k of a base is its plain voice (k = 0, the source's settings only) or a WORLD-transformed
one (k >= 1, when `world` is on). Utterances: sentences from the corpus grammar (the same word
counts as the eSpeak speakers) or, for recordings, joined prompts. Each utterance has its own
seed; `augment` sends that share of them through a random channel (augment.py).
"""

from pathlib import Path
from typing import Any

import numpy as np

import tsmixit.corpus.voices.world as _world
from tsmixit.corpus.grammar import SentenceGrammar
from tsmixit.corpus.voices.base import (
    BaseVoice,
    Line,
    Voice,
    VoiceSourceError,
    default_cache_dir,
)
from tsmixit.corpus.voices.sources import get_source
from tsmixit.corpus.voices.synthesis import synthesize_voices

SPLITS = ("train", "valid", "test")
_PREFIX = {"train": "tr", "valid": "cv", "test": "tt"}
_STAGE_BASES, _STAGE_VOICES, _STAGE_LINES = 21, 22, 23
# append only: draws use the index
ORDER = ("piper", "kokoro", "recordings", "flite", "festival", "kokoro_js", "syllables")


def counts(config: Any) -> dict[str, tuple[int, int, int]]:
    """Voices per split of each source with any."""
    out = {"piper": (config.piper, 0, 0), **{k: tuple(getattr(config, k)) for k in ORDER[1:]}}
    return {k: v for k, v in out.items() if sum(v) > 0}


def base_splits(source: str, bases: list[BaseVoice], want: tuple[int, int, int],
                seed: int) -> dict[str, list[BaseVoice]]:
    """Deal the base voices of a source to the splits (see the module docstring)."""
    held = [split for split, n in zip(SPLITS[1:], want[1:], strict=True) if n > 0]
    if len(bases) - len(held) < (1 if want[0] > 0 else 0):
        raise VoiceSourceError(
            f"voice source '{source}' has {len(bases)} base voice(s): too few to hold one out "
            f"for each of {held} and keep one for training; set its valid/test counts to 0")
    rng = np.random.default_rng([seed, _STAGE_BASES, ORDER.index(source)])
    genders = [b.gender for b in bases]
    major = max(set(genders), key=lambda g: (genders.count(g), g))
    pool = [b for b in bases if b.gender == major]
    if len(pool) < len(held):
        pool = list(bases)
    chosen = [pool[int(i)] for i in rng.permutation(len(pool))[: len(held)]]
    out = {split: [] for split in SPLITS}
    for split, b in zip(held, chosen, strict=True):
        out[split] = [b]
    out["train"] = [b for b in bases if b not in chosen] if want[0] > 0 else []
    return out


def draw_voices(config: Any, seed: int) -> dict[str, list[Voice]]:
    """Every realistic voice of the corpus, per split (checks that each source is installed)."""
    out: dict[str, list[Voice]] = {split: [] for split in SPLITS}
    for source_name, want in counts(config).items():
        source = get_source(source_name)
        source.check()
        if config.world:
            _world.check()
        deal = base_splits(source_name, source.base_voices(), want, seed)
        for k, split in enumerate(SPLITS):
            bases = deal[split]
            for i in range(want[k]):
                base = bases[i % len(bases)]
                variant = i // len(bases)
                rng = np.random.default_rng([seed, _STAGE_VOICES, ORDER.index(source_name), k, i])
                settings = source.sample_settings(rng, base, bases)
                transform = None
                if config.world and variant > 0:
                    transform = _world.sample_transform(rng, base.gender).to_dict()
                vid = f"{_PREFIX[split]}-{source_name}{i:03d}{base.gender}"
                out[split].append(Voice(vid, split, base.id, source_name, base.gender, settings,
                                        transform, float(config.augment)))
    return out


def lines_of(config: Any, seed: int, out_dir: Path, voice: Voice, index: tuple[int, ...]
             ) -> list[Line]:
    rng = np.random.default_rng([seed, _STAGE_LINES, *index])
    grammar = SentenceGrammar(rng)
    n = config.utterances[0 if voice.split == "train" else 1]
    lines = []
    for j in range(n):
        uid = f"{voice.id}_{j:03d}"
        text = None if get_source(voice.source).recorded else grammar.sentence(*config.words)
        lines.append(Line(uid, text, str(out_dir / "utterances" / voice.id / f"{uid}.flac"),
                          int(rng.integers(2**31))))
    return lines


def synthesize(config: Any, seed: int, out_dir: Path, voices: dict[str, list[Voice]],
               progress: bool) -> dict[str, list[Line]]:
    """Synthesise the voices whose files are not all there yet; every voice's lines."""
    import os

    out, jobs = {}, []
    for k, split in enumerate(SPLITS):
        for i, voice in enumerate(voices.get(split, [])):
            lines = lines_of(config, seed, out_dir, voice, (ORDER.index(voice.source), k, i))
            out[voice.id] = lines
            if not all(os.path.exists(line.path) for line in lines):
                jobs.append((voice, lines))
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    synthesize_voices(jobs, config.sample_rate, config.workers, progress, cache)
    return out


def sources_record(config: Any, seed: int) -> dict[str, Any]:
    """What sources.json records: per source its licence, package versions and the base
    voices of each split; and the WORLD vocoder's licence when transforms are on."""
    out: dict[str, Any] = {}
    for name, want in counts(config).items():
        source = get_source(name)
        deal = base_splits(name, source.base_voices(), want, seed)
        out[name] = {"licence": source.licence, "version": source.version(),
                     "voices": dict(zip(SPLITS, want, strict=True)),
                     "base_voices": {s: [b.id for b in deal[s]] for s in SPLITS}}
    if config.world:
        out["world"] = {"licence": _world.licence}
    if config.augment > 0:
        out["augment"] = {"share": config.augment}
    return out
