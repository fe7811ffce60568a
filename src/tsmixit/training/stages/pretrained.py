"""Stage kind "pretrained": no training. It names the separator of ``model.init`` (a model
folder, or the package's shipped model), checks that it fits the corpus
(sample rate), and records it as a system: the report scores the pretrained separator alone,
and every stage that would start from random weights starts from it instead.
"""

from __future__ import annotations

from pathlib import Path

from tsmixit.errors import TrainingError
from tsmixit.models.folder import read_model_folder, resolve_model_path
from tsmixit.training.fit import StageContext
from tsmixit.training.plan import Stage


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    path = resolve_model_path(ctx.config.model.init).resolve()
    _, config = read_model_folder(path)
    if config["sample_rate"] != ctx.splits.sample_rate:
        raise TrainingError(
            f"model.init {path} separates {config['sample_rate']} Hz audio, the corpus is "
            f"{ctx.splits.sample_rate} Hz; start from a model trained at "
            f"{ctx.splits.sample_rate} Hz (or resample the corpus)")
    return {**stage.record(), "checkpoint": str(path), "train_seconds": 0.0, "steps": 0,
            "model": config.get("training", {}), "labelled_mixtures": 0}
