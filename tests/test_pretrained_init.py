"""A recipe that starts from a pretrained separator (model.init): the "pretrained" stage, the
weights every randomly initialised stage starts from, its fingerprint, its errors."""

import json

import pytest
import torch

from conftest import RECIPE_SR, make_corpus, tiny_overrides
from tsmixit.errors import ConfigError, TrainingError
from tsmixit.evaluation.report import write_report
from tsmixit.model_files import save_model
from tsmixit.models.conv_tasnet import ConvTasNet
from tsmixit.recipe import run_recipe
from tsmixit.training.checkpoints import load_separator
from tsmixit.training.config import load_config
from tsmixit.training.plan import Plan
from tsmixit.training.systems import init_from_teacher


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def read_report(run):
    write_report(run)
    return (run / "report.json").read_text()


def save_tiny(folder, seed, sample_rate=RECIPE_SR):
    torch.manual_seed(seed)
    model = ConvTasNet.from_preset("tiny", n_sources=2, consistency="uniform")
    save_model(model, folder, sample_rate, {"system": "made in the test"})
    return model


def test_a_wider_model_keeps_the_first_outputs_rows_and_its_own_for_the_rest():
    torch.manual_seed(0)
    narrow = ConvTasNet.from_preset("tiny", n_sources=2)
    wide = ConvTasNet.from_preset("tiny", n_sources=4)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    assert init_from_teacher(wide, narrow) == []
    theirs, mine = narrow.state_dict(), wide.state_dict()
    for name, value in mine.items():
        if theirs[name].shape == value.shape:
            assert torch.equal(value, theirs[name]), name
        else:  # an output layer: rows of outputs 1-2 copied, of outputs 3-4 untouched
            rows = theirs[name].shape[0]
            assert value.shape[0] == 2 * rows
            assert torch.equal(value[:rows], theirs[name]), name
            assert torch.equal(value[rows:], before[name][rows:]), name


def test_every_random_start_begins_at_the_pretrained_weights(corpus, tmp_path):
    pretrained = save_tiny(tmp_path / "model", seed=7)
    # A learning rate of 1e-12 moves no weight measurably in 2 steps: the trained weights
    # are the weights it started from.
    overrides = tiny_overrides(corpus, steps=2, **{"model.init": str(tmp_path / "model"),
                                                    "train.lr": 1e-12})
    config = load_config(None, overrides)
    plan = Plan(config)
    assert plan.stages[0].kind == "pretrained"
    starts = {st.name: st.init for st in plan.stages}
    assert starts["teacher"] == starts["supervised_full"] == "pretrained"
    assert starts["finetune"] == "student" and starts["label"] is None
    result = run_recipe(config, tmp_path / "run",
                        stages=["pretrained", "teacher", "supervised_full", "eval"])
    want = pretrained.state_dict()
    supervised = load_separator(result["stages"]["supervised_full"]["checkpoint"]).state_dict()
    for name, value in supervised.items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-9)
    teacher = load_separator(result["stages"]["teacher"]["checkpoint"]).state_dict()
    mask = next(n for n in teacher if teacher[n].shape != want[n].shape)
    torch.testing.assert_close(teacher[mask][: want[mask].shape[0]], want[mask], rtol=0,
                               atol=1e-9)
    # The pretrained separator is scored alone, like any system.
    scored = json.loads((tmp_path / "run" / "eval" / "pretrained.json").read_text())
    assert scored["n_outputs"] == 2 and "si_snri_topk" in scored["mean"]
    rows = json.loads(read_report(tmp_path / "run"))["rows"]
    assert rows[0]["label"] == "Pretrained separator, not adapted"
    assert rows[0]["si_snri"] == scored["mean"]["si_snri_topk"]


def test_another_pretrained_file_redoes_what_starts_from_it(corpus, tmp_path):
    save_tiny(tmp_path / "a", seed=1)
    save_tiny(tmp_path / "b", seed=2)
    plans = [Plan(load_config(None, tiny_overrides(corpus, **{"model.init": str(tmp_path / m)})))
             for m in ("a", "b")]
    assert plans[0].stages[0].sections != plans[1].stages[0].sections  # the weights' hash


def test_bad_starting_models_are_refused_by_name(corpus, tmp_path):
    with pytest.raises(ConfigError, match="'model.init'.*not a model folder"):
        load_config(None, tiny_overrides(corpus, **{"model.init": str(tmp_path / "none")}))
    save_tiny(tmp_path / "16k", seed=0, sample_rate=16000)
    config = load_config(None, tiny_overrides(corpus, **{"model.init": str(tmp_path / "16k")}))
    with pytest.raises(TrainingError, match="16000 Hz audio, the corpus is 8000 Hz"):
        run_recipe(config, tmp_path / "run", stages=["pretrained"])


def test_quick_runs_keep_the_size_of_the_pretrained_start(corpus, tmp_path):
    from tsmixit.training.config import quick_config

    save_tiny(tmp_path / "model", seed=1)
    plain = load_config(None, tiny_overrides(corpus, **{"model.preset": "small"}))
    assert quick_config(plain).model.preset == "tiny"
    started = load_config(None, tiny_overrides(corpus, **{
        "model.preset": "small", "model.init": str(tmp_path / "model")}))
    assert quick_config(started).model.preset == "small"


def test_remixit_adapts_the_pretrained_separator_as_its_teacher(corpus, tmp_path):
    """stages.remixit.teacher: pretrained plans RemixIT from the pretrained stage: its frozen
    teacher (a frozen teacher is never updated) holds the pretrained weights exactly after
    training, and without model.init the setting is refused by name."""
    pretrained = save_tiny(tmp_path / "model", seed=3)
    overrides = tiny_overrides(corpus, steps=2, **{
        "model.init": str(tmp_path / "model"), "stages.remixit.enabled": "true",
        "stages.remixit.teacher": "pretrained", "stages.remixit.teacher_update": "frozen"})
    config = load_config(None, overrides)
    remixit = next(st for st in Plan(config).stages if st.name == "remixit")
    assert remixit.teacher == remixit.init == "pretrained"
    result = run_recipe(config, tmp_path / "run", stages=["pretrained", "remixit"])
    checkpoint = torch.load(result["stages"]["remixit"]["checkpoint"], weights_only=False)
    teacher = {k.removeprefix("teacher."): v for k, v in checkpoint["state_dict"].items()
               if k.startswith("teacher.")}
    for name, value in pretrained.state_dict().items():
        assert torch.equal(teacher[name], value), name
    with pytest.raises(ConfigError, match="'stages.remixit.teacher' is 'pretrained' but "
                                          "model.init is not set"):
        load_config(None, tiny_overrides(corpus, **{"stages.remixit.enabled": "true",
                                                    "stages.remixit.teacher": "pretrained"}))
