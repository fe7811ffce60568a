"""WSJ0-2mix (and -3mix) folder trees, and the tree walk the spatialized variant shares.

Notation: the layout is `{tr,cv,tt}/mix/NAME.wav` with the sources of each mixture under the
same NAME in `s1/`, `s2/`, ... (tr -> train, cv -> valid, tt -> test), usually below
`wav8k|wav16k/min|max/`. A mixture file (T frames, C channels) gives one file row of T frames;
its S source files must have T frames too, with 1 or C channels.
"""

import os
import re
from pathlib import Path
from typing import Any, Literal

from tsmixit.audio import AUDIO_SUFFIXES, audio_info
from tsmixit.data.importers._common import check_fraction, check_rate, mark_labelled
from tsmixit.data.manifest import Manifest
from tsmixit.errors import AudioError, ManifestError

_WSJ_SPLITS = {"tr": "train", "cv": "valid", "tt": "test"}


def import_wsj0_2mix(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    mode: Literal["min", "max"] | None = None,
    labelled_fraction: float = 1.0,
    seed: int = 0,
) -> Manifest:
    """Import a WSJ0-2mix (or -3mix) folder tree: `{tr,cv,tt}/mix/*.wav` with `s1/`, `s2/`...

    path: the folder holding tr/cv/tt (e.g. .../wav8k/min), or one above it (wav8k, the
    corpus root, or a root with `2speakers/`); then `sample_rate` (default: 8000 if present,
    else 16000) and `mode` (default: "min" if present, else "max") pick the sub-folder.
    A folder holding mix/ (and s1/, s2/) directly is imported as one test split.
    tr -> train, cv -> valid, tt -> test. Split folders without s1/... give unlabelled rows.
    labelled_fraction: share of the train mixtures whose sources are visible (seeded);
    valid/test rows are labelled whenever they have sources. Files must be mono.
    """
    return import_wsj_tree(path, sample_rate, mode, labelled_fraction, seed, channels=None,
                           spatial=False)


def import_wsj_tree(
    path: str | os.PathLike,
    sample_rate: int | None,
    mode: str | None,
    labelled_fraction: float,
    seed: int,
    channels: list[int] | None,
    spatial: bool,
) -> Manifest:
    """The rows of a WSJ0-2mix tree at or below `path` (see `import_wsj0_2mix`); `spatial`:
    multi-channel files, `channels` of them kept, the spatialized variant's folders searched.
    """
    check_fraction(labelled_fraction, "labelled_fraction")
    if (Path(path) / "mix").is_dir():
        # One split folder given directly (mix/, s1/, s2/): a test set.
        root, split_dirs = Path(path), {"test": Path(path)}
    else:
        root = _find_wsj_root(Path(path), sample_rate, mode, spatial)
        split_dirs = {split: root / short for short, split in _WSJ_SPLITS.items()}
    rows: list[dict[str, Any]] = []
    rate = sample_rate
    for split, split_dir in split_dirs.items():
        short = split_dir.name
        if not split_dir.is_dir():
            continue
        mix_dir = split_dir / "mix"
        if not mix_dir.is_dir():
            raise ManifestError(
                f"{split_dir}: has no mix/ folder; the layout must be "
                f"{short}/mix/*.wav (with s1/, s2/ for labelled data)."
            )
        mixes = _audio_files(mix_dir)
        if not mixes:
            raise ManifestError(f"{mix_dir}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found.")
        src_dirs = sorted(
            (d for d in split_dir.iterdir() if d.is_dir() and re.fullmatch(r"s\d+", d.name)),
            key=lambda d: int(d.name[1:]),
        )
        src_files = [_matching_files(mix_dir, mixes, d) for d in src_dirs]
        for name, mix_path in mixes.items():
            info = audio_info(mix_path)
            rate = rate or info.sample_rate
            check_rate(mix_path, info, rate, sample_rate)
            if spatial:
                chosen = channels if channels is not None else list(range(info.channels))
                if not chosen or max(chosen) >= info.channels or min(chosen) < 0:
                    raise AudioError(
                        f"{mix_path}: has {info.channels} channel(s); cannot use channels "
                        f"{chosen}; choose indices in 0..{info.channels - 1}."
                    )
            elif info.channels != 1:
                raise AudioError(
                    f"{mix_path}: has {info.channels} channels; WSJ0-2mix files are mono: "
                    "use the spatialized-wsj0-2mix importer for multi-channel data."
                )
            sources = [files[name] for files in src_files]
            for src in sources:
                sinfo = audio_info(src)
                check_rate(src, sinfo, rate, sample_rate)
                if sinfo.frames != info.frames:
                    raise ManifestError(
                        f"{src}: has {sinfo.frames} frames but its mixture {mix_path} has "
                        f"{info.frames}; the corpus is inconsistent: regenerate that mixture."
                    )
                if sinfo.channels not in (1, info.channels):
                    raise AudioError(
                        f"{src}: has {sinfo.channels} channels, its mixture {info.channels}; "
                        "sources must be mono or have the mixture's channels."
                    )
            row: dict[str, Any] = {
                "id": f"{split}/{Path(name).stem}",
                "split": split,
                "labelled": bool(sources),
                "sample_rate": info.sample_rate,
                "channels": len(chosen) if spatial else 1,
                "num_frames": info.frames,
                "n_speakers": len(sources) or None,
                "mixture": str(mix_path),
                "sources": [str(s) for s in sources] or None,
            }
            if spatial and channels is not None:
                row["channel_map"] = list(chosen)
            rows.append(row)
    if not rows:
        raise ManifestError(f"{root}: no tr/, cv/ or tt/ folder with mixtures found.")
    mark_labelled(rows, labelled_fraction, seed)
    return Manifest(rows, name=str(root))


