"""Evaluation of a separator on full-length test mixtures.

For a mixture x with k reference sources y (k, T) and M separator outputs s_hat (M, T):

- top-k: the k most energetic outputs, paired with the references by the best permutation
  (what a student trained on a teacher's top-k pseudo-targets sees);
- oracle: the best grouping of all M outputs into k non-empty groups, each group's outputs
  summed, A s_hat with A (k, M) 0/1 and one 1 per column (the paper's oracle remix);
- SI-SNRi = SI-SNR(s, y) - SI-SNR(x, y) and SDRi = SDR(s, y) - SDR(x, y), averaged over the
  k sources; SDR is BSS-eval's (512-tap distortion filter) from fast-bss-eval, each pairing
  with its own best permutation;
- active outputs: the number of outputs holding more than `active_threshold_db` of the total
  output energy. With the top-k/oracle gap it measures over-separation.

PESQ and STOI of the top-k estimates are added when the `pesq` / `pystoi` packages are
installed (they are optional); a mixture PESQ cannot score is NaN and left out of the mean.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fast_bss_eval
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from tqdm import tqdm

from tsmixit.audio import resample
from tsmixit.data.manifest import Manifest, import_wsj0_2mix
from tsmixit.errors import ManifestError, ModelFileError
from tsmixit.files import atomic_path, write_json_atomic
from tsmixit.losses import mixit_assignments, pit, reorder, si_snr
from tsmixit.model_files import Separator, inference_device, load_model

#: SDR of a silent estimate is -inf; it is clamped to +-100 dB so that means stay finite.
SDR_FLOOR_DB = -100.0
#: Diagonal loading of BSS-eval's filter system (signals normalised to unit energy): a
#: perfect estimate scores about 100 dB instead of NaN; ordinary values move < 1e-3 dB.
SDR_LOAD_DIAG = 1e-10
#: The oracle scores every grouping; refuse beyond this many (k^M) to stay exhaustive.
MAX_GROUPINGS = 1 << 16
#: Keys averaged into result["mean"] when present in the per-mixture rows.
MEAN_KEYS = (
    "si_snri_topk", "sdri_topk", "si_snri_oracle", "sdri_oracle", "si_snr_topk", "sdr_topk",
    "si_snr_oracle", "sdr_oracle", "si_snr_mixture", "sdr_mixture", "active_outputs",
    "pesq_topk", "stoi_topk",
)  # fmt: skip


def top_k_outputs(est: Tensor, k: int) -> Tensor:
    """Indices of the k most energetic outputs, most energetic first: (..., M, T) -> (..., k)."""
    energy = est.double().pow(2).sum(dim=-1)  # (..., M)
    return energy.argsort(dim=-1, descending=True, stable=True)[..., :k]


def active_output_count(est: Tensor, threshold_db: float = -20.0) -> Tensor:
    """Over-separation count: outputs whose energy share E_m / sum_m E_m exceeds
    `threshold_db`: (..., M, T) -> (...,) long."""
    energy = est.double().pow(2).sum(dim=-1)  # (..., M)
    share = energy / energy.sum(dim=-1, keepdim=True).clamp_min(1e-20)  # (..., M)
    return (share > 10.0 ** (threshold_db / 10.0)).sum(dim=-1)


def oracle_grouping(est: Tensor, ref: Tensor, eps: float = 1e-8) -> Tensor:
    """The 0/1 matrix A (k, M), one 1 per column and no empty row, maximising the mean
    SI-SNR of the group sums A s_hat against the references.

    Every grouping is scored from inner products in float64 (written by hand: no library
    scores groupings): with G = <s_hat, s_hat>, c = <s_hat, y_j>, r = |y_j|^2 (zero-mean
    signals), group j = a^T s_hat has <group, y_j> = a^T c and |group|^2 = a^T G a, and
    SI-SNR = 10 log10( (a^T c)^2 / (r a^T G a - (a^T c)^2) ).

    est: (M, T), ref: (k, T) -> A (k, M) in est's dtype.
    """
    n_out, k = est.shape[0], ref.shape[0]
    if k**n_out > MAX_GROUPINGS:
        raise ModelFileError(
            f"the oracle grouping of {n_out} outputs into {k} groups has {k**n_out} "
            f"candidates (> {MAX_GROUPINGS}); evaluate a model with fewer outputs."
        )
    A = mixit_assignments(k, n_out)  # (G, k, M) float64
    A = A[(A.sum(dim=-1) > 0).all(dim=-1)]  # groupings leaving no reference without output
    s = est.double() - est.double().mean(dim=-1, keepdim=True)  # (M, T)
    y = ref.double() - ref.double().mean(dim=-1, keepdim=True)  # (k, T)
    gram = s @ s.T  # (M, M)
    cross = s @ y.T  # (M, k)
    r = y.pow(2).sum(dim=-1)  # (k,)
    dot = torch.einsum("gjm,mj->gj", A, cross)  # (G, k)
    power = torch.einsum("gjm,mn,gjn->gj", A, gram, A)  # (G, k)
    target = dot.pow(2)  # (G, k) = r * |alpha y|^2
    noise = (r * power - target).clamp_min(0.0)  # (G, k) = r * |group - alpha y|^2
    score = 10.0 * torch.log10((target + eps) / (noise + eps)).mean(dim=-1)  # (G,)
    return A[score.argmax()].to(est.dtype)


def sdr_pairwise(est: Tensor, ref: Tensor) -> Tensor:
    """BSS-eval SDR of every (reference, estimate) pair: est (E, T), ref (k, T) -> (k, E) dB.

    One call solves the references' distortion-filter system once for all E estimates, so
    scoring the mixture, the top-k outputs and the oracle groups together costs little more
    than one of them. fast-bss-eval's NumPy/SciPy backend on float64: torch 2.13's batched
    LU solve on the CPU returns invalid pivots with more than one thread, which breaks the
    torch backends of both fast-bss-eval and torchmetrics.
    """
    neg_sdr = fast_bss_eval.sdr_loss(
        est.double().numpy(), ref.double().numpy(), pairwise=True, load_diag=SDR_LOAD_DIAG,
        clamp_db=-SDR_FLOOR_DB,
    )  # (k, E)
    return torch.from_numpy(-np.asarray(neg_sdr, dtype=np.float64))


def best_pairing(scores: Tensor) -> Tensor:
    """(k, k) scores of (reference, estimate) pairs -> (k,) each reference's score under the
    one-to-one pairing with the highest total."""
    rows, cols = linear_sum_assignment(scores.numpy(), maximize=True)
    return scores[torch.from_numpy(rows), torch.from_numpy(cols)]


def _quality_metrics() -> dict[str, Callable[[np.ndarray, np.ndarray, int], float]]:
    """PESQ and STOI scorers (reference, estimate, rate) for the packages that are installed."""
    scorers: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {}
    try:
        from pesq import pesq
    except ImportError:
        pass
    else:

        def pesq_score(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
            rate = 8000 if sr < 16000 else 16000  # PESQ serves 8 kHz (nb) and 16 kHz (wb)
            ref, est = resample(ref, sr, rate), resample(est, sr, rate)
            try:
                return float(pesq(rate, ref, est, "nb" if rate == 8000 else "wb"))
            except RuntimeError:  # pesq.PesqError: no utterance found, or audio too short
                return float("nan")

        scorers["pesq_topk"] = pesq_score
    try:
        from pystoi import stoi
    except ImportError:
        pass
    else:
        scorers["stoi_topk"] = lambda ref, est, sr: float(stoi(ref, est, sr, extended=False))
    return scorers


def score_mixture(
    est: Tensor,
    ref: Tensor,
    mixture: Tensor,
    k: int = 2,
    active_threshold_db: float = -20.0,
    sample_rate: int | None = None,
    quality: dict[str, Callable] | None = None,
) -> dict[str, Any]:
    """All metrics of one mixture: est (M, T) outputs, ref (k, T) sources, mixture (T,) at
    the reference microphone. Returns a flat dict (see the module docstring); "topk_outputs"
    lists the kept outputs in reference order, "oracle_groups" each output's group."""
    est, ref, mixture = est.float().cpu(), ref.float().cpu(), mixture.float().cpu()
    n_out = est.shape[0]
    si_mix = si_snr(mixture.expand(k, -1), ref)  # (k,)

    top = top_k_outputs(est, k)  # (k,)
    _, perm = pit(est[top][None], ref[None])  # (1, k): estimate index for each reference
    aligned = reorder(est[top][None], perm)[0]  # (k, T)
    si_top = si_snr(aligned, ref)

    A = oracle_grouping(est, ref)  # (k, M)
    groups = A @ est  # (k, T)
    si_or = si_snr(groups, ref)

    # With M = k outputs the groups are the top-k outputs reordered: same best-pairing SDR.
    scored = [mixture[None], est[top]] + ([groups] if n_out > k else [])
    sdr = sdr_pairwise(torch.cat(scored), ref)  # (k, 1 + k [+ k])
    sdr_mix = sdr[:, 0]  # (k,)
    sdr_top = best_pairing(sdr[:, 1 : 1 + k])
    sdr_or = best_pairing(sdr[:, 1 + k :]) if n_out > k else sdr_top

    row: dict[str, Any] = {
        "n_outputs": n_out,
        "si_snr_mixture": float(si_mix.mean()),
        "sdr_mixture": float(sdr_mix.mean()),
        "si_snr_topk": float(si_top.mean()),
        "sdr_topk": float(sdr_top.mean()),
        "si_snri_topk": float((si_top - si_mix).mean()),
        "sdri_topk": float((sdr_top - sdr_mix).mean()),
        "si_snr_oracle": float(si_or.mean()),
        "sdr_oracle": float(sdr_or.mean()),
        "si_snri_oracle": float((si_or - si_mix).mean()),
        "sdri_oracle": float((sdr_or - sdr_mix).mean()),
        "active_outputs": int(active_output_count(est, active_threshold_db)),
        "topk_outputs": top[perm[0]].tolist(),
        "oracle_groups": A.argmax(dim=0).tolist(),
    }
    for name, scorer in (quality or {}).items():
        pairs = zip(ref.numpy(), aligned.numpy(), strict=True)
        values = [scorer(r, e, sample_rate) for r, e in pairs]
        row[name] = float(np.mean(values))  # NaN when a source could not be scored
    return row


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
    example_index: int | None = None,
    example_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score `model` (a ConvTasNet or a loaded Separator) on every row of `manifest` at full
    length. Rows are sorted by length and batched (zero-padded to the batch's longest, at most
    `max_padding` longer than its shortest; outputs cropped to each row's length). The default
    batch of 1 scores every mixture exactly: zero padding enters gLN's statistics, so larger
    batches trade a small, batch-dependent change of the scores for speed.

    Returns {"per_mixture": [row dicts with "id" and the metrics of `score_mixture`],
    "mean": {metric: mean over mixtures, "over_separated": share of mixtures with more than
    k active outputs}, "n_mixtures", "n_outputs", "n_channels", "k", "active_threshold_db",
    "sample_rate"}. With `example_path`, the mixture, references and outputs of row
    `example_index` (default: the first row) are saved there as .npz and named in
    result["example"].
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
    quality = _quality_metrics()
    if example_path is not None and example_index is None:
        example_index = 0
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
            if mix.shape[0] < n_channels:
                raise ManifestError(
                    f"{manifest.name}: row {manifest.rows[i]['id']!r} has {mix.shape[0]} "
                    f"channel(s), the model takes {n_channels}; evaluate it on data recorded "
                    "with its microphone array."
                )
            x[b, :, : mix.shape[1]] = mix[:n_channels]  # a 1-channel model sees mic 0
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
            if i == example_index and example_path is not None:
                _save_example(example_path, row_id, mixtures[b][0], sources, est_i.numpy(),
                              row, sample_rate)
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
    if example_path is not None:
        result["example"] = {"id": manifest.rows[example_index]["id"], "path": str(example_path)}
    return result


def _save_example(
    path: str | os.PathLike, row_id: str, mixture: np.ndarray, sources: np.ndarray,
    est: np.ndarray, row: dict[str, Any], sample_rate: int,
) -> None:
    """One mixture for the report's spectrograms: mixture (T,), references (k, T), all
    outputs (M, T), the top-k outputs in reference order and the oracle groups."""
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp, id=row_id, sample_rate=sample_rate, mixture=mixture, references=sources,
            outputs=est, topk_outputs=np.asarray(row["topk_outputs"]),
            oracle_groups=np.asarray(row["oracle_groups"]),
        )


