"""The TS-MixIT recipe: teacher -> label -> student -> finetune -> distil rounds ->
supervised baselines -> evaluation -> export -> report, in one resumable run folder.

Run folder (RUN):
    config.yaml                     the resolved config of the latest call
    corpus/                         the embedded corpus, when the recipe builds it
    <stage>/                        teacher, label, student, finetune, distill<r>_label,
                                    distill<r>_student, distill<r>_finetune,
                                    supervised_full, supervised_fraction
        stage.json                  the stage's config and fingerprint (written first)
        checkpoints/best.ckpt       best on validation (training stages)
        checkpoints/last.ckpt       written every train.checkpoint_every steps; resumes
        metrics.csv, hparams.yaml   Lightning CSVLogger; tensorboard/ TensorBoardLogger
        manifest.jsonl, audio/, rows/, active_outputs.json   (label stages)
        summary.json                written last: its existence means "stage finished"
    eval/<system>.json, model/, report.md
Files in RUN are named relative to RUN (summaries, pseudo-label manifests, evaluations):
the folder can be moved or copied whole.

A stage is skipped when its summary.json exists with the current fingerprint (a hash of
the config sections it depends on and of its upstream stages' fingerprints); a stage with
another fingerprint is discarded and redone, and so is everything downstream of it. An
interrupted stage resumes from checkpoints/last.ckpt (model, optimiser, plateau scheduler,
step counters, timer and the position in the epoch's data order), giving the same weights
as an uninterrupted run on the same hardware.

Distributed runs (torchrun, SLURM, or Lightning's own launcher) execute this whole
function on every process: rank 0 alone builds the corpus, writes summaries, evaluates and
reports; the Trainers share the work of training and pseudo-labelling.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tsmixit.data.datasets import LabelledDataset, MixtureOfMixturesDataset, SegmentDataset
from tsmixit.data.manifest import Manifest, has_sources
from tsmixit.errors import CheckpointError, ConfigError, ManifestError, TrainingError
from tsmixit.files import write_json_atomic, write_text_atomic
from tsmixit.models.conv_tasnet import ConvTasNet
from tsmixit.training.config import BUDGET_STAGES, Budget, RecipeConfig, stage_budget
from tsmixit.training.systems import (
    MixITTeacher,
    PITSeparator,
    PseudoLabeller,
    init_from_teacher,
    read_label_record,
)

log = logging.getLogger(__name__)

# Keys that change how a stage runs, not what it computes: excluded from fingerprints.
EXECUTION_KEYS = {
    "data": ("num_workers",),
    "train": ("accelerator", "devices", "num_nodes", "strategy", "progress", "log_every",
              "checkpoint_every"),
}
# Model keys a kind of stage never reads: changing them leaves its fingerprint alone (a new
# student setting does not retrain the teacher). The teacher and the labeller read
# k = student_outputs: the top-k outputs are validated and kept as pseudo-targets.
UNREAD_MODEL_KEYS = {"teacher": ("student_consistency",), "label": ("student_consistency",),
                     "supervised": ("teacher_outputs", "teacher_consistency")}
QUICK = {"steps": 8, "val_every": 4, "label_mixtures": 16, "eval_mixtures": 6, "valid": 6,
         "preset": "tiny", "segment_seconds": 1.0, "batch_size": 2}


# ---------------------------------------------------------------------------------------
# Small utilities


def _rank() -> int:
    return rank_zero_only.rank


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock (rank 0) while the recipe runs: a second recipe on the same folder would
    resume from the first one's checkpoints while it still writes them."""
    if _rank() != 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise TrainingError(
                f"{run_dir} is in use by another tsmixit recipe ({holder}); wait for it to end "
                "(it resumes where it stops) or choose another --run-dir") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _wait_for(path: Path, what: str, fingerprint: str | None = None,
              timeout_s: float = 24 * 3600) -> None:
    """Ranks > 0 wait for rank 0 to write `path` (a JSON file holding `fingerprint`, when
    given): work done outside any Trainer, before a process group exists."""

    def ready() -> bool:
        if not path.is_file():
            return False
        return fingerprint is None or json.loads(path.read_text()).get(
            "fingerprint") == fingerprint

    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            raise TrainingError(f"rank {_rank()}: gave up waiting for {what} ({path})")
        time.sleep(1.0)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def quick_config(config: RecipeConfig) -> RecipeConfig:
    """A smoke-test version of `config` (minutes on a CPU): the tiny Conv-TasNet, a few
    steps per stage on short crops, few mixtures labelled, validated and evaluated."""
    c = dataclasses.replace(config)  # shallow; every section below is replaced, not mutated
    stages = dataclasses.replace(config.stages)
    for name in BUDGET_STAGES:
        setattr(stages, name, dataclasses.replace(
            getattr(config.stages, name), max_steps=QUICK["steps"], max_epochs=None,
            max_minutes=None))
    stages.label = dataclasses.replace(config.stages.label, max_mixtures=QUICK["label_mixtures"])
    c.stages = stages
    c.train = dataclasses.replace(config.train, val_every=QUICK["val_every"])
    c.data = dataclasses.replace(config.data, valid_max_mixtures=QUICK["valid"],
                                 segment_seconds=QUICK["segment_seconds"],
                                 batch_size=QUICK["batch_size"])
    c.model = dataclasses.replace(config.model, preset=QUICK["preset"])
    c.eval = dataclasses.replace(config.eval, max_mixtures=QUICK["eval_mixtures"])
    return c


