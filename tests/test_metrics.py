"""Metrics (tsmixit.metrics) against independent computations (torchmetrics, fast-bss-eval,
brute force over groupings, hand-worked cases)."""

import itertools

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio as tm_si_snr
from torchmetrics.functional.audio import signal_distortion_ratio as tm_sdr

from conftest import gaussian_signals as _signals
from tsmixit.errors import ModelFileError
from tsmixit.losses import si_snr
from tsmixit.metrics import (
    active_output_count,
    mixture_si_snr,
    oracle_grouping,
    score_mixture,
    si_snri_oracle,
    si_snri_pit,
    top_k_by_energy,
    top_k_outputs,
)


def _brute_force_grouping(est, ref, allow_empty):
    """Best mean SI-SNR over every assignment of outputs to references, group sums on the
    time axis in float64: (M, T), (k, T) -> (score, groups)."""
    n_out, k = est.shape[0], ref.shape[0]
    best_score, best_groups = -np.inf, None
    for groups in itertools.product(range(k), repeat=n_out):
        if not allow_empty and len(set(groups)) < k:
            continue
        sums = torch.stack([est[[m for m in range(n_out) if groups[m] == j]].sum(0)
                            for j in range(k)])
        score = float(si_snr(sums.double(), ref.double()).mean())
        if score > best_score:
            best_score, best_groups = score, groups
    return best_score, list(best_groups)


def test_estimate_equal_to_reference_and_to_mixture():
    ref = _signals(2, 4000, 0)
    mix = ref.sum(dim=0)
    perfect = score_mixture(ref.flip(0), ref, mix)
    assert perfect["si_snri_topk"] > 60 and perfect["sdri_topk"] > 60
    assert perfect["topk_outputs"] == [1, 0]
    same = score_mixture(mix.expand(2, -1).clone(), ref, mix)
    assert same["si_snri_topk"] == pytest.approx(0.0, abs=1e-4)
    assert same["sdri_topk"] == pytest.approx(0.0, abs=1e-3)


def test_topk_scores_match_torchmetrics():
    ref = _signals(2, 8000, 1)
    mix = ref.sum(dim=0)
    noise = _signals(3, 8000, 2)
    est = torch.stack([ref[1] + 0.3 * noise[0], 0.05 * noise[2], ref[0] + 0.5 * noise[1]])
    row = score_mixture(est, ref, mix)
    assert row["topk_outputs"] == [2, 0]  # the silent-ish output 1 is dropped
    kept = est[[2, 0]].double()
    # Independent: torchmetrics SI-SNR and SDR (one thread: see sdr_pairwise), the
    # SDR permutation found by brute force.
    si = tm_si_snr(kept, ref.double()).mean() - tm_si_snr(mix.expand(2, -1).double(),
                                                          ref.double()).mean()
    with torch.no_grad():
        sdr = max(tm_sdr(est[list(p)].double(), ref.double()).mean() for p in ((0, 2), (2, 0)))
        sdr_mix = tm_sdr(mix.expand(2, -1).double(), ref.double()).mean()
    assert row["si_snri_topk"] == pytest.approx(float(si), abs=1e-3)
    assert row["sdri_topk"] == pytest.approx(float(sdr - sdr_mix), abs=1e-3)
    # The oracle groups (3 outputs into 2), scored in the same SDR call: the best grouping by
    # SI-SNR puts the quiet output 1 with one of the others; its SDR by torchmetrics.
    groups = [torch.stack([est[2] + est[1], est[0]]), torch.stack([est[2], est[0] + est[1]])]
    best = max(groups, key=lambda g: float(tm_si_snr(g.double(), ref.double()).mean()))
    with torch.no_grad():
        sdr_oracle = tm_sdr(best.double(), ref.double()).mean()
    assert row["oracle_groups"] in ([1, 0, 0], [1, 1, 0])  # output 2 -> source 0
    assert row["sdri_oracle"] == pytest.approx(float(sdr_oracle - sdr_mix), abs=1e-3)


def test_oracle_grouping_equals_brute_force():
    ref = _signals(2, 3000, 3)
    est = _signals(4, 3000, 4) + 0.8 * torch.stack([ref[0], ref[1], ref[1], ref[0]])
    best_score, best_groups = -np.inf, None
    for groups in itertools.product(range(2), repeat=4):
        if len(set(groups)) < 2:
            continue
        sums = torch.stack([est[[m for m in range(4) if groups[m] == j]].sum(0) for j in range(2)])
        score = float(tm_si_snr(sums.double(), ref.double()).mean())
        if score > best_score:
            best_score, best_groups = score, groups
    A, _ = oracle_grouping(est, ref, allow_empty=False)
    assert A.argmax(dim=0).tolist() == list(best_groups) == [0, 1, 1, 0]
    row = score_mixture(est, ref, ref.sum(0))
    assert row["si_snr_oracle"] == pytest.approx(best_score, abs=1e-3)


