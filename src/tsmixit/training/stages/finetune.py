"""Stage kind "finetune": semi-supervised fine-tuning (Zhang et al., Interspeech 2021) of
the previous stage's student with PIT on negative SI-SNR against the true sources of the
labelled fraction of the training mixtures.
"""

from __future__ import annotations

from pathlib import Path

from tsmixit.data.datasets import LabelledDataset
from tsmixit.training.fit import StageContext, fit, pit_separator, stage_data
from tsmixit.training.plan import Stage


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg = ctx.config
    segment = ctx.splits.frames(cfg.data.segment_seconds)
    train = LabelledDataset(ctx.splits.labelled_train, segment, seed=cfg.train.seed,
                            reference_only=ctx.reference_only)
    system, valid, monitor = pit_separator(ctx, stage)
    return fit(ctx, stage, folder, system, stage_data(ctx, train, valid), monitor)
