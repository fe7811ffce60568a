"""The stage plan of a TS-MixIT recipe (Zhang et al., Interspeech 2021) and its fingerprints.

With ``model.init`` (a pretrained separator), a stage "pretrained" comes first: it trains
nothing, it names the model (scored alone in the report), and every stage that would start
from random weights starts from it.

Round 0 is the first pass: teacher (MixIT, M outputs) -> label (its k most energetic
outputs per training mixture) -> student (PIT on those, k outputs) -> finetune (PIT on the
labelled fraction). Distillation round r >= 1 makes the previous round's last model the
teacher: label -> student -> finetune again. The supervised baselines stand outside the
chain (round None): PIT on all training sources ("all") or on the labelled fraction only.

A stage's fingerprint hashes the config it reads (the shared sections less the execution
settings and the model keys its kind never reads, plus its own sections) and the
fingerprints of the stages it reads from: a change anywhere upstream redoes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tsmixit.errors import ConfigError
from tsmixit.training.config import RecipeConfig, stage_budget
from tsmixit.training.run_folder import stable_hash

StageKind = Literal["pretrained", "teacher", "label", "student", "finetune", "supervised",
                    "semi_mixit", "sparse_mixit", "remixit", "self_remixing"]
Labels = Literal["none", "fraction", "all"]

#: Keys that change how a stage runs, not what it computes: outside every fingerprint.
EXECUTION_KEYS = {
    "data": ("num_workers",),
    "train": ("accelerator", "devices", "num_nodes", "strategy", "progress", "log_every",
              "checkpoint_every"),
}
#: Keys added after run folders existed: outside the fingerprint while off (None), so a
#: finished stage of an older run is not redone.
LATER_KEYS = {"train": ("ema_decay",)}
#: Model keys a kind of stage never reads (a student setting does not retrain the teacher).
#: The teacher and the labeller read k = student_outputs: the top-k outputs they keep.
UNREAD_MODEL_KEYS = {"teacher": ("student_consistency",), "label": ("student_consistency",),
                     "supervised": ("teacher_outputs", "teacher_consistency", "mixit"),
                     "semi_mixit": ("student_consistency",),
                     "sparse_mixit": ("teacher_outputs", "student_consistency", "mixit")}
#: Steps of `--stages` that are not stages: every distillation round, and the run's ends.
STEPS = ("distill", "eval", "export", "report")


@dataclass(frozen=True)
class Stage:
    """One stage: ``name`` is its folder in RUN and the name of the system it trains.

    budget: the ``stages.<budget>`` section holding its budget and learning rate.
    teacher: the stage whose model labels the mixtures (label) or the student's teacher.
    labels_from: the label stage whose pseudo-targets a student learns.
    init: the stage whose weights it starts from (None: random initialisation), every
        tensor whose shape fits (`tsmixit.training.fit.fit` copies them before training).
    labels: which true sources it trains on.
    sections: the config it reads beyond the shared sections (part of its fingerprint).
    """

    name: str
    kind: StageKind
    round: int | None
    order: int
    budget: str | None = None
    teacher: str | None = None
    labels_from: str | None = None
    init: str | None = None
    labels: Labels = "none"
    sections: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def upstream(self) -> tuple[str, ...]:
        """The stages whose outputs this one reads."""
        names = (self.labels_from, self.teacher, self.init)
        return tuple(dict.fromkeys(n for n in names if n is not None))

    def record(self) -> dict[str, Any]:
        """What a summary records of its stage (the report names and orders systems by it)."""
        return {"stage": self.name, "system": self.name, "kind": self.kind,
                "round": self.round, "order": self.order, "labels": self.labels,
                "upstream": list(self.upstream)}


def label_mode(config: RecipeConfig) -> str:
    """"disk" or "fly" ("auto": on the fly when the student trains exactly one epoch)."""
    mode = config.stages.label.mode
    if mode != "auto":
        return mode
    budget = stage_budget(config, "student")
    return "fly" if budget.max_epochs == 1 and budget.max_steps is None else "disk"


class Plan:
    """The stages a config asks for, in order, and the subset `--stages` selects."""

    def __init__(self, config: RecipeConfig, only: list[str] | None = None) -> None:
        self.stages = _stages(config)
        self.only = set(only) if only else None
        unknown = sorted((self.only or set()) - self.selectable())
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; choose from "
                              f"{sorted(self.selectable())}")

    def selectable(self) -> set[str]:
        return {st.name for st in self.stages} | set(STEPS)

    def wanted(self, name: str) -> bool:
        """Whether `--stages` asks for a stage or step (all of them without `--stages`)."""
        if self.only is None or name in self.only:
            return True
        stage = next((st for st in self.stages if st.name == name), None)
        return stage is not None and bool(stage.round) and "distill" in self.only


def _stages(config: RecipeConfig) -> list[Stage]:
    s = config.stages
    label_sections = {"label": s.label, "mode": label_mode(config)}
    plan: list[Stage] = []
    pretrained = None

    def add(name: str, kind: StageKind, round_: int | None, **fields: Any) -> str:
        if fields.get("budget") and fields.get("init") is None:
            fields["init"] = pretrained  # None without model.init: random weights
        plan.append(Stage(name, kind, round_, len(plan), **fields))
        return name

    if config.model.init is not None:
        from tsmixit.models.folder import model_digest

        pretrained = add("pretrained", "pretrained", None,
                         sections={"model": model_digest(config.model.init)})
    teacher = teacher_0 = add("teacher", "teacher", 0, budget="teacher",
                              sections={"teacher": s.teacher})
    labels = add("label", "label", 0, teacher=teacher, sections=label_sections)
    last = add("student", "student", 0, budget="student", teacher=teacher, labels_from=labels,
               init=teacher if s.student.init == "teacher" else None,
               sections={"student": s.student})
    if s.finetune.enabled:
        last = add("finetune", "finetune", 0, budget="finetune", init=last, labels="fraction",
                   sections={"finetune": s.finetune})
    for r in range(1, s.distill.rounds + 1):
        teacher = last
        labels = add(f"distill{r}_label", "label", r, teacher=teacher, sections=label_sections)
        last = add(f"distill{r}_student", "student", r, budget="distill", teacher=teacher,
                   labels_from=labels, init=teacher if s.distill.init == "teacher" else None,
                   sections={"student": s.student, "distill": s.distill})
        if s.finetune.enabled:
            last = add(f"distill{r}_finetune", "finetune", r, budget="finetune", init=last,
                       labels="fraction", sections={"finetune": s.finetune})
    for name, labels_used in (("supervised_full", "all"), ("supervised_fraction", "fraction")):
        if getattr(s, name).enabled:
            add(name, "supervised", None, budget=name, labels=labels_used,
                sections={name: getattr(s, name)})
    # The mixture-only methods beside TS-MixIT (round None: outside its chain).
    if s.semi_mixit.enabled:
        add("semi_mixit", "semi_mixit", None, budget="semi_mixit", labels="fraction",
            sections={"semi_mixit": s.semi_mixit})
    if s.sparse_mixit.enabled:
        add("sparse_mixit", "sparse_mixit", None, budget="sparse_mixit",
            sections={"sparse_mixit": s.sparse_mixit})
    if s.remixit.enabled:
        start = s.remixit.teacher  # "teacher", "supervised_fraction" or "pretrained": planned above
        add("remixit", "remixit", None, budget="remixit", teacher=start,
            init=start if s.remixit.init == "teacher" else None, sections={"remixit": s.remixit})
    if s.self_remixing.enabled:
        add("self_remixing", "self_remixing", None, budget="self_remixing", teacher=teacher_0,
            init=teacher_0 if s.self_remixing.init == "teacher" else None,
            sections={"self_remixing": s.self_remixing})
    return plan


def shared_sections(config: RecipeConfig, corpus_key: str, kind: str | None = None) -> dict:
    """The config every stage reads, less execution settings and the model keys that a
    `kind` of stage does not read."""
    cfg = config.to_dict()
    for section, keys in {**EXECUTION_KEYS, "model": UNREAD_MODEL_KEYS.get(kind, ())}.items():
        for key in keys:
            cfg[section].pop(key, None)
    for section, keys in LATER_KEYS.items():
        for key in keys:
            if cfg[section].get(key) is None:
                cfg[section].pop(key, None)
    return {"corpus": corpus_key, "model": cfg["model"], "data": cfg["data"],
            "train": cfg["train"]}


def fingerprint(stage: Stage, config: RecipeConfig, corpus_key: str,
                upstream: dict[str, str]) -> str:
    """The hash of what `stage` computes from: its config and its upstream fingerprints."""
    sections = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                for k, v in stage.sections.items()}
    return stable_hash({"shared": shared_sections(config, corpus_key, stage.kind),
                        "stage": sections, "upstream": [upstream[u] for u in stage.upstream],
                        "name": stage.name})
