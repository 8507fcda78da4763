"""The local HTTP service (`hamr serve`) that Blender talks to: FastAPI on uvicorn.

Endpoints (DESIGN.md "HTTP API"); every error is JSON {"error": {"code", "message"}}:

    GET    /v1/health            200 {"status": "ok", "device", "checkpoint", "hand_model",
                                 "detector", "refine"};
                                 503 {"status": "loading"} until the model is loaded
                                 (503 {"status": "failed", "error"} if loading failed)
    GET    /v1/model?side=       hamr.rig/1 of the hand model in use (backend.rig), cached
    POST   /v1/predict           multipart: image (file), side, box (repeatable or
                                 'x0,y0,x1,y1;...'), focal, detector, refine
                                 -> hamr.prediction/1
    POST   /v1/jobs              multipart video (file), or JSON / form with path (a local file);
                                 options side, box, focal, smoothing, detector, refine
                                 -> 202 {"id"}
    GET    /v1/jobs/{id}         {"id", "state": queued|running|done|failed|cancelled, "progress"
                                 0..1, "stage": frames|fitting, "frames_done", "frames_total",
                                 "fit_done", "fit_total", "error"?}
    GET    /v1/jobs/{id}/result  hamr.video/1 (409 until the job is done)
    DELETE /v1/jobs/{id}         cancels a queued or running job and removes its upload; on a
                                 finished job, forgets it. Returns the job's status.

Statuses: 400 unreadable input (not an image, truncated, too small, empty, undecodable video),
401 missing or wrong token, 404 unknown job or route, 409 result not ready, 413 too large
(upload bytes or pixels), 415 not multipart, 422 bad options (side, box, focal, smoothing,
detector, refine, unknown fields), 429 too many jobs, 503 not ready.

How it runs (STYLE.md, FastAPI/LitServe habits): the model loads once, in a background thread that
the lifespan starts, so health answers at once; request parsing is async, and every blocking step
(decode -> predict) runs in one inference worker thread, so health never waits for the network.
Video jobs run one at a time in a job thread (the rest queue); the network is shared under a lock
that the job takes per frame, so single photos are served between a video's frames. Uploads are
capped while they stream in (`Guard`), spooled to $XDG_CACHE_HOME/hamr (default ~/.cache/hamr) and
removed when their job ends. Loopback by default: `check_bind` refuses another address without a
token, and with a token every endpoint but health needs `Authorization: Bearer <token>`.

Imports FastAPI, Starlette, PIL and the backend; never bpy or the training package.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import io
import ipaddress
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import detect_mediapipe
from backend.cli import (
    OptionError,
    check_box,
    check_side,
    parse_boxes,
    parse_focal,
    parse_smoothing,
)
from backend.detect import check_detector
from backend.inference import (
    REFINE_MODES,
    HandRequest,
    InputError,
    Predictor,
    load_image,
    require_heif_reader,
)
from backend.rig import rig_data
from backend.video import VideoCancelled, probe_video, process_video, will_refine

log = logging.getLogger("hamr.server")

HEALTH_PATH = "/v1/health"
PREDICT_FIELDS = frozenset({"image", "side", "box", "focal", "detector", "refine"})
JOB_FIELDS = frozenset({"video", "path", "side", "box", "focal", "smoothing", "detector", "refine"})
MAX_ACTIVE_JOBS = 16  # queued + running; more is 429
# the share of a refined job's time that its track fit takes: 0.71-0.74 on two-hand pan clips of
# 16 and 64 frames, 0.71-0.73 on one-hand ones (OneHand10K 33.jpg; both the frames and the fit
# scale with the hands) (/v1/jobs progress runs over the frames to 1 - FIT_SHARE, then the fit)
FIT_SHARE = 0.7
KEEP_FINISHED_JOBS = 32  # finished jobs (and their results) kept for GET, oldest forgotten first
T = TypeVar("T")


class ApiError(Exception):
    """An error response: HTTP status, a stable machine-readable code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


