"""Stage kind "remixit": RemixIT (Tzinis, Adi, Ithapu, Xu, Smaragdis, Kumar, IEEE JSTSP 2022,
"RemixIT: continual self-training of speech enhancement models via bootstrapped remixing"),
on the unlabelled training mixtures; no true sources are read.

Symbols (``tsmixit.remixing``): x_b the B mixtures of a batch (reference microphone), f_T the
teacher, f_S the student with k = ``model.student_outputs`` outputs, s = f_T(x) (B, k, T) the
teacher's estimates: its k most energetic outputs (``top_k_by_energy``; all of them for a
k-output teacher) projected back onto x_b (uniform mixture consistency, as both authors' codes
do), pi_1..pi_k one permutation of the batch per source slot, drawn constrained so that the
sources of a pseudo-mixture come from different mixtures (Saijo & Ogawa's RemixIT configs; the
RemixIT authors' enhancement code keeps the speech slot and permutes the noise slot), and

    x~_b = sum_j s~_bj,   s~_bj = s_{pi_j(b), j}                 (bootstrapped remixing)
    L = mean_b min_sigma (1/k) sum_j -SI-SNR(s~_bj, f_S(x~_b)_sigma(j)),

each pair's term clamped to [-30, 30] dB as in the authors' code (``remixit_loss``).

Teacher updates (``stages.remixit.teacher_update``), at the start of a step whose global step
is a multiple of n: "ema" theta_T <- gamma theta_T + (1 - gamma) theta_S (n =
``ema_every``, default one epoch), "replace" theta_T <- theta_S (n = ``replace_every``; the
student keeps training, where the authors' sequential protocol starts a new student), "frozen"
never. The teacher starts as the MixIT teacher (M outputs; an EMA then follows the student on
the tensors the k-output student has, ``tsmixit.remixing.ema_update``), the supervised
baseline of the labelled fraction or the pretrained separator of ``model.init``
(``stages.remixit.teacher``: the last is RemixIT's own use, adapting a separator trained on
another domain); ``init: teacher`` starts the student from it (``init_from_teacher``).

The teacher is a frozen module of the system (eval mode, no gradients, not optimised), so it
travels in the checkpoint; the permutations come from a generator seeded with (train.seed,
rank, global step): a resumed stage draws what an uninterrupted one does. Validation: the
student's SI-SNRi against the labelled validation mixtures' sources (``val_si_snri``).
Remixed mixtures exist at the reference microphone only: the stage needs a single-channel
model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from tsmixit.data.datasets import SegmentDataset
from tsmixit.errors import ConfigError
from tsmixit.metrics import top_k_by_energy
from tsmixit.models.consistency import mixture_consistency
from tsmixit.models.registry import build_separator
from tsmixit.remixing import batch_permutations, ema_update, remix, remixit_loss
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
from tsmixit.training.systems import SeparationSystem, model_input

TeacherUpdate = Literal["ema", "replace", "frozen"]


class RemixITStudent(SeparationSystem):
    """The RemixIT student f_S (``model``, k outputs) with its frozen teacher f_T
    (``teacher``, built from ``teacher_hparams``; the caller loads its weights).

    teacher_update / ema_gamma / update_every: how and every how many steps the teacher
    follows the student (``update_every=None``: once per epoch). seed: the permutations'
    seed. si_snr_max: the clamp of the per-pair loss (None: none).
    """

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        teacher_hparams: dict[str, Any],
        teacher_arch: str = "conv_tasnet",
        teacher_update: TeacherUpdate = "ema",
        ema_gamma: float = 0.99,
        update_every: int | None = None,
        seed: int = 0,
        si_snr_max: float | None = 30.0,
        **options: Any,
    ) -> None:
        options.setdefault("stage", "remixit")
        super().__init__(model_hparams, sample_rate, **options)
        self.teacher = build_separator(teacher_arch, **teacher_hparams)
        self.teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> RemixITStudent:
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode
        return self

    def permutations(self, batch: int) -> Tensor:
        """pi_1..pi_k of this step (k, B): a generator seeded with (seed, rank, global step)."""
        seed = np.random.SeedSequence([self.hparams.seed, self.global_rank, self.global_step])
        generator = torch.Generator().manual_seed(int(seed.generate_state(1, np.uint64)[0]))
        return batch_permutations(batch, self.model.n_sources, generator, constrained=True)

    @torch.no_grad()
    def teacher_estimates(self, mixture: Tensor) -> Tensor:
        """s: the teacher's k most energetic outputs, projected onto the mixture at the
        reference microphone: (B, C, T) -> (B, k, T)."""
        est = self.teacher(model_input(mixture, self.teacher.n_channels, self.hparams.stage))
        chosen = top_k_by_energy(est.float(), self.model.n_sources)  # (B, k, T)
        return mixture_consistency(chosen, mixture[:, 0].float())

    def follow_student(self) -> None:
        """The teacher update due at this global step (none at step 0). Done at the start of
        a step, after the checkpoint of the previous one: a resumed run redoes it."""
        mode, step = self.hparams.teacher_update, self.global_step
        if mode == "frozen" or step == 0:
            return
        if step % (self.hparams.update_every or self.trainer.num_training_batches):
            return
        ema_update(self.teacher, self.model, self.hparams.ema_gamma if mode == "ema" else 0.0)

    def remix_loss(self, mixture: Tensor, perms: Tensor) -> Tensor:
        """RemixIT's loss of a batch (B, C, T) for the permutations perms (k, B): (B,)."""
        pseudo, targets = remix(self.teacher_estimates(mixture), perms)  # (B, T), (B, k, T)
        loss, _ = remixit_loss(self(pseudo.unsqueeze(1)), targets, self.hparams.si_snr_max)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.follow_student()
        mixture = batch["mixture"]  # (B, C, T)
        loss = self.remix_loss(mixture, self.permutations(mixture.shape[0]))  # (B,)
        return self._train_loss(loss.mean())

    validation_step = SeparationSystem._validate_pit


