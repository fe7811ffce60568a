"""Sparse and efficient MixIT (Wisdom et al., WASPAA 2021): the sparsity and covariance
losses against loops and hand-worked values, least-squares MixIT at M = 8 and 16 against an
exhaustive search and a greedy assignment, and the stage: it trains, logs its terms, records
its active outputs, resumes a killed run to the same weights and refuses bad weights."""

import itertools
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_recipe, make_corpus, read_metrics, tiny_overrides, write_config
from test_recipe import KILL_AFTER_CHECKPOINT
from tsmixit.errors import ConfigError
from tsmixit.losses import covariance_loss, mixit, mixit_least_squares, snr_tau, sparsity_loss
from tsmixit.recipe import run_recipe
from tsmixit.training.checkpoints import load_checkpoint
from tsmixit.training.config import load_config

# ---- the losses against loops -----------------------------------------------------------


def loop_sparsity(est: np.ndarray, eps: float) -> np.ndarray:
    """|r|_1 / |r|_2 of the outputs' RMS r_m = sqrt(mean_t s^2 + eps), example by example."""
    out = []
    for example in est:
        rms = [math.sqrt(float(np.mean(s * s)) + eps) for s in example]
        out.append(sum(rms) / math.sqrt(sum(r * r for r in rms)))
    return np.array(out)


def loop_covariance(est: np.ndarray, eps: float) -> np.ndarray:
    """Mean over ordered pairs m != l of C_ml^2 / ((C_mm + eps)(C_ll + eps)), C the covariance
    over time of the outputs, from np.mean of products of centred signals."""
    out = []
    for example in est:
        centred = [s - s.mean() for s in example]
        M = len(centred)
        var = [float(np.mean(c * c)) + eps for c in centred]
        total = 0.0
        for m, l in itertools.permutations(range(M), 2):
            total += float(np.mean(centred[m] * centred[l])) ** 2 / (var[m] * var[l])
        out.append(total / (M * (M - 1)))
    return np.array(out)