def _subset(manifest: Manifest, limit: int | None) -> Manifest:
    """The first `limit` rows (all when None)."""
    if limit is None or limit >= len(manifest):
        return manifest
    return Manifest(manifest.rows[:limit], name=manifest.name)


# ---------------------------------------------------------------------------------------
# Data plumbing


class ResumableSampler(DistributedSampler):
    """DistributedSampler (one shard per rank; a single process is rank 0 of 1) that also
    moves the dataset to the epoch (fresh crops and pairings) and, after a resume, skips
    the batches of the current epoch that were already trained on."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 shuffle: bool, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.batch_size = batch_size
        self.resume_epoch, self.resume_batches = -1, 0

    def set_epoch(self, epoch: int) -> None:
        # Only training data moves with the epoch: validation keeps its epoch-0 crops and
        # pairings so that every validation (best checkpoint, plateau) scores the same data.
        super().set_epoch(epoch)
        if self.shuffle and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.epoch == self.resume_epoch:
            indices = indices[self.resume_batches * self.batch_size:]
            self.resume_epoch = -1
        return iter(indices)


class StageData(L.LightningDataModule):
    """Training and validation loaders of one stage. Its state (epoch and batches done in
    it) travels in the checkpoint so that a resumed epoch continues where it stopped."""

    def __init__(self, train: Dataset, valid: Dataset | None, batch_size: int,
                 num_workers: int, seed: int, valid_batch_size: int) -> None:
        super().__init__()
        self.train_set, self.valid_set = train, valid
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.valid_batch_size = valid_batch_size
        self._resume: dict | None = None

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler = ResumableSampler(dataset, self.trainer.world_size, self.trainer.global_rank,
                                   self.seed, shuffle=train, batch_size=batch_size)
        if train and self._resume is not None:
            sampler.resume_epoch = self._resume["epoch"]
            sampler.resume_batches = self._resume["batches"]
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
            num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.valid_set is None:
            return []
        return self._loader(self.valid_set, self.valid_batch_size, train=False)

    def state_dict(self) -> dict:
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state


class _IndexedMixtures(Dataset):
    """Full-length mixtures of selected rows, with their row index (for labelling)."""

    def __init__(self, manifest: Manifest, indices: list[int]) -> None:
        self.manifest, self.indices = manifest, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = self.indices[i]
        return {"index": torch.tensor(index),
                "mixture": torch.from_numpy(self.manifest.load_mixture(index))}


class _StageLine(Callback):
    """One line per validation into the log (progress bars show the rest)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        text = ", ".join(f"{k} {v:.3f}" for k, v in sorted(values.items()))
        log.info("[%s] step %d: %s", self.stage, trainer.global_step, text)


# ---------------------------------------------------------------------------------------
# Checkpoints


