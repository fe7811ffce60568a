"""Separation losses: thresholded SNR, SI-SNR, permutation-invariant training (PIT) and
mixture invariant training (MixIT), all batched and differentiable.

Notation follows Wisdom et al., "Unsupervised sound separation using mixture invariant
training" (NeurIPS 2020) and Zhang et al., "Teacher-Student MixIT" (Interspeech 2021):
y is a reference signal, y_hat its estimate, s_hat (B, M, T) the separator's M outputs,
x (B, N, T) the N reference mixtures of a mixture of mixtures, A (N, M) a 0/1 mixing matrix
whose columns each hold exactly one 1. Every loss returns one value per example, shape (B,);
callers take ``.mean()``.

Why by hand: the library losses (torchmetrics, public PIT/MixIT wrappers) compute every
candidate pairing on the time axis. Here the candidates are scored from inner products only
(Gram matrices, one batched matrix product over time), which is exact and far cheaper; see
``benchmarks/bench_losses.py``.

Precision: such inner-product shortcuts compute an error energy as a difference of large
numbers. In float32 that loses accuracy as the SNR grows, so the Gram matrices are
accumulated in float64 (``GRAM_DTYPE``), at a higher cost than float32 on CPU
(``benchmarks/bench_losses.py`` prints both errors and both costs).
"""

import itertools
import math
from functools import lru_cache
from typing import Literal, Protocol

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

GRAM_DTYPE = torch.float64
"""dtype of the inner products behind ``pairwise_neg_si_snr``, ``mixit`` and
``mixit_least_squares``. The SI-SNR error of a float32 Gram grows with the SNR, that of a
float64 Gram stays negligible (against a float64 time-axis computation);
``benchmarks/bench_losses.py`` prints both at 30, 40 and 60 dB."""

PitMethod = Literal["auto", "exhaustive", "hungarian"]

EXHAUSTIVE_MAX_PERMUTATIONS = 24
"""``pit(method="auto")`` scores all permutations when there are at most this many (n <= 4
for square problems) and uses the Hungarian algorithm above that."""


def _tau(snr_max: float | None) -> float:
    """Soft threshold tau = 10^(-SNR_max / 10); 0 for plain SNR."""
    return 0.0 if snr_max is None else 10.0 ** (-snr_max / 10.0)


def snr_tau(est: Tensor, ref: Tensor, snr_max: float | None = 30.0, eps: float = 1e-8) -> Tensor:
    """Thresholded SNR in dB over the last axis (Wisdom et al. 2020, eq. 3):

        SNR_tau(y, y_hat) = 10 log10( (|y|^2 + eps) / (|y - y_hat|^2 + tau |y|^2 + eps) ),
        tau = 10^(-SNR_max / 10),

    which saturates at SNR_max dB, so that well-separated outputs stop dominating the
    gradient. ``snr_max=None`` gives the plain SNR. The eps in the numerator keeps the value
    (0 dB) and its gradient finite when both y and y_hat are silent.

    est, ref: (..., T) -> (...)
    """
    ref_energy = ref.pow(2).sum(dim=-1)  # (...)
    err_energy = (ref - est).pow(2).sum(dim=-1)  # (...)
    return 10.0 * torch.log10((ref_energy + eps) / (err_energy + _tau(snr_max) * ref_energy + eps))


def si_snr(est: Tensor, ref: Tensor, eps: float = 1e-8, zero_mean: bool = True) -> Tensor:
    """Scale-invariant SNR in dB over the last axis (Le Roux et al., ICASSP 2019):

        alpha = (<y_hat, y> + eps) / (|y|^2 + eps),
        SI-SNR(y, y_hat) = 10 log10( (|alpha y|^2 + eps) / (|alpha y - y_hat|^2 + eps) ),

    after removing the mean of both signals when ``zero_mean``. The eps terms (as in
    torchmetrics) keep value and gradient finite for silent references and estimates.

    est, ref: (..., T) -> (...)
    """
    if zero_mean:
        est = est - est.mean(dim=-1, keepdim=True)
        ref = ref - ref.mean(dim=-1, keepdim=True)
    alpha = ((est * ref).sum(dim=-1, keepdim=True) + eps) / (
        ref.pow(2).sum(dim=-1, keepdim=True) + eps
    )  # (..., 1)
    target = alpha * ref  # (..., T)
    return 10.0 * torch.log10(
        (target.pow(2).sum(dim=-1) + eps) / ((target - est).pow(2).sum(dim=-1) + eps)
    )