def evaluate_into_run(
    model: nn.Module | Separator,
    manifest: Manifest,
    run_dir: str | os.PathLike,
    system: str,
    stage: str | None = None,
    **kwargs: Any,
) -> Path:
    """Evaluate and write RUN/eval/<system>.json (the report's input) with the example
    mixture in RUN/eval/examples/<system>.npz. `system` names the row of the results table
    (see tsmixit.evaluation.report.SYSTEMS); `stage` the run stage it comes from."""
    eval_dir = Path(run_dir) / "eval"
    example = eval_dir / "examples" / f"{system}.npz"
    result = evaluate_separator(model, manifest, example_path=example, **kwargs)
    result["example"]["path"] = str(example.relative_to(eval_dir))
    result.update(system=system, stage=stage or system)
    out = eval_dir / f"{system}.json"
    write_json_atomic(out, result)
    return out


def open_test_set(data: str | os.PathLike, split: str | None = "test") -> Manifest:
    """A manifest file, or a WSJ0-2mix-style folder (imported on the fly), restricted to
    `split` (None: all rows)."""
    data = Path(data)
    manifest = import_wsj0_2mix(data) if data.is_dir() else Manifest.load(data)
    if split is None:
        return manifest
    chosen = manifest.select(split=split)
    if len(chosen) == 0:
        found = sorted({row["split"] for row in manifest.rows})
        raise ManifestError(
            f"{data}: no mixtures in split {split!r} (it has {', '.join(found)}); choose "
            "another split."
        )
    return chosen


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

