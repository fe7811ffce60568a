"""The RemixIT and Self-Remixing stages on a tiny corpus: their teacher (shuffler) schedule and
permutation seeds, a few steps lowering each stage's own loss, resuming a killed stage to the
weights of an uninterrupted one (teacher and shuffler included), and bad EMA factors refused
by name."""

import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import cli_recipe, make_corpus, read_metrics, tiny_overrides, write_config
from test_recipe import KILL_AFTER_CHECKPOINT
from tsmixit.data.datasets import SegmentDataset
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ConfigError
from tsmixit.models.registry import separator_class
from tsmixit.recipe import run_recipe
from tsmixit.remixing import batch_permutations
from tsmixit.training.checkpoints import load_checkpoint, load_separator
from tsmixit.training.config import load_config
from tsmixit.training.plan import Plan
from tsmixit.training.stages.remixit import RemixITStudent, require_single_channel
from tsmixit.training.stages.self_remixing import SelfRemixingSolver
from tsmixit.training.systems import init_from_teacher

METHODS = {"remixit": RemixITStudent, "self_remixing": SelfRemixingSolver}
STAGES = ["teacher", *METHODS]
# 16 training mixtures in batches of 4: 4 steps an epoch, so the EMA runs at steps 4, 8, 12,
# 16; a checkpoint every 5 steps and a kill after the third: mid-epoch, between two updates.
STEPS, EVERY, KILL_AT = 20, 5, 15


def overrides(corpus: Path, **extra) -> list[str]:
    return tiny_overrides(corpus, steps=8, **{
        "train.val_every": 4, "train.checkpoint_every": EVERY,
        **{f"stages.{m}.enabled": True for m in METHODS},
        **{f"stages.{m}.max_steps": STEPS for m in METHODS}, **extra})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=16)


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    result = run_recipe(load_config(None, overrides(corpus)), run, stages=STAGES)
    return run, result["stages"]


def tiny_hparams(n_sources: int) -> dict:
    return separator_class("conv_tasnet").from_preset("tiny", n_sources=n_sources,
                                                      n_channels=1).hparams


@pytest.mark.parametrize("mode, every, updates", [
    ("ema", None, [4, 8]),  # None: once per epoch (4 batches)
    ("replace", 3, [3, 6]),
    ("frozen", None, []),
])
def test_the_teacher_follows_the_student_on_its_schedule(mode, every, updates):
    torch.manual_seed(0)
    system = RemixITStudent(tiny_hparams(2), 8000, tiny_hparams(4), teacher_update=mode,
                            ema_gamma=0.75, update_every=every)
    gamma = 0.75 if mode == "ema" else 0.0
    teacher = system.teacher.state_dict()
    name = next(n for n, t in system.model.state_dict().items()  # a tensor both hold whole
                if t.is_floating_point() and t.shape == teacher[n].shape)
    perms = {}
    for step in range(9):
        system._trainer = SimpleNamespace(global_step=step, global_rank=0,
                                          num_training_batches=4)
        with torch.no_grad():  # the student moves between steps
            system.model.state_dict()[name].add_(0.01 * (step + 1))
        before = system.teacher.state_dict()[name].clone()
        student = system.model.state_dict()[name]
        system.follow_student()
        after = system.teacher.state_dict()[name]
        if step in updates:
            torch.testing.assert_close(after, gamma * before + (1 - gamma) * student,
                                       rtol=0, atol=1e-7)
        else:
            assert torch.equal(after, before)
        perms[step] = system.permutations(4)
        assert torch.equal(perms[step], system.permutations(4))  # one draw per step
    assert len({tuple(p.flatten().tolist()) for p in perms.values()}) > 1


@pytest.mark.parametrize("method", METHODS)
def test_a_few_steps_lower_the_stages_loss(corpus, straight, method):
    run, summaries = straight
    summary = summaries[method]
    assert summary["steps"] == STEPS and summary["kind"] == method
    assert summary["upstream"] == ["teacher"]
    assert read_metrics(run / method, "val_si_snri")  # the student, against true sources
    system = METHODS[method].load_from_checkpoint(summary["last_checkpoint"],
                                                  map_location="cpu").eval()
    data = SegmentDataset(Manifest.load(corpus).select(split="train"))  # whole mixtures
    mixtures = torch.stack([data[i]["mixture"] for i in range(8)])  # (8, 1, T)
    mixit = load_separator(Path(summaries["teacher"]["checkpoint"]))
    trained = {n: t.clone() for n, t in system.model.state_dict().items()}
    with torch.no_grad():
        perms = [batch_permutations(8, 2, torch.Generator().manual_seed(s)) for s in range(3)]
        after = torch.stack([system.remix_loss(mixtures, p).mean() for p in perms]).mean()
        init_from_teacher(system.model, mixit)  # where the stage started (init: teacher)
        before = torch.stack([system.remix_loss(mixtures, p).mean() for p in perms]).mean()
    assert after < before - 0.1, (before, after)
    # The teacher (shuffler) moved towards the student; its M - k extra outputs did not.
    start, now = mixit.state_dict(), system.teacher.state_dict()
    moved = [n for n in start if start[n].shape == trained[n].shape
             and not torch.equal(start[n], now[n])]
    assert moved
    for name, value in start.items():
        if value.shape != trained[name].shape:
            rows = trained[name].shape[0]
            assert torch.equal(now[name][rows:], value[rows:])


def test_each_stage_resumes_after_a_kill_to_identical_weights(corpus, straight, tmp_path):
    _, reference = straight
    config_path = write_config(tmp_path / "config.yaml", overrides(corpus))
    killed = tmp_path / "killed"
    for method in METHODS:  # the teacher trains in the first run and is kept by the second
        proc = cli_recipe(config_path, killed, "--stages", "teacher", method,
                          launcher=("-c", KILL_AFTER_CHECKPOINT),
                          env={"KILL_AT_STEP": str(KILL_AT)})
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == -signal.SIGKILL, output
        assert not (killed / method / "summary.json").exists()
    assert KILL_AT % EVERY == 0 and KILL_AT % 4 != 0
    resumed = run_recipe(load_config(config_path), killed, stages=STAGES)["stages"]
    for method in METHODS:
        assert resumed[method]["resumed_from_step"] == KILL_AT
        assert resumed[method]["steps"] == STEPS
        steps = [int(s) for s in read_metrics(killed / method, "step")]
        assert sorted(set(steps)) == list(range(STEPS))  # one log across the interruption
        a = load_checkpoint(Path(resumed[method]["last_checkpoint"]))["state_dict"]
        b = load_checkpoint(Path(reference[method]["last_checkpoint"]))["state_dict"]
        assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in b)
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("key, value", [
    ("stages.remixit.ema_gamma", 1.0), ("stages.remixit.ema_gamma", -0.1),
    ("stages.self_remixing.ema_gamma", 1.5), ("stages.self_remixing.ema_every", 0),
])
def test_a_bad_ema_setting_is_refused_by_name(corpus, key, value):
    with pytest.raises(ConfigError, match=re.escape(repr(key))):
        load_config(None, overrides(corpus, **{key: value}))


def test_a_multichannel_model_is_refused_with_the_fix(corpus):
    config = load_config(None, overrides(corpus))
    stage = next(st for st in Plan(config).stages if st.kind == "remixit")
    ctx = SimpleNamespace(splits=SimpleNamespace(channels=2), reference_only=False)
    with pytest.raises(ConfigError, match="model.channels=reference"):
        require_single_channel(stage, ctx)
    require_single_channel(stage, SimpleNamespace(splits=ctx.splits, reference_only=True))
