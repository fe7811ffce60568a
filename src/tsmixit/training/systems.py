"""Lightning systems of TS-MixIT (Zhang et al., Interspeech 2021):

- ``MixITTeacher``: a separator (``model.arch``) with M outputs trained with MixIT on mixtures of
  mixtures x = x1 + x2, loss min_A mean_n -SNR_tau(x_n, (A s_hat)_n), SNR_max = 30 dB.
- ``PITSeparator``: a separator with k outputs trained with utterance-level PIT on
  negative SI-SNR, against targets from the batch (pseudo-labels on disk, or true sources)
  or from a frozen teacher's k most energetic outputs computed per batch (on the fly).

Validation: SI-SNR improvement against the true sources of the labelled validation
mixtures. A teacher (M > k outputs) is scored two ways: ``val_si_snri`` takes its k most
energetic outputs (what the student learns from; this is the monitored value) and
``val_si_snri_oracle`` the best grouping of all M outputs into the reference sources.
Without a labelled validation set the teacher monitors its MixIT loss on validation
mixtures of mixtures (``val_loss``).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from tsmixit.audio import model_channels
from tsmixit.errors import TrainingError
from tsmixit.losses import mixit, mixit_least_squares, pit
from tsmixit.metrics import si_snri_oracle, si_snri_pit, top_k_by_energy
from tsmixit.models.registry import build_separator

#: Checkpoint layout (read by `tsmixit.training.checkpoints`): the separator is the module
#: attribute ``model`` (state-dict keys ``model.*``), rebuilt by the registry from
#: ``hyper_parameters["arch"]`` and ``hyper_parameters[HPARAMS_KEY]``.
MODEL_PREFIX = "model."
HPARAMS_KEY = "model_hparams"
MIXIT_LOSSES = {"exact": mixit, "least_squares": mixit_least_squares}


def model_input(mixture: Tensor, n_channels: int, stage: str) -> Tensor:
    """What a separator of `n_channels` microphones is fed of a batch (B, C, T): the channel
    policy of `tsmixit.audio.model_channels` (a single-channel model gets microphone 0)."""
    x, _ = model_channels(mixture, n_channels, f"stage {stage or 'training'}")
    return x


def init_from_teacher(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy the teacher's weights into the student: every tensor of equal shape, and for
    the output layers (n_sources * N rows, output-major) the rows of the first
    min(k_teacher, k_student) outputs (the rest of a wider student's rows keep their random
    initialisation). Returns the names of tensors left wholly at their initialisation."""
    source = teacher.state_dict()
    target = student.state_dict()
    untouched = []
    for name, value in target.items():
        theirs = source.get(name)
        if theirs is not None and theirs.shape == value.shape:
            target[name] = theirs.clone()
        elif theirs is not None and theirs.shape[1:] == value.shape[1:] and (
            theirs.shape[0] // teacher.n_sources * student.n_sources == value.shape[0]
        ):
            rows = min(theirs.shape[0], value.shape[0])
            target[name] = value.clone()
            target[name][:rows] = theirs[:rows]
        else:
            untouched.append(name)
    student.load_state_dict(target)
    return untouched


