"""Semi-supervised MixIT (stage kind "semi_mixit"): its supervised loss against a brute force
over zero-padded references, batches that hold the set share and never read an unlabelled
row's sources, a falling loss, a killed stage resumed to the same weights, the recipe with
and without the stage, and bad settings refused by name."""

import collections
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
from tsmixit.data import manifest as manifest_module
from tsmixit.data.datasets import SemiSupervisedBatches
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ConfigError
from tsmixit.models.registry import separator_class
from tsmixit.recipe import run_recipe
from tsmixit.training.checkpoints import load_checkpoint
from tsmixit.training.config import load_config
from tsmixit.training.plan import Plan, fingerprint
from tsmixit.training.stages.semi_mixit import SemiMixIT, batch_split, pit_zero_references

SEMI = {"stages.semi_mixit.enabled": True}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 training mixtures, 4 of them labelled: 2 MoMs + 2 labelled rows a batch of 4, an
    epoch of 4 batches."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=8, labelled=4)


# ---- the loss ------------------------------------------------------------------------------


def _brute_supervised(est, sources, mixture, snr_max=30.0, zero_snr_max=20.0):
    """min over all M! orders of the M references [s_1 .. s_S, 0 .. 0] of the mean over the
    M slots of -SNR_tau (a source) or 10 log10((|s_hat|^2 + tau_0 |x|^2) / |x|^2) (a zero
    reference; a silent source is one), float64, one example at a time: (B,)."""
    tau, tau0 = 10 ** (-snr_max / 10), 10 ** (-zero_snr_max / 10)
    out = []
    for e, s, x in zip(est, sources, mixture, strict=True):
        M, S = e.shape[0], s.shape[0]
        refs = [s[j] if s[j].pow(2).mean() > 1e-16 else None for j in range(S)]
        refs += [None] * (M - S)
        costs = []
        for order in itertools.permutations(range(M)):
            slots = []
            for m, r in zip(order, refs, strict=True):
                if r is None:
                    slots.append(10 * torch.log10((e[m].pow(2).sum() + tau0 * x.pow(2).sum())
                                                  / x.pow(2).sum()))
                else:
                    slots.append(10 * torch.log10(((r - e[m]).pow(2).sum()
                                                   + tau * r.pow(2).sum()) / r.pow(2).sum()))
            costs.append(torch.stack(slots).mean())
        out.append(torch.stack(costs).min())
    return torch.stack(out)


@pytest.mark.parametrize("M,S", [(4, 2), (3, 3), (5, 2)])
def test_supervised_loss_is_pit_against_zero_padded_references(M, S):
    g = torch.Generator().manual_seed(M * 10 + S)
    T = 300
    sources = torch.randn(3, S, T, generator=g, dtype=torch.float64)
    sources[1, S - 1] = 0.0  # a silent source: a zero reference
    mixture = sources.sum(dim=1) + 0.1 * torch.randn(3, T, generator=g, dtype=torch.float64)
    est = torch.randn(3, M, T, generator=g, dtype=torch.float64)
    est[:, :S] += 2.0 * sources.flip(1)  # a clear best order, not the identity
    est_a, est_b = est.clone().requires_grad_(), est.clone().requires_grad_()
    loss, perm = pit_zero_references(est_a, sources, mixture)
    brute = _brute_supervised(est_b, sources, mixture)
    torch.testing.assert_close(loss, brute, rtol=0, atol=1e-7)
    loss.sum().backward()
    brute.sum().backward()
    torch.testing.assert_close(est_a.grad, est_b.grad, rtol=0, atol=1e-9)
    assert perm[0].tolist() == list(range(S))[::-1]


def test_supervised_loss_by_hand():
    """Outputs [s_1, 0, s_2, 0]: each source at the 30 dB cap, each silent output at the
    20 dB cap of its zero reference: (-30 - 30 - 20 - 20) / 4 = -25 dB."""
    s = torch.randn(1, 2, 400, generator=torch.Generator().manual_seed(1))
    est = torch.stack([s[0, 0], torch.zeros(400), s[0, 1], torch.zeros(400)])[None]
    loss, perm = pit_zero_references(est, s, s.sum(dim=1))
    assert abs(loss.item() + 25.0) < 1e-4
    assert perm.tolist() == [[0, 2]]


def _brute_mixit(est, references, snr_max=30.0):
    """min over all 2^M assignments of the mean over the 2 references of -SNR_tau: (B,)."""
    tau = 10 ** (-snr_max / 10)
    out = []
    for e, x in zip(est, references, strict=True):
        costs = []
        for choice in itertools.product(range(2), repeat=e.shape[0]):
            remix = [sum((e[m] for m in range(len(choice)) if choice[m] == n),
                         torch.zeros_like(x[n])) for n in range(2)]
            costs.append(np.mean([10 * math.log10(((x[n] - remix[n]).pow(2).sum()
                                                   + tau * x[n].pow(2).sum()).item()
                                                  / x[n].pow(2).sum().item())
                                  for n in range(2)]))
        out.append(min(costs))
    return torch.tensor(out)


