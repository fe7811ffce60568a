"""Recipe config: YAML + overrides, typed, validated before any work."""

from pathlib import Path

import pytest

from tsmixit.errors import ConfigError
from tsmixit.training.config import RecipeConfig, load_config, stage_budget

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_follow_the_paper():
    config = load_config(None, ["train.max_steps=10"])
    assert (config.model.teacher_outputs, config.model.student_outputs) == (4, 2)
    assert config.train.lr == 1e-3 and config.train.grad_clip == 5.0
    assert config.train.plateau_factor == 0.5
    assert config.stages.distill.rounds == 1


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 100\nmodel:\n  preset: tiny\n")
    config = load_config(path, ["train.max_steps=7", "train.lr=1e-4", "model.options.X=3",
                                "stages.finetune.max_steps=3", "train.devices=[0, 1]"])
    assert config.train.max_steps == 7
    assert config.train.lr == pytest.approx(1e-4)  # YAML reads "1e-4" as a string
    assert config.model.options == {"X": 3}
    assert config.train.devices == [0, 1]
    assert stage_budget(config, "finetune").max_steps == 3
    assert stage_budget(config, "teacher").max_steps == 7
    round_trip = tmp_path / "resolved.yaml"
    round_trip.write_text(config.to_yaml())
    assert load_config(round_trip).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.max_step=5"], "train.max_step"),
        (["trian.max_steps=5"], "trian"),
        (["train.max_steps=ten"], "train.max_steps"),
        (["train.max_steps=2.5"], "train.max_steps"),
        (["train.max_steps=-3"], "train.max_steps"),
        (["train.max_steps=5", "stages.student.max_steps=-1"], "stages.student.max_steps"),
        (["train.max_steps=5", "model.student_outputs=5"], "model.student_outputs"),
        (["train.max_steps=5", "train.progress=yes please"], "train.progress"),
        (["train.max_steps=5", "stages.label.mode=cloud"], "stages.label.mode"),
        (["train.max_steps=5", "model.preset=huge"], "model.preset"),
        (["train.max_steps=5", "model.options.Q=3"], "model.options.Q"),
        (["train.max_steps=5", "model.options.n_sources=3"], "model.options.n_sources"),
        (["train.max_steps=5", "data.single_mixture_prob=1.5"], "data.single_mixture_prob"),
        ([], "train.max_steps"),  # no budget at all
    ],
)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, overrides)


def test_bad_files_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.max_steps"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert isinstance(config, RecipeConfig)
    assert stage_budget(config, "teacher").lr > 0


@pytest.mark.parametrize("arch, options, name", [
    ("conv_tasnet", "{L: 3}", "L"), ("dprnn", "{K: 3}", "K"), ("conv_tasnet", "{X: 0}", "X"),
])
def test_an_impossible_separator_size_is_refused_at_load_by_name(arch, options, name):
    with pytest.raises(ConfigError, match=rf" {name} must"):
        load_config(None, ["train.max_steps=5", f"model.arch={arch}", "model.preset=tiny",
                           f"model.options={options}"])
    with pytest.raises(ConfigError, match="model.arch='nope'.*conv_tasnet"):
        load_config(None, ["train.max_steps=5", "model.arch=nope"])
