"""The stage plan: typed stages, selection with --stages, fingerprints."""

import pytest

from tsmixit.errors import ConfigError
from tsmixit.training.config import load_config
from tsmixit.training.plan import Plan, fingerprint

BUDGET = ["train.max_steps=10"]


def _plan(*overrides: str, only=None) -> Plan:
    return Plan(load_config(None, BUDGET + list(overrides)), only)


def test_the_default_plan_is_the_papers_chain_then_the_baselines():
    plan = _plan("stages.distill.rounds=2")
    table = [(s.name, s.kind, s.round, s.order, s.upstream) for s in plan.stages]
    assert table == [
        ("teacher", "teacher", 0, 0, ()),
        ("label", "label", 0, 1, ("teacher",)),
        ("student", "student", 0, 2, ("label", "teacher")),
        ("finetune", "finetune", 0, 3, ("student",)),
        ("distill1_label", "label", 1, 4, ("finetune",)),
        ("distill1_student", "student", 1, 5, ("distill1_label", "finetune")),
        ("distill1_finetune", "finetune", 1, 6, ("distill1_student",)),
        ("distill2_label", "label", 2, 7, ("distill1_finetune",)),
        ("distill2_student", "student", 2, 8, ("distill2_label", "distill1_finetune")),
        ("distill2_finetune", "finetune", 2, 9, ("distill2_student",)),
        ("supervised_full", "supervised", None, 10, ()),
        ("supervised_fraction", "supervised", None, 11, ()),
    ]
    by_name = {s.name: s for s in plan.stages}
    # Budgets, inits and labels as the config says: distilled students start from the
    # fine-tuned model (stages.distill.init = teacher), the first student from scratch.
    assert by_name["distill1_student"].budget == "distill"
    assert by_name["distill1_student"].init == "finetune"
    assert by_name["student"].init is None
    assert [s.labels for s in plan.stages if s.kind == "supervised"] == ["all", "fraction"]
    assert by_name["finetune"].labels == "fraction" and by_name["student"].labels == "none"


def test_without_finetuning_a_round_distils_the_student():
    plan = _plan("stages.finetune.enabled=false", "stages.supervised_fraction.enabled=false")
    names = [s.name for s in plan.stages]
    assert names == ["teacher", "label", "student", "distill1_label", "distill1_student",
                     "supervised_full"]
    assert plan.stages[3].teacher == "student"


def test_stages_selects_stages_and_every_distillation_round():
    plan = _plan("stages.distill.rounds=2", only=["distill", "eval"])
    wanted = [s.name for s in plan.stages if plan.wanted(s.name)]
    assert wanted == [f"distill{r}_{k}" for r in (1, 2) for k in ("label", "student",
                                                                  "finetune")]
    assert plan.wanted("eval") and not plan.wanted("report")
    with pytest.raises(ConfigError, match="unknown stage.*'techer'"):
        _plan(only=["techer"])


def test_a_fingerprint_follows_its_config_and_its_upstream():
    config = load_config(None, BUDGET)
    plan = Plan(config)
    fps: dict[str, str] = {}
    for stage in plan.stages:
        fps[stage.name] = fingerprint(stage, config, "corpus-a", fps)
    assert len(set(fps.values())) == len(fps)  # every stage its own
    # A student setting leaves the teacher alone but changes the student and what follows.
    other = load_config(None, BUDGET + ["model.student_consistency=energy"])
    changed: dict[str, str] = {}
    for stage in Plan(other).stages:
        changed[stage.name] = fingerprint(stage, other, "corpus-a", changed)
    assert changed["teacher"] == fps["teacher"] and changed["label"] == fps["label"]
    assert changed["student"] != fps["student"]
    assert changed["distill1_label"] != fps["distill1_label"]  # its teacher changed upstream
    # Execution settings are not part of any fingerprint; the corpus is part of all.
    fast = load_config(None, BUDGET + ["data.num_workers=2", "train.progress=false"])
    assert fingerprint(plan.stages[0], fast, "corpus-a", {}) == fps["teacher"]
    assert fingerprint(plan.stages[0], config, "corpus-b", {}) != fps["teacher"]