def correlated_outputs(batch: int, M: int, T: int, seed: int) -> torch.Tensor:
    """Outputs of unequal levels, some of them mixtures of the others (correlated)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, M, T, generator=g, dtype=torch.float64)
    mixing = torch.eye(M, dtype=torch.float64) + 0.5 * torch.randn(M, M, generator=g,
                                                                   dtype=torch.float64)
    levels = torch.rand(batch, M, 1, generator=g, dtype=torch.float64) + 0.05
    return levels * (mixing @ base)


@pytest.mark.parametrize("M", [2, 8, 16])
def test_sparsity_and_covariance_losses_equal_their_loops(M):
    est = correlated_outputs(3, M, 500, seed=M)
    est[0, -1] = 0.0  # a silent output
    for fn, loop in ((sparsity_loss, loop_sparsity), (covariance_loss, loop_covariance)):
        for eps in (1e-8, 1e-3):
            expected = torch.from_numpy(loop(est.numpy(), eps))
            torch.testing.assert_close(fn(est, eps=eps), expected, rtol=1e-12, atol=1e-12)
    # float32 signals are scored in float32 and agree to its precision.
    torch.testing.assert_close(sparsity_loss(est.float()).double(), sparsity_loss(est),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(covariance_loss(est.float()).double(), covariance_loss(est),
                               rtol=0, atol=1e-5)


def test_sparsity_hand_worked_values():
    M, T = 8, 1000
    t = torch.arange(T, dtype=torch.float64)
    one = torch.zeros(1, M, T, dtype=torch.float64)
    one[0, 3] = torch.sin(0.1 * t)  # one active output: |r|_1 = |r|_2
    # Equal levels (every RMS 1/sqrt(2)): |r|_1 / |r|_2 = M r / (sqrt(M) r) = sqrt(M).
    equal = torch.stack([torch.sin(2 * math.pi * (m + 1) * t / T) for m in range(M)])[None]
    assert sparsity_loss(one, eps=0.0).item() == pytest.approx(1.0, abs=1e-12)
    assert sparsity_loss(equal, eps=0.0).item() == pytest.approx(math.sqrt(M), abs=1e-12)
    # Two outputs at RMS 3 and 4 (constant signals): (3 + 4) / 5.
    two = torch.tensor([[[3.0] * 10, [-4.0] * 10]], dtype=torch.float64)
    assert sparsity_loss(two, eps=0.0).item() == pytest.approx(7 / 5, abs=1e-12)
    # Scale invariant; the default eps costs little on a silent output (r = 1e-4).
    assert sparsity_loss(1e-3 * equal).item() == pytest.approx(math.sqrt(M), rel=1e-6)
    assert sparsity_loss(one).item() == pytest.approx(1.0, abs=(M - 1) * 1e-4 / 0.7)


def test_covariance_hand_worked_values():
    T = 1000
    t = torch.arange(T, dtype=torch.float64)
    a = torch.sin(2 * math.pi * 3 * t / T)  # zero-mean and orthogonal over whole periods
    b = torch.cos(2 * math.pi * 5 * t / T)
    # Pairs (0, 1) and (2, 3) are copies up to scale and sign: 4 of the 12 ordered pairs.
    groups = torch.stack([a, -2 * a, b, 0.5 * b])[None]
    assert covariance_loss(groups, eps=0.0).item() == pytest.approx(1 / 3, abs=1e-12)
    copies = torch.stack([a, 3 * a, -a])[None]
    assert covariance_loss(copies, eps=0.0).item() == pytest.approx(1.0, abs=1e-12)
    orthogonal = torch.stack([a, b, torch.sin(2 * math.pi * 7 * t / T)])[None]
    assert covariance_loss(orthogonal, eps=0.0).item() == pytest.approx(0.0, abs=1e-20)
    # A constant offset is not covariance; a silent output is uncorrelated with the rest.
    shifted = torch.stack([a + 1.0, -2 * a + 3.0, b, 0.5 * b])[None]
    assert covariance_loss(shifted, eps=0.0).item() == pytest.approx(1 / 3, abs=1e-12)
    silent = torch.stack([a, torch.zeros(T, dtype=torch.float64), a])[None]  # 2 of 6 pairs
    assert covariance_loss(silent).item() == pytest.approx(1 / 3, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 outputs"):
        covariance_loss(a[None, None])


def test_gradients_are_sane():
    est = correlated_outputs(2, 4, 40, seed=1).requires_grad_(True)
    for fn in (sparsity_loss, covariance_loss):
        assert torch.autograd.gradcheck(lambda e, fn=fn: fn(e), (est,))
    # Silence: finite values and gradients.
    silent = torch.zeros(2, 8, 100, requires_grad=True)
    with torch.no_grad():
        silent[1, :3] = torch.randn(3, 100)
    (sparsity_loss(silent) + covariance_loss(silent)).sum().backward()
    assert torch.isfinite(silent.grad).all()
    # d(|r|_1/|r|_2)/dr_m = 1/|r|_2 - |r|_1 r_m / |r|_2^3 > 0 for the quietest output:
    # descending the sparsity loss shrinks it (and moves the loudest one up).
    x = correlated_outputs(1, 6, 300, seed=2).requires_grad_(True)
    sparsity_loss(x).sum().backward()
    energy = x.detach().pow(2).sum(-1)[0]
    quiet, loud = energy.argmin(), energy.argmax()
    assert (x.grad[0, quiet] * x.detach()[0, quiet]).sum() > 0
    assert (x.grad[0, loud] * x.detach()[0, loud]).sum() < 0
    # One small gradient step lowers each loss.
    for fn in (sparsity_loss, covariance_loss):
        y = correlated_outputs(2, 6, 300, seed=3).requires_grad_(True)
        before = fn(y)
        before.sum().backward()
        with torch.no_grad():
            after = fn(y - 1e-2 * y.grad / y.grad.norm())
        assert (after < before).all()


# ---- least-squares MixIT at M = 8 and 16 -------------------------------------------------


def exhaustive_best(est: np.ndarray, mixtures: np.ndarray, snr_max: float = 30.0,
                    eps: float = 1e-8) -> np.ndarray:
    """The exact MixIT loss of every example, N = 2: every one of the 2^M assignments scored
    from the float64 error energy |x_n - sum_{m in n} s_m|^2 = x.x - 2 a.(s x) + a S a."""
    tau = 10 ** (-snr_max / 10)
    M = est.shape[1]
    a1 = np.array(list(itertools.product([0.0, 1.0], repeat=M)))  # (2^M, M): to mixture 1
    best = []
    for s, x in zip(est, mixtures, strict=True):
        S, sx, xx = s @ s.T, s @ x.T, np.sum(x * x, axis=1)  # (M, M), (M, 2), (2,)
        losses = 0.0
        for n, a in enumerate((1.0 - a1, a1)):
            err = xx[n] - 2 * a @ sx[:, n] + np.sum((a @ S) * a, axis=1)
            losses = losses - 10 * np.log10((xx[n] + eps) / (np.maximum(err, 0) + tau * xx[n]
                                                             + eps)) / 2
        best.append(losses.min())
    return np.array(best)


def remix_loss(est: np.ndarray, mixtures: np.ndarray, choice: list[int]) -> float:
    """MixIT loss of one assignment on the time axis (choice[m]: the mixture of output m)."""
    A = np.zeros((mixtures.shape[0], est.shape[0]))
    A[choice, range(est.shape[0])] = 1.0
    return float(-snr_tau(torch.from_numpy(A @ est), torch.from_numpy(mixtures)).mean())


def greedy_loss(est: np.ndarray, mixtures: np.ndarray) -> float:
    """Greedy reference: outputs loudest first, each to the mixture that gives the lower MixIT
    loss of the outputs placed so far."""
    order = np.argsort(-np.sum(est * est, axis=1), kind="stable")
    placed: dict[int, int] = {}
    for m in order:
        costs = []
        for n in range(mixtures.shape[0]):
            trial = {**placed, int(m): n}
            idx = sorted(trial)
            costs.append(remix_loss(est[idx], mixtures, [trial[i] for i in idx]))
        placed[int(m)] = int(np.argmin(costs))
    return remix_loss(est, mixtures, [placed[m] for m in range(est.shape[0])])


def mom(batch: int, M: int, T: int, noise: float, seed: int, silent_second: bool = False):
    """Two mixtures made of M parts; the outputs are the parts plus `noise` times white noise."""
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(batch, M, T, generator=g, dtype=torch.float64)
    parts = parts * (torch.rand(batch, M, 1, generator=g, dtype=torch.float64) + 0.1)
    choice = torch.randint(0, 2, (batch, M), generator=g)
    if silent_second:
        choice[:] = 0
    A = torch.nn.functional.one_hot(choice, 2).transpose(1, 2).double()  # (B, 2, M)
    est = parts + noise * torch.randn(batch, M, T, generator=g, dtype=torch.float64)
    return est, A @ parts


@pytest.mark.parametrize("M", [8, 16])
def test_least_squares_mixit_equals_the_exhaustive_search_on_clean_outputs(M):
    est, mixtures = mom(4, M, 300, noise=0.05, seed=M)
    loss, A = mixit_least_squares(est, mixtures)
    expected = exhaustive_best(est.numpy(), mixtures.numpy())
    torch.testing.assert_close(loss, torch.from_numpy(expected), rtol=0, atol=1e-9)
    torch.testing.assert_close(loss, -snr_tau(A @ est, mixtures).mean(-1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("M", [8, 16])
def test_least_squares_mixit_on_noisy_outputs_beats_greedy_and_bounds_exact(M):
    """Noisy and random outputs: no longer exact, but never worse than the greedy reference
    (nor than the bare projection), never better than the exhaustive search, and no single
    move of one output improves it."""
    cases = [mom(3, M, 200, noise, seed) for seed, noise in enumerate((0.5, 1.0, 3.0))]
    est_random = torch.randn(3, M, 200, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(7))
    cases.append((est_random, cases[0][1]))
    for est, mixtures in cases:
        loss, A = mixit_least_squares(est, mixtures)
        bare, _ = mixit_least_squares(est, mixtures, refine=False)
        exact = torch.from_numpy(exhaustive_best(est.numpy(), mixtures.numpy()))
        assert (loss >= exact - 1e-9).all() and (loss <= bare + 1e-9).all()
        for b in range(est.shape[0]):
            e, x = est[b].numpy(), mixtures[b].numpy()
            assert loss[b].item() <= greedy_loss(e, x) + 1e-9
            choice = A[b].argmax(0).tolist()
            for m in range(M):  # every single move
                moved = choice.copy()
                moved[m] = 1 - moved[m]
                assert remix_loss(e, x, moved) >= loss[b].item() - 1e-9


def test_least_squares_mixit_with_a_silent_mixture():
    """A mixture of mixtures of one mixture (x2 = 0) and an output that the other cancels:
    s1 = x1 + n, s2 = n. A_ls = (1, -1) puts s2 on the silent mixture (the bare projection:
    tens of dB of loss); the exact search, and the refined one, put both on x1."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 1, 400, generator=g, dtype=torch.float64)
    n = 0.1 * torch.randn(2, 1, 400, generator=g, dtype=torch.float64)
    est = torch.cat([x1 + n, n, torch.zeros(2, 6, 400, dtype=torch.float64)], dim=1)  # M = 8
    mixtures = torch.cat([x1, torch.zeros_like(x1)], dim=1)
    exact, A_exact = mixit(est, mixtures)
    refined, A = mixit_least_squares(est, mixtures)
    bare, A_bare = mixit_least_squares(est, mixtures, refine=False)
    assert torch.equal(A, A_exact) and (A[:, 0, :2] == 1).all()
    torch.testing.assert_close(refined, exact, rtol=0, atol=1e-9)
    assert (A_bare[:, 1, 1] == 1).all() and (bare > exact + 20).all()


