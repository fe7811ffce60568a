"""The results report of a run folder: the paper-style table (Markdown and JSON), a plain
statement of which of the paper's claims hold as measured, and PNG plots.

Inputs (see tsmixit.recipe): RUN/<stage>/summary.json, RUN/<stage>/metrics.csv,
RUN/eval/<system>.json and the example it names, RUN/eval/examples/<system>/*.npz (from
tsmixit.evaluation.evaluate.evaluate_into_run). Systems without an evaluation are left out.
Outputs: RUN/report.md, RUN/report.json, RUN/plots/*.png.
"""

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.signal import spectrogram

from tsmixit.errors import TrainingError
from tsmixit.evaluation.claims import (
    OVERSEPARATION_GAP_DB,
    OVERSEPARATION_SHARE,
    check_claims,
    check_method_claims,
    method_rows,
)
from tsmixit.files import atomic_path, write_json_atomic, write_text_atomic
from tsmixit.training.run_folder import LAYOUT

#: The mixture-only methods beside TS-MixIT (training/stages/<kind>.py): table names.
METHOD_NAMES = {
    "semi_mixit": "Semi-supervised MixIT",
    "sparse_mixit": "Sparse MixIT",
    "remixit": "RemixIT",
    "self_remixing": "Self-Remixing",
}


def system_name(summary: dict[str, Any]) -> str | None:
    """Table name of a trained system from its stage summary (kind, round, labels); None
    for a kind the table does not show. Systems with more than k outputs are scored twice,
    "(top-k)" and "(oracle grouping into k)" after this name."""
    kind, round_ = summary.get("kind"), summary.get("round")
    if kind == "supervised":
        return ("Supervised PIT, 100 % labels" if summary.get("labels") == "all"
                else "Supervised PIT, labelled fraction only")
    if kind == "pretrained":
        return "Pretrained separator, not adapted"
    if kind == "teacher":
        return "MixIT teacher"
    if kind == "student":
        return "TS-MixIT student" if not round_ else f"+ distillation round {round_}"
    if kind == "finetune":
        return "+ fine-tune" if not round_ else f"+ distillation round {round_}, fine-tuned"
    if kind == "remixit":
        start = (summary.get("upstream") or ["teacher"])[0]  # its teacher: listed first
        return {"supervised_fraction": "RemixIT (from the supervised fraction)",
                "pretrained": "RemixIT (from the pretrained separator)"}.get(
                    start, METHOD_NAMES["remixit"])
    return METHOD_NAMES.get(kind)


def table_order(summary: dict[str, Any]) -> tuple[int, int]:
    """Baselines (the pretrained model, supervised training) first, then the TS-MixIT
    chain and the other methods, in plan order."""
    baseline = summary.get("kind") in ("pretrained", "supervised")
    return (0 if baseline else 1, int(summary.get("order", 0)))


def _with_upstream(summaries: dict[str, dict[str, Any]], stage: str) -> list[str]:
    """`stage` and every stage it was built from (its upstream, transitively)."""
    seen: list[str] = []
    todo = [stage]
    while todo:
        name = todo.pop()
        if name in seen or name not in summaries:
            continue
        seen.append(name)
        todo += summaries[name].get("upstream", [])
    return seen


def stage_seconds(summary: dict[str, Any]) -> float:
    """Seconds a stage took from its summary: training, or labelling for label stages."""
    return float(summary.get("train_seconds") or summary.get("label_seconds") or 0.0)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_run(run_dir: Path) -> dict[str, Any]:
    """Summaries per stage and evaluations per system of one run folder."""
    summaries = {}
    for path in sorted(run_dir.glob("*/summary.json")):
        summary = _read_json(path)
        if summary is None:
            continue
        if summary.get("layout") != LAYOUT:
            raise TrainingError(
                f"{path} was written by an earlier version of tsmixit (summary layout "
                f"{summary.get('layout', 1)}, this version reads {LAYOUT}); rerun its recipe "
                "with --fresh to retrain in this folder, or with another --run-dir")
        summaries[summary["stage"]] = summary
    evals = _read_evals(run_dir / "eval")
    sets = {folder.name: _read_evals(folder)
            for folder in sorted((run_dir / "eval" / "sets").glob("*")) if folder.is_dir()}
    return {"run_dir": run_dir, "summaries": summaries, "evals": evals, "sets": sets}


def _read_evals(folder: Path) -> dict[str, dict[str, Any]]:
    """The evaluations in a folder, by system."""
    evals = {}
    for path in sorted(folder.glob("*.json")):
        result = _read_json(path)
        if result is not None and "mean" in result:
            evals[result.get("system", path.stem)] = result
    return evals


