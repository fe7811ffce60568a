"""Separation jobs of the page: one private temporary folder per upload, separated one job
at a time by a worker thread through `tsmixit.inference.separate_files` (the path
`tsmixit separate` takes: the same chunking, outputs and error messages).

A job's folder holds the upload (upload/<name>), the outputs (out/<stem>_s1.wav ...), the
drawings and, when asked for, all.zip; nothing is written elsewhere. The folder is removed
when the job fails, is deleted, is cancelled, is evicted (more than `keep` finished jobs)
or when the store closes.
"""

import logging
import queue
import re
import secrets
import shutil
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsmixit.audio import audio_info
from tsmixit.errors import TsmixitError
from tsmixit.inference import Separator, separate_files
from tsmixit.serve.display import Drawing, draw

log = logging.getLogger("tsmixit.serve")

#: Characters kept of an uploaded file's name (others become "_").
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_filename(name: str | None) -> str:
    """The base name of an uploaded file reduced to letters, digits, space, '.', '_' and
    '-' (at most 80 characters, no leading dot); "recording.wav" when nothing is left."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _UNSAFE.sub("_", base).strip().lstrip(".")
    if len(base) > 80:
        stem, dot, suffix = base.rpartition(".")
        base = (stem[: 79 - len(suffix)] + dot + suffix) if dot and len(suffix) <= 8 else base[:80]
    return base if base.strip("._ -") else "recording.wav"


class CancelledError(Exception):
    """The job was deleted (or the server stopped) while it ran; raised between chunks."""


@dataclass(eq=False)
class Track:
    """One playable signal of a job: the mixture or a separated voice."""

    key: str  # URL name: "mixture", "s1", ...
    label: str
    path: Path
    drawing: Drawing | None = None  # once drawn

    def as_dict(self, base: str) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "filename": self.path.name,
                "audio": f"{base}/audio/{self.key}",
                "spectrogram": f"{base}/spectrogram/{self.key}",
                "peaks": self.drawing.peaks_json() if self.drawing else None,
                "seconds": self.drawing.seconds if self.drawing else None}


@dataclass(eq=False)
class Job:
    """A separation request. status: queued -> running -> done | failed | cancelled."""

    id: str
    folder: Path
    model: str
    filename: str
    status: str = "queued"
    phase: str = "waiting for the separator"
    seconds_total: float | None = None
    seconds_done: float = 0.0
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)
    zip_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def upload(self) -> Path:
        return self.folder / "upload" / self.filename

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def as_dict(self) -> dict[str, Any]:
        base = f"/api/jobs/{self.id}"
        progress = (min(1.0, self.seconds_done / self.seconds_total)
                    if self.seconds_total else 0.0)
        return {
            "id": self.id, "status": self.status, "phase": self.phase, "model": self.model,
            "filename": self.filename, "progress": 1.0 if self.status == "done" else progress,
            "seconds_done": self.seconds_done, "seconds_total": self.seconds_total,
            "error": self.error, "result": self.result,
            "tracks": [t.as_dict(base) for t in self.tracks.values()] if self.status == "done"
            else [],
            "zip": f"{base}/all.zip" if self.status == "done" else None,
        }

    def spectrogram_path(self, key: str) -> Path:
        """The spectrogram PNG of track `key` (a key of self.tracks)."""
        return self.folder / f"{self.tracks[key].key}.png"

    def zip_path(self) -> Path:
        """all.zip of the separated voices (written on the first call)."""
        path = self.folder / "all.zip"
        with self.zip_lock:
            if not path.exists():
                tmp = path.with_suffix(".zip.tmp")
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                    for track in self.tracks.values():
                        if track.key != "mixture":
                            archive.write(track.path, arcname=track.path.name)
                tmp.replace(path)
        return path


class _Progress(Separator):
    """The job's separator: the same network, counting the seconds of audio separated and
    stopping between chunks once the job is cancelled."""

    def __init__(self, separator: Separator, job: Job, hop_seconds: float) -> None:
        super().__init__(separator.model, separator.sample_rate, separator.config)
        self.job, self.hop_seconds = job, hop_seconds

    def forward_model_rate(self, wav: np.ndarray) -> np.ndarray:
        if self.job.cancel.is_set():
            raise CancelledError(self.job.id)
        out = super().forward_model_rate(wav)  # (K, T)
        self.job.seconds_done += self.hop_seconds
        return out


class JobStore:
    """The jobs of one server: their folders below `root`, one worker thread."""

    def __init__(self, root: Path, *, keep: int = 16, chunk_seconds: float = 8.0,
                 overlap_seconds: float = 1.0, allow_upsampling: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self.options = {"chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds,
                        "allow_upsampling": allow_upsampling}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Job, Separator] | None] = queue.Queue()
        # torch's intra-op thread count is per thread: the worker takes its creator's, so a
        # job computes exactly what `tsmixit separate` computes in the same process set-up.
        self._threads = torch.get_num_threads()
        self._worker = threading.Thread(target=self._work, name="tsmixit-separate", daemon=True)
        self._worker.start()

    def new(self, model: str, filename: str | None) -> Job:
        """A job with its private folder; the caller writes the upload to job.upload."""
        job_id = secrets.token_urlsafe(12)
        folder = self.root / job_id
        (folder / "upload").mkdir(parents=True, mode=0o700)
        job = Job(job_id, folder, model, safe_filename(filename))
        with self._lock:
            self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def submit(self, job: Job, separator: Separator) -> None:
        self._queue.put((job, separator))

    def discard(self, job: Job) -> None:
        """Forget a job and remove its folder (a running one stops at its next chunk and
        its folder is removed by the worker)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        job.cancel.set()
        if job.finished or job.status == "queued":
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        """Cancel every job, stop the worker and remove every folder."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.cancel.set()
        self._queue.put(None)
        self._worker.join(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def _work(self) -> None:
        torch.set_num_threads(self._threads)
        while (item := self._queue.get()) is not None:
            job, separator = item
            if job.cancel.is_set():
                job.status = "cancelled"
                shutil.rmtree(job.folder, ignore_errors=True)
                continue
            status, phase = self._run(job, separator)
            if status != "done" or job.cancel.is_set():
                shutil.rmtree(job.folder, ignore_errors=True)
            self._evict(job)
            # Published last: a client seeing it finds the folders already as they stay.
            job.phase, job.status = phase, status

    def _run(self, job: Job, separator: Separator) -> tuple[str, str]:
        """Separate and draw; returns the job's final (status, phase), not yet set."""
        job.status, job.phase = "running", "reading the recording"
        chunk, overlap = self.options["chunk_seconds"], self.options["overlap_seconds"]
        progress = _Progress(separator, job, chunk - overlap)
        try:
            try:
                info = audio_info(job.upload)
                job.seconds_total = info.frames / info.sample_rate
            except TsmixitError:
                pass  # separate_files reports it, in the CLI's words
            job.phase = "separating"
            [result] = separate_files(progress, [job.upload], job.folder / "out",
                                      progress=False, **self.options)
            if result["error"]:
                raise TsmixitError(result["error"])
            job.seconds_done = job.seconds_total or 0.0
            job.phase = "drawing"
            tracks = [Track("mixture", "Mixture", job.upload)]
            tracks += [Track(f"s{k + 1}", f"Voice {k + 1}", Path(p))
                       for k, p in enumerate(result["outputs"])]
            for track in tracks:
                if job.cancel.is_set():
                    raise CancelledError(job.id)
                track.drawing = draw(track.path)
                (job.folder / f"{track.key}.png").write_bytes(track.drawing.png)
            job.tracks = {t.key: t for t in tracks}
            job.result = {key: result[key] for key in
                          ("sample_rate", "channels", "seconds", "wall_seconds", "rtf",
                           "chunks", "notes")}
            job.result["notes"] = [self._public(job, n) for n in result["notes"]]
            return "done", "done"
        except CancelledError:
            return "cancelled", "cancelled"
        except TsmixitError as err:
            job.error = self._public(job, str(err))
        except Exception as err:  # a bug must not stop the worker: report it on the page
            log.error("separation of %s failed:\n%s", job.filename, traceback.format_exc())
            job.error = f"internal error ({type(err).__name__}: {err}); see the server's log."
        return "failed", "failed"

    @staticmethod
    def _public(job: Job, text: str) -> str:
        """A message as the CLI gives it for a file of the uploaded name: the server's
        folder left out."""
        return text.replace(str(job.upload), job.filename)

    def _evict(self, newest: Job) -> None:
        """Forget the oldest finished jobs beyond `keep`, counting `newest` (kept)."""
        with self._lock:
            finished = sorted((j for j in self._jobs.values() if j.finished),
                              key=lambda j: j.created)
            old = finished[: max(0, len(finished) + 1 - self.keep)]
            for job in old:
                self._jobs.pop(job.id, None)
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)
