"""benchmarks/bench_quality_per_minute.py --quick on a tiny hand-made corpus: the JSON's
structure, and that every run stopped at its CPU-time budgets (not before, at most two steps
after)."""

import importlib.util
import json
import math
from pathlib import Path

from conftest import make_corpus
from tsmixit.models.registry import ARCHITECTURES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality_per_minute.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_quality_per_minute", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_respects_cpu_budgets(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path / "corpus", n_train=16, n_valid=4)
    out = tmp_path / "out"
    minutes = [0.02, 0.04]
    load_bench().main(["--quick", "--manifest", str(manifest), "--out", str(out),
                       "--minutes", *map(str, minutes), "--segment-seconds", "0.5",
                       "--batch-size", "4", "--valid-mixtures", "3"])

    result = json.loads((out / "results.json").read_text())
    assert (out / "si_snri_vs_cpu_minutes.png").stat().st_size > 1000
    assert result["config"]["sizes"] == ["tiny"] and result["config"]["minutes"] == minutes
    assert result["machine"]["threads"] == 1
    runs = result["runs"]
    assert [(r["arch"], r["size"]) for r in runs] == [(a, "tiny") for a in ARCHITECTURES]
    for run in runs:
        assert run["params"] > 0 and run["seconds_per_step"] > 0
        assert [p["minutes"] for p in run["points"]] == minutes
        assert run["steps"] == run["points"][-1]["steps"]
        assert run["points"][0]["steps"] < run["points"][1]["steps"]
        for point in run["points"]:
            budget = 60 * point["minutes"]
            assert budget <= point["cpu_seconds"] < budget + 2 * run["seconds_per_step"], run
            assert math.isfinite(point["si_snri"]) and point["valid_cpu_seconds"] > 0
