"""LibriMix metadata CSVs: one row per mixture, mono files of equal length.

Notation: a CSV (mixture_ID, mixture_path, source_1_path, ..., [noise_path], length) lists
mixtures x (1, T) with their S clean sources (S, T); its split comes from the file name
(train / dev / test). Noise stays in the mixture only.
"""

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tsmixit.audio import audio_info
from tsmixit.data.importers._common import check_fraction, check_rate, mark_labelled
from tsmixit.data.manifest import SPLITS, Manifest
from tsmixit.errors import AudioError, ManifestError


def import_librimix(
    csv_paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str | None = None,
    root: str | os.PathLike | None = None,
    labelled_fraction: float = 1.0,
    seed: int = 0,
) -> Manifest:
    """Import LibriMix metadata CSVs (mixture_ID, mixture_path, source_1_path, ..., length).

    split: for every CSV; default inferred from each file name (train / dev / test).
    root: where the audio now lives when the CSV's paths are stale (absolute paths of the
    machine that generated LibriMix): each path is re-rooted at the first trailing part that
    exists under `root`; relative paths are taken from `root`, else from the CSV's folder.
    Noise (noise_path) stays in the mixture only; sources are the clean utterances.
    """
    check_fraction(labelled_fraction, "labelled_fraction")
    if isinstance(csv_paths, str | os.PathLike):
        csv_paths = [csv_paths]
    rows: list[dict[str, Any]] = []
    for csv_path in map(Path, csv_paths):
        if not csv_path.is_file():
            raise ManifestError(f"{csv_path}: metadata CSV not found; give a LibriMix "
                                "metadata file such as mixture_train-100_mix_clean.csv.")
        row_split = split or _split_from_name(csv_path)
        if row_split not in SPLITS:
            raise ManifestError(f"{csv_path}: unknown split {row_split!r}; use {SPLITS}.")
        with csv_path.open(newline="") as f:
            table = list(csv.DictReader(f))
        columns = set(table[0]) if table else set()
        for needed in ("mixture_ID", "mixture_path", "source_1_path"):
            if needed not in columns:
                raise ManifestError(f"{csv_path}: column {needed!r} missing; expected "
                                    "LibriMix metadata (mixture_ID, mixture_path, "
                                    "source_1_path, ...).")
        n_src = sum(1 for k in range(1, 10) if f"source_{k}_path" in columns)
        locate = _Relocator(csv_path, None if root is None else Path(root))
        for line, rec in enumerate(table, start=2):
            mix = locate(rec["mixture_path"], line)
            info = audio_info(mix)
            if info.channels != 1:
                raise AudioError(f"{mix}: has {info.channels} channels; LibriMix is mono.")
            sources = [locate(rec[f"source_{k}_path"], line) for k in range(1, n_src + 1)]
            for src in sources:
                sinfo = audio_info(src)
                check_rate(src, sinfo, info.sample_rate, None)
                if sinfo.frames != info.frames or sinfo.channels != 1:
                    raise ManifestError(
                        f"{src}: {sinfo.frames} frames x {sinfo.channels} channel(s), but its "
                        f"mixture {mix} has {info.frames} x 1 ({csv_path}, line {line}); "
                        "regenerate the mixture."
                    )
            if rows:
                check_rate(mix, info, rows[0]["sample_rate"], None)
            rows.append({
                "id": f"{row_split}/{rec['mixture_ID']}",
                "split": row_split,
                "labelled": True,
                "sample_rate": info.sample_rate,
                "channels": 1,
                "num_frames": info.frames,
                "n_speakers": n_src,
                "mixture": str(mix),
                "sources": [str(s) for s in sources],
            })
    if not rows:
        raise ManifestError("the LibriMix CSVs hold no mixtures.")
    mark_labelled(rows, labelled_fraction, seed)
    return Manifest(rows, name=", ".join(map(str, csv_paths)))


def _split_from_name(csv_path: Path) -> str:
    name = csv_path.stem.lower()
    for key, split in (("train", "train"), ("dev", "valid"), ("val", "valid"), ("test", "test")):
        if key in name:
            return split
    raise ManifestError(f"{csv_path}: cannot tell the split from the file name; pass "
                        "split='train'|'valid'|'test'.")


class _Relocator:
    """Resolves the paths of one LibriMix CSV, re-rooting stale absolute paths."""

    def __init__(self, csv_path: Path, root: Path | None) -> None:
        self.csv_path, self.root = csv_path, root
        self.skip: int | None = None  # leading parts of stale absolute paths to drop

    def __call__(self, value: str, line: int) -> Path:
        p = Path(value)
        if not p.is_absolute():
            base = self.root if self.root is not None else self.csv_path.parent
            return self._exists(base / p, line)
        if p.is_file() or self.root is None:
            return self._exists(p, line)
        if self.skip is None:
            self.skip = next(
                (k for k in range(1, len(p.parts)) if (self.root / Path(*p.parts[k:])).is_file()),
                None,
            )
            if self.skip is None:
                raise ManifestError(f"{self.csv_path}, line {line}: {p} is not found, nor any "
                                    f"trailing part of it under {self.root}; check root.")
        return self._exists(self.root / Path(*p.parts[self.skip :]), line)

    def _exists(self, p: Path, line: int) -> Path:
        if not p.is_file():
            hint = "" if self.root else "; pass root=<LibriMix folder> to re-root the CSV paths"
            raise AudioError(f"{p}: does not exist ({self.csv_path}, line {line}){hint}.")
        return p
