"""Loss speed and precision: exact MixIT and PIT against Asteroid and time-axis baselines,
all measured in this process, interleaved (one call of each method per round), medians.

MixIT (batch 8, 4 s at 8 kHz, 2 mixtures, M estimates, forward + backward):
  asteroid  Asteroid's MixITLossWrapper (generalized) with the same -SNR_tau loss per remix
  loop      one remix + snr_tau per mixing matrix in a Python loop (no Asteroid needed)
  einsum    all N^M remixes at once on the time axis: (B, N^M, N, T), then snr_tau
  gram      tsmixit.losses.mixit: candidates ranked from a Gram matrix, loss on the time axis
  lsq       tsmixit.losses.mixit_least_squares (one assignment, not exact)
PIT (same batch, n references = n estimates, negative SI-SNR, forward + backward):
  asteroid     Asteroid's PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx")
  loop         per-pair si_snr in a Python loop, then all permutations
  torchmetrics torchmetrics' permutation_invariant_training (speaker-wise SI-SNR)
  gram         tsmixit.losses.pit (pairwise matrix from one Gram matrix, backward by hand)
Precision (why float32 where it is used, float64 where not): errors against float64
time-axis values at set SNRs, of SI-SNR from float32 Gram matrices (one product, by chunks,
and what pairwise_neg_si_snr returns) and of MixIT's candidate scores and loss.

Asteroid is never installed in the project's environment. Its loss modules
(``asteroid/losses/{pit_wrapper,mixit_wrapper,sdr}.py``: they import only torch, scipy and
the standard library) are loaded from their files into this process, so that both sides
run on the same torch, in the same rounds; ``--asteroid-python`` names the interpreter of
an environment that has it (default: $ASTEROID_PYTHON, else /tmp/asteroid-venv/bin/python):

    python3 -m venv /tmp/asteroid-venv
    /tmp/asteroid-venv/bin/pip install torch==2.13.0
    /tmp/asteroid-venv/bin/pip install asteroid==0.7.0 --no-deps

Usage: python benchmarks/bench_losses.py [--device cuda] [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torchmetrics.functional.audio import (
    permutation_invariant_training,
    scale_invariant_signal_noise_ratio,
)

from tsmixit import losses
from tsmixit.losses import (
    mixit,
    mixit_assignments,
    mixit_least_squares,
    pairwise_neg_si_snr,
    pit,
    si_snr,
    snr_tau,
)

DEFAULT_ASTEROID_PYTHON = "/tmp/asteroid-venv/bin/python"
ASTEROID_MODULES = ("sdr", "pit_wrapper", "mixit_wrapper")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- Asteroid


def load_asteroid(python: str | None) -> tuple[dict[str, ModuleType], str] | None:
    """Asteroid's loss modules and where they came from, or None when it is not found.

    In this environment when it is installed here; else from the files of the environment
    of ``python`` (its own ``import asteroid`` tells the folder and the version)."""
    try:
        mods = {name: importlib.import_module(f"asteroid.losses.{name}")
                for name in ASTEROID_MODULES}
        import asteroid

        return mods, f"asteroid {asteroid.__version__} (this environment)"
    except ImportError:
        pass
    if not python or not Path(python).exists():
        return None
    probe = ("import asteroid, asteroid.losses, os, torch; "
             "print(os.path.dirname(asteroid.losses.__file__)); "
             "print(asteroid.__version__); print(torch.__version__)")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"[asteroid] {python} cannot import asteroid:\n{done.stderr[-800:]}")
        return None
    folder, version, their_torch = done.stdout.split()[-3:]
    mods = {}
    for name in ASTEROID_MODULES:
        spec = importlib.util.spec_from_file_location(
            f"_asteroid_losses_{name}", Path(folder) / f"{name}.py"
        )
        assert spec is not None and spec.loader is not None
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    where = (f"asteroid {version} loss modules loaded from {folder} (its environment has "
             f"torch {their_torch}; they run here on torch {torch.__version__})")
    return mods, where


def asteroid_mixit(mods: dict[str, ModuleType]) -> LossFn:
    def neg_snr_tau(est_mixes: torch.Tensor, mixtures: torch.Tensor) -> torch.Tensor:
        return -snr_tau(est_mixes, mixtures).mean(dim=-1)  # (B,), what tsmixit optimises

    wrapper = mods["mixit_wrapper"].MixITLossWrapper(
        neg_snr_tau, generalized=True, reduction="none"
    )
    return lambda est, mixtures: wrapper(est, mixtures).squeeze(1)  # (B,)


def asteroid_pit(mods: dict[str, ModuleType]) -> LossFn:
    """PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx").forward without its final batch
    mean (the timing takes it), so that values compare per example."""
    wrapper = mods["pit_wrapper"].PITLossWrapper
    pairwise = mods["sdr"].pairwise_neg_sisdr

    def loss(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        min_loss, _ = wrapper.find_best_perm(pairwise(est, ref))
        return min_loss  # (B,)

    return loss


# ---------------------------------------------------------------------------- baselines


def mixit_loop(est: torch.Tensor, mixtures: torch.Tensor) -> torch.Tensor:
    """Baseline: remix and score each of the N^M mixing matrices in turn."""
    n_mix, n_est = mixtures.shape[1], est.shape[1]
    values = []
    for choice in itertools.product(range(n_mix), repeat=n_est):
        A = torch.zeros(n_mix, n_est, device=est.device)
        A[list(choice), list(range(n_est))] = 1.0
        remix = torch.einsum("nm,bmt->bnt", A, est)  # (B, N, T)
        values.append(-snr_tau(remix, mixtures).mean(dim=-1))  # (B,)
    return torch.stack(values, dim=-1).min(dim=-1).values  # (B,)


def mixit_einsum(est: torch.Tensor, mixtures: torch.Tensor, snr_max: float | None = 30.0
                 ) -> torch.Tensor:
    """All remixes at once on the time axis with one einsum."""
    A = mixit_assignments(mixtures.shape[1], est.shape[1]).to(est)  # (K, N, M)
    remix = torch.einsum("knm,bmt->bknt", A, est)  # (B, K, N, T)
    neg_snr = -snr_tau(remix, mixtures.unsqueeze(1), snr_max).mean(dim=-1)  # (B, K)
    return neg_snr.min(dim=-1).values  # (B,)


def pit_loop(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Baseline: per-pair SI-SNR in a Python loop, then every permutation."""
    n = ref.shape[1]
    pair = torch.stack(
        [torch.stack([-si_snr(est[:, e], ref[:, s]) for s in range(n)], -1) for e in range(n)],
        dim=1,
    )  # (B, E, S)
    scores = [pair[:, list(p), range(n)].mean(-1) for p in itertools.permutations(range(n))]
    return torch.stack(scores, dim=-1).min(dim=-1).values  # (B,)


