"""Conv-TasNet train step (forward + backward + Adam), tsmixit against Asteroid's ConvTasNet.

Every configuration (implementation x preset x batch) runs in its own subprocess, so that the
peak resident memory (``resource.getrusage(...).ru_maxrss``) is that configuration's alone.
Input: 4 s at 8 kHz, 2 sources, loss = negative SI-SNR (same code on both sides). Printed per
configuration: median seconds per step, seconds of audio per second, peak RSS and the RSS
growth over the process before its first step; then tsmixit / Asteroid ratios.

Asteroid runs in its own environment only (never in the project's), e.g.

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install torch==2.13.0
    /tmp/bench-venv/bin/pip install --no-deps asteroid asteroid-filterbanks
    /tmp/bench-venv/bin/pip install numpy scipy pyyaml soundfile packaging requests \
        huggingface_hub

Usage:
    python benchmarks/bench_train_step.py --asteroid-python /tmp/bench-venv/bin/python \
        [--presets tiny small paper] [--batches 1 4] [--threads 1] [--checkpointing]
Without --asteroid-python only tsmixit is measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SAMPLE_RATE = 8000
SECONDS = 4.0
N_SOURCES = 2


def rss_now_mib() -> float:
    """Current resident memory of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def neg_si_snr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean negative SI-SNR in dB over (batch, sources, time); identical for both sides."""
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + 1e-8)
    target = scale * ref
    ratio = target.square().sum(-1) / ((est - target).square().sum(-1) + 1e-8)
    return -10 * torch.log10(ratio + 1e-8).mean()


def build(impl: str, hp: dict, checkpointing: bool) -> torch.nn.Module:
    """The model of one side; Asteroid gets the paper's choices (ReLU encoder and masks)."""
    if impl == "tsmixit":
        from tsmixit.models.conv_tasnet import ConvTasNet

        return ConvTasNet(n_sources=N_SOURCES, checkpointing=checkpointing, **hp)
    from asteroid.models import ConvTasNet as AsteroidConvTasNet

    return AsteroidConvTasNet(
        n_src=N_SOURCES,
        n_filters=hp["N"],
        kernel_size=hp["L"],
        stride=hp["L"] // 2,
        bn_chan=hp["B"],
        hid_chan=hp["H"],
        skip_chan=hp.get("Sc") or hp["B"],
        conv_kernel_size=hp["P"],
        n_blocks=hp["X"],
        n_repeats=hp["R"],
        norm_type="gLN",
        mask_act="relu",
        encoder_activation="relu",
        sample_rate=SAMPLE_RATE,
    )


def worker(args: argparse.Namespace) -> None:
    """Measure one configuration and print one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hp = json.loads(args.hparams)
    model = build(args.impl, hp, args.checkpointing)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    T = int(SECONDS * SAMPLE_RATE)
    sources = torch.randn(args.batch, N_SOURCES, T)  # (batch, C, T)
    mixture = sources.sum(dim=1)  # (batch, T)
    rss_before = rss_now_mib()
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = neg_si_snr(model(mixture)[..., :T], sources)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    result = {
        "params": sum(p.numel() for p in model.parameters()),
        "step_seconds": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before,
    }
    print(json.dumps(result))


def run_config(
    python: str,
    impl: str,
    hp: dict,
    batch: int,
    steps: int,
    warmup: int,
    threads: int,
    checkpointing: bool,
) -> dict:
    cmd = [
        python,
        __file__,
        "--worker",
        impl,
        "--hparams",
        json.dumps(hp),
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
    ]
    if checkpointing:
        cmd.append("--checkpointing")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asteroid-python", help="interpreter with asteroid installed")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (0: by size)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per side")
    parser.add_argument("--checkpointing", action="store_true", help="also time tsmixit+ckpt")
    parser.add_argument("--worker", choices=["tsmixit", "asteroid"], help=argparse.SUPPRESS)
    parser.add_argument("--hparams", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(argparse.Namespace(**{**vars(args), "impl": args.worker}))
        return

    from tsmixit.models.conv_tasnet import PRESETS

    print(
        f"Conv-TasNet train step, {SECONDS:g} s at {SAMPLE_RATE} Hz, {N_SOURCES} sources, "
        f"{args.threads} thread(s), torch {torch.__version__}; "
        f"median of {args.rounds} alternating rounds' timed steps"
    )
    header = (
        f"{'preset':7} {'batch':>5} {'impl':15} {'params':>10} {'s/step':>8} "
        f"{'audio s/s':>9} {'peak MiB':>9} {'grow MiB':>9}"
    )
    print(header)
    ratios = []
    for preset in args.presets:
        hp = PRESETS[preset]
        for batch in args.batches:
            big = preset in ("paper", "authors")
            steps = args.steps or (2 if big else 5)
            sides = [("tsmixit", sys.executable, False)]
            if args.checkpointing:
                sides.append(("tsmixit+ckpt", sys.executable, True))
            if args.asteroid_python:
                sides.append(("asteroid", args.asteroid_python, False))
            # Rounds alternate the sides' order, so that a shared machine's changing load
            # falls on all of them alike; every round is a fresh process per side.
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
            for round_ in range(args.rounds):
                for name, python, ckpt in sides[:: 1 if round_ % 2 == 0 else -1]:
                    impl = "asteroid" if name == "asteroid" else "tsmixit"
                    runs[name].append(
                        run_config(python, impl, hp, batch, steps, 1, args.threads, ckpt)
                    )
            results = {}
            for name, rs in runs.items():
                r = {
                    "params": rs[0]["params"],
                    "seconds_per_step": statistics.median(t for x in rs for t in x["step_seconds"]),
                    "peak_rss_mib": max(x["peak_rss_mib"] for x in rs),
                    "rss_before_mib": min(x["rss_before_mib"] for x in rs),
                }
                results[name] = r
                throughput = batch * SECONDS / r["seconds_per_step"]
                print(
                    f"{preset:7} {batch:5d} {name:15} {r['params']:10d} "
                    f"{r['seconds_per_step']:8.3f} {throughput:9.1f} {r['peak_rss_mib']:9.0f} "
                    f"{r['peak_rss_mib'] - r['rss_before_mib']:9.0f}",
                    flush=True,
                )
            if "asteroid" in results:
                ours, theirs = results["tsmixit"], results["asteroid"]
                ratios.append(
                    (
                        preset,
                        batch,
                        theirs["seconds_per_step"] / ours["seconds_per_step"],
                        ours["peak_rss_mib"] / theirs["peak_rss_mib"],
                        (ours["peak_rss_mib"] - ours["rss_before_mib"])
                        / (theirs["peak_rss_mib"] - theirs["rss_before_mib"]),
                    )
                )
    if ratios:
        print("\ntsmixit / asteroid: throughput ratio (>1 faster), peak RSS ratio (<1 smaller)")
        for preset, batch, speed, peak, grow in ratios:
            print(
                f"{preset:7} batch {batch}: throughput x{speed:.2f}, peak RSS x{peak:.2f}, "
                f"RSS growth x{grow:.2f}"
            )


if __name__ == "__main__":
    main()
