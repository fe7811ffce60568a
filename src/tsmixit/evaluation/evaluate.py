"""Evaluation driver: a separator x a test set -> per-mixture scores (file and model I/O).

Every test mixture is read from its manifest at full length, fed to the model as the channel
policy says (`tsmixit.audio.model_channels`), and scored by `tsmixit.metrics.score_mixture`
against its references at microphone 0: SI-SNRi and SDRi of the top-k outputs and of the
oracle grouping, and the number of active outputs. The results are written as JSON for the
report (`evaluate_into_run`) or for `tsmixit evaluate` (`evaluate_path`). A few test mixtures
are kept to listen to (`tsmixit serve --run`) and to plot: the first rows of the test set, the
same mixtures for every system, one .npz each (`_save_example`).

PESQ and STOI of the top-k estimates are added when the `pesq` / `pystoi` packages are
installed (they are optional); a mixture PESQ cannot score is NaN and left out of the mean.
"""

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tsmixit.audio import model_channels
from tsmixit.data.importers import open_test_set
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ConfigError, ManifestError, ModelFileError
from tsmixit.files import atomic_path, write_json_atomic
from tsmixit.inference import Separator
from tsmixit.metrics import quality_metrics, score_mixture
from tsmixit.model_files import inference_device, load_model
from tsmixit.training.checkpoints import load_separator
from tsmixit.training.config import RecipeConfig
from tsmixit.training.run_folder import in_run, stable_hash

log = logging.getLogger(__name__)

#: Keys averaged into result["mean"] when present in the per-mixture rows.
MEAN_KEYS = (
    "si_snri_topk", "sdri_topk", "si_snri_oracle", "sdri_oracle", "si_snr_topk", "sdr_topk",
    "si_snr_oracle", "sdr_oracle", "si_snr_mixture", "sdr_mixture", "active_outputs",
    "pesq_topk", "stoi_topk",
)  # fmt: skip