def pit_torchmetrics(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    best, _ = permutation_invariant_training(
        est, ref, scale_invariant_signal_noise_ratio, mode="speaker-wise", eval_func="max"
    )
    return -best


# ------------------------------------------------------------------------------- timing


def time_interleaved(
    fns: dict[str, LossFn], est: torch.Tensor, ref: torch.Tensor, repeats: int,
    slow_repeats: dict[str, int] | None = None,
) -> dict[str, tuple[float, torch.Tensor]]:
    """Median seconds of forward + backward per method, calls interleaved round by round
    (a shared machine's changing load falls on all alike), and each method's loss values.
    ``slow_repeats`` caps the rounds of slow methods (they take part in the first rounds)."""

    def sync() -> None:
        if est.is_cuda:
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in fns}
    values: dict[str, torch.Tensor] = {}
    for fn in fns.values():  # warm-up
        est.grad = None
        fn(est, ref).mean().backward()
    for round_ in range(repeats):
        for name, fn in fns.items():
            if slow_repeats and round_ >= slow_repeats.get(name, repeats):
                continue
            est.grad = None
            sync()
            start = time.perf_counter()
            loss = fn(est, ref)
            loss.mean().backward()
            sync()
            times[name].append(time.perf_counter() - start)
            values[name] = loss.detach()
    return {name: (statistics.median(times[name]), values[name]) for name in fns}