def _find_wsj_root(path: Path, sample_rate: int | None, mode: str | None, spatial: bool) -> Path:
    """The folder holding tr/cv/tt at or below `path` (see `import_wsj0_2mix`)."""
    if not path.is_dir():
        raise ManifestError(f"{path}: folder not found; give the WSJ0-2mix folder.")
    if mode is not None and mode not in ("min", "max"):
        raise ManifestError(f"mode must be 'min' or 'max', got {mode!r}.")
    if any((path / s).is_dir() for s in _WSJ_SPLITS):
        return path
    prefixes = ["2speakers_reverb", "2speakers_anechoic"] if spatial else ["2speakers"]
    rates = [sample_rate] if sample_rate else [8000, 16000]
    modes = [mode] if mode else ["min", "max"]
    tried = []
    for base in [path, *(path / p for p in prefixes)]:
        for r in rates:
            for m in modes:
                for candidate in (base / f"wav{r // 1000}k" / m, base / m):
                    tried.append(candidate)
                    if any((candidate / s).is_dir() for s in _WSJ_SPLITS):
                        return candidate
    raise ManifestError(
        f"{path}: no WSJ0-2mix layout found (looked for tr/, cv/, tt/ in "
        f"{', '.join(str(t.relative_to(path)) for t in tried[:4])}, ...); give the folder "
        "that holds tr/cv/tt, or set sample_rate/mode."
    )


def _audio_files(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
    }


def _matching_files(mix_dir: Path, mixes: dict[str, Path], src_dir: Path) -> dict[str, Path]:
    files = _audio_files(src_dir)
    missing = sorted(set(mixes) - set(files))
    extra = sorted(set(files) - set(mixes))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"{len(missing)} mixture(s) without a file in {src_dir}: "
                          f"{', '.join(missing[:5])}")
        if extra:
            detail.append(f"{len(extra)} file(s) in {src_dir} without a mixture in "
                          f"{mix_dir}: {', '.join(extra[:5])}")
        raise ManifestError("; ".join(detail) + "; source files must have the same names "
                            "as the mixtures: restore or remove the odd files.")
    return files
