"""Pretraining: one supervised stage (PIT, every training mixture's true sources) of a bigger
separator on the pretraining corpus (corpus preset "pretrain"), run through the recipe's own
machinery (tsmixit.recipe.run_recipe with the stages "supervised_full" and "eval": the same
run folder layout, checkpoints every `train.checkpoint_every` steps, resume, fingerprints),
then exported as a model folder with a model card:

    RUN/corpus/                  the pretraining corpus (built, or resumed, first)
    RUN/embedded/                the demo's embedded corpus (preset "demo", seed 0): its test
                                 split scores the model beside the demo's systems, which are
                                 trained there alone
    RUN/supervised_full/         the stage: checkpoints/last.ckpt (resume), best.ckpt
    RUN/eval/, RUN/eval/sets/    scores on the corpus's test split and on eval.extra_sets
    RUN/model/                   model.safetensors + config.json (tsmixit.model_files)
    RUN/model/MODEL_CARD.md      corpus and its version, config, steps, machine, scores,
                                 the licence of every voice source

    tsmixit pretrain --config configs/pretrain.yaml --run-dir runs/pretrain [--release-now]

Stopping it (Ctrl-C, a killed session) loses at most `checkpoint_every` steps: the same
command resumes. `--release-now` evaluates and exports the best checkpoint so far without
training (a release of a run short of its budget); the run goes on afterwards. The budget
is part of the stage's fingerprint, like the rest of its config: changing it starts over.
Extra test sets that are not on this machine are left out with a warning (their scores then
are missing from the card, which says so).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from tsmixit.errors import TrainingError
from tsmixit.files import write_text_atomic
from tsmixit.training.config import RecipeConfig

log = logging.getLogger(__name__)
STAGE = "supervised_full"
#: The extra test set every pretrained model is scored on: the embedded corpus of `make demo`.
EMBEDDED = "embedded"


def available_sets(config: RecipeConfig) -> RecipeConfig:
    """The config without the extra test sets missing on this machine (warned)."""
    kept = []
    for path in config.eval.extra_sets:
        if Path(path).exists():
            kept.append(path)
        else:
            log.warning("eval.extra_sets: %s is not here, left out of the scores", path)
    return dataclasses.replace(config, eval=dataclasses.replace(config.eval, extra_sets=kept))


def with_embedded_set(config: RecipeConfig, run_dir: Path, preset: str) -> RecipeConfig:
    """The config with the embedded corpus of `preset` (seed 0, built or found in
    RUN/embedded) added to the extra test sets."""
    from tsmixit.corpus import build_corpus

    manifest = build_corpus(run_dir / EMBEDDED, preset, seed=0,
                            progress=config.train.progress)
    sets = [*config.eval.extra_sets, str(manifest)]
    return dataclasses.replace(config, eval=dataclasses.replace(config.eval, extra_sets=sets))


def scored_sets(config: RecipeConfig, run_dir: Path, embedded_preset: str
                ) -> tuple[RecipeConfig, list[str]]:
    """The config whose extra test sets are those here plus the embedded corpus of
    `embedded_preset`, and the extra sets left out as missing (named in the card)."""
    missing = [p for p in config.eval.extra_sets if not Path(p).exists()]
    return with_embedded_set(available_sets(config), run_dir, embedded_preset), missing


def pretrain(config: RecipeConfig, run_dir: str | os.PathLike,
             embedded_preset: str = "demo") -> dict[str, Any]:
    """Build the corpus, train (or resume) the supervised stage, evaluate (the corpus's test
    split, eval.extra_sets and the embedded corpus of `embedded_preset`), export with a
    model card. Returns the recipe's result plus "model" and "card"."""
    from tsmixit.recipe import run_recipe

    run_dir = Path(run_dir)
    config, missing = scored_sets(config, run_dir, embedded_preset)
    start = ["pretrained"] if config.model.init is not None else []  # the stage it starts from
    result = run_recipe(config, run_dir, stages=[*start, STAGE, "eval"])
    summary = result["stages"][STAGE]
    model_dir = export(config, run_dir, summary, result, missing)
    result.update(model=str(model_dir), card=str(model_dir / "MODEL_CARD.md"))
    return result


