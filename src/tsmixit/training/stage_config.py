"""The ``stages`` section of the recipe config: each stage's budget and options, TS-MixIT's
(teacher, label, student, finetune, distill, the supervised baselines) and the mixture-only
methods beside it, and the checks of their values (``check_stages``, called by the config's
own checks; each error names its key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tsmixit.errors import ConfigError


@dataclass
class StageBudget:
    """A training stage: its budget and learning rate (None = the train section's)."""

    enabled: bool = True
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    lr: float | None = None


@dataclass
class StudentStage(StageBudget):
    # "teacher": start from the teacher's weights (all layers whose shapes fit, and the first
    # k output masks); "scratch": random initialisation.
    init: Literal["teacher", "scratch"] = "scratch"


@dataclass
class LabelStage:
    # "disk": label every training mixture once (a pseudo-labelled manifest); "fly": the
    # frozen teacher labels each student batch; "auto": disk unless the student trains for
    # exactly one epoch.
    mode: Literal["auto", "disk", "fly"] = "auto"
    active_threshold_db: float = -20.0
    # Label the mixtures of labelled rows too (their sources stay unread).
    include_labelled: bool = True
    max_mixtures: int | None = None


@dataclass
class DistillStage:
    rounds: int = 1
    init: Literal["teacher", "scratch"] = "teacher"
    # Budget of each round's student (its fine-tuning is the finetune stage's); all None:
    # the student stage's budget. A student started from the fine-tuned student needs fewer.
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    lr: float | None = None


# The mixture-only methods beside TS-MixIT (issue 14): off unless enabled, each one stage kind
# (training/stages/<kind>.py), its defaults from its paper or its authors' code.


@dataclass
class SemiMixITStage(StageBudget):
    """Semi-supervised MixIT (Wisdom et al., NeurIPS 2020): MixIT on mixtures of mixtures of
    all training mixtures plus PIT on the true sources of the labelled fraction, in one batch."""

    enabled: bool = False
    # Share of each batch that is labelled mixtures (PIT on their sources, padded with zero
    # references to M); the rest are MoMs. Rounded half up, at least one row of each kind
    # the share asks for (training/stages/semi_mixit.py).
    labelled_share: float = 0.5
    # Weight of the supervised (PIT) term against the MixIT term.
    supervised_weight: float = 1.0


@dataclass
class SparseMixITStage(StageBudget):
    """Sparse and efficient MixIT (Wisdom et al., WASPAA 2021): MixIT with M outputs plus a
    sparsity loss on the outputs' RMS (L1/L2) and a covariance loss between outputs."""

    enabled: bool = False
    outputs: int = 8  # M
    # "exact" at M = 8 (2^8 assignments: faster than least squares here, and exact);
    # "least_squares" for M = 16, where the exact search is 10x slower.
    mixit: Literal["exact", "least_squares"] = "exact"
    # lambda of L_sparse = |r|_1 / |r|_2 (losses.sparsity_loss). The paper sweeps it; its
    # values could not be read here. 2.875 is the one public recipe's (Saijo's
    # kohei0209/self-remixing, FUSS, M = 8: 23 on |r|_1 / (M |r|_2)), on the same dB scale.
    sparsity_weight: float = 2.875
    # lambda of L_cov (losses.covariance_loss); off: the paper's best systems add the
    # sparsity loss only (its abstract).
    covariance_weight: float = 0.0


@dataclass
class RemixITStage(StageBudget):
    """RemixIT (Tzinis et al., IEEE JSTSP 2022): a teacher's estimates, permuted across the
    batch and remixed, train a student; the teacher follows the student (EMA or replaced)."""

    enabled: bool = False
    # The teacher it starts from: the MixIT teacher (its top-k outputs), the supervised
    # baseline trained on the labelled fraction, or the pretrained separator of model.init
    # (the paper's use: adapting a separator trained elsewhere to unlabelled mixtures).
    teacher: Literal["teacher", "supervised_fraction", "pretrained"] = "teacher"
    # "ema": teacher <- gamma * teacher + (1 - gamma) * student every `ema_every` steps (None:
    # once per epoch); "replace": the teacher becomes the student every `replace_every`
    # steps; "frozen": never updated. Defaults of the authors' code (etzinis/
    # unsup_speech_enh_adaptation README: --teacher_momentum 0.99 --n_epochs_teacher_update 1
    # --initialize_student_from_checkpoint, the student starting from the teacher).
    teacher_update: Literal["ema", "replace", "frozen"] = "ema"
    ema_gamma: float = 0.99
    ema_every: int | None = None
    replace_every: int | None = None
    init: Literal["teacher", "scratch"] = "teacher"


@dataclass
class SelfRemixingStage(StageBudget):
    """Self-Remixing (Saijo & Ogawa, ICASSP 2023): the shuffler (an EMA of the solver)
    separates and remixes across the batch; the solver separates the pseudo-mixtures and
    remixes its estimates back into the observed mixtures, which supervise it."""

    enabled: bool = False
    # shuffler <- gamma * shuffler + (1 - gamma) * solver every `ema_every` steps (None: once
    # per epoch); the solver starts from the MixIT teacher. Defaults of the authors' code
    # (kohei0209/self-remixing configs: teacher_update weight 0.8, update_timing epoch,
    # solver and shuffler both loaded from the MixIT model).
    ema_gamma: float = 0.8
    ema_every: int | None = None
    init: Literal["teacher", "scratch"] = "teacher"


@dataclass
class StagesConfig:
    teacher: StageBudget = field(default_factory=StageBudget)
    label: LabelStage = field(default_factory=LabelStage)
    student: StudentStage = field(default_factory=StudentStage)
    finetune: StageBudget = field(default_factory=StageBudget)
    distill: DistillStage = field(default_factory=DistillStage)
    supervised_full: StageBudget = field(default_factory=StageBudget)
    supervised_fraction: StageBudget = field(default_factory=StageBudget)
    semi_mixit: SemiMixITStage = field(default_factory=SemiMixITStage)
    sparse_mixit: SparseMixITStage = field(default_factory=SparseMixITStage)
    remixit: RemixITStage = field(default_factory=RemixITStage)
    self_remixing: SelfRemixingStage = field(default_factory=SelfRemixingStage)


def check_stages(s: StagesConfig, batch_size: int, student_outputs: int,
                 model_init: str | None) -> None:
    """The mixture-only methods' weights, shares and EMA factors against the rest of the
    config (data.batch_size, model.student_outputs, model.init), checked when disabled too:
    a bad value in a config is refused even before the stage is switched on."""

    def within(key: str, value: float, low: float, high: float, closed_high: bool) -> None:
        if not (low <= value <= high if closed_high else low <= value < high):
            bracket = "]" if closed_high else ")"
            raise ConfigError(f"config key {key!r} must lie in [{low}, {high}{bracket}, "
                              f"got {value!r}")

    within("stages.semi_mixit.labelled_share", s.semi_mixit.labelled_share, 0.0, 1.0, True)
    if s.semi_mixit.enabled and 0 < s.semi_mixit.labelled_share < 1 and (
            batch_size < 2):
        raise ConfigError(
            "config key 'stages.semi_mixit.labelled_share' "
            f"({s.semi_mixit.labelled_share}) asks for labelled rows and mixtures of mixtures "
            f"in every batch, which needs data.batch_size >= 2 (got {batch_size}); "
            "raise data.batch_size or set the share to 0 or 1")
    for key, value in (("stages.semi_mixit.supervised_weight", s.semi_mixit.supervised_weight),
                       ("stages.sparse_mixit.sparsity_weight", s.sparse_mixit.sparsity_weight),
                       ("stages.sparse_mixit.covariance_weight",
                        s.sparse_mixit.covariance_weight)):
        if value < 0:
            raise ConfigError(f"config key {key!r} must be non-negative, got {value!r}")
    if s.sparse_mixit.outputs < max(2, student_outputs):
        raise ConfigError(
            "config key 'stages.sparse_mixit.outputs' (M) must be at least 2 and at least "
            f"model.student_outputs = {student_outputs}, got "
            f"{s.sparse_mixit.outputs}")
    within("stages.remixit.ema_gamma", s.remixit.ema_gamma, 0.0, 1.0, False)
    within("stages.self_remixing.ema_gamma", s.self_remixing.ema_gamma, 0.0, 1.0, False)
    for key, every in (("stages.remixit.replace_every", s.remixit.replace_every),
                       ("stages.remixit.ema_every", s.remixit.ema_every),
                       ("stages.self_remixing.ema_every", s.self_remixing.ema_every)):
        if every is not None and every <= 0:
            raise ConfigError(f"config key {key!r} must be positive (steps), got {every!r}")
    if s.remixit.teacher_update == "replace" and s.remixit.replace_every is None:
        raise ConfigError("config key 'stages.remixit.replace_every' must be set (steps) when "
                          "stages.remixit.teacher_update is 'replace'")
    if s.remixit.enabled and s.remixit.teacher == "supervised_fraction" and (
            not s.supervised_fraction.enabled):
        raise ConfigError("config key 'stages.remixit.teacher' is 'supervised_fraction' but "
                          "stages.supervised_fraction.enabled is false; enable it or use "
                          "stages.remixit.teacher: teacher")
    if s.remixit.enabled and s.remixit.teacher == "pretrained" and model_init is None:
        raise ConfigError("config key 'stages.remixit.teacher' is 'pretrained' but model.init "
                          "is not set; set model.init (a model folder or 'pretrained') or use "
                          "stages.remixit.teacher: teacher")
