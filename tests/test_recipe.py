"""The whole recipe on a tiny corpus: every stage's outputs, skipping finished stages,
redoing changed ones, and resuming a killed run to the same weights."""

import fcntl
import importlib.util
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from conftest import cli_recipe, make_corpus, read_metrics, tiny_overrides, write_config
from tsmixit.errors import ConfigError, TrainingError
from tsmixit.recipe import run_recipe
from tsmixit.training.checkpoints import load_checkpoint
from tsmixit.training.config import load_config

HAS_REPORT = importlib.util.find_spec("tsmixit.evaluation.report") is not None
TRAINING = ["teacher", "student", "finetune", "distill1_student", "distill1_finetune",
            "supervised_full", "supervised_fraction"]
LABELS = ["label", "distill1_label"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=16)


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    config = load_config(None, tiny_overrides(corpus, steps=8))
    stages = None if HAS_REPORT else TRAINING + LABELS + ["eval", "export"]
    result = run_recipe(config, run, stages=stages)
    return run, config, result, stages


def test_every_stage_leaves_its_outputs(full_run):
    run, config, result, _ = full_run
    assert set(result["stages"]) == set(TRAINING + LABELS)
    for name in TRAINING:
        folder = run / name
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["stage"] == name and summary["steps"] == 8
        assert not Path(summary["checkpoint"]).is_absolute()  # relative to the run folder
        assert (run / summary["checkpoint"]).is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        assert len(read_metrics(folder, "train_loss")) == 8
        assert read_metrics(folder, "val_si_snri")  # validated against true sources
        assert (folder / "tensorboard").is_dir()
        evaluation = json.loads((run / "eval" / f"{name}.json").read_text())
        assert evaluation["n_mixtures"] == 4
    for name in LABELS:
        summary = json.loads((run / name / "summary.json").read_text())
        assert summary["mixtures"] == 16 and not Path(summary["manifest"]).is_absolute()
        assert (run / summary["manifest"]).is_file()
    assert json.loads((run / "supervised_full" / "summary.json").read_text())[
        "labelled_mixtures"] == 16
    assert json.loads((run / "finetune" / "summary.json").read_text())[
        "labelled_mixtures"] == 6
    assert (run / "model" / "config.json").is_file()
    assert load_config(run / "config.yaml").to_dict() == config.to_dict()
    if HAS_REPORT:
        assert (run / "report.md").is_file()


def test_rerun_skips_finished_stages(full_run):
    run, config, result, stages = full_run
    stamps = {n: (run / n / "summary.json").stat().st_mtime_ns for n in result["stages"]}
    again = run_recipe(config, run, stages=stages)
    assert again["stages"] == result["stages"]
    assert {n: (run / n / "summary.json").stat().st_mtime_ns for n in result["stages"]} == stamps


def test_changed_stage_is_redone_with_everything_downstream(full_run):
    run, config, result, _ = full_run
    changed = load_config(run / "config.yaml", ["stages.finetune.max_steps=4"])
    out = run_recipe(changed, run, stages=["finetune", "distill", "eval"])
    assert out["stages"]["teacher"] == result["stages"]["teacher"]
    assert out["stages"]["student"] == result["stages"]["student"]
    assert out["stages"]["finetune"]["steps"] == 4
    for name in ("distill1_label", "distill1_student", "distill1_finetune"):
        assert out["stages"][name]["fingerprint"] != result["stages"][name]["fingerprint"]


def test_a_moved_run_keeps_its_stages_and_a_setting_redoes_only_its_readers(
        full_run, corpus, tmp_path):
    run, _, result, _ = full_run
    moved, moved_corpus = tmp_path / "run", tmp_path / "corpus"
    shutil.copytree(run, moved)
    shutil.copytree(corpus.parent, moved_corpus)
    for file in [*moved.rglob("*.json"), *moved.rglob("*.jsonl")]:
        name = file.relative_to(moved).parts[0]
        if name not in ("model", "report.json"):  # they name their origin; rewritten each call
            assert str(run.resolve()) not in file.read_text(), file
    here = [f"corpus.manifest={moved_corpus / corpus.name}"]

    def stamps() -> dict[str, int]:
        return {n: (moved / n / "summary.json").stat().st_mtime_ns for n in result["stages"]}

    before = stamps()
    out = run_recipe(load_config(moved / "config.yaml", here), moved, stages=TRAINING)
    assert stamps() == before
    assert Path(out["stages"]["label"]["manifest"]).parent == moved / "label"

    student_side = load_config(moved / "config.yaml", [*here, "model.student_consistency=energy"])
    teacher_side = load_config(moved / "config.yaml", [*here, "model.teacher_consistency=energy"])
    run_recipe(student_side, moved, stages=["student"])
    after = stamps()
    assert after["student"] != before["student"]
    assert (after["teacher"], after["label"]) == (before["teacher"], before["label"])
    run_recipe(teacher_side, moved, stages=["supervised_full"])
    assert stamps()["supervised_full"] == before["supervised_full"]