def table_rows(run: dict[str, Any], run_name: str | None = None) -> list[dict[str, Any]]:
    """One row per evaluated system (the teacher twice: top-k and oracle grouping)."""
    summaries, rows = run["summaries"], []
    evaluated = [(summaries[r.get("stage", s)], r) for s, r in run["evals"].items()
                 if r.get("stage", s) in summaries]
    for summary, result in sorted(evaluated, key=lambda pair: table_order(pair[0])):
        k = int(result.get("k", 2))
        name = system_name(summary)
        if name is None:
            continue
        stage = summary["stage"]
        stage_s = result.get("train_seconds") or stage_seconds(summary) or None
        chain = _with_upstream(summaries, stage)
        total = sum(stage_seconds(summaries[s]) for s in chain)
        mean = result["mean"]
        common = {
            "system": result.get("system", stage), "stage": stage, "kind": summary["kind"],
            "round": summary.get("round"), "labels": summary.get("labels"), "run": run_name,
            "upstream": summary.get("upstream", []),
            "k": k, "n_channels": result.get("n_channels", 1),
            "n_outputs": result.get("n_outputs"), "n_mixtures": result.get("n_mixtures"),
            "labelled_mixtures": result.get("labelled_mixtures", summary.get("labelled_mixtures")),
            # Labelled mixtures the whole pipeline up to this system trained on.
            "pipeline_labelled": max(int(summaries[s].get("labelled_mixtures") or 0)
                                     for s in chain),
            "active_outputs": mean.get("active_outputs"),
            "over_separated": mean.get("over_separated"),
            "stage_seconds": stage_s, "total_seconds": total or stage_s,
        }
        variants = [("topk", name)]
        if (result.get("n_outputs") or k) > k:
            variants = [("topk", f"{name} (top-{k})"),
                        ("oracle", f"{name} (oracle grouping into {k})")]
        for variant, text in variants:
            other = {name: evals[common["system"]]["mean"]
                     for name, evals in run.get("sets", {}).items() if common["system"] in evals}
            rows.append({
                **common, "label": text if run_name is None else f"{text} [{run_name}]",
                "scoring": variant, "si_snri": mean.get(f"si_snri_{variant}"),
                "sdri": mean.get(f"sdri_{variant}"),
                "sets": {name: {"si_snri": m.get(f"si_snri_{variant}"),
                                "sdri": m.get(f"sdri_{variant}")} for name, m in other.items()},
            })
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, without pyplot's global state."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out: Path, dpi: int = 90) -> Path:
    with atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=dpi)
    return out