def require_single_channel(stage: Stage, ctx: StageContext) -> None:
    """Remixed pseudo-mixtures exist at the reference microphone only."""
    if ctx.splits.channels > 1 and not ctx.reference_only:
        raise ConfigError(
            f"stage {stage.name}: its pseudo-mixtures are remixed at the reference microphone "
            f"only, so a model of all {ctx.splits.channels} microphones cannot learn them; set "
            f"model.channels=reference or disable stages.{stage.budget}")


def run_remixing(stage: Stage, ctx: StageContext, folder: Path,
                 system_class: type[RemixITStudent], **options: Any) -> dict:
    """Train `system_class` (RemixIT or Self-Remixing) on the unlabelled training mixtures,
    its teacher (shuffler) loaded from the stage ``stage.teacher`` (``fit`` starts the student,
    or solver, from ``stage.init`` when set); `options` go to the system."""
    require_single_channel(stage, ctx)
    cfg = ctx.config
    start = load_separator(ctx.checkpoint(stage.teacher))
    valid = validation_set(ctx)
    monitor = "val_si_snri" if valid is not None else None
    system = system_class(
        model_hparams(ctx, cfg.model.student_outputs, cfg.model.student_consistency),
        teacher_hparams=start.hparams, teacher_arch=cfg.model.arch, seed=cfg.train.seed,
        monitor=monitor, **options, **system_options(ctx, stage))
    system.teacher.load_state_dict(start.state_dict())  # the student: `fit` (stage.init)
    train = SegmentDataset(ctx.splits.unlabelled, ctx.splits.frames(cfg.data.segment_seconds),
                           seed=cfg.train.seed, reference_only=ctx.reference_only)
    return fit(ctx, stage, folder, system, stage_data(ctx, train, valid), monitor)


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    section = ctx.config.stages.remixit
    every = section.ema_every if section.teacher_update == "ema" else section.replace_every
    return run_remixing(stage, ctx, folder, RemixITStudent,
                        teacher_update=section.teacher_update, ema_gamma=section.ema_gamma,
                        update_every=every)