def test_a_run_folder_in_use_is_refused_until_it_is_free(corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, tiny_overrides(corpus, steps=2))
    with open(run / ".lock", "a+") as held:  # another recipe's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345")
        held.flush()
        with pytest.raises(TrainingError, match=f"{run} is in use .*pid 12345"):
            run_recipe(config, run, stages=["teacher"])
        assert not (run / "teacher").exists()
    assert run_recipe(config, run, stages=["teacher"])["stages"]["teacher"]["steps"] == 2


# The child process kills itself (SIGKILL, no clean-up) as the batch after its periodic
# checkpoint at step KILL_AT_STEP starts: a crash at a known step. (A poll from outside raced
# the next checkpoint and sometimes lost it to an epoch boundary.)
KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from lightning.pytorch.callbacks import ModelCheckpoint
from tsmixit.cli import main

def die_after_checkpoint(self, trainer, *args):
    if trainer.global_step >= int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)

ModelCheckpoint.on_train_batch_start = die_after_checkpoint
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_to_the_same_weights(corpus, tmp_path):
    # 4 batches per epoch, a checkpoint every 5 steps, killed after the third: mid-epoch.
    every, kill_at = 5, 15
    overrides = tiny_overrides(corpus, steps=40, **{"train.checkpoint_every": every,
                                                    "train.val_every": 8})
    config_path = write_config(tmp_path / "config.yaml", overrides)
    killed = tmp_path / "killed"
    proc = cli_recipe(config_path, killed, "--stages", "teacher",
                launcher=("-c", KILL_AFTER_CHECKPOINT), env={"KILL_AT_STEP": str(kill_at)})
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, output
    assert not (killed / "teacher" / "summary.json").exists()

    config = load_config(config_path)
    resumed = run_recipe(config, killed, stages=["teacher"])["stages"]["teacher"]
    assert kill_at % every == 0 and kill_at % 4 != 0
    assert resumed["resumed_from_step"] == kill_at and resumed["steps"] == 40
    steps = [int(s) for s in read_metrics(killed / "teacher", "step")]
    assert sorted(set(steps)) == list(range(40))  # one log across the interruption

    straight = run_recipe(config, tmp_path / "straight", stages=["teacher"])["stages"]["teacher"]
    a = load_checkpoint(Path(resumed["last_checkpoint"]))["state_dict"]
    b = load_checkpoint(Path(straight["last_checkpoint"]))["state_dict"]
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_multichannel_recipe_with_its_single_channel_companion(tmp_path):
    """2-microphone reverberant mixtures, model.channels=both: the spatial-encoder system in
    RUN, the microphone-0 system in RUN/mic0, one report comparing them."""
    corpus = make_corpus(tmp_path / "corpus", n_train=12, channels=2)
    config = load_config(None, tiny_overrides(corpus, steps=6, **{
        "model.channels": "both", "stages.finetune.enabled": False,
        "stages.distill.rounds": 0, "stages.supervised_full.enabled": False,
        "stages.supervised_fraction.enabled": False}))
    stages = None if HAS_REPORT else ["teacher", "label", "student", "eval", "export"]
    result = run_recipe(config, tmp_path / "run", stages=stages)
    assert set(result["stages"]) == {"teacher", "label", "student"}
    for run, channels in ((tmp_path / "run", 2), (tmp_path / "run" / "mic0", 1)):
        for system in ("teacher", "student"):
            evaluation = json.loads((run / "eval" / f"{system}.json").read_text())
            assert evaluation["n_channels"] == channels
        model = json.loads((run / "model" / "config.json").read_text())
        assert model["n_channels"] == channels
    assert json.loads((tmp_path / "run" / "teacher" / "stage.json").read_text())["config"][
        "model"]["channels"] == "all"
    if HAS_REPORT:
        report = (tmp_path / "run" / "report.md").read_text()
        assert "mic0" in report


