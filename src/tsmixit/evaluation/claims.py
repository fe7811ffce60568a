"""The paper's claims, as measured on a run's results table: each a sentence with "holds",
"does not hold" or "not measured" and the numbers behind the verdict (SI-SNRi in dB, top-k
scoring unless said otherwise). Rows are those of `tsmixit.evaluation.report.table_rows`.

- TS-MixIT (Zhang et al.): the student beats its teacher's top-k outputs; the teacher
  over-separates; the fine-tuned student is close to supervised training on every label and
  beats it on the same labelled fraction; distillation helps; more microphones help.
- Starting from a pretrained separator (model.init): adapting on unlabelled mixtures of the
  target domain beats the pretrained separator there.
- Each mixture-only method's own paper (`check_method_claims`), for the methods run.
"""

from typing import Any

#: A claim "close to" another system holds within this many dB of SI-SNRi.
CLOSE_DB = 1.0
#: Over-separation holds when the oracle grouping gains at least this much over top-k ...
OVERSEPARATION_GAP_DB = 0.5
#: ... and at least this share of the test mixtures has more than k active outputs.
OVERSEPARATION_SHARE = 0.25


def _row(rows: list[dict[str, Any]], kind: str, scoring: str = "topk", run: str | None = None,
         **fields: Any) -> dict[str, Any] | None:
    """The first row of a kind of system (and the given fields: round, labels)."""
    return next((r for r in rows if r["kind"] == kind and r["scoring"] == scoring
                 and r["run"] == run and all(r[f] == v for f, v in fields.items())), None)


def _claim(text: str, holds: bool | None, detail: str) -> dict[str, Any]:
    status = {True: "holds", False: "does not hold", None: "not measured"}[holds]
    return {"claim": text, "status": status, "detail": detail}


def check_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's claims, each with "holds" / "does not hold" / "not measured" and the
    numbers behind the verdict (SI-SNRi in dB, top-k scoring unless said otherwise)."""
    claims = []
    teacher, teacher_oracle = _row(rows, "teacher"), _row(rows, "teacher", "oracle")
    student = _row(rows, "student", round=0)
    k = rows[0]["k"] if rows else 2
    text = f"The TS-MixIT student beats its MixIT teacher scored on its top-{k} outputs"
    if teacher and student:
        claims.append(_claim(text, student["si_snri"] > teacher["si_snri"],
                             f"student {student['si_snri']:.2f} dB vs teacher "
                             f"{teacher['si_snri']:.2f} dB"))
    else:
        claims.append(_claim(text, None, "needs evaluated teacher and student"))

    text = (f"The MixIT teacher over-separates: the oracle grouping beats top-{k} by at least "
            f"{OVERSEPARATION_GAP_DB} dB and at least {OVERSEPARATION_SHARE:.0%} of the test "
            f"mixtures have more than {k} active outputs")
    if teacher and teacher_oracle:
        gap = teacher_oracle["si_snri"] - teacher["si_snri"]
        share = teacher["over_separated"] or 0.0
        claims.append(_claim(
            text, gap >= OVERSEPARATION_GAP_DB and share >= OVERSEPARATION_SHARE,
            f"oracle - top-{k} = {gap:.2f} dB; {share:.0%} of mixtures with more than {k} "
            f"active outputs (mean {teacher['active_outputs']:.2f} of {teacher['n_outputs']})"))
    else:
        claims.append(_claim(text, None, "needs an evaluated teacher"))

    semi = [r for r in rows if r["scoring"] == "topk" and r["run"] is None
            and r["kind"] == "finetune"]
    # The pipeline's final fine-tuned student (after every distillation round), not the best
    # on the test set: choosing by test score would tune on the test set.
    final_semi = semi[-1] if semi else None
    full = _row(rows, "supervised", labels="all")
    fraction = _row(rows, "supervised", labels="fraction")
    text = (f"The semi-supervised (fine-tuned) student is within {CLOSE_DB} dB of, or better "
            "than, supervised training on 100 % of the labels")
    if final_semi and full:
        diff = final_semi["si_snri"] - full["si_snri"]
        claims.append(_claim(text, diff >= -CLOSE_DB,
                             f"{final_semi['label']} {final_semi['si_snri']:.2f} dB vs supervised "
                             f"100 % {full['si_snri']:.2f} dB ({diff:+.2f} dB)"))
    else:
        claims.append(_claim(text, None, "needs evaluated fine-tuned student and supervised 100 %"))
    text = "The semi-supervised student beats supervised training on the same labelled fraction"
    if final_semi and fraction:
        claims.append(_claim(text, final_semi["si_snri"] > fraction["si_snri"],
                             f"{final_semi['si_snri']:.2f} dB vs {fraction['si_snri']:.2f} dB"))
    else:
        claims.append(_claim(text, None, "needs evaluated fine-tuned student and supervised "
                                         "fraction"))
    finetune = _row(rows, "finetune", round=0)
    distilled = [r for r in semi if r["round"]]
    text = "Distillation improves on the fine-tuned student"
    if finetune and distilled:
        last = distilled[-1]
        claims.append(_claim(text, last["si_snri"] > finetune["si_snri"],
                             f"{last['label']} {last['si_snri']:.2f} dB vs fine-tuned "
                             f"{finetune['si_snri']:.2f} dB"))
    else:
        claims.append(_claim(text, None, "needs a distillation round with fine-tuning"))

    pretrained = _row(rows, "pretrained")
    if pretrained is not None:  # only runs that start from one (model.init) claim this
        text = ("TS-MixIT adapts the pretrained separator: the student, trained without labels "
                "on mixtures of the target domain, beats the pretrained separator there")
        claims.append(_claim(text, student["si_snri"] > pretrained["si_snri"],
                             f"student {student['si_snri']:.2f} dB vs pretrained "
                             f"{pretrained['si_snri']:.2f} dB")
                      if student else _claim(text, None, "needs an evaluated student"))

    text = "A multi-channel system beats the same single-channel system"
    pairs = []
    for multi in (r for r in rows if r["n_channels"] > 1 and r["scoring"] == "topk"):
        for single in (r for r in rows if r["n_channels"] == 1 and r["scoring"] == "topk"):
            if single["system"] == multi["system"]:
                pairs.append((multi, single))
    if pairs:
        claims.append(_claim(
            text, all(m["si_snri"] > s["si_snri"] for m, s in pairs),
            "; ".join(f"{m['system']}: {m['n_channels']} mics {m['si_snri']:.2f} dB vs 1 mic "
                      f"{s['si_snri']:.2f} dB" for m, s in pairs)))
    else:
        claims.append(_claim(text, None, "needs single- and multi-channel runs of one system "
                                         "(tsmixit report RUN --compare OTHER_RUN)"))
    return claims


def _over_separates(rows: list[dict[str, Any]], row: dict[str, Any]) -> bool | None:
    """The over-separation rule of the claims for a system with more than k outputs (oracle
    grouping >= OVERSEPARATION_GAP_DB over top-k on >= OVERSEPARATION_SHARE of mixtures);
    None for a k-output system, which cannot."""
    oracle = _row(rows, row["kind"], "oracle", stage=row["stage"])
    if oracle is None:
        return None
    return (oracle["si_snri"] - row["si_snri"] >= OVERSEPARATION_GAP_DB
            and (row["over_separated"] or 0.0) >= OVERSEPARATION_SHARE)


def method_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The methods table: one row per system of this run (top-k scoring), with whether it
    over-separates and its SI-SNRi against the MixIT teacher's top-k outputs."""
    teacher = _row(rows, "teacher")
    out = []
    for row in rows:
        if row["scoring"] != "topk" or row["run"] is not None:
            continue
        out.append({**row, "over_separates": _over_separates(rows, row),
                    "vs_teacher_db": None if teacher is None or row is teacher
                    else row["si_snri"] - teacher["si_snri"]})
    return out


