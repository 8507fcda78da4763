"""The import use cases, without operators: a photo's prediction fetched and built into the
scene (`import_image`), the rigs fetched and cached (`fetch_rigs`), the preferences read
(`settings`). The operators (`operators`) and the headless command (`headless`) both call
these, so `hamr blend` builds exactly what the panel builds.

Errors are one of DOMAIN_ERRORS and leave nothing behind. Imports bpy.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import socket
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass

import bpy

from ..io import backend_process, orientation
from ..io.client import DEFAULT_URL, BackendError, HamrClient, VideoJob, is_loopback
from ..io.payload import (
    PREDICTION_SCHEMA,
    VIDEO_SCHEMA,
    PayloadError,
    RigData,
    parse_prediction,
    parse_rig,
    parse_video,
)
from . import ADDON, scene
from .rig import NewData, RigOptions, find_hand_armature

# Errors an import can meet for reasons outside the extension's control (backend, payload,
# files, Blender refusing data): reported to the user. BackendError, PayloadError, RigBuildError
# and SceneBuildError are RuntimeError / ValueError subclasses; bpy raises RuntimeError.
DOMAIN_ERRORS = (RuntimeError, ValueError, OSError)


@dataclass
class Settings:
    """The preferences the operators need (defaults when the extension is not registered as an
    add-on, e.g. when `hamr blend` imports these modules directly)."""

    url: str = DEFAULT_URL
    token: str = ""
    command: str = backend_process.DEFAULT_COMMAND
    python: str = ""
    checkpoint: str = ""
    start_timeout: float = backend_process.DEFAULT_START_TIMEOUT_S


def settings(context: bpy.types.Context) -> Settings:
    addon = context.preferences.addons.get(ADDON)
    prefs = getattr(addon, "preferences", None)
    if prefs is None:
        return Settings()
    return Settings(
        url=prefs.backend_url,
        token=prefs.token,
        command=prefs.start_command,
        python=prefs.python_path,
        checkpoint=prefs.checkpoint,
        start_timeout=prefs.start_timeout,
    )


def require_online_access(url: str) -> None:
    """Blender's "Allow Online Access" (Preferences > System > Network, off with
    --offline-mode) covers every connection an extension makes beyond this machine: a backend
    URL that is not loopback is refused while it is off (ValueError, a message for the user)."""
    if not is_loopback(url) and not bpy.app.online_access:
        raise ValueError(
            f"the backend URL {url} is not on this machine and Blender's online access is off: "
            "allow it in Preferences > System > Network, or use a backend at 127.0.0.1"
        )


def client_for(context: bpy.types.Context, timeout: float = 30.0) -> HamrClient:
    """A client for the preferences' backend; ValueError for a bad URL or one that Blender's
    online access setting forbids (`require_online_access`)."""
    s = settings(context)
    client = HamrClient(s.url, s.token, timeout=timeout)
    require_online_access(client.url)
    return client


def user_dir() -> str:
    """The extension's user folder (logs); a temporary folder outside an installed extension."""
    try:
        return bpy.utils.extension_path_user(ADDON, create=True)
    except (ValueError, AttributeError, KeyError):
        path = os.path.join(tempfile.gettempdir(), "hamr_blender")
        os.makedirs(path, exist_ok=True)
        return path


# Rig data fetched from a backend, per (url, side); reused while the hand model id matches.
_RIG_CACHE: dict[tuple[str, str], RigData] = {}


def fetch_rigs(client: HamrClient, sides: set[str], hand_model: str = "") -> dict[str, RigData]:
    """Rig data of each side, from the cache when the hand model id matches."""
    out = {}
    for side in sorted(sides):
        cached = _RIG_CACHE.get((client.url, side))
        if cached is None or (hand_model and cached.hand_model != hand_model):
            cached = parse_rig(client.model(side))
            if hand_model and cached.hand_model and cached.hand_model != hand_model:
                raise PayloadError(
                    f"the backend's hand model ({cached.hand_model}) is not the one of the "
                    f"prediction ({hand_model}); was the backend restarted with another model?"
                )
            _RIG_CACHE[(client.url, side)] = cached
        out[side] = cached
    return out