# ---- the stage ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=16)


def sparse_overrides(corpus: Path, steps: int, **extra) -> list[str]:
    return tiny_overrides(corpus, steps=steps, **{"stages.sparse_mixit.enabled": True,
                                                  **extra})


def test_stage_trains_logs_its_terms_and_records_active_outputs(corpus, tmp_path):
    config = load_config(None, sparse_overrides(corpus, 16, **{
        "stages.sparse_mixit.covariance_weight": 0.5, "train.val_every": 8,
        "stages.sparse_mixit.mixit": "least_squares"}))
    result = run_recipe(config, tmp_path, stages=["sparse_mixit", "eval"])
    summary = json.loads((tmp_path / "sparse_mixit" / "summary.json").read_text())
    assert summary["kind"] == "sparse_mixit" and summary["steps"] == 16
    assert (summary["outputs"], summary["mixit"]) == (8, "least_squares")
    folder = tmp_path / "sparse_mixit"
    total = read_metrics(folder, "train_loss")
    terms = [read_metrics(folder, f"train_{n}") for n in ("mixit", "sparsity", "covariance")]
    weights = (1.0, config.stages.sparse_mixit.sparsity_weight, 0.5)
    assert len(total) == 16 and all(len(t) == 16 for t in terms)
    for step, value in enumerate(total):  # the logged total is the weighted sum of the terms
        assert value == pytest.approx(sum(w * t[step] for w, t in zip(weights, terms,
                                                                      strict=True)), abs=1e-4)
    assert all(1.0 <= s <= math.sqrt(8) for s in terms[1])
    assert np.mean(total[-4:]) < np.mean(total[:4])  # it learns
    # The summary's active outputs are the validation's at the best val_si_snri.
    scores = read_metrics(folder, "val_si_snri")
    active = read_metrics(folder, "val_active_outputs")
    assert len(scores) == len(active) == 2 and all(1 <= a <= 8 for a in active)
    assert summary["mean_active_outputs"] == pytest.approx(active[int(np.argmax(scores))],
                                                           abs=1e-3)
    assert summary["best_val_si_snri"] == pytest.approx(max(scores), abs=1e-5)
    evaluation = json.loads((tmp_path / "eval" / "sparse_mixit.json").read_text())
    assert evaluation["n_mixtures"] == 4 and "sparse_mixit" in result["eval"]
    assert load_checkpoint(tmp_path / summary["checkpoint"])["hyper_parameters"][
        "model_hparams"]["n_sources"] == 8