def _gram(a: Tensor, b: Tensor) -> Tensor:
    """Inner products <a_i, b_j> over time in ``GRAM_DTYPE``: (B, I, T), (B, J, T) -> (B, I, J)."""
    return torch.bmm(a.to(GRAM_DTYPE), b.to(GRAM_DTYPE).transpose(1, 2))


def pairwise_neg_si_snr(
    est: Tensor, ref: Tensor, eps: float = 1e-8, zero_mean: bool = True
) -> Tensor:
    """Negative SI-SNR of every (estimate, reference) pair from one batched matrix product.

    With G_es = <y_hat_e, y_s>, r_s = |y_s|^2, e_e = |y_hat_e|^2 and
    alpha_es = (G_es + eps) / (r_s + eps), the two energies of ``si_snr`` are
    |alpha y|^2 = alpha^2 r and |alpha y - y_hat|^2 = alpha^2 r - 2 alpha G + e,
    so the time axis is touched once, for G, r and e.

    est: (B, E, T), ref: (B, S, T) -> (B, E, S)
    """
    if zero_mean:
        est = est - est.mean(dim=-1, keepdim=True)
        ref = ref - ref.mean(dim=-1, keepdim=True)
    cross = _gram(est, ref)  # (B, E, S)
    ref_energy = ref.to(GRAM_DTYPE).pow(2).sum(dim=-1).unsqueeze(1)  # (B, 1, S)
    est_energy = est.to(GRAM_DTYPE).pow(2).sum(dim=-1).unsqueeze(2)  # (B, E, 1)
    alpha = (cross + eps) / (ref_energy + eps)  # (B, E, S)
    target_energy = alpha.pow(2) * ref_energy  # (B, E, S)
    noise_energy = (target_energy - 2.0 * alpha * cross + est_energy).clamp_min(0.0)
    si = 10.0 * torch.log10((target_energy + eps) / (noise_energy + eps))  # (B, E, S)
    return -si.to(est.dtype)


class PairwiseLoss(Protocol):
    def __call__(self, est: Tensor, ref: Tensor) -> Tensor: ...


@lru_cache(maxsize=32)
def _permutations(n_est: int, n_ref: int) -> Tensor:
    """All injective maps of the n_ref references to estimates: (K, n_ref), K = E!/(E-S)!.
    Made outside inference mode: the cached tensor may later enter autograd."""
    with torch.inference_mode(False):
        return torch.tensor(list(itertools.permutations(range(n_est), n_ref)),
                            dtype=torch.long)


def _pit_exhaustive(pair: Tensor) -> tuple[Tensor, Tensor]:
    """Score every permutation at once by gathering from the pairwise matrix (B, E, S)."""
    n_est, n_ref = pair.shape[1:]
    perms = _permutations(n_est, n_ref).to(pair.device)  # (K, S)
    scores = pair[:, perms, torch.arange(n_ref, device=pair.device)]  # (B, K, S)
    loss, best = scores.mean(dim=-1).min(dim=-1)  # (B,), (B,)
    return loss, perms[best]


def _pit_hungarian(pair: Tensor) -> tuple[Tensor, Tensor]:
    """Optimal assignment per example (scipy's ``linear_sum_assignment`` on the detached
    pairwise matrix), then the loss gathered from the matrix so that gradients flow."""
    cost = pair.detach().transpose(1, 2).cpu().numpy()  # (B, S, E)
    perm = np.stack([linear_sum_assignment(c)[1] for c in cost])  # (B, S)
    perm_t = torch.as_tensor(perm, dtype=torch.long, device=pair.device)
    loss = pair.gather(1, perm_t.unsqueeze(1)).squeeze(1).mean(dim=-1)  # (B,)
    return loss, perm_t


