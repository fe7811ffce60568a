"""The mixtures a recipe trains, validates and tests on: the manifest named by
``corpus.manifest``, or the embedded corpus built into RUN/corpus (rank 0 builds, the other
ranks wait), split into the subsets the stages read, and checked before any training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from tsmixit.data.importers import open_test_set
from tsmixit.data.manifest import Manifest, has_sources
from tsmixit.errors import ConfigError, ManifestError
from tsmixit.files import write_json_atomic
from tsmixit.training.config import RecipeConfig
from tsmixit.training.plan import Plan
from tsmixit.training.run_folder import rank, stable_hash, wait_for

log = logging.getLogger(__name__)
#: The folder of the real-voice test set in a run (eval.real_voices), and its name.
REAL_VOICES = "real-voices"


def first(manifest: Manifest, limit: int | None) -> Manifest:
    """The first `limit` rows (all when None)."""
    if limit is None or limit >= len(manifest):
        return manifest
    return Manifest(manifest.rows[:limit], name=manifest.name)


@dataclass(frozen=True)
class Splits:
    """The corpus of a run and the subsets its stages read.

    key: a hash of the manifest's content and the corpus settings (not of its path: a moved
    run folder keeps its finished stages). sample_rate, channels: of every row (C).
    """

    manifest: Manifest
    path: Path
    key: str
    sample_rate: int
    channels: int
    train: Manifest
    labelled_train: Manifest
    valid_labelled: Manifest
    valid_all: Manifest
    unlabelled: Manifest  # what the label stages label (stages.label.include_labelled, ...)
    test: Manifest  # eval.split, at most eval.max_mixtures
    extra_sets: dict[str, Manifest]  # eval.extra_sets by name

    def frames(self, seconds: float | None) -> int | None:
        return None if seconds is None else round(seconds * self.sample_rate)


def prepare_splits(config: RecipeConfig, run_dir: Path, progress: bool) -> Splits:
    """Build (rank 0) or wait for the corpus, load it and split it."""
    c = config.corpus
    if c.manifest is not None:
        path = Path(c.manifest).expanduser().resolve()
    else:
        path = _embedded_corpus(config, run_dir / "corpus", progress)
    manifest = Manifest.load(path)
    rates = {r["sample_rate"] for r in manifest.rows}
    channels = {r["channels"] for r in manifest.rows}
    if len(rates) != 1 or len(channels) != 1:
        raise ManifestError(f"{path}: rows mix sample rates {sorted(rates)} or channel "
                            f"counts {sorted(channels)}; import the corpus at one rate")
    settings = {k: v for k, v in dataclasses.asdict(c).items() if k != "manifest"}
    train = manifest.select(split="train")
    label = config.stages.label
    unlabelled = first(train if label.include_labelled else train.select(labelled=False),
                       label.max_mixtures)
    limit = config.data.valid_max_mixtures
    return Splits(
        manifest=manifest, path=path,
        key=stable_hash([hashlib.sha256(path.read_bytes()).hexdigest(), settings]),
        sample_rate=rates.pop(), channels=channels.pop(), train=train,
        labelled_train=train.select(labelled=True),
        valid_labelled=first(manifest.select(split="valid", labelled=True), limit),
        valid_all=first(manifest.select(split="valid"), limit), unlabelled=unlabelled,
        test=first(manifest.select(split=config.eval.split), config.eval.max_mixtures),
        extra_sets=extra_sets(config))


def set_name(path: Path) -> str:
    """The name of a test set in the report: its folder, or its manifest file's stem."""
    return path.parent.name if path.is_file() and path.stem == "manifest" else path.stem


def extra_sets(config: RecipeConfig) -> dict[str, Manifest]:
    """`eval.extra_sets` by name, loaded (their "test" rows, at most eval.max_mixtures);
    ConfigError naming the set and the fix when one is missing or unreadable."""
    sets: dict[str, Manifest] = {}
    for text in config.eval.extra_sets:
        path = Path(text).expanduser().resolve()
        name = set_name(path)
        if not path.exists():
            raise ConfigError(f"eval.extra_sets: {path} does not exist; give a manifest.jsonl "
                              "or a WSJ0-2mix folder (tt/mix, tt/s1, tt/s2), or remove it")
        if name in sets:
            raise ConfigError(f"eval.extra_sets: two sets are named {name!r}; rename one "
                              "folder (a set is named after its folder or manifest file)")
        if config.eval.real_voices and name == REAL_VOICES:
            raise ConfigError(f"eval.extra_sets: {path} is named {name!r} like the set of "
                              "eval.real_voices; remove it from eval.extra_sets (the recipe "
                              "builds and scores that set) or rename its folder")
        try:
            sets[name] = first(open_test_set(path, "test"), config.eval.max_mixtures)
        except ManifestError as error:
            raise ConfigError(f"eval.extra_sets: {path} is not a test set ({error}); give a "
                              "manifest with test rows or a WSJ0-2mix folder") from error
    return sets