def check_method_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each mixture-only method's own paper's claim, as measured (only for methods run)."""
    claims = []
    teacher = _row(rows, "teacher")
    fraction = _row(rows, "supervised", labels="fraction")
    sparse = _row(rows, "sparse_mixit")
    if sparse is not None:
        text = ("Sparse MixIT (Wisdom et al., WASPAA 2021) over-separates less than the MixIT "
                "teacher (fewer active outputs) and separates at least as well on its top-k")
        if teacher is not None:
            claims.append(_claim(
                text, sparse["active_outputs"] < teacher["active_outputs"]
                and sparse["si_snri"] >= teacher["si_snri"],
                f"active outputs {sparse['active_outputs']:.2f} of {sparse['n_outputs']} vs "
                f"{teacher['active_outputs']:.2f} of {teacher['n_outputs']}; top-k "
                f"{sparse['si_snri']:.2f} dB vs {teacher['si_snri']:.2f} dB"))
        else:
            claims.append(_claim(text, None, "needs an evaluated MixIT teacher"))
    semi = _row(rows, "semi_mixit")
    if semi is not None:
        text = ("Semi-supervised MixIT (Wisdom et al., NeurIPS 2020) beats supervised training "
                "on the same labelled fraction")
        claims.append(_claim(text, semi["si_snri"] > fraction["si_snri"],
                             f"{semi['si_snri']:.2f} dB vs {fraction['si_snri']:.2f} dB")
                      if fraction else _claim(text, None, "needs the supervised fraction"))
    remixit = _row(rows, "remixit")
    if remixit is not None:
        text = "RemixIT (Tzinis et al., JSTSP 2022): the student beats the teacher it started from"
        start = next((r for r in rows if r["scoring"] == "topk" and r["run"] is None
                      and r["stage"] in remixit.get("upstream", ())), None)
        claims.append(_claim(text, remixit["si_snri"] > start["si_snri"],
                             f"{remixit['si_snri']:.2f} dB vs {start['label']} "
                             f"{start['si_snri']:.2f} dB")
                      if start else _claim(text, None, "needs its evaluated teacher"))
    selfremix = _row(rows, "self_remixing")
    if selfremix is not None:
        text = ("Self-Remixing (Saijo & Ogawa, ICASSP 2023) beats MixIT (the teacher's top-k) "
                "and RemixIT")
        others = [r for r in (teacher, remixit) if r is not None]
        claims.append(_claim(
            text, all(selfremix["si_snri"] > r["si_snri"] for r in others),
            f"{selfremix['si_snri']:.2f} dB vs " + ", ".join(
                f"{r['label']} {r['si_snri']:.2f} dB" for r in others))
            if teacher is not None else _claim(text, None, "needs an evaluated MixIT teacher"))
    return claims
