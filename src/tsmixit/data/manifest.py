"""One manifest format for every corpus, and the importers that write it.

A manifest is a JSONL file, one mixture per line. Paths on disk are relative to the
manifest's folder (so a corpus folder can be moved as a whole); in memory they are absolute.

Common fields of a row:
    id (unique str), split ("train" | "valid" | "test"), labelled (bool: the sources are
    visible to supervised stages), sample_rate (Hz), channels (C), num_frames (T),
    n_speakers (int, or null when unknown).

File rows (WSJ0-2mix, LibriMix, folders of recordings, pseudo-labels):
    "mixture": path, "sources": [path, ...] | null,
    optional "start": first frame of the row in the files (default 0; segments of long
    recordings), optional "sources_start": the same for the source files when it differs
    (e.g. 0 for pseudo-targets written per segment), optional "channel_map": the file
    channels used, in order (the first one is the reference microphone of the sources).

Rendered rows (the embedded corpus, mixed on the fly):
    "parts": [{"audio": path, "offset": frames, "gain": linear, "role": "source" | "noise",
               "rir": index into the room bank | null}], "rooms": path to an npz | null.
    mixture x = sum_p gain_p * (a_p * h_p) placed at offset_p, cut or zero-padded to T,
    where h_p = rirs[rir_p] (C, L) from the npz array "rirs" (n_rirs, C, L) and a_p * h_p is
    the convolution (C, len(a_p) + L - 1); without a RIR the part is the same on every
    microphone. The sources are the "source" parts' images at microphone 0; noise parts
    only enter the mixture. A rendered row may also carry "sources": [path, ...] (e.g.
    pseudo-targets), which then replace the rendered sources.

Any other keys (speaker ids, levels, ...) are kept and saved unchanged.
"""

import csv
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.signal import fftconvolve

from tsmixit.audio import (
    SILENCE_DB,
    AudioInfo,
    ResampleWarning,
    audio_info,
    read_audio,
    resample,
    write_audio,
)
from tsmixit.errors import AudioError, ManifestError
from tsmixit.files import write_text_atomic

SPLITS = ("train", "valid", "test")
ROLES = ("source", "noise")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
_FIELD_ORDER = (
    "id", "split", "labelled", "sample_rate", "channels", "num_frames", "n_speakers",
    "mixture", "start", "channel_map", "sources", "sources_start", "parts", "rooms",
)  # fmt: skip


