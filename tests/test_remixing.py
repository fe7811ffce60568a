"""tsmixit.remixing against hand-worked cases and brute force written here with explicit loops:
the permutations, the remix and its inverse, the EMA update and both methods' losses."""

import itertools

import pytest
import torch
from torch import nn

from conftest import gaussian_signals
from tsmixit.losses import si_snr, snr_tau
from tsmixit.models.registry import separator_class
from tsmixit.remixing import (
    batch_permutations,
    ema_update,
    remix,
    remix_back,
    remixit_loss,
    self_remixing_loss,
)
from tsmixit.training.systems import init_from_teacher


def signals(batch: int, k: int, frames: int, seed: int) -> torch.Tensor:
    return gaussian_signals(batch * k, frames, seed).reshape(batch, k, frames)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch, k", [(4, 2), (5, 3), (3, 3)])
def test_constrained_permutations_are_permutations_without_repeated_mixtures(batch, k):
    for seed in range(20):
        perms = batch_permutations(batch, k, generator(seed))
        assert perms.shape == (k, batch) and perms.dtype == torch.long
        for j in range(k):
            assert sorted(perms[j].tolist()) == list(range(batch))
        for b in range(batch):  # every pseudo-mixture draws on k different mixtures
            assert len(set(perms[:, b].tolist())) == k


def test_permutations_repeat_for_a_seed_and_reach_every_valid_pair():
    first = batch_permutations(6, 2, generator(3))
    assert torch.equal(first, batch_permutations(6, 2, generator(3)))
    assert not torch.equal(first, batch_permutations(6, 2, generator(4)))
    # B = 3, k = 2: 3! choices of pi_1, each with 2 derangements for pi_2 -> 12 pairs.
    drawn = {tuple(map(tuple, batch_permutations(3, 2, generator(s)).tolist()))
             for s in range(600)}
    orders = list(itertools.permutations(range(3)))
    valid = {(p, q) for p in orders for q in orders
             if all(a != b for a, b in zip(p, q, strict=True))}
    assert drawn == valid
    unconstrained = {tuple(map(tuple, batch_permutations(3, 2, generator(s), False).tolist()))
                     for s in range(600)}
    assert len(unconstrained) == 36  # independent draws reach all 6 x 6 pairs


def test_a_constrained_shuffle_needs_as_many_mixtures_as_sources():
    with pytest.raises(ValueError, match="data.batch_size"):
        batch_permutations(2, 3, generator(0))


def test_remix_by_hand_and_its_inverse():
    s = signals(3, 2, 5, seed=1)
    perms = torch.tensor([[1, 2, 0], [2, 0, 1]])  # pi_1, pi_2
    pseudo, shuffled = remix(s, perms)
    for b in range(3):
        assert torch.equal(shuffled[b, 0], s[perms[0, b], 0])
        assert torch.equal(shuffled[b, 1], s[perms[1, b], 1])
        torch.testing.assert_close(pseudo[b], s[perms[0, b], 0] + s[perms[1, b], 1])
    torch.testing.assert_close(pseudo[0], s[1, 0] + s[2, 1])  # written out for b = 0
    mixtures, restored = remix_back(shuffled, perms)
    assert torch.equal(restored, s)
    torch.testing.assert_close(mixtures, s.sum(dim=1))


def test_remix_back_puts_each_estimate_where_its_source_came_from():
    perms = batch_permutations(5, 3, generator(2))
    est = signals(5, 3, 7, seed=3)  # y[b, j]: an estimate of s~_bj = s[pi_j(b), j]
    mixtures, restored = remix_back(est, perms)
    for b in range(5):
        for j in range(3):
            assert torch.equal(restored[perms[j, b], j], est[b, j])
    for c in range(5):
        torch.testing.assert_close(mixtures[c], restored[c].sum(dim=0))


def brute_force_remixit(est, targets, cap):
    losses = []
    for b in range(est.shape[0]):
        k = est.shape[1]
        scores = []
        for p in itertools.permutations(range(k)):
            pair = [(-si_snr(est[b, p[j]], targets[b, j])).clamp(-cap, cap) for j in range(k)]
            scores.append(torch.stack(pair).mean())
        losses.append(torch.stack(scores).min())
    return torch.stack(losses)


@pytest.mark.parametrize("k", [2, 3])
def test_remixit_loss_is_the_best_permutation_of_clamped_si_snr(k):
    targets = signals(4, k, 800, seed=4)
    est = targets[:, torch.randperm(k, generator=generator(5))] + 0.3 * signals(4, k, 800, 6)
    est[0, 0] = targets[0, 0] + 1e-3 * est[0, 0]  # one pair above 30 dB: clamped
    loss, perm = remixit_loss(est, targets)
    torch.testing.assert_close(loss, brute_force_remixit(est, targets, 30.0), atol=1e-4, rtol=0)
    unclamped, _ = remixit_loss(est, targets, si_snr_max=None)
    assert unclamped[0] < loss[0] and torch.allclose(unclamped[1:], loss[1:], atol=1e-4)
    for b in range(4):  # perm[b, j]: the estimate paired with target j
        assert sorted(perm[b].tolist()) == list(range(k))


