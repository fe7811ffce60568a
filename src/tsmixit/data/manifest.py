"""One manifest format for every corpus: the row schema, its checks, load and save.

Notation: a manifest is a JSONL file, one mixture per line (a `Row`): the mixture x (C, T) at
C microphones over T frames, and, when the row has them, its S sources s (S, T) at the
reference microphone (microphone 0 of the row). Paths on disk are relative to the manifest's
folder (so a corpus folder can be moved as a whole); in memory they are absolute.

A row is either a file row (WSJ0-2mix, LibriMix, folders of recordings, pseudo-labels), whose
mixture and sources are read from audio files, or a rendered row (the embedded corpus), mixed
on the fly from its parts by `tsmixit.data.render`. A rendered row may also carry "sources"
(e.g. pseudo-targets), which then replace its rendered sources. Any other keys (speaker ids,
levels, ...) are kept and saved unchanged.

Loaders return float32 arrays: mixtures (C, T), sources (S, T), of the whole row or of a
window [start, start + frames) of it.
"""

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import numpy as np

from tsmixit.audio import audio_info, read_audio
from tsmixit.data.render import AudioCache, render
from tsmixit.errors import ManifestError
from tsmixit.files import write_text_atomic

SPLITS = ("train", "valid", "test")
ROLES = ("source", "noise")
_FIELD_ORDER = (
    "id", "split", "labelled", "sample_rate", "channels", "num_frames", "n_speakers",
    "mixture", "start", "channel_map", "sources", "parts", "rooms",
)  # fmt: skip


class Part(TypedDict):
    """One signal of a rendered row (see `tsmixit.data.render`)."""

    audio: str  # the utterance or noise a_p: mono, or one channel per microphone without a RIR
    offset: int  # row frame of its first sample o_p (may be negative: it starts earlier)
    gain: float  # linear gain g_p
    role: Literal["source", "noise"]  # noise parts only enter the mixture
    rir: int | None  # index into the row's room bank, or None (no room)


class Row(TypedDict):
    """One mixture of a manifest, as `Manifest` holds it (absolute paths, checked)."""

    id: str  # unique within the manifest
    split: Literal["train", "valid", "test"]
    labelled: bool  # its sources are visible to supervised stages
    sample_rate: int  # Hz
    channels: int  # C
    num_frames: int  # T
    n_speakers: int | None  # None when unknown
    sources: NotRequired[list[str] | None]  # source files (S of them), or None
    # file rows
    mixture: NotRequired[str]  # the mixture file
    start: NotRequired[int]  # first frame of the row in its mixture and source files (default 0)
    channel_map: NotRequired[list[int] | None]  # file channels used, in order; the first is
    # the reference microphone of the sources
    # rendered rows
    parts: NotRequired[list[Part]]
    rooms: NotRequired[str | None]  # npz room bank "rirs" (n_rirs, C, L_h), or None


class Manifest:
    """A list of checked rows (`rows`, each a `Row`) with loaders for mixtures and sources.

    Decoded utterances and RIR banks of rendered rows are cached in memory (`AudioCache`);
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
        self._cache = AudioCache()

    @classmethod
    def _of_checked(cls, rows: list[Row], name: str, cache: AudioCache | None) -> "Manifest":
        manifest = cls.__new__(cls)
        manifest.name, manifest.rows = name, rows
        manifest._cache = cache if cache is not None else AudioCache()
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

    def __getitem__(self, i: int) -> Row:
        return self.rows[i]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"Manifest({self.name!r}, {len(self)} rows)"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = AudioCache()

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
                start=row.get("start", 0) + start,
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

    def _row_with_sources(self, i: int, allow_unlabelled: bool) -> Row:
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

    def _window(self, row: Row, start: int, frames: int | None) -> tuple[int, int]:
        total = row["num_frames"]
        frames = total - start if frames is None else frames
        if start < 0 or frames <= 0 or start + frames > total:
            raise ManifestError(
                f"{self.name}: row {row['id']!r} has {total} frames; cannot take "
                f"[{start}, {start + frames})."
            )
        return start, frames

    def _render(self, row: Row, start: int, frames: int, with_sources: bool,
                reference_only: bool) -> tuple[np.ndarray, np.ndarray]:
        """(mixture (C', frames), sources (S, frames)) of a rendered row's window."""
        return render(row, start, frames, cache=self._cache, with_sources=with_sources,
                      reference_only=reference_only, name=self.name)


def has_sources(row: Mapping[str, Any]) -> bool:
    """Whether a row can provide sources (file paths, or rendered source parts)."""
    if row.get("sources"):
        return True
    return "parts" in row and any(p["role"] == "source" for p in row["parts"])


def pseudo_labelled(row: Mapping[str, Any], sources: list[str], teacher: str,
                    active_outputs: int, mixture: str | None = None,
                    channels: int | None = None) -> dict[str, Any]:
    """The row a pseudo-label stage writes for a training row: its sources are the
    teacher's outputs (files), it is unlabelled (its true sources, if any, stay unread) and
    records "pseudo_label" {teacher, active_outputs}. A segment of a longer file comes with
    its own `mixture` file (of `channels` channels): it then reads from frame 0."""
    new = {**row, "labelled": False, "sources": list(sources),
           "pseudo_label": {"teacher": teacher, "active_outputs": active_outputs}}
    if mixture is not None:
        new.update(mixture=mixture, channels=channels if channels is not None else row["channels"])
        new.pop("start", None)
        new.pop("channel_map", None)
    return new


# ---- row validation ----------------------------------------------------------------------


def _check_row(row: Any, root: Path, where: str) -> Row:
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
    return cast(Row, out)


def _unique(rows: list[Row], name: str) -> list[Row]:
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
