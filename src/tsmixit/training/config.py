"""The recipe config: one typed, validated object per run, loaded from YAML with
command-line overrides (``train.max_steps=50``). Every check runs before any work, and every
error names the offending key.

Symbols: M = ``model.teacher_outputs`` (MixIT teacher outputs), k = ``model.student_outputs``
(student outputs = pseudo-targets kept per mixture, the k most energetic teacher outputs).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tsmixit.errors import ConfigError
from tsmixit.training.stage_config import DistillStage, StageBudget, StagesConfig, check_stages


@dataclass
class CorpusConfig:
    """Where the mixtures come from: a manifest on disk, or the embedded corpus built into
    RUN/corpus from a preset (``build_corpus(preset=..., seed=..., **options)``)."""

    manifest: str | None = None
    preset: str | None = "demo"
    seed: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The separator (``arch``, a preset and overrides) shared by every system; M and k;
    the MixIT loss; which channels."""

    arch: str = "conv_tasnet"
    preset: str = "small"
    options: dict = field(default_factory=dict)
    teacher_outputs: int = 4
    student_outputs: int = 2
    teacher_consistency: Literal["uniform", "energy"] | None = "uniform"
    student_consistency: Literal["uniform", "energy"] | None = "uniform"
    # The teacher's MixIT loss: "exact" scores all 2^M assignments, "least_squares" one
    # projected least-squares assignment (Wisdom et al., WASPAA 2021; for M = 8 or 16).
    mixit: Literal["exact", "least_squares"] = "exact"
    # A model every stage that would start from random weights starts from instead (every
    # tensor whose shape fits): a model folder (RUN/model), or "pretrained" (the separator
    # shipped in the package). The report then scores it alone too ("pretrained" stage).
    init: str | None = None
    # "all": a multi-channel model sees every microphone; "reference": microphone 0 only;
    # "both": all microphones in RUN, plus the same recipe on microphone 0 in RUN/mic0 (the
    # single- vs multi-channel comparison of the report).
    channels: Literal["all", "reference", "both"] = "all"


@dataclass
class DataConfig:
    segment_seconds: float = 4.0
    batch_size: int = 4
    num_workers: int = 0
    # Probability that a mixture of mixtures holds one mixture only (x2 = 0): varies the
    # source count seen by MixIT, against its collapse on always-4-speaker MoMs.
    single_mixture_prob: float = 0.0
    # Validation crops; None = full-length mixtures (batch 1).
    valid_segment_seconds: float | None = None
    valid_max_mixtures: int | None = None


@dataclass
class TrainConfig:
    """Defaults for every training stage; stages.<name> may override the budget and lr."""

    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    lr: float = 1e-3
    grad_clip: float = 5.0
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    # Decay d of an exponential moving average of the weights (Polyak averaging; horizon
    # about 1 / (1 - d) steps): validation, checkpoints and exported models use the average.
    # None: off.
    ema_decay: float | None = None
    val_every: int = 200
    # Steps between resumable checkpoints (checkpoints/last.ckpt); None = val_every.
    checkpoint_every: int | None = None
    log_every: int = 10
    seed: int = 0
    # Lightning's precision ("32-true", "bf16-mixed", ...) or "auto": bf16-mixed where the
    # separator has a CPU bf16 path and this CPU's bf16 units are faster (training/fit.py).
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    deterministic: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    split: Literal["train", "valid", "test"] = "test"
    active_threshold_db: float = -20.0
    max_mixtures: int | None = None
    # Test mixtures kept per system for listening (the first rows of the test set, the same
    # for every system): RUN/eval/examples/<system>/, shown by `tsmixit serve --run`.
    examples: int = 3
    # Test sets beside the corpus's own: manifests or WSJ0-2mix folders (their "test" rows,
    # at most max_mixtures), each scored for every system; one column each in the report.
    extra_sets: list[str] = field(default_factory=list)
    # The real-voice test set (tsmixit.corpus.real_voices: two real people, measuring only),
    # built once into RUN/real-voices and scored like an extra set; without its two Debian
    # packages (make voices-apt) the run warns, finishes and says how to add it.
    real_voices: bool = False


@dataclass
class RecipeConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


BUDGET_STAGES = (
    "teacher", "student", "finetune", "distill", "supervised_full", "supervised_fraction",
    "semi_mixit", "sparse_mixit", "remixit", "self_remixing",
)


@dataclass(frozen=True)
class Budget:
    """A stage's resolved budget (None = unbounded on that axis) and learning rate."""

    max_steps: int | None
    max_epochs: int | None
    max_minutes: float | None
    lr: float


