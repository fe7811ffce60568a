"""The hand-written CPU backward passes of ``tsmixit.models._cpu_kernels`` against torch's
generic ones, measured in the same run: forward + backward of one layer, one thread.

  prelu      ``PReLUFunction`` against ``F.prelu``
  prelu+gLN  ``PReLUGroupNormFunction`` against ``F.prelu`` then ``F.group_norm`` (one group)
  depthwise  ``DepthwiseFunction`` against ``F.conv1d`` (groups = channels) on the padded input

Printed per layer and shape (batch, channels, frames): median milliseconds of each, the ratio
torch / tsmixit (> 1: the hand-written pass is faster) and the largest gradient difference
relative to the largest gradient.

Usage: python benchmarks/bench_cpu_kernels.py [--threads 1] [--repeats 20]
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tsmixit.models._cpu_kernels import (
    DepthwiseFunction,
    PReLUFunction,
    PReLUGroupNormFunction,
)

SHAPES = [(4, 128, 4000), (1, 512, 4000), (4, 512, 4000)]
P, DILATION = 3, 4
PAD = ((P - 1) * DILATION // 2, (P - 1) * DILATION - (P - 1) * DILATION // 2)


def time_backward(
    fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], grad: torch.Tensor, repeats: int
) -> tuple[float, list[torch.Tensor]]:
    """Median seconds of forward + backward with output gradient `grad`, and the gradients
    of `inputs`."""
    times = []
    for _ in range(repeats + 2):
        for x in inputs:
            x.grad = None
        start = time.perf_counter()
        fn(*inputs).backward(grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]), [x.grad.clone() for x in inputs]


def layers(shape: tuple[int, int, int]) -> dict[str, tuple[Callable, Callable, list]]:
    """name -> (tsmixit function, torch reference, inputs needing gradients)."""
    channels = shape[1]
    x = torch.randn(*shape, requires_grad=True)
    a = torch.full((1,), 0.25, requires_grad=True)
    gamma = torch.randn(channels, requires_grad=True)
    beta = torch.randn(channels, requires_grad=True)
    w = torch.randn(channels, 1, P, requires_grad=True)
    b = torch.randn(channels, requires_grad=True)
    return {
        "prelu": (PReLUFunction.apply, F.prelu, [x, a]),
        "prelu+gLN": (
            lambda x, a, g, b: PReLUGroupNormFunction.apply(x, a, g, b, 1e-8),
            lambda x, a, g, b: F.group_norm(F.prelu(x, a), 1, g, b, 1e-8),
            [x, a, gamma, beta],
        ),
        "depthwise": (
            lambda x, w, b: DepthwiseFunction.apply(x, w, b, DILATION, PAD),
            lambda x, w, b: F.conv1d(F.pad(x, PAD), w, b, dilation=DILATION, groups=channels),
            [x, w, b],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"cpu, threads {torch.get_num_threads()}, forward + backward, median of "
          f"{args.repeats}")
    for shape in SHAPES:
        for name, (ours, reference, inputs) in layers(shape).items():
            grad = torch.randn(shape)  # dL/d(output), the same for both
            t_ours, g_ours = time_backward(ours, inputs, grad, args.repeats)
            t_ref, g_ref = time_backward(reference, inputs, grad, args.repeats)
            diff = max(((o - r).abs().max() / r.abs().max()).item()
                       for o, r in zip(g_ours, g_ref, strict=True))
            print(f"  {name:<10} {str(shape):<17} tsmixit {t_ours * 1e3:8.2f} ms   torch "
                  f"{t_ref * 1e3:8.2f} ms   torch/tsmixit {t_ref / t_ours:5.2f}   "
                  f"max relative grad diff {diff:.1e}")


if __name__ == "__main__":
    main()
