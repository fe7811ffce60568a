"""Loss speed: exact MixIT and PIT against time-axis baselines measured in the same run.

MixIT (batch 8, 4 s at 8 kHz, 2 mixtures, M estimates, forward + backward):
  loop    one remix + snr_tau per mixing matrix in a Python loop (what public code does)
  einsum  all N^M remixes at once on the time axis: (B, N^M, N, T), then snr_tau
  gram    tsmixit.losses.mixit: every remix scored from one Gram matrix (float64)
  lsq     tsmixit.losses.mixit_least_squares (one assignment, not exact)
PIT (same batch, n references = n estimates, negative SI-SNR, forward + backward):
  loop         per-pair si_snr in a Python loop, then all permutations
  torchmetrics torchmetrics' permutation_invariant_training (speaker-wise SI-SNR)
  gram         tsmixit.losses.pit (pairwise matrix from one batched matrix product)
Gram precision (why ``tsmixit.losses.GRAM_DTYPE`` is float64): the error of SI-SNR from
float32 and float64 Gram matrices against a float64 time-axis SI-SNR, at set SNRs, and of the
30 dB-capped MixIT loss; then the cost of PIT with each Gram dtype.

Usage: python benchmarks/bench_losses.py [--device cuda] [--threads 1] [--repeats 7]
"""

import argparse
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator

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


def mixit_loop(est: torch.Tensor, mixtures: torch.Tensor) -> torch.Tensor:
    """Baseline: remix and score each of the N^M mixing matrices in turn."""
    n_mix, n_est = mixtures.shape[1], est.shape[1]
    losses = []
    for choice in itertools.product(range(n_mix), repeat=n_est):
        A = torch.zeros(n_mix, n_est, device=est.device)
        A[list(choice), list(range(n_est))] = 1.0
        remix = torch.einsum("nm,bmt->bnt", A, est)  # (B, N, T)
        losses.append(-snr_tau(remix, mixtures).mean(dim=-1))  # (B,)
    return torch.stack(losses, dim=-1).min(dim=-1).values  # (B,)


def mixit_einsum(est: torch.Tensor, mixtures: torch.Tensor) -> torch.Tensor:
    """All remixes at once on the time axis with one einsum."""
    A = mixit_assignments(mixtures.shape[1], est.shape[1]).to(est)  # (K, N, M)
    remix = torch.einsum("knm,bmt->bknt", A, est)  # (B, K, N, T)
    neg_snr = -snr_tau(remix, mixtures.unsqueeze(1)).mean(dim=-1)  # (B, K)
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


def time_it(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    est: torch.Tensor,
    ref: torch.Tensor,
    repeats: int,
) -> tuple[float, torch.Tensor]:
    """Median seconds of forward + backward, and the loss values."""

    def sync() -> None:
        if est.is_cuda:
            torch.cuda.synchronize()

    loss = fn(est, ref)  # warm-up
    loss.mean().backward()
    times = []
    for _ in range(repeats):
        est.grad = None
        sync()
        start = time.perf_counter()
        loss = fn(est, ref)
        loss.mean().backward()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), loss.detach()


def report(title: str, results: dict[str, tuple[float, torch.Tensor]], baseline: str) -> None:
    """Print medians, speed-ups over the baseline and, for exact methods (names without
    parentheses), the largest loss difference to the baseline."""
    base_t, base_loss = results[baseline]
    print(title)
    for name, (seconds, loss) in results.items():
        line = f"  {name:<16} {seconds * 1e3:9.2f} ms  {base_t / seconds:7.1f}x vs {baseline}"
        if "(" not in name:
            line += f"   max |loss - {baseline}| = {(loss - base_loss).abs().max().item():.1e} dB"
        print(line)


@contextlib.contextmanager
def gram_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Run the Gram-matrix losses with inner products accumulated in `dtype`."""
    saved, losses.GRAM_DTYPE = losses.GRAM_DTYPE, dtype
    try:
        yield
    finally:
        losses.GRAM_DTYPE = saved


def gram_precision(batch: int, T: int, device: torch.device, repeats: int) -> None:
    """Print the largest SI-SNR and MixIT-loss errors of float32 and float64 Gram matrices
    (float32 signals) against float64 time-axis values, and PIT's time with each."""
    print("Gram precision: max |error| against float64 on the time axis (float32 signals)")
    ref = torch.randn(batch, 2, T, device=device)
    for snr_db in (30.0, 40.0, 60.0):
        noise = torch.randn_like(ref)
        noise *= ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
        est = ref + noise * 10.0 ** (-snr_db / 20.0)  # SNR = snr_db exactly, per source
        exact_si = si_snr(est.double(), ref.double())  # (B, 2)
        exact_mixit = mixit_einsum(est.double(), ref.double())  # (B,), capped at 30 dB
        line = f"  SNR {snr_db:4.0f} dB:"
        for dtype in (torch.float32, torch.float64):
            with gram_dtype(dtype):
                si = -pairwise_neg_si_snr(est, ref).diagonal(dim1=1, dim2=2)  # (B, 2)
                loss = mixit(est, ref)[0]  # (B,)
            si_err = (si.double() - exact_si).abs().max().item()
            mixit_err = (loss.double() - exact_mixit).abs().max().item()
            line += (f"   {str(dtype).removeprefix('torch.')}: SI-SNR {si_err:.1e} dB, "
                     f"MixIT {mixit_err:.1e} dB")
        print(line)
    est = (ref + torch.randn_like(ref)).requires_grad_(True)
    times = {}
    for dtype in (torch.float32, torch.float64):
        with gram_dtype(dtype):
            times[dtype], _ = time_it(lambda e, r: pit(e, r)[0], est, ref, repeats)
    print(f"  PIT n=2 forward + backward: float32 Gram {times[torch.float32] * 1e3:.2f} ms, "
          f"float64 Gram {times[torch.float64] * 1e3:.2f} ms "
          f"({times[torch.float64] / times[torch.float32]:.1f}x)")


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    T = int(args.seconds * args.sample_rate)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, threads {torch.get_num_threads()}, batch {args.batch}, T {T}")

    for n_est in args.mixit_m:
        est = torch.randn(args.batch, n_est, T, device=device, requires_grad=True)
        mixtures = torch.randn(args.batch, 2, T, device=device)
        results = {
            "loop": time_it(mixit_loop, est, mixtures, args.repeats),
            "einsum": time_it(mixit_einsum, est, mixtures, args.repeats),
            "gram": time_it(lambda e, x: mixit(e, x)[0], est, mixtures, args.repeats),
            "lsq (approx.)": time_it(
                lambda e, x: mixit_least_squares(e, x)[0], est, mixtures, args.repeats
            ),
        }
        report(f"MixIT M={n_est} N=2 ({2**n_est} assignments), forward + backward", results, "loop")

    for n in args.pit_n:
        ref = torch.randn(args.batch, n, T, device=device)
        est = (ref + torch.randn_like(ref)).requires_grad_(True)
        results = {
            "loop": time_it(pit_loop, est, ref, args.repeats),
            "torchmetrics": time_it(pit_torchmetrics, est, ref, args.repeats),
            "gram": time_it(lambda e, r: pit(e, r)[0], est, ref, args.repeats),
            "(pairwise only)": time_it(
                lambda e, r: pairwise_neg_si_snr(e, r).mean((1, 2)), est, ref, args.repeats
            ),
        }
        report(f"PIT n={n} (negative SI-SNR), forward + backward", results, "loop")

    gram_precision(args.batch, T, device, args.repeats)


if __name__ == "__main__":
    main()
