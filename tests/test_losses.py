"""Losses against independent computations: Python loops over assignments and permutations,
torchmetrics' SI-SNR and numpy."""

import itertools

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    scale_invariant_signal_noise_ratio,
)

from tsmixit import losses
from tsmixit.losses import (
    mixit,
    mixit_least_squares,
    pairwise_neg_si_snr,
    pit,
    reorder,
    si_snr,
    snr_tau,
)


def brute_force_mixit(est, mixtures, snr_max=30.0):
    """Loop over every mixing matrix, remix on the time axis, keep the best: (B,), (B, N, M)."""
    n_mix, n_est = mixtures.shape[1], est.shape[1]
    losses, best_A = [], []
    for b in range(est.shape[0]):
        best = (float("inf"), None)
        for choice in itertools.product(range(n_mix), repeat=n_est):
            A = torch.zeros(n_mix, n_est, dtype=est.dtype)
            A[list(choice), list(range(n_est))] = 1.0
            value = -snr_tau(A @ est[b], mixtures[b], snr_max).mean().item()
            if value < best[0]:
                best = (value, A)
        losses.append(best[0])
        best_A.append(best[1])
    return torch.tensor(losses, dtype=torch.float64), torch.stack(best_A)


def brute_force_pit(est, ref):
    """Loop over every injective map of references to estimates with per-pair si_snr."""
    n_est, n_ref = est.shape[1], ref.shape[1]
    losses, perms = [], []
    for b in range(est.shape[0]):
        scored = [
            (-si_snr(est[b, list(p)], ref[b]).mean().item(), p)
            for p in itertools.permutations(range(n_est), n_ref)
        ]
        value, p = min(scored)
        losses.append(value)
        perms.append(p)
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(perms)


def random_mom(batch, n_est, n_mix, T, dtype=torch.float64):
    """Estimates and mixtures whose optimum is non-trivial: mixtures are noisy remixes."""
    est = torch.randn(batch, n_est, T, dtype=dtype)
    A = torch.nn.functional.one_hot(torch.randint(n_mix, (batch, n_est)), n_mix)
    mixtures = A.transpose(1, 2).to(dtype) @ est + 0.7 * torch.randn(batch, n_mix, T, dtype=dtype)
    return est, mixtures


def test_snr_tau_matches_numpy():
    est = torch.randn(3, 4, 200, dtype=torch.float64)
    ref = torch.randn(3, 4, 200, dtype=torch.float64)
    est[0, 0] = ref[0, 0] * 1.001  # above the 30 dB threshold
    y, y_hat = ref.numpy(), est.numpy()
    tau = 10 ** (-30 / 10)
    energy = (y**2).sum(-1)
    err = ((y - y_hat) ** 2).sum(-1)
    expected = 10 * np.log10((energy + 1e-8) / (err + tau * energy + 1e-8))
    np.testing.assert_allclose(snr_tau(est, ref).numpy(), expected, rtol=1e-12, atol=1e-9)
    plain = 10 * np.log10((energy + 1e-8) / (err + 1e-8))
    np.testing.assert_allclose(snr_tau(est, ref, snr_max=None).numpy(), plain, atol=1e-9)