take_options = scene.take_options


def rig_options(op) -> RigOptions:
    """The rig options an operator (or `headless.BlendOptions`) carries."""
    return RigOptions(name="HAMR Hand", shape_keys=op.shape_keys, correctives=op.correctives)


def _image_upload(
    context, filepath: str, image_name: str
) -> tuple[str | bytes, str, scene.ImageSource]:
    """What to send for the chosen photo: (path or encoded bytes, file name, source record).
    The record keeps the file's EXIF orientation: the backend turns the photo upright, Blender
    shows it as stored."""
    if image_name:
        image = bpy.data.images.get(image_name)
        if image is None:
            raise ValueError(f"there is no image named {image_name!r} in this file")
        path = bpy.path.abspath(image.filepath, library=image.library) if image.filepath else ""
        source = scene.ImageSource("image", path if os.path.isfile(path) else "", image.name)
        if image.packed_file is not None:
            ext = os.path.splitext(image.filepath)[1] or ".png"
            data = bytes(image.packed_file.data)
            source.orientation = orientation.exif_orientation(data)
            return data, image.name + ext, source
        if path and os.path.isfile(path):
            source.orientation = orientation.file_orientation(path)
            return path, os.path.basename(path), source
        if image.size[0] == 0 or not image.has_data:
            raise ValueError(f"the image {image.name!r} has no pixels to send")
        # generated or rendered pixels: encode a PNG copy (through a temporary file)
        with tempfile.TemporaryDirectory(prefix="hamr-") as folder:
            tmp = os.path.join(folder, "image.png")
            copy = image.copy()
            try:
                copy.filepath_raw = tmp
                copy.file_format = "PNG"
                copy.save()
            finally:
                bpy.data.images.remove(copy)
            with open(tmp, "rb") as fh:
                data = fh.read()
        return data, image.name + ".png", source
    if not filepath:
        raise ValueError("choose an image file or an image already in Blender")
    path = bpy.path.abspath(filepath)
    if not os.path.isfile(path):
        raise ValueError(f"image file not found: {path}")
    source = scene.ImageSource("image", path, "", orientation.file_orientation(path))
    return path, os.path.basename(path), source


@dataclass
class PhotoRequest:
    """A photo import's request, made on Blender's thread (`prepare_photo`): what goes to the
    backend (`predict_photo` may run on a worker thread) and what builds the hands after."""

    client: HamrClient
    upload: str | bytes  # a file path or encoded bytes
    name: str  # the file name sent
    source: scene.ImageSource
    fields: dict  # the prediction options (side, box, focal, detector, refine)
    key: tuple | None  # the prediction cache's key; None: not cached (pixels only in Blender)


# Backend predictions of the last photos, by (backend, file, size, mtime, options): the redo
# panel re-runs an import for options that only change the build (shape keys, correctives,
# camera, rotations, min score), and those need no new prediction.
_PREDICTIONS: dict[tuple, dict] = {}
KEEP_PREDICTIONS = 8


def prepare_photo(
    context, op_like, filepath: str = "", image_name: str = "", client: HamrClient | None = None
) -> PhotoRequest:
    """The request of hamr.import_image (Blender's thread: it reads images in Blender)."""
    upload, name, source = _image_upload(context, filepath, image_name)
    client = client or client_for(context, timeout=30.0)
    box = tuple(op_like.box) if op_like.use_box else None
    fields = {
        "side": op_like.side,
        "box": box,
        "focal": op_like.focal or None,
        "detector": None if box else op_like.detector,
        "refine": op_like.refine,
    }
    key = None
    if isinstance(upload, str):
        stat = os.stat(upload)
        key = (client.url, upload, stat.st_size, stat.st_mtime_ns, tuple(sorted(fields.items())))
    return PhotoRequest(client, upload, name, source, fields, key)


def cached_prediction(request: PhotoRequest) -> dict | None:
    """The backend's answer to the same photo and options, if it was asked before."""
    return _PREDICTIONS.get(request.key) if request.key is not None else None


