"""Bootstrapped remixing, the tensor parts of RemixIT and Self-Remixing: permutations of a
batch's estimates across the batch, the remix and its inverse, the teacher's exponential
moving average of the student, and the two methods' losses.

Notation follows Tzinis et al., "RemixIT: continual self-training of speech enhancement models
via bootstrapped remixing" (IEEE JSTSP 2022) and Saijo & Ogawa, "Self-Remixing: unsupervised
speech separation via separation and remixing" (ICASSP 2023): x (B, T) are the B observed
mixtures of a batch, s (B, k, T) a teacher's (RemixIT) or shuffler's (Self-Remixing) k
estimates of each, pi = (pi_1, ..., pi_k) one permutation of the batch indices per source slot,
stored as ``perms`` (k, B) long with perms[j, b] = pi_j(b). The remix builds B pseudo-mixtures

    x~_b = sum_j s~_bj,   s~_bj = s_{pi_j(b), j},

and its inverse puts estimates y (B, k, T) of the pseudo-sources s~ back where they came from,
y^_cj = y_{pi_j^{-1}(c), j}, so that x^_c = sum_j y^_cj estimates the observed mixture x_c.
theta_T and theta_S are the teacher's (shuffler's) and the student's (solver's) weights.

The losses return one value per example, shape (B,), as in ``tsmixit.losses``; callers take
``.mean()``. A generator makes every draw reproducible: the training stages seed one from the
global step, so that a resumed run draws what an uninterrupted one does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsmixit.losses import pairwise_neg_si_snr, pit, reorder, snr_tau

#: Draws of one permutation before ``batch_permutations(constrained=True)`` gives up.
MAX_DRAWS = 1000


def batch_permutations(batch: int, n_sources: int, generator: torch.Generator,
                       constrained: bool = True) -> Tensor:
    """One uniformly drawn permutation pi_j of the batch per source slot j: (k, B) long.

    ``constrained`` (Saijo & Ogawa's "constrained batch shuffle"): pi_1(b), ..., pi_k(b) are
    distinct for every b, so that no pseudo-mixture holds two estimates of the same observed
    mixture; pi_j is redrawn until it meets pi_1..pi_{j-1} (it needs B >= k). Unconstrained,
    the k permutations are independent (a pseudo-mixture may then repeat an observed one).

    batch = B, n_sources = k -> perms (k, B), perms[j, b] = pi_j(b), on the CPU.
    """
    if batch < 1 or n_sources < 1:
        raise ValueError(f"batch_permutations needs a batch and sources, got B = {batch}, "
                         f"k = {n_sources}")
    if constrained and batch < n_sources:
        raise ValueError(f"a constrained shuffle of k = {n_sources} sources needs a batch of at "
                         f"least {n_sources} mixtures, got {batch}; raise data.batch_size")
    perms: list[Tensor] = []
    for _ in range(n_sources):
        for _ in range(MAX_DRAWS):
            perm = torch.randperm(batch, generator=generator)  # (B,)
            if not constrained or all(not torch.any(perm == p) for p in perms):
                break
        else:
            raise ValueError(f"no constrained shuffle of k = {n_sources} sources found in "
                             f"{MAX_DRAWS} draws for a batch of {batch}; raise data.batch_size")
        perms.append(perm)
    return torch.stack(perms)


def _along_batch(sources: Tensor, index: Tensor) -> Tensor:
    """out[b, j] = sources[index[j, b], j]: (B, k, T), (k, B) -> (B, k, T)."""
    index = index.to(sources.device).t().unsqueeze(-1).expand_as(sources)  # (B, k, T)
    return sources.gather(0, index)


def remix(sources: Tensor, perms: Tensor) -> tuple[Tensor, Tensor]:
    """The bootstrapped remix: x~_b = sum_j s~_bj with s~_bj = s_{pi_j(b), j}.

    sources s: (B, k, T), perms: (k, B) -> pseudo-mixtures x~ (B, T), pseudo-sources s~ (B, k, T)
    """
    shuffled = _along_batch(sources, perms)  # (B, k, T)
    return shuffled.sum(dim=1), shuffled


def remix_back(est: Tensor, perms: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse remix: y^_cj = y_{pi_j^{-1}(c), j} and x^_c = sum_j y^_cj, so that
    ``remix_back(remix(s, perms)[1], perms)`` gives back (sum_j s_cj, s).

    est y: (B, k, T) aligned with the pseudo-sources, perms: (k, B) -> mixture estimates
    x^ (B, T), restored estimates y^ (B, k, T)
    """
    inverse = perms.argsort(dim=1)  # (k, B): inverse[j, pi_j(b)] = b
    restored = _along_batch(est, inverse)  # (B, k, T)
    return restored.sum(dim=1), restored


def pairwise_neg_snr_tau(est: Tensor, ref: Tensor, snr_max: float | None = 30.0) -> Tensor:
    """-SNR_tau(y_s, y_hat_e) of every (estimate, reference) pair (``tsmixit.losses.snr_tau``)
    on the time axis: (B, E, T), (B, S, T) -> (B, E, S)."""
    return -snr_tau(est.unsqueeze(2), ref.unsqueeze(1), snr_max)  # (B, E, S)


def remixit_loss(est: Tensor, targets: Tensor, si_snr_max: float | None = 30.0
                 ) -> tuple[Tensor, Tensor]:
    """RemixIT's student loss (Tzinis et al. 2022): utterance-level PIT on negative SI-SNR of
    the student's estimates of the pseudo-mixtures against the pseudo-sources,

        L_b = min over sigma of (1/k) sum_j clamp(-SI-SNR(s~_bj, y_{b, sigma(j)}),
                                                  -si_snr_max, si_snr_max),

    clamped per pair as in the authors' code (no gradient beyond ``si_snr_max`` dB, as the
    thresholded SNR of MixIT); ``si_snr_max=None`` leaves it unclamped.

    est y: (B, k, T), targets s~: (B, k, T) -> loss (B,), perm (B, k) (``tsmixit.losses.pit``)
    """
    def pairwise(e: Tensor, r: Tensor) -> Tensor:
        pair = pairwise_neg_si_snr(e, r)  # (B, k, k)
        return pair if si_snr_max is None else pair.clamp(-si_snr_max, si_snr_max)

    return pit(est, targets, pairwise=pairwise)


def self_remixing_loss(est: Tensor, targets: Tensor, mixtures: Tensor, perms: Tensor,
                       snr_max: float | None = 30.0) -> tuple[Tensor, Tensor]:
    """Self-Remixing's solver loss (Saijo & Ogawa 2023): the solver's estimates y of the
    pseudo-mixtures are ordered like the pseudo-sources s~ (the permutation sigma_b of best
    PIT score under -SNR_tau, chosen without gradient), remixed back (``remix_back``) and
    scored against the observed mixtures they came from,

        L_c = -SNR_tau(x_c, x^_c),   x^_c = sum_j y_{pi_j^{-1}(c), sigma(j)},   SNR_max = 30 dB.

    est y: (B, k, T), targets s~: (B, k, T), mixtures x: (B, T), perms: (k, B) -> loss (B,)
    per observed mixture, sigma (B, k) per pseudo-mixture (``reorder(est, sigma)`` aligns y).
    """
    dtype = torch.promote_types(est.dtype, torch.float32)
    est = est.to(dtype)
    with torch.no_grad():
        _, sigma = pit(est.detach(), targets.to(dtype),
                       pairwise=lambda e, r: pairwise_neg_snr_tau(e, r, snr_max))  # (B, k)
    estimate, _ = remix_back(reorder(est, sigma), perms)  # (B, T)
    return -snr_tau(estimate, mixtures.to(dtype), snr_max), sigma


def _counterpart(teacher_tensor: Tensor | None, student_tensor: Tensor, n_teacher: int | None,
                 n_student: int | None) -> Tensor | None:
    """The part of a teacher tensor that the student tensor of the same name stands for: the
    whole tensor when the shapes agree, else (a k-output student of an M-output teacher) the
    rows of the teacher's first k outputs of an output-major layer (n_sources x N rows, as
    ``tsmixit.training.systems.init_from_teacher`` copies them); None when neither fits."""
    if teacher_tensor is None:
        return None
    if teacher_tensor.shape == student_tensor.shape:
        return teacher_tensor
    rows = student_tensor.shape[0] if student_tensor.dim() else 0
    if (n_teacher and n_student and teacher_tensor.dim() and
            teacher_tensor.shape[1:] == student_tensor.shape[1:] and
            teacher_tensor.shape[0] // n_teacher * n_student == rows):
        return teacher_tensor[:rows]
    return None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, gamma: float) -> None:
    """The teacher (shuffler) follows the student (solver), in place:

        theta_T <- gamma theta_T + (1 - gamma) theta_S,

    over the student's whole state dict: parameters and floating-point buffers (BatchNorm's
    running mean and variance) alike, as the authors' code averages whole state dicts;
    integer buffers (BatchNorm's num_batches_tracked) are copied from the student. GroupNorm and
    LayerNorm (every separator here) hold no buffers, only affine parameters, averaged like
    the rest. gamma = 0 makes the teacher the student (RemixIT's "replace").

    A teacher with more outputs than the student (an M-output MixIT teacher of a k-output
    student started with ``init_from_teacher``) follows it on the tensors the student has,
    whole or, in an output-major mask layer, the rows of its first k outputs; the rows of its
    other M - k outputs keep their weights.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"the EMA factor gamma must lie in [0, 1], got {gamma!r}")
    own = teacher.state_dict()  # detached views of the teacher's tensors
    n_teacher = getattr(teacher, "n_sources", None)
    n_student = getattr(student, "n_sources", None)
    for name, value in student.state_dict().items():
        target = _counterpart(own.get(name), value, n_teacher, n_student)
        if target is None:
            raise ValueError(f"the teacher has no tensor {name!r} that the student's "
                             f"{tuple(value.shape)} fits; teacher and student must be the same "
                             "separator (up to the number of outputs)")
        if target.is_floating_point():
            target.mul_(gamma).add_(value.to(target.dtype), alpha=1.0 - gamma)
        else:
            target.copy_(value)
