"""Stage kind "supervised": the baselines, a k-output separator trained from scratch with
PIT on negative SI-SNR against true sources: of every training mixture (labels "all",
what TS-MixIT does without) or of the labelled fraction only (labels "fraction").
"""

from __future__ import annotations

from pathlib import Path

from tsmixit.data.datasets import LabelledDataset
from tsmixit.training.fit import StageContext, fit, pit_separator, stage_data
from tsmixit.training.plan import Stage


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg, splits = ctx.config, ctx.splits
    segment = splits.frames(cfg.data.segment_seconds)
    if stage.labels == "all":
        train = LabelledDataset(splits.train, segment, seed=cfg.train.seed,
                                allow_unlabelled=True, reference_only=ctx.reference_only)
    else:
        train = LabelledDataset(splits.labelled_train, segment, seed=cfg.train.seed,
                                reference_only=ctx.reference_only)
    system, valid, monitor = pit_separator(ctx, stage)
    return fit(ctx, stage, folder, system, stage_data(ctx, train, valid), monitor)
