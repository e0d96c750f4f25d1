"""The HTTP API and the web page: `create_app(model, ServeConfig(...))` gives the FastAPI app.

The app takes a loaded model and a data directory; it assumes it is the only process using that
directory (`emosent.serve.server.serve` holds a lock on it).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import json
import shutil
import threading
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from emosent.config import ServeConfig
from emosent.data import MediaError, probe
from emosent.data.media import check_frame_size
from emosent.plots import EMOTION_COLOURS, SENTIMENT_COLOURS, timeline_png
from emosent.segments import ASR_HINT, read_segments
from emosent.serve.docs import add_offline_docs
from emosent.serve.guards import protect
from emosent.serve.jobs import DONE, FAILED, Job, JobStore, is_job_id, new_job_id
from emosent.serve.uploads import Upload, UploadError, check_declared_size, check_form_type, drain, receive
from emosent.serve.workers import WorkerPool

STATIC = Path(__file__).parent / "static"


FORM_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["video"],
    "properties": {
        "video": {"type": "string", "format": "binary", "description": "the video (anything FFmpeg reads)"},
        "subtitles": {"type": "string", "format": "binary", "description": "optional .srt or .vtt"},
        "transcript": {"type": "string", "format": "binary",
                       "description": 'optional JSON [{"start": s, "end": s, "text": "..."}]'},
    }}}}}}


def create_app(model, config: ServeConfig, *, model_name: str = "", host: str = "127.0.0.1") -> FastAPI:
    """The service over one loaded `model`, keeping its jobs in `config.data_dir`, served on the
    address `host` (its Host allow-list: see emosent.serve.guards)."""
    data_dir = Path(config.data_dir)
    uploads_dir = data_dir / "uploads"
    state: dict = {}
    plot_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe
    asr_available = importlib.util.find_spec("faster_whisper") is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = JobStore(data_dir)
        store.interrupt_unfinished()
        # Uploads of a server that died are of no job now; results of no finished job are orphans.
        shutil.rmtree(uploads_dir, ignore_errors=True)
        uploads_dir.mkdir(parents=True)
        for path in store.results.iterdir():
            job = store.get(path.stem)
            if job is None or job.state != DONE:
                path.unlink(missing_ok=True)
        pool = WorkerPool(store, model, uploads_dir, workers=config.workers, queue_size=config.queue_size,
                          batch_size=config.batch_size, device=config.device)
        pool.start()
        state.update(store=store, pool=pool)
        try:
            yield
        finally:
            pool.stop()
            store.close()

    app = FastAPI(title="emosent", lifespan=lifespan, docs_url=None, redoc_url=None,  # /docs: add_offline_docs
                  description="Emotion and sentiment per utterance of a video: the same analysis as `emosent analyze`.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_offline_docs(app)
    protect(app, host, config.allowed_hosts)

    def authorized(request: Request) -> bool:
        if config.token is None:
            return True
        sent = request.headers.get("authorization", "")
        return hmac.compare_digest(sent.encode(), f"Bearer {config.token}".encode())

    def unauthorized() -> HTTPException:
        return HTTPException(401, "this server needs its API token: send the header 'Authorization: Bearer TOKEN'",
                             headers={"WWW-Authenticate": "Bearer"})

    def require_token(request: Request) -> None:
        if not authorized(request):
            raise unauthorized()

    def known(job_id: str) -> Job:
        job = state["store"].get(job_id) if is_job_id(job_id) else None
        if job is None:
            raise HTTPException(404, f"no analysis {job_id!r} here: it was deleted, or never submitted to this server")
        return job

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", summary="the server answers")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="the model is loaded and the workers run")
    def readyz() -> JSONResponse:
        ready = "pool" in state and state["pool"].alive()
        return JSONResponse({"status": "ready" if ready else "not ready", "model": model_name}, 200 if ready else 503)

    @app.get("/v1/info", summary="the server's limits, and whether it needs a token")
    def info() -> dict:
        return {"model": model_name, "max_upload_mb": config.max_upload_mb, "queue_size": config.queue_size,
                "workers": config.workers, "token_required": config.token is not None,
                "speech_recognition": asr_available,
                "colours": {"emotion": EMOTION_COLOURS, "sentiment": SENTIMENT_COLOURS}}  # as in the PNG timeline

    @app.post("/v1/analyses", status_code=202, openapi_extra=FORM_SCHEMA,
              summary="upload a video (and optionally subtitles or a transcript); answers at once with a job")
    async def submit(request: Request) -> JSONResponse:
        pool: WorkerPool = state["pool"]
        try:
            if not authorized(request):
                raise unauthorized()
            check_form_type(request)
            check_declared_size(request, config.max_bytes)
        except UploadError as err:
            if err.status != 413:  # a too-large body is not read at all
                await drain(request.stream())
            raise HTTPException(err.status, err.detail) from None
        except HTTPException:
            await drain(request.stream())
            raise
        if not pool.reserve():
            await drain(request.stream())
            wait = pool.retry_after_s()
            raise HTTPException(503, f"the queue is full ({config.queue_size} jobs waiting); try again in {wait} s",
                                headers={"Retry-After": str(wait)})
        job_id = new_job_id()
        try:
            upload = await receive_in_time(request, uploads_dir / job_id, config)
            try:
                segments = await run_in_threadpool(check_inputs, upload, model, asr_available)
                state["store"].add(job_id, upload.names["video"], segments)
            except BaseException:
                upload.remove()
                raise
        except UploadError as err:
            pool.release()
            raise HTTPException(err.status, err.detail) from None
        except ClientDisconnect:  # nobody is left to answer; the upload is already removed
            pool.release()
            return Response(status_code=400)
        except BaseException:
            pool.release()
            raise
        pool.submit(job_id)
        return JSONResponse(job_json(state["store"], known(job_id)), 202, headers={"Location": f"/v1/analyses/{job_id}"})

    @app.get("/v1/analyses/{job_id}", dependencies=[Depends(require_token)],
             summary="status (queued, running with progress, done with the result, failed with the reason)")
    def status(job_id: str) -> dict:
        return job_json(state["store"], known(job_id))

    @app.get("/v1/analyses/{job_id}/timeline.png", dependencies=[Depends(require_token)], response_class=FileResponse,
             summary="the timeline of a finished analysis, as `emosent analyze --plot` draws it")
    def timeline(job_id: str) -> FileResponse:
        store: JobStore = state["store"]
        job = known(job_id)
        if job.state != DONE:
            raise HTTPException(409, f"analysis {job_id} is {job.state}: it has a timeline once it is done")
        png = store.timeline_path(job_id)
        with plot_lock:
            if not png.exists():
                timeline_png(json.loads(store.result_path(job_id).read_text()), png)
        if store.get(job_id) is None:  # deleted while drawing: leave nothing behind
            png.unlink(missing_ok=True)
            known(job_id)
        return FileResponse(png, media_type="image/png")

    @app.delete("/v1/analyses/{job_id}", status_code=204, dependencies=[Depends(require_token)],
                summary="forget a job: its result and files; a queued or running job is stopped")
    def delete(job_id: str) -> Response:
        known(job_id)
        state["pool"].cancel(job_id)
        state["store"].delete(job_id)
        return Response(status_code=204)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": "internal server error; see the server's log"}, 500)

    return app


async def receive_in_time(request: Request, folder: Path, config: ServeConfig) -> Upload:
    """`receive` under the upload deadline: a client that sends too slowly (or stalls) would hold
    its queue place for as long as it liked. UploadError 408 when the deadline passes (the partial
    upload removed: `receive` tidies up when cancelled)."""
    try:
        async with asyncio.timeout(config.upload_timeout_s):
            return await receive(request, folder, config.max_bytes)
    except TimeoutError:
        raise UploadError(408, f"the upload took more than {config.upload_timeout_s:g} s (--upload-timeout-s); "
                               "send it again over a faster connection, or send a smaller file") from None


def check_inputs(upload: Upload, model, asr_available: bool) -> str:
    """Refuse, before queueing, a video that is not one and subtitles that do not parse; returns
    where the segments come from, in words."""
    video, name = upload.files["video"], upload.names["video"]
    try:
        info = probe(video)
    except MediaError as err:
        raise UploadError(415, f"video {upload.public(str(err))}; send a video file (mp4, mkv, webm, mov, ...)") from None
    try:  # analyze's own rule: the model says what it can do without (a late fusion's expert abstains)
        model.stream_warnings(name, info.has_video, info.has_audio)
        if "video" in model.modalities:  # refused now rather than as a failed job
            check_frame_size(name, info.width, info.height)
    except MediaError as err:
        raise UploadError(422, f"video {err}: send a file this model can read") from None
    for field in ("subtitles", "transcript"):
        if field in upload.files:
            try:
                read_segments(upload.files[field], [])
            except ValueError as err:  # SegmentsError, or a timestamp the srt package refuses
                raise UploadError(422, f"{field} {upload.public(str(err))}") from None
            return f"{field} {upload.names[field]}"
    if not asr_available:
        raise UploadError(422, "no subtitles or transcript sent, and this server has no speech recognition "
                               f"({ASR_HINT}): send subtitles (.srt/.vtt) or a transcript (.json)")
    return "speech recognition"


def job_json(store: JobStore, job: Job) -> dict:
    """A job as the API shows it; a done job carries `result`, the JSON `emosent analyze` writes."""
    out = {"id": job.id, "status": job.state, "video": job.video, "segments": job.segments,
           "created_at": iso(job.created), "started_at": iso(job.started), "finished_at": iso(job.finished),
           "progress": {"done": job.done, "total": job.total},
           "links": {"self": f"/v1/analyses/{job.id}"}}
    if job.state == FAILED:
        out["error"] = job.error
    if job.state == DONE:
        try:
            out["result"] = json.loads(store.result_path(job.id).read_text(encoding="utf-8"))
        except FileNotFoundError:  # deleted since the row was read
            raise HTTPException(404, f"no analysis {job.id!r} here: it was deleted") from None
        out["links"]["timeline"] = f"/v1/analyses/{job.id}/timeline.png"
    return out


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
