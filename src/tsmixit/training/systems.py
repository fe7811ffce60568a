"""Lightning systems of TS-MixIT (Zhang et al., Interspeech 2021):

- ``MixITTeacher``: a Conv-TasNet with M outputs trained with MixIT on mixtures of
  mixtures x = x1 + x2, loss min_A mean_n -SNR_tau(x_n, (A s_hat)_n), SNR_max = 30 dB.
- ``PITSeparator``: a Conv-TasNet with k outputs trained with utterance-level PIT on
  negative SI-SNR, against targets from the batch (pseudo-labels on disk, or true sources)
  or from a frozen teacher's k most energetic outputs computed per batch (on the fly).
- ``PseudoLabeller``: the frozen teacher separating full-length mixtures for
  ``Trainer.predict``; writes the k most energetic outputs per mixture to disk.

Validation: SI-SNR improvement against the true sources of the labelled validation
mixtures. A teacher (M > k outputs) is scored two ways: ``val_si_snri`` takes its k most
energetic outputs (what the student learns from; this is the monitored value) and
``val_si_snri_oracle`` the best grouping of all M outputs into the reference sources.
Without a labelled validation set the teacher monitors its MixIT loss on validation
mixtures of mixtures (``val_loss``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from tsmixit.errors import TrainingError
from tsmixit.evaluation.metrics import active_output_count, top_k_outputs
from tsmixit.losses import mixit, mixit_assignments, pit, si_snr
from tsmixit.models.conv_tasnet import ConvTasNet


def model_input(mixture: Tensor, n_channels: int) -> Tensor:
    """The microphones a model sees: (batch, C, T) -> (batch, n_channels, T); a single-channel
    model gets microphone 0 (the reference) of a multi-channel mixture."""
    return mixture[:, :n_channels]


def top_k_by_energy(est: Tensor, k: int) -> Tensor:
    """The k most energetic outputs, most energetic first: (B, M, T) -> (B, k, T).
    These are the pseudo-targets; the other M - k outputs are discarded, not merged."""
    idx = top_k_outputs(est, k)  # (B, k)
    return est.gather(1, idx.unsqueeze(-1).expand(-1, -1, est.shape[-1]))


def si_snri_pit(est: Tensor, sources: Tensor, mixture: Tensor) -> Tensor:
    """SI-SNRi of the best one-to-one pairing of estimates (B, E, T) with sources (B, S, T),
    E >= S, over the reference-microphone mixture (B, T): mean over sources -> (B,)."""
    loss, _ = pit(est, sources)  # (B,) mean negative SI-SNR of the best pairing
    baseline = si_snr(mixture.unsqueeze(1).expand_as(sources), sources).mean(dim=-1)  # (B,)
    return -loss - baseline


def si_snri_oracle(est: Tensor, sources: Tensor, mixture: Tensor) -> Tensor:
    """SI-SNRi of the best grouping of all M estimates (B, M, T) into S sources (B, S, T):
    every 0/1 matrix A (S, M) with one 1 per column remixes A s_hat; the best mean SI-SNR
    over the S^M matrices is kept -> (B,). The gap to top-k is the over-separation."""
    A = mixit_assignments(sources.shape[1], est.shape[1]).to(est)  # (K, S, M)
    remix = torch.einsum("ksm,bmt->bkst", A, est)  # (B, K, S, T)
    score = si_snr(remix, sources.unsqueeze(1)).mean(dim=-1)  # (B, K)
    baseline = si_snr(mixture.unsqueeze(1).expand_as(sources), sources).mean(dim=-1)  # (B,)
    return score.max(dim=-1).values - baseline


def init_from_teacher(student: ConvTasNet, teacher: ConvTasNet) -> list[str]:
    """Copy the teacher's weights into the student: every tensor of equal shape, and for the
    mask layer (n_sources * N rows, output-major) the rows of the teacher's first k outputs.
    Returns the names of tensors left at their random initialisation."""
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
            target[name] = theirs[: value.shape[0]].clone()
        else:
            untouched.append(name)
    student.load_state_dict(target)
    return untouched


class SeparationSystem(L.LightningModule):
    """Shared parts: the Conv-TasNet, Adam with plateau halving of the learning rate,
    non-finite loss detection and validation SI-SNRi against true sources.

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ConvTasNet(**model_hparams)
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._val_sums: dict[str, list[Tensor]] = {}

    @property
    def n_channels(self) -> int:
        return self.model.n_channels

    def forward(self, mixture: Tensor) -> Tensor:
        """(B, C, T) mixture -> (B, n_sources, T) estimates at the reference microphone."""
        return self.model(model_input(mixture, self.n_channels))

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

    def _validate_labelled(self, batch: dict[str, Tensor], est: Tensor, k: int) -> None:
        """SI-SNRi of estimates (B, E, T) against batch sources (B, S, T); teacher-style
        (E > k) also the oracle grouping."""
        mixture, sources = batch["mixture"][:, 0], batch["sources"]  # (B, T), (B, S, T)
        self._accumulate("val_si_snri", si_snri_pit(top_k_by_energy(est, k), sources, mixture))
        if est.shape[1] > k:
            self._accumulate("val_si_snri_oracle", si_snri_oracle(est, sources, mixture))