def test_killed_stage_resumes_to_the_same_weights(corpus, tmp_path):
    # 4 batches per epoch, a checkpoint every 5 steps, killed after the second: mid-epoch.
    every, kill_at, steps = 5, 10, 16
    overrides = sparse_overrides(corpus, steps, **{"train.checkpoint_every": every,
                                                   "train.val_every": 8})
    config_path = write_config(tmp_path / "config.yaml", overrides)
    killed = tmp_path / "killed"
    proc = cli_recipe(config_path, killed, "--stages", "sparse_mixit",
                      launcher=("-c", KILL_AFTER_CHECKPOINT), env={"KILL_AT_STEP": str(kill_at)})
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, output
    assert not (killed / "sparse_mixit" / "summary.json").exists()

    config = load_config(config_path)
    resumed = run_recipe(config, killed, stages=["sparse_mixit"])["stages"]["sparse_mixit"]
    assert kill_at % every == 0 and kill_at % 4 != 0
    assert resumed["resumed_from_step"] == kill_at and resumed["steps"] == steps
    logged = [int(s) for s in read_metrics(killed / "sparse_mixit", "step")]
    assert sorted(set(logged)) == list(range(steps))  # one log across the interruption

    straight = run_recipe(config, tmp_path / "straight",
                          stages=["sparse_mixit"])["stages"]["sparse_mixit"]
    a = load_checkpoint(Path(resumed["last_checkpoint"]))["state_dict"]
    b = load_checkpoint(Path(straight["last_checkpoint"]))["state_dict"]
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert resumed["mean_active_outputs"] == straight["mean_active_outputs"]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("stages.sparse_mixit.sparsity_weight", -0.5, "must be non-negative, got -0.5"),
    ("stages.sparse_mixit.covariance_weight", -0.5, "must be non-negative, got -0.5"),
    ("stages.sparse_mixit.outputs", 1, r"\(M\) must be at least 2 .* got 1"),
])
def test_a_bad_setting_is_refused_by_name(corpus, key, value, message):
    with pytest.raises(ConfigError, match=f"'{key}' {message}"):
        load_config(None, sparse_overrides(corpus, 2, **{key: value}))