def load_checkpoint(path: Path) -> dict:
    """torch.load a training checkpoint (tensors and containers only); CheckpointError
    naming the path when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; rerun its stage (delete "
                              f"{path.parent.parent}/summary.json) or start with --fresh")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means corrupt
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({type(error).__name__}: "
            f"{error}); delete it to restart that stage from scratch, or rerun with --fresh"
        ) from error
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"checkpoint {path} lacks state_dict/hyper_parameters; delete it "
                              "to restart that stage, or rerun with --fresh")
    return ckpt


def load_separator(path: Path) -> ConvTasNet:
    """The Conv-TasNet of a training checkpoint, in eval mode."""
    ckpt = load_checkpoint(path)
    model = ConvTasNet(**ckpt["hyper_parameters"]["model_hparams"])
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit its model ({error})"
        ) from error
    return model.eval()


# ---------------------------------------------------------------------------------------
# The recipe


@dataclasses.dataclass
class _Stage:
    name: str
    kind: str  # teacher | label | student | finetune | supervised
    upstream: list[str]
    sections: dict[str, Any]  # config the stage depends on, beyond the shared sections


class Recipe:
    """One recipe run: the config, the run folder, the corpus and the stage plan."""

    def __init__(self, config: RecipeConfig, run_dir: Path, stages: list[str] | None,
                 with_companion: bool = False, home: Path | None = None) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.home = Path(home or run_dir)  # the folder that moves as a whole (RUN for RUN/mic0)
        self.with_companion = with_companion  # model.channels = "both": mic 0 runs next
        self.only = set(stages) if stages else None
        self.plan = self._plan()
        unknown = sorted((self.only or set()) - self._selectable())
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; choose from "
                              f"{sorted(self._selectable())}")
        self.fingerprints: dict[str, str] = {}
        self.summaries: dict[str, dict] = {}

    # -- plan ------------------------------------------------------------------------

    def _plan(self) -> list[_Stage]:
        s = self.config.stages
        plan = [
            _Stage("teacher", "teacher", [], {"teacher": s.teacher}),
            _Stage("label", "label", ["teacher"], {"label": s.label, "mode": self._label_mode()}),
            _Stage("student", "student", ["label", "teacher"], {"student": s.student}),
        ]
        last = "student"
        if s.finetune.enabled:
            plan.append(_Stage("finetune", "finetune", ["student"], {"finetune": s.finetune}))
            last = "finetune"
        for r in range(1, s.distill.rounds + 1):
            prefix = f"distill{r}"
            plan.append(_Stage(f"{prefix}_label", "label", [last],
                               {"label": s.label, "mode": self._label_mode()}))
            plan.append(_Stage(f"{prefix}_student", "student", [f"{prefix}_label", last],
                               {"student": s.student, "distill": s.distill}))
            last = f"{prefix}_student"
            if s.finetune.enabled:
                plan.append(_Stage(f"{prefix}_finetune", "finetune", [last],
                                   {"finetune": s.finetune}))
                last = f"{prefix}_finetune"
        for name in ("supervised_full", "supervised_fraction"):
            if getattr(s, name).enabled:
                plan.append(_Stage(name, "supervised", [], {name: getattr(s, name)}))
        return plan

    def _selectable(self) -> set[str]:
        return {st.name for st in self.plan} | {"distill", "eval", "export", "report"}

    def _wanted(self, name: str) -> bool:
        if self.only is None:
            return True
        return name in self.only or (name.startswith("distill") and "distill" in self.only)

    def _label_mode(self) -> str:
        mode = self.config.stages.label.mode
        if mode != "auto":
            return mode
        budget = stage_budget(self.config, "student")
        one_epoch = budget.max_epochs == 1 and budget.max_steps is None
        return "fly" if one_epoch else "disk"

    def _unlabelled_source(self) -> Manifest:
        """The mixtures the student learns from (stages.label.include_labelled, max_mixtures)."""
        label = self.config.stages.label
        source = self.train_rows if label.include_labelled else self.train_rows.select(
            labelled=False)
        return _subset(source, label.max_mixtures)

    # -- corpus ----------------------------------------------------------------------

    def prepare_corpus(self, progress: bool) -> Manifest:
        c = self.config.corpus
        if c.manifest is not None:
            path = Path(c.manifest).expanduser().resolve()
        else:
            folder = self.run_dir / "corpus"
            path = folder / "manifest.jsonl"
            stamp = folder / "recipe.json"
            key = _hash(dataclasses.asdict(c))
            if _rank() == 0:
                if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") != key:
                    log.warning("corpus settings changed: rebuilding %s", folder)
                    shutil.rmtree(folder)
                if not stamp.is_file():
                    from tsmixit.corpus import build_corpus

                    build_corpus(folder, preset=c.preset, seed=c.seed, progress=progress,
                                 **c.options)
                    write_json_atomic(stamp, {"fingerprint": key, "corpus": dataclasses.asdict(c)})
            else:
                _wait_for(stamp, "the corpus", key)
        manifest = Manifest.load(path)
        rates = {r["sample_rate"] for r in manifest.rows}
        channels = {r["channels"] for r in manifest.rows}
        if len(rates) != 1 or len(channels) != 1:
            raise ManifestError(f"{path}: rows mix sample rates {sorted(rates)} or channel "
                                f"counts {sorted(channels)}; import the corpus at one rate")
        self.sample_rate, self.channels = rates.pop(), channels.pop()
        # The manifest's content, not its path: a moved or copied run folder (or corpus)
        # keeps its finished stages.
        settings = {k: v for k, v in dataclasses.asdict(c).items() if k != "manifest"}
        self.corpus_key = _hash([hashlib.sha256(path.read_bytes()).hexdigest(), settings])
        self.manifest = manifest
        self.train_rows = manifest.select(split="train")
        self.labelled_train = self.train_rows.select(labelled=True)
        self.valid_labelled = _subset(manifest.select(split="valid", labelled=True),
                                      self.config.data.valid_max_mixtures)
        self.valid_all = _subset(manifest.select(split="valid"),
                                 self.config.data.valid_max_mixtures)
        if len(self.train_rows) < 2:
            raise ManifestError(f"{path}: the recipe needs at least 2 training mixtures, "
                                f"found {len(self.train_rows)}")
        needs_labels = [st.name for st in self.plan
                        if st.kind == "finetune" or st.name == "supervised_fraction"]
        if needs_labels and len(self.labelled_train) == 0:
            raise ConfigError(
                f"stages {needs_labels} need labelled training mixtures but {path} has none; "
                "disable them (stages.finetune.enabled=false, "
                "stages.supervised_fraction.enabled=false) or import with a labelled fraction"
            )
        self._check_before_training(path)
        return manifest

    def _check_before_training(self, path: Path) -> None:
        """Refuse, before any training, a corpus that a later stage could not use."""
        if self.with_companion and self.channels < 2:
            raise ConfigError(f"{path}: model.channels = 'both' needs multi-channel mixtures; "
                              f"the corpus has {self.channels} channel(s): use a multi-"
                              "microphone corpus or model.channels=reference")
        k = self.config.model.student_outputs
        counts = {r["n_speakers"] for r in self.manifest.rows
                  if r["labelled"] and r.get("n_speakers") is not None}
        if counts - {k}:
            raise ConfigError(
                f"{path}: labelled mixtures hold {sorted(counts)} speakers but the students "
                f"have model.student_outputs={k} outputs; scoring needs exactly {k} sources: "
                f"use a corpus of {k}-speaker labelled mixtures or set model.student_outputs"
            )
        if any(st.name == "supervised_full" and self._wanted(st.name) for st in self.plan):
            missing = [r["id"] for r in self.train_rows.rows if not has_sources(r)]
            if missing:
                raise ConfigError(
                    f"{path}: stage supervised_full needs sources for every training mixture; "
                    f"{len(missing)} have none (e.g. {missing[0]}); set "
                    "stages.supervised_full.enabled=false"
                )
        split = self.config.eval.split
        if self._wanted("eval") and len(self.manifest.select(split=split)) == 0:
            raise ConfigError(f"{path}: no mixtures in eval.split={split!r}; set eval.split "
                              "to a split the manifest has")

    # -- fingerprints and stage folders --------------------------------------------------

    def _shared_sections(self, kind: str | None = None) -> dict:
        """The config every stage depends on, less execution settings and the model keys
        that a `kind` of stage does not read."""
        cfg = self.config.to_dict()
        for section, keys in {**EXECUTION_KEYS, "model": UNREAD_MODEL_KEYS.get(kind, ())}.items():
            for key in keys:
                cfg[section].pop(key, None)
        return {"corpus": self.corpus_key, "model": cfg["model"], "data": cfg["data"],
                "train": cfg["train"]}

    def _fingerprint(self, stage: _Stage) -> str:
        upstream = [self.fingerprints[u] for u in stage.upstream]
        sections = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                    for k, v in stage.sections.items()}
        return _hash({"shared": self._shared_sections(stage.kind), "stage": sections,
                      "upstream": upstream, "name": stage.name})

    def _finished(self, stage: _Stage) -> dict | None:
        path = self.run_dir / stage.name / "summary.json"
        if not path.is_file():
            return None
        summary = _located(json.loads(path.read_text()), self.run_dir)
        return summary if summary.get("fingerprint") == self.fingerprints[stage.name] else None

    def _open_stage(self, stage: _Stage) -> Path:
        """The stage folder, emptied first when it holds work done under another config."""
        folder = self.run_dir / stage.name
        marker = folder / "stage.json"
        if _rank() == 0:
            if folder.exists():
                old = json.loads(marker.read_text()) if marker.is_file() else {}
                if old.get("fingerprint") != self.fingerprints[stage.name]:
                    log.warning("[%s] config or upstream changed: discarding %s", stage.name,
                                folder)
                    shutil.rmtree(folder)
            if not marker.is_file():
                write_json_atomic(marker, {"stage": stage.name,
                                           "fingerprint": self.fingerprints[stage.name],
                                           "config": self._shared_sections(stage.kind)})
        else:
            _wait_for(marker, f"the {stage.name} folder", self.fingerprints[stage.name])
        _barrier()
        return folder

    # -- running --------------------------------------------------------------------------

    def run(self) -> dict[str, dict]:
        for stage in self.plan:
            self.fingerprints[stage.name] = self._fingerprint(stage)
            done = self._finished(stage)
            if done is not None:
                log.info("[%s] finished earlier, skipped (%s)", stage.name, _line(done))
                self.summaries[stage.name] = done
                continue
            if not self._wanted(stage.name):
                continue
            missing = [u for u in stage.upstream if u not in self.summaries]
            if missing:
                raise TrainingError(
                    f"stage {stage.name!r} needs the finished stage(s) {missing}; run them "
                    "first (leave out --stages, or include them)"
                )
            folder = self._open_stage(stage)
            if stage.kind == "label":
                summary = self._run_label(stage, folder)
            else:
                summary = self._run_training(stage, folder)
            summary["fingerprint"] = self.fingerprints[stage.name]
            stored = _relocatable(summary, self.run_dir)
            if _rank() == 0:
                write_json_atomic(folder / "summary.json", stored)
            _barrier()
            log.info("[%s] done: %s", stage.name, _line(summary))
            self.summaries[stage.name] = _located(stored, self.run_dir)
        return self.summaries

    def _trainer(self, folder: Path | None, budget: Budget | None, callbacks: list[Callback]
                 ) -> L.Trainer:
        t = self.config.train
        kwargs: dict[str, Any] = {}
        if budget is not None:
            val_every = t.val_every if budget.max_steps is None else min(t.val_every,
                                                                         budget.max_steps)
            kwargs = dict(
                max_steps=budget.max_steps or -1,
                max_epochs=budget.max_epochs if budget.max_epochs is not None else -1,
                gradient_clip_val=t.grad_clip or None,
                gradient_clip_algorithm="norm",
                val_check_interval=val_every,
                check_val_every_n_epoch=None,
                num_sanity_val_steps=0,
                log_every_n_steps=t.log_every,
                logger=[CSVLogger(folder, name="", version=""),
                        TensorBoardLogger(folder, name="tensorboard", version="")],
                default_root_dir=folder,
            )
        else:
            kwargs = dict(logger=False, enable_checkpointing=False)
        return L.Trainer(
            accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
            strategy=t.strategy, precision=t.precision, deterministic=t.deterministic,
            enable_progress_bar=t.progress, enable_model_summary=False,
            use_distributed_sampler=False, callbacks=callbacks, **kwargs,
        )

    def _model_hparams(self, n_sources: int, consistency: str | None) -> dict:
        m = self.config.model
        n_channels = self.channels if m.channels == "all" else 1
        return ConvTasNet.from_preset(m.preset, n_sources=n_sources, n_channels=n_channels,
                                      consistency=consistency, **m.options).hparams

    def _frames(self, seconds: float | None) -> int | None:
        return None if seconds is None else round(seconds * self.sample_rate)

    def _validation(self) -> Dataset | None:
        """Labelled validation mixtures (full length unless data.valid_segment_seconds)."""
        if len(self.valid_labelled) == 0:
            return None
        segment = self._frames(self.config.data.valid_segment_seconds)
        return LabelledDataset(self.valid_labelled, segment, seed=self.config.train.seed)

    def _run_training(self, stage: _Stage, folder: Path) -> dict:
        cfg, t, d = self.config, self.config.train, self.config.data
        family = {"teacher": "teacher", "student": "student", "finetune": "finetune"}.get(
            stage.kind, stage.name)
        if stage.name.startswith("distill") and stage.kind == "student":
            family = "distill"
        budget = stage_budget(cfg, family)
        L.seed_everything(t.seed, workers=True, verbose=False)
        segment = self._frames(d.segment_seconds)
        valid = self._validation()
        monitor = "val_si_snri" if valid is not None else None
        k = cfg.model.student_outputs
        common = dict(sample_rate=self.sample_rate, lr=budget.lr, plateau_factor=t.plateau_factor,
                      plateau_patience=t.plateau_patience, stage=stage.name)
        init_from: ConvTasNet | None = None
        if stage.kind == "teacher":
            if valid is None and len(self.valid_all) >= 2:
                valid = MixtureOfMixturesDataset(self.valid_all, segment, seed=t.seed + 1)
                monitor = "val_loss"
            system = MixITTeacher(self._model_hparams(cfg.model.teacher_outputs,
                                                      cfg.model.teacher_consistency),
                                  k=k, monitor=monitor, **common)
            train = MixtureOfMixturesDataset(self.train_rows, segment, seed=t.seed,
                                             single_mixture_prob=d.single_mixture_prob)
        else:
            student_hp = self._model_hparams(k, cfg.model.student_consistency)
            teacher_hp = None
            if stage.kind == "student":
                label_stage, teacher_stage = stage.upstream
                label = self.summaries[label_stage]
                teacher_ckpt = Path(self.summaries[teacher_stage]["checkpoint"])
                if label["mode"] == "disk":
                    pseudo = Manifest.load(Path(label["manifest"]))
                    train = LabelledDataset(pseudo, segment, seed=t.seed, allow_unlabelled=True)
                else:
                    train = SegmentDataset(self._unlabelled_source(), segment, seed=t.seed)
                init = (cfg.stages.distill.init if stage.name.startswith("distill")
                        else cfg.stages.student.init)
                teacher = load_separator(teacher_ckpt)
                if init == "teacher":
                    init_from = teacher
                if label["mode"] == "fly":
                    teacher_hp = teacher.hparams
            elif stage.kind == "finetune":
                train = LabelledDataset(self.labelled_train, segment, seed=t.seed)
                init_from = load_separator(Path(self.summaries[stage.upstream[0]]["checkpoint"]))
            elif stage.name == "supervised_full":
                train = LabelledDataset(self.train_rows, segment, seed=t.seed,
                                        allow_unlabelled=True)
            else:
                train = LabelledDataset(self.labelled_train, segment, seed=t.seed)
            system = PITSeparator(student_hp, teacher_hparams=teacher_hp, monitor=monitor,
                                  **common)
            if teacher_hp is not None:
                system.teacher.load_state_dict(teacher.state_dict())
        if init_from is not None:
            untouched = init_from_teacher(system.model, init_from)
            if untouched:
                log.info("[%s] initialised from %s except %s", stage.name, stage.upstream[-1],
                         untouched)
        data = StageData(train, valid, d.batch_size, d.num_workers, t.seed,
                         valid_batch_size=d.batch_size if d.valid_segment_seconds else 1)
        return self._fit(stage, folder, system, data, budget, monitor,
                         labelled_mixtures=_labelled_count(stage, train))

    def _fit(self, stage: _Stage, folder: Path, system: L.LightningModule, data: StageData,
             budget: Budget, monitor: str | None, labelled_mixtures: int) -> dict:
        t = self.config.train
        ckpt_dir = folder / "checkpoints"
        last_path = ckpt_dir / "last.ckpt"
        mode = system.monitor_mode.get(monitor or "", "max")
        every = t.checkpoint_every or t.val_every
        if budget.max_steps is not None:
            every = min(every, budget.max_steps)
        last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=every,
                               save_top_k=1, enable_version_counter=False)
        callbacks: list[Callback] = [last, _StageLine(stage.name)]
        callbacks.append(Timer(duration=None if budget.max_minutes is None
                               else timedelta(minutes=budget.max_minutes), interval="step"))
        best = None
        if monitor is not None:
            best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor,
                                   mode=mode, save_top_k=1, enable_version_counter=False,
                                   auto_insert_metric_name=False)
            callbacks.append(best)
        resume_from = None
        resumed_step = None
        if last_path.is_file():
            resumed_step = int(load_checkpoint(last_path).get("global_step", 0))
            resume_from = str(last_path)
            _keep_metrics(folder)
            log.info("[%s] resuming from %s (step %d)", stage.name, last_path, resumed_step)
        trainer = self._trainer(folder, budget, callbacks)
        trainer.fit(system, datamodule=data, ckpt_path=resume_from, weights_only=True)
        trainer.save_checkpoint(last_path, weights_only=False)  # optimizer and loops too
        if trainer.is_global_zero:
            _merge_metrics(folder)
        best_path = Path(best.best_model_path) if best and best.best_model_path else last_path
        timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))
        score = best.best_model_score if best is not None else None
        return {
            "stage": stage.name,
            "system": stage.name,
            "kind": stage.kind,
            "train_seconds": round(timer.time_elapsed("train"), 2),
            "steps": int(trainer.global_step),
            "epochs": int(trainer.current_epoch),
            "monitor": monitor,
            "best_val_si_snri": float(score) if score is not None and monitor == "val_si_snri"
            else None,
            "best_val_loss": float(score) if score is not None and monitor == "val_loss"
            else None,
            "checkpoint": str(best_path),
            "last_checkpoint": str(last_path),
            "resumed_from_step": resumed_step,
            "labelled_mixtures": labelled_mixtures,
            "training_mixtures": len(data.train_set.manifest),
        }

    def _run_label(self, stage: _Stage, folder: Path) -> dict:
        cfg = self.config
        mode = self._label_mode()
        teacher_ckpt = Path(self.summaries[stage.upstream[0]]["checkpoint"])
        teacher = load_separator(teacher_ckpt)
        summary: dict[str, Any] = {"stage": stage.name, "system": stage.name, "kind": "label",
                                   "mode": mode, "teacher": str(teacher_ckpt),
                                   "checkpoint": str(teacher_ckpt)}
        if mode == "fly":
            return summary
        label = cfg.stages.label
        source = self._unlabelled_source()
        todo = [i for i, row in enumerate(source.rows) if read_label_record(folder, row["id"])
                is None]
        start = time.monotonic()
        if todo:
            labeller = PseudoLabeller(teacher, cfg.model.student_outputs, folder, source.rows,
                                      label.active_threshold_db)
            data = _IndexedMixtures(source, todo)
            trainer = self._trainer(None, None, [])
            sampler = DistributedSampler(data, trainer.world_size, trainer.global_rank,
                                         shuffle=False)
            loader = DataLoader(data, batch_size=1, sampler=sampler,
                                num_workers=cfg.data.num_workers,
                                pin_memory=torch.cuda.is_available())
            trainer.predict(labeller, dataloaders=loader, return_predictions=False)
        _barrier()
        manifest_path = folder / "manifest.jsonl"
        if _rank() == 0:
            rows, active = [], []
            for row in source.rows:
                record = read_label_record(folder, row["id"])
                if record is None:
                    raise TrainingError(f"[{stage.name}] row {row['id']!r} was not labelled")
                new = {**row, "labelled": False,
                       "sources": [str(folder / p) for p in record["sources"]],
                       "pseudo_label": {"teacher": _in_run(teacher_ckpt, self.run_dir),
                                        "active_outputs": record["active_outputs"]}}
                if "mixture" in record:
                    new["mixture"] = str(folder / record["mixture"])
                    new.pop("start", None)
                    new.pop("channel_map", None)
                rows.append(new)
                active.append(record["active_outputs"])
            Manifest(rows, name=str(manifest_path)).save(manifest_path, root=self.home)
            histogram = dict(sorted(Counter(active).items()))
            write_json_atomic(folder / "active_outputs.json", {
                "threshold_db": label.active_threshold_db,
                "histogram": {str(k): v for k, v in histogram.items()},
                "per_mixture": {row["id"]: a for row, a in zip(source.rows, active, strict=True)},
            })
            summary.update(
                manifest=str(manifest_path), mixtures=len(rows),
                mean_active_outputs=round(sum(active) / len(active), 3),
                active_outputs_histogram={str(k): v for k, v in histogram.items()},
                label_seconds=round(time.monotonic() - start, 2),
            )
        else:
            summary["manifest"] = str(manifest_path)
        return summary


# Summary entries naming files: those in the run folder are stored relative to it (the
# folder can be moved or copied) and are absolute in memory.
_PATH_KEYS = ("checkpoint", "last_checkpoint", "manifest", "teacher")


def _in_run(path: str | Path, run_dir: Path) -> str:
    """`path` relative to the run folder when it lies inside, else absolute."""
    path, root = Path(path).resolve(), run_dir.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _relocatable(summary: dict, run_dir: Path) -> dict:
    out = dict(summary)
    for key in _PATH_KEYS:
        if isinstance(out.get(key), str):
            out[key] = _in_run(out[key], run_dir)
    return out


def _located(summary: dict, run_dir: Path) -> dict:
    out = dict(summary)
    for key in _PATH_KEYS:
        if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
            out[key] = str(run_dir.resolve() / out[key])
    return out


def _labelled_count(stage: _Stage, train: Dataset) -> int:
    """How many mixtures' true sources the stage trained on."""
    if stage.kind in ("finetune", "supervised"):
        return len(train.manifest)
    return 0


