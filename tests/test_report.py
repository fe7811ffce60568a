"""The report from a hand-made run folder: table values, claim verdicts and plots."""

import json

import numpy as np
import pytest

from tsmixit.errors import TrainingError
from tsmixit.evaluation.report import write_report
from tsmixit.training.run_folder import LAYOUT

SR = 8000
# system: (SI-SNRi top-k, SDRi top-k, active outputs per mixture, train seconds, oracle SI-SNRi)
SYSTEMS = {
    "supervised_full": (9.50, 10.10, [2, 2, 2, 2], 600.0, None),
    "supervised_fraction": (5.25, 6.00, [2, 2, 2, 2], 90.0, None),
    "teacher": (4.00, 4.80, [3, 4, 2, 3], 1200.0, 7.75),
    "student": (6.50, 7.20, [2, 2, 2, 2], 300.0, None),
    "finetune": (8.75, 9.30, [2, 2, 2, 2], 60.0, None),
}
# What the stage plan records of each (tsmixit.training.plan.Stage.record): kind, round,
# order, labels, upstream. The label stage is left out: the student's upstream is the teacher.
RECORDS = {
    "teacher": ("teacher", 0, 0, "none", []),
    "student": ("student", 0, 2, "none", ["teacher"]),
    "finetune": ("finetune", 0, 3, "fraction", ["student"]),
    "supervised_full": ("supervised", None, 7, "all", []),
    "supervised_fraction": ("supervised", None, 8, "fraction", []),
}


