"""The TS-MixIT recipe (Zhang, Zorila, Doddipatla & Barker, Interspeech 2021) as one
resumable run folder RUN (its layout: `tsmixit.training.run_folder`):

    splits   <- the corpus: a manifest, or the embedded corpus built into RUN/corpus
    for each stage of the plan (`tsmixit.training.plan`), in order:
        teacher    MixIT on mixtures of mixtures, M outputs
        label      the teacher's k most energetic outputs per training mixture
        student    PIT on those pseudo-targets, k outputs
        finetune   PIT on the labelled fraction
        distill<r> label / student / finetune again, the last model as teacher
        supervised the baselines: PIT on all sources, and on the labelled fraction
        skip it when its summary holds its current fingerprint, else (re)run it there
    evaluate every system on the test split and the extra sets (eval.extra_sets, and with
    eval.real_voices the real-voice test set built once into RUN/real-voices); export the
    best student; write the report

An interrupted stage resumes from its last checkpoint. With ``model.channels = "both"``
the same recipe then runs on microphone 0 alone in RUN/mic0, and the report compares them.
Distributed runs (torchrun, SLURM, Lightning's launcher) run this on every process: rank 0
alone builds the corpus, writes summaries, evaluates and reports.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L

from tsmixit.errors import TrainingError
from tsmixit.files import write_text_atomic
from tsmixit.training.checkpoints import load_separator
from tsmixit.training.config import RecipeConfig, quick_config
from tsmixit.training.estimate import crowded_threads, estimate
from tsmixit.training.fit import StageContext, summary_line
from tsmixit.training.plan import Plan, fingerprint, shared_sections
from tsmixit.training.run_folder import (
    open_stage,
    rank,
    read_summary,
    run_lock,
    write_summary,
)
from tsmixit.training.splits import (
    REAL_VOICES,
    Splits,
    check_splits,
    prepare_splits,
    with_real_voices,
)
from tsmixit.training.stages import RUNNERS

log = logging.getLogger(__name__)

#: The single-channel companion of a model.channels = "both" run: RUN/mic0.
COMPANION = "mic0"
#: What `--fresh` removes from RUN besides the stage folders.
RUN_OUTPUTS = ("corpus", REAL_VOICES, "eval", "model", "config.yaml", "report.md",
               "report.json", "plots", COMPANION)


def run_recipe(config: RecipeConfig, run_dir: str | os.PathLike, fresh: bool = False,
               stages: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run (or resume) every stage of the recipe in `run_dir`.

    fresh: discard the run folder's recipe outputs first. stages: run only these stages
    (and the steps "distill", "eval", "export", "report"); earlier stages must have
    finished. quick: a smoke-test version of the config (`quick_config`).

    Returns {"run_dir", "stages": {name: summary}, "eval": {system: mean metrics},
    "model": exported model folder, "report": report path, "mic0": the companion run's
    result} (rank 0; other ranks return after the training stages with "stages" only).
    """
    config = quick_config(config) if quick else config
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        both = config.model.channels == "both"
        plan = Plan(config, stages)
        result, splits = _run_one(_channels(config, "all") if both else config, stages,
                                  run_dir, fresh, with_companion=both)
        if both:
            if rank() == 0:
                write_text_atomic(run_dir / "config.yaml", config.to_yaml())
            single = dataclasses.replace(_channels(config, "reference"), corpus=dataclasses.replace(
                config.corpus, manifest=str(splits.path), preset=None))
            result[COMPANION], _ = _run_one(single, stages, run_dir / COMPANION, fresh,
                                            home=run_dir)
        if rank() == 0 and plan.wanted("report"):
            from tsmixit.evaluation.report import write_report

            compare = [run_dir / COMPANION] if both else None
            result["report"] = str(write_report(run_dir, compare=compare))
        return result