def test_both_channel_layouts_on_single_channel_data_are_refused_before_training(
        corpus, tmp_path):
    from tsmixit.errors import ConfigError

    config = load_config(None, tiny_overrides(corpus, steps=6, **{"model.channels": "both"}))
    with pytest.raises(ConfigError, match="'both' needs multi-channel mixtures.*1 channel"):
        run_recipe(config, tmp_path / "run")
    assert not (tmp_path / "run" / "teacher").exists()


def test_quick_config_caps_every_budget():
    from tsmixit.training.config import BUDGET_STAGES, QUICK, quick_config, stage_budget

    config = load_config(Path(__file__).parent.parent / "configs" / "demo-scratch.yaml")
    quick = quick_config(config)
    for stage in BUDGET_STAGES:
        budget = stage_budget(quick, stage)
        assert (budget.max_steps, budget.max_minutes) == (QUICK["steps"], None)
    assert quick.data.segment_seconds == QUICK["segment_seconds"]
    assert config.data.segment_seconds == 2.0  # not mutated
    assert stage_budget(config, "teacher").max_steps == 2000
    # Distillation students have their own budget; without one they take the student's.
    assert stage_budget(config, "distill").max_steps == 600
    config.stages.distill.max_steps = None
    assert stage_budget(config, "distill") == stage_budget(config, "student")


def test_a_run_folder_of_the_previous_layout_is_refused_until_fresh(corpus, tmp_path):
    config = load_config(None, tiny_overrides(corpus, steps=2))
    run_recipe(config, tmp_path, stages=["teacher"])
    path = tmp_path / "teacher" / "summary.json"
    old = json.loads(path.read_text())
    for key in ("layout", "round", "order", "labels", "upstream"):
        old.pop(key)  # what the summaries of the previous layout held
    path.write_text(json.dumps(old))
    with pytest.raises(TrainingError, match="earlier version of tsmixit.*--fresh"):
        run_recipe(config, tmp_path, stages=["teacher"])
    result = run_recipe(config, tmp_path, stages=["teacher"], fresh=True)
    assert result["stages"]["teacher"]["layout"] == json.loads(path.read_text())["layout"]


def _as_wsj_folder(manifest_path: Path, folder: Path) -> Path:
    """The test rows of a manifest written out as a WSJ0-2mix test folder (tt/mix, s1, s2)."""
    import soundfile as sf

    from tsmixit.data.manifest import Manifest

    test = Manifest.load(manifest_path).select(split="test")
    for i, row in enumerate(test.rows):
        mixture, sources = test.load_example(i, False)
        for sub, wav in (("mix", mixture[0]), ("s1", sources[0]), ("s2", sources[1])):
            (folder / "tt" / sub).mkdir(parents=True, exist_ok=True)
            sf.write(folder / "tt" / sub / f"{row['id']}.wav", wav, row["sample_rate"],
                     subtype="FLOAT")
    return folder


def test_extra_test_sets_are_scored_for_every_system(full_run, corpus, tmp_path):
    """The corpus's own test mixtures, given again as a WSJ0-2mix folder, score the same."""
    run, _, result, _ = full_run
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    again = _as_wsj_folder(corpus, tmp_path / "again")
    config = load_config(moved / "config.yaml", [f"eval.extra_sets=['{again}']"])
    out = run_recipe(config, moved)
    assert set(out["eval_sets"]["again"]) == set(TRAINING)
    for system in TRAINING:
        main = json.loads((moved / "eval" / f"{system}.json").read_text())["per_mixture"]
        extra = json.loads((moved / "eval" / "sets" / "again" / f"{system}.json").read_text())
        assert [m["id"] for m in extra["per_mixture"]] == [f"test/{m['id']}" for m in main]
        for a, b in zip(main, extra["per_mixture"], strict=True):
            assert b["si_snri_topk"] == pytest.approx(a["si_snri_topk"], abs=1e-3)
    report = (moved / "report.md").read_text()
    assert "| again SI-SNRi / SDRi |" in report
    with pytest.raises(ConfigError, match="eval.extra_sets.*missing.*does not exist"):
        run_recipe(load_config(moved / "config.yaml",
                               [f"eval.extra_sets=['{tmp_path / 'missing'}']"]), moved)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="eval.extra_sets.*empty.*WSJ0-2mix"):
        run_recipe(load_config(moved / "config.yaml",
                               [f"eval.extra_sets=['{tmp_path / 'empty'}']"]), moved)