def with_real_voices(config: RecipeConfig, sets: dict[str, Manifest], run_dir: Path
                     ) -> tuple[dict[str, Manifest], str | None]:
    """`sets` plus the real-voice test set, built once into RUN/real-voices, when
    eval.real_voices (its test rows, at most eval.max_mixtures); without its Debian packages,
    `sets` and the reason (warned)."""
    if not config.eval.real_voices:
        return sets, None
    from tsmixit.corpus.real_voices import RealVoicePackagesError, build_real_voice_set

    try:
        folder = build_real_voice_set(run_dir / REAL_VOICES, progress=config.train.progress)
    except RealVoicePackagesError as error:
        log.warning("eval.real_voices: the real-voice test set is left out: %s", error)
        return sets, str(error)
    return {**sets, REAL_VOICES: first(open_test_set(folder), config.eval.max_mixtures)}, None


def _embedded_corpus(config: RecipeConfig, folder: Path, progress: bool) -> Path:
    c = config.corpus
    stamp = folder / "recipe.json"
    key = stable_hash(dataclasses.asdict(c))
    if rank() == 0:
        if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") != key:
            log.warning("corpus settings changed: rebuilding %s", folder)
            shutil.rmtree(folder)
        if not stamp.is_file():
            from tsmixit.corpus import build_corpus

            build_corpus(folder, preset=c.preset, seed=c.seed, progress=progress, **c.options)
            write_json_atomic(stamp, {"fingerprint": key, "corpus": dataclasses.asdict(c)})
    else:
        wait_for(stamp, "the corpus", key)
    return folder / "manifest.jsonl"


def check_splits(splits: Splits, config: RecipeConfig, plan: Plan,
                 with_companion: bool) -> None:
    """Refuse, before any training, a corpus that a planned stage could not use."""
    path = splits.path
    if len(splits.train) < 2:
        raise ManifestError(f"{path}: the recipe needs at least 2 training mixtures, "
                            f"found {len(splits.train)}")
    needs_labels = [st.name for st in plan.stages if st.labels == "fraction"]
    if needs_labels and len(splits.labelled_train) == 0:
        raise ConfigError(
            f"stages {needs_labels} need labelled training mixtures but {path} has none; "
            "disable them (stages.finetune.enabled=false, "
            "stages.supervised_fraction.enabled=false) or import with a labelled fraction")
    if with_companion and splits.channels < 2:
        raise ConfigError(f"{path}: model.channels = 'both' needs multi-channel mixtures; "
                          f"the corpus has {splits.channels} channel(s): use a multi-"
                          "microphone corpus or model.channels=reference")
    k = config.model.student_outputs
    counts = {r["n_speakers"] for r in splits.manifest.rows
              if r["labelled"] and r.get("n_speakers") is not None}
    if counts - {k}:
        raise ConfigError(
            f"{path}: labelled mixtures hold {sorted(counts)} speakers but the students "
            f"have model.student_outputs={k} outputs; scoring needs exactly {k} sources: "
            f"use a corpus of {k}-speaker labelled mixtures or set model.student_outputs")
    if any(st.labels == "all" and plan.wanted(st.name) for st in plan.stages):
        missing = [r["id"] for r in splits.train.rows if not has_sources(r)]
        if missing:
            raise ConfigError(
                f"{path}: stage supervised_full needs sources for every training mixture; "
                f"{len(missing)} have none (e.g. {missing[0]}); set "
                "stages.supervised_full.enabled=false")
    if config.eval.real_voices:
        from tsmixit.corpus.real_voices import SAMPLE_RATE

        fed = 1 if config.model.channels == "reference" else splits.channels
        if splits.sample_rate != SAMPLE_RATE or fed != 1:
            raise ConfigError(f"eval.real_voices: the real-voice test set is {SAMPLE_RATE} Hz "
                              f"with one microphone; the models of this run take {fed} at "
                              f"{splits.sample_rate} Hz: set eval.real_voices=false")
    split = config.eval.split
    if plan.wanted("eval") and len(splits.manifest.select(split=split)) == 0:
        raise ConfigError(f"{path}: no mixtures in eval.split={split!r}; set eval.split "
                          "to a split the manifest has")