def pit(
    est: Tensor,
    ref: Tensor,
    pairwise: PairwiseLoss = pairwise_neg_si_snr,
    method: PitMethod = "auto",
) -> tuple[Tensor, Tensor]:
    """Utterance-level permutation invariant training (Kolbaek et al. 2017):

        L = min over injective pi of (1/S) sum_s  l(y_hat_pi(s), y_s),

    where l is ``pairwise`` (a loss, lower is better, returning (B, E, S)). With E > S
    estimates, the best S of them are chosen. ``method="exhaustive"`` scores all
    E!/(E-S)! maps in one batched gather; ``"hungarian"`` solves the assignment problem per
    example in O(S^3); ``"auto"`` picks exhaustive up to ``EXHAUSTIVE_MAX_PERMUTATIONS``.

    est: (B, E, T), ref: (B, S, T) -> loss (B,), perm (B, S) long, where perm[b, s] is the
    index of the estimate assigned to reference s (``reorder(est, perm)`` aligns them).
    """
    n_est, n_ref = est.shape[1], ref.shape[1]
    if n_est < n_ref:
        raise ValueError(
            f"PIT needs at least as many estimates as references, got {n_est} < {n_ref}"
        )
    pair = pairwise(est, ref)  # (B, E, S)
    if method == "auto":
        n_perms = math.perm(n_est, n_ref)
        method = "exhaustive" if n_perms <= EXHAUSTIVE_MAX_PERMUTATIONS else "hungarian"
    if method == "exhaustive":
        return _pit_exhaustive(pair)
    if method == "hungarian":
        return _pit_hungarian(pair)
    raise ValueError(f"PIT method must be 'auto', 'exhaustive' or 'hungarian', got {method!r}")


def reorder(est: Tensor, perm: Tensor) -> Tensor:
    """Pick and order the estimates as ``pit`` assigned them: (B, E, T), (B, S) -> (B, S, T)."""
    return est.gather(1, perm.unsqueeze(-1).expand(-1, -1, est.shape[-1]))


@lru_cache(maxsize=32)
def mixit_assignments(n_mix: int, n_est: int) -> Tensor:
    """All N^M mixing matrices A (0/1, each column one-hot): (N^M, N, M), float64 on CPU.

    Row k assigns estimate m to mixture ``k``'s m-th base-N digit (most significant first).
    The tensor is cached and shared between callers: do not modify it in place. It is made
    outside inference mode, so that a first call from evaluation does not keep training from
    saving it for backward.
    """
    with torch.inference_mode(False):
        choice = torch.tensor(list(itertools.product(range(n_mix), repeat=n_est)))  # (K, M)
        one_hot = torch.nn.functional.one_hot(choice, n_mix)  # (K, M, N)
        return one_hot.transpose(1, 2).to(GRAM_DTYPE)  # (K, N, M)