def stage_budget(config: RecipeConfig, name: str) -> Budget:
    """The budget of training stage `name` (one of BUDGET_STAGES): its own fields where set,
    else the train section's."""
    stage: StageBudget | DistillStage = getattr(config.stages, name)
    t = config.train
    fallback = (stage_budget(config, "student") if name == "distill"
                else Budget(t.max_steps, t.max_epochs, t.max_minutes, t.lr))
    own = (stage.max_steps, stage.max_epochs, stage.max_minutes)
    steps, epochs, minutes = own if any(v is not None for v in own) else (
        fallback.max_steps, fallback.max_epochs, fallback.max_minutes)
    return Budget(steps, epochs, minutes, stage.lr if stage.lr is not None else fallback.lr)


#: The smoke-test version of a config (`quick_config`).
QUICK = {"steps": 8, "val_every": 4, "label_mixtures": 16, "eval_mixtures": 6, "valid": 6,
         "preset": "tiny", "segment_seconds": 1.0, "batch_size": 2}


def quick_config(config: RecipeConfig) -> RecipeConfig:
    """A smoke-test version of `config` (minutes on a CPU): the tiny preset (unless the run
    starts from a pretrained separator), a few steps per stage on short crops, few mixtures
    labelled, validated and evaluated."""
    c = dataclasses.replace(config)  # shallow; every section below is replaced, not mutated
    stages = dataclasses.replace(config.stages)
    for name in BUDGET_STAGES:
        setattr(stages, name, dataclasses.replace(
            getattr(config.stages, name), max_steps=QUICK["steps"], max_epochs=None,
            max_minutes=None))
    stages.label = dataclasses.replace(config.stages.label, max_mixtures=QUICK["label_mixtures"])
    c.stages = stages
    c.train = dataclasses.replace(config.train, val_every=QUICK["val_every"])
    c.data = dataclasses.replace(config.data, valid_max_mixtures=QUICK["valid"],
                                 segment_seconds=QUICK["segment_seconds"],
                                 batch_size=QUICK["batch_size"])
    # A pretrained start (model.init) fixes the size: its weights must fit the separator.
    preset = QUICK["preset"] if config.model.init is None else config.model.preset
    c.model = dataclasses.replace(config.model, preset=preset)
    c.eval = dataclasses.replace(config.eval, max_mixtures=QUICK["eval_mixtures"])
    return c


