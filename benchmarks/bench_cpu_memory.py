"""What does keeping freed memory mapped (``TSMIXIT_MALLOC=keep``, tsmixit.cpu_memory) do to
a CPU training step? Each separator's step (bench_bf16_separators.step_time: forward, PIT
loss, backward, Adam) in float32 and under bf16 autocast, each side in its own process, glibc
as it is against ``keep`` (and, with ``--setting thp``, PyTorch's huge pages,
``THP_MEM_ALLOC_ENABLE=1``, in place of ``keep``), the two alternating over rounds.

Printed per separator and precision: median seconds per step of each setting, their ratio
(> 1: the setting is faster), the children's peak resident memory, and last the speed of bf16
with the setting against float32 without it.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_memory.py \
        [--archs conv_tasnet dprnn sudormrf tf_gridnet] [--preset small] [--batch 8] \
        [--seconds 2] [--steps 3] [--rounds 2] [--setting keep|thp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import torch

from bench_bf16_separators import SAMPLE_RATE, step_time
from tsmixit.cpu_memory import MALLOC_ENV, keep_freed_memory
from tsmixit.models.registry import separator_class

SETTINGS = {"keep": {MALLOC_ENV: "keep"}, "thp": {"THP_MEM_ALLOC_ENABLE": "1"}}
BASELINE = {MALLOC_ENV: "default", "THP_MEM_ALLOC_ENABLE": "0"}


def child(arch: str, preset: str, bf16: bool, batch: int, seconds: float, steps: int) -> None:
    """One side, in this process: print {"step": s, "rss_mb": peak resident MiB} as JSON."""
    keep_freed_memory()
    torch.manual_seed(0)
    model = separator_class(arch).from_preset(preset, n_sources=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    T = int(seconds * SAMPLE_RATE)
    x, s = torch.randn(batch, T), torch.randn(batch, 2, T)
    seconds_per_step = step_time(model, opt, x, s, bf16, steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    print(json.dumps({"step": seconds_per_step, "rss_mb": rss}))


def side(args: argparse.Namespace, arch: str, bf16: bool, on: bool) -> dict[str, float]:
    """Run one side in a child process, with the setting `on` or the baseline."""
    cmd = [sys.executable, __file__, "--child", arch, args.preset, str(int(bf16)),
           "--batch", str(args.batch), "--seconds", str(args.seconds), "--steps",
           str(args.steps)]
    env = {**os.environ, **BASELINE, **(SETTINGS[args.setting] if on else {})}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+",
                        default=["conv_tasnet", "dprnn", "sudormrf", "tf_gridnet"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--setting", choices=SETTINGS, default="keep")
    parser.add_argument("--child", nargs=3, metavar=("ARCH", "PRESET", "BF16"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, preset, bf16 = args.child
        child(arch, preset, bf16 == "1", args.batch, args.seconds, args.steps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), preset "
          f"{args.preset}, batch {args.batch} x {args.seconds} s, {args.rounds} rounds, "
          f"setting {args.setting} ({SETTINGS[args.setting]}) against {BASELINE}")
    print(f"{'arch':<12} {'precision':<9} {'without s/step':>14} {'with s/step':>12} "
          f"{'without/with':>13} {'peak MiB without / with':>24}")
    for arch in args.archs:
        step: dict[tuple[bool, bool], list[float]] = {}
        rss: dict[tuple[bool, bool], list[float]] = {}
        for bf16 in (False, True):
            for r in range(args.rounds):
                for on in (False, True) if r % 2 == 0 else (True, False):
                    got = side(args, arch, bf16, on)
                    step.setdefault((bf16, on), []).append(got["step"])
                    rss.setdefault((bf16, on), []).append(got["rss_mb"])
            med = {k: statistics.median(v) for k, v in step.items()}
            off, on = med[(bf16, False)], med[(bf16, True)]
            print(f"{arch:<12} {'bf16' if bf16 else 'float32':<9} {off:>14.3f} {on:>12.3f} "
                  f"{off / on:>13.2f} {max(rss[(bf16, False)]):>12.0f} / "
                  f"{max(rss[(bf16, True)]):<9.0f}", flush=True)
        print(f"{arch:<12} bf16 with {args.setting} against float32 without: "
              f"{med[(False, False)] / med[(True, True)]:.2f}x (against float32 with it "
              f"{med[(False, True)] / med[(True, True)]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