def _length_batches(lengths: list[int], batch_size: int, max_padding: float) -> list[list[int]]:
    """Row indices sorted by length, cut into batches of at most `batch_size` rows whose
    longest row is at most (1 + max_padding) times the shortest (little zero padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
            lengths[i] <= (1.0 + max_padding) * lengths[batches[-1][0]]
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _unwrap(model: nn.Module | Separator) -> tuple[nn.Module, int | None]:
    if isinstance(model, Separator):
        return model.model, model.sample_rate
    return model, None


@torch.inference_mode()
def evaluate_separator(
    model: nn.Module | Separator,
    manifest: Manifest,
    k: int = 2,
    active_threshold_db: float = -20.0,
    batch_size: int = 1,
    progress: bool = True,
    max_padding: float = 0.1,
    examples: int = 0,
    example_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score `model` (a registered separator or a loaded Separator) on every row of `manifest`
    at full length. Rows are sorted by length and batched (zero-padded to the batch's longest,
    at most `max_padding` longer than its shortest; outputs cropped to each row's length). The
    default batch of 1 scores every mixture exactly: zero padding enters gLN's statistics, so
    larger batches trade a small, batch-dependent change of the scores for speed.

    Returns {"per_mixture": [row dicts with "id" and the metrics of `score_mixture`],
    "mean": {metric: mean over mixtures, "over_separated": share of mixtures with more than
    k active outputs}, "n_mixtures", "n_outputs", "n_channels", "k", "active_threshold_db",
    "sample_rate"}. With `example_dir`, the mixture, references and outputs of the first
    `examples` rows (manifest order: every system keeps the same mixtures) are saved there
    as each is scored, one .npz per row (`example_name`; only those rows' arrays are kept),
    and listed in result["examples"] as {"id", "path"} in row order; result["example"] is the
    first of them.
    """
    module, model_rate = _unwrap(model)
    module.eval()
    n_channels = int(module.hparams.get("n_channels", 1))
    n_out = int(module.hparams["n_sources"])
    if n_out < k:
        raise ModelFileError(f"the model has {n_out} outputs, fewer than the k={k} references")
    if len(manifest) == 0:
        raise ManifestError(f"{manifest.name}: no mixtures to evaluate.")
    rates = {row["sample_rate"] for row in manifest.rows}
    if len(rates) > 1 or (model_rate is not None and rates != {model_rate}):
        raise ModelFileError(
            f"{manifest.name}: sample rate(s) {sorted(rates)} Hz, model {model_rate} Hz; "
            "import the test data at the model's rate."
        )
    sample_rate = rates.pop()
    device = next(module.parameters()).device
    quality = quality_metrics()
    if examples < 0:
        raise ConfigError(f"examples must be >= 0 (test mixtures kept), got {examples}")
    kept = range(min(examples, len(manifest)) if example_dir is not None else 0)
    example_paths = {i: Path(example_dir, example_name(i, manifest.rows[i]["id"]))
                     for i in kept}
    rows: dict[int, dict[str, Any]] = {}
    lengths = [int(row["num_frames"]) for row in manifest.rows]
    bar = tqdm(total=len(manifest), desc="evaluate", unit="mix", disable=not progress)
    for batch in _length_batches(lengths, batch_size, max_padding):
        examples = [manifest.load_example(i, allow_unlabelled=True,
                                          reference_only=n_channels == 1) for i in batch]
        mixtures = [mixture for mixture, _ in examples]  # each (C, T_i)
        longest = max(lengths[i] for i in batch)
        x = np.zeros((len(batch), n_channels, longest), np.float32)  # (B, C_model, T)
        for b, (i, mix) in enumerate(zip(batch, mixtures, strict=True)):
            # A 1-channel model's rows are read at mic 0 already (reference_only).
            where = f"{manifest.name}: row {manifest.rows[i]['id']!r}"
            fed, _ = model_channels(mix, n_channels, where)  # (C_model, T_i)
            x[b, :, : mix.shape[1]] = fed
        inputs = torch.from_numpy(x).to(device)  # (B, C_model, T)
        if n_channels == 1:
            inputs = inputs[:, 0]  # (B, T)
        est = module(inputs).float().cpu()  # (B, M, T)
        for b, i in enumerate(batch):
            sources = examples[b][1]  # (S, T_i)
            row_id = manifest.rows[i]["id"]
            if sources.shape[0] != k:
                raise ManifestError(
                    f"{manifest.name}: row {row_id!r} has {sources.shape[0]} sources, "
                    f"evaluation expects k={k}; set k to the number of speakers."
                )
            est_i = est[b, :, : lengths[i]]  # (M, T_i)
            mix0 = torch.from_numpy(mixtures[b][0])  # (T_i,) reference microphone
            ref = torch.from_numpy(sources)
            row = score_mixture(est_i, ref, mix0, k, active_threshold_db, sample_rate, quality)
            rows[i] = {"id": row_id, "num_frames": lengths[i], **row}
            if i in example_paths:
                _save_example(example_paths[i], row_id, mixtures[b][0], sources,
                              est_i.numpy(), row, sample_rate)
        bar.update(len(batch))
    bar.close()
    per_mixture = [rows[i] for i in range(len(manifest))]
    mean = {
        key: float(np.nanmean([r[key] for r in per_mixture]))
        for key in MEAN_KEYS
        if key in per_mixture[0]
    }
    mean["over_separated"] = float(np.mean([r["active_outputs"] > k for r in per_mixture]))
    result: dict[str, Any] = {
        "per_mixture": per_mixture,
        "mean": mean,
        "n_mixtures": len(per_mixture),
        "n_outputs": n_out,
        "n_channels": n_channels,
        "k": k,
        "active_threshold_db": active_threshold_db,
        "sample_rate": sample_rate,
        "quality_metrics": sorted(quality),
    }
    if example_dir is not None:
        result["examples"] = [{"id": manifest.rows[i]["id"], "path": str(path)}
                              for i, path in example_paths.items()]
        if result["examples"]:
            result["example"] = result["examples"][0]
    return result