def predict_photo(request: PhotoRequest) -> dict:
    """POST /v1/predict (HTTP only: safe on a worker thread); the answer is cached."""
    if (doc := cached_prediction(request)) is not None:
        return doc
    doc = request.client.predict(request.upload, filename=request.name, **request.fields)
    if request.key is not None:
        _PREDICTIONS[request.key] = doc
        while len(_PREDICTIONS) > KEEP_PREDICTIONS:
            _PREDICTIONS.pop(next(iter(_PREDICTIONS)))
    return doc


class PhotoCancelled(BackendError):
    """A photo's prediction was cancelled (`PhotoTask.cancel`): nothing is built."""

    def __init__(self) -> None:
        super().__init__("photo import cancelled; nothing was changed", code="cancelled")


class _Hangup:
    """The HTTP connections of one task, shut from another thread by `close` (the backend sees
    the client go away and stops the prediction: backend/service/photos.py). A connection
    opened after `close` is closed at once."""

    def __init__(self) -> None:
        self.closed = False
        self.connections: list[http.client.HTTPConnection] = []

    def watch(self, conn: http.client.HTTPConnection) -> None:
        self.connections.append(conn)
        if self.closed:  # set before the socket was read by `close`: this side closes it
            conn.close()
            raise ConnectionAbortedError("the request was cancelled")

    def close(self) -> None:
        self.closed = True  # first, so that a connection made meanwhile sees it (`watch`)
        for conn in list(self.connections):
            sock = conn.sock
            if sock is not None:
                try:  # wakes the worker's blocking send/recv; the server sees a disconnect
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handlers(self) -> list[urllib.request.BaseHandler]:
        """urllib HTTP and HTTPS handlers (for HamrClient) whose connections this object can
        close."""
        hangup = self

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                hangup.watch(self)

        class ConnS(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                hangup.watch(self)

        class Handler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(Conn, req)

        class HandlerS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(ConnS, req, context=self._context)

        return [Handler(), HandlerS()]


class PhotoTask:
    """A photo's prediction on a worker thread, window-free: the modal hamr.import_image drives
    it from a timer (Esc: `cancel`), a script or a test can drive it the same way.

        task = PhotoTask(prepare_photo(context, op_like, path)).start()
        while (outcome := task.poll()) is None:
            ...  # Blender's thread stays free
        if isinstance(outcome, BaseException): report it   # PhotoCancelled after cancel()
        else: build_photo(context, op_like, task.request, outcome)

    The worker does HTTP only (`predict_photo`) and touches no Blender data, so the scene is
    as it was until the caller builds. `cancel` shuts the request's connection: the worker
    ends at once, the backend stops the prediction (client disconnect), and `poll` answers
    PhotoCancelled (never the prediction) once the worker has ended."""

    def __init__(self, request: PhotoRequest) -> None:
        self.request = request
        self._hangup = _Hangup()
        self._outcome: dict = {}
        self._thread: threading.Thread | None = None
        self.cancelled = False

    def start(self) -> PhotoTask:
        client = self.request.client
        closable = self._hangup.handlers()  # connections `cancel` can shut
        own = HamrClient(client.url, client.token, timeout=client.timeout, handlers=closable)
        request = dataclasses.replace(self.request, client=own)
        outcome = self._outcome

        def work() -> None:
            try:
                outcome["doc"] = predict_photo(request)
            except BaseException as e:  # handed to Blender's thread by poll()
                outcome["error"] = e

        self._thread = threading.Thread(target=work, name="hamr-photo", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self) -> dict | BaseException | None:
        """None while the worker runs; then the prediction (a ``hamr.prediction/1`` dict) or the
        error it met (an exception, not raised), PhotoCancelled after `cancel`."""
        if self._thread is None:
            raise RuntimeError("the photo task was not started")
        if self._thread.is_alive():
            return None
        if self.cancelled:
            return PhotoCancelled()
        return self._outcome.get("error") or self._outcome["doc"]

    def cancel(self) -> None:
        """Stop: the request's connection is shut (the backend stops its work); nothing will be
        built from this task."""
        self.cancelled = True
        self._hangup.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running


def build_photo(context, op_like, request: PhotoRequest, doc: dict, location=None):
    """The hands of a prediction, built (or keyed onto the active hand: Apply to Active Hand);
    leaves nothing behind on failure. request.upload may be "" (a saved result without its
    photo: no background)."""
    prediction = parse_prediction(doc)
    if (target := apply_target(context, op_like)) is not None:
        return apply_to(context, op_like, target, prediction)
    client, upload, name, source = request.client, request.upload, request.name, request.source
    rigs = fetch_rigs(client, {h.side for h in prediction.hands}, prediction.hand_model)
    new = NewData()
    try:
        head = bytes(upload[:12]) if isinstance(upload, bytes) else orientation.file_head(upload)
        if op_like.align_camera and orientation.is_heif(head):
            source = _decoded_background(client, upload, name, source, new)
        return scene.import_prediction(
            context,
            prediction,
            rigs,
            rig_options(op_like),
            source,
            new,
            align=op_like.align_camera,
            location=location,
            take=take_options(op_like),
        )
    except BaseException:
        new.remove_all()
        raise


def import_image(
    context,
    op_like,
    filepath: str = "",
    image_name: str = "",
    client: HamrClient | None = None,
    location=None,
) -> scene.ImportResult:
    """The import behind hamr.import_image, blocking (its execute, the redo panel, `hamr blend`):
    `prepare_photo`, `predict_photo` (the backend is not asked again for a photo and options it
    answered before), `build_photo`. `op_like` holds the options (side, use_box, box, detector,
    refine, focal, shape_keys, correctives, align_camera, and optionally rotation_mode,
    min_score: `scene.take_options`, apply_to_active); client: the backend (default: the
    preferences'). Raises one of DOMAIN_ERRORS; leaves nothing behind on failure."""
    request = prepare_photo(context, op_like, filepath, image_name, client)
    return build_photo(context, op_like, request, predict_photo(request), location)


def _decoded_background(
    client: HamrClient, upload, name: str, source: scene.ImageSource, new: NewData
) -> scene.ImageSource:
    """Blender cannot read HEIF/HEIC photos: their camera background is the backend's decoding
    of the photo (`HamrClient.upright_png`), packed into the .blend. Where that fails (an older
    backend), the import goes on without a background."""
    try:
        png = client.upright_png(upload, name)
    except BackendError as e:
        print(f"HAMR: no camera background for {name}: {e}")
        return source
    stem = os.path.splitext(name)[0] or "photo"
    with tempfile.TemporaryDirectory(prefix="hamr-") as folder:
        path = os.path.join(folder, f"{stem}.png")
        with open(path, "wb") as fh:
            fh.write(png)
        image = new.add(bpy.data.images.load(path, check_existing=False))
        image.pack()
    image.filepath_raw = f"//{stem}.png"  # the temporary file is gone; the pixels are packed
    image.name = f"{stem} (decoded)"
    return scene.ImageSource("image", "", image.name, 1)


def refuse_photo_as_video(path: str) -> None:
    """ValueError when `path` holds a still image: the backend's video decoder reads a photo as
    a one-frame clip, which would make a one-frame take."""
    still = orientation.still_image_format(orientation.file_head(path))
    if still is not None:
        raise ValueError(
            f"{os.path.basename(path)} is a {still} photo, not a video: use Import Hands from "
            "Image for photos"
        )


def key_video_result(
    context, op_like, client: HamrClient, doc: dict, path: str, location=None
) -> scene.ImportResult:
    """A finished job's ``hamr.video/1`` -> keyed rigs (scene.key_video with the options
    `op_like` carries); leaves nothing behind on failure."""
    video = parse_video(doc)
    rigs = fetch_rigs(
        client, {h.side for _, hands in video.frames for h in hands}, video.hand_model
    )
    new = NewData()
    try:
        return scene.key_video(
            context,
            video,
            rigs,
            rig_options(op_like),
            scene.ImageSource("movie", path, ""),
            new,
            align=op_like.align_camera,
            location=location,
            take=take_options(op_like),
        )
    except BaseException:
        new.remove_all()
        raise


def apply_target(context, op_like) -> bpy.types.Object | None:
    """The HAMR hand to key a photo's pose onto (`apply_to_active` on, the active object or its
    mesh being a HAMR hand), else None. ValueError when asked with no HAMR hand active."""
    if not getattr(op_like, "apply_to_active", False):
        return None
    target = find_hand_armature(context.active_object)
    if target is None:
        raise ValueError("Apply to Active Hand: select a hand that HAMR built first")
    return target


def apply_to(context, op_like, target, prediction) -> scene.ImportResult:
    """`scene.apply_prediction` at the current frame, as an import's result."""
    frame = context.scene.frame_current
    scene.apply_prediction(target, prediction, frame, take_options(op_like))
    note = f"keyed the photo's pose onto {target.name} at frame {frame}"
    return scene.ImportResult(armatures=[target], notes=[note])


def import_saved(
    context,
    op_like,
    filepath: str,
    source_path: str = "",
    client: HamrClient | None = None,
    location=None,
) -> scene.ImportResult:
    """A saved result built as its import would be: a ``hamr.prediction/1`` file (`hamr predict
    --json`) becomes posed hands, a ``hamr.video/1`` file (`hamr video --json`) keyed tracks. The
    rig data comes from the backend (its hand model must be the file's); source_path: the photo
    or clip it was made from, for the camera's background (none without it). Raises one of
    DOMAIN_ERRORS (a file that is no such result: ValueError naming it); leaves nothing behind."""
    path = bpy.path.abspath(filepath) if filepath else ""
    if not path or not os.path.isfile(path):
        raise ValueError(f"result file not found: {path or '(none chosen)'}")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{os.path.basename(path)} is not a HAMR result (JSON): {e}") from e
    schema = doc.get("schema") if isinstance(doc, dict) else None
    media = bpy.path.abspath(source_path) if source_path else ""
    if schema == VIDEO_SCHEMA:
        if apply_target(context, op_like) is not None:
            raise ValueError("Apply to Active Hand takes a photo's result, not a video's")
        client = client or client_for(context, timeout=30.0)
        return key_video_result(context, op_like, client, doc, media, location)
    if schema != PREDICTION_SCHEMA:
        raise ValueError(
            f"{os.path.basename(path)} is not a HAMR result: its schema is {schema!r}, not "
            f"{PREDICTION_SCHEMA!r} (hamr predict --json) or {VIDEO_SCHEMA!r} (hamr video --json)"
        )
    # the photo (when given) as an import of it would send it, for the camera's background
    upload, name, source = (
        _image_upload(context, media, "")
        if os.path.isfile(media)
        else ("", "", scene.ImageSource("image", "", ""))
    )
    request = PhotoRequest(
        client or client_for(context, timeout=30.0), upload, name, source, {}, None
    )
    return build_photo(context, op_like, request, doc, location)


def import_video(
    context,
    op_like,
    path: str,
    client: HamrClient | None = None,
    location=None,
    timeout: float = 3600.0,
) -> scene.ImportResult:
    """The video import without a window (`hamr blend VIDEO`): the backend job run to its end,
    blocking, then `key_video_result`. `op_like` holds the import options plus smoothing (and
    optionally scene_fps, rotation_mode, min_score). Raises one of DOMAIN_ERRORS."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"video not found: {path}")
    refuse_photo_as_video(path)
    client = client or client_for(context, timeout=30.0)
    job = VideoJob(
        client,
        path,
        side=op_like.side,
        smoothing=op_like.smoothing,
        focal=op_like.focal or None,
        detector=op_like.detector,
        refine=op_like.refine,
        poll_interval=0.2,
    ).start()
    deadline = time.monotonic() + timeout
    while not job.finished:
        if time.monotonic() > deadline:
            job.cancel()
            job.join(10)
            raise BackendError(f"the video job took longer than {timeout:g} s")
        time.sleep(0.1)
    if job.state != "done":
        raise BackendError(job.message or job.state)
    return key_video_result(context, op_like, job.client, job.result, path, location)