# ----------------------------------------------------------------------------- binding, auth
def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse (OptionError) to serve on a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise OptionError(
            f"refusing to serve on {host} without --token: anyone on the network could use it; "
            "pass --token (or set HAMR_TOKEN), or bind 127.0.0.1"
        )


class Guard:
    """Pure ASGI middleware in front of the app: the bearer token (every path but health) and
    the upload cap, checked on Content-Length up front and on the bytes as they stream in."""

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] != HEALTH_PATH:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong token: send 'Authorization: Bearer <token>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await self._too_large(int(length))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ApiError(413, "too_large", self._too_large_message(received))
            return message

        await self.app(scope, counting_receive, send)

    def _too_large_message(self, size: int) -> str:
        return f"upload too large ({size} bytes); the limit is {self.max_body} bytes"

    def _too_large(self, size: int) -> JSONResponse:
        response = error_response(413, "too_large", self._too_large_message(size))
        response.headers["Connection"] = "close"
        return response


# ----------------------------------------------------------------------------- request parsing
async def read_form(request: Request, allowed: frozenset[str]) -> FormData:
    """The multipart (or urlencoded) form of a request; unknown fields are a 422."""
    content_type = request.headers.get("content-type", "")
    if not content_type:
        if request.headers.get("content-length", "0") in ("", "0"):
            raise ApiError(400, "empty_body", "the request has no body; send multipart/form-data")
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(
            415, "unsupported_media_type", f"send multipart/form-data, not {content_type}"
        )
    try:
        form = await request.form(max_files=2, max_fields=32)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away mid-upload") from None
    except (MultiPartException, StarletteHTTPException, ValueError) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
        raise ApiError(400, "bad_multipart", f"malformed form data: {detail}") from exc
    unknown = sorted(set(form.keys()) - allowed)
    if unknown:
        raise ApiError(
            422, "unknown_field", f"unknown field(s) {unknown}; allowed: {sorted(allowed)}"
        )
    return form


@asynccontextmanager
async def form_fields(
    request: Request, allowed: frozenset[str]
) -> AsyncIterator[dict[str, list[Any]]]:
    """{name: [values]} of a request's form (`read_form`); its spooled files are closed on exit."""
    form = await read_form(request, allowed)
    try:
        yield {name: form.getlist(name) for name in form.keys()}
    finally:
        await form.close()


def _text_values(fields: Mapping[str, list[Any]], name: str) -> list[str]:
    values = fields.get(name, [])
    if any(isinstance(v, UploadFile) for v in values):
        raise OptionError(f"{name} must be a text field, not a file")
    return [str(v) for v in values]


def _single(fields: Mapping[str, list[Any]], name: str) -> str | None:
    values = _text_values(fields, name)
    if len(values) > 1:
        raise OptionError(f"give {name} once, got {len(values)} values")
    return values[0] if values else None


