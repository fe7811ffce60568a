"""Stage kind "student": a k-output separator trained with utterance-level PIT on negative
SI-SNR against its teacher's pseudo-targets (Zhang et al., Interspeech 2021), from the
label stage's manifest (mode "disk") or from the frozen teacher per batch (mode "fly").
No true sources are read. In a distillation round the teacher is the previous round's last
model, and ``stages.distill.init`` says whether the student starts from its weights.
"""

from __future__ import annotations

from pathlib import Path

from tsmixit.data.datasets import LabelledDataset, SegmentDataset
from tsmixit.data.manifest import Manifest
from tsmixit.training.checkpoints import load_separator
from tsmixit.training.fit import StageContext, fit, pit_separator, stage_data
from tsmixit.training.plan import Stage


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg = ctx.config
    segment = ctx.splits.frames(cfg.data.segment_seconds)
    label = ctx.summaries[stage.labels_from]
    if label["mode"] == "disk":
        pseudo = Manifest.load(Path(label["manifest"]))
        train = LabelledDataset(pseudo, segment, seed=cfg.train.seed, allow_unlabelled=True,
                                reference_only=ctx.reference_only)
    else:
        train = SegmentDataset(ctx.splits.unlabelled, segment, seed=cfg.train.seed,
                               reference_only=ctx.reference_only)
    if label["mode"] == "fly":
        teacher = load_separator(ctx.checkpoint(stage.teacher))
        system, valid, monitor = pit_separator(ctx, stage, teacher_hparams=teacher.hparams,
                                               teacher_arch=cfg.model.arch)
        system.teacher.load_state_dict(teacher.state_dict())
    else:
        system, valid, monitor = pit_separator(ctx, stage)
    return fit(ctx, stage, folder, system, stage_data(ctx, train, valid), monitor)
