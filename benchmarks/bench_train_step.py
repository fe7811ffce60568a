"""Conv-TasNet train step (forward + backward + Adam): tsmixit in float32, tsmixit on its
bfloat16 CPU path, and Asteroid's ConvTasNet; and a short supervised quality check of the
bfloat16 path against float32.

Speed: every configuration (implementation x preset x batch) runs in its own subprocess, so
that the peak resident memory (``resource.getrusage(...).ru_maxrss``) is that
configuration's alone; rounds alternate the sides' order so that a shared machine's load
falls on all alike. Input: 4 s at 8 kHz, 2 sources, loss = negative SI-SNR (same code on
every side). Printed per configuration: median seconds per step, seconds of audio per second,
peak RSS and the RSS growth over the process before its first step; then the ratios
bf16 / float32 (the fast path, > 1 faster) and tsmixit / Asteroid.

  tsmixit        float32, the exact layers (what training runs by default)
  tsmixit-bf16   the forward pass under CPU bfloat16 autocast, as Lightning's
                 ``precision="bf16-mixed"`` runs it: Conv-TasNet then takes its bfloat16 path
                 (``tsmixit.models._cpu_kernels``) where the CPU has AVX512-BF16 or AMX and a
                 bfloat16 product measures faster; float32 elsewhere (printed per run)

Quality (``--quality MANIFEST``): supervised PIT on the corpus's training split, the same
initial weights and batches in float32 and on the bfloat16 path (plus float32 from a second
seed: the run-to-run spread that a difference is to be read against), then SI-SNRi on the
validation split in float32 (exact inference) after the same steps.

Asteroid runs in its own environment only (never in the project's), e.g.

    python3 -m venv /tmp/asteroid-venv
    /tmp/asteroid-venv/bin/pip install torch==2.13.0
    /tmp/asteroid-venv/bin/pip install --no-deps asteroid==0.7.0 asteroid-filterbanks
    /tmp/asteroid-venv/bin/pip install numpy scipy pyyaml soundfile packaging requests \
        huggingface_hub

Usage:
    python benchmarks/bench_train_step.py [--asteroid-python /tmp/asteroid-venv/bin/python] \
        [--presets tiny small paper] [--batches 1 4] [--threads 1] [--checkpointing] [--no-bf16]
    python benchmarks/bench_train_step.py --quality CORPUS/manifest.jsonl \
        [--arch conv_tasnet|dprnn|sudormrf|tf_gridnet] [--presets small] \
        [--quality-steps 200] [--batch 4]
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
    if impl.startswith("tsmixit"):
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
    bf16 = args.impl == "tsmixit-bf16"
    path = "float32"
    if bf16:
        from tsmixit.models import _cpu_kernels

        with torch.autocast("cpu", dtype=torch.bfloat16):
            path = "bf16" if _cpu_kernels.use_bf16_training(mixture) else "float32"
    rss_before = rss_now_mib()
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            est = model(mixture)
        loss = neg_si_snr(est[..., :T], sources)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    result = {
        "params": sum(p.numel() for p in model.parameters()),
        "step_seconds": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before,
        "path": path,
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


def quality(args: argparse.Namespace) -> None:
    """Supervised PIT from the same initial weights on the same batches, float32 against the
    bfloat16 path (and float32 from a second seed), then validation SI-SNRi in float32."""
    from torch.utils.data import DataLoader

    from tsmixit.data.datasets import LabelledDataset
    from tsmixit.data.manifest import Manifest
    from tsmixit.losses import pit
    from tsmixit.metrics import si_snri_pit
    from tsmixit.models import _cpu_kernels
    from tsmixit.models.registry import separator_class

    torch.set_num_threads(args.threads)
    manifest = Manifest.load(args.quality)
    train = LabelledDataset(manifest.select(split="train"), int(args.quality_seconds * SAMPLE_RATE),
                            seed=0, allow_unlabelled=True)
    valid = LabelledDataset(manifest.select(split="valid"), int(4.0 * SAMPLE_RATE), seed=0,
                            allow_unlabelled=True)
    valid_items = [valid[i] for i in range(min(args.quality_valid, len(valid)))]
    probe = torch.zeros(1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = _cpu_kernels.use_bf16_training(probe)
    print(f"quality of {args.arch}: supervised PIT (negative SI-SNR), {args.quality_steps} "
          f"steps, batch {args.batch or 4} x {args.quality_seconds:g} s, Adam 1e-3, clip 5; "
          f"validation: {len(valid_items)} mixtures x 4 s, float32 inference. CPU bf16 flags "
          f"{sorted(_cpu_kernels.cpu_bf16_flags())}, bf16 product x"
          f"{_cpu_kernels.bf16_matmul_speedup():.2f} float32: the autocast run takes the "
          f"{'bfloat16' if fast else 'float32'} path (Conv-TasNet's kernels; the other "
          "separators: plain autocast)")

    def run(preset: str, autocast: bool, seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        model = separator_class(args.arch).from_preset(preset, n_sources=N_SOURCES)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = DataLoader(train, batch_size=args.batch or 4, shuffle=True,
                            generator=torch.Generator().manual_seed(0), drop_last=True)
        step, start = 0, time.perf_counter()
        model.train()
        while step < args.quality_steps:
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    est = model(batch["mixture"])
                loss = pit(est, batch["sources"])[0].mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                step += 1
                if step >= args.quality_steps:
                    break
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            scores = [si_snri_pit(model(item["mixture"][None]), item["sources"][None],
                                  item["mixture"][None, 0]).item() for item in valid_items]
        return sum(scores) / len(scores), seconds

    for preset in args.presets:
        base, t_base = run(preset, False, 0)
        bf16, t_bf16 = run(preset, True, 0)
        print(f"{preset:7} float32 seed 0: {base:6.3f} dB SI-SNRi ({t_base:5.0f} s)   "
              f"bf16 path seed 0: {bf16:6.3f} dB ({t_bf16:5.0f} s)   difference "
              f"{bf16 - base:+.3f} dB, training x{t_base / t_bf16:.2f}", flush=True)
        if args.quality_seeds > 1:
            other, _ = run(preset, False, 1)
            print(f"{preset:7} float32 seed 1: {other:6.3f} dB (seed-to-seed spread "
                  f"{other - base:+.3f} dB, the scale a bf16 difference is read against)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asteroid-python", help="interpreter with asteroid installed")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (0: by size)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per side")
    parser.add_argument("--checkpointing", action="store_true", help="also time tsmixit+ckpt")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 path")
    parser.add_argument("--quality", metavar="MANIFEST", help="run the quality check instead")
    parser.add_argument("--quality-steps", type=int, default=200)
    parser.add_argument("--arch", default="conv_tasnet", help="separator of the quality check")
    parser.add_argument("--quality-seconds", type=float, default=2.0)
    parser.add_argument("--quality-valid", type=int, default=60)
    parser.add_argument("--quality-seeds", type=int, default=2)
    parser.add_argument("--worker", choices=["tsmixit", "tsmixit-bf16", "asteroid"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--hparams", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first (the allocator's first steps page-fault)")
    args = parser.parse_args()
    if args.worker:
        worker(argparse.Namespace(**{**vars(args), "impl": args.worker}))
        return
    if args.quality:
        quality(args)
        return

    from tsmixit.models.conv_tasnet import PRESETS

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"Conv-TasNet train step, {SECONDS:g} s at {SAMPLE_RATE} Hz, {N_SOURCES} sources, "
        f"{args.threads} thread(s), torch {torch.__version__}; "
        f"median of {args.rounds} alternating rounds' timed steps; load average {load}"
    )
    header = (
        f"{'preset':7} {'batch':>5} {'impl':15} {'params':>10} {'s/step':>8} "
        f"{'audio s/s':>9} {'peak MiB':>9} {'grow MiB':>9}  path"
    )
    print(header)
    ratios, fast_ratios = [], []
    for preset in args.presets:
        hp = PRESETS[preset]
        for batch in args.batches:
            big = preset in ("paper", "authors")
            steps = args.steps or (3 if big else 6)
            sides = [("tsmixit", "tsmixit", sys.executable, False)]
            if not args.no_bf16:
                sides.append(("tsmixit-bf16", "tsmixit-bf16", sys.executable, False))
            if args.checkpointing:
                sides.append(("tsmixit+ckpt", "tsmixit", sys.executable, True))
            if args.asteroid_python:
                sides.append(("asteroid", "asteroid", args.asteroid_python, False))
            # Rounds alternate the sides' order, so that a shared machine's changing load
            # falls on all of them alike; every round is a fresh process per side.
            runs: dict[str, list[dict]] = {name: [] for name, _, _, _ in sides}
            for round_ in range(args.rounds):
                for name, impl, python, ckpt in sides[:: 1 if round_ % 2 == 0 else -1]:
                    runs[name].append(
                        run_config(python, impl, hp, batch, steps, args.warmup, args.threads,
                                   ckpt)
                    )
            results = {}
            for name, rs in runs.items():
                r = {
                    "params": rs[0]["params"],
                    "seconds_per_step": statistics.median(t for x in rs for t in x["step_seconds"]),
                    "peak_rss_mib": max(x["peak_rss_mib"] for x in rs),
                    "rss_before_mib": min(x["rss_before_mib"] for x in rs),
                    "path": rs[0].get("path", ""),
                }
                results[name] = r
                throughput = batch * SECONDS / r["seconds_per_step"]
                print(
                    f"{preset:7} {batch:5d} {name:15} {r['params']:10d} "
                    f"{r['seconds_per_step']:8.3f} {throughput:9.1f} {r['peak_rss_mib']:9.0f} "
                    f"{r['peak_rss_mib'] - r['rss_before_mib']:9.0f}  {r['path']}",
                    flush=True,
                )
            if "tsmixit-bf16" in results:
                ours, fast = results["tsmixit"], results["tsmixit-bf16"]
                fast_ratios.append((preset, batch, fast["path"],
                                    ours["seconds_per_step"] / fast["seconds_per_step"],
                                    fast["peak_rss_mib"] / ours["peak_rss_mib"]))
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
    if fast_ratios:
        print("\ntsmixit-bf16 / tsmixit (float32): throughput ratio (>1 faster), peak RSS ratio")
        for preset, batch, path, speed, peak in fast_ratios:
            print(f"{preset:7} batch {batch}: throughput x{speed:.2f} ({path} path), "
                  f"peak RSS x{peak:.2f}")
    if ratios:
        print("\ntsmixit / asteroid: throughput ratio (>1 faster), peak RSS ratio (<1 smaller)")
        for preset, batch, speed, peak, grow in ratios:
            print(
                f"{preset:7} batch {batch}: throughput x{speed:.2f}, peak RSS x{peak:.2f}, "
                f"RSS growth x{grow:.2f}"
            )


if __name__ == "__main__":
    main()