def _json_fields(body: Any) -> dict[str, list[Any]]:
    """A JSON job request -> the {name: [values]} shape of a form; boxes as 'x0,y0,x1,y1' text."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the JSON body must be an object")
    fields = {}
    for name, value in body.items():
        if name == "box":
            items = value if isinstance(value, list) else [value]
            if items and all(isinstance(v, int | float) for v in items):
                items = [items]  # one box as a flat list of four numbers
            fields[name] = [",".join(map(str, v)) if isinstance(v, list) else v for v in items]
        else:
            fields[name] = [value]
    return fields


@dataclass(frozen=True)
class HandOptions:
    """Validated options shared by predict and jobs."""

    side: str
    boxes: list[tuple[float, float, float, float]]
    focal: float | None
    detector: str | None = None  # None: the server's --detector
    refine: bool | None = None  # None: the server's --refine


def parse_hand_options(fields: Mapping[str, list[Any]]) -> HandOptions:
    """side / box / focal / detector / refine fields -> HandOptions; raises OptionError (422)."""
    side = check_side(_single(fields, "side") or "auto")
    return HandOptions(
        side,
        parse_boxes(_text_values(fields, "box")),
        parse_focal(_single(fields, "focal")),
        check_detector_option(_single(fields, "detector")),
        check_refine_option(_single(fields, "refine")),
    )


def check_refine_option(refine: str | None) -> bool | None:
    """A request's refine field: None (the server's own setting), "auto" (fit to MediaPipe's
    landmarks where it finds the hand) or "off"."""
    if not refine:
        return None
    if refine not in REFINE_MODES:
        raise OptionError(f"refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
    return refine == "auto"


def check_detector_option(detector: str | None) -> str | None:
    """A request's detector field: None (the server's own setting) or one that can run here."""
    if not detector:
        return None
    try:
        check_detector(detector)
    except InputError as exc:
        raise OptionError(str(exc)) from None
    if detector == "mediapipe" and not detect_mediapipe.available():
        raise OptionError("detector 'mediapipe' is not installed on this server")
    return detector


# ----------------------------------------------------------------------------- decode, predict
def decode_image(data: bytes, max_pixels: float) -> tuple[Any, float | None]:
    """Image bytes -> ((H, W, 3) uint8 RGB, EXIF 35 mm focal or None); raises ApiError 400/413.
    The pixel count is checked from the header, before anything is decoded."""
    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    require_heif_reader(data[:12])
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too_many_pixels", f"image too large: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(400, "bad_image", f"cannot read the image: {exc}") from exc
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"image too large ({width}x{height} pixels); the limit is {max_pixels:.0f} pixels",
        )
    try:
        return load_image(data)
    except InputError as exc:
        raise ApiError(400, "bad_image", str(exc)) from exc


def predict_image(
    predictor: Predictor, lock: threading.Lock, data: bytes, options: HandOptions, max_pixels: float
) -> dict[str, Any]:
    """decode -> check boxes -> predict (blocking: run it in the inference worker)."""
    image, exif_f35 = decode_image(data, max_pixels)
    height, width = image.shape[:2]
    for box in options.boxes:
        check_box(box, width, height)
    hands = [HandRequest(box, options.side) for box in options.boxes] or None
    with lock:
        return predictor.predict(
            image,
            hands,
            focal=options.focal,
            exif_f35_mm=exif_f35,
            side=options.side,
            detector=options.detector,
            refine=options.refine,
        )


def encode_upright_png(data: bytes, max_pixels: float) -> bytes:
    """Image bytes -> PNG bytes of the image `decode_image` gives (blocking)."""
    image, _ = decode_image(data, max_pixels)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=1)
    return out.getvalue()


# ----------------------------------------------------------------------------- video jobs
@dataclass
class Job:
    """One video job; its fields change under `JobManager.lock`."""

    id: str
    path: Path
    options: dict[str, Any]  # process_video keyword arguments
    upload_dir: Path | None  # the job's own upload folder, removed when the job ends
    state: str = "queued"
    frames_done: int = 0
    frames_total: int = 0
    fits: bool = False  # the job will fit its tracks to landmarks (refine on, MediaPipe there)
    fit_done: int = 0  # frames fitted ...
    fit_total: int = 0  # ... of the frames to fit (0 until the fit starts)
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished_at: float | None = None

    def status(self) -> dict[str, Any]:
        frames = min(self.frames_done / self.frames_total, 1.0) if self.frames_total else 0.0
        fit = min(self.fit_done / self.fit_total, 1.0) if self.fit_total else 0.0
        if self.state == "done":
            progress = 1.0
        elif self.fits:  # the fit is the job's second part (FIT_SHARE of its time)
            progress = (1.0 - FIT_SHARE) * frames + FIT_SHARE * fit
        else:
            progress = frames
        out = {
            "id": self.id,
            "state": self.state,
            "progress": round(progress, 4),
            # "fitting" once refine's track fit has begun (it reports its total first)
            "stage": "fitting" if self.fit_total else "frames",
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "fit_done": self.fit_done,
            "fit_total": self.fit_total,
        }
        if self.error:
            out["error"] = self.error
        return out


class JobManager:
    """Queues video jobs and runs them one at a time in its own thread."""

    def __init__(
        self, get_predictor: Callable[[], Predictor], model_lock: threading.Lock, upload_root: Path
    ) -> None:
        self.get_predictor = get_predictor
        self.model_lock = model_lock
        self.upload_root = upload_root
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="hamr-jobs", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                job.cancel.set()
        self.queue.put(None)
        self.thread.join(timeout=10)
        shutil.rmtree(self.upload_root, ignore_errors=True)

    def submit(
        self,
        job_id: str,
        path: Path,
        options: dict[str, Any],
        upload_dir: Path | None,
        frames_total: int,
    ) -> Job:
        with self.lock:
            active = sum(j.state in ("queued", "running") for j in self.jobs.values())
            if active >= MAX_ACTIVE_JOBS:
                raise ApiError(429, "too_many_jobs", f"{active} jobs are waiting; try later")
            job = Job(job_id, path, options, upload_dir, frames_total=frames_total)
            self.jobs[job_id] = job
            self._forget_old()
        self.queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (the status says cancelled at once; a running one
        stops after its current frame), or forget a finished one."""
        job = self.get(job_id)
        with self.lock:
            if job.state in ("queued", "running"):
                was_queued = job.state == "queued"
                job.cancel.set()
                job.state, job.finished_at = "cancelled", time.time()
                if was_queued:  # never started: nothing holds its file
                    self._remove_upload(job)
            else:
                self.jobs.pop(job_id, None)
            return job.status()

    def _forget_old(self) -> None:
        finished = sorted(
            (j for j in self.jobs.values() if j.finished_at is not None),
            key=lambda j: j.finished_at or 0.0,
        )
        for job in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            self.jobs.pop(job.id, None)

    @staticmethod
    def _remove_upload(job: Job) -> None:
        if job.upload_dir is not None:
            shutil.rmtree(job.upload_dir, ignore_errors=True)

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            with self.lock:
                if job.state != "queued":
                    continue
                job.state = "running"

            def progress(done: int, total: int, job: Job = job) -> None:
                job.frames_done, job.frames_total = done, total

            def fit_progress(done: int, total: int, job: Job = job) -> None:
                job.fit_done, job.fit_total = done, total

            state, result, error = "done", None, None
            try:
                predictor = self.get_predictor()
                job.fits = will_refine(predictor, job.options.get("refine"))
                result = process_video(
                    predictor,
                    job.path,
                    progress_cb=progress,
                    fit_progress_cb=fit_progress,
                    cancel_event=job.cancel,
                    frame_lock=self.model_lock,
                    **job.options,
                )
            except VideoCancelled:
                state = "cancelled"
            except InputError as exc:
                state, error = "failed", {"code": "bad_video", "message": str(exc)}
            except OptionError as exc:
                state, error = "failed", {"code": "bad_option", "message": str(exc)}
            except Exception as exc:  # keep the job thread alive whatever the clip does
                log.exception("video job %s failed", job.id)
                state, error = "failed", {"code": "internal", "message": repr(exc)}
            finally:
                self._remove_upload(job)
            with self.lock:
                if job.state == "running":  # a DELETE may have marked it cancelled already
                    job.state, job.result, job.error = state, result, error
                    job.finished_at = time.time()