def parse_value(text: str) -> Any:
    """A command-line value parsed as YAML so that numbers, booleans and lists keep their
    type; numbers such as `5e-4`, which YAML 1.1 reads as strings, become floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """["a.b=value", ...] -> {"a.b": value}; ConfigError for a pair that is not key=value."""
    out = {}
    for text in pairs:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {text!r} must read key=value, e.g. train.max_steps=50")
        out[key.strip()] = parse_value(raw)
    return out


# ---------------------------------------------------------------------------------------
# Building and checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float; YAML's
    '1e-3' strings read as floats). Raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"config key {key!r} must not be null (expected {_type_name(tp)})")
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise ConfigError(f"config key {key!r} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise ConfigError(f"config key {key!r}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"config section {prefix!r}" if prefix else "the config"
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(
                f"unknown config key {full!r}; known keys here: {', '.join(names)}"
            )
    kwargs = {
        name: _coerce(data[name], hints[name], f"{prefix}.{name}" if prefix else name)
        for name in names
        if name in data
    }
    return cls(**kwargs)


def _check(config: RecipeConfig) -> None:
    """Value checks that types cannot express; each error names its key."""

    def positive(key: str, value, allow_zero: bool = False) -> None:
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            bound = "non-negative" if allow_zero else "positive"
            raise ConfigError(f"config key {key!r} must be {bound}, got {value!r}")

    m, d, t = config.model, config.data, config.train
    positive("model.teacher_outputs", m.teacher_outputs)
    positive("model.student_outputs", m.student_outputs)
    if m.student_outputs > m.teacher_outputs:
        raise ConfigError(
            f"config key 'model.student_outputs' (k = {m.student_outputs}) must not exceed "
            f"'model.teacher_outputs' (M = {m.teacher_outputs}): the student keeps k of the "
            "teacher's M outputs"
        )
    if m.teacher_outputs < 2:
        raise ConfigError("config key 'model.teacher_outputs' must be at least 2 for MixIT")
    for key in ("n_sources", "n_channels", "consistency"):
        if key in m.options:
            raise ConfigError(
                f"config key 'model.options.{key}' is set by the recipe; use "
                "model.teacher_outputs / model.student_outputs / model.*_consistency / "
                "model.channels instead"
            )
    positive("data.segment_seconds", d.segment_seconds)
    positive("data.batch_size", d.batch_size)
    positive("data.num_workers", d.num_workers, allow_zero=True)
    positive("data.valid_segment_seconds", d.valid_segment_seconds)
    positive("data.valid_max_mixtures", d.valid_max_mixtures)
    if not 0.0 <= d.single_mixture_prob <= 1.0:
        raise ConfigError("config key 'data.single_mixture_prob' must lie in [0, 1]")
    for name in ("max_steps", "max_epochs", "max_minutes"):
        positive(f"train.{name}", getattr(t, name))
    positive("train.checkpoint_every", t.checkpoint_every)
    for name in ("lr", "grad_clip", "val_every", "log_every", "num_nodes", "plateau_patience"):
        positive(f"train.{name}", getattr(t, name), allow_zero=name == "grad_clip")
    if not 0.0 < t.plateau_factor < 1.0:
        raise ConfigError("config key 'train.plateau_factor' must lie in (0, 1)")
    if t.ema_decay is not None and not 0.0 < t.ema_decay < 1.0:
        raise ConfigError("config key 'train.ema_decay' must lie in (0, 1), e.g. 0.999 "
                          "(an average over about 1000 steps), or be null (off)")
    for stage in BUDGET_STAGES:
        budget = getattr(config.stages, stage)
        for name in ("max_steps", "max_epochs", "max_minutes", "lr"):
            positive(f"stages.{stage}.{name}", getattr(budget, name))
        resolved = stage_budget(config, stage)
        unbounded = (resolved.max_steps, resolved.max_epochs, resolved.max_minutes) == (
            None, None, None,
        )
        if getattr(budget, "enabled", True) and unbounded:
            raise ConfigError(
                f"stage {stage!r} has no training budget: set train.max_steps, "
                f"train.max_epochs or train.max_minutes (or stages.{stage}.max_steps ...)"
            )
    for stage in ("teacher", "student"):
        if not getattr(config.stages, stage).enabled:
            raise ConfigError(
                f"config key 'stages.{stage}.enabled' cannot be false: every TS-MixIT run "
                "trains a teacher and a student (use --stages to run only some stages)"
            )
    positive("stages.distill.rounds", config.stages.distill.rounds, allow_zero=True)
    check_stages(config.stages, config.data.batch_size, config.model.student_outputs,
                 config.model.init)
    positive("stages.label.max_mixtures", config.stages.label.max_mixtures)
    positive("eval.max_mixtures", config.eval.max_mixtures)
    positive("eval.examples", config.eval.examples)
    if config.corpus.manifest is None and config.corpus.preset is None:
        raise ConfigError("set config key 'corpus.manifest' (a manifest.jsonl) or 'corpus.preset'")
    _check_model(config)


def _check_model(config: RecipeConfig) -> None:
    """The architecture is registered, its preset exists and the overrides are its
    constructor's arguments."""
    import inspect

    from tsmixit.models.registry import separator_class

    m = config.model
    cls = separator_class(m.arch)
    if m.preset not in cls.presets:
        raise ConfigError(
            f"config key 'model.preset' must be one of {', '.join(cls.presets)} for "
            f"model.arch={m.arch!r}, got {m.preset!r}"
        )
    if m.init is not None:
        from tsmixit.models.folder import resolve_model_path

        if not resolve_model_path(m.init).is_dir():
            raise ConfigError(f"config key 'model.init': {m.init} is not a model folder; give "
                              "one (RUN/model, or `tsmixit export`) or 'pretrained'")
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key in m.options:
        if key not in known:
            raise ConfigError(
                f"unknown config key 'model.options.{key}'; {cls.__name__} takes "
                f"{', '.join(sorted(known))}"
            )
    # An impossible size is refused now, by name, not when the first stage builds the model
    # (built on the meta device: no memory, no random numbers drawn).
    import torch

    with torch.device("meta"):
        cls.from_preset(m.preset, n_sources=m.teacher_outputs, **m.options)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set data['a']['b'] = value for 'a.b'; ConfigError naming the key if a part is a value."""
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict | None, overrides: list[str] | dict | None = None) -> RecipeConfig:
    """Build and validate a RecipeConfig from a nested mapping plus overrides: a list of
    "a.b=value" strings (`parse_value`) or a {"a.b": value} mapping."""
    merged = _deep_copy(data or {})
    pairs = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    for key, value in pairs.items():
        _set_dotted(merged, key, value)
    config = _build(RecipeConfig, merged, "")
    _check(config)
    return config


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(
    yaml_path: str | Path | None, overrides: list[str] | dict | None = None
) -> RecipeConfig:
    """Read a recipe YAML (None: defaults only), apply overrides, validate."""
    data: dict = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    return config_from_dict(data, overrides)
