"""Separation losses: thresholded SNR, SI-SNR, permutation-invariant training (PIT),
mixture invariant training (MixIT) and sparse MixIT's sparsity and covariance terms, all
batched and differentiable.

Notation follows Wisdom et al., "Unsupervised sound separation using mixture invariant
training" (NeurIPS 2020) and Zhang et al., "Teacher-Student MixIT" (Interspeech 2021):
y is a reference signal, y_hat its estimate, s_hat (B, M, T) the separator's M outputs,
x (B, N, T) the N reference mixtures of a mixture of mixtures, A (N, M) a 0/1 mixing matrix
whose columns each hold exactly one 1. Every loss returns one value per example, shape (B,);
callers take ``.mean()``.

Why by hand: the library losses (torchmetrics, public PIT/MixIT wrappers) compute every
candidate pairing on the time axis. Here the candidates are scored from inner products only
(Gram matrices, one batched matrix product over time), and the losses that train have their
backward passes written out (one batched matrix product each); see
``benchmarks/bench_losses.py``.

Precision: such inner-product shortcuts compute an error energy as a difference of large
numbers, which loses accuracy in float32 as the SNR grows. Float32 Gram matrices are summed
from partial products over chunks of time (``GRAM_CHUNK``), about ten times more accurate
than one product at the same cost. PIT's SI-SNR matrix has no threshold: an example with an
entry above ``PIT_FLOAT32_MAX_SI_SNR`` is redone in float64 (``GRAM_DTYPE``). MixIT only ranks
its candidates with the Gram matrix, in float32 where its threshold bounds the error
(``MIXIT_FLOAT32_MAX_SNR``), and computes the loss of the chosen one on the time axis.
Inputs in float64 get float64 throughout.
"""

import contextlib
import itertools
import math
from functools import lru_cache
from typing import Literal, Protocol

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.autograd.function import once_differentiable

GRAM_DTYPE = torch.float64
"""dtype of the inner products where no threshold bounds their error: PIT's pairwise SI-SNR
matrix (``pairwise_neg_si_snr``), MixIT's candidate ranking without a threshold or above
``MIXIT_FLOAT32_MAX_SNR``, and all of them for float64 inputs. The SI-SNR error of a float32
Gram grows with the SNR, that of a float64 Gram stays negligible (against a float64
time-axis computation); ``benchmarks/bench_losses.py`` prints both at 30, 40 and 60 dB."""

MIXIT_FLOAT32_MAX_SNR = 30.0
"""``mixit`` and ``mixit_least_squares`` rank their candidates from a float32 Gram matrix
(float32 signals) when ``snr_max`` is at most this many dB. The threshold keeps each
candidate's error energy above tau |x|^2, so the Gram matrix's rounding (about 1e-7 of
|x|^2) moves a score by about 1e-7 / tau relative, under 1e-3 dB at 30 dB however good the
remix (measured: 8.5e-4 dB at 60 dB, 1.4 dB without the cap); a wrong choice can only happen
between candidates that close, and the loss itself is computed on the time axis.
``benchmarks/bench_losses.py`` prints the measured score errors."""

PIT_FLOAT32_MAX_SI_SNR = 20.0
"""``pairwise_neg_si_snr`` keeps its float32 Gram matrix (float32 signals, partial products by
``GRAM_CHUNK``) for an example while every pair's SI-SNR is at most this many dB, where its
error stays below about 3e-4 dB (``benchmarks/bench_losses.py`` prints it); an example with a
higher entry is redone in ``GRAM_DTYPE``."""