def _system(weight: float = 1.0) -> SemiMixIT:
    hparams = separator_class("conv_tasnet").from_preset(
        "tiny", n_sources=4, n_channels=1, consistency="uniform").hparams
    return SemiMixIT(hparams, sample_rate=8000, supervised_weight=weight)


def _batches(corpus: Path, n_mom: int, n_labelled: int, seed: int = 0,
             frames: int = 2000) -> SemiSupervisedBatches:
    train = Manifest.load(corpus).select(split="train")
    return SemiSupervisedBatches(train, train.select(labelled=True), frames, n_mom,
                                 n_labelled, seed=seed)


def test_training_loss_is_mixit_on_moms_plus_weighted_pit_on_labelled_rows(corpus):
    batch = _batches(corpus, 2, 2)[0]
    system = _system(weight=0.7)
    total, terms = system.loss(batch)
    with torch.no_grad():
        est = system(batch["mixture"]).double()  # (4, M, T)
    mixit = _brute_mixit(est[:2], batch["references"].double()).mean()
    supervised = _brute_supervised(est[2:], batch["sources"].double(),
                                   batch["mixture"][2:, 0].double()).mean()
    assert abs(terms["mixit"].item() - mixit.item()) < 1e-3
    assert abs(terms["supervised"].item() - supervised.item()) < 1e-3
    assert abs(total.item() - (mixit + 0.7 * supervised).item()) < 2e-3


def test_a_few_steps_reduce_the_loss(corpus):
    batch = _batches(corpus, 2, 2)[0]
    system = _system()
    optimizer = torch.optim.Adam(system.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        optimizer.zero_grad()
        total, terms = system.loss(batch)
        total.backward()
        optimizer.step()
        history.append({"total": total.item(), **{k: v.item() for k, v in terms.items()}})
    first, last = history[0], history[-1]
    assert last["total"] < first["total"] - 2.0, (first, last)  # dB
    assert last["mixit"] < first["mixit"] and last["supervised"] < first["supervised"]


# ---- the batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("share,batch,expected", [
    (0.5, 4, (2, 2)), (0.3, 8, (6, 2)), (0.0625, 8, (7, 1)),  # 0.5 rounds up
    (0.1, 4, (3, 1)), (0.9, 4, (1, 3)),  # both kinds kept when the share asks for both
    (0.0, 4, (4, 0)), (1.0, 4, (0, 4)), (1.0, 1, (0, 1)),
])
def test_batch_split_rounds_half_up_and_keeps_both_kinds(share, batch, expected):
    assert batch_split(share, batch) == expected


def test_batches_hold_the_share_and_unlabelled_rows_never_expose_sources(corpus, monkeypatch):
    train = Manifest.load(corpus).select(split="train")
    labelled_ids = {r["id"] for r in train.rows if r["labelled"]}
    exposed = []
    original = manifest_module.render

    def spy(row, *args, with_sources, **kwargs):
        if with_sources:
            exposed.append(row["id"])
        return original(row, *args, with_sources=with_sources, **kwargs)

    monkeypatch.setattr(manifest_module, "render", spy)
    data = SemiSupervisedBatches(train, train.select(labelled=True), 2000, n_mom=3,
                                 n_labelled=2, seed=0)
    assert len(data) == 8 // 3
    for epoch in (0, 1):
        data.set_epoch(epoch)
        exposed.clear()
        for i in range(len(data)):
            item = data[i]
            assert item["mixture"].shape == (5, 1, 2000)
            assert item["references"].shape == (3, 2, 2000)
            assert item["sources"].shape == (2, 2, 2000)
            # MoMs: x_bar = x1 + x2; labelled rows: x = s_1 + s_2 (no noise in this corpus)
            torch.testing.assert_close(item["mixture"][:3, 0], item["references"].sum(1))
            torch.testing.assert_close(item["mixture"][3:, 0], item["sources"].sum(1),
                                       rtol=0, atol=1e-6)
        # 2 batches x 2 slots = 4 labelled slots: one shuffled pass over the 4 labelled rows
        assert collections.Counter(exposed) == dict.fromkeys(labelled_ids, 1)


def test_batches_depend_on_seed_epoch_and_position_only(corpus):
    a, b, other = _batches(corpus, 2, 2), _batches(corpus, 2, 2), _batches(corpus, 2, 2, 1)
    for data in (a, b, other):
        data.set_epoch(1)
    forward = [a[i] for i in range(len(a))]
    backward = [b[i] for i in reversed(range(len(b)))][::-1]
    for x, y in zip(forward, backward, strict=True):
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)
    assert not torch.equal(forward[0]["mixture"], other[0]["mixture"])
    a.set_epoch(0)
    assert not torch.equal(forward[0]["mixture"], a[0]["mixture"])


