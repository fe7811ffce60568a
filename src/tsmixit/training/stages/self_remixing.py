"""Stage kind "self_remixing": Self-Remixing (Saijo & Ogawa, ICASSP 2023, "Self-Remixing:
unsupervised speech separation via separation and remixing"), on the unlabelled training
mixtures; no true sources are read.

Symbols (``tsmixit.remixing``): x_c the B observed mixtures of a batch (reference
microphone), f_sh the shuffler and f_so the solver (k = ``model.student_outputs`` outputs).
The shuffler separates and remixes: s = f_sh(x) (B, k, T), its k most energetic outputs
projected back onto x_c (uniform mixture consistency, the authors' ``shuffler_mixconsis``),
pseudo-mixtures x~_b = sum_j s_{pi_j(b), j} with one permutation pi_j of the batch per source
slot, drawn constrained (the authors' constrained batch shuffle). The solver separates the
pseudo-mixtures, y = f_so(x~), its outputs are ordered like the pseudo-sources (PIT under
-SNR_tau, without gradient) and remixed back with the inverse permutations, and the observed
mixtures supervise it:

    L = mean_c -SNR_tau(x_c, x^_c),   x^_c = sum_j y_{pi_j^{-1}(c), sigma(j)},   SNR_max = 30 dB

(the authors' thresholded-SNR loss). The shuffler follows the solver,
theta_sh <- gamma theta_sh + (1 - gamma) theta_so, at the start of every step whose global step
is a multiple of ``stages.self_remixing.ema_every`` (default: once per epoch, gamma = 0.8, as
the authors' configs). Both start from the MixIT teacher (``init: teacher``; ``scratch``
starts the solver at random, the shuffler still from the teacher): the solver of k outputs by
``init_from_teacher``, the shuffler keeps its M outputs and follows the solver on the tensors
the solver has (``tsmixit.remixing.ema_update``).

The shuffler is a frozen module of the system, so it travels in the checkpoint; the
permutations are seeded with (train.seed, rank, global step), so a resumed stage draws what an
uninterrupted one does. Validation: the solver's SI-SNRi against the labelled validation
mixtures' sources (``val_si_snri``). The stage needs a single-channel model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from tsmixit.remixing import remix, self_remixing_loss
from tsmixit.training.fit import StageContext
from tsmixit.training.plan import Stage
from tsmixit.training.stages.remixit import RemixITStudent, run_remixing


class SelfRemixingSolver(RemixITStudent):
    """The Self-Remixing solver f_so (``model``, k outputs) with its shuffler f_sh
    (``teacher``, an EMA of the solver, factor ``ema_gamma`` every ``update_every`` steps, None:
    once per epoch). snr_max: SNR_max of the loss (None: plain SNR)."""

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        teacher_hparams: dict[str, Any],
        teacher_arch: str = "conv_tasnet",
        ema_gamma: float = 0.8,
        update_every: int | None = None,
        seed: int = 0,
        snr_max: float | None = 30.0,
        **options: Any,
    ) -> None:
        options.setdefault("stage", "self_remixing")
        # The shuffler always follows by EMA; the loss is Self-Remixing's (no RemixIT clamp).
        options.update(teacher_update="ema", si_snr_max=None)
        super().__init__(model_hparams, sample_rate, teacher_hparams, teacher_arch,
                         ema_gamma=ema_gamma, update_every=update_every, seed=seed, **options)

    def remix_loss(self, mixture: Tensor, perms: Tensor) -> Tensor:
        """Self-Remixing's loss of a batch (B, C, T) for the permutations perms (k, B): (B,)
        per observed mixture."""
        pseudo, targets = remix(self.teacher_estimates(mixture), perms)  # (B, T), (B, k, T)
        loss, _ = self_remixing_loss(self(pseudo.unsqueeze(1)), targets,
                                     mixture[:, 0], perms, self.hparams.snr_max)
        return loss


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    section = ctx.config.stages.self_remixing
    return run_remixing(stage, ctx, folder, SelfRemixingSolver, ema_gamma=section.ema_gamma,
                        update_every=section.ema_every)