@pytest.mark.parametrize("allow_empty", [False, True])
@pytest.mark.parametrize("n_out, k", [(3, 2), (4, 2), (4, 3)])
def test_both_oracle_options_equal_brute_force(allow_empty, n_out, k):
    ref = torch.stack([_signals(k, 2000, 20 + b) for b in range(3)])  # (B, k, T)
    g = torch.Generator().manual_seed(n_out * 10 + k)
    owner = torch.randint(0, k, (n_out,), generator=g)
    est = torch.stack([_signals(n_out, 2000, 30 + b) for b in range(3)]) + 2.0 * ref[:, owner]
    est[1, 0] *= 0.01  # a near-silent output
    A, score = oracle_grouping(est, ref, allow_empty=allow_empty)  # (B, k, M), (B,)
    assert A.shape == (3, k, n_out) and score.shape == (3,)
    for b in range(3):
        want_score, want_groups = _brute_force_grouping(est[b], ref[b], allow_empty)
        assert A[b].argmax(dim=0).tolist() == want_groups
        assert torch.equal(A[b].sum(dim=0), torch.ones(n_out))  # one group per output
        assert float(score[b]) == pytest.approx(want_score, abs=1e-3)


def test_oracle_options_differ_where_an_empty_group_scores_best():
    ref = _signals(2, 4000, 7)
    # Output 0 is source 0; output 1 is weak noise, worse for source 1 than nothing (0 dB).
    est = torch.stack([ref[0] + 0.01 * _signals(1, 4000, 8)[0], 0.05 * _signals(1, 4000, 9)[0]])
    A_empty, score_empty = oracle_grouping(est, ref, allow_empty=True)
    A_full, score_full = oracle_grouping(est, ref, allow_empty=False)
    assert A_empty.argmax(dim=0).tolist() == [0, 0]  # source 1 gets no output
    assert A_full.argmax(dim=0).tolist() == [0, 1]
    assert score_empty > score_full + 10
    assert float(si_snr(torch.zeros(4000), ref[1])) == pytest.approx(0.0, abs=1e-3)


def test_oracle_refuses_too_many_groupings():
    with pytest.raises(ModelFileError, match="candidates"):
        oracle_grouping(torch.randn(17, 100), torch.randn(2, 100), allow_empty=False)


def test_over_separation_oracle_beats_topk():
    parts = _signals(4, 4000, 5) * torch.tensor([[1.0], [0.9], [0.8], [0.7]])
    ref = torch.stack([parts[0] + parts[2], parts[1] + parts[3]])  # each source split in two
    row = score_mixture(parts, ref, ref.sum(0))
    assert row["oracle_groups"] == [0, 1, 0, 1]
    assert row["si_snri_oracle"] > 60
    assert row["si_snri_oracle"] >= row["si_snri_topk"] + 10
    assert row["active_outputs"] == 4


def test_active_output_count():
    base = _signals(1, 2000, 6)[0]
    # Energy shares 1/1.505, 0.5/1.505, 0.005/1.505, 0: -1.8, -4.8, -24.8 dB and -inf.
    est = torch.stack([base, base * 0.5**0.5, base * 0.005**0.5, torch.zeros_like(base)])
    assert active_output_count(est, -20.0) == 2
    assert active_output_count(est, -30.0) == 3
    assert active_output_count(est, -3.0) == 1


def test_top_k_by_energy_keeps_the_loudest_in_order():
    est = _signals(4, 500, 10) * torch.tensor([[0.5], [2.0], [0.1], [1.0]])
    assert top_k_outputs(est, 2).tolist() == [1, 3]
    assert torch.equal(top_k_by_energy(est[None], 2)[0], est[[1, 3]])


def test_validation_si_snri_against_torchmetrics():
    ref = torch.stack([_signals(2, 3000, 11), _signals(2, 3000, 12)])  # (B, 2, T)
    mixture = ref.sum(dim=1)  # (B, T)
    est = ref.flip(1) + 0.3 * torch.stack([_signals(2, 3000, 13), _signals(2, 3000, 14)])
    baseline = tm_si_snr(mixture[:, None].expand_as(ref).double(), ref.double())  # (B, 2)
    torch.testing.assert_close(mixture_si_snr(mixture, ref).double(), baseline,
                               atol=1e-4, rtol=0)
    want = tm_si_snr(est.flip(1).double(), ref.double()).mean(-1) - baseline.mean(-1)
    torch.testing.assert_close(si_snri_pit(est, ref, mixture).double(), want, atol=1e-4, rtol=0)
    # Two outputs, two sources: the oracle with empty groups is the best pairing here.
    torch.testing.assert_close(si_snri_oracle(est, ref, mixture), si_snri_pit(est, ref, mixture),
                               atol=1e-4, rtol=0)