def _mixit_gram(est: Tensor, mixtures: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The inner products MixIT needs, from one Gram matrix of [x; s_hat] in ``GRAM_DTYPE``.

    est: (B, M, T), mixtures: (B, N, T) -> <x_n, x_n> (B, N), <x_n, s_hat_m> (B, N, M),
    <s_hat_m, s_hat_l> (B, M, M)
    """
    n_mix = mixtures.shape[1]
    signals = torch.cat([mixtures, est], dim=1)  # (B, N + M, T)
    gram = _gram(signals, signals)  # (B, N + M, N + M)
    xx = gram[:, :n_mix, :n_mix].diagonal(dim1=1, dim2=2)  # (B, N)
    return xx, gram[:, :n_mix, n_mix:], gram[:, n_mix:, n_mix:]


def _remix_neg_snr(
    xx: Tensor, xs: Tensor, ss: Tensor, A: Tensor, snr_max: float | None, eps: float
) -> Tensor:
    """-mean_n SNR_tau(x_n, (A s_hat)_n) for a stack of mixing matrices, from inner products:

        |x_n - sum_m a_nm s_hat_m|^2
            = <x_n, x_n> - 2 sum_m a_nm <x_n, s_hat_m> + sum_{m,l} a_nm a_nl <s_hat_m, s_hat_l>,

    so each remix costs O(N M^2) once the O((N + M)^2 T) Gram matrix is known.

    xx: (B, N), xs: (B, N, M), ss: (B, M, M), A: (K, N, M) or (B, K, N, M) -> (B, K)
    """
    A = A.to(device=xs.device, dtype=xs.dtype)
    cross = (A * xs.unsqueeze(1)).sum(dim=-1)  # (B, K, N)
    quad = (torch.matmul(A, ss.unsqueeze(1)) * A).sum(dim=-1)  # (B, K, N)
    err = (xx.unsqueeze(1) - 2.0 * cross + quad).clamp_min(0.0)  # (B, K, N)
    ref_energy = xx.unsqueeze(1)  # (B, 1, N)
    snr = 10.0 * torch.log10((ref_energy + eps) / (err + _tau(snr_max) * ref_energy + eps))
    return -snr.mean(dim=-1)  # (B, K)


def mixit(
    est: Tensor, mixtures: Tensor, snr_max: float | None = 30.0, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Exact mixture invariant training loss (Wisdom et al. 2020, eq. 1):

        L = min over A in B^{N x M} of (1/N) sum_n -SNR_tau(x_n, (A s_hat)_n),

    with all N^M mixing matrices scored in one pass from Gram matrices (``_remix_neg_snr``).
    Ties go to the first matrix in ``mixit_assignments`` order.

    est: (B, M, T), mixtures: (B, N, T) -> loss (B,), A (B, N, M) 0/1 in est's dtype.
    """
    A_all = mixit_assignments(mixtures.shape[1], est.shape[1])  # (K, N, M)
    neg_snr = _remix_neg_snr(*_mixit_gram(est, mixtures), A_all, snr_max, eps)  # (B, K)
    loss, best = neg_snr.min(dim=-1)  # (B,)
    return loss.to(est.dtype), A_all.to(device=est.device, dtype=est.dtype)[best]


def mixit_least_squares(
    est: Tensor, mixtures: Tensor, snr_max: float | None = 30.0, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Least-squares MixIT (Wisdom et al., WASPAA 2021): solve the unconstrained mixing
    matrix A_ls = argmin_A |x - A s_hat|^2 = <x, s_hat> <s_hat, s_hat>^{-1}, project it to
    the nearest valid assignment (each estimate to the mixture with the largest coefficient
    in its column), and return the MixIT loss for that A. One M x M solve replaces the N^M
    candidates, so it suits large M; it is exact when the optimum is clear (see the tests),
    never better than ``mixit``.

    est: (B, M, T), mixtures: (B, N, T) -> loss (B,), A (B, N, M) 0/1 in est's dtype.
    """
    n_mix, n_est = mixtures.shape[1], est.shape[1]
    xx, xs, ss = _mixit_gram(est, mixtures)
    with torch.no_grad():
        # Ridge term scaled to the estimates' energy: silent outputs leave ss singular.
        ridge = 1e-6 * ss.diagonal(dim1=1, dim2=2).mean(dim=-1) + eps  # (B,)
        eye = torch.eye(n_est, dtype=ss.dtype, device=ss.device)
        A_ls = torch.linalg.solve(ss + ridge[:, None, None] * eye, xs.transpose(1, 2))  # (B, M, N)
        A = torch.nn.functional.one_hot(A_ls.argmax(dim=-1), n_mix).transpose(1, 2)  # (B, N, M)
    loss = _remix_neg_snr(xx, xs, ss, A.unsqueeze(1), snr_max, eps).squeeze(1)  # (B,)
    return loss.to(est.dtype), A.to(est.dtype)
