"""The local web page's server: a Starlette app (run by uvicorn) over the model folders and,
optionally, a run folder.

Routes (JSON errors are {"error": message}):
    GET  /                          the page (static/index.html); /static/* its script, style
    GET  /api/info                  models, upload limit, whether a run is shown
    POST /api/separate?model=ID&filename=NAME   body: the recording's bytes -> 202 the job
                                    (413 over the upload limit, 400 empty, 404 unknown model)
    GET  /api/jobs/ID               status, progress, error, tracks; DELETE removes it
    GET  /api/jobs/ID/audio/KEY     a track (KEY: mixture, s1, s2, ...); ?download=1 attaches
    GET  /api/jobs/ID/spectrogram/KEY, /api/jobs/ID/all.zip
    GET  /api/run, /api/run/plots/NAME
    GET  /api/run/examples/SYSTEM/N  kept test mixture N of a system: its tracks (peaks, URLs)
    GET  /api/run/examples/SYSTEM/N/KEY.wav|.png

Files are served only by name lookups in what the server made or the run lists (a job's
tracks, the report's plots, the example files its systems' evaluations list) and from the
package's static folder (whose server refuses paths leading out of it): never by joining a
requested path.
The upload is streamed into the job's own folder, counted against the limit as it arrives.
"""

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tsmixit.errors import ConfigError, ModelFileError
from tsmixit.inference import Separator
from tsmixit.serve.jobs import JobStore, safe_filename
from tsmixit.serve.run_results import RunResults

log = logging.getLogger("tsmixit.serve")

STATIC = Path(__file__).parent / "static"
#: Default upload limit, MB (10^6 bytes): an hour of 16 kHz 16-bit mono is 115 MB.
DEFAULT_MAX_UPLOAD_MB = 200.0
#: A refused upload is read on (and dropped) up to this many bytes before the 413 answer, so
#: that a browser still sending it receives the answer instead of a reset connection.
DRAIN_BYTES = 2_000_000_000
#: Content Security Policy of every response: the page loads nothing from anywhere else.
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
       "script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
               ".oga": "audio/ogg", ".aif": "audio/aiff", ".aiff": "audio/aiff"}


@dataclass(frozen=True)
class ServedModel:
    """A model folder offered on the page."""

    id: str
    path: Path
    separator: Separator

    def as_dict(self) -> dict[str, Any]:
        sep = self.separator
        return {"id": self.id, "path": str(self.path), "class": type(sep.model).__name__,
                "sample_rate": sep.sample_rate, "n_outputs": sep.n_outputs,
                "n_channels": sep.n_channels,
                "parameters": sum(p.numel() for p in sep.model.parameters()),
                "training": sep.config.get("training", {})}


def _unique_ids(paths: list[Path]) -> list[str]:
    """The folders' names ("demo/model" for a run's model/ folder), with "-2", "-3" ...
    added where two folders share one."""
    ids: list[str] = []
    for path in paths:
        resolved = path.resolve()
        name = resolved.name or "model"
        if name == "model" and resolved.parent.name:
            name = f"{resolved.parent.name}/{name}"
        candidate, n = name, 1
        while candidate in ids:
            n += 1
            candidate = f"{name}-{n}"
        ids.append(candidate)
    return ids