def release_now(config: RecipeConfig, run_dir: str | os.PathLike,
                embedded_preset: str = "demo") -> dict[str, Any]:
    """Evaluate and export the best checkpoint so far of a run that has not reached its
    budget (`tsmixit pretrain --release-now`), as `pretrain` does at the end; the same
    command without the flag then goes on training from the last checkpoint. Returns what
    `pretrain` returns, "stages" holding the checkpoint's summary."""
    from tsmixit.models.folder import sha256
    from tsmixit.recipe import evaluate_run
    from tsmixit.training.checkpoints import load_checkpoint
    from tsmixit.training.plan import Plan
    from tsmixit.training.run_folder import run_lock
    from tsmixit.training.splits import prepare_splits

    run_dir = Path(run_dir)
    best = run_dir / STAGE / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise TrainingError(f"{best}: no checkpoint to release yet; run `tsmixit pretrain` "
                            "until its first validation writes one")
    config, missing = scored_sets(config, run_dir, embedded_preset)
    progress = config.train.progress
    with run_lock(run_dir):
        ckpt = load_checkpoint(best)
        best_score = next((state.get("best_model_score")
                           for name, state in ckpt.get("callbacks", {}).items()
                           if "'monitor': 'val_si_snri'" in name), None)
        stage = next(st for st in Plan(config).stages if st.name == STAGE)
        summary = {**stage.record(), "checkpoint": str(best.resolve()),
                   "fingerprint": sha256(best),
                   "steps": int(ckpt["global_step"]),
                   "train_seconds": round(float(ckpt["callbacks"].get("Timer", {}).get(
                       "time_elapsed", {}).get("train", 0.0)), 1),
                   "best_val_si_snri": None if best_score is None else float(best_score)}
        splits = prepare_splits(config, run_dir, progress)
        result: dict[str, Any] = {"stages": {STAGE: summary}, **evaluate_run(
            config, splits, run_dir, {STAGE: summary}, progress, run_dir)}
        model_dir = export(config, run_dir, summary, result, missing)
    result.update(model=str(model_dir), card=str(model_dir / "MODEL_CARD.md"))
    return result


def export(config: RecipeConfig, run_dir: Path, summary: dict[str, Any],
           result: dict[str, Any], missing: list[str] | None = None) -> Path:
    from tsmixit.model_files import load_model, save_model

    checkpoint = Path(summary["checkpoint"])
    if not checkpoint.is_absolute():
        checkpoint = run_dir / checkpoint
    separator = load_model(checkpoint)
    module = getattr(separator, "model", separator)
    rate = int(getattr(separator, "sample_rate", 8000))
    out = run_dir / "model"
    save_model(module, out, rate, summary={"system": STAGE, "steps": summary.get("steps"),
                                           "best_val_si_snri": summary.get("best_val_si_snri")})
    write_text_atomic(out / "MODEL_CARD.md", model_card(config, run_dir, summary, result, out,
                                                         missing or []))
    return out


