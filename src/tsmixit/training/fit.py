"""What every training stage shares: the separator's hyper-parameters, the labelled
validation set, the Lightning Trainer, and a fit that checkpoints, resumes and returns the
stage's summary.

Checkpoints of a stage (RUN/<stage>/checkpoints/): ``best.ckpt``, best on validation;
``last.ckpt``, written every ``train.checkpoint_every`` steps (model, optimiser, plateau
scheduler, step counters, timer, position in the epoch's data order) and once more at the
end. An interrupted stage resumes from ``last.ckpt`` to the weights an uninterrupted run
gives on the same hardware. With ``train.ema_decay`` set, a checkpoint's ``state_dict`` is the
moving average of the weights (`WeightEMA`) and ``current_model_state`` the trained weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import Dataset

from tsmixit.cpu_memory import keep_freed_memory
from tsmixit.data.datasets import LabelledDataset
from tsmixit.errors import TrainingError
from tsmixit.models.registry import separator_class
from tsmixit.training.checkpoints import load_checkpoint, load_separator
from tsmixit.training.config import Budget, RecipeConfig, stage_budget
from tsmixit.training.datamodule import StageData
from tsmixit.training.plan import Stage
from tsmixit.training.run_folder import keep_metrics, merge_metrics
from tsmixit.training.splits import Splits
from tsmixit.training.systems import PITSeparator, init_from_teacher

log = logging.getLogger(__name__)


class _NoAdverts(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, printed at every stage."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


@dataclass
class StageContext:
    """What a stage reads: the config, the mixtures, the run folder and the summaries of
    the stages finished before it (paths absolute)."""

    config: RecipeConfig
    splits: Splits
    run_dir: Path
    home: Path  # the folder that moves as a whole (RUN, also for the companion RUN/mic0)
    summaries: dict[str, dict]

    @property
    def reference_only(self) -> bool:
        """Single-channel models on multi-microphone mixtures read microphone 0 only."""
        return self.config.model.channels != "all" and self.splits.channels > 1

    def budget(self, stage: Stage) -> Budget:
        return stage_budget(self.config, stage.budget)

    def checkpoint(self, stage_name: str) -> Path:
        """The best checkpoint of a finished stage."""
        return Path(self.summaries[stage_name]["checkpoint"])


def model_hparams(ctx: StageContext, n_sources: int, consistency: str | None) -> dict:
    """The separator of `model.arch` at `model.preset` with n_sources outputs."""
    m = ctx.config.model
    n_channels = ctx.splits.channels if m.channels == "all" else 1
    return separator_class(m.arch).from_preset(
        m.preset, n_sources=n_sources, n_channels=n_channels, consistency=consistency,
        **m.options).hparams


def validation_set(ctx: StageContext) -> Dataset | None:
    """Labelled validation mixtures (full length unless data.valid_segment_seconds)."""
    if len(ctx.splits.valid_labelled) == 0:
        return None
    segment = ctx.splits.frames(ctx.config.data.valid_segment_seconds)
    return LabelledDataset(ctx.splits.valid_labelled, segment, seed=ctx.config.train.seed,
                           reference_only=ctx.reference_only)


def stage_data(ctx: StageContext, train: Dataset, valid: Dataset | None) -> StageData:
    d, t = ctx.config.data, ctx.config.train
    return StageData(train, valid, d.batch_size, d.num_workers, t.seed,
                     valid_batch_size=d.batch_size if d.valid_segment_seconds else 1)


def system_options(ctx: StageContext, stage: Stage) -> dict[str, Any]:
    """The keyword arguments every system of a training stage takes."""
    t, budget = ctx.config.train, ctx.budget(stage)
    return dict(sample_rate=ctx.splits.sample_rate, arch=ctx.config.model.arch, lr=budget.lr,
                plateau_factor=t.plateau_factor, plateau_patience=t.plateau_patience,
                stage=stage.name)


def pit_separator(ctx: StageContext, stage: Stage, **options: Any
                  ) -> tuple[PITSeparator, Dataset | None, str | None]:
    """A k-output PIT separator for `stage` (students, fine-tuning, baselines), its labelled
    validation set and the value it monitors (None without validation)."""
    valid = validation_set(ctx)
    monitor = "val_si_snri" if valid is not None else None
    m = ctx.config.model
    system = PITSeparator(model_hparams(ctx, m.student_outputs, m.student_consistency),
                          monitor=monitor, **options, **system_options(ctx, stage))
    return system, valid, monitor


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


def precision(config: RecipeConfig) -> str:
    """Lightning's precision for `train.precision`; "auto" is "bf16-mixed" when training on a
    CPU with bf16 matrix units (AMX or AVX512-BF16, measured faster) for a separator with a
    CPU bf16 path (`supports_cpu_bf16`), else "32-true"."""
    t = config.train
    if t.precision != "auto":
        return t.precision
    from tsmixit.models._cpu_kernels import bf16_training_available

    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    has_path = getattr(separator_class(config.model.arch), "supports_cpu_bf16", False)
    return "bf16-mixed" if on_cpu and has_path and bf16_training_available() else "32-true"


class WeightEMA(EMAWeightAveraging):
    """Exponential moving average of the weights (Polyak and Juditsky, 1992), Lightning's
    callback: after each optimiser step

        bar_theta <- d bar_theta + (1 - d) theta     (bar_theta = theta after the first step),

    over parameters and floating-point buffers. Validation (so the best checkpoint and the
    plateau scheduler) sees bar_theta, and every checkpoint stores it as ``state_dict``: the
    weights each later stage, `export` and evaluation read. Unlike the parent, the module keeps
    theta when training ends, so the final ``last.ckpt`` holds both and a longer budget resumes
    the trained weights, not their average.
    """

    def __init__(self, decay: float) -> None:
        super().__init__(decay=decay, use_buffers=True)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """bar_theta on this process's training device (the module is moved there only
        after this hook), not on the CPU beside a GPU's weights."""
        self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep theta in the module (the checkpoint's state_dict holds bar_theta)."""


def trainer(config: RecipeConfig, folder: Path | None, budget: Budget | None,
            callbacks: list[Callback]) -> L.Trainer:
    """A Trainer for a training stage (with budget and loggers) or for prediction; freed
    host memory stays mapped from here on when TSMIXIT_MALLOC=keep (`keep_freed_memory`)."""
    keep_freed_memory()
    t = config.train
    kwargs: dict[str, Any] = dict(logger=False, enable_checkpointing=False)
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
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=precision(config), deterministic=t.deterministic,
        enable_progress_bar=t.progress, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=callbacks, **kwargs,
    )


