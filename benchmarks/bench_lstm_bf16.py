"""How far can CPU bfloat16 take the recurrent separators? Each BiLSTM of a separator's
training step, alone (oneDNN's LSTM, the kernel torch runs on a CPU), float32 against
``torch.autocast("cpu", torch.bfloat16)``, beside the whole step measured the same way.

The BiLSTMs' shapes are taken from the model itself (forward hooks on a training step of
batch B x T seconds), so the figures follow the presets. Printed per separator: for each
distinct BiLSTM shape (sequences n, steps, input D, hidden H) the median seconds of forward +
backward of float32 and bf16, their ratio and the achieved GFLOP/s; then the whole training
step (bench_bf16_separators.step_time) and the share of its bf16 time the BiLSTMs take. When
the BiLSTMs gain less than 2x and take most of the step, no change outside them brings the
step to 2x.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_lstm_bf16.py [--archs dprnn tf_gridnet]
        [--preset small] [--batch 8] [--seconds 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from bench_bf16_separators import SAMPLE_RATE, step_time
from tsmixit.models.registry import separator_class


def lstm_shapes(model: torch.nn.Module, x: torch.Tensor) -> Counter:
    """(n, steps, D, H) of every BiLSTM call in one forward pass -> calls."""
    shapes: Counter = Counter()

    def hook(module: torch.nn.LSTM, args: tuple) -> None:
        n, steps, D = args[0].shape  # batch_first
        shapes[(n, steps, D, module.hidden_size)] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.LSTM)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


def lstm_time(n: int, steps: int, D: int, H: int, bf16: bool, reps: int) -> float:
    """Median seconds of forward + backward of one BiLSTM layer on (n, steps, D)."""
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(D, H, batch_first=True, bidirectional=True)
    x = torch.randn(n, steps, D, requires_grad=True)
    times = []
    for i in range(reps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y, _ = rnn(x)  # (n, steps, 2H)
        y.float().sum().backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["dprnn", "tf_gridnet"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    T = int(args.seconds * SAMPLE_RATE)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch "
          f"{args.batch} x {args.seconds} s, preset {args.preset}")
    for arch in args.archs:
        torch.manual_seed(0)
        model = separator_class(arch).from_preset(args.preset, n_sources=2)
        x, s = torch.randn(args.batch, T), torch.randn(args.batch, 2, T)
        lstm = {False: 0.0, True: 0.0}
        for (n, steps, D, H), calls in sorted(lstm_shapes(model, x).items()):
            f32, bf16 = (lstm_time(n, steps, D, H, b, args.reps) for b in (False, True))
            flops = 3 * 2 * 2 * n * steps * 4 * H * (D + H)  # fwd + bwd (~3x), 2 directions
            print(f"{arch:<11} BiLSTM n={n} steps={steps} D={D} H={H} x{calls}: float32 "
                  f"{f32:.3f} s ({flops / f32 / 1e9:.0f} GFLOP/s), bf16 {bf16:.3f} s "
                  f"({flops / bf16 / 1e9:.0f} GFLOP/s), {f32 / bf16:.2f}x")
            lstm[False] += calls * f32
            lstm[True] += calls * bf16
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        step = {b: step_time(model, opt, x, s, b, args.reps) for b in (False, True)}
        print(f"{arch:<11} whole step: float32 {step[False]:.3f} s, bf16 {step[True]:.3f} s, "
              f"{step[False] / step[True]:.2f}x; BiLSTMs alone {lstm[False] / lstm[True]:.2f}x, "
              f"{100 * lstm[True] / step[True]:.0f} % of the bf16 step")


if __name__ == "__main__":
    main()
