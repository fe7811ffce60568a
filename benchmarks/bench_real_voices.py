"""Which training voices make a separator work on REAL people? Corpus variants x training
length, the same model and budget, scored on the embedded test set and on the real-voice
development set (../shared/tools/real_voices_dev_set.py; measured only, never trained on).

Variants (8 kHz, 5,000 training mixtures each, the demo's mixing; voices: voices/*.py):
  espeak     the embedded demo corpus: 60 eSpeak NG training speakers
  realistic  no eSpeak in training: 12 Piper "joe" variants, 8 Kokoro voices (3 base voices and
             their blends), 12 voices from 3 real recorded people (Debian prompts), WORLD
             transforms on all but the first voice of each base
  all        espeak + realistic
  all-aug    all, half of the realistic utterances through a random channel (augment.py)
  all-syllables  all + 40 voices of 21 real people reading letters and syllables
             (voices/syllables.py; one more person each for valid and test)
Model: Conv-TasNet "tiny" (2 outputs, mixture-consistent), supervised PIT on negative SI-SNR,
Adam 1e-3, clip 5, batch 8 x 2 s, one CPU thread; evaluated after each of --steps.

    python benchmarks/bench_real_voices.py --real /tmp/realvoices [--steps 800 1600]
        [--seeds 0] [--variants espeak realistic all all-aug] [--out runs/bench_real_voices]

Corpora, checkpoints and scores are kept under --out: a rerun resumes and only prints.
Needs the recordings' Debian packages for the realistic variants (make voices-apt).
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from tsmixit.corpus import build_corpus
from tsmixit.data.datasets import LabelledDataset
from tsmixit.data.manifest import Manifest
from tsmixit.evaluation.evaluate import evaluate_separator, open_test_set
from tsmixit.losses import pit
from tsmixit.models.conv_tasnet import ConvTasNet

REALISTIC = dict(piper=12, kokoro=(8, 2, 2), recordings=(12, 2, 2))
VARIANTS = {
    "espeak": {},
    "realistic": dict(speakers=(0, 4, 4), **REALISTIC),
    "all": dict(**REALISTIC),
    "all-aug": dict(augment=0.5, **REALISTIC),
    "all-syllables": dict(syllables=(40, 4, 4), **REALISTIC),
}


def corpus(out: Path, name: str) -> Path:
    t = time.monotonic()
    manifest = build_corpus(out / f"corpus-{name}", "demo", seed=0, progress=True, workers=1,
                            cache_dir=str(out / "voice-cache"), **VARIANTS[name])
    print(f"corpus {name}: {manifest} ({time.monotonic() - t:.0f} s)", flush=True)
    return manifest


def first(manifest: Manifest, n: int) -> Manifest:
    return Manifest(manifest.rows[:n], name=manifest.name)


def train(manifest: Path, steps: list[int], seed: int, folder: Path) -> dict[int, Path]:
    """Supervised PIT; a checkpoint at every entry of `steps` (resumes from the last one)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = ConvTasNet.from_preset("tiny", n_sources=2, consistency="uniform")
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    done = {s: folder / f"step{s}.pt" for s in steps}
    start = 0
    for s in sorted(steps):
        if done[s].exists():
            state = torch.load(done[s], weights_only=True)
            model.load_state_dict(state["model"])
            optim.load_state_dict(state["optim"])
            start = s
    if start == max(steps):
        return done
    data = LabelledDataset(Manifest.load(manifest).select(split="train"), 16000, seed=seed,
                           allow_unlabelled=True)
    g = torch.Generator().manual_seed(seed * 1000 + start)
    loader = iter(torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=g,
                                              drop_last=True, num_workers=0))
    model.train()
    t = time.monotonic()
    for step in range(start + 1, max(steps) + 1):
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(torch.utils.data.DataLoader(data, batch_size=8, shuffle=True,
                                                      generator=g, drop_last=True))
            batch = next(loader)
        est = model(batch["mixture"])  # (B, 2, T)
        loss = pit(est, batch["sources"])[0].mean()
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        if step in done:
            torch.save({"model": model.state_dict(), "optim": optim.state_dict(),
                        "seconds": time.monotonic() - t}, done[step])
            print(f"  step {step}: loss {loss.item():.2f} ({time.monotonic() - t:.0f} s)",
                  flush=True)
    return done


def score(checkpoint: Path, sets: dict[str, Manifest]) -> dict[str, float]:
    model = ConvTasNet.from_preset("tiny", n_sources=2, consistency="uniform")
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        return {name: float(evaluate_separator(model, m, k=2, progress=False)["mean"][
            "si_snri_topk"]) for name, m in sets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", default="/tmp/realvoices", help="the real-voice dev set folder")
    ap.add_argument("--steps", type=int, nargs="+", default=[800, 1600])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="runs/bench_real_voices")
    ap.add_argument("--test-mixtures", type=int, default=150)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    sets = {"embedded test": first(Manifest.load(corpus(out, "espeak")).select(split="test"),
                                   a.test_mixtures)}
    if Path(a.real).exists():
        sets["real voices"] = open_test_set(a.real, "test")
    else:
        print(f"no real-voice set at {a.real}: see ../shared/tools/real_voices_dev_set.py")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in a.variants:
        manifest = corpus(out, name)
        for seed in a.seeds:
            checkpoints = train(manifest, a.steps, seed, out / f"model-{name}-seed{seed}")
            for steps, ckpt in checkpoints.items():
                key = f"{name}/seed{seed}/{steps}"
                if key not in results:
                    t = time.monotonic()
                    results[key] = score(ckpt, sets)
                    results[key]["train_seconds"] = torch.load(ckpt, weights_only=True)["seconds"]
                    results[key]["eval_seconds"] = time.monotonic() - t
                    results_path.write_text(json.dumps(results, indent=1))
                print(key, results[key], flush=True)
    print(f"\n| training voices | steps | seeds | {' | '.join(sets)} | train s (1 core) |")
    print("|---|---:|---:|" + "---:|" * len(sets) + "---:|")
    for name in a.variants:
        for steps in a.steps:
            rows = [results[f"{name}/seed{s}/{steps}"] for s in a.seeds
                    if f"{name}/seed{s}/{steps}" in results]
            if not rows:
                continue
            cells = [f"{np.mean([r[k] for r in rows]):.2f}" for k in sets]
            print(f"| {name} | {steps} | {len(rows)} | {' | '.join(cells)} | "
                  f"{np.mean([r['train_seconds'] for r in rows]):.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