def scores_by_voice_sources(run_dir: Path) -> dict[tuple[str, ...], tuple[int, float]]:
    """Median top-k SI-SNRi of the stage on the corpus's test split per pair of voice
    sources of its mixtures' speakers (eSpeak speakers have no source: "espeak"), from
    RUN/eval/STAGE.json, RUN/corpus/manifest.jsonl and RUN/corpus/speakers.json; {} when
    one of them is missing. A mean over the split hides that realistic pairs are rare."""
    import numpy as np

    paths = [run_dir / "eval" / f"{STAGE}.json", run_dir / "corpus" / "manifest.jsonl",
             run_dir / "corpus" / "speakers.json"]
    if not all(p.is_file() for p in paths):
        return {}
    scores = json.loads(paths[0].read_text()).get("per_mixture", [])
    rows = {r["id"]: r for r in map(json.loads, paths[1].read_text().splitlines()) if r}
    source = {v["id"]: v.get("source", "espeak")
              for group in json.loads(paths[2].read_text()).values() for v in group}
    pairs: dict[tuple[str, ...], list[float]] = {}
    for score in scores:
        row = rows.get(score["id"])
        if row is not None:
            pair = tuple(sorted(source.get(s, "espeak") for s in row["speakers"]))
            pairs.setdefault(pair, []).append(score["si_snri_topk"])
    return {pair: (len(v), float(np.median(v))) for pair, v in sorted(pairs.items())}


def model_card(config: RecipeConfig, run_dir: Path, summary: dict[str, Any],
               result: dict[str, Any], model_dir: Path, missing: list[str]) -> str:
    from tsmixit.corpus.voices import LICENCES
    from tsmixit.models.folder import model_digest

    corpus = run_dir / "corpus"
    record = json.loads((corpus / "corpus.json").read_text()) if (
        corpus / "corpus.json").exists() else {}
    sources = json.loads((corpus / "sources.json").read_text()) if (
        corpus / "sources.json").exists() else {}
    model_config = json.loads((model_dir / "config.json").read_text())
    lines = [
        "# tsmixit pretrained separator", "",
        f"- architecture: {model_config['class']} {json.dumps(model_config['hparams'])}",
        f"- weights: model.safetensors, sha256 {model_config['weights_sha256']}",
        f"- training: supervised PIT (negative SI-SNR), {summary.get('steps')} steps, "
        f"{summary.get('train_seconds')} s, best validation SI-SNRi "
        f"{summary.get('best_val_si_snri')}",
        *([f"- initialised from: {config.model.init} (weights sha256 "
           f"{model_digest(config.model.init)})"] if config.model.init else []),
        f"- machine: {platform.machine()} {platform.processor() or ''} "
        f"{os.cpu_count()} cores, {platform.python_version()}",
        f"- corpus: preset {record.get('preset')}, seed {record.get('seed')}, "
        f"format {record.get('format')}; settings: `{json.dumps(record.get('config', {}))}`",
        "", "## Scores (SI-SNRi / SDRi, dB, top-2 outputs)", "",
        "| test set | SI-SNRi | SDRi |", "|---|---:|---:|",
    ]
    sets = {"corpus test split": result.get("eval", {}), **result.get("eval_sets", {})}
    for name, scores in sets.items():
        mean = scores.get(STAGE, {}) if isinstance(scores, dict) else {}
        lines.append(f"| {name} | {mean.get('si_snri_topk', float('nan')):.2f} | "
                     f"{mean.get('sdri_topk', float('nan')):.2f} |")
    if missing:
        lines.append(f"\nNot scored (not on the machine): {', '.join(missing)}")
    by_pair = scores_by_voice_sources(run_dir)
    if by_pair:
        lines += ["", "## Corpus test split by the voice sources of its two speakers", "",
                  "| sources | mixtures | median SI-SNRi (dB) |", "|---|---:|---:|"]
        lines += [f"| {' + '.join(pair)} | {n} | {median:.2f} |"
                  for pair, (n, median) in by_pair.items()]
    lines += ["", "## Voice sources and licences", ""]
    lines.append(f"- espeak: {LICENCES['espeak']}")
    for name, info in sources.items():
        if "licence" in info:
            lines.append(f"- {name}: {info['licence']}"
                         + (f" ({info['version']})" if info.get("version") else "")
                         + (f"; base voices per split {json.dumps(info['base_voices'])}"
                            if info.get("base_voices") else ""))
    lines += ["", "## Config", "", "```yaml", config.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
