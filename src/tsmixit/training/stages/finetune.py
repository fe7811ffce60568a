"""Stage kind "finetune": semi-supervised fine-tuning (Zhang et al., Interspeech 2021) of
the previous stage's student with PIT on negative SI-SNR against the true sources of the
labelled fraction of the training mixtures.
"""

from __future__ import annotations

from pathlib import Path

from tsmixit.data.datasets import LabelledDataset
from tsmixit.training.checkpoints import load_separator
from tsmixit.training.fit import (
    StageContext,
    fit,
    model_hparams,
    stage_data,
    system_options,
    validation_set,
)
from tsmixit.training.plan import Stage
from tsmixit.training.stages.student import start_from
from tsmixit.training.systems import PITSeparator


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg = ctx.config
    segment = ctx.splits.frames(cfg.data.segment_seconds)
    train = LabelledDataset(ctx.splits.labelled_train, segment, seed=cfg.train.seed,
                            reference_only=ctx.reference_only)
    valid = validation_set(ctx)
    monitor = "val_si_snri" if valid is not None else None
    previous = load_separator(ctx.checkpoint(stage.init))
    system = PITSeparator(
        model_hparams(ctx, cfg.model.student_outputs, cfg.model.student_consistency),
        monitor=monitor, **system_options(ctx, stage))
    start_from(stage, system, previous)
    return fit(ctx, stage, folder, system, stage_data(ctx, train, valid), monitor)