# ----------------------------------------------------------------------------- server state
def cache_dir() -> Path:
    """$XDG_CACHE_HOME/hamr (default ~/.cache/hamr), created."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hamr"
    root.mkdir(parents=True, exist_ok=True)
    return root


class ServerState:
    """The loaded model (or why it is not), the inference worker and the job manager."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None,
        device: str,
        mano_dir: str | os.PathLike | None,
        detector: str = "auto",
        refine: str = "auto",
    ) -> None:
        self.checkpoint, self.device, self.mano_dir = checkpoint, device, mano_dir
        self.detector, self.refine = detector, refine
        self.predictor: Predictor | None = None
        self.load_error: str | None = None
        self.model_lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hamr-infer")
        self.rig_cache: dict[str, bytes] = {}
        self.jobs: JobManager | None = None  # created by the lifespan

    @property
    def job_manager(self) -> JobManager:
        if self.jobs is None:
            raise ApiError(503, "not_started", "the server is starting or stopping")
        return self.jobs

    def load(self) -> None:
        """Load the model (runs in a background thread started by the lifespan)."""
        try:
            started = time.perf_counter()
            self.predictor = Predictor(
                self.checkpoint,
                self.device,
                mano_dir=self.mano_dir,
                detector=self.detector,
                refine=self.refine,
            )
            log.info(
                "model %s loaded on %s in %.1f s",
                self.predictor.checkpoint.name,
                self.device,
                time.perf_counter() - started,
            )
        except Exception as exc:  # reported by /v1/health, never a dead server
            log.exception("loading the model failed")
            self.load_error = str(exc)

    def ready(self) -> Predictor:
        if self.predictor is not None:
            return self.predictor
        if self.load_error is not None:
            raise ApiError(503, "model_load_failed", f"the model failed to load: {self.load_error}")
        raise ApiError(
            503,
            "loading",
            "the model is still loading; retry when /v1/health says ok",
            {"Retry-After": "1"},
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work in the single inference worker."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    def rig_json(self, side: str) -> bytes:
        if side not in self.rig_cache:
            predictor = self.ready()
            source = predictor.model.config.hand_model
            self.rig_cache[side] = json.dumps(rig_data(side, source, self.mano_dir)).encode()
        return self.rig_cache[side]


# ----------------------------------------------------------------------------- the app
def create_app(
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    token: str | None = None,
    max_upload_mb: float = 50,
    max_pixels: float = 40e6,
    mano_dir: str | os.PathLike | None = None,
    detector: str = "auto",
    refine: str = "auto",
) -> FastAPI:
    """The FastAPI app. checkpoint: None for $HAMR_CHECKPOINT or the shipped one; token: require
    it as a bearer token on every endpoint but health; max_upload_mb: largest request body;
    max_pixels: largest image or video frame (width x height); detector: what finds hands when a
    request gives no box (`backend.detect.DETECTORS`), unless the request's own field says;
    refine: "auto" fits predicted hands (photos and video tracks) to MediaPipe's landmarks where
    it finds them, or "off"; a request's own refine field overrides it."""
    state = ServerState(checkpoint, device, mano_dir, detector, refine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upload_root = Path(tempfile.mkdtemp(prefix="uploads-", dir=cache_dir()))
        state.jobs = JobManager(state.ready, state.model_lock, upload_root)
        state.jobs.start()
        threading.Thread(target=state.load, name="hamr-load", daemon=True).start()
        yield
        state.jobs.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="HAMR backend", version="1", lifespan=lifespan)
    app.state.hamr = state
    app.add_middleware(Guard, token=token, max_body_bytes=int(max_upload_mb * 1024 * 1024))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(OptionError)
    async def _option_error(request: Request, exc: OptionError) -> JSONResponse:
        return error_response(422, "bad_option", str(exc))

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(400, "bad_input", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "bad_option", str(exc.errors()))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal", repr(exc))

    @app.get(HEALTH_PATH)
    async def health() -> JSONResponse:
        predictor = state.predictor
        if predictor is None:
            if state.load_error is not None:
                error = {"code": "model_load_failed", "message": state.load_error}
                return JSONResponse({"status": "failed", "error": error}, status_code=503)
            return JSONResponse(
                {"status": "loading"}, status_code=503, headers={"Retry-After": "1"}
            )
        return JSONResponse(
            {
                "status": "ok",
                "device": str(predictor.device),
                "checkpoint": predictor.checkpoint.name,
                "hand_model": predictor.hand_model_id,
                "detector": predictor.detector,
                "refine": predictor.refine,
            }
        )

    @app.get("/v1/model")
    async def model(side: str = "right") -> Response:
        if side not in ("right", "left"):
            raise OptionError(f"side must be right or left, got {side!r}")
        state.ready()
        body = await state.run(state.rig_json, side)
        return Response(body, media_type="application/json")

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        predictor = state.ready()
        async with form_fields(request, PREDICT_FIELDS) as fields:
            options = parse_hand_options(fields)
            uploads = fields.get("image", [])
            if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
                raise ApiError(
                    400, "missing_image", "send one image file in the multipart field 'image'"
                )
            data = await uploads[0].read()
        result = await state.run(
            predict_image, predictor, state.model_lock, data, options, max_pixels
        )
        return JSONResponse(result)

    @app.post("/v1/image")
    async def upright_image(request: Request) -> Response:
        """The uploaded photo as the backend reads it for /v1/predict (decoded, turned upright
        by its EXIF orientation, RGB) as a PNG: for a client that cannot decode the photo
        itself (Blender and HEIC) or does not turn it. Needs no model."""
        async with form_fields(request, frozenset({"image"})) as fields:
            uploads = fields.get("image", [])
            if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
                raise ApiError(
                    400, "missing_image", "send one image file in the multipart field 'image'"
                )
            data = await uploads[0].read()
        body = await state.run(encode_upright_png, data, max_pixels)
        return Response(body, media_type="image/png")

    @app.post("/v1/jobs")
    async def create_job(request: Request) -> JSONResponse:
        state.ready()
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                fields = _json_fields(await request.json())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from exc
            unknown = sorted(set(fields) - JOB_FIELDS)
            if unknown:
                raise ApiError(422, "unknown_field", f"unknown field(s) {unknown}")
            job = await submit_job(state.job_manager, fields, max_pixels)
        else:
            async with form_fields(request, JOB_FIELDS) as fields:
                job = await submit_job(state.job_manager, fields, max_pixels)
        return JSONResponse({"id": job.id}, status_code=202)

    @app.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str) -> JSONResponse:
        return JSONResponse(state.job_manager.get(job_id).status())

    @app.get("/v1/jobs/{job_id}/result")
    async def job_result(job_id: str) -> JSONResponse:
        job = state.job_manager.get(job_id)
        if job.state != "done" or job.result is None:
            raise ApiError(409, "not_done", f"job {job_id} is {job.state}, not done")
        return JSONResponse(job.result)

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(job_id: str) -> JSONResponse:
        return JSONResponse(state.job_manager.cancel(job_id))

    return app