class MixITTeacher(SeparationSystem):
    """MixIT teacher with M = model_hparams["n_sources"] outputs; ``k`` is the number of
    outputs the student keeps (the top-k SI-SNRi monitor)."""

    def __init__(
        self,
        model_hparams: dict[str, Any],
        sample_rate: int,
        k: int = 2,
        snr_max: float = 30.0,
        lr: float = 1e-3,
        plateau_factor: float = 0.5,
        plateau_patience: int = 3,
        monitor: str | None = "val_si_snri",
        stage: str = "teacher",
    ) -> None:
        super().__init__(
            model_hparams, sample_rate, lr, plateau_factor, plateau_patience, monitor, stage
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        est = self(batch["mixture"])  # (B, M, T) from the MoM (B, C, T)
        loss, _ = mixit(est, batch["references"], snr_max=self.hparams.snr_max)  # (B,)
        return self._train_loss(loss.mean())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        est = self(batch["mixture"])  # (B, M, T)
        if "sources" in batch:
            self._validate_labelled(batch, est, self.hparams.k)
            # Oracle-grouping MixIT loss against the true sources.
            loss, _ = mixit(est, batch["sources"], snr_max=self.hparams.snr_max)
        else:
            loss, _ = mixit(est, batch["references"], snr_max=self.hparams.snr_max)
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
        lr: float = 1e-3,
        plateau_factor: float = 0.5,
        plateau_patience: int = 3,
        monitor: str | None = "val_si_snri",
        stage: str = "student",
    ) -> None:
        super().__init__(
            model_hparams, sample_rate, lr, plateau_factor, plateau_patience, monitor, stage
        )
        self.teacher = None
        if teacher_hparams is not None:
            self.teacher = ConvTasNet(**teacher_hparams).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> PITSeparator:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: never in training mode
        return self

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        mixture = batch["mixture"]  # (B, C, T)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_est = self.teacher(model_input(mixture, self.teacher.n_channels))
                targets = top_k_by_energy(teacher_est, self.model.n_sources)  # (B, k, T)
        else:
            targets = batch["sources"]  # (B, k, T)
        loss, _ = pit(self(mixture), targets)  # (B,)
        return self._train_loss(loss.mean())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        est = self(batch["mixture"])  # (B, k, T)
        self._validate_labelled(batch, est, est.shape[1])
        loss, _ = pit(est, batch["sources"])
        self._accumulate("val_loss", loss)


def safe_name(row_id: str) -> str:
    """A file-name-safe version of a manifest row id."""
    return re.sub(r"[^\w.-]", "_", str(row_id))


class PseudoLabeller(L.LightningModule):
    """The frozen teacher for ``Trainer.predict`` (inference mode, eval mode): separates each
    full-length mixture (batch 1) and writes, per row, the k most energetic outputs as float
    WAV ``audio/<id>_s<j>.wav`` (most energetic first; float keeps them exact and unclipped),
    and ``rows/<id>.json`` (written last: the row is done; paths relative to ``out_dir``)
    with the number of active outputs
    (> ``threshold_db`` of the output energy) and each output's energy share in dB. Rows are
    sharded across ranks by the distributed sampler.
    """

    def __init__(
        self,
        teacher: ConvTasNet,
        k: int,
        out_dir: Path,
        rows: list[dict],
        threshold_db: float = -20.0,
    ) -> None:
        super().__init__()
        self.teacher = teacher.requires_grad_(False).eval()
        self.k, self.out_dir, self.rows = k, Path(out_dir), rows
        self.threshold_db = threshold_db

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        from tsmixit.audio import write_audio
        from tsmixit.files import write_json_atomic

        mixture = batch["mixture"]  # (B, C, T)
        est = self.teacher(model_input(mixture, self.teacher.n_channels))  # (B, M, T)
        top = top_k_by_energy(est, self.k).float().cpu().numpy()  # (B, k, T)
        active = active_output_count(est, self.threshold_db).cpu().tolist()  # (B,)
        energy = est.double().pow(2).sum(dim=-1)  # (B, M)
        share_db = (10 * torch.log10(energy / energy.sum(-1, keepdim=True) + 1e-30)).cpu()
        for b, index in enumerate(batch["index"].tolist()):
            row = self.rows[index]
            name = safe_name(row["id"])
            sources = []
            for j in range(self.k):
                relative = f"audio/{name}_s{j}.wav"
                write_audio(self.out_dir / relative, top[b, j], row["sample_rate"], "FLOAT")
                sources.append(relative)
            record = {
                "id": row["id"],
                "sources": sources,
                "active_outputs": int(active[b]),
                "energy_share_db": [round(v, 2) for v in share_db[b].tolist()],
            }
            if row.get("start", 0):
                # A segment of a longer recording: the sources are read from the row's start
                # frame on, so the segment's mixture gets its own file too.
                record["mixture"] = f"audio/{name}_mix.wav"
                write_audio(self.out_dir / record["mixture"], mixture[b].cpu().numpy(),
                            row["sample_rate"], "FLOAT")
            write_json_atomic(self.out_dir / "rows" / f"{name}.json", record)


def read_label_record(out_dir: Path, row_id: str) -> dict | None:
    """The record ``PseudoLabeller`` wrote for a row, or None if the row is not done."""
    path = Path(out_dir) / "rows" / f"{safe_name(row_id)}.json"
    return json.loads(path.read_text()) if path.is_file() else None