def report(title: str, results: dict[str, tuple[float, torch.Tensor]], baseline: str,
           ours: str = "gram") -> None:
    """Medians, speed-ups over the baseline, and for exact methods (names without
    parentheses) the largest loss difference to the baseline, absolute and relative."""
    base_t, base_loss = results[baseline]
    print(title)
    for name, (seconds, loss) in results.items():
        line = f"  {name:<16} {seconds * 1e3:9.2f} ms  {base_t / seconds:7.1f}x vs {baseline}"
        if "(" not in name and name != baseline:
            diff = (loss.double() - base_loss.double()).abs()
            rel = (diff / base_loss.double().abs().clamp_min(1e-12)).max().item()
            line += f"   max |loss - {baseline}| = {diff.max().item():.1e} dB ({rel:.1e} rel.)"
        print(line)
    print(f"  => {ours}: {base_t / results[ours][0]:.1f}x {baseline}")


# ---------------------------------------------------------------------------- precision


def at_snr(ref: torch.Tensor, snr_db: float) -> torch.Tensor:
    """ref plus zero-mean noise at exactly snr_db per signal (float32)."""
    noise = torch.randn_like(ref)
    noise -= noise.mean(dim=-1, keepdim=True)
    noise *= ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
    return ref + noise * 10.0 ** (-snr_db / 20.0)


def gram_precision(batch: int, T: int, device: torch.device) -> None:
    """Largest errors in dB against float64 time-axis values (float32 signals)."""
    print("Precision: max |error| in dB against float64 on the time axis (float32 signals)")
    print("  PIT's SI-SNR from inner products: float32 Gram in one product, float32 Gram by "
          f"chunks of {losses.GRAM_CHUNK}, float64 Gram, and pairwise_neg_si_snr (float32 by "
          f"chunks, examples above {losses.PIT_FLOAT32_MAX_SI_SNR:g} dB redone in float64)")

    def si_from(gram: torch.Tensor) -> torch.Tensor:  # (B, 2, 2) of [est; ref] -> (B,)
        gram = gram.double()
        cross, e, r = gram[:, 0, 1], gram[:, 0, 0], gram[:, 1, 1]
        alpha = (cross + 1e-8) / (r + 1e-8)
        target = alpha**2 * r
        noise = (target - 2 * alpha * cross + e).clamp_min(0)
        return 10 * torch.log10((target + 1e-8) / (noise + 1e-8))

    ref = torch.randn(batch, 1, T, device=device)
    ref -= ref.mean(dim=-1, keepdim=True)
    for snr_db in (10.0, 20.0, 30.0, 40.0, 60.0):
        est = at_snr(ref, snr_db)
        exact = si_snr(est.double(), ref.double())[:, 0]  # (B,)
        both = torch.cat([est, ref], dim=1)  # (B, 2, T)
        variants = {
            "one product": torch.bmm(both, both.transpose(1, 2)),
            "by chunks": losses._grams_by_chunks((both, both))[0],
            "float64": torch.bmm(both.double(), both.double().transpose(1, 2)),
        }
        line = f"  SI-SNR {snr_db:4.0f} dB:"
        for name, gram in variants.items():
            line += f"  {name} {(si_from(gram) - exact).abs().max().item():.1e}"
        got = -pairwise_neg_si_snr(est, ref)[:, 0, 0]
        line += f"  pairwise_neg_si_snr {(got.double() - exact).abs().max().item():.1e}"
        print(line)

    print("  MixIT (M = 4): candidate scores from the float32 Gram by chunks, and the loss "
          "(snr_max = 30: float32 ranking; None: float64 ranking)")
    sources = torch.randn(batch, 4, T, device=device)
    A_true = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1]), 2).T.float().to(device)
    for snr_db in (10.0, 30.0, 40.0, 60.0):
        mixtures = torch.einsum("nm,bmt->bnt", A_true, sources)
        est = sources.clone()
        est[:, 0] = at_snr(sources[:, :1], snr_db)[:, 0]  # remixes at about snr_db
        est[:, 2] = at_snr(sources[:, 2:3], snr_db)[:, 0]
        A_all = mixit_assignments(2, 4).to(device)
        line = f"  remix SNR {snr_db:4.0f} dB:"
        for snr_max in (30.0, None):
            exact_scores = -snr_tau(  # (B, K)
                torch.einsum("knm,bmt->bknt", A_all, est.double()),
                mixtures.double().unsqueeze(1), snr_max,
            ).mean(-1)
            xx, xs, ss = losses._mixit_gram(est, mixtures, torch.float32)
            scores = losses._remix_neg_snr(xx, xs, ss, A_all, snr_max, 1e-8)
            score_err = (scores.double() - exact_scores).abs().max().item()
            loss_err = (mixit(est, mixtures, snr_max)[0].double()
                        - exact_scores.min(-1).values).abs().max().item()
            label = "cap 30" if snr_max else "no cap"
            line += f"   {label}: f32 scores {score_err:.1e}, loss {loss_err:.1e}"
        print(line)


