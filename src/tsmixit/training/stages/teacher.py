"""Stage kind "teacher": a MixIT separator with M = ``model.teacher_outputs`` outputs,
trained on mixtures of mixtures x = x1 + x2 (Wisdom et al., NeurIPS 2020).

Validation: SI-SNRi of its k most energetic outputs against the labelled validation
mixtures' sources; without labelled validation mixtures, its MixIT loss on validation
mixtures of mixtures (``val_loss``).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from tsmixit.data.datasets import MixtureOfMixturesDataset
from tsmixit.training.fit import (
    StageContext,
    fit,
    model_hparams,
    stage_data,
    system_options,
    validation_set,
)
from tsmixit.training.plan import Stage
from tsmixit.training.systems import MixITTeacher


def mixit_validation(ctx: StageContext, segment: int | None) -> tuple[Dataset | None, str | None]:
    """A MixIT system's validation set and monitored value: the labelled validation mixtures
    (top-k "val_si_snri"), else validation mixtures of mixtures ("val_loss"), else none."""
    valid = validation_set(ctx)
    if valid is not None:
        return valid, "val_si_snri"
    if len(ctx.splits.valid_all) >= 2:
        return MixtureOfMixturesDataset(ctx.splits.valid_all, segment,
                                        seed=ctx.config.train.seed + 1,
                                        reference_only=ctx.reference_only), "val_loss"
    return None, None


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg, splits = ctx.config, ctx.splits
    segment = splits.frames(cfg.data.segment_seconds)
    valid, monitor = mixit_validation(ctx, segment)
    system = MixITTeacher(
        model_hparams(ctx, cfg.model.teacher_outputs, cfg.model.teacher_consistency),
        k=cfg.model.student_outputs, mixit=cfg.model.mixit, monitor=monitor,
        **system_options(ctx, stage))
    train = MixtureOfMixturesDataset(splits.train, segment, seed=cfg.train.seed,
                                     single_mixture_prob=cfg.data.single_mixture_prob,
                                     reference_only=ctx.reference_only)
    return fit(ctx, stage, folder, system, stage_data(ctx, train, valid), monitor)
