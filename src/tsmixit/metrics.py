"""Separation metrics as pure tensor functions, shared by validation (training) and evaluation.

Notation: s_hat (..., M, T) are a separator's M outputs, y (..., k, T) the k reference
sources and x (..., T) the mixture at the reference microphone; A (k, M) is a 0/1 grouping
matrix whose columns each hold exactly one 1, so that (A s_hat)_j sums the outputs given to
reference j. For a mixture with M > k outputs (a MixIT teacher):

- top-k: the k most energetic outputs, paired with the references by the best permutation
  (what a student trained on a teacher's top-k pseudo-targets sees);
- oracle: the grouping A maximising the mean SI-SNR of A s_hat against y (the paper's oracle
  remix); the gap to top-k is the over-separation;
- SI-SNRi = SI-SNR(s, y) - SI-SNR(x, y) and SDRi = SDR(s, y) - SDR(x, y), averaged over the
  k sources; SDR is BSS-eval's (512-tap distortion filter) from fast-bss-eval, each pairing
  with its own best permutation;
- active outputs: the number of outputs holding more than a share (in dB) of the total
  output energy, a direct count of over-separation.

No file, manifest or model I/O here: `tsmixit.evaluation.evaluate` runs models on test sets
and `tsmixit.training.systems` validates with these functions.
"""

from collections.abc import Callable
from typing import Any

import fast_bss_eval
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits
from torch import Tensor

from tsmixit.audio import resample
from tsmixit.errors import ModelFileError
from tsmixit.losses import mixit_assignments, pit, reorder, si_snr

#: SDR of a silent estimate is -inf; it is clamped to +-100 dB so that means stay finite.
SDR_FLOOR_DB = -100.0
#: Diagonal loading of BSS-eval's filter system (signals normalised to unit energy): a
#: perfect estimate scores about 100 dB instead of NaN; ordinary values move < 1e-3 dB.
SDR_LOAD_DIAG = 1e-10
#: The exhaustive oracle without empty groups refuses more than this many groupings (k^M).
MAX_GROUPINGS = 1 << 16


def top_k_outputs(est: Tensor, k: int) -> Tensor:
    """Indices of the k most energetic outputs, most energetic first: (..., M, T) -> (..., k)."""
    energy = est.double().pow(2).sum(dim=-1)  # (..., M)
    return energy.argsort(dim=-1, descending=True, stable=True)[..., :k]


def top_k_by_energy(est: Tensor, k: int) -> Tensor:
    """The k most energetic outputs, most energetic first: (B, M, T) -> (B, k, T).
    These are the pseudo-targets; the other M - k outputs are discarded, not merged."""
    idx = top_k_outputs(est, k)  # (B, k)
    return est.gather(1, idx.unsqueeze(-1).expand(-1, -1, est.shape[-1]))


def active_output_count(est: Tensor, threshold_db: float = -20.0) -> Tensor:
    """Over-separation count: outputs whose energy share E_m / sum_m E_m exceeds
    `threshold_db`: (..., M, T) -> (...,) long."""
    energy = est.double().pow(2).sum(dim=-1)  # (..., M)
    share = energy / energy.sum(dim=-1, keepdim=True).clamp_min(1e-20)  # (..., M)
    return (share > 10.0 ** (threshold_db / 10.0)).sum(dim=-1)


def mixture_si_snr(mixture: Tensor, sources: Tensor) -> Tensor:
    """The SI-SNRi baseline: SI-SNR(x, y_j) of the unprocessed mixture against each source.

    mixture: (..., T), sources: (..., k, T) -> (..., k)
    """
    return si_snr(mixture.unsqueeze(-2).expand_as(sources), sources)


def si_snri_pit(est: Tensor, sources: Tensor, mixture: Tensor) -> Tensor:
    """SI-SNRi of the best one-to-one pairing of estimates (B, E, T) with sources (B, S, T),
    E >= S, over the reference-microphone mixture (B, T): mean over sources -> (B,)."""
    loss, _ = pit(est, sources)  # (B,) mean negative SI-SNR of the best pairing
    return -loss - mixture_si_snr(mixture, sources).mean(dim=-1)