def _line(summary: dict) -> str:
    """The one-line summary of a stage."""
    parts = []
    if summary.get("steps") is not None:
        parts.append(f"{summary['steps']} steps in {summary.get('train_seconds', 0):.0f} s")
    if summary.get("best_val_si_snri") is not None:
        parts.append(f"best val SI-SNRi {summary['best_val_si_snri']:.2f} dB")
    if summary.get("best_val_loss") is not None:
        parts.append(f"best val loss {summary['best_val_loss']:.3f}")
    if summary.get("mixtures") is not None:
        parts.append(f"{summary['mixtures']} mixtures labelled, mean active outputs "
                     f"{summary['mean_active_outputs']}")
    if summary.get("mode") == "fly":
        parts.append("labels on the fly")
    return ", ".join(parts)


def _keep_metrics(folder: Path) -> None:
    """Before a resume: Lightning's CSVLogger starts metrics.csv afresh, so keep the rows
    logged so far aside (merged back by `_merge_metrics`)."""
    if _rank() != 0:
        return
    current, kept = folder / "metrics.csv", folder / "metrics.before-resume.csv"
    if current.is_file():
        if kept.is_file():
            _merge_files(kept, current, kept)
            current.unlink()
        else:
            current.replace(kept)


def _merge_metrics(folder: Path) -> None:
    kept, current = folder / "metrics.before-resume.csv", folder / "metrics.csv"
    if kept.is_file():
        if current.is_file():
            _merge_files(kept, current, current)
        else:
            kept.replace(current)
        kept.unlink(missing_ok=True)