_LOG10_SCALE = 10.0 / math.log(10.0)
"""d(10 log10 u) = _LOG10_SCALE * du / u."""

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


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype losses compute in: float64 for float64 inputs, float32 otherwise (half and
    bfloat16 outputs, e.g. of an autocast forward, are scored in float32)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Losses run outside autocast: a bfloat16 matrix product would ruin the inner products."""
    return torch.autocast(device_type=device.type, enabled=False)


def _energy(x: Tensor) -> Tensor:
    """Sum of squares over the last axis: (..., T) -> (...)."""
    return (x * x).sum(dim=-1)


GRAM_CHUNK = 4096
"""Time steps per partial product in ``_grams_by_chunks``: partial sums this long, added up
afterwards, round several times less than one float32 product over 4 s, at about its cost."""


def _grams_by_chunks(*pairs: tuple[Tensor, Tensor]) -> list[Tensor]:
    """<a_i, b_j> over time for each pair (a, b), accumulated in a's dtype from batched
    products over ``GRAM_CHUNK``-long stretches of time (strided views, no copies):
    (B, I, T), (B, J, T) -> (B, I, J)."""
    out = []
    for a, b in pairs:
        gram = torch.bmm(a[..., :GRAM_CHUNK], b[..., :GRAM_CHUNK].transpose(1, 2))
        for start in range(GRAM_CHUNK, a.shape[-1], GRAM_CHUNK):
            stop = start + GRAM_CHUNK
            gram.baddbmm_(a[..., start:stop], b[..., start:stop].transpose(1, 2))
        out.append(gram)
    return out


class _PairwiseNegSiSnr(torch.autograd.Function):
    """Forward: the (B, E, S) negative SI-SNR matrix from inner products of the centred
    estimates and references: a float32 Gram matrix by chunks for float32 inputs, redone in
    ``GRAM_DTYPE`` for the examples where an entry exceeds ``PIT_FLOAT32_MAX_SI_SNR``, and in
    ``GRAM_DTYPE`` throughout for float64 inputs. Backward: by hand, one batched matrix
    product per input (every entry's gradient is a combination of the centred signals, see
    ``backward``), instead of autograd's dozen passes over time."""

    @staticmethod
    def forward(ctx, est: Tensor, ref: Tensor, eps: float, zero_mean: bool) -> Tensor:
        batch, n_est, T = est.shape
        # [y_hat; y] centred, (B, E + S, T): the only copy of the signals, kept for backward.
        signals = est.new_empty(batch, n_est + ref.shape[1], T)
        if zero_mean:
            torch.sub(est, est.mean(dim=-1, keepdim=True), out=signals[:, :n_est])
            torch.sub(ref, ref.mean(dim=-1, keepdim=True), out=signals[:, n_est:])
        else:
            signals[:, :n_est] = est
            signals[:, n_est:] = ref
        if est.dtype == torch.float32:
            (gram,) = _grams_by_chunks((signals, signals))
            gram = gram.to(GRAM_DTYPE)  # (B, E + S, E + S)
            stats = _si_snr_stats(gram, n_est, eps)
            redo = (stats[0] > PIT_FLOAT32_MAX_SI_SNR).flatten(1).any(dim=1)  # (B,)
            if redo.any():
                idx = redo.nonzero().squeeze(1)
                precise = signals[idx].to(GRAM_DTYPE)
                gram[idx] = torch.bmm(precise, precise.transpose(1, 2))
                stats = _si_snr_stats(gram, n_est, eps)
        else:
            stats = _si_snr_stats(torch.bmm(signals, signals.transpose(1, 2)), n_est, eps)
        si, cross, ref_energy, alpha, target, noise, active = stats
        ctx.save_for_backward(signals, cross, ref_energy, alpha, target, noise, active)
        ctx.eps = eps
        return -si.to(est.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        """With u = grad * 10 / ln 10, t = alpha^2 r, n = t - 2 alpha G + e and
        alpha = (G + eps) / (r + eps), every entry's gradient flows through G_es, r_s and
        e_e only, and dG/dy_hat_e = y_s, de/dy_hat_e = 2 y_hat_e (centred signals; their
        combinations are zero-mean, so the centring's own gradient changes nothing): the
        gradient of the estimates is [2 diag(dL/de), dL/dG] @ [y_hat; y], and likewise."""
        signals, cross, ref_energy, alpha, target, noise, active = ctx.saved_tensors
        eps = ctx.eps
        u = grad.to(cross.dtype) * _LOG10_SCALE  # (B, E, S)
        d_target = -u / (target + eps)
        d_noise = torch.where(active, u / (noise + eps), 0.0)
        d_alpha = 2.0 * alpha * ref_energy * (d_target + d_noise) - 2.0 * cross * d_noise
        d_cross = d_alpha / (ref_energy + eps) - 2.0 * alpha * d_noise  # (B, E, S)
        d_ref = ((d_target + d_noise) * alpha.pow(2)
                 - d_alpha * alpha / (ref_energy + eps)).sum(dim=1)  # (B, S)
        d_est = d_noise.sum(dim=2)  # (B, E)
        grad_est = grad_ref = None
        if ctx.needs_input_grad[0]:
            coef = torch.cat([torch.diag_embed(2.0 * d_est), d_cross], dim=2)  # (B, E, E + S)
            grad_est = torch.bmm(coef.to(signals.dtype), signals)
        if ctx.needs_input_grad[1]:
            coef = torch.cat([d_cross.transpose(1, 2), torch.diag_embed(2.0 * d_ref)], dim=2)
            grad_ref = torch.bmm(coef.to(signals.dtype), signals)  # (B, S, T)
        return grad_est, grad_ref, None, None


def _si_snr_stats(gram: Tensor, n_est: int, eps: float) -> tuple[Tensor, ...]:
    """SI-SNR of every pair from the Gram matrix of [y_hat; y], with the intermediates the
    backward pass needs: (B, E + S, E + S) -> si (B, E, S), G (B, E, S), r (B, 1, S),
    alpha, target energy, noise energy, noise >= 0 mask (all (B, E, S))."""
    cross = gram[:, :n_est, n_est:]  # (B, E, S)
    energies = gram.diagonal(dim1=1, dim2=2)  # (B, E + S)
    ref_energy = energies[:, n_est:].unsqueeze(1)  # (B, 1, S)
    alpha = (cross + eps) / (ref_energy + eps)  # (B, E, S)
    target = alpha.pow(2) * ref_energy  # (B, E, S)
    noise_raw = target - 2.0 * alpha * cross + energies[:, :n_est].unsqueeze(2)
    noise = noise_raw.clamp_min(0.0)
    si = 10.0 * torch.log10((target + eps) / (noise + eps))  # (B, E, S)
    return si, cross, ref_energy, alpha, target, noise, noise_raw >= 0.0


def pairwise_neg_si_snr(
    est: Tensor, ref: Tensor, eps: float = 1e-8, zero_mean: bool = True
) -> Tensor:
    """Negative SI-SNR of every (estimate, reference) pair from one batched matrix product.

    With G_es = <y_hat_e, y_s>, r_s = |y_s|^2, e_e = |y_hat_e|^2 and
    alpha_es = (G_es + eps) / (r_s + eps), the two energies of ``si_snr`` are
    |alpha y|^2 = alpha^2 r and |alpha y - y_hat|^2 = alpha^2 r - 2 alpha G + e,
    so the time axis is touched once, for G, r and e, and once more in the backward pass.
    The noise energy is a difference of large numbers, which no threshold bounds: float32
    inputs get a float32 Gram matrix by chunks while every entry is at most
    ``PIT_FLOAT32_MAX_SI_SNR`` dB, ``GRAM_DTYPE`` for the examples where one is above.

    est: (B, E, T), ref: (B, S, T) -> (B, E, S) in the inputs' working dtype
    """
    dtype = _work_dtype(est, ref)
    with _no_autocast(est.device):
        return _PairwiseNegSiSnr.apply(est.to(dtype), ref.to(dtype), eps, zero_mean)


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
    """Score every permutation at once by gathering from the pairwise matrix (B, E, S)
    (without autograd), then gather the best one's entries for the loss."""
    n_est, n_ref = pair.shape[1:]
    perms = _permutations(n_est, n_ref).to(pair.device)  # (K, S)
    with torch.no_grad():
        scores = pair[:, perms, torch.arange(n_ref, device=pair.device)]  # (B, K, S)
        perm = perms[scores.mean(dim=-1).min(dim=-1).indices]  # (B, S)
    loss = pair.gather(1, perm.unsqueeze(1)).squeeze(1).mean(dim=-1)  # (B,)
    return loss, perm


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
        return one_hot.transpose(1, 2).to(torch.float64)  # (K, N, M)


@lru_cache(maxsize=64)
def _assignments_as(n_mix: int, n_est: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``mixit_assignments`` in a dtype and on a device, cached (outside inference mode)."""
    with torch.inference_mode(False):
        return mixit_assignments(n_mix, n_est).to(device=device, dtype=dtype)


def _scoring_dtype(dtype: torch.dtype, snr_max: float | None) -> torch.dtype:
    """dtype of the Gram matrix MixIT ranks its candidates with: float32 for float32 signals
    when the threshold bounds the error (``MIXIT_FLOAT32_MAX_SNR``), else ``GRAM_DTYPE``."""
    if dtype == torch.float32 and snr_max is not None and snr_max <= MIXIT_FLOAT32_MAX_SNR:
        return torch.float32
    return GRAM_DTYPE


def _mixit_gram(
    est: Tensor, mixtures: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """The inner products MixIT ranks with, in ``dtype`` (no gradient: the loss itself is
    computed on the time axis, ``_AssignedNegSnr``). float32: partial products by chunks of
    time (``_grams_by_chunks``); float64: one product of the signals cast to float64.

    est: (B, M, T), mixtures: (B, N, T) -> <x_n, x_n> (B, N), <x_n, s_hat_m> (B, N, M),
    <s_hat_m, s_hat_l> (B, M, M)
    """
    if dtype == torch.float32 and est.dtype == torch.float32 == mixtures.dtype:
        xs, ss = _grams_by_chunks((mixtures, est), (est, est))
        return _energy(mixtures), xs, ss
    batch, n_mix, T = mixtures.shape
    signals = est.new_empty(batch, n_mix + est.shape[1], T, dtype=dtype)  # (B, N + M, T)
    signals[:, :n_mix] = mixtures
    signals[:, n_mix:] = est
    gram = torch.bmm(signals, signals.transpose(1, 2))  # (B, N + M, N + M)
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
    # sum_m a_nm (sum_l a_nl <s_m, s_l> - 2 <x_n, s_m>): one matrix product for all K N rows
    if A.dim() == 3:
        a_ss = torch.matmul(A.flatten(0, 1), ss).unflatten(1, A.shape[:2])  # (B, K, N, M)
    else:
        a_ss = torch.matmul(A, ss.unsqueeze(1))  # (B, K, N, M)
    err = xx.unsqueeze(1) + (A * (a_ss - 2.0 * xs.unsqueeze(1))).sum(dim=-1)  # (B, K, N)
    err = err.clamp_min(0.0)
    ref_energy = xx.unsqueeze(1)  # (B, 1, N)
    snr = 10.0 * torch.log10((ref_energy + eps) / (err + _tau(snr_max) * ref_energy + eps))
    return -snr.mean(dim=-1)  # (B, K)


class _AssignedNegSnr(torch.autograd.Function):
    """-mean_n SNR_tau(x_n, (A s_hat)_n) for one mixing matrix per example, on the time axis
    (as exact as a time-axis loss: the Gram matrix only ranks the candidates), with the
    backward pass by hand: d/ds_hat = -2 A^T diag(c) (x - A s_hat), one matrix product with
    the residual kept from the forward pass, c_n = dL/d|x_n - (A s_hat)_n|^2.

    est: (B, M, T), mixtures: (B, N, T), A: (B, N, M) -> (B,)
    """

    @staticmethod
    def forward(ctx, est: Tensor, mixtures: Tensor, A: Tensor, tau: float, eps: float) -> Tensor:
        residual = torch.baddbmm(mixtures, A, est, alpha=-1.0)  # (B, N, T): x - A s_hat
        ref_energy = _energy(mixtures)  # (B, N)
        denom = _energy(residual) + tau * ref_energy + eps  # (B, N)
        loss = _LOG10_SCALE * (torch.log(denom) - torch.log(ref_energy + eps)).mean(dim=-1)
        ctx.save_for_backward(residual, mixtures, A, ref_energy, denom)
        ctx.tau = tau
        ctx.eps = eps
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        residual, mixtures, A, ref_energy, denom = ctx.saved_tensors
        scale = grad.unsqueeze(-1) * (_LOG10_SCALE / A.shape[1])  # (B, 1): dL/d ln(.)
        d_err = scale / denom  # (B, N)
        grad_est = grad_mix = None
        if ctx.needs_input_grad[0]:
            grad_est = torch.bmm(A.transpose(1, 2) * (-2.0 * d_err).unsqueeze(1), residual)
        if ctx.needs_input_grad[1]:
            d_ref = scale * (ctx.tau / denom - 1.0 / (ref_energy + ctx.eps))  # (B, N)
            grad_mix = torch.addcmul(
                2.0 * d_ref.unsqueeze(-1) * mixtures, residual, 2.0 * d_err.unsqueeze(-1)
            )
        return grad_est, grad_mix, None, None, None


def _assigned_neg_snr(
    est: Tensor, mixtures: Tensor, A: Tensor, snr_max: float | None, eps: float
) -> Tensor:
    """``_AssignedNegSnr`` in the working dtype, outside autocast: -> (B,) in est's dtype."""
    dtype = _work_dtype(est, mixtures)
    with _no_autocast(est.device):
        loss = _AssignedNegSnr.apply(
            est.to(dtype), mixtures.to(dtype), A.to(dtype), _tau(snr_max), eps
        )
    return loss.to(est.dtype)


def mixit(
    est: Tensor, mixtures: Tensor, snr_max: float | None = 30.0, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Exact mixture invariant training loss (Wisdom et al. 2020, eq. 1):

        L = min over A in B^{N x M} of (1/N) sum_n -SNR_tau(x_n, (A s_hat)_n),

    with all N^M mixing matrices ranked in one pass from a Gram matrix (``_remix_neg_snr``,
    in float32 when ``snr_max`` bounds its error, see ``MIXIT_FLOAT32_MAX_SNR``), and the loss
    of the best one computed on the time axis with a hand-written backward pass.
    Ties go to the first matrix in ``mixit_assignments`` order.

    est: (B, M, T), mixtures: (B, N, T) -> loss (B,), A (B, N, M) 0/1 in est's dtype.
    """
    n_mix, n_est = mixtures.shape[1], est.shape[1]
    dtype = _work_dtype(est, mixtures)
    with torch.no_grad(), _no_autocast(est.device):
        score_dtype = _scoring_dtype(dtype, snr_max)
        A_all = _assignments_as(n_mix, n_est, score_dtype, est.device)  # (K, N, M)
        gram = _mixit_gram(est.detach(), mixtures.detach(), score_dtype)
        best = _remix_neg_snr(*gram, A_all, snr_max, eps).min(dim=-1).indices  # (B,)
        A = _assignments_as(n_mix, n_est, est.dtype, est.device)[best]  # (B, N, M)
    return _assigned_neg_snr(est, mixtures, A, snr_max, eps), A


def _greedy_assignment(xx: Tensor, xs: Tensor, ss: Tensor, snr_max: float | None,
                       eps: float) -> Tensor:
    """Greedy MixIT assignment: the estimates, loudest first, each to the mixture that
    lowers the MixIT objective of the estimates placed so far the most (scored from the
    Gram matrix by ``_remix_neg_snr``, N candidates per step, M steps).

    xx: (B, N), xs: (B, N, M), ss: (B, M, M) -> A (B, N, M) 0/1 in ss's dtype
    """
    batch, n_mix, n_est = xs.shape
    order = ss.diagonal(dim1=1, dim2=2).argsort(dim=-1, descending=True)  # (B, M)
    rows = torch.eye(n_mix, dtype=ss.dtype, device=ss.device)[None, :, :, None]  # (1, N, N, 1)
    A = ss.new_zeros(batch, n_mix, n_est)
    picks = torch.arange(batch, device=ss.device)
    for step in range(n_est):
        column = torch.nn.functional.one_hot(order[:, step], n_est).to(ss.dtype)  # (B, M)
        column = column[:, None, None, :]  # (B, 1, 1, M)
        candidates = A.unsqueeze(1) * (1.0 - column) + rows * column  # (B, N, N, M)
        scores = _remix_neg_snr(xx, xs, ss, candidates, snr_max, eps)  # (B, N)
        A = candidates[picks, scores.argmin(dim=-1)]
    return A


def _single_move_descent(xx: Tensor, xs: Tensor, ss: Tensor, A: Tensor,
                         snr_max: float | None, eps: float) -> tuple[Tensor, Tensor]:
    """Local search on the exact MixIT objective from an assignment: score every move of one
    estimate to another mixture (N M candidates from the Gram matrix), take the best while it
    improves. The objective falls strictly at each move, so it ends at an assignment no
    single move improves (measured: a few moves at M = 8 and 16).

    xx: (B, N), xs: (B, N, M), ss: (B, M, M), A: (B, N, M) -> A (B, N, M), objective (B,)
    """
    batch, n_mix, n_est = A.shape
    eye_m = torch.eye(n_est, dtype=A.dtype, device=A.device)
    eye_n = torch.eye(n_mix, dtype=A.dtype, device=A.device)
    column = eye_m.repeat(n_mix, 1)[:, None, :]  # (N M, 1, M): move k changes estimate k % M
    row = eye_n.repeat_interleave(n_est, dim=0)[:, :, None]  # (N M, N, 1): to mixture k // M
    picks = torch.arange(batch, device=A.device)
    current = _remix_neg_snr(xx, xs, ss, A.unsqueeze(1), snr_max, eps).squeeze(1)  # (B,)
    while True:
        candidates = A.unsqueeze(1) * (1.0 - column) + row * column  # (B, N M, N, M)
        best, move = _remix_neg_snr(xx, xs, ss, candidates, snr_max, eps).min(dim=-1)
        better = best < current - 1e-9  # (B,); the margin keeps rounding from counting
        if not better.any():
            return A, current
        A = torch.where(better[:, None, None], candidates[picks, move], A)
        current = torch.where(better, best, current)


def mixit_least_squares(
    est: Tensor, mixtures: Tensor, snr_max: float | None = 30.0, eps: float = 1e-8,
    refine: bool = True,
) -> tuple[Tensor, Tensor]:
    """Least-squares MixIT (Wisdom et al., WASPAA 2021): solve the unconstrained mixing
    matrix A_ls = argmin_A |x - A s_hat|^2 = <x, s_hat> <s_hat, s_hat>^{-1}, project it to
    the nearest valid assignment (each estimate to the mixture with the largest coefficient
    in its column: the nearest 0/1 matrix in Frobenius norm), and return the MixIT loss for
    that A. One M x M solve replaces the N^M candidates, so it suits large M.

    ``refine`` (default): the projection and a greedy assignment (``_greedy_assignment``)
    each improved by single-estimate moves (``_single_move_descent``) on the exact objective
    from the same Gram matrix, and the better of the two kept: O(M^2) candidates, no pass
    over time. The bare projection (``refine=False``, the paper's) is exact when the optimum
    is clear, but it ignores the SNR weighting of the mixtures: with noisy estimates it falls
    well short of the exact search, and an estimate with a negative coefficient goes to a
    silent mixture (a mixture of mixtures of one mixture, ``data.single_mixture_prob``), a
    loss of tens of dB. Refined, it is never worse than the greedy assignment and close to
    ``mixit`` (``tests/test_sparse_mixit.py`` measures both). Never better than ``mixit``.

    est: (B, M, T), mixtures: (B, N, T) -> loss (B,), A (B, N, M) 0/1 in est's dtype.
    """
    n_mix, n_est = mixtures.shape[1], est.shape[1]
    dtype = _work_dtype(est, mixtures)
    with torch.no_grad(), _no_autocast(est.device):
        gram = _mixit_gram(est.detach(), mixtures.detach(), _scoring_dtype(dtype, snr_max))
        xx, xs, ss = (g.to(GRAM_DTYPE) for g in gram)
        # Ridge term scaled to the estimates' energy: silent outputs leave ss singular.
        ridge = 1e-6 * ss.diagonal(dim1=1, dim2=2).mean(dim=-1) + eps  # (B,)
        eye = torch.eye(n_est, dtype=ss.dtype, device=ss.device)
        A_ls = torch.linalg.solve(ss + ridge[:, None, None] * eye, xs.transpose(1, 2))  # (B, M, N)
        A = torch.nn.functional.one_hot(A_ls.argmax(dim=-1), n_mix).transpose(1, 2)  # (B, N, M)
        A = A.to(ss.dtype)
        if refine:
            A, score = _single_move_descent(xx, xs, ss, A, snr_max, eps)
            A_greedy, score_greedy = _single_move_descent(
                xx, xs, ss, _greedy_assignment(xx, xs, ss, snr_max, eps), snr_max, eps)
            A = torch.where((score_greedy < score)[:, None, None], A_greedy, A)
        A = A.to(est.dtype)
    return _assigned_neg_snr(est, mixtures, A, snr_max, eps), A


# Sparse MixIT's regularisers against over-separation (Wisdom et al., WASPAA 2021), on the M
# outputs s_hat of the separator for the mixture of mixtures, as MixIT scores them: after the
# mixture consistency projection, which is part of the separator's forward here.


def sparsity_loss(est: Tensor, eps: float = 1e-8) -> Tensor:
    """Sparsity of the outputs' levels: the L1/L2 ratio of the vector r of output RMS values,

        r_m = sqrt( (1/T) sum_t s_hat_{m,t}^2 + eps ),   L_sparse = |r|_1 / |r|_2,

    in [1, sqrt(M)]: 1 when one output holds all the energy, sqrt(M) when all M are equally
    loud. It is scale invariant, so under mixture consistency (sum_m s_hat_m = x) it falls
    only by gathering the mixture into fewer outputs, not by making them quieter; the L1
    norm's steady pull on every r_m drives the weak outputs to silence. eps (on the mean
    square) keeps the gradient of a silent output finite.

    est: (B, M, T) -> (B,)
    """
    with _no_autocast(est.device):
        signals = est.to(_work_dtype(est))
        rms = torch.sqrt((signals * signals).mean(dim=-1) + eps)  # (B, M)
        loss = rms.sum(dim=-1) / rms.pow(2).sum(dim=-1).sqrt()  # (B,)
    return loss.to(est.dtype)


def covariance_loss(est: Tensor, eps: float = 1e-8) -> Tensor:
    """Correlation between outputs: with C = (1/T) s~ s~^T the covariance of the zero-mean
    outputs s~ (M x M) and rho_ml^2 = C_ml^2 / ((C_mm + eps) (C_ll + eps)),

        L_cov = 1 / (M (M - 1)) sum_{m != l} rho_ml^2,

    in [0, 1]: 0 for uncorrelated outputs, 1 when every output is the same signal up to
    scale and sign. A source split across outputs in proportion (a s, b s) is fully
    correlated. Scale invariant like ``sparsity_loss``; eps (on the variances) makes a silent
    output uncorrelated with every other and keeps its gradient finite.

    est: (B, M, T) -> (B,)
    """
    n_est = est.shape[1]
    if n_est < 2:
        raise ValueError(f"covariance_loss needs at least 2 outputs, got {n_est}")
    with _no_autocast(est.device):
        signals = est.to(_work_dtype(est))
        signals = signals - signals.mean(dim=-1, keepdim=True)
        cov = torch.bmm(signals, signals.transpose(1, 2)) / signals.shape[-1]  # (B, M, M)
        var = cov.diagonal(dim1=1, dim2=2) + eps  # (B, M)
        rho2 = cov.pow(2) / (var.unsqueeze(2) * var.unsqueeze(1))  # (B, M, M)
        diagonal = torch.eye(n_est, dtype=torch.bool, device=est.device)
        loss = rho2.masked_fill(diagonal, 0.0).sum(dim=(1, 2)) / (n_est * (n_est - 1))
    return loss.to(est.dtype)
