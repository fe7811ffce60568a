"""The run-time estimate printed before the first stage: its arithmetic, and that timing
leaves the run's random numbers alone."""

import pytest
import torch

from conftest import make_corpus, tiny_overrides
from tsmixit.training import estimate as estimate_module
from tsmixit.training.config import load_config
from tsmixit.training.fit import StageContext
from tsmixit.training.plan import Plan
from tsmixit.training.splits import prepare_splits


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"), n_train=8, n_valid=3)
    config = load_config(None, tiny_overrides(corpus, steps=12, **{
        "train.val_every": 4, "stages.teacher.max_steps": 20, "stages.finetune.max_epochs": 2,
        "stages.finetune.max_steps": "null"}))
    splits = prepare_splits(config, tmp_path_factory.mktemp("run"), progress=False)
    return StageContext(config, splits, splits.path.parent, splits.path.parent, {})


def test_each_stage_is_steps_times_the_measured_step_plus_validation(context, monkeypatch):
    measured = {"teacher": (1.0, 0.25), "student": (0.5, 0.125)}  # (s/step, s per audio s)
    scoring = {"teacher": 0.03, "student": 0.01}  # s per test mixture
    monkeypatch.setattr(estimate_module, "_measure", lambda ctx, kind, device: measured[kind])
    monkeypatch.setattr(estimate_module, "_score_seconds", lambda ctx, kind: scoring[kind])
    stages = Plan(context.config).stages
    result = estimate_module.estimate(context, stages)
    valid_s = 3 * 1.0  # 3 validation mixtures of 1 s
    train_s = 8 * 1.0  # 8 training mixtures of 1 s (all labelled by the label stages)
    expected = {
        "teacher": 20 * 1.0 + 20 / 4 * valid_s * 0.25,
        "label": train_s * 0.25,
        "student": 12 * 0.5 + 12 / 4 * valid_s * 0.125,
        "finetune": 2 * 8 / 4 * 0.5 + (2 * 8 / 4) / 4 * valid_s * 0.125,  # 2 epochs, batch 4
        "distill1_label": train_s * 0.125,  # the fine-tuned student labels round 1
    }
    for name, seconds in expected.items():
        assert result.stage_seconds[name] == pytest.approx(seconds), name
    assert set(result.stage_seconds) == {s.name for s in stages}
    # every system but the two labelling stages is scored on the test split
    test = context.splits.test
    test_s = sum(r["num_frames"] for r in test.rows) / context.splits.sample_rate
    systems = [s.kind for s in stages if s.kind != "label"]
    assert systems.count("teacher") == 1 and len(systems) >= 4
    evaluation = sum(test_s * measured[kind][1] + len(test) * scoring[kind]
                     for kind in ("teacher" if k == "teacher" else "student" for k in systems))
    assert result.evaluation_seconds == pytest.approx(evaluation)
    assert result.total_seconds == pytest.approx(sum(result.stage_seconds.values()) + evaluation)
    assert f"{evaluation / 60:.1f} min of evaluation" in result.describe()
    unscored = estimate_module.estimate(context, stages, evaluate=False)  # --stages without eval
    assert unscored.evaluation_seconds == 0.0
    assert unscored.total_seconds == pytest.approx(sum(result.stage_seconds.values()))


def test_timing_draws_no_numbers_from_the_runs_generator(context):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    result = estimate_module.estimate(context, Plan(context.config).stages[:3])
    assert torch.equal(torch.get_rng_state(), state)
    assert set(result.step_seconds) == {"teacher", "student"}
    assert all(v > 0 for v in [*result.step_seconds.values(), *result.forward_seconds.values()])
    assert result.evaluation_seconds > 0


@pytest.mark.parametrize("load, cores, threads, crowded", [
    (1.0, 2, 2, False),   # only this run
    (2.1, 2, 2, True),    # another job holds one of the two cores
    (2.1, 2, 1, False),   # ... but one thread leaves it alone
    (3.0, 16, 8, False),  # plenty of free cores
    (9.0, 16, 8, False),  # 8 busy + 8 threads fill the 16 cores exactly
    (10.0, 16, 8, True),  # 9 busy: crowded
])
def test_a_crowded_machine_gets_a_warning_naming_the_thread_count(load, cores, threads,
                                                                   crowded):
    warning = estimate_module.crowded_threads(load, cores, threads)
    assert (warning is not None) == crowded
    if crowded:
        free = round(cores - (load - 1))
        assert f"OMP_NUM_THREADS={max(1, free)}" in warning


@pytest.mark.parametrize("chosen", ["bf16-mixed", "32-true"])
def test_steps_are_timed_at_the_precision_training_uses(context, monkeypatch, chosen):
    seen = []
    build = estimate_module.build_separator

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda module, inputs: seen.append(torch.is_autocast_enabled("cpu")) if
            module.training else None)
        return model

    monkeypatch.setattr(estimate_module, "build_separator", recording)
    monkeypatch.setattr(estimate_module, "precision", lambda config: chosen)
    estimate_module._measure(context, "student", torch.device("cpu"))
    assert seen and all(s == (chosen == "bf16-mixed") for s in seen)