def brute_force_self_remixing(est, targets, mixtures, perms, snr_max):
    batch, k, _ = est.shape
    aligned = []
    for b in range(batch):
        best, best_p = None, None
        for p in itertools.permutations(range(k)):
            score = torch.stack([-snr_tau(est[b, p[j]], targets[b, j], snr_max)
                                 for j in range(k)]).mean()
            if best is None or score < best:
                best, best_p = score, p
        aligned.append(torch.stack([est[b, best_p[j]] for j in range(k)]))
    losses = []
    for c in range(batch):
        parts = [aligned[b][j] for j in range(k) for b in range(batch) if perms[j, b] == c]
        assert len(parts) == k  # one estimate per source slot comes back to mixture c
        losses.append(-snr_tau(torch.stack(parts).sum(dim=0), mixtures[c], snr_max))
    return torch.stack(losses)


@pytest.mark.parametrize("k", [2, 3])
def test_self_remixing_loss_against_brute_force(k):
    batch = 5
    sources = signals(batch, k, 600, seed=7)  # the shuffler's estimates, summing to x
    mixtures = sources.sum(dim=1)
    perms = batch_permutations(batch, k, generator(8))
    _, targets = remix(sources, perms)
    # The solver's outputs: the pseudo-sources, noisy and in a shuffled order per mixture.
    est = torch.stack([targets[b, torch.randperm(k, generator=generator(10 + b))]
                       for b in range(batch)]) + 0.2 * signals(batch, k, 600, seed=9)
    est.requires_grad_(True)
    loss, sigma = self_remixing_loss(est, targets, mixtures, perms)
    torch.testing.assert_close(loss, brute_force_self_remixing(est, targets, mixtures, perms,
                                                               30.0), atol=1e-4, rtol=0)
    loss.mean().backward()  # gradients reach every solver output
    assert est.grad is not None and (est.grad.abs().sum(dim=-1) > 0).all()
    perfect, _ = self_remixing_loss(targets, targets, mixtures, perms)
    torch.testing.assert_close(perfect, torch.full((batch,), -30.0), atol=1e-3, rtol=0)


def tiny(n_sources: int) -> nn.Module:
    cls = separator_class("conv_tasnet")
    return cls(**cls.from_preset("tiny", n_sources=n_sources, n_channels=1).hparams)


def test_ema_update_equals_its_formula_and_follows_only_the_students_outputs():
    torch.manual_seed(1)
    teacher, student = tiny(4), tiny(2)
    before = {n: t.clone() for n, t in teacher.state_dict().items()}
    theirs = student.state_dict()
    ema_update(teacher, student, 0.9)
    after = teacher.state_dict()
    masked = 0
    for name, old in before.items():
        s = theirs[name]
        if old.shape == s.shape:
            torch.testing.assert_close(after[name], 0.9 * old + 0.1 * s, rtol=0, atol=1e-7)
        else:  # the mask layer: the rows of the first k = 2 of M = 4 outputs follow
            masked += 1
            rows = s.shape[0]
            assert old.shape[0] == 2 * rows
            torch.testing.assert_close(after[name][:rows], 0.9 * old[:rows] + 0.1 * s,
                                       rtol=0, atol=1e-7)
            assert torch.equal(after[name][rows:], old[rows:])
    assert masked > 0
    ema_update(teacher, student, 0.0)  # "replace": the student's view of the teacher is it
    copy = tiny(2)
    init_from_teacher(copy, teacher)
    for name, value in copy.state_dict().items():
        assert torch.equal(value, theirs[name])


def test_ema_update_averages_float_buffers_and_copies_integer_ones():
    teacher = nn.Sequential(nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3))
    student = nn.Sequential(nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3))
    student.train()
    student(torch.randn(4, 1, 20))  # running statistics and num_batches_tracked move
    t0 = {n: t.clone() for n, t in teacher.state_dict().items()}
    ema_update(teacher, student, 0.75)
    s, t = student.state_dict(), teacher.state_dict()
    for name in ("1.running_mean", "1.running_var", "0.weight", "1.bias"):
        torch.testing.assert_close(t[name], 0.75 * t0[name] + 0.25 * s[name], rtol=0,
                                   atol=1e-7)
    assert t["1.num_batches_tracked"].dtype == torch.long
    assert t["1.num_batches_tracked"].item() == s["1.num_batches_tracked"].item() == 1
    with pytest.raises(ValueError, match="gamma"):
        ema_update(teacher, student, 1.5)
    with pytest.raises(ValueError, match="same separator"):
        ema_update(nn.Linear(3, 2), nn.Linear(4, 2), 0.5)
