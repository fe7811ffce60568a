"""How long the stages of a run will take on this machine, measured before the first one.

A few training steps of each system kind (the MixIT teacher on mixtures of mixtures, the
k-output PIT separator) are timed on random batches of the configured size, at the precision
training will use (`train.precision`), and one forward of each on a second of audio; then,
per stage still to run,

    training   = steps x t_step,  steps = max_steps, or max_epochs x |train| / batch,
                 or max_minutes x 60 s / t_step
    validation = (steps / val_every) x seconds of validation audio x t_forward per second
    labelling  = seconds of audio labelled x t_forward per second (the teacher)
    remixing   = steps x batch x segment seconds x t_forward per second (RemixIT's teacher,
                 Self-Remixing's shuffler), on top of training
    evaluation = per system to run and per test set known before the run (eval.split and
                 eval.extra_sets): seconds of audio x t_forward per second
                 + mixtures x t_score (every metric of one mixture of the set's mean length)

Corpus building, the real-voice test set (built at evaluation) and the export are left out.
The numbers are the machine's own: on a slower
machine of the same kind the same budgets take longer, and the estimate says so up front.
The timing draws no random numbers from the run's generators (it forks them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from tsmixit.data.manifest import Manifest
from tsmixit.losses import mixit, pit
from tsmixit.metrics import quality_metrics, score_mixture
from tsmixit.models.registry import build_separator
from tsmixit.training.fit import StageContext, model_hparams, precision
from tsmixit.training.plan import Stage, label_mode

#: Steps timed per system kind, after one warm-up step.
TIMED_STEPS = 3
#: Stage kinds timed as the teacher (M outputs, MixIT on mixtures of mixtures); the others
#: as the k-output PIT separator, the remixing ones plus a teacher forward per batch.
MIXIT_KINDS = ("teacher", "semi_mixit", "sparse_mixit")
REMIXING_KINDS = ("remixit", "self_remixing")


@dataclass(frozen=True)
class Estimate:
    """Measured seconds per training step and per second of audio separated (by system
    kind: "teacher" or "student"), and the estimated seconds of each stage to run."""

    step_seconds: dict[str, float]
    forward_seconds: dict[str, float]
    stage_seconds: dict[str, float]
    evaluation_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values()) + self.evaluation_seconds

    def describe(self) -> str:
        steps = ", ".join(f"{k} {v:.3f} s/step" for k, v in self.step_seconds.items())
        if not self.stage_seconds:
            return f"measured {steps}; no stage left to run"
        return (f"measured {steps}: the {len(self.stage_seconds)} stage(s) to run should take "
                f"about {self.total_seconds / 60:.1f} min on this machine: "
                f"{sum(self.stage_seconds.values()) / 60:.1f} min of training, validation and "
                f"labelling, {self.evaluation_seconds / 60:.1f} min of evaluation (the "
                "real-voice test set, corpus building and the export not included)")


def crowded_threads(load: float | None = None, cores: int | None = None,
                    threads: int | None = None) -> str | None:
    """A warning when other processes keep busy the cores torch's threads need, else None.

    busy = 1-minute load average - 1 (this process); crowded when busy > cores - threads + 0.5:
    each parallel region then waits for its starved thread (README, "Speed", has the figure).
    """
    load = os.getloadavg()[0] if load is None else load
    cores = (os.cpu_count() or 1) if cores is None else cores
    threads = torch.get_num_threads() if threads is None else threads
    busy = max(0.0, load - 1.0)
    if threads <= 1 or busy <= cores - threads + 0.5:
        return None
    free = max(1, int(cores - busy + 0.5))
    return (f"other processes keep about {busy:.1f} of {cores} cores busy and torch runs "
            f"{threads} threads: every step waits for the starved ones and may run many "
            f"times slower; set OMP_NUM_THREADS={free} (or stop the other work) for this run")


def _device(ctx: StageContext) -> torch.device:
    wants_gpu = ctx.config.train.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def _timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _measure(ctx: StageContext, kind: str, device: torch.device) -> tuple[float, float]:
    """(seconds per training step, seconds per second of audio in a forward) of a kind."""
    m, d = ctx.config.model, ctx.config.data
    n_out, consistency = ((m.teacher_outputs, m.teacher_consistency) if kind == "teacher"
                          else (m.student_outputs, m.student_consistency))
    hparams = model_hparams(ctx, n_out, consistency)
    model = build_separator(m.arch, **hparams).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    frames = ctx.splits.frames(d.segment_seconds)
    x = torch.randn(d.batch_size, hparams["n_channels"], frames, device=device)  # (B, C, T)
    refs = torch.randn(d.batch_size, max(2, n_out), frames, device=device)  # (B, R, T)

    bf16 = device.type == "cpu" and precision(ctx.config) == "bf16-mixed"

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as training runs
            est = model(x)  # (B, n_out, T)
            loss, _ = (mixit(est, refs[:, :2]) if kind == "teacher"
                       else pit(est, refs[:, :n_out]))
        loss.mean().backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model(x[:1, :, : ctx.splits.sample_rate])

    model.train()
    step_s = _timed(step, TIMED_STEPS)
    model.eval()
    return step_s, _timed(forward, TIMED_STEPS)


def _score_seconds(ctx: StageContext, kind: str) -> float:
    """Seconds to score one mixture of the test split's mean length with every metric the
    evaluation computes (``score_mixture``: SI-SNR, BSS-eval SDR, the oracle grouping, PESQ
    and STOI where installed), for the outputs of a kind."""
    m, k, sr = ctx.config.model, ctx.config.model.student_outputs, ctx.splits.sample_rate
    n_out = m.teacher_outputs if kind == "teacher" else m.student_outputs
    rows = ctx.splits.test.rows
    frames = sum(r["num_frames"] for r in rows) // max(1, len(rows)) or sr
    est, ref = torch.randn(n_out, frames), torch.randn(k, frames)  # (M, T), (k, T)
    quality = quality_metrics()
    return _timed(lambda: score_mixture(est, ref, ref.sum(dim=0), k,
                                        ctx.config.eval.active_threshold_db, sr, quality), 1)


def _timed_as(stage: Stage) -> str:
    """The measured system kind a stage trains (or is scored) as: "teacher" or "student"."""
    return "teacher" if stage.kind in MIXIT_KINDS else "student"


def _audio_seconds(manifest: Manifest, sample_rate: int) -> float:
    return sum(row["num_frames"] for row in manifest.rows) / sample_rate


def estimate(ctx: StageContext, stages: list[Stage], evaluate: bool = True) -> Estimate:
    """Measure this machine and estimate the seconds of `stages` (those still to run) and,
    with `evaluate`, of scoring them on the test sets."""
    device = _device(ctx)
    kinds = {"teacher"} | {_timed_as(st) for st in stages}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        measured = {kind: _measure(ctx, kind, device) for kind in sorted(kinds)}
        score_s = {kind: _score_seconds(ctx, kind) for kind in sorted(kinds)}
    step_s = {k: v[0] for k, v in measured.items()}
    forward_s = {k: v[1] for k, v in measured.items()}
    t, d, sr = ctx.config.train, ctx.config.data, ctx.splits.sample_rate
    valid_audio = _audio_seconds(ctx.splits.valid_labelled, sr)
    label_audio = _audio_seconds(ctx.splits.unlabelled, sr)
    out: dict[str, float] = {}
    for stage in stages:
        if stage.kind == "label":
            on_disk = label_mode(ctx.config) == "disk"
            labeller = "teacher" if stage.round == 0 else "student"
            out[stage.name] = label_audio * forward_s[labeller] if on_disk else 0.0
            continue
        if stage.budget is None:  # trains nothing (a pretrained model)
            out[stage.name] = 0.0
            continue
        kind = _timed_as(stage)
        budget = ctx.budget(stage)
        if budget.max_steps is not None:
            steps = float(budget.max_steps)
        elif budget.max_epochs is not None:
            steps = budget.max_epochs * len(ctx.splits.train) / d.batch_size
        else:
            steps = budget.max_minutes * 60 / step_s[kind]
        validation = steps / t.val_every * valid_audio * forward_s[kind]
        # A remixing student's step also runs its teacher on the batch (B x segment s).
        remix = (forward_s["teacher"] * d.batch_size * d.segment_seconds
                 if stage.kind in REMIXING_KINDS else 0.0)
        out[stage.name] = steps * (step_s[kind] + remix) + validation
    test_sets = [ctx.splits.test, *ctx.splits.extra_sets.values()]
    scored = [_timed_as(st) for st in stages
              if evaluate and st.kind != "label"]  # every system but the labelling stages
    evaluation = sum(_audio_seconds(test, sr) * forward_s[kind] + len(test) * score_s[kind]
                     for test in test_sets for kind in scored)
    return Estimate(step_s, forward_s, out, evaluation)