class Manifest:
    """A list of validated mixture rows with loaders for mixtures and sources.

    Decoded utterances and RIR banks of rendered rows are cached in memory (bounded LRU);
    the cache is shared with manifests made by `select` and dropped when pickled (DataLoader
    workers start with an empty one).
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        root: str | os.PathLike | None = None,
        *,
        name: str = "<in-memory manifest>",
    ) -> None:
        """rows: row dicts; relative paths in them are taken relative to `root` (default:
        the current folder). name: shown in error messages (the manifest's path)."""
        base = Path(root).resolve() if root is not None else Path.cwd()
        checked = [_check_row(row, base, f"{name}, row {n}") for n, row in enumerate(rows, 1)]
        self.name, self.rows = name, _unique(checked, name)
        self._cache = _AudioCache()

    @classmethod
    def _of_checked(cls, rows: list[dict[str, Any]], name: str, cache: "_AudioCache | None"):
        manifest = cls.__new__(cls)
        manifest.name, manifest.rows = name, rows
        manifest._cache = cache if cache is not None else _AudioCache()
        return manifest

    # ---- files ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, *, check_files: bool = True) -> "Manifest":
        """Read a JSONL manifest; a bad row raises ManifestError naming the line and field.

        check_files: also verify that every referenced file exists (a cheap stat each).
        """
        path = Path(path)
        if not path.is_file():
            raise ManifestError(
                f"{path}: manifest not found; build a corpus (`tsmixit corpus build`) or "
                "import one (`tsmixit corpus import`)."
            )
        rows, root = [], path.parent.resolve()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ManifestError(f"{path}: cannot read the manifest ({err}).") from err
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(
                    f"manifest {path}, line {n}: not valid JSON ({err.msg}); fix or delete "
                    "the line, or re-import the corpus."
                ) from err
            rows.append(_check_row(row, root, f"manifest {path}, line {n}"))
        if not rows:
            raise ManifestError(f"{path}: the manifest has no rows; re-import the corpus.")
        manifest = cls._of_checked(_unique(rows, str(path)), str(path), None)
        if check_files:
            missing = manifest.missing_files()
            if missing:
                raise ManifestError(
                    f"manifest {path}: {len(missing)} referenced file(s) missing, first "
                    f"{missing[0]}; move the corpus folder back or as a whole (relative "
                    "paths start at the manifest's folder), or re-import it."
                )
        return manifest

    def save(self, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
        """Write atomically; files under `root` (default: the manifest's folder) relative to
        the manifest's folder, others by absolute path."""
        path = Path(path)
        name = _file_namer(path.parent, Path(root or path.parent))
        lines = [json.dumps(_relative_row(row, name)) for row in self.rows]
        write_text_atomic(path, "\n".join(lines) + "\n")
        return path

    def missing_files(self) -> list[str]:
        """Paths referenced by the rows that do not exist on disk."""
        paths = dict.fromkeys(p for row in self.rows for p in _row_paths(row))
        return [p for p in paths if not os.path.isfile(p)]

    # ---- container -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"Manifest({self.name!r}, {len(self)} rows)"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = _AudioCache()

    def select(self, split: str | None = None, labelled: bool | None = None) -> "Manifest":
        """Rows of one split and/or labelled state (None = any); shares the audio cache."""
        if split is not None and split not in SPLITS:
            raise ManifestError(f"unknown split {split!r}; use one of {SPLITS}.")
        rows = [
            r
            for r in self.rows
            if (split is None or r["split"] == split)
            and (labelled is None or r["labelled"] == labelled)
        ]
        return Manifest._of_checked(rows, self.name, self._cache)

    # ---- audio ---------------------------------------------------------------------------

    def load_mixture(
        self, i: int, start: int = 0, frames: int | None = None, reference_only: bool = False
    ) -> np.ndarray:
        """Mixture x of row i as float32 (C, T); frames [start, start + frames) of it only
        when given (file rows then read, rendered rows render, just that part).
        reference_only: microphone 0 alone, C = 1."""
        row = self.rows[i]
        start, frames = self._window(row, start, frames)
        if "parts" in row:
            return self._render(row, start, frames, False, reference_only)[0]
        x = read_audio(
            row["mixture"],
            sample_rate=row["sample_rate"],
            strict=True,
            channels=row.get("channel_map"),
            expect_channels=None if row.get("channel_map") else row["channels"],
            start=row.get("start", 0) + start,
            frames=frames,
        )[0]
        return x[:1] if reference_only else x

    def load_sources(
        self, i: int, allow_unlabelled: bool = False, start: int = 0, frames: int | None = None
    ) -> np.ndarray:
        """Sources s of row i at the reference microphone as float32 (S, T).

        Refuses (ManifestError) a row that is unlabelled, unless `allow_unlabelled`, or that
        has no sources at all.
        """
        row = self._row_with_sources(i, allow_unlabelled)
        start, frames = self._window(row, start, frames)
        if row.get("sources") is None:
            return self._render(row, start, frames, True, True)[1]
        ref = (row.get("channel_map") or [0])[0]
        out = np.empty((len(row["sources"]), frames), dtype=np.float32)
        for k, path in enumerate(row["sources"]):
            n_ch = audio_info(path).channels
            out[k] = read_audio(
                path,
                sample_rate=row["sample_rate"],
                strict=True,
                channels=[ref if n_ch > 1 else 0],
                start=row.get("sources_start", row.get("start", 0)) + start,
                frames=frames,
            )[0][0]
        return out

    def load_example(
        self,
        i: int,
        allow_unlabelled: bool = False,
        start: int = 0,
        frames: int | None = None,
        reference_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mixture (C, T), sources (S, T)) of row i, as `load_mixture` and `load_sources`
        return them; a rendered row whose sources are its own parts is rendered once for
        both (a pseudo-labelled row's sources are the teacher's files, read separately)."""
        row = self._row_with_sources(i, allow_unlabelled)
        if "parts" in row and row.get("sources") is None:
            return self._render(row, *self._window(row, start, frames), True, reference_only)
        return (self.load_mixture(i, start, frames, reference_only),
                self.load_sources(i, allow_unlabelled, start, frames))

    def _row_with_sources(self, i: int, allow_unlabelled: bool) -> dict[str, Any]:
        row = self.rows[i]
        if not row["labelled"] and not allow_unlabelled:
            raise ManifestError(
                f"{self.name}: row {row['id']!r} is unlabelled: its sources are hidden from "
                "supervised stages; use the labelled rows (select(labelled=True))."
            )
        if not has_sources(row):
            raise ManifestError(
                f"{self.name}: row {row['id']!r} has no sources (an unlabelled recording); "
                "only mixture-based (MixIT) training can use it."
            )
        return row

    def _window(self, row: dict[str, Any], start: int, frames: int | None) -> tuple[int, int]:
        total = row["num_frames"]
        frames = total - start if frames is None else frames
        if start < 0 or frames <= 0 or start + frames > total:
            raise ManifestError(
                f"{self.name}: row {row['id']!r} has {total} frames; cannot take "
                f"[{start}, {start + frames})."
            )
        return start, frames

    def _render(
        self, row: dict[str, Any], start: int, frames: int, with_sources: bool,
        reference_only: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mix frames [start, start + frames) of a rendered row:
        x = sum_p gain_p (a_p * h_p) at offset_p, and the sources at mic 0.

        Written here because it is the corpus's own mixing rule; the convolutions use scipy.
        Only the window is computed: a reverberant part convolves just the input samples that
        reach the window, so a 2 s crop of a long row costs a 2 s convolution.
        Returns (mixture (C, frames), sources (S, frames)), float32, computed in float64;
        C = 1 (mic 0) when `reference_only`.
        """
        C, T, sr = row["channels"], row["num_frames"], row["sample_rate"]
        mics = slice(0, 1) if reference_only else slice(None)
        end = start + frames
        mixture = np.zeros((1 if reference_only else C, frames))  # (C', frames)
        sources = []
        for part in row["parts"]:
            audio = self._cache.audio(part["audio"], sr)  # (c, L) float32
            off, length = part["offset"], audio.shape[1]
            if part["rir"] is not None:
                rir = self._part_rir(row, part, audio, mics)  # (C', L_h)
                length += rir.shape[1] - 1
            elif audio.shape[0] not in (1, C):
                raise ManifestError(
                    f"{part['audio']}: has {audio.shape[0]} channels; a part of a "
                    f"{C}-microphone row must have 1 or {C} (row {row['id']!r})."
                )
            d0, d1 = max(off, start), min(off + length, end, T)  # row frames of this part
            source = None
            if with_sources and part["role"] == "source":
                source = np.zeros(frames)  # stays silent when the part misses the window
                sources.append(source)
            if d1 <= d0:
                continue
            n0, n1 = d0 - off, d1 - off  # the same frames in the part's own time
            if part["rir"] is None:
                # (1 or C', n1 - n0): a mono part is the same signal on every microphone
                image = audio[mics if audio.shape[0] > 1 else slice(None), n0:n1]
                image = image.astype(np.float64)
            else:
                a0, a1 = max(0, n0 - rir.shape[1] + 1), min(audio.shape[1], n1)  # inputs used
                image = fftconvolve(audio[:, a0:a1].astype(np.float64), rir, axes=-1)
                image = image[:, n0 - a0 : n1 - a0]  # (C', n1 - n0)
            piece = part["gain"] * image
            mixture[:, d0 - start : d1 - start] += piece
            if source is not None:
                source[d0 - start : d1 - start] = piece[0]
        return (mixture.astype(np.float32),
                np.asarray(sources, dtype=np.float32).reshape(-1, frames))

    def _part_rir(self, row: dict[str, Any], part: dict[str, Any], audio: np.ndarray,
                  mics: slice) -> np.ndarray:
        """The RIRs h_p of a reverberant part at microphones `mics`, (C', L_h) float64;
        checks the part fits the row's room bank."""
        C = row["channels"]
        rirs = self._cache.rirs(row["rooms"])  # (n_rirs, C', L_h)
        if not 0 <= part["rir"] < len(rirs) or rirs.shape[1] != C:
            raise ManifestError(
                f"{self.name}: row {row['id']!r} asks for RIR {part['rir']} with {C} "
                f"microphone(s), but {row['rooms']} holds {rirs.shape[0]} RIRs of "
                f"{rirs.shape[1]} microphone(s); rebuild the corpus."
            )
        if audio.shape[0] != 1:
            raise ManifestError(
                f"{part['audio']}: a part convolved with a RIR must be mono, it has "
                f"{audio.shape[0]} channels (row {row['id']!r})."
            )
        return rirs[part["rir"], mics].astype(np.float64)


def has_sources(row: Mapping[str, Any]) -> bool:
    """Whether a row can provide sources (file paths, or rendered source parts)."""
    if row.get("sources"):
        return True
    return "parts" in row and any(p["role"] == "source" for p in row["parts"])


class _AudioCache:
    """Bounded LRU of decoded utterances (by bytes) and a dict of RIR banks."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._audio: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._rirs: dict[str, np.ndarray] = {}

    def audio(self, path: str, sample_rate: int) -> np.ndarray:
        key = (path, sample_rate)
        if key in self._audio:
            self._audio.move_to_end(key)
            return self._audio[key]
        wav = read_audio(path, sample_rate=sample_rate, strict=True)[0]
        self._audio[key] = wav
        self._bytes += wav.nbytes
        while self._bytes > self.max_bytes and len(self._audio) > 1:
            self._bytes -= self._audio.popitem(last=False)[1].nbytes
        return wav

    def rirs(self, path: str) -> np.ndarray:
        if path not in self._rirs:
            try:
                with np.load(path) as bank:
                    rirs = np.asarray(bank["rirs"], dtype=np.float32)
            except (OSError, KeyError, ValueError) as err:
                raise ManifestError(
                    f"{path}: cannot read the room bank ({err}); it must be an npz with an "
                    "array 'rirs' (n_rirs, channels, length): rebuild the corpus."
                ) from err
            if rirs.ndim != 3 or not np.isfinite(rirs).all():
                raise ManifestError(
                    f"{path}: 'rirs' must be a finite (n_rirs, channels, length) array, got "
                    f"shape {rirs.shape}; rebuild the corpus."
                )
            self._rirs[path] = rirs
        return self._rirs[path]


# ---- row validation ----------------------------------------------------------------------


def _check_row(row: Any, root: Path, where: str) -> dict[str, Any]:
    """Validate one row and return a copy with absolute paths; ManifestError names the field."""

    def bad(field: str, message: str) -> ManifestError:
        return ManifestError(
            f"{where}: field '{field}' {message}; fix the row or re-import the corpus."
        )

    def require(field: str, ok, what: str) -> Any:
        if field not in row:
            raise bad(field, "is missing")
        if not ok(row[field]):
            raise bad(field, f"must be {what}, got {row[field]!r}")
        return row[field]

    def path(value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise bad(field, f"must be a file path, got {value!r}")
        return os.path.normpath(root / value)  # absolute values stay as they are

    if not isinstance(row, Mapping):
        raise ManifestError(f"{where}: a row must be a JSON object, got {type(row).__name__}.")
    out = dict(row)
    require("id", lambda v: isinstance(v, str) and v != "", "a non-empty string")
    require("split", lambda v: v in SPLITS, f"one of {list(SPLITS)}")
    require("labelled", lambda v: isinstance(v, bool), "true or false")
    for field in ("sample_rate", "channels", "num_frames"):
        require(field, _positive_int, "a positive integer")
    require("n_speakers", lambda v: v is None or (_int(v) and v >= 0), "a count or null")
    if ("parts" in row) == ("mixture" in row):
        raise bad("mixture", "or 'parts' must be given (exactly one of them)")
    sources = row.get("sources")
    if sources is not None:
        if not isinstance(sources, list) or not sources:
            raise bad("sources", "must be a non-empty list of paths or null")
        out["sources"] = [path(s, "sources") for s in sources]
        if "sources_start" in row:
            require("sources_start", lambda v: _int(v) and v >= 0, "a frame index >= 0")
    if "mixture" in row:
        out["mixture"] = path(row["mixture"], "mixture")
        if "start" in row:
            require("start", lambda v: _int(v) and v >= 0, "a frame index >= 0")
        if row.get("channel_map") is not None:
            require(
                "channel_map",
                lambda v: isinstance(v, list) and len(v) == row["channels"]
                and all(_int(c) and c >= 0 for c in v),
                f"a list of {row['channels']} channel indices (one per channel)",
            )
    else:
        parts = require("parts", lambda v: isinstance(v, list) and v, "a non-empty list")
        rooms = row.get("rooms")
        out["rooms"] = None if rooms is None else path(rooms, "rooms")
        out["parts"] = []
        for k, part in enumerate(parts):
            name = f"parts[{k}]"
            if not isinstance(part, Mapping):
                raise bad(name, "must be an object")
            checks = {
                "offset": (_int, "an integer frame offset"),
                "gain": (lambda v: _number(v) and math.isfinite(v), "a finite number"),
                "role": (lambda v: v in ROLES, f"one of {list(ROLES)}"),
                "rir": (lambda v: v is None or (_int(v) and v >= 0), "a RIR index or null"),
            }
            for key, (ok, what) in checks.items():
                if key not in part or not ok(part[key]):
                    raise bad(f"{name}.{key}", f"must be {what}, got {part.get(key)!r}")
            if part["rir"] is not None and out["rooms"] is None:
                raise bad(f"{name}.rir", "needs a room bank, but 'rooms' is null")
            out["parts"].append({**part, "audio": path(part.get("audio"), f"{name}.audio")})
    if row["labelled"] and not has_sources(out):
        raise bad("labelled", "is true but the row has no sources")
    return out


def _unique(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise ManifestError(f"{name}: id {row['id']!r} appears twice; ids must be unique.")
        seen.add(row["id"])
    return rows


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _int(v) and v > 0


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _row_paths(row: Mapping[str, Any]) -> list[str]:
    paths = [row["mixture"]] if "mixture" in row else [p["audio"] for p in row["parts"]]
    if row.get("rooms"):
        paths.append(row["rooms"])
    return paths + list(row.get("sources") or [])


def _file_namer(folder: Path, root: Path) -> Callable[[str], str]:
    """How a manifest in `folder` names a file: relative to `folder` when it lies under `root`
    (by the path as written or with links resolved: a linked dataset inside stays relative),
    else by absolute path. The folders are resolved once, not per file."""
    bases = [(resolve(folder), Path(resolve(root)), resolve)
             for resolve in (os.path.abspath, os.path.realpath)]

    def name(p: str) -> str:
        for base, top, resolve in bases:
            path = Path(resolve(p))
            if path.is_relative_to(top):
                return os.path.relpath(path, base)
        return os.path.abspath(p)

    return name


def _relative_row(row: Mapping[str, Any], rel: Callable[[str], str]) -> dict[str, Any]:
    """`row` with every file it names passed through `rel`."""
    out = dict(row)
    if "mixture" in out:
        out["mixture"] = rel(out["mixture"])
    if out.get("sources") is not None:
        out["sources"] = [rel(p) for p in out["sources"]]
    if "parts" in out:
        out["parts"] = [{**p, "audio": rel(p["audio"])} for p in out["parts"]]
    if out.get("rooms") is not None:
        out["rooms"] = rel(out["rooms"])
    order = {k: n for n, k in enumerate(_FIELD_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


# ---- importers ---------------------------------------------------------------------------

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
    return _import_wsj(path, sample_rate, mode, labelled_fraction, seed, channels=None,
                       spatial=False)


def import_spatialized_wsj0_2mix(
    path: str | os.PathLike,
    *,
    channels: list[int] | None = None,
    sample_rate: int | None = None,
    mode: Literal["min", "max"] | None = None,
    labelled_fraction: float = 1.0,
    seed: int = 0,
) -> Manifest:
    """Import spatialized WSJ0-2mix: the WSJ0-2mix tree with multi-channel wavs.

    path: as for `import_wsj0_2mix`; `2speakers_reverb/` (preferred) or
    `2speakers_anechoic/` below it are searched too. channels: the microphones used, in
    order (default: all); the first is the reference microphone at which the sources (the
    reverberant images in s1/, s2/) are taken.
    """
    return _import_wsj(path, sample_rate, mode, labelled_fraction, seed, channels=channels,
                       spatial=True)


def _import_wsj(
    path: str | os.PathLike,
    sample_rate: int | None,
    mode: str | None,
    labelled_fraction: float,
    seed: int,
    channels: list[int] | None,
    spatial: bool,
) -> Manifest:
    _check_fraction(labelled_fraction, "labelled_fraction")
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
            raise ManifestError(f"{mix_dir}: no audio files (.wav/.flac) found.")
        src_dirs = sorted(
            (d for d in split_dir.iterdir() if d.is_dir() and re.fullmatch(r"s\d+", d.name)),
            key=lambda d: int(d.name[1:]),
        )
        src_files = [_matching_files(mix_dir, mixes, d) for d in src_dirs]
        for name, mix_path in mixes.items():
            info = audio_info(mix_path)
            rate = rate or info.sample_rate
            _check_rate(mix_path, info, rate, sample_rate)
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
                _check_rate(src, sinfo, rate, sample_rate)
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
    _mark_labelled(rows, labelled_fraction, seed)
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


def _check_rate(path: Path, info: AudioInfo, rate: int, requested: int | None) -> None:
    if info.sample_rate != rate:
        hint = (f"point to the wav{info.sample_rate // 1000}k folder or set sample_rate="
                f"{info.sample_rate}" if requested else "all files must share one rate")
        raise AudioError(f"{path}: sample rate {info.sample_rate} Hz, expected {rate} Hz; "
                         f"{hint}.")


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ManifestError(f"{name} must be in [0, 1], got {value}.")


def _mark_labelled(rows: list[dict[str, Any]], fraction: float, seed: int) -> None:
    """Keep sources visible for round(fraction * n) of the n train rows with sources."""
    train = [r for r in rows if r["split"] == "train" and r.get("sources")]
    keep = set(
        np.random.default_rng(seed).choice(len(train), round(fraction * len(train)),
                                           replace=False).tolist()
    )
    for k, row in enumerate(train):
        row["labelled"] = k in keep


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
    _check_fraction(labelled_fraction, "labelled_fraction")
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
                _check_rate(src, sinfo, info.sample_rate, None)
                if sinfo.frames != info.frames or sinfo.channels != 1:
                    raise ManifestError(
                        f"{src}: {sinfo.frames} frames x {sinfo.channels} channel(s), but its "
                        f"mixture {mix} has {info.frames} x 1 ({csv_path}, line {line}); "
                        "regenerate the mixture."
                    )
            if rows:
                _check_rate(mix, info, rows[0]["sample_rate"], None)
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
    _mark_labelled(rows, labelled_fraction, seed)
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


def import_folder(
    path: str | os.PathLike,
    *,
    audio_dir: str | os.PathLike | None = None,
    sample_rate: int = 8000,
    segment_seconds: float = 4.0,
    min_segment_seconds: float | None = None,
    channels: list[int] | Literal["mix"] | None = "mix",
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> Manifest:
    """Import a folder of unlabelled recordings (searched recursively), cut into segments.

    Files already at `sample_rate` whose channels need no mixing are referenced where they
    are; any other file is converted once (resampled with soxr, channels selected or mixed
    down), written as float WAV below `audio_dir` (required then), and a `ResampleWarning`
    says how many were. Rows are segments of `segment_seconds` given by start/num_frames
    into the file; a shorter tail is kept when at least `min_segment_seconds` (default: half
    a segment) long. Silent segments are
    dropped; a silent, empty, NaN or corrupt file is an AudioError. channels: "mix" averages
    the channels, a list keeps those microphones, None keeps all (counts must agree).
    round(valid_fraction * n) segments, drawn with `seed` (at least one when valid_fraction > 0
    and n >= 2), go to "valid", the rest to "train".
    """
    _check_fraction(valid_fraction, "valid_fraction")
    folder = Path(path)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: folder not found; give a folder of recordings.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
                   and p.is_file())
    if not files:
        raise ManifestError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found.")
    seg = round(segment_seconds * sample_rate)
    min_len = seg // 2 if min_segment_seconds is None else round(min_segment_seconds * sample_rate)
    if seg <= 0 or min_len <= 0:
        raise ManifestError("segment_seconds and min_segment_seconds must be positive.")
    rows: list[dict[str, Any]] = []
    n_channels: int | None = None
    converted: list[Path] = []
    threshold = 10.0 ** (SILENCE_DB / 20.0)
    for file in files:
        info = audio_info(file)
        wav, sr = read_audio(file, channels=channels, check_silent=True)
        if n_channels is not None and wav.shape[0] != n_channels:
            raise AudioError(f"{file}: gives {wav.shape[0]} channel(s), earlier files "
                             f"{n_channels}; choose channels=... or 'mix'.")
        n_channels = wav.shape[0]
        rel = file.relative_to(folder)
        stored, channel_map = file, channels if isinstance(channels, list) else None
        if sr != sample_rate or (channels == "mix" and info.channels > 1):
            if audio_dir is None:
                raise ManifestError(f"{file}: needs conversion ({sr} Hz, {info.channels} "
                                    "channel(s)); pass audio_dir=FOLDER to write converted "
                                    "copies.")
            wav = resample(wav, sr, sample_rate)
            stored = Path(audio_dir).resolve() / rel.with_suffix(".wav")
            write_audio(stored, wav, sample_rate, subtype="FLOAT")
            channel_map = None
            converted.append(file)
        T = wav.shape[1]
        starts = list(range(0, T - seg + 1, seg))
        tail = starts[-1] + seg if starts else 0
        if T - tail >= min_len:
            starts.append(tail)
        for k, s0 in enumerate(starts):
            piece = wav[:, s0 : s0 + seg]
            if float(np.sqrt(np.mean(np.square(piece, dtype=np.float64)))) <= threshold:
                continue
            row: dict[str, Any] = {
                "id": f"{rel.with_suffix('').as_posix()}/{k:05d}",
                "split": "train",
                "labelled": False,
                "sample_rate": sample_rate,
                "channels": wav.shape[0],
                "num_frames": piece.shape[1],
                "n_speakers": None,
                "mixture": str(stored),
                "sources": None,
                "start": s0,
            }
            if channel_map is not None:
                row["channel_map"] = list(channel_map)
            rows.append(row)
    if converted:
        warnings.warn(
            f"{len(converted)} recording(s) of {folder} (first {converted[0]}) converted to "
            f"{sample_rate} Hz / {n_channels} channel(s) and written below {audio_dir}",
            ResampleWarning,
            stacklevel=2,
        )
    if not rows:
        raise ManifestError(f"{folder}: no segment of at least {min_len} frames with sound.")
    n_valid = round(valid_fraction * len(rows))
    if valid_fraction > 0 and len(rows) >= 2:
        n_valid = min(max(n_valid, 1), len(rows) - 1)
    for k in np.random.default_rng(seed).choice(len(rows), n_valid, replace=False):
        rows[k]["split"] = "valid"
    return Manifest(rows, name=str(folder))