# --------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixit-m", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--pit-n", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--asteroid-python",
                        default=os.environ.get("ASTEROID_PYTHON", DEFAULT_ASTEROID_PYTHON))
    parser.add_argument("--no-precision", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    T = int(args.seconds * args.sample_rate)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path(
        "/proc/loadavg").exists() else "?"
    print(f"device {name}, threads {torch.get_num_threads()}, batch {args.batch}, T {T}, "
          f"torch {torch.__version__}, load average {load} on {os.cpu_count()} CPUs")
    found = load_asteroid(args.asteroid_python)
    if found is None:
        print("Asteroid not found: tsmixit figures only (against in-house baselines). To "
              "compare, install it in its own environment (see this file's docstring) and "
              "pass --asteroid-python PATH or set ASTEROID_PYTHON.")
        mods = None
    else:
        mods, where = found
        print(where)

    for n_est in args.mixit_m:
        est = torch.randn(args.batch, n_est, T, device=device, requires_grad=True)
        mixtures = torch.randn(args.batch, 2, T, device=device)
        fns: dict[str, LossFn] = {}
        if mods:
            fns["asteroid"] = asteroid_mixit(mods)
        fns |= {
            "loop": mixit_loop,
            "einsum": mixit_einsum,
            "gram": lambda e, x: mixit(e, x)[0],
            "lsq (approx.)": lambda e, x: mixit_least_squares(e, x)[0],
        }
        slow = {"asteroid": 3, "loop": 3, "einsum": 3} if n_est > 6 else None
        results = time_interleaved(fns, est, mixtures, args.repeats, slow)
        report(f"MixIT M={n_est} N=2 ({2**n_est} assignments), forward + backward", results,
               "asteroid" if mods else "loop")

    for n in args.pit_n:
        ref = torch.randn(args.batch, n, T, device=device)
        est = (ref + 0.3 * torch.randn_like(ref)).requires_grad_(True)  # about 10 dB
        fns = {}
        if mods:
            fns["asteroid"] = asteroid_pit(mods)
        fns |= {
            "loop": pit_loop,
            "torchmetrics": pit_torchmetrics,
            "gram": lambda e, r: pit(e, r)[0],
            "(pairwise only)": lambda e, r: pairwise_neg_si_snr(e, r).mean((1, 2)),
        }
        results = time_interleaved(fns, est, ref, max(args.repeats, 15))
        report(f"PIT n={n} (negative SI-SNR), forward + backward", results,
               "asteroid" if mods else "loop")

    if not args.no_precision:
        gram_precision(args.batch, T, device)


if __name__ == "__main__":
    main()