def oracle_grouping(
    est: Tensor, ref: Tensor, *, allow_empty: bool, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """The grouping A (k, M) maximising the mean SI-SNR of the group sums A s_hat against the
    references, and that mean SI-SNR: every grouping is scored (no library scores groupings).

    allow_empty=True (validation): all k^M matrices, a reference may get no output (as in
    MixIT); each remix A s_hat is formed on the time axis in est's dtype and scored with
    ``si_snr``, so the value is SI-SNR's own.

    allow_empty=False (evaluation): only groupings leaving no reference without an output,
    at most ``MAX_GROUPINGS``; each is scored from inner products in float64: with
    G = <s_hat, s_hat>, c = <s_hat, y_j>, r = |y_j|^2 (zero-mean signals), group j = a^T s_hat
    has <group, y_j> = a^T c and |group|^2 = a^T G a, and
    SI-SNR = 10 log10( (a^T c)^2 / (r a^T G a - (a^T c)^2) ) (eps in both terms).

    est: (..., M, T), ref: (..., k, T) -> A (..., k, M) in est's dtype, mean SI-SNR (...) dB.
    """
    n_out, k = est.shape[-2], ref.shape[-2]
    if allow_empty:
        A = mixit_assignments(k, n_out).to(est)  # (G, k, M)
        remix = torch.einsum("gkm,...mt->...gkt", A, est)  # (..., G, k, T)
        score = si_snr(remix, ref.unsqueeze(-3)).mean(dim=-1)  # (..., G)
        best_score, best = score.max(dim=-1)  # (...,)
        return A[best], best_score
    if k**n_out > MAX_GROUPINGS:
        raise ModelFileError(
            f"the oracle grouping of {n_out} outputs into {k} groups has {k**n_out} "
            f"candidates (> {MAX_GROUPINGS}); evaluate a model with fewer outputs."
        )
    A = mixit_assignments(k, n_out)  # (G, k, M) float64
    A = A[(A.sum(dim=-1) > 0).all(dim=-1)].to(est.device)  # no reference without output
    s = est.double() - est.double().mean(dim=-1, keepdim=True)  # (..., M, T)
    y = ref.double() - ref.double().mean(dim=-1, keepdim=True)  # (..., k, T)
    gram = s @ s.mT  # (..., M, M)
    cross = s @ y.mT  # (..., M, k)
    r = y.pow(2).sum(dim=-1).unsqueeze(-2)  # (..., 1, k)
    dot = torch.einsum("gjm,...mj->...gj", A, cross)  # (..., G, k)
    power = torch.einsum("gjm,...mn,gjn->...gj", A, gram, A)  # (..., G, k)
    target = dot.pow(2)  # (..., G, k) = r * |alpha y|^2
    noise = (r * power - target).clamp_min(0.0)  # (..., G, k) = r * |group - alpha y|^2
    score = 10.0 * torch.log10((target + eps) / (noise + eps)).mean(dim=-1)  # (..., G)
    best_score, best = score.max(dim=-1)  # (...,)
    return A[best].to(est.dtype), best_score


def si_snri_oracle(est: Tensor, sources: Tensor, mixture: Tensor) -> Tensor:
    """SI-SNRi of the best grouping of all M estimates (B, M, T) into S sources (B, S, T),
    empty groups allowed (``oracle_grouping(allow_empty=True)``), over the
    reference-microphone mixture (B, T) -> (B,). The gap to top-k is the over-separation."""
    _, score = oracle_grouping(est, sources, allow_empty=True)  # (B,)
    return score - mixture_si_snr(mixture, sources).mean(dim=-1)


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


def quality_metrics() -> dict[str, Callable[[np.ndarray, np.ndarray, int], float]]:
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


# One BLAS thread for the NumPy/SciPy parts (BSS-eval's solves, STOI, PESQ's resampling):
# between two calls OpenBLAS's idle threads spin, and torch's forward passes that run beside
# them on the same cores (evaluation, a mixture at a time) went 2-3x slower on 2 cores.
@threadpool_limits.wrap(limits=1, user_api="blas")
def score_mixture(
    est: Tensor,
    ref: Tensor,
    mixture: Tensor,
    k: int = 2,
    active_threshold_db: float = -20.0,
    sample_rate: int | None = None,
    quality: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] | None = None,
) -> dict[str, Any]:
    """All metrics of one mixture: est (M, T) outputs, ref (k, T) sources, mixture (T,) at
    the reference microphone. Returns a flat dict (see the module docstring); "topk_outputs"
    lists the kept outputs in reference order, "oracle_groups" each output's group (the
    oracle without empty groups). `quality` maps further row keys to scorers
    (reference, estimate, sample_rate) -> float, applied to the top-k estimates."""
    est, ref, mixture = est.float().cpu(), ref.float().cpu(), mixture.float().cpu()
    n_out = est.shape[0]
    si_mix = mixture_si_snr(mixture, ref)  # (k,)

    top = top_k_outputs(est, k)  # (k,)
    _, perm = pit(est[top][None], ref[None])  # (1, k): estimate index for each reference
    aligned = reorder(est[top][None], perm)[0]  # (k, T)
    si_top = si_snr(aligned, ref)

    A, _ = oracle_grouping(est, ref, allow_empty=False)  # (k, M)
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