def example_name(index: int, row_id: str) -> str:
    """File name of the example of manifest row `index`: "<index>_<id>.npz", the id's
    characters other than letters, digits, ".", "-" and "_" replaced by "_" (at most 60 of
    them); the index keeps names apart when two ids reduce to one."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(row_id))[:60]
    return f"{index}_{safe}.npz"


def _save_example(
    path: str | os.PathLike, row_id: str, mixture: np.ndarray, sources: np.ndarray,
    est: np.ndarray, row: dict[str, Any], sample_rate: int,
) -> None:
    """One test mixture kept (the page's players, the report's spectrograms): mixture (T,),
    references (k, T), all outputs (M, T), the top-k outputs in reference order and the
    oracle groups."""
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp, id=row_id, sample_rate=sample_rate, mixture=mixture, references=sources,
            outputs=est, topk_outputs=np.asarray(row["topk_outputs"]),
            oracle_groups=np.asarray(row["oracle_groups"]),
        )


def evaluate_into_run(
    model: nn.Module | Separator,
    manifest: Manifest,
    eval_dir: str | os.PathLike,
    system: str,
    stage: str | None = None,
    examples: int = 3,
    **kwargs: Any,
) -> Path:
    """Evaluate and write EVAL/<system>.json (the report's input: EVAL = RUN/eval, or
    RUN/eval/sets/<name> for an extra test set) with the first `examples` test mixtures in
    EVAL/examples/<system>/, their paths relative to EVAL. Example files of
    `system` the new result does not list (an earlier evaluation's, or the one-example
    layout's EVAL/examples/<system>.npz) are removed. `system` names the row of the results
    table; `stage` the run stage it comes from."""
    eval_dir = Path(eval_dir)
    folder = eval_dir / "examples" / system
    result = evaluate_separator(model, manifest, examples=examples, example_dir=folder,
                                **kwargs)
    for entry in result["examples"]:  # result["example"] is the first of these
        entry["path"] = Path(entry["path"]).relative_to(eval_dir).as_posix()
    result.update(system=system, stage=stage or system)
    out = eval_dir / f"{system}.json"
    write_json_atomic(out, result)
    listed = {eval_dir / entry["path"] for entry in result["examples"]}
    for stale in [*folder.glob("*.npz"), eval_dir / "examples" / f"{system}.npz"]:
        if stale not in listed:
            stale.unlink(missing_ok=True)
    return out


def evaluate_path(
    model: str | os.PathLike,
    data: str | os.PathLike,
    k: int = 2,
    split: str | None = "test",
    json_out: str | os.PathLike | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """`tsmixit evaluate`: load the model (never unpickling) onto `device` and the test set,
    evaluate, and write the result to `json_out` when given."""
    separator = load_model(model, inference_device(device))
    result = evaluate_separator(separator, open_test_set(data, split), k=k, **kwargs)
    result.update(model=str(model), data=str(data), split=split)
    if json_out is not None:
        write_json_atomic(json_out, result)
    return result


def evaluate_stages(config: RecipeConfig, test: Manifest, eval_dir: Path, run_dir: Path,
                    summaries: dict[str, dict], progress: bool, name: str = "test"
                    ) -> dict[str, dict]:
    """Every trained stage of a recipe scored on the test set `test` (called `name` in the
    log) into EVAL/<system>.json (redone only when the stage, the eval config or the test
    set changed); {system: mean metrics}."""
    device = inference_device("cpu" if config.train.accelerator == "cpu" else "auto")
    if len(test) == 0:
        raise ManifestError(f"{test.name}: no {config.eval.split!r} rows to evaluate")
    settings = {k: v for k, v in dataclasses.asdict(config.eval).items()
                if k not in ("extra_sets", "real_voices")}  # which sets, not how scored
    key = stable_hash([settings, len(test), [row["id"] for row in test.rows]])
    results = {}
    for system, summary in summaries.items():
        if summary["kind"] == "label":
            continue
        out = eval_dir / f"{system}.json"
        stamp = stable_hash([summary["fingerprint"], key])
        if out.is_file():
            result = json.loads(out.read_text())
            if result.get("recipe_key") == stamp:
                results[system] = result["mean"]
                continue
        model = load_separator(Path(summary["checkpoint"])).to(device)
        evaluate_into_run(model, test, eval_dir, system=system, stage=system,
                          k=config.model.student_outputs,
                          active_threshold_db=config.eval.active_threshold_db,
                          examples=config.eval.examples, progress=progress)
        result = json.loads(out.read_text())
        result.update(recipe_key=stamp, checkpoint=in_run(summary["checkpoint"], run_dir),
                      train_seconds=summary.get("train_seconds"), steps=summary.get("steps"),
                      labelled_mixtures=summary.get("labelled_mixtures"))
        write_json_atomic(out, result)
        results[system] = result["mean"]
        shown = ("si_snri_topk", "sdri_topk", "si_snri_oracle", "active_outputs")
        log.info("[eval %s] %s: %s", name, system, ", ".join(
            f"{k} {result['mean'][k]:.2f}" for k in shown if k in result["mean"]))
    return results
