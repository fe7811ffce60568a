"""What the importers share: argument checks, the sample-rate check, the labelled share.

Notation: an importer turns a corpus layout on disk into rows of one `Manifest`; the n train
rows that have sources keep them visible (labelled) for a seeded share round(f * n) of them,
f = `labelled_fraction`; valid and test rows are labelled whenever they have sources.
"""

from pathlib import Path
from typing import Any

import numpy as np

from tsmixit.audio import AudioInfo
from tsmixit.errors import AudioError, ManifestError


def check_rate(path: Path, info: AudioInfo, rate: int, requested: int | None) -> None:
    """Refuse a file not at `rate` Hz; `requested`: the rate the caller asked for, if any
    (the hint then names the folder of the file's rate)."""
    if info.sample_rate != rate:
        hint = (f"point to the wav{info.sample_rate // 1000}k folder or set sample_rate="
                f"{info.sample_rate}" if requested else "all files must share one rate")
        raise AudioError(f"{path}: sample rate {info.sample_rate} Hz, expected {rate} Hz; "
                         f"{hint}.")


def check_fraction(value: float, name: str) -> None:
    """Refuse a share outside [0, 1]; `name`: the argument's."""
    if not 0.0 <= value <= 1.0:
        raise ManifestError(f"{name} must be in [0, 1], got {value}.")


def mark_labelled(rows: list[dict[str, Any]], fraction: float, seed: int) -> None:
    """Keep sources visible for round(fraction * n) of the n train rows with sources."""
    train = [r for r in rows if r["split"] == "train" and r.get("sources")]
    keep = set(
        np.random.default_rng(seed).choice(len(train), round(fraction * len(train)),
                                           replace=False).tolist()
    )
    for k, row in enumerate(train):
        row["labelled"] = k in keep
