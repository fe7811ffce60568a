"""Stage kind "sparse_mixit": sparse and efficient MixIT (Wisdom et al., WASPAA 2021), a
separator with M = ``stages.sparse_mixit.outputs`` outputs s_hat trained on mixtures of
mixtures x = x1 + x2 with

    L = L_MixIT(s_hat, x1, x2) + lambda_sparse L_sparse(s_hat) + lambda_cov L_cov(s_hat),

where L_MixIT is the exact search over the N^M mixing matrices A or its least-squares
approximation (``stages.sparse_mixit.mixit``), L_sparse = |r|_1 / |r|_2 of the outputs'
RMS r (fewer active outputs: against over-separation) and L_cov the mean squared
correlation between outputs (``tsmixit.losses``), both on the outputs after the separator's
mixture consistency; lambda_sparse and lambda_cov are ``sparsity_weight`` and
``covariance_weight``. Each term is logged (``train_mixit``, ``train_sparsity``,
``train_covariance``).

Validation as the teacher's: SI-SNRi of the k most energetic outputs against the labelled
validation mixtures' sources (``val_si_snri``, monitored) and of the oracle grouping; without
labelled validation mixtures, the loss on validation mixtures of mixtures (``val_loss``).
Also ``val_active_outputs``, the outputs holding more than ``eval.active_threshold_db`` of
the energy; the summary keeps its value at the best checkpoint (``mean_active_outputs``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from tsmixit.data.datasets import MixtureOfMixturesDataset
from tsmixit.losses import covariance_loss, sparsity_loss
from tsmixit.metrics import active_output_count
from tsmixit.training.fit import (
    StageContext,
    fit,
    model_hparams,
    stage_data,
    system_options,
)
from tsmixit.training.plan import Stage
from tsmixit.training.stages.teacher import mixit_validation
from tsmixit.training.systems import MixITTeacher


class SparseMixIT(MixITTeacher):
    """MixIT with M = model_hparams["n_sources"] outputs plus ``sparsity_weight`` L_sparse and
    ``covariance_weight`` L_cov; ``k`` outputs kept by the top-k monitor, as the teacher's."""

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        k: int = 2,
        snr_max: float = 30.0,
        mixit: Literal["exact", "least_squares"] = "exact",
        sparsity_weight: float = 0.0,
        covariance_weight: float = 0.0,
        active_threshold_db: float = -20.0,
        **options: Any,
    ) -> None:
        options.setdefault("stage", "sparse_mixit")
        super().__init__(model_hparams, sample_rate, k, snr_max, mixit, **options)

    def _objective(self, est: Tensor, mixtures: Tensor) -> dict[str, Tensor]:
        """The three terms and their weighted sum, per example: (B, M, T), (B, N, T) ->
        {"mixit", "sparsity", "covariance", "loss"} each (B,)."""
        h = self.hparams
        terms = {"mixit": self.mixit_loss(est, mixtures, snr_max=h.snr_max)[0],
                 "sparsity": sparsity_loss(est), "covariance": covariance_loss(est)}
        terms["loss"] = (terms["mixit"] + h.sparsity_weight * terms["sparsity"]
                         + h.covariance_weight * terms["covariance"])
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        est = self(batch["mixture"])  # (B, M, T) from the MoM (B, C, T)
        terms = self._objective(est, batch["references"])
        for name in ("mixit", "sparsity", "covariance"):
            value = self.trainer.strategy.reduce(terms[name].detach().mean(), reduce_op="mean")
            self.log(f"train_{name}", value, on_step=True, on_epoch=False)
        return self._train_loss(terms["loss"].mean())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        est = self(batch["mixture"])  # (B, M, T)
        if "sources" in batch:
            self._validate_labelled(batch, est, self.hparams.k)
            # The objective with the oracle grouping of the outputs into the true sources.
            terms = self._objective(est, batch["sources"])
        else:
            terms = self._objective(est, batch["references"])
        self._accumulate("val_loss", terms["loss"])
        self._accumulate("val_sparsity", terms["sparsity"])
        self._accumulate("val_active_outputs",
                         active_output_count(est, self.hparams.active_threshold_db).double())


def best_row_value(metrics_csv: Path, monitor: str, mode: str, column: str) -> float | None:
    """`column` of the validation row where `monitor` was best (its first occurrence: the best
    checkpoint is replaced only by a strictly better value); None without such a row."""
    if not metrics_csv.is_file():
        return None
    best: tuple[float, float] | None = None
    for row in csv.DictReader(metrics_csv.open()):
        if not row.get(monitor) or not row.get(column):
            continue
        score, value = float(row[monitor]), float(row[column])
        if math.isfinite(score) and (best is None or (
                score > best[0] if mode == "max" else score < best[0])):
            best = (score, value)
    return None if best is None else best[1]


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg, splits = ctx.config, ctx.splits
    section = cfg.stages.sparse_mixit
    segment = splits.frames(cfg.data.segment_seconds)
    valid, monitor = mixit_validation(ctx, segment)
    system = SparseMixIT(
        model_hparams(ctx, section.outputs, cfg.model.teacher_consistency),
        k=cfg.model.student_outputs, mixit=section.mixit,
        sparsity_weight=section.sparsity_weight, covariance_weight=section.covariance_weight,
        active_threshold_db=cfg.eval.active_threshold_db, monitor=monitor,
        **system_options(ctx, stage))
    train = MixtureOfMixturesDataset(splits.train, segment, seed=cfg.train.seed,
                                     single_mixture_prob=cfg.data.single_mixture_prob,
                                     reference_only=ctx.reference_only)
    summary = fit(ctx, stage, folder, system, stage_data(ctx, train, valid), monitor)
    active = None
    if monitor is not None:
        active = best_row_value(folder / "metrics.csv", monitor,
                                system.monitor_mode[monitor], "val_active_outputs")
    summary.update(
        outputs=section.outputs, mixit=section.mixit,
        sparsity_weight=section.sparsity_weight, covariance_weight=section.covariance_weight,
        # On the validation mixtures (mixtures of mixtures when monitor is val_loss).
        mean_active_outputs=None if active is None else round(active, 3),
        active_threshold_db=cfg.eval.active_threshold_db)
    return summary
