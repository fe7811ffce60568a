"""Conv-TasNet on a CUDA GPU: agreement with the CPU path, and train-step speed and memory.

1. Agreement: the same weights and input on the CPU (training uses tsmixit's hand-written CPU
   backward passes) and on the GPU (plain torch ops; TF32 off): relative L2 difference of the
   outputs and of all parameter gradients, for `small` (1 and 4 microphones) and `paper`.
2. Speed: forward + backward + Adam on 4 s at 8 kHz, 2 sources, negative SI-SNR with PIT;
   median of `--steps` steps after 3 warm-up steps, examples/s, peak allocated GPU memory;
   fp32 (TF32 allowed) against bf16 autocast (the ratio is bf16 / fp32 throughput).

Needs a CUDA GPU. Usage: python benchmarks/bench_gpu.py [--presets tiny small paper]
[--batches 4 8 16] [--steps 20]
"""

import argparse
import statistics
import time

import torch

from tsmixit.losses import pairwise_neg_si_snr, pit
from tsmixit.models import PRESETS, ConvTasNet

SAMPLE_RATE = 8000
SECONDS = 4.0


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / a.norm()).item()


def cpu_gpu_agreement(preset: str, n_channels: int) -> tuple[float, float]:
    """(output, gradient) relative differences between the CPU and the GPU."""
    torch.manual_seed(1)
    reference = ConvTasNet(n_sources=4, n_channels=n_channels, **PRESETS[preset])
    x = torch.randn(2, n_channels, 8000) if n_channels > 1 else torch.randn(2, 8000)
    outputs, gradients = [], []
    for device in ("cpu", "cuda"):
        model = ConvTasNet(**reference.hparams).to(device)
        model.load_state_dict(reference.state_dict())
        y = model(x.to(device))  # (2, 4, T)
        ((y**2).mean() + y[:, 0].std()).backward()
        outputs.append(y.detach())
        gradients.append(torch.cat([p.grad.flatten().cpu() for p in model.parameters()]))
    return relative_difference(*outputs), relative_difference(*gradients)


def train_step_speed(preset: str, batch: int, bf16: bool, steps: int) -> tuple[float, float]:
    """(median seconds per step, peak allocated GiB)."""
    torch.manual_seed(0)
    model = ConvTasNet(n_sources=2, **PRESETS[preset]).cuda()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    frames = int(SAMPLE_RATE * SECONDS)
    x = torch.randn(batch, frames, device="cuda")  # (B, T)
    sources = torch.randn(batch, 2, frames, device="cuda")  # (B, 2, T)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            estimates = model(x)  # (B, 2, T)
        loss, _ = pit(estimates.float(), sources, pairwise_neg_si_snr)
        loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:]), torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print("CPU vs GPU, relative L2 difference (TF32 off):")
    for preset, n_channels in (("small", 1), ("small", 4), ("paper", 1)):
        out, grad = cpu_gpu_agreement(preset, n_channels)
        print(f"  {preset:6s} {n_channels} mic(s): outputs {out:.1e}, gradients {grad:.1e}")

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    print(f"train step, {SECONDS:g} s at {SAMPLE_RATE} Hz, median of {args.steps}:")
    for preset in args.presets:
        for batch in args.batches:
            fp32, mem32 = train_step_speed(preset, batch, False, args.steps)
            bf16, mem16 = train_step_speed(preset, batch, True, args.steps)
            print(f"  {preset:6s} batch {batch:3d}: fp32 {1e3 * fp32:6.1f} ms ({batch / fp32:6.1f} "
                  f"ex/s, {mem32:5.2f} GiB)  bf16 {1e3 * bf16:6.1f} ms ({mem16:5.2f} GiB)  "
                  f"bf16/fp32 throughput {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