async def submit_job(jobs: JobManager, fields: Mapping[str, list[Any]], max_pixels: float) -> Job:
    """Validate a job request's fields, take its clip (an upload is copied into the job's own
    folder), probe it and queue the job."""
    hand = parse_hand_options(fields)
    options = {
        "boxes": hand.boxes or None,
        "side": hand.side,
        "focal": hand.focal,
        "smoothing": parse_smoothing(_single(fields, "smoothing")),
        "detector": hand.detector,
        "refine": hand.refine,
    }
    job_id = uuid.uuid4().hex
    upload_dir = jobs.upload_root / job_id  # created only for an uploaded clip
    try:
        path = await _job_video(fields, upload_dir)
        try:
            info = await run_in_threadpool(probe_video, path)
        except InputError as exc:
            raise ApiError(400, "bad_video", str(exc)) from exc
        if info.width * info.height > max_pixels:
            raise ApiError(
                413,
                "too_many_pixels",
                f"video frames too large ({info.width}x{info.height}); the limit is "
                f"{max_pixels:.0f} pixels",
            )
        for box in hand.boxes:
            check_box(box, info.width, info.height)
        owned = upload_dir if upload_dir.exists() else None
        return jobs.submit(job_id, path, options, owned, info.frame_count)
    except BaseException:
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise


async def _job_video(fields: Mapping[str, list[Any]], upload_dir: Path) -> Path:
    """The clip of a job request: `path`, or the uploaded `video` copied into `upload_dir`
    (created here)."""
    uploads = fields.get("video", [])
    path = _single({"path": [str(v) for v in fields.get("path", [])]}, "path")
    if uploads and path:
        raise OptionError("give either a video upload or a path, not both")
    if path:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise ApiError(400, "video_not_found", f"no such video file: {path}")
        return resolved
    if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
        raise ApiError(400, "missing_video", "send one video file in the field 'video' or a path")
    upload = uploads[0]
    suffix = Path(upload.filename or "").suffix.lower()
    target = upload_dir / ("video" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""))
    upload_dir.mkdir(parents=True)
    await run_in_threadpool(_copy_upload, upload, target)
    return target


def _copy_upload(upload: UploadFile, target: Path) -> None:
    upload.file.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
