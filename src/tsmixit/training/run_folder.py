"""The run folder RUN of a recipe, and the ranks that share it.

    RUN/.lock                       held by rank 0 while a recipe runs in RUN
    RUN/config.yaml                 the resolved config of the latest call
    RUN/corpus/                     the embedded corpus, when the recipe builds it
    RUN/<stage>/stage.json          the stage's config and fingerprint (written first)
    RUN/<stage>/summary.json        written last: its existence means "stage finished"
    RUN/<stage>/metrics.csv         Lightning's CSV log, whole across resumes
    RUN/eval/<system>.json, RUN/model/, RUN/report.md

Files in RUN are named relative to RUN on disk (summaries, pseudo-label manifests,
evaluations) and absolutely in memory: the folder can be moved or copied whole.
Rank 0 writes; ranks > 0 wait for what it writes (`wait_for`) or meet it at `barrier`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from tsmixit.errors import TrainingError
from tsmixit.files import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

#: The layout of stage summaries; a summary of another layout is refused by name.
LAYOUT = 2
#: Summary entries naming files (relative to RUN on disk when inside it).
PATH_KEYS = ("checkpoint", "last_checkpoint", "manifest", "teacher")


def rank() -> int:
    return rank_zero_only.rank


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-able object (keys sorted): fingerprints and stamps."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock (rank 0) while the recipe runs: a second recipe on the same folder would
    resume from the first one's checkpoints while it still writes them."""
    if rank() != 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise TrainingError(
                f"{run_dir} is in use by another tsmixit recipe ({holder}); wait for it to end "
                "(it resumes where it stops) or choose another --run-dir") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wait_for(path: Path, what: str, fingerprint: str | None = None,
             timeout_s: float = 24 * 3600) -> None:
    """Ranks > 0 wait for rank 0 to write `path` (a JSON file holding `fingerprint`, when
    given): work done outside any Trainer, before a process group exists."""

    def ready() -> bool:
        if not path.is_file():
            return False
        return fingerprint is None or json.loads(path.read_text()).get(
            "fingerprint") == fingerprint

    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            raise TrainingError(f"rank {rank()}: gave up waiting for {what} ({path})")
        time.sleep(1.0)


def in_run(path: str | Path, run_dir: Path) -> str:
    """`path` relative to the run folder when it lies inside, else absolute."""
    path, root = Path(path).resolve(), run_dir.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def relocatable(summary: dict, run_dir: Path) -> dict:
    """A summary as stored: its paths relative to RUN."""
    out = dict(summary)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str):
            out[key] = in_run(out[key], run_dir)
    return out


def located(summary: dict, run_dir: Path) -> dict:
    """A summary as used: its paths absolute."""
    out = dict(summary)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
            out[key] = str(run_dir.resolve() / out[key])
    return out


def read_summary(run_dir: Path, stage: str, fingerprint: str) -> dict | None:
    """The stage's summary when it finished under `fingerprint`, else None. A summary
    written by an earlier layout of tsmixit is refused (TrainingError naming the fix)."""
    path = run_dir / stage / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("layout") != LAYOUT:
        raise TrainingError(
            f"{path} was written by an earlier version of tsmixit (summary layout "
            f"{summary.get('layout', 1)}, this version reads {LAYOUT}); rerun with --fresh "
            "to retrain in this folder, or choose another --run-dir")
    summary = located(summary, run_dir)
    return summary if summary.get("fingerprint") == fingerprint else None


def write_summary(run_dir: Path, stage: str, summary: dict) -> dict:
    """Store a finished stage's summary (rank 0; the stage's "finished" mark); returns it
    as used (paths absolute)."""
    stored = relocatable({**summary, "layout": LAYOUT}, run_dir)
    if rank() == 0:
        write_json_atomic(run_dir / stage / "summary.json", stored)
    barrier()
    return located(stored, run_dir)


def open_stage(run_dir: Path, stage: str, fingerprint: str, config: dict) -> Path:
    """RUN/<stage>, emptied first when it holds work done under another fingerprint."""
    folder = run_dir / stage
    marker = folder / "stage.json"
    if rank() == 0:
        if folder.exists():
            old = json.loads(marker.read_text()) if marker.is_file() else {}
            if old.get("fingerprint") != fingerprint:
                log.warning("[%s] config or upstream changed: discarding %s", stage, folder)
                shutil.rmtree(folder)
        if not marker.is_file():
            write_json_atomic(marker, {"stage": stage, "fingerprint": fingerprint,
                                       "config": config})
    else:
        wait_for(marker, f"the {stage} folder", fingerprint)
    barrier()
    return folder


def keep_metrics(folder: Path) -> None:
    """Before a resume: Lightning's CSVLogger starts metrics.csv afresh, so keep the rows
    logged so far aside (merged back by `merge_metrics`)."""
    if rank() != 0:
        return
    current, kept = folder / "metrics.csv", folder / "metrics.before-resume.csv"
    if current.is_file():
        if kept.is_file():
            _merge_files(kept, current, kept)
            current.unlink()
        else:
            current.replace(kept)


def merge_metrics(folder: Path) -> None:
    """After training: metrics.csv holds the rows from before and after every resume."""
    kept, current = folder / "metrics.before-resume.csv", folder / "metrics.csv"
    if kept.is_file():
        if current.is_file():
            _merge_files(kept, current, current)
        else:
            kept.replace(current)
        kept.unlink(missing_ok=True)


def _merge_files(first: Path, second: Path, out: Path) -> None:
    """Concatenate two CSV logs with possibly different columns (rows of `first` whose step
    the second one logs again are dropped: they were redone after the resume)."""
    rows_a = list(csv.DictReader(first.open()))
    rows_b = list(csv.DictReader(second.open()))
    redone = {r.get("step") for r in rows_b}
    rows = [r for r in rows_a if r.get("step") not in redone] + rows_b
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> None:
            lines.append(text)

    writer = csv.DictWriter(_Sink(), fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, "".join(lines))