def _merge_files(first: Path, second: Path, out: Path) -> None:
    """Concatenate two CSV logs with possibly different columns (rows of `first` whose step
    the second one logs again are dropped: they were redone after the resume)."""
    rows_a = list(csv.DictReader(first.open()))
    rows_b = list(csv.DictReader(second.open()))
    redone = {r.get("step") for r in rows_b}
    rows = [r for r in rows_a if r.get("step") not in redone] + rows_b
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> None:
            lines.append(text)

    writer = csv.DictWriter(_Sink(), fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, "".join(lines))


# ---------------------------------------------------------------------------------------
# Evaluation, export, report


def _evaluate(recipe: Recipe, progress: bool) -> dict[str, dict]:
    from tsmixit.evaluation.metrics import evaluate_into_run
    from tsmixit.model_files import inference_device

    cfg = recipe.config
    device = inference_device("cpu" if cfg.train.accelerator == "cpu" else "auto")
    test = _subset(recipe.manifest.select(split=cfg.eval.split), cfg.eval.max_mixtures)
    if len(test) == 0:
        raise ManifestError(f"{recipe.manifest.name}: no {cfg.eval.split!r} rows to evaluate")
    results = {}
    key = _hash([dataclasses.asdict(cfg.eval), len(test)])
    for name, summary in recipe.summaries.items():
        if summary["kind"] == "label":
            continue
        out = recipe.run_dir / "eval" / f"{name}.json"
        stamp = _hash([summary["fingerprint"], key])
        if out.is_file():
            result = json.loads(out.read_text())
            if result.get("recipe_key") == stamp:
                results[name] = result["mean"]
                continue
        model = load_separator(Path(summary["checkpoint"])).to(device)
        evaluate_into_run(model, test, recipe.run_dir, system=name, stage=name,
                          k=cfg.model.student_outputs,
                          active_threshold_db=cfg.eval.active_threshold_db, progress=progress)
        result = json.loads(out.read_text())
        result.update(recipe_key=stamp, checkpoint=_in_run(summary["checkpoint"], recipe.run_dir),
                      train_seconds=summary.get("train_seconds"), steps=summary.get("steps"),
                      labelled_mixtures=summary.get("labelled_mixtures"))
        write_json_atomic(out, result)
        results[name] = result["mean"]
        log.info("[eval] %s: %s", name, ", ".join(
            f"{k} {v:.2f}" for k, v in result["mean"].items() if isinstance(v, float)))
    return results