def load_models(paths: list[str | Path], device: str = "auto") -> list[ServedModel]:
    """Load every model folder (ModelFileError naming the one that fails)."""
    from tsmixit.model_files import inference_device, load_model

    if not paths:
        raise ModelFileError("no model to serve: pass --model DIR (a model folder, e.g. "
                             "runs/demo/model) or --run RUN_DIR holding one in RUN_DIR/model.")
    target = inference_device(device)
    folders = [Path(p) for p in paths]
    return [ServedModel(i, p, load_model(p, target))
            for i, p in zip(_unique_ids(folders), folders, strict=True)]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def create_app(
    models: list[ServedModel],
    run_dir: str | Path | None = None,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    work_dir: str | Path | None = None,
    keep_jobs: int = 16,
    chunk_seconds: float = 8.0,
    overlap_seconds: float = 1.0,
    allow_upsampling: bool = False,
) -> Starlette:
    """The app. Jobs live in a fresh folder below `work_dir` (default: the system's temporary
    folder), removed when the app shuts down. TsmixitError for an unreadable run folder."""
    if not models:
        raise ModelFileError("no model to serve: pass --model DIR.")
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be > 0, got {max_upload_mb}.")
    by_id = {m.id: m for m in models}
    run = RunResults(run_dir) if run_dir is not None else None
    limit = int(max_upload_mb * 1e6)
    state: dict[str, JobStore] = {}

    def store() -> JobStore:
        return state["jobs"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        root = Path(tempfile.mkdtemp(prefix="tsmixit-serve-", dir=work_dir))
        state["jobs"] = JobStore(root, keep=keep_jobs, chunk_seconds=chunk_seconds,
                                 overlap_seconds=overlap_seconds,
                                 allow_upsampling=allow_upsampling)
        try:
            yield
        finally:
            state.pop("jobs").close()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def info(request: Request) -> Response:
        return JSONResponse({"models": [m.as_dict() for m in models],
                             "max_upload_bytes": limit, "run": run is not None,
                             "chunk_seconds": chunk_seconds})

    def too_large(name: str, size: int | None) -> JSONResponse:
        told = f" ({_size(size)})" if size else ""
        return _error(413, f"{name}{told} is larger than this server's upload limit of "
                           f"{_size(limit)}; upload a shorter recording, or restart the "
                           "server with a larger --max-upload-mb.")

    async def drain(request: Request) -> None:
        seen = 0
        with contextlib.suppress(ClientDisconnect):
            async for block in request.stream():
                seen += len(block)
                if seen > DRAIN_BYTES:
                    return

    async def separate(request: Request) -> Response:
        model_id = request.query_params.get("model", models[0].id)
        if model_id not in by_id:
            return _error(404, f"model {model_id!r}: not served here; choose one of "
                               f"{', '.join(by_id)}.")
        jobs = store()
        name = request.query_params.get("filename")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await drain(request)
            return too_large(safe_filename(name), int(declared))
        job = jobs.new(model_id, name)
        size = 0
        try:
            with open(job.upload, "wb") as out:
                async for block in request.stream():
                    size += len(block)
                    if size <= limit:
                        out.write(block)
                    elif size > DRAIN_BYTES:  # over the limit: read on, write nothing
                        break
        except ClientDisconnect:
            jobs.discard(job)
            return _error(400, "the upload was interrupted; try again.")
        if size > limit:
            jobs.discard(job)
            return too_large(job.filename, size if size <= DRAIN_BYTES else None)
        if size == 0:
            jobs.discard(job)
            return _error(400, f"{job.filename}: the upload is empty; choose a recording "
                               "(WAV, FLAC or OGG).")
        jobs.submit(job, by_id[model_id].separator)
        return JSONResponse(job.as_dict(), status_code=202)

    def find_job(request: Request):
        job = store().get(request.path_params["job"])
        if job is None:
            raise HTTPException(404, "no such separation (it finished long ago, was "
                                     "deleted, or the server restarted); separate it again.")
        return job

    async def job_status(request: Request) -> Response:
        job = find_job(request)
        if request.method == "DELETE":
            store().discard(job)
            return JSONResponse({"deleted": job.id})
        return JSONResponse(job.as_dict())

    def track_of(request: Request):
        job = find_job(request)
        key = request.path_params["key"]
        if job.status != "done" or key not in job.tracks:
            raise HTTPException(404, f"no track {key!r} in this separation.")
        return job, job.tracks[key]

    async def job_audio(request: Request) -> Response:
        job, track = track_of(request)
        download = request.query_params.get("download") == "1"
        return FileResponse(track.path, filename=track.path.name if download else None,
                            media_type=AUDIO_TYPES.get(track.path.suffix.lower(),
                                                       "application/octet-stream"))

    async def job_spectrogram(request: Request) -> Response:
        job, track = track_of(request)
        return FileResponse(job.spectrogram_path(track.key), media_type="image/png")

    async def job_zip(request: Request) -> Response:
        job = find_job(request)
        if job.status != "done":
            raise HTTPException(404, "this separation has not finished.")
        path = await run_in_threadpool(job.zip_path)
        stem = Path(job.filename).stem
        return FileResponse(path, filename=f"{stem}_separated.zip", media_type="application/zip")

    def need_run() -> RunResults:
        if run is None:
            raise HTTPException(404, "no run folder is shown: start the server with --run "
                                     "RUN_DIR.")
        return run

    async def run_summary(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(need_run().summary))

    async def run_plot(request: Request) -> Response:
        results, name = need_run(), request.path_params["name"]
        if name not in results.plots:
            raise HTTPException(404, f"no plot {name!r} in this run's report.")
        return FileResponse(results.plots[name], media_type="image/png")

    async def run_example(request: Request) -> Response:
        results = need_run()
        system, n = request.path_params["system"], request.path_params["n"]
        try:
            return JSONResponse(await run_in_threadpool(results.tracks, system, n))
        except KeyError:
            raise HTTPException(404, f"no example {system}/{n} in this run.") from None

    async def run_example_track(request: Request) -> Response:
        results = need_run()
        system, n, key, kind = (request.path_params[p] for p in ("system", "n", "key", "kind"))
        try:
            if kind == "wav":
                return Response(await run_in_threadpool(results.wav, system, n, key),
                                media_type="audio/wav")
            if kind == "png":
                drawing = await run_in_threadpool(results.drawing, system, n, key)
                return Response(drawing.png, media_type="image/png")
        except KeyError:
            pass
        raise HTTPException(404, f"no example track {system}/{n}/{key}.{kind} in this run.")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404 and exc.detail == "Not Found":
            return _error(404, f"{request.url.path}: not found.")
        return _error(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("request %s failed", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log.")

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/separate", separate, methods=["POST"]),
        Route("/api/jobs/{job}", job_status, methods=["GET", "DELETE"]),
        Route("/api/jobs/{job}/audio/{key}", job_audio),
        Route("/api/jobs/{job}/spectrogram/{key}", job_spectrogram),
        Route("/api/jobs/{job}/all.zip", job_zip),
        Route("/api/run", run_summary),
        Route("/api/run/plots/{name}", run_plot),
        Route("/api/run/examples/{system}/{n}", run_example),
        Route("/api/run/examples/{system}/{n}/{key}.{kind}", run_example_track),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_Headers)],
                     exception_handlers={HTTPException: http_error, Exception: server_error})


class _Headers:
    """ASGI middleware: every response carries the CSP, no MIME sniffing, no referrer, and
    API answers are not cached."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []),
                           (b"content-security-policy", CSP.encode()),
                           (b"x-content-type-options", b"nosniff"),
                           (b"referrer-policy", b"no-referrer")]
                if scope["path"].startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