# ---- the stage in the recipe ---------------------------------------------------------------


def test_the_stage_resumes_after_a_kill_to_the_same_weights(corpus, tmp_path):
    # 4 batches an epoch, a checkpoint every 3 steps, killed after the second: mid-epoch 1.
    every, kill_at, steps = 3, 6, 10
    overrides = tiny_overrides(corpus, steps=steps, **SEMI, **{
        "train.checkpoint_every": every, "train.val_every": 5})
    config_path = write_config(tmp_path / "config.yaml", overrides)
    killed = tmp_path / "killed"
    proc = cli_recipe(config_path, killed, "--stages", "semi_mixit",
                      launcher=("-c", KILL_AFTER_CHECKPOINT), env={"KILL_AT_STEP": str(kill_at)})
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, output
    assert not (killed / "semi_mixit" / "summary.json").exists()

    config = load_config(config_path)
    resumed = run_recipe(config, killed, stages=["semi_mixit"])["stages"]["semi_mixit"]
    assert kill_at % every == 0 and kill_at % 4 != 0
    assert resumed["resumed_from_step"] == kill_at and resumed["steps"] == steps
    assert sorted({int(s) for s in read_metrics(killed / "semi_mixit", "step")}) == list(
        range(steps))
    straight = run_recipe(config, tmp_path / "straight", stages=["semi_mixit"])["stages"][
        "semi_mixit"]
    a = load_checkpoint(Path(resumed["last_checkpoint"]))["state_dict"]
    b = load_checkpoint(Path(straight["last_checkpoint"]))["state_dict"]
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_the_recipe_adds_the_stage_and_leaves_the_others_alone(corpus, tmp_path):
    plain = load_config(None, tiny_overrides(corpus, steps=4))
    semi = load_config(None, tiny_overrides(corpus, steps=4, **SEMI))
    assert "semi_mixit" not in [st.name for st in Plan(plain).stages]
    assert [st.name for st in Plan(semi).stages] == [st.name for st in Plan(plain).stages] + [
        "semi_mixit"]
    run = tmp_path / "run"
    first = run_recipe(plain, run, stages=["teacher"])["stages"]["teacher"]
    stamp = (run / "teacher" / "summary.json").stat().st_mtime_ns
    out = run_recipe(semi, run, stages=["teacher", "semi_mixit", "eval"])
    assert out["stages"]["teacher"]["fingerprint"] == first["fingerprint"]
    assert (run / "teacher" / "summary.json").stat().st_mtime_ns == stamp  # not retrained
    summary = out["stages"]["semi_mixit"]
    assert summary["kind"] == "semi_mixit" and summary["steps"] == 4
    assert (summary["labelled_mixtures"], summary["training_mixtures"]) == (4, 8)
    assert (summary["batch_mixtures_of_mixtures"], summary["batch_labelled"]) == (2, 2)
    folder = run / "semi_mixit"
    assert len(read_metrics(folder, "train_mixit_loss")) == 4
    assert len(read_metrics(folder, "train_supervised_loss")) == 4
    assert read_metrics(folder, "val_si_snri") and read_metrics(folder, "val_si_snri_oracle")
    evaluation = json.loads((run / "eval" / "semi_mixit.json").read_text())
    assert {"si_snri_topk", "si_snri_oracle"} <= set(evaluation["mean"])
    # A changed semi-supervised setting changes that stage's fingerprint only.
    weighed = load_config(None, tiny_overrides(corpus, steps=4, **SEMI, **{
        "stages.semi_mixit.supervised_weight": 0.5}))
    a, b = _fingerprints(semi), _fingerprints(weighed)
    assert {name for name in a if a[name] != b[name]} == {"semi_mixit"}


def _fingerprints(config) -> dict[str, str]:
    out: dict[str, str] = {}
    for stage in Plan(config).stages:
        out[stage.name] = fingerprint(stage, config, "corpus", out)
    return out


@pytest.mark.parametrize("overrides,key", [
    ({"stages.semi_mixit.labelled_share": 1.5}, "stages.semi_mixit.labelled_share"),
    ({"stages.semi_mixit.labelled_share": -0.1}, "stages.semi_mixit.labelled_share"),
    ({"stages.semi_mixit.supervised_weight": -1.0}, "stages.semi_mixit.supervised_weight"),
    ({**SEMI, "data.batch_size": 1}, "stages.semi_mixit.labelled_share.*data.batch_size"),
])
def test_a_bad_share_or_weight_is_refused_by_name(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["train.max_steps=10", *(f"{k}={v}" for k, v in overrides.items())])


def test_a_batch_of_one_is_fine_when_the_stage_is_off_or_takes_one_kind():
    load_config(None, ["train.max_steps=10", "data.batch_size=1"])
    load_config(None, ["train.max_steps=10", "data.batch_size=1", *(
        f"{k}={v}" for k, v in SEMI.items()), "stages.semi_mixit.labelled_share=1.0"])