def _make_run(run, n_channels=1, shift=0.0, systems=SYSTEMS, records=RECORDS):
    rng = np.random.default_rng(0)
    mixture = rng.standard_normal(SR).astype(np.float32)
    for system, (si, sdr, active, seconds, oracle) in systems.items():
        stage = run / system
        stage.mkdir(parents=True)
        kind, round_, order, labels, upstream = records[system]
        (stage / "summary.json").write_text(json.dumps({
            "stage": system, "system": system, "kind": kind, "round": round_, "order": order,
            "labels": labels, "upstream": upstream, "layout": LAYOUT, "train_seconds": seconds,
            "steps": 100, "labelled_mixtures": {"all": 400, "fraction": 40, "none": 0}[labels]}))
        lines = ["epoch,step,train_loss,val_loss,val_si_snri"]
        lines += [f"0,{s},{-s / 10:.2f},,"for s in range(0, 100, 10)]
        lines += ["0,49,,-3.0,2.5", "0,99,,-5.0,4.5"]
        (stage / "metrics.csv").write_text("\n".join(lines) + "\n")
        n_out = 2 if oracle is None else 4
        per_mixture = [
            {"id": f"m{i}", "si_snri_topk": si + shift + d, "sdri_topk": sdr + d,
             "si_snri_oracle": (oracle or si) + shift + d, "sdri_oracle": sdr + d,
             "active_outputs": a}
            for i, (a, d) in enumerate(zip(active, [-1.0, 1.0, -0.5, 0.5], strict=True))
        ]
        mean = {"si_snri_topk": si + shift, "sdri_topk": sdr, "si_snri_oracle": (oracle or si)
                + shift, "sdri_oracle": sdr, "active_outputs": float(np.mean(active)),
                "over_separated": float(np.mean([a > 2 for a in active]))}
        (run / "eval" / "examples").mkdir(parents=True, exist_ok=True)
        np.savez(run / "eval" / "examples" / f"{system}.npz", id="m0", sample_rate=SR,
                 mixture=mixture, references=np.stack([mixture * 0.5] * 2),
                 outputs=rng.standard_normal((n_out, SR)).astype(np.float32),
                 topk_outputs=np.array([1, 0]), oracle_groups=np.array([0, 1] * (n_out // 2)))
        (run / "eval" / f"{system}.json").write_text(json.dumps({
            "system": system, "stage": system, "k": 2, "n_outputs": n_out,
            "n_channels": n_channels, "n_mixtures": 4, "active_threshold_db": -20.0,
            "per_mixture": per_mixture, "mean": mean,
            "example": {"id": "m0", "path": f"examples/{system}.npz"}}))


def test_report_from_a_synthetic_run(tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    report = write_report(run)
    text = report.read_text()
    data = json.loads((run / "report.json").read_text())
    by_label = {r["label"]: r for r in data["rows"]}
    assert list(by_label) == [
        "Supervised PIT, 100 % labels", "Supervised PIT, labelled fraction only",
        "MixIT teacher (top-2)", "MixIT teacher (oracle grouping into 2)",
        "TS-MixIT student", "+ fine-tune",
    ]
    assert by_label["MixIT teacher (oracle grouping into 2)"]["si_snri"] == 7.75
    # Pipeline time: student = teacher 1200 s + student 300 s; fine-tune adds 60 s.
    assert by_label["+ fine-tune"]["total_seconds"] == 1560.0
    for line in ("| MixIT teacher (top-2) | 1 | 4.00 | 4.80 | 3.00 / 4 | 75% | 0 | 20.0 min |",
                 "| + fine-tune | 1 | 8.75 | 9.30 | 2.00 / 2 | 0% | 40 | 60 s (26.0 min total) |",
                 "| Supervised PIT, 100 % labels | 1 | 9.50 | 10.10 | 2.00 / 2 | 0% | 400 |"):
        assert line in text, line
    # student > teacher, over-separation, close to 100 %, beats the fraction, distillation,
    # multi-channel.
    assert [c["status"] for c in data["claims"]] == ["holds"] * 4 + ["not measured"] * 2
    assert "student 6.50 dB vs teacher 4.00 dB" in text
    assert "oracle - top-2 = 3.75 dB; 75% of mixtures" in text
    assert data["plots"] == ["plots/curves.png", "plots/active_outputs.png",
                             "plots/spectrograms.png", "plots/si_snri_per_mixture.png"]
    for plot in data["plots"]:
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in text


def test_multichannel_claim_with_a_compared_run(tmp_path):
    _make_run(tmp_path / "mono")
    _make_run(tmp_path / "spatial", n_channels=4, shift=2.0)
    write_report(tmp_path / "mono", compare=[tmp_path / "spatial"])
    data = json.loads((tmp_path / "mono" / "report.json").read_text())
    claim = next(c for c in data["claims"] if "multi-channel" in c["claim"])
    assert claim["status"] == "holds"
    assert "student: 4 mics 8.50 dB vs 1 mic 6.50 dB" in claim["detail"]
    assert any(r["label"] == "TS-MixIT student [spatial]" for r in data["rows"])


def test_report_of_an_empty_run_says_so(tmp_path):
    report = write_report(tmp_path)
    assert "No evaluated systems yet" in report.read_text()


def test_a_run_folder_of_the_previous_layout_is_refused_by_name(tmp_path):
    _make_run(tmp_path / "run")
    old = tmp_path / "run" / "student" / "summary.json"
    summary = json.loads(old.read_text())
    del summary["layout"]
    old.write_text(json.dumps(summary))
    with pytest.raises(TrainingError, match="earlier version of tsmixit.*--fresh"):
        write_report(tmp_path / "run")


# The mixture-only methods beside TS-MixIT: (SI-SNRi, SDRi, active outputs, seconds, oracle
# SI-SNRi or None for a k-output system) and their plan records.
METHODS = {
    "sparse_mixit": (5.00, 5.50, [2, 2, 3, 2], 900.0, 5.20),
    "semi_mixit": (6.00, 6.40, [2, 3, 3, 2], 800.0, 7.00),
    "remixit": (4.50, 5.10, [2, 2, 2, 2], 400.0, None),
    "self_remixing": (3.50, 4.20, [2, 2, 2, 2], 500.0, None),
}
METHOD_RECORDS = {
    "sparse_mixit": ("sparse_mixit", None, 9, "none", []),
    "semi_mixit": ("semi_mixit", None, 10, "fraction", []),
    "remixit": ("remixit", None, 11, "none", ["teacher"]),
    "self_remixing": ("self_remixing", None, 12, "none", ["teacher"]),
}


def test_methods_table_and_their_papers_claims(tmp_path):
    run = tmp_path / "run"
    _make_run(run, systems={**SYSTEMS, **METHODS}, records={**RECORDS, **METHOD_RECORDS})
    text = write_report(run).read_text()
    data = json.loads((run / "report.json").read_text())
    methods = {r["stage"]: r for r in data["methods"]}
    assert list(methods) == ["supervised_full", "supervised_fraction", "teacher", "student",
                             "finetune", *METHODS]
    # Over-separation by hand: teacher 7.75 - 4.00 >= 0.5 dB on 2/4 mixtures >= 25 %;
    # sparse MixIT's oracle gains 0.20 dB only; semi-supervised MixIT 1.00 dB on 2/4.
    assert methods["teacher"]["over_separates"] is True
    assert methods["sparse_mixit"]["over_separates"] is False
    assert methods["semi_mixit"]["over_separates"] is True
    assert methods["remixit"]["over_separates"] is None
    assert methods["sparse_mixit"]["vs_teacher_db"] == pytest.approx(1.0)
    assert methods["self_remixing"]["vs_teacher_db"] == pytest.approx(-0.5)
    assert methods["teacher"]["vs_teacher_db"] is None
    assert "| Sparse MixIT (top-2) | 0 | 5.00 / 5.50 | +1.00 | 2.25 / 4 | no |" in text
    # Labelled mixtures used by the whole pipeline: none for RemixIT from the MixIT teacher,
    # the fraction's 40 for the fine-tuned student (its upstream student used none).
    assert "| RemixIT | 0 | 4.50 / 5.10 | +0.50 | 2.00 / 2 | - (2 outputs) |" in text
    assert "| + fine-tune | 40 | 8.75 / 9.30 |" in text
    verdicts = {c["claim"].split(" (")[0]: c["status"] for c in data["claims"]}
    assert verdicts["Sparse MixIT"] == "holds"  # 2.25 < 3.00 active, 5.00 >= 4.00 dB
    assert verdicts["Semi-supervised MixIT"] == "holds"  # 6.00 > 5.25 dB
    assert verdicts["RemixIT"] == "holds"  # 4.50 > its teacher's 4.00 dB
    assert verdicts["Self-Remixing"] == "does not hold"  # 3.50 < 4.00 dB


def test_no_methods_table_without_a_method(tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    assert "Mixture-only methods" not in write_report(run).read_text()


@pytest.mark.parametrize("pretrained_si, status", [(5.0, "holds"), (7.0, "does not hold")])
def test_a_pretrained_start_claims_that_adapting_helps(tmp_path, pretrained_si, status):
    run = tmp_path / "run"
    _make_run(run, systems={**SYSTEMS, "pretrained": (pretrained_si, 6.0, [2] * 4, 0.0, None)},
              records={**RECORDS, "pretrained": ("pretrained", None, -1, "none", [])})
    write_report(run)
    data = json.loads((run / "report.json").read_text())
    claim = next(c for c in data["claims"] if "adapts the pretrained" in c["claim"])
    assert claim["status"] == status  # the student scores 6.50 dB
    assert f"vs pretrained {pretrained_si:.2f} dB" in claim["detail"]
    # A run without a pretrained start does not make the claim at all.
    _make_run(tmp_path / "plain")
    write_report(tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert not any("pretrained" in c["claim"] for c in plain["claims"])


def test_remixit_is_named_by_the_teacher_it_started_from():
    from tsmixit.evaluation.report import system_name

    def name(*upstream):
        return system_name({"kind": "remixit", "round": None, "upstream": list(upstream)})

    assert name("teacher") == name() == "RemixIT"
    assert name("supervised_fraction") == "RemixIT (from the supervised fraction)"
    assert name("pretrained") == "RemixIT (from the pretrained separator)"
    # init "scratch" with model.init: the MixIT teacher first, the pretrained start second
    assert name("teacher", "pretrained") == "RemixIT"
