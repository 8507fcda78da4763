"""The local HTTP service (`hamr serve`) that Blender talks to: FastAPI on uvicorn.

Endpoints (DESIGN.md "HTTP API"); every error is JSON {"error": {"code", "message"}}:

    GET    /v1/health            200 {"status": "ok", "version", "device", "checkpoint",
                                 "hand_model", "detector", "refine"};
                                 503 {"status": "loading"} until the model is loaded
                                 (503 {"status": "failed", "error"} if loading failed)
    GET    /v1/model?side=       hamr.rig/1 of the hand model in use (backend.schema), cached
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

    GET    /openapi.json         the API with its request bodies (`openapi`)

Statuses: 400 unreadable input (not an image, truncated, too small, empty, undecodable video),
401 missing or wrong token, 403 an Origin not allowed or a path outside --allow-path, 404
unknown job or route, 408 a stalled request, 409 result not ready, 413 too large (upload bytes
or pixels), 415 not multipart, 421 a Host that names another server, 422 bad options (side, box,
focal, smoothing, detector, refine, unknown fields, more than MAX_BOXES boxes, a result out of
float range), 429 too many jobs, 503 not ready or busy (with Retry-After). Never 500 for an
input: an unexpected failure is logged with a request id, and the answer gives only that id.

How it runs (STYLE.md, FastAPI/LitServe habits): the model loads once, in a background thread that
the lifespan starts, so health answers at once; request parsing is async, and every blocking step
(decode -> predict) runs in one inference worker thread, so health never waits for the network.
Video jobs run one at a time in a job thread (the rest queue); the network is shared under a lock
that the job takes per frame, so single photos are served between a video's frames. Uploads are
capped while they stream in (`Guard`), spooled to $XDG_CACHE_HOME/hamr (default ~/.cache/hamr) and
removed when their job ends. Loopback by default: `check_bind` refuses another address without a
token, and with a token every endpoint but health needs `Authorization: Bearer <token>`.

Bounded work: at most MAX_BOXES boxes per request, at most MAX_PENDING_INFERENCE photo requests
waiting for the worker (more: 503 busy), a request whose client has gone is dropped before its
turn comes, photos over PREDICT_MAX_PIXELS are predicted at a reduced size and mapped back.

Imports FastAPI, Starlette and the backend's pipelines; never bpy or the training package.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend import __version__
from backend.errors import InputError, OptionError
from backend.pipeline.photo import Predictor
from backend.schema import rig_json

from . import openapi
from .forms import (
    JOB_FIELDS,
    PREDICT_FIELDS,
    form_fields,
    json_fields,
    parse_hand_options,
)
from .guard import HEALTH_PATH, ApiError, Guard, error_response
from .jobs import JobManager, PathPolicy, submit_job
from .photos import encode_upright_png, predict_image
from .storage import JobRecords, cache_dir, sweep_stale, upload_root_for

log = logging.getLogger("hamr.server")
T = TypeVar("T")


MAX_PENDING_INFERENCE = 16  # photo requests in or waiting for the worker; more is 503 busy
MAX_JSON_BYTES = 64 * 1024  # a JSON job request


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
        self.pending = 0  # calls in or waiting for the inference worker

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
                frozen=True,  # a long-running server: the traced network pays for its load
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
        """Run blocking work in the single inference worker; 503 `busy` (Retry-After) when
        MAX_PENDING_INFERENCE calls are in it or waiting for it already."""
        if self.pending >= MAX_PENDING_INFERENCE:
            raise ApiError(
                503,
                "busy",
                f"{self.pending} requests are waiting for the model; retry shortly",
                {"Retry-After": "2"},
            )
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args))
        finally:
            self.pending -= 1

    def rig_json(self, side: str) -> bytes:
        if side not in self.rig_cache:
            predictor = self.ready()
            source = predictor.model.config.hand_model
            self.rig_cache[side] = json.dumps(rig_json(side, source, self.mano_dir)).encode()
        return self.rig_cache[side]


def create_app(
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    token: str | None = None,
    max_upload_mb: float = 50,
    max_pixels: float = 40e6,
    mano_dir: str | os.PathLike | None = None,
    detector: str = "auto",
    refine: str = "auto",
    allow_paths: Iterable[str | os.PathLike] = (),
    allow_origins: Iterable[str] = (),
    allow_hosts: Iterable[str] = (),
) -> FastAPI:
    """The FastAPI app. checkpoint: None for $HAMR_CHECKPOINT or the shipped one; token: require
    it as a bearer token on every endpoint but health; max_upload_mb: largest request body;
    max_pixels: largest image or video frame (width x height); detector: what finds hands when a
    request gives no box (`backend.detect.DETECTORS`), unless the request's own field says;
    refine: "auto" fits predicted hands (photos and video tracks) to MediaPipe's landmarks where
    it finds them, or "off"; a request's own refine field overrides it. allow_paths: folders
    whose files a job may name by `path` (none: uploads only); allow_origins: web origins
    (scheme://host[:port]) whose pages may call the API (none by default); allow_hosts: host
    names, besides localhost and IP addresses, that requests may be addressed to."""
    state = ServerState(checkpoint, device, mano_dir, detector, refine)
    paths = PathPolicy(allow_paths)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        root = cache_dir()
        for folder in sweep_stale(root):
            log.info("removed %s, left behind by a server that is gone", folder)
        upload_root = upload_root_for(root)
        records = JobRecords(root / "jobs")
        state.jobs = JobManager(state.ready, state.model_lock, upload_root, records)
        state.jobs.start()
        threading.Thread(target=state.load, name="hamr-load", daemon=True).start()
        yield
        state.jobs.stop()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="HAMR backend",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # the pages load scripts from the web; the description is /openapi.json
        redoc_url=None,
    )
    app.state.hamr = state
    app.add_middleware(
        Guard,
        token=token,
        max_body_bytes=int(max_upload_mb * 1024 * 1024),
        allow_origins=allow_origins,
        allow_hosts=allow_hosts,
    )

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
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return error_response(422, "bad_option", problems or "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.error(
            "request %s: unhandled error on %s %s",
            request_id,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return error_response(
            500,
            "internal",
            f"the server failed on this request (request id {request_id}; its log has the details)",
        )

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
                "version": __version__,
                "device": str(predictor.device),
                "checkpoint": predictor.checkpoint.name,
                "hand_model": predictor.hand_model_id,
                "detector": predictor.detector,
                "refine": predictor.refine,
            }
        )

    @app.get("/v1/model", openapi_extra=openapi.MODEL)
    async def model(side: str = "right") -> Response:
        if side not in ("right", "left"):
            raise OptionError(f"side must be right or left, got {side!r}")
        state.ready()
        body = await state.run(state.rig_json, side)
        return Response(body, media_type="application/json")

    @app.post("/v1/predict", openapi_extra=openapi.PREDICT)
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
        cancelled = threading.Event()
        watcher = asyncio.create_task(watch_disconnect(request, cancelled))
        timing: dict[str, float] = {}
        try:
            result = await state.run(
                predict_image,
                predictor,
                state.model_lock,
                data,
                options,
                max_pixels,
                cancelled,
                timing,
            )
        finally:
            watcher.cancel()
        # the Guard adds the request's total; total - decode - predict is the server's own time
        spans = ", ".join(f"{name};dur={ms:.2f}" for name, ms in timing.items())
        return JSONResponse(result, headers={"Server-Timing": spans})

    @app.post("/v1/image", openapi_extra=openapi.IMAGE)
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

    @app.post("/v1/jobs", status_code=202, openapi_extra=openapi.JOBS)
    async def create_job(request: Request) -> JSONResponse:
        state.ready()
        if request.headers.get("content-type", "").startswith("application/json"):
            fields = json_fields(await read_json(request))
            unknown = sorted(set(fields) - JOB_FIELDS)
            if unknown:
                raise ApiError(422, "unknown_field", f"unknown field(s) {unknown}")
            job = await submit_job(state.job_manager, fields, max_pixels, paths)
        else:
            async with form_fields(request, JOB_FIELDS) as fields:
                job = await submit_job(state.job_manager, fields, max_pixels, paths)
        return JSONResponse({"id": job.id}, status_code=202)

    @app.get("/v1/jobs/{job_id}", openapi_extra=openapi.JOB_ID)
    async def job_status(job_id: str) -> JSONResponse:
        return JSONResponse(state.job_manager.get(job_id).status())

    @app.get("/v1/jobs/{job_id}/result", openapi_extra=openapi.JOB_RESULT)
    async def job_result(job_id: str) -> JSONResponse:
        job = state.job_manager.get(job_id)
        if job.state != "done" or job.result is None:
            raise ApiError(409, "not_done", f"job {job_id} is {job.state}, not done")
        return JSONResponse(job.result)

    @app.delete("/v1/jobs/{job_id}", openapi_extra=openapi.JOB_ID)
    async def cancel_job(job_id: str) -> JSONResponse:
        return JSONResponse(state.job_manager.cancel(job_id))

    return app


async def read_json(request: Request) -> Any:
    """A request's JSON body (at most MAX_JSON_BYTES); 400 `bad_json` for anything that is not
    JSON, nested too deep included."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ApiError(413, "too_large", f"a JSON body is at most {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "bad_json", "the body is not valid JSON: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, too many digits
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None


async def watch_disconnect(request: Request, cancelled: threading.Event) -> None:
    """Set `cancelled` when the client of a request (its body already read) goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancelled.set()
            return
