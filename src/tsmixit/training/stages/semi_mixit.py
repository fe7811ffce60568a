"""Stage kind "semi_mixit": semi-supervised mixture invariant training (Wisdom et al.,
"Unsupervised sound separation using mixture invariant training", NeurIPS 2020), one
separator with M = ``model.teacher_outputs`` outputs (random initial weights, or those of
``model.init`` as for every training stage) trained on batches that mix both kinds of
example.

Notation: a batch of B = ``data.batch_size`` rows holds B_l = round(rho B) labelled rows,
rho = ``stages.semi_mixit.labelled_share`` (rounded half up, then at least 1 when rho > 0
and at most B - 1 when rho < 1, so that both kinds are present whenever rho asks for both),
and B_u = B - B_l mixtures of mixtures x_bar = x1 + x2 of training mixtures (labelled ones
included, their sources unread there). s_hat (M, T) are the separator's outputs, s (S, T)
with S <= M the true sources of a labelled mixture x, lambda = ``supervised_weight``:

    L = mean over the B_u MoMs of L_MixIT + lambda * mean over the B_l labelled rows of L_sup

    L_MixIT = min over A of (1/2) sum_n -SNR_tau(x_n, (A s_hat)_n)      (``model.mixit``)
    L_sup   = min over injective pi of (1/M) [ sum_j l(s_j, s_hat_pi(j))
                                              + sum_{m not in pi} l_0(s_hat_m, x) ]
    l(y, y_hat)   = 10 log10( (|y - y_hat|^2 + tau |y|^2) / |y|^2 ) = -SNR_tau(y, y_hat)
    l_0(y_hat, x) = 10 log10( (|y_hat|^2 + tau_0 |x|^2) / |x|^2 )

with tau = 10^(-30/10) and tau_0 = 10^(-20/10). L_sup is PIT against the sources padded
with M - S all-zero references: what the authors' code does with M outputs and fewer active
sources (google-research/sound-separation, models/dcase2020_fuss_baseline/train/model.py:
zero references scored by their estimate's energy with a 20 dB threshold relative to the
mixture, active ones by the 30 dB thresholded SNR, the mean over all M slots), not MixIT
with the sources as references (which would let several outputs share one source). A
silent source (RMS at most 1e-8) counts as a zero reference, as there. Where their code
picks the permutation with the unthresholded error energies, here it is the one minimising
L_sup itself, the PIT definition. Each term is the mean over its own rows (their public
code holds no semi-supervised loop to follow here): rho sets how many rows each term sees
per step, lambda how much it weighs.

The batches come from `SemiSupervisedBatches` (one item per batch, in a loader of batch
size 1): an epoch is one MoM per training mixture, len(train) // B_u batches. Validation
and the best checkpoint are the teacher's: SI-SNRi of the k most energetic outputs
(``val_si_snri``, k = ``model.student_outputs``) and of the oracle grouping on the labelled
validation mixtures; without them, the MixIT loss on validation MoMs (``val_loss``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from tsmixit.data.datasets import SemiSupervisedBatches
from tsmixit.losses import pit, snr_tau
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

#: SNR_max of the zero references (tau_0 = 10^(-ZERO_SNR_MAX / 10), relative to |x|^2).
ZERO_SNR_MAX = 20.0
#: A source whose RMS is at most this is a zero reference.
SILENT_RMS = 1e-8


def batch_split(labelled_share: float, batch_size: int) -> tuple[int, int]:
    """(B_u, B_l): MoMs and labelled rows of a batch of `batch_size` for the share rho:
    B_l = floor(rho B + 1/2), then at least 1 when rho > 0 and at most B - 1 when rho < 1
    (the config refuses B = 1 with 0 < rho < 1)."""
    n_labelled = math.floor(labelled_share * batch_size + 0.5)
    if labelled_share > 0:
        n_labelled = max(n_labelled, 1)
    if labelled_share < 1:
        n_labelled = min(n_labelled, batch_size - 1)
    return batch_size - n_labelled, n_labelled


def pit_zero_references(
    est: Tensor, sources: Tensor, mixture: Tensor, snr_max: float = 30.0,
    zero_snr_max: float = ZERO_SNR_MAX, eps: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """L_sup of the module docstring: PIT of M outputs against S <= M sources padded with
    M - S zero references. The zero references are interchangeable, so the best of the M!
    permutations is the best injective map pi of the sources to outputs for the pairwise
    costs l(s_j, s_hat_m) - l_0(s_hat_m, x) (``pit`` over that matrix), plus sum_m l_0.

    est: (B, M, T), sources: (B, S, T), mixture: (B, T) at the sources' microphone ->
    loss (B,), perm (B, S) (perm[b, j]: the output given to source j).
    """
    n_out, n_src = est.shape[1], sources.shape[1]
    dtype = torch.promote_types(torch.float32, est.dtype)
    with torch.autocast(device_type=est.device.type, enabled=False):
        est, sources, mixture = est.to(dtype), sources.to(dtype), mixture.to(dtype)
        mix_energy = mixture.pow(2).sum(dim=-1, keepdim=True)  # (B, 1)
        zero = 10.0 * torch.log10((est.pow(2).sum(dim=-1) + 10.0 ** (-zero_snr_max / 10.0)
                                   * mix_energy + eps) / (mix_energy + eps))  # (B, M): l_0
        active = -snr_tau(est.unsqueeze(2), sources.unsqueeze(1), snr_max, eps)  # (B, M, S)
        silent = sources.pow(2).mean(dim=-1) <= SILENT_RMS ** 2  # (B, S)
        active = torch.where(silent.unsqueeze(1), zero.unsqueeze(2), active)
        gain, perm = pit(est, sources, pairwise=lambda *_: active - zero.unsqueeze(2))
        return (zero.sum(dim=-1) + n_src * gain) / n_out, perm


class SemiMixIT(MixITTeacher):
    """Semi-supervised MixIT: the MixIT teacher's separator (M outputs) and validation,
    trained on `SemiSupervisedBatches` with L = L_MixIT + lambda L_sup (module docstring;
    lambda = ``supervised_weight``, ``zero_snr_max`` the zero references' SNR_max)."""

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        k: int = 2,
        snr_max: float = 30.0,
        zero_snr_max: float = ZERO_SNR_MAX,
        supervised_weight: float = 1.0,
        mixit: Literal["exact", "least_squares"] = "exact",
        **options: Any,
    ) -> None:
        options.setdefault("stage", "semi_mixit")
        super().__init__(model_hparams, sample_rate, k, snr_max, mixit, **options)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """L of one `SemiSupervisedBatches` item, and its terms {"mixit", "supervised"}
        (each present when the batch holds its kind of row)."""
        est = self(batch["mixture"])  # (B, M, T): the B_u MoMs, then the B_l labelled rows
        n_mom, n_labelled = batch["references"].shape[0], batch["sources"].shape[0]
        terms = {}
        if n_mom:
            terms["mixit"] = self.mixit_loss(est[:n_mom], batch["references"],
                                             snr_max=self.hparams.snr_max)[0].mean()
        if n_labelled:
            terms["supervised"] = pit_zero_references(
                est[n_mom:], batch["sources"], batch["mixture"][n_mom:, 0],  # x at mic 0
                self.hparams.snr_max, self.hparams.zero_snr_max)[0].mean()
        none = est.new_zeros(())
        total = (terms.get("mixit", none)
                 + self.hparams.supervised_weight * terms.get("supervised", none))
        return total, terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        batch = {key: value[0] for key, value in batch.items()}  # the loader's 1 item: a batch
        total, terms = self.loss(batch)
        for name, value in terms.items():
            self.log(f"train_{name}_loss",
                     self.trainer.strategy.reduce(value.detach(), reduce_op="mean"),
                     on_step=True, on_epoch=False)
        return self._train_loss(total)


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg, splits = ctx.config, ctx.splits
    options = cfg.stages.semi_mixit
    segment = splits.frames(cfg.data.segment_seconds)
    n_mom, n_labelled = batch_split(options.labelled_share, cfg.data.batch_size)
    valid, monitor = mixit_validation(ctx, segment)
    system = SemiMixIT(
        model_hparams(ctx, cfg.model.teacher_outputs, cfg.model.teacher_consistency),
        k=cfg.model.student_outputs, supervised_weight=options.supervised_weight,
        mixit=cfg.model.mixit, monitor=monitor, **system_options(ctx, stage))
    train = SemiSupervisedBatches(
        splits.train, splits.labelled_train, segment, n_mom, n_labelled, seed=cfg.train.seed,
        single_mixture_prob=cfg.data.single_mixture_prob, reference_only=ctx.reference_only)
    data = stage_data(ctx, train, valid)
    data.batch_size = 1  # each item of `train` is a whole batch of B_u + B_l rows
    summary = fit(ctx, stage, folder, system, data, monitor)
    return {**summary, "labelled_mixtures": len(splits.labelled_train) if n_labelled else 0,
            "batch_mixtures_of_mixtures": n_mom, "batch_labelled": n_labelled}