def fit(ctx: StageContext, stage: Stage, folder: Path, system: L.LightningModule,
        data: StageData, monitor: str | None) -> dict[str, Any]:
    """Train `system` for the stage's budget (resuming from last.ckpt); its summary."""
    t, budget = ctx.config.train, ctx.budget(stage)
    ckpt_dir = folder / "checkpoints"
    last_path = ckpt_dir / "last.ckpt"
    every = t.checkpoint_every or t.val_every
    if budget.max_steps is not None:
        every = min(every, budget.max_steps)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=every,
                           save_top_k=1, enable_version_counter=False)
    callbacks: list[Callback] = [last, _StageLine(stage.name)]
    if t.ema_decay is not None:
        callbacks.append(WeightEMA(t.ema_decay))
    callbacks.append(Timer(duration=None if budget.max_minutes is None
                           else timedelta(minutes=budget.max_minutes), interval="step"))
    best = None
    if monitor is not None:
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor,
                               mode=system.monitor_mode.get(monitor, "max"), save_top_k=1,
                               enable_version_counter=False, auto_insert_metric_name=False)
        callbacks.append(best)
    resume_from = resumed_step = None
    if last_path.is_file():
        resumed_step = int(load_checkpoint(last_path).get("global_step", 0))
        resume_from = str(last_path)
        keep_metrics(folder)
        log.info("[%s] resuming from %s (step %d)", stage.name, last_path, resumed_step)
    elif stage.init is not None:
        start_from(stage, system.model, load_separator(ctx.checkpoint(stage.init)))
    run = trainer(ctx.config, folder, budget, callbacks)
    run.fit(system, datamodule=data, ckpt_path=resume_from, weights_only=True)
    run.save_checkpoint(last_path, weights_only=False)  # optimizer and loops too
    if run.is_global_zero:
        merge_metrics(folder)
    best_path = Path(best.best_model_path) if best and best.best_model_path else last_path
    timer = next(cb for cb in run.callbacks if isinstance(cb, Timer))
    score = best.best_model_score if best is not None else None
    return {
        **stage.record(),
        "train_seconds": round(timer.time_elapsed("train"), 2),
        "steps": int(run.global_step),
        "epochs": int(run.current_epoch),
        "monitor": monitor,
        "best_val_si_snri": float(score) if score is not None and monitor == "val_si_snri"
        else None,
        "best_val_loss": float(score) if score is not None and monitor == "val_loss" else None,
        "checkpoint": str(best_path),
        "last_checkpoint": str(last_path),
        "resumed_from_step": resumed_step,
        "labelled_mixtures": len(data.train_set.manifest) if stage.labels != "none" else 0,
        "training_mixtures": len(data.train_set.manifest),
    }


def start_from(stage: Stage, model: nn.Module, init: nn.Module) -> None:
    """Initialise `model` from `init`, the model of the stage ``stage.init`` (every tensor
    whose shape fits, `init_from_teacher`); TrainingError when nothing fits."""
    untouched = init_from_teacher(model, init)
    if len(untouched) == len(model.state_dict()):
        raise TrainingError(
            f"[{stage.name}] no tensor of {stage.init}'s {type(init).__name__} fits this "
            f"stage's {type(model).__name__}; set model.arch and model.preset to the ones of "
            "the model it starts from")
    if untouched:
        log.info("[%s] initialised from %s except %s", stage.name, stage.init, untouched)


def summary_line(summary: dict) -> str:
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
