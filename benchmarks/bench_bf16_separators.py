"""Does CPU bfloat16 autocast pay for each separator's training step? float32 against
``torch.autocast("cpu", torch.bfloat16)`` (what Lightning's ``precision="bf16-mixed"`` runs),
per architecture and preset, in one process with the two sides alternating per round.

A step: forward on a batch of 4 s mixtures at 8 kHz, negative SI-SNR against random sources
with the best permutation of 2 (tsmixit.losses.pit), backward, Adam. Printed: median
seconds per step of each side, the ratio float32 / bf16 (> 1: bf16 is faster), and the
largest relative difference of the outputs of one forward pass on a fixed input (bf16
against float32, same weights). `train.precision: auto` takes bf16 only for separators that
declare a CPU bf16 path (`supports_cpu_bf16`); this script is the measurement that decides.

Usage:
    [TSMIXIT_MALLOC=keep] OMP_NUM_THREADS=1 python benchmarks/bench_bf16_separators.py \
        [--archs conv_tasnet dprnn sudormrf tf_gridnet] [--presets small] [--batch 4] \
        [--steps 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tsmixit.cpu_memory import keep_freed_memory
from tsmixit.losses import pit
from tsmixit.models._cpu_kernels import bf16_training_available
from tsmixit.models.registry import separator_class

SAMPLE_RATE = 8000


def step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
              s: torch.Tensor, bf16: bool, steps: int) -> float:
    """Median seconds of `steps` training steps (after one warm-up step)."""
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            est = model(x)  # (B, S, T)
        loss = pit(est.float(), s)[0].mean()  # negative SI-SNR, best permutation
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def output_difference(model: torch.nn.Module, x: torch.Tensor) -> float:
    """max |bf16 - float32| / max |float32| of one forward pass in eval mode."""
    model.eval()
    with torch.inference_mode():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x).float()
    model.train()
    return float((fast - exact).abs().max() / exact.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+",
                        default=["conv_tasnet", "dprnn", "sudormrf", "tf_gridnet"])
    parser.add_argument("--presets", nargs="+", default=["small"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kept = keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch "
          f"{args.batch} x {args.seconds} s; bf16 training available (tsmixit's check): "
          f"{bf16_training_available()}; TSMIXIT_MALLOC=keep in effect: {kept}")
    print(f"{'arch':<12} {'preset':<7} {'float32 s/step':>15} {'bf16 s/step':>12} "
          f"{'float32/bf16':>13} {'output diff':>12}")
    for arch in args.archs:
        for preset in args.presets:
            torch.manual_seed(0)
            model = separator_class(arch).from_preset(preset, n_sources=2)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            T = int(args.seconds * SAMPLE_RATE)
            x = torch.randn(args.batch, T)
            s = torch.randn(args.batch, 2, T)
            sides: dict[bool, list[float]] = {False: [], True: []}
            for r in range(args.rounds):
                for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
                    sides[bf16].append(step_time(model, opt, x, s, bf16, args.steps))
            f32, b16 = statistics.median(sides[False]), statistics.median(sides[True])
            diff = output_difference(model, x[:1])
            print(f"{arch:<12} {preset:<7} {f32:>15.3f} {b16:>12.3f} {f32 / b16:>13.2f} "
                  f"{diff:>12.4f}", flush=True)


if __name__ == "__main__":
    main()
