"""Video jobs: a queue run one job at a time in its own thread, each job's state and progress,
its upload in its own folder under the cache, removed when the job ends.

Imports Starlette and the backend's video pipeline and options.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from backend.errors import InputError, OptionError
from backend.media.video import probe_video
from backend.options import check_box, parse_smoothing
from backend.pipeline.photo import Predictor
from backend.pipeline.video import VideoCancelled, VideoOptions, process_video, will_refine

from .forms import parse_hand_options, single_field
from .guard import ApiError

log = logging.getLogger("hamr.server")

MAX_ACTIVE_JOBS = 16  # queued + running; more is 429
# the share of a refined job's time that its track fit takes: 0.71-0.74 on two-hand pan clips of
# 16 and 64 frames, 0.71-0.73 on one-hand ones (OneHand10K 33.jpg; both the frames and the fit
# scale with the hands) (/v1/jobs progress runs over the frames to 1 - FIT_SHARE, then the fit)
FIT_SHARE = 0.7
KEEP_FINISHED_JOBS = 32  # finished jobs (and their results) kept for GET, oldest forgotten first


@dataclass
class Job:
    """One video job; its fields change under `JobManager.lock`."""

    id: str
    path: Path
    options: VideoOptions  # what process_video does with the clip
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
        options: VideoOptions,
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
                job.fits = will_refine(predictor, job.options.refine)
                result = process_video(
                    predictor,
                    job.path,
                    job.options,
                    progress_cb=progress,
                    fit_progress_cb=fit_progress,
                    cancel_event=job.cancel,
                    frame_lock=self.model_lock,
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


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/hamr (default ~/.cache/hamr), created."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hamr"
    root.mkdir(parents=True, exist_ok=True)
    return root


async def submit_job(jobs: JobManager, fields: Mapping[str, list[Any]], max_pixels: float) -> Job:
    """Validate a job request's fields, take its clip (an upload is copied into the job's own
    folder), probe it and queue the job."""
    hand = parse_hand_options(fields)
    options = VideoOptions(
        boxes=hand.boxes or None,
        side=hand.side,
        focal=hand.focal,
        smoothing=parse_smoothing(single_field(fields, "smoothing")),
        detector=hand.detector,
        refine=hand.refine,
    )
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
    path = single_field({"path": [str(v) for v in fields.get("path", [])]}, "path")
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
