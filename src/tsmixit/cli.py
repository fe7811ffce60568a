"""The `tsmixit` command line. The only module that prints to the user and exits.

    tsmixit corpus build --out DIR [--preset demo] [--seed 0] [--materialize] [--set key=value]
    tsmixit corpus import KIND PATH --out MANIFEST
    tsmixit corpus real-voices --out DIR [--n 120] [--seed 3]
    tsmixit recipe --config configs/demo.yaml [--run-dir runs/demo] [--set key=value] [--quick]
    tsmixit pretrain [--config configs/pretrain.yaml] [--run-dir runs/pretrain] [--release-now]
    tsmixit evaluate --model M --data D [--json OUT]
    tsmixit separate --model M INPUT... --out DIR
    tsmixit report RUN_DIR
    tsmixit export --model M --onnx OUT
    tsmixit serve --model M [--model M2] [--run RUN_DIR] [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
from pathlib import Path

from tsmixit.errors import ConfigError, TsmixitError
from tsmixit.training.config import parse_overrides

IMPORT_KINDS = ("wsj0-2mix", "librimix", "spatialized-wsj0-2mix", "folder")


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from tsmixit.corpus import build_corpus

    manifest = build_corpus(
        args.out,
        preset=args.preset,
        seed=args.seed,
        materialize=args.materialize,
        **parse_overrides(args.set),
    )
    print(f"corpus written: {manifest}")
    return 0


def cmd_corpus_import(args: argparse.Namespace) -> int:
    from tsmixit.data import importers as mf

    options = parse_overrides(args.set)
    if args.kind == "folder":
        # Recordings at another rate or channel count are converted once, beside the manifest.
        options.setdefault("audio_dir", args.out.parent / f"{args.out.stem}_audio")
    importers = {
        "wsj0-2mix": mf.import_wsj0_2mix,
        "librimix": mf.import_librimix,
        "spatialized-wsj0-2mix": mf.import_spatialized_wsj0_2mix,
        "folder": mf.import_folder,
    }
    if args.kind == "librimix":
        source = args.paths  # one metadata CSV per split
    elif len(args.paths) == 1:
        source = args.paths[0]
    else:
        raise TsmixitError(f"corpus import {args.kind} takes one folder, got {len(args.paths)}")
    importer = importers[args.kind]
    try:
        inspect.signature(importer).bind(source, **options)
    except TypeError:
        allowed = list(inspect.signature(importer).parameters)[1:]  # after the path
        raise ConfigError(
            f"corpus import {args.kind}: unknown option in {sorted(options)}; "
            f"the options are {', '.join(allowed)}"
        ) from None
    manifest = importer(source, **options)
    manifest.save(args.out)
    print(f"{len(manifest)} mixtures -> {args.out}")
    return 0


def cmd_corpus_real_voices(args: argparse.Namespace) -> int:
    from tsmixit.corpus.real_voices import build_real_voice_set

    out = build_real_voice_set(args.out, n_mixtures=args.n, seed=args.seed)
    print(f"{args.n} mixtures of two real voices -> {out} (a test set, never train on it: "
          f"tsmixit evaluate --model MODEL --data {out})")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from tsmixit.recipe import run_recipe
    from tsmixit.training.config import load_config

    config = load_config(args.config, args.set)
    started = time.monotonic()
    summary = run_recipe(
        config, Path(args.run_dir), fresh=args.fresh, stages=args.stages, quick=args.quick
    )
    print(_recipe_summary(summary, time.monotonic() - started))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from tsmixit.pretrain import pretrain, release_now
    from tsmixit.training.config import load_config

    run = release_now if args.release_now else pretrain
    result = run(load_config(args.config, args.set), args.run_dir)
    print(f"model: {result['model']}\ncard:  {result['card']}")
    return 0


def _recipe_summary(summary: dict, wall_seconds: float) -> str:
    """The short text printed at the end of `tsmixit recipe`: time per stage, the results
    table and the paper's claims as measured (all read from the run folder's report)."""
    from tsmixit.evaluation.report import stage_seconds

    lines = ["", "stage                  steps   seconds"]
    for name, stage in summary.get("stages", {}).items():
        seconds = stage_seconds(stage)
        lines.append(f"{name:<22} {stage.get('steps', ''):>6} {seconds:>9.0f}")
    lines.append(f"{'whole run (this call)':<29} {wall_seconds:>9.0f}")
    if summary.get("estimate"):
        steps = ", ".join(f"{k} {v:.3f}" for k, v in summary["estimate"]["step_seconds"].items())
        lines.append(f"{'estimated at the start':<29} {summary['estimate']['seconds']:>9.0f}"
                     f"   (training, validation, labelling; s/step: {steps})")
    report = Path(summary["run_dir"]) / "report.json"
    if report.exists():
        results = json.loads(report.read_text())
        sets = list(dict.fromkeys(n for row in results["rows"] for n in row.get("sets", {})))
        lines += ["", f"{'system':<44} {'SI-SNRi':>8} {'SDRi':>8} {'active':>7}"
                  + "".join(f" {name[:12]:>12}" for name in sets)]
        for row in results["rows"]:
            other = "".join(f" {row['sets'][n]['si_snri']:>12.2f}" if n in row["sets"]
                            else f" {'-':>12}" for n in sets)
            lines.append(f"{row['label']:<44} {row['si_snri']:>8.2f} {row['sdri']:>8.2f} "
                         f"{row['active_outputs']:>7.2f}{other}")
        if sets:
            lines.append(f"(columns after 'active': SI-SNRi on eval.extra_sets {sets})")
        lines.append("")
        lines += [f"{c['status']:>13}: {c['claim']} ({c['detail']})" for c in results["claims"]]
        lines.append(f"\nreport: {summary.get('report')}")
    if summary.get("real_voices_missing"):
        lines.append("\nreal-voice test set (eval.real_voices) not scored: its Debian packages "
                     "are missing. To add it: make voices-apt (as root), then rerun the same "
                     "command (it only evaluates).")
    if summary.get("model"):
        lines.append(f"model:  {summary['model']}   (tsmixit separate --model {summary['model']} "
                     "FILE --out DIR)")
    return "\n".join(lines)


MODEL_HELP = ("a model folder (RUN/model), its config.json, a .ckpt checkpoint, or "
              "'pretrained' (the separator shipped in the package)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tsmixit.evaluation.evaluate import evaluate_path

    result = evaluate_path(
        args.model,
        args.data,
        k=args.k,
        split=args.split,
        json_out=args.json,
        batch_size=args.batch_size,
        active_threshold_db=args.active_threshold_db,
        progress=not args.no_progress,
        device=args.device,
    )
    print(json.dumps(result["mean"], indent=2))
    return 0


def cmd_separate(args: argparse.Namespace) -> int:
    from tsmixit.inference import separate_files
    from tsmixit.model_files import inference_device, load_model

    separator = load_model(args.model, inference_device(args.device))
    results = separate_files(
        separator,
        args.inputs,
        args.out,
        chunk_seconds=args.chunk_seconds,
        overlap_seconds=args.overlap_seconds,
        allow_upsampling=args.allow_upsampling,
        subtype=args.subtype,
    )
    failures = [r for r in results if r.get("error")]
    for failure in failures:
        print(f"FAILED {failure['error']}", file=sys.stderr)
    print(f"separated {len(results) - len(failures)} of {len(results)} files into {args.out}")
    return 1 if failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    from tsmixit.evaluation.report import write_report

    print(f"report written: {write_report(Path(args.run_dir), compare=args.compare)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tsmixit.model_files import export_onnx, load_model

    check = export_onnx(load_model(args.model), args.onnx)
    print(f"ONNX model written: {args.onnx} (max |onnx - torch| = {check['max_abs_diff']:.2e})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tsmixit.serve import create_app, load_models

    paths = list(args.model)
    if not paths and args.run is not None and (args.run / "model").is_dir():
        paths = [args.run / "model"]
    app = create_app(load_models(paths, args.device), args.run,
                     max_upload_mb=args.max_upload_mb, chunk_seconds=args.chunk_seconds,
                     overlap_seconds=args.overlap_seconds,
                     allow_upsampling=args.allow_upsampling)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who reaches this address can use the "
              "page (it has no log-in); the microphone works only on 127.0.0.1/localhost",
              file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"tsmixit serve: open http://{host}:{args.port}/  (Ctrl+C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


DEVICE_HELP = "where the network runs: auto (a GPU when there is one), cpu, cuda or cuda:N"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsmixit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="build the embedded corpus or import a real one")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    build = corpus_sub.add_parser("build", help="synthesise the offline default corpus")
    build.add_argument("--out", required=True, type=Path)
    build.add_argument("--preset", default="demo")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--materialize", action="store_true", help="also write WSJ0-2mix folders")
    build.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    build.set_defaults(func=cmd_corpus_build)
    imp = corpus_sub.add_parser("import", help="write a manifest for a corpus on disk")
    imp.add_argument("kind", choices=IMPORT_KINDS)
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                     help="the corpus folder (LibriMix: one or more metadata CSVs)")
    imp.add_argument("--out", required=True, type=Path, help="manifest (.jsonl) to write")
    imp.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                     help="importer options, e.g. sample_rate=8000 mode=min channels=[0,1]")
    imp.set_defaults(func=cmd_corpus_import)
    real = corpus_sub.add_parser("real-voices", help="a test set of mixtures of two real "
                                 "recorded voices (needs make voices-apt; never train on it)")
    real.add_argument("--out", required=True, type=Path)
    real.add_argument("--n", type=int, default=120, help="number of mixtures")
    real.add_argument("--seed", type=int, default=3)
    real.set_defaults(func=cmd_corpus_real_voices)

    recipe = sub.add_parser("recipe", help="run the TS-MixIT recipe (all stages)")
    recipe.add_argument("--config", required=True, type=Path)
    recipe.add_argument("--run-dir", default="runs/demo")
    recipe.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    recipe.add_argument("--stages", nargs="+", default=None, help="run only these stages")
    recipe.add_argument("--fresh", action="store_true", help="discard the run folder first")
    recipe.add_argument("--quick", action="store_true",
                        help="the same pipeline at a tiny size (about a minute)")
    recipe.set_defaults(func=cmd_recipe)

    pre = sub.add_parser("pretrain", help="pretrain a separator on labelled synthetic speech "
                                          "(resumable; weeks of CPU, minutes on a GPU)")
    pre.add_argument("--config", default="configs/pretrain.yaml", type=Path)
    pre.add_argument("--run-dir", default="runs/pretrain")
    pre.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    pre.add_argument("--release-now", action="store_true",
                     help="evaluate and export the best checkpoint so far, without training "
                          "(rerun without it to go on training)")
    pre.set_defaults(func=cmd_pretrain)

    evaluate = sub.add_parser("evaluate", help="SI-SNRi/SDRi of a model on a test set")
    evaluate.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    evaluate.add_argument("--data", required=True, type=Path, help="manifest or WSJ0-2mix folder")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--k", type=int, default=2, help="number of reference sources")
    evaluate.add_argument("--json", type=Path, default=None)
    evaluate.add_argument("--batch-size", type=int, default=1,
                          help="mixtures per forward pass (>1: faster, padding nudges gLN)")
    evaluate.add_argument("--active-threshold-db", type=float, default=-20.0,
                          help="an output is active above this share of the total energy")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.set_defaults(func=cmd_evaluate)

    separate = sub.add_parser("separate", help="separate audio files or folders")
    separate.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    separate.add_argument("inputs", nargs="+", type=Path)
    separate.add_argument("--out", required=True, type=Path)
    separate.add_argument("--chunk-seconds", type=float, default=8.0)
    separate.add_argument("--overlap-seconds", type=float, default=1.0)
    separate.add_argument("--allow-upsampling", action="store_true",
                          help="accept inputs below the model's sample rate")
    separate.add_argument("--subtype", default="FLOAT", choices=("FLOAT", "PCM_16", "PCM_24"))
    separate.add_argument("--device", default="auto", help=DEVICE_HELP)
    separate.set_defaults(func=cmd_separate)

    report = sub.add_parser("report", help="write the results report of a run folder")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--compare", nargs="+", type=Path, default=None,
                        help="other run folders to compare with (e.g. single- vs multi-channel)")
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="export a model to ONNX")
    export.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    export.add_argument("--onnx", required=True, type=Path)
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="a local web page: separate recordings and listen")
    serve.add_argument("--model", action="append", type=Path, default=[],
                       help="a model folder; repeat to offer several (default: RUN_DIR/model)")
    serve.add_argument("--run", type=Path, default=None,
                       help="a run folder whose report and test mixtures the page shows")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=200.0,
                       help="largest recording accepted, MB (larger: refused with HTTP 413)")
    serve.add_argument("--chunk-seconds", type=float, default=8.0)
    serve.add_argument("--overlap-seconds", type=float, default=1.0)
    serve.add_argument("--allow-upsampling", action="store_true",
                       help="accept inputs below the model's sample rate")
    serve.add_argument("--device", default="auto", help=DEVICE_HELP)
    serve.set_defaults(func=cmd_serve)
    return parser


def _show_progress_lines() -> None:
    """The library's INFO lines (stage done, resumed, estimate) on stderr, once."""
    logger = logging.getLogger("tsmixit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    _show_progress_lines()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TsmixitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