class SeparationSystem(L.LightningModule):
    """Shared parts: the separator, Adam with plateau halving of the learning rate,
    non-finite loss detection and validation SI-SNRi against true sources. Subclasses take
    their own arguments and pass these on as ``**options`` (Lightning records them all).

    The plateau scheduler is stepped here after each validation with the epoch's global
    value (so it follows step-based validation), and its state travels in the checkpoint.
    """

    monitor_mode = {"val_si_snri": "max", "val_loss": "min"}

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        lr: float = 1e-3,
        plateau_factor: float = 0.5,
        plateau_patience: int = 3,
        monitor: str | None = "val_si_snri",
        stage: str = "",
        arch: str = "conv_tasnet",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_separator(arch, **model_hparams)
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._val_sums: dict[str, list[Tensor]] = {}

    @property
    def n_channels(self) -> int:
        return self.model.n_channels

    def forward(self, mixture: Tensor) -> Tensor:
        """(B, C, T) mixture -> (B, n_sources, T) estimates at the reference microphone."""
        return self.model(model_input(mixture, self.n_channels, self.hparams.stage))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr)
        if self.hparams.monitor is not None:
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=self.monitor_mode[self.hparams.monitor],
                factor=self.hparams.plateau_factor,
                patience=self.hparams.plateau_patience,
            )
            if self._plateau_state is not None:
                self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.plateau is not None:
            checkpoint["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("plateau")

    def _train_loss(self, loss: Tensor) -> Tensor:
        """Log the loss averaged over all processes; stop on NaN/inf on every rank at once."""
        value = self.trainer.strategy.reduce(loss.detach(), reduce_op="mean")
        if not torch.isfinite(value):
            raise TrainingError(
                f"stage {self.hparams.stage or type(self).__name__}: the training loss is "
                f"{value.item()} at step {self.global_step}; lower the learning rate "
                "(stages.<stage>.lr) or check the data for silent/NaN audio"
            )
        self.log("train_loss", value, on_step=True, on_epoch=False, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss

    def _accumulate(self, name: str, values: Tensor) -> None:
        """Add per-example validation values (B,) to the running [sum, count]."""
        total = torch.stack([values.detach().double().sum(), values.new_tensor(values.numel())])
        self._val_sums.setdefault(name, []).append(total.double())

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def on_validation_epoch_end(self) -> None:
        means = {}
        for name, parts in sorted(self._val_sums.items()):
            total = torch.stack(parts).sum(dim=0)  # [sum, count] on this rank
            total = self.all_gather(total).reshape(-1, 2).sum(dim=0)  # over ranks
            means[name] = (total[0] / total[1]).float()
            self.log(name, means[name], prog_bar=name == self.hparams.monitor)
        metric = means.get(self.hparams.monitor or "")
        if self.plateau is not None and metric is not None and not self.trainer.sanity_checking:
            self.plateau.step(metric.item())

    def _validate_pit(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """The validation step of a k-output system: SI-SNRi and PIT loss against the
        batch's true sources."""
        est = self(batch["mixture"])  # (B, k, T)
        self._validate_labelled(batch, est, est.shape[1])
        loss, _ = pit(est, batch["sources"])
        self._accumulate("val_loss", loss)

    def _validate_labelled(self, batch: dict[str, Tensor], est: Tensor, k: int) -> None:
        """SI-SNRi of estimates (B, E, T) against batch sources (B, S, T); teacher-style
        (E > k) also the oracle grouping."""
        mixture, sources = batch["mixture"][:, 0], batch["sources"]  # (B, T), (B, S, T)
        self._accumulate("val_si_snri", si_snri_pit(top_k_by_energy(est, k), sources, mixture))
        if est.shape[1] > k:
            self._accumulate("val_si_snri_oracle", si_snri_oracle(est, sources, mixture))


class MixITTeacher(SeparationSystem):
    """MixIT teacher with M = model_hparams["n_sources"] outputs; ``k`` is the number of
    outputs the student keeps (the top-k SI-SNRi monitor). ``mixit``: the training loss,
    exact (all N^M assignments) or least squares (Wisdom et al., WASPAA 2021; large M)."""

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        k: int = 2,
        snr_max: float = 30.0,
        mixit: Literal["exact", "least_squares"] = "exact",
        **options: Any,
    ) -> None:
        options.setdefault("stage", "teacher")
        super().__init__(model_hparams, sample_rate, **options)
        self.mixit_loss = MIXIT_LOSSES[mixit]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        est = self(batch["mixture"])  # (B, M, T) from the MoM (B, C, T)
        loss, _ = self.mixit_loss(est, batch["references"], snr_max=self.hparams.snr_max)
        return self._train_loss(loss.mean())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        est = self(batch["mixture"])  # (B, M, T)
        if "sources" in batch:
            self._validate_labelled(batch, est, self.hparams.k)
            # Oracle-grouping MixIT loss against the true sources.
            loss, _ = self.mixit_loss(est, batch["sources"], snr_max=self.hparams.snr_max)
        else:
            loss, _ = self.mixit_loss(est, batch["references"], snr_max=self.hparams.snr_max)
        self._accumulate("val_loss", loss)


class PITSeparator(SeparationSystem):
    """k-output separator trained with PIT on negative SI-SNR. Targets come from the batch
    ("sources": pseudo-labels or true sources) unless ``teacher_hparams`` is given: then a
    frozen teacher (eval mode, no gradients, not optimised) labels each batch on the fly
    with its k most energetic outputs."""

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        teacher_hparams: dict[str, Any] | None = None,
        teacher_arch: str = "conv_tasnet",
        **options: Any,
    ) -> None:
        options.setdefault("stage", "student")
        super().__init__(model_hparams, sample_rate, **options)
        self.teacher = None
        if teacher_hparams is not None:
            self.teacher = build_separator(teacher_arch, **teacher_hparams)
            self.teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> PITSeparator:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: never in training mode
        return self

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        mixture = batch["mixture"]  # (B, C, T)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_est = self.teacher(
                    model_input(mixture, self.teacher.n_channels, self.hparams.stage))
                targets = top_k_by_energy(teacher_est, self.model.n_sources)  # (B, k, T)
        else:
            targets = batch["sources"]  # (B, k, T)
        loss, _ = pit(self(mixture), targets)  # (B,)
        return self._train_loss(loss.mean())

    validation_step = SeparationSystem._validate_pit