def _read_metrics(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Lightning CSVLogger metrics: {column: (steps, values)} of the logged (non-empty) rows."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            step = record.get("step")
            if not step:
                continue
            for key, value in record.items():
                if key in ("step", "epoch") or not value:
                    continue
                try:
                    series.setdefault(key, []).append((float(step), float(value)))
                except ValueError:
                    continue
    return {key: tuple(np.array(column) for column in zip(*points, strict=True))
            for key, points in series.items()}


def _eval_order(run: dict[str, Any], result: dict[str, Any]) -> tuple[int, int]:
    return table_order(run["summaries"].get(result.get("stage"), {}))


def plot_curves(run: dict[str, Any], out: Path) -> Path | None:
    """Training and validation loss, and validation SI-SNRi, against steps, per stage."""
    names = sorted(run["summaries"], key=lambda n: run["summaries"][n].get("order", 0))
    stages = [(name, run["run_dir"] / name / "metrics.csv") for name in names]
    stages = [(n, _read_metrics(p)) for n, p in stages if p.is_file()]
    stages = [(n, m) for n, m in stages if m]
    if not stages:
        return None
    figure = _figure(10, 2.6 * len(stages))
    axes = figure.subplots(len(stages), 2, squeeze=False)
    for (name, metrics), (loss_ax, snr_ax) in zip(stages, axes, strict=True):
        for key in ("train_loss", "val_loss"):
            if key in metrics:
                loss_ax.plot(*metrics[key], label=key, marker="." if key == "val_loss" else None)
        for key in ("val_si_snri", "val_si_snri_oracle"):
            if key in metrics:
                snr_ax.plot(*metrics[key], marker=".", label=key)
        loss_ax.set_title(f"{name}: loss")
        snr_ax.set_title(f"{name}: validation SI-SNRi (dB)")
        for ax in (loss_ax, snr_ax):
            ax.set_xlabel("step")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    return _save(figure, out)


def plot_active_outputs(run: dict[str, Any], out: Path) -> Path | None:
    """Histogram of the number of active outputs per test mixture, one bar group per system."""
    systems = [(s, r) for s, r in sorted(run["evals"].items(), key=lambda x: _eval_order(run, x[1]))
               if r.get("per_mixture")]
    if not systems:
        return None
    top = max(int(r.get("n_outputs") or 1) for _, r in systems)
    counts = np.arange(1, top + 1)
    width = 0.8 / len(systems)
    figure = _figure(7, 3.5)
    ax = figure.subplots()
    for n, (system, result) in enumerate(systems):
        active = [row["active_outputs"] for row in result["per_mixture"]]
        share = [np.mean([a == c for a in active]) for c in counts]
        ax.bar(counts + (n - (len(systems) - 1) / 2) * width, share, width, label=system)
    threshold = systems[0][1].get("active_threshold_db", -20.0)
    ax.set_xlabel(f"active outputs (energy share > {threshold:g} dB)")
    ax.set_ylabel("share of test mixtures")
    ax.set_xticks(counts)
    ax.legend(fontsize="small")
    return _save(figure, out)


def plot_si_snri_boxes(rows: list[dict[str, Any]], run: dict[str, Any], out: Path) -> Path | None:
    """SI-SNRi per test mixture, one box per table row."""
    data, labels = [], []
    for row in rows:
        result = run["evals"].get(row["system"])
        if row["run"] is not None or not result or not result.get("per_mixture"):
            continue
        data.append([m[f"si_snri_{row['scoring']}"] for m in result["per_mixture"]])
        labels.append(row["label"])
    if not data:
        return None
    figure = _figure(8, 0.5 * len(data) + 1.5)
    ax = figure.subplots()
    ax.boxplot(data[::-1], vert=False)
    ax.set_yticks(range(1, len(labels) + 1), labels[::-1])
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("SI-SNRi per test mixture (dB)")
    return _save(figure, out)


def _log_spectrogram(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    freqs, times, power = spectrogram(x, fs=sr, nperseg=int(0.032 * sr), noverlap=int(0.024 * sr))
    return freqs, times, 10.0 * np.log10(power + 1e-12)


def plot_spectrograms(run: dict[str, Any], out: Path) -> Path | None:
    """One test mixture: its spectrogram, its references', and each system's outputs (the
    top-k in reference order, then the other outputs)."""
    examples = []
    for system, result in sorted(run["evals"].items(), key=lambda x: _eval_order(run, x[1])):
        path = result.get("example", {}).get("path")
        if path is None:
            continue
        path = Path(path) if Path(path).is_absolute() else run["run_dir"] / "eval" / path
        if path.is_file():
            examples.append((system, np.load(path)))
    if not examples:
        return None
    ids = {str(e["id"]) for _, e in examples}
    first = examples[0][1]
    sr = int(first["sample_rate"])
    panels = [("mixture " + str(first["id"]), [first["mixture"]])]
    panels.append(("references", list(first["references"])))
    for system, ex in examples:
        top = [int(i) for i in ex["topk_outputs"]]
        rest = [i for i in range(len(ex["outputs"])) if i not in top]
        panels.append((f"{system} (top-{len(top)}, then others)",
                       [ex["outputs"][i] for i in top + rest]))
    n_cols = max(len(signals) for _, signals in panels)
    figure = _figure(3.0 * n_cols, 2.0 * len(panels))
    axes = figure.subplots(len(panels), n_cols, squeeze=False)
    peak = max(_log_spectrogram(first["mixture"], sr)[2].max(), -100.0)
    for (title, signals), row_axes in zip(panels, axes, strict=True):
        for col, ax in enumerate(row_axes):
            if col >= len(signals):
                ax.set_axis_off()
                continue
            freqs, times, level = _log_spectrogram(signals[col], sr)
            ax.pcolormesh(times, freqs / 1000, level, vmin=peak - 80, vmax=peak,
                          shading="auto", cmap="magma")
            ax.set_title(title if col == 0 else f"{col + 1}", fontsize="small", loc="left")
            ax.set_ylabel("kHz" if col == 0 else None)
    if len(ids) > 1:
        figure.suptitle(f"note: systems were evaluated on different example mixtures {ids}")
    return _save(figure, out, dpi=80)


def _markdown(rows: list[dict[str, Any]], claims: list[dict[str, Any]], plots: list[Path],
              run_dir: Path, k: int) -> str:
    lines = [f"# TS-MixIT results: `{run_dir}`", ""]
    if rows:
        first = rows[0]
        sets = list(dict.fromkeys(name for r in rows for name in r["sets"]))
        lines += [
            f"Test set: {first['n_mixtures']} mixtures, k = {k} references. SI-SNRi and SDRi "
            "in dB over the mixture (SDR: BSS-eval with 512-tap filters). Top-k: the k most "
            "energetic outputs; oracle: the best grouping of all outputs into k. Active "
            "outputs: mean count of outputs above the energy-share threshold; over-separated: "
            f"share of mixtures with more than {k} active. Time: this stage's training "
            "(and the whole pipeline up to it)."
            + (" Other test sets (eval.extra_sets): SI-SNRi / SDRi on each." if sets else ""),
            "",
            "| System | mics | SI-SNRi | SDRi | "
            + "".join(f"{name} SI-SNRi / SDRi | " for name in sets)
            + "active outputs | over-separated | labelled mixtures | training time |",
            "|---|---:|---:|---:|" + "---:|" * len(sets) + "---:|---:|---:|---|",
        ]
        for r in rows:
            over = "-" if r["over_separated"] is None else f"{r['over_separated']:.0%}"
            time_text = _duration(r["stage_seconds"])
            if r["total_seconds"] not in (None, r["stage_seconds"]):
                time_text += f" ({_duration(r['total_seconds'])} total)"
            active = (f"{r['active_outputs']:.2f} / {r['n_outputs']}"
                      if r["active_outputs"] is not None else "-")
            other = "".join(
                f"{_num(r['sets'][n]['si_snri'])} / {_num(r['sets'][n]['sdri'])} | "
                if n in r["sets"] else "- | " for n in sets)
            lines.append(
                f"| {r['label']} | {r['n_channels']} | {_num(r['si_snri'])} | {_num(r['sdri'])} "
                f"| {other}{active} | {over} | {_num(r['labelled_mixtures'], 'd')} "
                f"| {time_text} |"
            )
    else:
        lines.append("No evaluated systems yet (RUN/eval/*.json is empty).")
    methods = method_rows(rows)
    if any(r["kind"] in METHOD_NAMES for r in methods):
        lines += ["", *_methods_markdown(methods, k)]
    lines += ["", "## The papers' claims, as measured here", ""]
    for c in claims:
        lines.append(f"- **{c['status']}**: {c['claim']}. ({c['detail']})")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in plots]
    return "\n".join(lines) + "\n"


def _methods_markdown(methods: list[dict[str, Any]], k: int) -> list[str]:
    """The methods table: every system on every test set, whether it over-separates, its
    gain over the MixIT teacher's top-k outputs, the labels it used and its whole time."""
    sets = list(dict.fromkeys(name for r in methods for name in r["sets"]))
    lines = [
        "## Mixture-only methods side by side", "",
        f"Top-{k} scoring on every test set. Over-separates: the oracle grouping beats top-k "
        f"by >= {OVERSEPARATION_GAP_DB} dB on >= {OVERSEPARATION_SHARE:.0%} of mixtures with "
        f"more than {k} active outputs (k-output systems cannot). Labelled mixtures and time: "
        "the whole pipeline up to the system.", "",
        "| Method | labelled mixtures used | test SI-SNRi / SDRi | "
        + "".join(f"{name} SI-SNRi / SDRi | " for name in sets)
        + "vs MixIT top-k | active outputs | over-separates | time |",
        "|---|---:|---:|" + "---:|" * len(sets) + "---:|---:|---|---|",
    ]
    verdict = {True: "yes", False: "no", None: f"- ({k} outputs)"}
    for r in methods:
        other = "".join(f"{_num(r['sets'][n]['si_snri'])} / {_num(r['sets'][n]['sdri'])} | "
                        if n in r["sets"] else "- | " for n in sets)
        gain = "-" if r["vs_teacher_db"] is None else f"{r['vs_teacher_db']:+.2f}"
        active = ("-" if r["active_outputs"] is None
                  else f"{r['active_outputs']:.2f} / {r['n_outputs']}")
        lines.append(
            f"| {r['label']} | {r['pipeline_labelled']} | {_num(r['si_snri'])} / "
            f"{_num(r['sdri'])} | {other}{gain} | {active} | {verdict[r['over_separates']]} "
            f"| {_duration(r['total_seconds'])} |")
    return lines


def write_report(
    run_dir: str | os.PathLike, compare: list[str | os.PathLike] | None = None
) -> Path:
    """Write RUN/report.md, RUN/report.json and RUN/plots/*.png; returns the report.md path.

    compare: other run folders (e.g. a multi-channel run) whose systems are added to the
    table, labelled with the folder name, for the multi- vs single-channel claim.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    rows = table_rows(run)
    for other in compare or []:
        rows += table_rows(load_run(Path(other)), run_name=Path(other).name)
    claims = check_claims(rows) + check_method_claims(rows)
    k = rows[0]["k"] if rows else 2
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_curves(run, plot_dir / "curves.png"),
        plot_active_outputs(run, plot_dir / "active_outputs.png"),
        plot_spectrograms(run, plot_dir / "spectrograms.png"),
        plot_si_snri_boxes(rows, run, plot_dir / "si_snri_per_mixture.png"),
    ]
    plots = [p for p in plots if p is not None]
    write_json_atomic(run_dir / "report.json", {
        "run_dir": str(run_dir), "k": k, "rows": rows, "methods": method_rows(rows),
        "claims": claims,
        "plots": [p.relative_to(run_dir).as_posix() for p in plots],
    })
    report = run_dir / "report.md"
    write_text_atomic(report, _markdown(rows, claims, plots, run_dir, k))
    return report