def test_snr_tau_hand_worked_and_saturation():
    ref = torch.tensor([1.0, 0.0, 0.0])
    # |y|^2 = 1, |y - y_hat|^2 = 0.25: 10 log10(4) = 6.0206 dB
    assert snr_tau(torch.tensor([0.5, 0.0, 0.0]), ref, snr_max=None).item() == pytest.approx(
        6.0206, abs=1e-4
    )
    # a perfect estimate saturates at SNR_max
    assert snr_tau(ref, ref, snr_max=30.0).item() == pytest.approx(30.0, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_si_snr_matches_torchmetrics(dtype):
    ref = torch.randn(4, 3, 500, dtype=dtype) + 0.3
    est = ref * 0.5 + 0.2 * torch.randn(4, 3, 500, dtype=dtype)
    est[0, 0] = torch.randn(500, dtype=dtype)  # unrelated estimate, around -inf..0 dB
    eps = torch.finfo(dtype).eps  # torchmetrics' regulariser
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    expected = scale_invariant_signal_noise_ratio(est, ref)
    torch.testing.assert_close(si_snr(est, ref, eps=eps), expected, atol=tol, rtol=0)
    # without mean removal SI-SNR is torchmetrics' SI-SDR with zero_mean=False
    expected = scale_invariant_signal_distortion_ratio(est, ref, zero_mean=False)
    actual = si_snr(est, ref, eps=eps, zero_mean=False)
    torch.testing.assert_close(actual, expected, atol=tol, rtol=0)
    # the default eps = 1e-8 moves values of signals at normal level by less than 1e-3 dB
    expected = scale_invariant_signal_noise_ratio(est, ref)
    torch.testing.assert_close(si_snr(est, ref), expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_neg_si_snr_equals_per_pair(dtype):
    est = torch.randn(2, 4, 300, dtype=dtype)
    ref = est[:, :3] + 0.1 * torch.randn(2, 3, 300, dtype=dtype)
    expected = -si_snr(est.unsqueeze(2), ref.unsqueeze(1))  # (B, E, S)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(pairwise_neg_si_snr(est, ref), expected, atol=tol, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_pit_equals_brute_force(n):
    est = torch.randn(5, n, 200, dtype=torch.float64)
    ref = torch.randn(5, n, 200, dtype=torch.float64)
    loss, perm = pit(est, ref, method="exhaustive")
    bf_loss, bf_perm = brute_force_pit(est, ref)
    torch.testing.assert_close(loss, bf_loss, atol=1e-9, rtol=0)
    assert torch.equal(perm, bf_perm)
    torch.testing.assert_close(-si_snr(reorder(est, perm), ref).mean(-1), loss)


@pytest.mark.parametrize("method", ["exhaustive", "hungarian"])
def test_pit_more_estimates_than_references(method):
    ref = torch.randn(4, 2, 200, dtype=torch.float64)
    est = torch.randn(4, 5, 200, dtype=torch.float64)
    est[:, 3] = ref[:, 0] + 0.3 * torch.randn(4, 200, dtype=torch.float64)
    est[:, 1] = ref[:, 1] + 0.3 * torch.randn(4, 200, dtype=torch.float64)
    loss, perm = pit(est, ref, method=method)
    bf_loss, bf_perm = brute_force_pit(est, ref)
    torch.testing.assert_close(loss, bf_loss, atol=1e-9, rtol=0)
    assert torch.equal(perm, bf_perm)
    assert perm.tolist() == [[3, 1]] * 4


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_pit_exhaustive_and_hungarian_agree(n):
    ref = torch.randn(6, n, 100)
    est = ref[:, torch.randperm(n)] + torch.randn(6, n, 100)
    exhaustive = pit(est, ref, method="exhaustive")
    hungarian = pit(est, ref, method="hungarian")
    torch.testing.assert_close(exhaustive[0], hungarian[0])
    assert torch.equal(exhaustive[1], hungarian[1])
    assert torch.equal(pit(est, ref)[1], exhaustive[1])  # auto


def test_pit_hungarian_gradient_matches_exhaustive():
    ref = torch.randn(3, 3, 100)
    grads = []
    for method in ("exhaustive", "hungarian"):
        noise = torch.randn(3, 3, 100, generator=torch.Generator().manual_seed(1))
        est = (ref.flip(1) + 0.5 * noise).requires_grad_(True)
        pit(est, ref, method=method)[0].sum().backward()
        grads.append(est.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_pit_with_custom_pairwise_loss():
    """Any (B, E, S) pairwise loss works, e.g. plain negative SNR."""
    est = torch.randn(3, 3, 100, dtype=torch.float64)
    ref = torch.randn(3, 3, 100, dtype=torch.float64)

    def neg_snr(e, r):
        return -snr_tau(e.unsqueeze(2), r.unsqueeze(1), snr_max=None)  # (B, E, S)

    loss, perm = pit(est, ref, pairwise=neg_snr)
    expected = torch.stack(
        [
            torch.stack(
                [
                    -snr_tau(est[b, list(p)], ref[b], snr_max=None).mean()
                    for p in itertools.permutations(range(3))
                ]
            ).min()
            for b in range(3)
        ]
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(-snr_tau(reorder(est, perm), ref, snr_max=None).mean(-1), loss)


def test_pit_rejects_too_few_estimates():
    with pytest.raises(ValueError, match="at least as many estimates"):
        pit(torch.randn(1, 2, 10), torch.randn(1, 3, 10))


@pytest.mark.parametrize(("n_mix", "n_est"), [(2, 2), (2, 3), (2, 4), (2, 8), (3, 4)])
def test_mixit_equals_brute_force(n_mix, n_est):
    est, mixtures = random_mom(3, n_est, n_mix, 160)
    loss, A = mixit(est, mixtures)
    bf_loss, bf_A = brute_force_mixit(est, mixtures)
    torch.testing.assert_close(loss, bf_loss, atol=1e-5, rtol=0)
    assert torch.equal(A, bf_A)
    # the returned mixing matrix reproduces the loss on the time axis
    torch.testing.assert_close(-snr_tau(A @ est, mixtures).mean(-1), loss, atol=1e-5, rtol=0)


def test_mixit_float32_and_gradient_match_time_axis_remix():
    est64, mixtures64 = random_mom(4, 4, 2, 4000)
    est = est64.float().requires_grad_(True)
    loss, A = mixit(est, mixtures64.float())
    bf_loss, _ = brute_force_mixit(est64, mixtures64)
    torch.testing.assert_close(loss.double(), bf_loss, atol=1e-4, rtol=0)
    loss.sum().backward()
    est_ref = est64.clone().requires_grad_(True)
    (-snr_tau(A.double() @ est_ref, mixtures64).mean(-1)).sum().backward()
    torch.testing.assert_close(est.grad.double(), est_ref.grad, atol=1e-5, rtol=1e-3)


def test_mixit_plain_snr_equals_brute_force():
    est, mixtures = random_mom(2, 4, 2, 200)
    torch.testing.assert_close(
        mixit(est, mixtures, snr_max=None)[0],
        brute_force_mixit(est, mixtures, snr_max=None)[0],
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize(("n_mix", "n_est"), [(2, 4), (2, 8), (3, 6)])
def test_mixit_least_squares_equals_exact_on_clear_cases(n_mix, n_est):
    """Estimates are the true parts of each mixture plus a little noise: one clear optimum."""
    batch, T = 4, 400
    sources = torch.randn(batch, n_est, T, dtype=torch.float64)
    choice = torch.stack([torch.randperm(n_est) % n_mix for _ in range(batch)])  # all used
    A_true = torch.nn.functional.one_hot(choice, n_mix).transpose(1, 2).double()  # (B, N, M)
    mixtures = A_true @ sources
    est = sources + 0.05 * torch.randn_like(sources)
    ls_loss, ls_A = mixit_least_squares(est, mixtures)
    loss, A = mixit(est, mixtures)
    assert torch.equal(ls_A, A_true)
    assert torch.equal(A, A_true)
    torch.testing.assert_close(ls_loss, loss, atol=1e-9, rtol=0)


def test_mixit_least_squares_loss_matches_its_assignment():
    est, mixtures = random_mom(3, 6, 2, 300)
    loss, A = mixit_least_squares(est, mixtures)
    assert torch.equal(A.sum(dim=1), torch.ones(3, 6, dtype=A.dtype))  # one mixture each
    torch.testing.assert_close(-snr_tau(A @ est, mixtures).mean(-1), loss, atol=1e-9, rtol=0)
    assert (loss >= mixit(est, mixtures)[0] - 1e-9).all()  # never better than exact


def _silent_batch():
    """Example 0: every estimate and reference silent; example 1: some silent estimates."""
    est = torch.zeros(2, 4, 100)
    est[1, :2] = torch.randn(2, 100)
    refs = torch.zeros(2, 2, 100)
    refs[1] = torch.randn(2, 100)
    return est.requires_grad_(True), refs


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda e, r: snr_tau(e[:, :2], r).mean(-1),
        lambda e, r: si_snr(e[:, :2], r).mean(-1),
        lambda e, r: pairwise_neg_si_snr(e, r).mean((1, 2)),
        lambda e, r: pit(e, r, method="exhaustive")[0],
        lambda e, r: pit(e, r, method="hungarian")[0],
        lambda e, r: mixit(e, r)[0],
        lambda e, r: mixit(e, r, snr_max=None)[0],
        lambda e, r: mixit_least_squares(e, r)[0],
    ],
    ids=["snr_tau", "si_snr", "pairwise", "pit", "hungarian", "mixit", "mixit_plain", "mixit_ls"],
)
def test_values_and_gradients_finite_for_silence(loss_fn):
    est, refs = _silent_batch()
    loss = loss_fn(est, refs)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(est.grad).all()


def test_mixit_trains_after_a_first_call_in_inference_mode():
    """The cached assignments are made outside inference mode: evaluation first, then a
    training step in the same process (the report's comparison runs do this)."""
    losses.mixit_assignments.cache_clear()
    losses._assignments_as.cache_clear()
    losses._permutations.cache_clear()
    est64, mixtures64 = random_mom(2, 4, 2, 400)
    with torch.inference_mode():
        mixit(est64, mixtures64)
        pit(est64[:, :2], mixtures64)
    est = est64.clone().requires_grad_(True)
    loss, _ = mixit(est, mixtures64)
    pit_loss, _ = pit(est[:, :2], mixtures64)
    (loss.sum() + pit_loss.sum()).backward()
    assert est.grad is not None and torch.isfinite(est.grad).all()


# ---- The fast paths (float32 Gram matrices by chunks, hand-written backward passes) against
# ---- float64 time-axis computations. Tolerances come from the measured float32 error
# ---- (benchmarks/bench_losses.py prints it) with a margin of about 3x.


def at_snr(ref, snr_db, generator=None):
    """ref plus zero-mean noise at exactly snr_db per signal."""
    noise = torch.randn(ref.shape, dtype=ref.dtype, generator=generator)
    noise -= noise.mean(dim=-1, keepdim=True)
    noise *= ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
    return ref + noise * 10.0 ** (-snr_db / 20.0)


@pytest.mark.parametrize("T", [1000, 4096, 9000])
def test_grams_by_chunks_equal_float64_products(T):
    """Shorter than one chunk, exactly one, and two chunks plus a remainder."""
    a, b = torch.randn(3, 4, T), torch.randn(3, 2, T) + 0.5
    (gram,) = losses._grams_by_chunks((a, b))
    exact = a.double() @ b.double().transpose(1, 2)
    scale = a.double().norm(dim=-1).unsqueeze(-1) * b.double().norm(dim=-1).unsqueeze(1)
    assert ((gram.double() - exact).abs() / scale).max() < 1e-6  # float32 rounding


def test_pairwise_float32_equals_float64_time_axis_at_every_snr():
    """Examples 0-2 stay below PIT_FLOAT32_MAX_SI_SNR (float32 Gram), 3-5 go above it and are
    redone in float64; all within 1e-3 dB of float64 on the time axis (measured: 1.3e-4 dB
    at 20 dB in float32, about 1e-6 dB after the float64 redo)."""
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(6, 2, 12000, generator=g, dtype=torch.float64) + 0.1
    est = torch.stack([at_snr(ref[i], snr, g) for i, snr in enumerate([0, 10, 20, 30, 45, 60])])
    est, ref = est.float(), ref.float()
    got = -pairwise_neg_si_snr(est, ref)
    expected = si_snr(est.double().unsqueeze(2), ref.double().unsqueeze(1))  # (B, E, S)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-3, rtol=0)
    assert (got.diagonal(dim1=1, dim2=2)[3:] > losses.PIT_FLOAT32_MAX_SI_SNR).all()


@pytest.mark.parametrize("snr_db", [10.0, 40.0])
def test_pit_float32_gradient_equals_float64_autograd(snr_db):
    """The hand-written backward pass (float32 combination of the centred signals) against
    autograd through the time-axis SI-SNR in float64: rtol 1e-3 (float32 rounding of a
    gradient whose terms cancel to 1/sqrt(SNR) of their size at 40 dB)."""
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(3, 3, 9000, generator=g, dtype=torch.float64)
    est64 = at_snr(ref[:, [2, 0, 1]], snr_db, g)
    est = est64.float().requires_grad_(True)
    loss, perm = pit(est, ref.float())
    assert perm.tolist() == [[1, 2, 0]] * 3
    loss.sum().backward()
    est_ref = est64.clone().requires_grad_(True)
    expected = -si_snr(reorder(est_ref, perm), ref).mean(-1)
    expected.sum().backward()
    torch.testing.assert_close(loss.double(), expected.detach(), atol=1e-3, rtol=0)
    scale = est_ref.grad.abs().max().item()
    torch.testing.assert_close(est.grad.double(), est_ref.grad, atol=1e-4 * scale, rtol=1e-3)


@pytest.mark.parametrize("zero_mean", [True, False])
def test_pairwise_backward_passes_gradcheck(zero_mean):
    """Both inputs' hand-written gradients against finite differences (float64)."""
    est = torch.randn(2, 3, 20, dtype=torch.float64, requires_grad=True)
    ref = (torch.randn(2, 2, 20, dtype=torch.float64) + 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda e, r: pairwise_neg_si_snr(e, r, zero_mean=zero_mean), (est, ref)
    )
    assert torch.autograd.gradcheck(lambda e, r: pit(e, r)[0], (est, ref))


@pytest.mark.parametrize("snr_max", [30.0, None])
@pytest.mark.parametrize("loss_fn", [mixit, mixit_least_squares], ids=["exact", "lsq"])
def test_mixit_backward_passes_gradcheck(loss_fn, snr_max):
    """The estimates' and the mixtures' hand-written gradients against finite differences."""
    est = torch.randn(2, 4, 20, dtype=torch.float64, requires_grad=True)
    mixtures = torch.randn(2, 2, 20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, x: loss_fn(e, x, snr_max)[0], (est, mixtures))


def test_mixit_float32_m8_equals_float64_brute_force():
    """M = 8 (256 candidates) in float32 (float32 ranking, time-axis loss) against the float64
    loop: same assignment, loss within 1e-4 dB (float32 rounding on the time axis, ~1e-6)."""
    est64, mixtures64 = random_mom(2, 8, 2, 9000)
    loss, A = mixit(est64.float(), mixtures64.float())
    bf_loss, bf_A = brute_force_mixit(est64, mixtures64)
    assert torch.equal(A, bf_A.float())
    torch.testing.assert_close(loss.double(), bf_loss, atol=1e-4, rtol=0)


def test_mixit_scoring_dtype_follows_the_threshold():
    assert losses._scoring_dtype(torch.float32, 30.0) == torch.float32
    assert losses._scoring_dtype(torch.float32, 10.0) == torch.float32
    assert losses._scoring_dtype(torch.float32, 40.0) == torch.float64
    assert losses._scoring_dtype(torch.float32, None) == torch.float64
    assert losses._scoring_dtype(torch.float64, 30.0) == torch.float64


def _reconstructable(snr_db, T=8192):
    """Mixtures that the estimates remix to at snr_db (two of the four estimates noisy)."""
    g = torch.Generator().manual_seed(7)
    sources = torch.randn(3, 4, T, generator=g, dtype=torch.float64)
    A_true = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    mixtures = A_true @ sources
    est = sources.clone()
    est[:, [0, 2]] = at_snr(sources[:, [0, 2]], snr_db, g)
    return est, mixtures, A_true


@pytest.mark.parametrize("snr_db", [20.0, 30.0, 60.0])
def test_mixit_float32_scores_error_bounded_by_the_cap(snr_db):
    """At snr_max = 30 every candidate's float32 score is within 3e-3 dB of float64 on the
    time axis, however good the remix (measured: <= 1e-3 dB): the cap keeps the error energy
    above tau |x|^2."""
    est, mixtures, _ = _reconstructable(snr_db)
    A_all = losses.mixit_assignments(2, 4)
    exact = -snr_tau(torch.einsum("knm,bmt->bknt", A_all, est), mixtures.unsqueeze(1)).mean(-1)
    gram = losses._mixit_gram(est.float(), mixtures.float(), torch.float32)
    scores = losses._remix_neg_snr(*gram, A_all, 30.0, 1e-8)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), exact, atol=3e-3, rtol=0)


def test_mixit_uncapped_float32_ranks_in_float64():
    """Without a cap a float32 Gram would be off by dB at 60 dB; the float64 ranking finds the
    float64 optimum and the time-axis loss matches it within 1e-3 dB."""
    est, mixtures, A_true = _reconstructable(60.0)
    loss, A = mixit(est.float(), mixtures.float(), snr_max=None)
    bf_loss, bf_A = brute_force_mixit(est, mixtures, snr_max=None)
    assert torch.equal(A, bf_A.float())
    assert torch.equal(A[0], A_true.float())
    torch.testing.assert_close(loss.double(), bf_loss, atol=1e-3, rtol=0)


def test_losses_run_outside_autocast():
    """Under bfloat16 autocast (Lightning's bf16-mixed) the losses compute as in float32."""
    est, mixtures = random_mom(2, 4, 2, 3000, dtype=torch.float32)
    ref = mixtures
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = (mixit(est, mixtures)[0], mixit_least_squares(est, mixtures)[0],
                  pit(est[:, :2], ref)[0], pairwise_neg_si_snr(est, ref))
    outside = (mixit(est, mixtures)[0], mixit_least_squares(est, mixtures)[0],
               pit(est[:, :2], ref)[0], pairwise_neg_si_snr(est, ref))
    for a, b in zip(inside, outside, strict=True):
        assert a.dtype == torch.float32
        assert torch.equal(a, b)
    # bfloat16 estimates (an autocast forward's output) are scored in float32
    loss, _ = mixit(est.bfloat16(), mixtures)
    torch.testing.assert_close(loss, mixit(est.bfloat16().float(), mixtures)[0].bfloat16())