def _run_one(config: RecipeConfig, stages: list[str] | None, run_dir: Path, fresh: bool,
             with_companion: bool = False, home: Path | None = None
             ) -> tuple[dict[str, Any], Splits]:
    """Every stage, the evaluation and the export of one run folder (no report)."""
    plan = Plan(config, stages)
    if fresh and rank() == 0 and run_dir.exists():
        _discard_outputs(run_dir)
    if rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", config.to_yaml())
    progress = config.train.progress
    splits = prepare_splits(config, run_dir, progress)
    check_splits(splits, config, plan, with_companion)
    ctx = StageContext(config, splits, run_dir, home or run_dir, summaries={})
    fingerprints: dict[str, str] = {}
    done: dict[str, dict | None] = {}
    for stage in plan.stages:
        fingerprints[stage.name] = fingerprint(stage, config, splits.key, fingerprints)
        done[stage.name] = read_summary(run_dir, stage.name, fingerprints[stage.name])
    to_run = [st for st in plan.stages if done[st.name] is None and plan.wanted(st.name)]
    expected = estimate(ctx, to_run, plan.wanted("eval")) if to_run and rank() == 0 else None
    if expected is not None:
        log.info("[estimate] %s", expected.describe())
        if (crowded := crowded_threads()) is not None:
            log.warning("[estimate] %s", crowded)
    for stage in plan.stages:
        if done[stage.name] is not None:
            log.info("[%s] finished earlier, skipped (%s)", stage.name,
                     summary_line(done[stage.name]))
            ctx.summaries[stage.name] = done[stage.name]
            continue
        if stage not in to_run:
            continue
        missing = [u for u in stage.upstream if u not in ctx.summaries]
        if missing:
            raise TrainingError(f"stage {stage.name!r} needs the finished stage(s) {missing}; "
                                "run them first (leave out --stages, or include them)")
        folder = open_stage(run_dir, stage.name, fingerprints[stage.name],
                            shared_sections(config, splits.key, stage.kind))
        L.seed_everything(config.train.seed, workers=True, verbose=False)
        summary = RUNNERS[stage.kind](stage, ctx, folder)
        ctx.summaries[stage.name] = write_summary(
            run_dir, stage.name, {**summary, "fingerprint": fingerprints[stage.name]})
        log.info("[%s] done: %s", stage.name, summary_line(summary))
    result: dict[str, Any] = {"run_dir": str(run_dir), "stages": ctx.summaries}
    if expected is not None:
        result["estimate"] = {"seconds": round(expected.total_seconds, 1),
                              "step_seconds": expected.step_seconds}
    if rank() != 0:
        return result, splits
    if plan.wanted("eval"):
        result.update(evaluate_run(config, splits, run_dir, ctx.summaries, progress,
                                   home or run_dir))
    if plan.wanted("export") and any(s["kind"] in ("student", "finetune")
                                     for s in ctx.summaries.values()):
        result["model"] = str(export_best(splits, run_dir, ctx.summaries))
    return result, splits


def evaluate_run(config: RecipeConfig, splits: Splits, run_dir: Path,
                 summaries: dict[str, dict], progress: bool, home: Path) -> dict[str, Any]:
    """Every system of `summaries` scored on the test split (RUN/eval) and on every extra
    set (RUN/eval/sets/<name>), the real-voice set of eval.real_voices included (built once
    in `home`): {"eval", "eval_sets"} and "real_voices_missing" when its packages are not."""
    from tsmixit.evaluation.evaluate import evaluate_stages

    out: dict[str, Any] = {"eval": evaluate_stages(config, splits.test, run_dir / "eval",
                                                   run_dir, summaries, progress,
                                                   name=config.eval.split)}
    sets, missing = with_real_voices(config, splits.extra_sets, home)
    if missing:
        out["real_voices_missing"] = missing
    out["eval_sets"] = {
        name: evaluate_stages(config, test, run_dir / "eval" / "sets" / name, run_dir,
                              summaries, progress, name=name)
        for name, test in sets.items()}
    return out


def _channels(config: RecipeConfig, channels: str) -> RecipeConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                 channels=channels))


def _discard_outputs(run_dir: Path) -> None:
    """`--fresh`: remove every stage folder (those holding a stage.json) and run output."""
    for entry in run_dir.iterdir():
        if entry.name in RUN_OUTPUTS or (entry / "stage.json").is_file():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def best_student(summaries: dict[str, dict]) -> str:
    """The student-family system with the best validation SI-SNRi (the last one trained
    when there is no validation score)."""
    students = [n for n, s in summaries.items() if s["kind"] in ("student", "finetune")]
    if not students:
        raise TrainingError("no student stage has finished; nothing to export")
    scored = [n for n in students if summaries[n].get("best_val_si_snri") is not None]
    if not scored:
        return students[-1]
    return max(scored, key=lambda n: summaries[n]["best_val_si_snri"])


def export_best(splits: Splits, run_dir: Path, summaries: dict[str, dict]) -> Path:
    """RUN/model: the best student as a model file (`tsmixit separate --model RUN/model`)."""
    from tsmixit.model_files import save_model

    name = best_student(summaries)
    summary = summaries[name]
    out = run_dir / "model"
    save_model(load_separator(Path(summary["checkpoint"])), out, splits.sample_rate, summary={
        "system": name, "checkpoint": summary["checkpoint"],
        "best_val_si_snri": summary.get("best_val_si_snri"), "steps": summary.get("steps")})
    return out
