import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from tsmixit.data.manifest import Manifest
from tsmixit.training.config import load_config

# Two cores on the reference machine: one intra-op thread keeps tests predictable.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- audio files (manifest, render and importer tests) ------------------------------------


def pcm_noise(frames: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(C, T) float32 noise, exactly representable in 16-bit PCM."""
    q = np.random.default_rng(seed).integers(-8000, 8000, (channels, frames))
    return (q / 32768).astype(np.float32)


def write_pcm16(path: Path, wav: np.ndarray, sr: int = 8000) -> Path:
    """Write (C, T) `wav` as 16-bit PCM (lossless for `pcm_noise`), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.T, sr, subtype="PCM_16")
    return path


# ---- separation signals (metrics, evaluation and inference tests) -------------------------


def gaussian_signals(n: int, frames: int, seed: int) -> torch.Tensor:
    """(n, T) float32 standard normal noise, one seeded generator per call."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, frames))).float()


# ---- tiny recipes (training and recipe tests) -----------------------------------------------

RECIPE_SR = 8000




def utterance(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A speech-like test signal: a harmonic complex at a random pitch under a syllable-rate
    amplitude envelope (distinct voices separate; nothing here needs real speech)."""
    t = np.arange(int(seconds * RECIPE_SR)) / RECIPE_SR
    f0 = rng.uniform(90, 260)
    wave = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 6))
    rate = rng.uniform(2.5, 5.0)
    envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)), 0, None) ** 0.5
    return (0.3 * wave * envelope / 2.3).astype(np.float32)


def make_corpus(folder: Path, n_train: int = 24, n_valid: int = 4, n_test: int = 4,
                seconds: float = 1.0, channels: int = 1, labelled: int = 6,
                seed: int = 0) -> Path:
    """Rendered rows (the embedded corpus's format) of 2-speaker synthetic mixtures;
    `labelled` training rows keep their labels. Returns the manifest path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utterances").mkdir(exist_ok=True)
    rooms = None
    if channels > 1:
        decay = np.exp(-np.arange(64) / 8.0)
        rirs = rng.standard_normal((8, channels, 64)) * decay * 0.3
        rirs[:, :, 0] += 1.0
        np.savez(folder / "rooms.npz", rirs=rirs.astype(np.float32))
        rooms = "rooms.npz"
    rows = []
    for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        for i in range(count):
            parts = []
            for s in range(2):
                name = f"utterances/{split}{i:03d}_{s}.wav"
                sf.write(folder / name, utterance(rng, seconds), RECIPE_SR, subtype="FLOAT")
                parts.append({"audio": name, "offset": int(rng.integers(0, RECIPE_SR // 10)),
                              "gain": float(rng.uniform(0.6, 1.0)), "role": "source",
                              "rir": int(rng.integers(8)) if rooms else None})
            rows.append({"id": f"{split}{i:03d}", "split": split,
                         "labelled": split != "train" or i < labelled, "sample_rate": RECIPE_SR,
                         "channels": channels, "num_frames": int(seconds * RECIPE_SR),
                         "n_speakers": 2, "parts": parts, "rooms": rooms})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    Manifest.load(path)
    return path


def tiny_overrides(manifest: Path, steps: int = 12, **extra) -> list[str]:
    """A tiny recipe: tiny Conv-TasNet, 0.5 s crops, a dozen steps per stage, CPU."""
    values = {
        "corpus.manifest": str(manifest), "model.preset": "tiny", "train.max_steps": steps,
        "train.val_every": 6, "train.log_every": 1, "data.batch_size": 4,
        "data.segment_seconds": 0.5,
        "train.accelerator": "cpu", "train.devices": 1, "train.progress": False,
        "eval.max_mixtures": 4, **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def read_metrics(folder: Path, column: str) -> list[float]:
    rows = csv.DictReader((folder / "metrics.csv").open())
    return [float(r[column]) for r in rows if r.get(column)]


def cli_recipe(config_path: Path, run: Path, *extra: str, launcher: tuple[str, ...] = (
        "-m", "tsmixit.cli"), env: dict[str, str] | None = None) -> subprocess.Popen:
    """`tsmixit recipe` in a child process (`launcher`: how Python starts the CLI)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.Popen(
        [sys.executable, *launcher, "recipe", "--config", str(config_path),
         "--run-dir", str(run), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_config(path: Path, overrides: list[str]) -> Path:
    config = load_config(None, overrides)
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path