def best_student(summaries: dict[str, dict]) -> str:
    """The student-family system with the best validation SI-SNRi (the last one trained
    when there is no validation score)."""
    students = [n for n, s in summaries.items() if s["kind"] in ("student", "finetune")]
    if not students:
        raise TrainingError("no student stage has finished; nothing to export")
    scored = [n for n in students if summaries[n].get("best_val_si_snri") is not None]
    if not scored:
        return students[-1]
    return max(scored, key=lambda n: summaries[n]["best_val_si_snri"])


def _export(recipe: Recipe) -> Path:
    from tsmixit.model_files import save_model

    name = best_student(recipe.summaries)
    summary = recipe.summaries[name]
    model = load_separator(Path(summary["checkpoint"]))
    out = recipe.run_dir / "model"
    save_model(model, out, recipe.sample_rate, summary={
        "system": name, "checkpoint": summary["checkpoint"],
        "best_val_si_snri": summary.get("best_val_si_snri"), "steps": summary.get("steps")})
    return out


def _run_one(config: RecipeConfig, run_dir: Path, fresh: bool, stages: list[str] | None,
             with_companion: bool = False, home: Path | None = None
             ) -> tuple[Recipe, dict[str, Any]]:
    """Every stage, evaluation and export of one run folder (no report)."""
    recipe = Recipe(config, run_dir, stages, with_companion, home)
    if fresh and _rank() == 0 and run_dir.exists():
        names = {st.name for st in recipe.plan} | {"corpus", "eval", "model", "config.yaml",
                                                   "report.md", "report.json", "plots",
                                                   COMPANION}
        for entry in run_dir.iterdir():
            if entry.name in names or entry.name.startswith("distill"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if _rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", config.to_yaml())
    progress = config.train.progress
    recipe.prepare_corpus(progress)
    summaries = recipe.run()
    result: dict[str, Any] = {"run_dir": str(run_dir), "stages": summaries}
    if _rank() != 0:
        return recipe, result
    if recipe._wanted("eval"):
        result["eval"] = _evaluate(recipe, progress)
    if recipe._wanted("export") and any(s["kind"] in ("student", "finetune")
                                        for s in summaries.values()):
        result["model"] = str(_export(recipe))
    return recipe, result


COMPANION = "mic0"


def run_recipe(
    config: RecipeConfig,
    run_dir: str | os.PathLike,
    fresh: bool = False,
    stages: list[str] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Run (or resume) every stage of the TS-MixIT recipe in `run_dir`.

    fresh: discard the run folder's recipe outputs first. stages: run only these stages
    (and "distill", "eval", "export", "report"); earlier stages must have finished.
    quick: a smoke-test version (see `quick_config`). With model.channels = "both", the
    same recipe then runs on microphone 0 alone in RUN/mic0 (same corpus), and the report
    compares the two.

    Returns {"run_dir", "stages": {name: summary}, "eval": {system: mean metrics},
    "model": exported model folder, "report": report path, "mic0": the companion run's
    result} (rank 0; other ranks return after the training stages with "stages" only).
    """
    if quick:
        config = quick_config(config)
    run_dir = Path(run_dir)
    with _run_lock(run_dir):
        both = config.model.channels == "both"
        main = dataclasses.replace(config, model=dataclasses.replace(
            config.model, channels="all")) if both else config
        recipe, result = _run_one(main, run_dir, fresh, stages, with_companion=both)
        if both:
            if _rank() == 0:
                write_text_atomic(run_dir / "config.yaml", config.to_yaml())
            single = dataclasses.replace(
                config, model=dataclasses.replace(config.model, channels="reference"),
                corpus=dataclasses.replace(config.corpus, manifest=str(
                    Path(recipe.manifest.name).resolve()), preset=None))
            _, result[COMPANION] = _run_one(single, run_dir / COMPANION, fresh, stages,
                                            home=run_dir)
        if _rank() == 0 and recipe._wanted("report"):
            from tsmixit.evaluation.report import write_report

            compare = [run_dir / COMPANION] if both else None
            result["report"] = str(write_report(run_dir, compare=compare))
        return result
