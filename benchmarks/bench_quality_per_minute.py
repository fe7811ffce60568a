"""Separation quality per CPU-minute: supervised PIT for every architecture and size.

Each registered separator (``tsmixit.models.registry.ARCHITECTURES``) at each size preset is
trained with supervised PIT (k = 2 outputs, negative SI-SNR, ``tsmixit.losses.pit``) on the
demo corpus for the same CPU time, from the same seed, on the same data order (Adam, gradient
clipping, batch 8 x 2 s crops of all training mixtures with their sources). One run per
architecture x size goes up to the largest budget; validation SI-SNRi
(``tsmixit.metrics.si_snri_pit``) on fixed validation mixtures (the first crop of each of the
first ``--valid-mixtures`` rows) is measured each time the training CPU time crosses one of
``--minutes``, so one run gives every column.

Time is the process's CPU time (``time.process_time()``) of the training steps alone
(forward, loss, backward, clipping, Adam; not data loading, not validation), on one thread:
other jobs on the machine slow the wall clock but not this budget. The data loading CPU time
is recorded beside it.

A plain loop, not Lightning: the recipe's Trainer adds checkpoints, logging and step-based
validation whose cost would enter the budget, and it cannot stop at a CPU-time budget
between steps; the loop here is the training step itself, so the figures compare the
separators and nothing else.

Usage:
    [TSMIXIT_MALLOC=keep] OMP_NUM_THREADS=1 python benchmarks/bench_quality_per_minute.py
        [--minutes 1 2 4 8]
        [--archs conv_tasnet dprnn] [--sizes tiny small] [--manifest M] [--out DIR] [--quick]
Writes DIR/results.json and DIR/si_snri_vs_cpu_minutes.png (default runs/bench-quality).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from tsmixit.cpu_memory import keep_freed_memory
from tsmixit.data.datasets import LabelledDataset
from tsmixit.data.manifest import Manifest
from tsmixit.losses import pit
from tsmixit.metrics import si_snri_pit
from tsmixit.models.registry import ARCHITECTURES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, help="an existing manifest (default: build the demo)")
    p.add_argument("--corpus-dir", type=Path, default=Path("runs/bench-corpus"))
    p.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    p.add_argument("--sizes", nargs="+", default=None, help="presets (default: tiny small)")
    p.add_argument("--minutes", nargs="+", type=float, default=None,
                   help="CPU-minute budgets (default: 1 2 4 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--segment-seconds", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--consistency", default="uniform", help="mixture consistency ('none': off)")
    p.add_argument("--valid-mixtures", type=int, default=None, help="default 50")
    p.add_argument("--valid-seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-quality"))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny only, 0.05/0.1 CPU-minutes, 8 validation mixtures")
    args = p.parse_args(argv)
    quick = {"sizes": ["tiny"], "minutes": [0.05, 0.1], "valid_mixtures": 8}
    full = {"sizes": ["tiny", "small"], "minutes": [1.0, 2.0, 4.0, 8.0], "valid_mixtures": 50}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:  # explicit options win over --quick
            setattr(args, name, value)
    args.minutes = sorted(args.minutes)
    return args


def load_data(args: argparse.Namespace) -> tuple[LabelledDataset, dict[str, torch.Tensor]]:
    """Training crops (all training rows with sources) and the fixed validation batch."""
    if args.manifest is None:
        from tsmixit.corpus import build_corpus

        args.manifest = build_corpus(args.corpus_dir, preset="demo", seed=0, progress=False)
    manifest = Manifest.load(args.manifest)
    sr = manifest.rows[0]["sample_rate"]
    train = LabelledDataset(manifest.select(split="train"), int(args.segment_seconds * sr),
                            seed=args.seed, allow_unlabelled=True, reference_only=True)
    valid_rows = manifest.select(split="valid")
    valid_rows.rows = valid_rows.rows[: args.valid_mixtures]
    valid = LabelledDataset(valid_rows, int(args.valid_seconds * sr), seed=args.seed,
                            allow_unlabelled=True, reference_only=True)
    items = [valid[i] for i in range(len(valid))]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}  # (V, 1, T), (V, 2, T)
    return train, batch


def batches(data: LabelledDataset, batch_size: int, seed: int):
    """Endless batches in one seeded order (the same for every model): {"mixture": (B, 1, T),
    "sources": (B, 2, T)}; new crops every epoch."""
    order = torch.Generator().manual_seed(seed)
    for epoch in range(10**9):
        data.set_epoch(epoch)
        perm = torch.randperm(len(data), generator=order).tolist()
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            items = [data[j] for j in perm[i : i + batch_size]]
            yield {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def validate(model: torch.nn.Module, valid: dict[str, torch.Tensor], batch_size: int) -> float:
    """Mean SI-SNRi (dB) of the best pairing over the fixed validation mixtures."""
    model.eval()
    scores = []
    for i in range(0, len(valid["mixture"]), batch_size):
        mix, src = valid["mixture"][i : i + batch_size], valid["sources"][i : i + batch_size]
        scores.append(si_snri_pit(model(mix), src, mix[:, 0]))
    model.train()
    return float(torch.cat(scores).mean())


def train_one(arch: str, size: str, args, train, valid) -> dict:
    """One arch x size run up to the largest budget, validated at each budget crossed."""
    torch.manual_seed(args.seed)
    consistency = None if args.consistency == "none" else args.consistency
    model = ARCHITECTURES[arch].from_preset(size, n_sources=2, consistency=consistency)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    params = sum(p.numel() for p in model.parameters())
    budgets = [60.0 * m for m in args.minutes]
    points, steps, train_cpu, data_cpu, losses = [], 0, 0.0, 0.0, []
    data = batches(train, args.batch_size, args.seed)
    model.train()
    while len(points) < len(budgets):
        t0 = time.process_time()
        batch = next(data)
        t1 = time.process_time()
        est = model(batch["mixture"])  # (B, 2, T)
        loss = pit(est, batch["sources"])[0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        t2 = time.process_time()
        data_cpu, train_cpu, steps = data_cpu + t1 - t0, train_cpu + t2 - t1, steps + 1
        losses.append(loss.item())
        while len(points) < len(budgets) and train_cpu >= budgets[len(points)]:
            v0 = time.process_time()
            si_snri = validate(model, valid, args.batch_size)
            points.append({"minutes": args.minutes[len(points)], "cpu_seconds": train_cpu,
                           "steps": steps, "si_snri": si_snri,
                           "train_loss": sum(losses[-50:]) / len(losses[-50:]),
                           "valid_cpu_seconds": time.process_time() - v0})
            print(f"  {arch:12s} {size:6s} {points[-1]['minutes']:5.2f} min  step {steps:5d}"
                  f"  SI-SNRi {si_snri:6.2f} dB", flush=True)
    return {"arch": arch, "size": size, "params": params, "steps": steps,
            "seconds_per_step": train_cpu / steps, "data_seconds_per_step": data_cpu / steps,
            "points": points}


def table(runs: list[dict], minutes: list[float]) -> str:
    head = f"{'arch':12s} {'size':6s} {'params':>9s} {'s/step':>7s}" + "".join(
        f" {f'{m:g} min':>8s}" for m in minutes)
    lines = [head, "-" * len(head)]
    for r in runs:
        cells = "".join(f" {p['si_snri']:8.2f}" for p in r["points"])
        lines.append(f"{r['arch']:12s} {r['size']:6s} {r['params']:9,d} "
                     f"{r['seconds_per_step']:7.3f}{cells}")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = dict(zip(ARCHITECTURES, plt.rcParams["axes.prop_cycle"].by_key()["color"],
                      strict=False))
    for r in runs:
        ax.plot([p["minutes"] for p in r["points"]], [p["si_snri"] for p in r["points"]],
                marker="o", color=colors[r["arch"]], linestyle="-" if r["size"] == "tiny" else
                "--", label=f"{r['arch']} {r['size']} ({r['params'] / 1e3:.0f} k)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training CPU minutes (one thread)")
    ax.set_ylabel("validation SI-SNRi (dB)")
    ax.set_title("Supervised PIT on the demo corpus")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    kept = keep_freed_memory()
    train, valid = load_data(args)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average_start": os.getloadavg(), "malloc_keep": kept}
    print(f"CPU-time budgets {args.minutes} min per run (process CPU time of the training "
          f"steps, 1 thread; wall time and other jobs do not count); {len(train)} training "
          f"mixtures, {len(valid['mixture'])} validation crops of {args.valid_seconds:g} s; "
          f"load average {machine['load_average_start'][0]:.2f}", flush=True)
    wall, runs = time.time(), []
    for size in args.sizes:
        for arch in args.archs:
            runs.append(train_one(arch, size, args, train, valid))
    machine["load_average_end"] = os.getloadavg()
    machine["wall_seconds"] = time.time() - wall
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"config": config, "machine": machine, "runs": runs}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.out / "si_snri_vs_cpu_minutes.png")
    print("\nValidation SI-SNRi (dB) after each CPU-time budget; s/step = training CPU "
          "seconds per step")
    print(table(runs, args.minutes))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'si_snri_vs_cpu_minutes.png'}")


if __name__ == "__main__":
    main()
