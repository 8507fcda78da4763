"""Video jobs: a queue run one job at a time in its own thread, each job's state and progress,
its upload in its own folder under the cache, removed when the job ends.

A job's clip is an upload or a `path` on the server's machine, only under the folders the server
was started with (`--allow-path`, `PathPolicy`); any path there that is not a readable clip gets
one answer, so the service tells no one which files exist.

Jobs outlive a killed server as records: each queued or running job has a small JSON file in the
cache's `jobs/` folder, removed when it ends. A server that starts finds the records of servers
that are gone (by their process id) and reports those jobs as failed (`server_stopped`), and it
removes the upload folders such servers left behind (`sweep_stale`).

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
from collections.abc import Callable, Iterable, Mapping
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
from .storage import JobRecords, all_finite

log = logging.getLogger("hamr.server")

MAX_ACTIVE_JOBS = 16  # queued + running; more is 429 with Retry-After
RETRY_AFTER_S = 5  # what a refused job's Retry-After says
MAX_PATH_CHARS = 4096  # a job's path, as text
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
        self,
        get_predictor: Callable[[], Predictor],
        model_lock: threading.Lock,
        upload_root: Path,
        records: JobRecords | None = None,
    ) -> None:
        self.get_predictor = get_predictor
        self.model_lock = model_lock
        self.upload_root = upload_root
        self.records = records or JobRecords(None)
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="hamr-jobs", daemon=True)

    def start(self) -> None:
        """Report the jobs of servers that died as failed, then start the job thread."""
        now = time.time()
        with self.lock:
            for job_id, state in self.records.orphans():
                message = (
                    f"the server stopped while the job was {state} (it was killed or crashed); "
                    "submit it again"
                )
                self.jobs[job_id] = Job(
                    job_id,
                    Path(),
                    VideoOptions(),
                    None,
                    state="failed",
                    error={"code": "server_stopped", "message": message},
                    finished_at=now,
                )
            self._forget_old()
        self.thread.start()

    def stop(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                job.cancel.set()
        self.queue.put(None)
        self.thread.join(timeout=10)
        shutil.rmtree(self.upload_root, ignore_errors=True)
        with self.lock:  # a clean stop: its unfinished jobs were cancelled, not lost
            for job in self.jobs.values():
                self.records.remove(job.id)

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
                raise ApiError(
                    429,
                    "too_many_jobs",
                    f"{active} jobs are waiting; try later",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            job = Job(job_id, path, options, upload_dir, frames_total=frames_total)
            self.jobs[job_id] = job
            self._forget_old()
        self.records.write(job_id)
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
                    self.records.remove(job.id)
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
            self.records.write(job.id, "running")

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
            except Exception:  # keep the job thread alive whatever the clip does
                log.exception("video job %s failed", job.id)
                message = f"the job failed inside the server (see its log, job {job.id})"
                state, error = "failed", {"code": "internal", "message": message}
            finally:
                self._remove_upload(job)
            if result is not None and not all_finite(result):
                log.error("video job %s: its result has NaN or infinite numbers", job.id)
                state, result = "failed", None
                error = {
                    "code": "non_finite",
                    "message": "the result has numbers out of range (NaN or infinite); "
                    "check the job's focal length and boxes",
                }
            with self.lock:
                if job.state == "running":  # a DELETE may have marked it cancelled already
                    job.state, job.result, job.error = state, result, error
                    job.finished_at = time.time()
            self.records.remove(job.id)


class PathPolicy:
    """Which local files a job may name by `path`: those under the folders the server was started
    with (`--allow-path`, symbolic links resolved first, so a link cannot lead out). Nothing is
    allowed without such folders: clients then upload the clip."""

    def __init__(self, folders: Iterable[str | os.PathLike]) -> None:
        self.folders = [Path(os.path.realpath(os.path.expanduser(f))) for f in folders]

    def resolve(self, text: str) -> Path:
        """The file a job's `path` names. 403 `path_not_allowed` for a path outside the allowed
        folders (decided from the text alone: the answer is the same whether it exists); 400
        `bad_video`, one message, for anything there that is not a readable regular file."""
        if not self.folders:
            raise ApiError(
                403,
                "path_not_allowed",
                "this server reads no local paths (start it with --allow-path DIR); upload the "
                "video instead",
            )
        path = None
        if len(text) <= MAX_PATH_CHARS and "\0" not in text and os.path.isabs(text):
            try:
                path = Path(os.path.realpath(text))
            except (OSError, ValueError):
                path = None
        if path is None or not any(path.is_relative_to(f) for f in self.folders):
            raise ApiError(
                403,
                "path_not_allowed",
                "path must be an absolute path under a folder this server was started with "
                "(--allow-path); upload the video instead",
            )
        try:
            readable = path.is_file() and os.access(path, os.R_OK)
        except (OSError, ValueError):
            readable = False
        if not readable:
            raise cannot_read_video()
        return path


def cannot_read_video() -> ApiError:
    return ApiError(400, "bad_video", "cannot read this video")


async def submit_job(
    jobs: JobManager, fields: Mapping[str, list[Any]], max_pixels: float, paths: PathPolicy
) -> Job:
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
        path, by_path = await _job_video(fields, upload_dir, paths)
        try:
            info = await run_in_threadpool(probe_video, path)
        except Exception as exc:  # InputError, or OpenCV's own failure on a hostile file
            if by_path:  # one answer for every unreadable local file
                raise cannot_read_video() from exc
            if isinstance(exc, InputError):
                raise ApiError(400, "bad_video", str(exc)) from exc
            log.info("probing an uploaded video: %r", exc)
            raise ApiError(400, "bad_video", "cannot decode the video") from exc
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


async def _job_video(
    fields: Mapping[str, list[Any]], upload_dir: Path, paths: PathPolicy
) -> tuple[Path, bool]:
    """(the clip of a job request, whether it came by path): `path` (`PathPolicy`), or the
    uploaded `video` copied into `upload_dir` (created here)."""
    uploads = fields.get("video", [])
    path = single_field({"path": [str(v) for v in fields.get("path", [])]}, "path")
    if uploads and path:
        raise OptionError("give either a video upload or a path, not both")
    if path:
        return await run_in_threadpool(paths.resolve, path), True
    if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
        raise ApiError(400, "missing_video", "send one video file in the field 'video' or a path")
    upload = uploads[0]
    suffix = Path(upload.filename or "").suffix.lower()
    target = upload_dir / ("video" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""))
    upload_dir.mkdir(parents=True)
    await run_in_threadpool(_copy_upload, upload, target)
    return target, False


def _copy_upload(upload: UploadFile, target: Path) -> None:
    upload.file.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
