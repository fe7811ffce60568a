"""Stage kind "label": the frozen teacher (eval mode, no gradients) separates each
full-length training mixture x into M outputs; the k most energetic are its pseudo-targets
(Zhang et al., Interspeech 2021), the other M - k are discarded, not merged.

Mode "disk" writes them once (``audio/<id>_s<j>.wav``, ``rows/<id>.json`` per mixture,
then a pseudo-labelled ``manifest.jsonl`` and ``active_outputs.json``); an interrupted
stage labels only the rows not done. Mode "fly" writes nothing: the student's teacher
labels each batch.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tsmixit.audio import write_audio
from tsmixit.data.manifest import Manifest, pseudo_labelled
from tsmixit.errors import TrainingError
from tsmixit.files import write_json_atomic
from tsmixit.metrics import active_output_count, top_k_by_energy
from tsmixit.training.checkpoints import load_separator
from tsmixit.training.fit import StageContext, trainer
from tsmixit.training.plan import Stage, label_mode
from tsmixit.training.run_folder import barrier, in_run, rank
from tsmixit.training.systems import model_input


class _IndexedMixtures(Dataset):
    """Full-length mixtures of selected rows, with their row index."""

    def __init__(self, manifest: Manifest, indices: list[int], reference_only: bool) -> None:
        self.manifest, self.indices = manifest, indices
        self.reference_only = reference_only

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = self.indices[i]
        mixture = self.manifest.load_mixture(index, reference_only=self.reference_only)
        return {"index": torch.tensor(index), "mixture": torch.from_numpy(mixture)}


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
        teacher: nn.Module,
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
        mixture = batch["mixture"]  # (B, C, T)
        est = self.teacher(model_input(mixture, self.teacher.n_channels, "label"))  # (B, M, T)
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
                record["channels"] = int(mixture.shape[1])
            write_json_atomic(self.out_dir / "rows" / f"{name}.json", record)


def read_label_record(out_dir: Path, row_id: str) -> dict | None:
    """The record ``PseudoLabeller`` wrote for a row, or None if the row is not done."""
    path = Path(out_dir) / "rows" / f"{safe_name(row_id)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run(stage: Stage, ctx: StageContext, folder: Path) -> dict:
    cfg = ctx.config
    mode = label_mode(cfg)
    teacher_ckpt = ctx.checkpoint(stage.teacher)
    summary: dict[str, Any] = {**stage.record(), "mode": mode, "teacher": str(teacher_ckpt),
                               "checkpoint": str(teacher_ckpt)}
    if mode == "fly":
        return summary
    label = cfg.stages.label
    source = ctx.splits.unlabelled
    todo = [i for i, row in enumerate(source.rows)
            if read_label_record(folder, row["id"]) is None]
    start = time.monotonic()
    if todo:
        labeller = PseudoLabeller(load_separator(teacher_ckpt), cfg.model.student_outputs,
                                  folder, source.rows, label.active_threshold_db)
        data = _IndexedMixtures(source, todo, ctx.reference_only)
        predict = trainer(cfg, None, None, [])
        sampler = DistributedSampler(data, predict.world_size, predict.global_rank,
                                     shuffle=False)
        loader = DataLoader(data, batch_size=1, sampler=sampler,
                            num_workers=cfg.data.num_workers,
                            pin_memory=torch.cuda.is_available())
        predict.predict(labeller, dataloaders=loader, return_predictions=False)
    barrier()
    manifest_path = folder / "manifest.jsonl"
    summary["manifest"] = str(manifest_path)
    if rank() != 0:
        return summary
    rows, active = [], []
    for row in source.rows:
        record = read_label_record(folder, row["id"])
        if record is None:
            raise TrainingError(f"[{stage.name}] row {row['id']!r} was not labelled")
        rows.append(pseudo_labelled(
            row, [str(folder / p) for p in record["sources"]], in_run(teacher_ckpt, ctx.run_dir),
            record["active_outputs"],
            mixture=str(folder / record["mixture"]) if "mixture" in record else None,
            channels=record.get("channels")))
        active.append(record["active_outputs"])
    Manifest(rows, name=str(manifest_path)).save(manifest_path, root=ctx.home)
    histogram = {str(k): v for k, v in sorted(Counter(active).items())}
    write_json_atomic(folder / "active_outputs.json", {
        "threshold_db": label.active_threshold_db, "histogram": histogram,
        "per_mixture": {row["id"]: a for row, a in zip(source.rows, active, strict=True)},
    })
    summary.update(mixtures=len(rows), mean_active_outputs=round(sum(active) / len(active), 3),
                   active_outputs_histogram=histogram,
                   label_seconds=round(time.monotonic() - start, 2))
    return summary
