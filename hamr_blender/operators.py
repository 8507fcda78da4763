"""The extension's operators (DESIGN.md "Blender extension").

    hamr.check_backend    ask the backend's health, report it
    hamr.start_backend    start `hamr serve` as a child process, wait (modal) until it is ready
    hamr.stop_backend     stop the backend started from Blender
    hamr.import_image     photo (file or an image already in Blender) -> posed hands (+ camera)
    hamr.keyframe_video   movie -> a backend job polled from a modal timer -> keyed hands
    hamr.align_camera     the scene camera from the active hand's photo or clip

Errors are reported with self.report({'ERROR'}, msg) and the operator returns {'CANCELLED'}
(glTF-Blender-IO's habit); whatever was built before the error is removed, so a failed import
leaves the scene as it was. Imports and video keying are one undo step each ('UNDO').

In background mode (scripts, `hamr blend`, tests) there is no event loop, so the modal operators
run the same steps blocking. Imports bpy; the HTTP and parsing work is in client.py / payload.py.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, FloatVectorProperty, StringProperty

from . import backend_process, orientation, scene
from .client import DEFAULT_URL, BackendError, HamrClient, VideoJob
from .payload import PayloadError, RigData, parse_prediction, parse_rig, parse_video
from .rig import NewData, RigOptions, find_hand_armature

SIDE_ITEMS = (
    ("auto", "Auto", "Let the backend decide whether each hand is left or right"),
    ("right", "Right", "Every hand is a right hand"),
    ("left", "Left", "Every hand is a left hand"),
)
DETECTOR_ITEMS = (
    ("auto", "Auto", "MediaPipe Hands when the backend has it and finds a hand, else the network"),
    ("mediapipe", "MediaPipe", "MediaPipe Hands finds the hands (installed with the backend)"),
    ("hamr", "Network", "The HAMR network itself finds the hands"),
)
CORRECTIVE_ITEMS = (
    ("AUTO", "Auto", "Create pose correctives when the hand model has any (non-zero)"),
    ("ON", "On", "Always create the 135 driven pose-corrective shape keys"),
    ("OFF", "Off", "No pose correctives"),
)
# Errors an import can meet for reasons outside the extension's control (backend, payload,
# files, Blender refusing data): reported to the user. BackendError, PayloadError, RigBuildError
# and SceneBuildError are RuntimeError / ValueError subclasses; bpy raises RuntimeError.
DOMAIN_ERRORS = (RuntimeError, ValueError, OSError)


# ------------------------------------------------------------------------------ preferences
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
    addon = context.preferences.addons.get(__package__)
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


def client_for(context: bpy.types.Context, timeout: float = 30.0) -> HamrClient:
    s = settings(context)
    return HamrClient(s.url, s.token, timeout=timeout)


def user_dir() -> str:
    """The extension's user folder (logs); a temporary folder outside an installed extension."""
    try:
        return bpy.utils.extension_path_user(__package__, create=True)
    except (ValueError, AttributeError, KeyError):
        path = os.path.join(tempfile.gettempdir(), "hamr_blender")
        os.makedirs(path, exist_ok=True)
        return path


# Last known backend state, for the panel (drawing must never wait on HTTP).
STATUS = {"text": "not checked", "ok": False, "time": 0.0}


def _set_status(text: str, ok: bool) -> None:
    STATUS.update(text=text, ok=ok, time=time.time())
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


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


def _options(op) -> RigOptions:
    return RigOptions(name="HAMR Hand", shape_keys=op.shape_keys, correctives=op.correctives)


def _report_notes(op, notes: list[str]) -> None:
    for note in notes:
        op.report({"INFO"}, f"HAMR: {note}")


# ------------------------------------------------------------------------------ backend
class HAMR_OT_check_backend(bpy.types.Operator):
    """Ask the HAMR backend whether it is running and ready"""

    bl_idname = "hamr.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        try:
            client = client_for(context, timeout=5.0)
        except ValueError as e:
            _set_status(str(e), False)
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        try:
            health = client.health(timeout=5.0)
        except BackendError as e:
            state = "starting" if backend_process.BACKEND.running else "unreachable"
            if e.status == 503:
                state = "loading the model"
            _set_status(f"{state}: {e}", False)
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        text = (
            f"ready: {health.get('checkpoint', '?')} on {health.get('device', '?')} "
            f"({health.get('hand_model', '?')})"
        )
        _set_status(text, True)
        self.report({"INFO"}, f"HAMR backend at {client.url} is {text}")
        return {"FINISHED"}


class HAMR_OT_start_backend(bpy.types.Operator):
    """Start the HAMR backend (`hamr serve`) on this machine as a child process of Blender"""

    bl_idname = "hamr.start_backend"
    bl_label = "Start Backend"

    _timer = None
    _deadline = 0.0

    def execute(self, context):
        s = settings(context)
        try:
            client = HamrClient(s.url, s.token, timeout=3.0)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if client.is_ready(timeout=2.0):
            _set_status("ready (already running)", True)
            self.report({"INFO"}, f"A HAMR backend is already running at {client.url}")
            return {"FINISHED"}
        proc = backend_process.BACKEND
        try:
            argv = proc.start(s.url, user_dir(), s.command, s.python, s.checkpoint)
        except (backend_process.BackendStartError, ValueError) as e:
            _set_status(f"not started: {e}", False)
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        _set_status("starting: " + " ".join(argv), False)
        if bpy.app.background or context.window is None:
            try:
                proc.wait_ready(client, timeout=s.start_timeout)
            except backend_process.BackendStartError as e:
                _set_status(f"failed: {e}", False)
                self.report({"ERROR"}, f"HAMR: {e}")
                return {"CANCELLED"}
            _set_status("ready", True)
            self.report({"INFO"}, f"HAMR backend ready at {client.url}")
            return {"FINISHED"}
        self._client = client
        self._deadline = time.monotonic() + s.start_timeout
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.5, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        proc = backend_process.BACKEND
        state = proc.poll(self._client)
        if state == "starting" and time.monotonic() < self._deadline:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        if state == "ready":
            _set_status("ready", True)
            self.report({"INFO"}, f"HAMR backend ready at {self._client.url}")
            return {"FINISHED"}
        if state == "starting":
            proc.stop()
            msg = "the backend did not become ready in time (see the log in the extension folder)"
        else:
            msg = proc.exit_message()
        _set_status(f"failed: {msg}", False)
        self.report({"ERROR"}, f"HAMR: {msg}")
        return {"CANCELLED"}


class HAMR_OT_stop_backend(bpy.types.Operator):
    """Stop the HAMR backend that was started from Blender"""

    bl_idname = "hamr.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context):
        proc = backend_process.BACKEND
        if not proc.running:
            self.report(
                {"WARNING"},
                "HAMR: no backend started from Blender is running (a backend started elsewhere "
                "must be stopped there)",
            )
            return {"CANCELLED"}
        code = proc.stop()
        _set_status("stopped", False)
        self.report({"INFO"}, f"HAMR backend stopped (exit code {code})")
        return {"FINISHED"}


# ------------------------------------------------------------------------------ import
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


def import_image(
    context,
    op_like,
    filepath: str = "",
    image_name: str = "",
    client: HamrClient | None = None,
    location=None,
) -> scene.ImportResult:
    """The import behind hamr.import_image (also used by `hamr blend`): predict, fetch the rigs,
    build. `op_like` holds the options (side, use_box, box, detector, refine, focal, shape_keys,
    correctives, align_camera); client: the backend (default: the preferences'). Raises one of
    DOMAIN_ERRORS; leaves nothing behind on failure."""
    upload, name, source = _image_upload(context, filepath, image_name)
    client = client or client_for(context, timeout=30.0)
    box = tuple(op_like.box) if op_like.use_box else None
    doc = client.predict(
        upload,
        filename=name,
        side=op_like.side,
        box=box,
        focal=op_like.focal or None,
        detector=None if box else op_like.detector,
        refine=op_like.refine,
    )
    prediction = parse_prediction(doc)
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
            _options(op_like),
            source,
            new,
            align=op_like.align_camera,
            location=location,
        )
    except BaseException:
        new.remove_all()
        raise


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


class _HandOptions:
    """Options shared by the import operators (a mixin of bpy properties)."""

    side: EnumProperty(name="Side", items=SIDE_ITEMS, default="auto")
    detector: EnumProperty(
        name="Detector",
        items=DETECTOR_ITEMS,
        default="auto",
        description="What finds the hands when no box is given",
    )
    refine: BoolProperty(
        name="Refine on Landmarks",
        description="Fit each hand to MediaPipe's 2D landmarks where the backend finds them "
        "(a video's tracks over all their frames)",
        default=True,
    )
    shape_keys: BoolProperty(
        name="Shape Keys", description="The hand's shape as β shape keys", default=True
    )
    correctives: EnumProperty(name="Pose Correctives", items=CORRECTIVE_ITEMS, default="AUTO")
    align_camera: BoolProperty(
        name="Align Camera", description="Align the scene camera with the photo", default=True
    )
    focal: FloatProperty(
        name="Focal (px)",
        description="Focal length in pixels of the full image (0: EXIF or the default view)",
        default=0.0,
        min=0.0,
    )


class HAMR_OT_import_image(_HandOptions, bpy.types.Operator):
    """Recover the hands in a photo and add them as posed, rigged hand meshes"""

    bl_idname = "hamr.import_image"
    bl_label = "Import Hands from Image"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Image", subtype="FILE_PATH", default="")
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    image_name: StringProperty(
        name="Blender Image", description="Use an image already in Blender instead of a file"
    )
    use_box: BoolProperty(name="Use Box", description="Give the hand's box", default=False)
    box: FloatVectorProperty(
        name="Box", description="Hand box X0, Y0, X1, Y1 in image pixels", size=4, default=(0,) * 4
    )

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT"

    def invoke(self, context, event):
        if self.filepath or self.image_name:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            result = import_image(context, self, self.filepath, self.image_name)
        except DOMAIN_ERRORS as e:
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        _report_notes(self, result.notes)
        n = len(result.armatures)
        self.report({"INFO"}, f"HAMR: imported {n} hand{'s' if n != 1 else ''}")
        return {"FINISHED"}


class HAMR_OT_keyframe_video(_HandOptions, bpy.types.Operator):
    """Track the hands of a video with the backend and key every frame (Esc cancels)"""

    bl_idname = "hamr.keyframe_video"
    bl_label = "Keyframe Hands from Video"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Video", subtype="FILE_PATH", default="")
    filter_movie: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    smoothing: FloatProperty(
        name="Smoothing",
        description="Temporal smoothing strength (0: raw per-frame results, 1: strongest)",
        default=0.5,
        min=0.0,
        max=1.0,
    )
    timeout: FloatProperty(
        name="Timeout (s)", description="Give up after this long", default=3600.0, min=1.0
    )

    _job: VideoJob | None = None
    _timer = None

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT"

    def invoke(self, context, event):
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"HAMR: video file not found: {path or '(none chosen)'}")
            return {"CANCELLED"}
        try:
            client = client_for(context, timeout=30.0)
            client.health(timeout=5.0)
        except (BackendError, ValueError) as e:
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        self._path = path
        self._started = time.monotonic()
        self._job = VideoJob(
            client,
            path,
            side=self.side,
            smoothing=self.smoothing,
            focal=self.focal or None,
            detector=self.detector,
            refine=self.refine,
        ).start()
        if bpy.app.background or context.window is None:
            while not self._job.finished:
                if time.monotonic() - self._started > self.timeout:
                    self._job.cancel()
                    self._job.join(10)
                    self.report(
                        {"ERROR"}, f"HAMR: the video job took longer than {self.timeout:g} s"
                    )
                    return {"CANCELLED"}
                time.sleep(0.2)
            return self._finish(context)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        self._status(context, "submitting the video")
        return {"RUNNING_MODAL"}

    def _status(self, context, text: str | None) -> None:
        if context.workspace is not None:
            context.workspace.status_text_set(None if text is None else f"HAMR video: {text}")

    def _cleanup(self, context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        self._status(context, None)

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC":
            job.cancel()
            self._cleanup(context)
            self.report({"WARNING"}, "HAMR: video keyframing cancelled; nothing was changed")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if time.monotonic() - self._started > self.timeout:
            job.cancel()
            self._cleanup(context)
            self.report({"ERROR"}, f"HAMR: the video job took longer than {self.timeout:g} s")
            return {"CANCELLED"}
        context.window_manager.progress_update(int(100 * job.progress))
        self._status(
            context, f"{job.message or job.state} ({100 * job.progress:.0f} %), Esc cancels"
        )
        if not job.finished:
            return {"PASS_THROUGH"}
        self._cleanup(context)
        return self._finish(context)

    def _finish(self, context):
        job = self._job
        if job.state != "done":
            level = "WARNING" if job.state == "cancelled" else "ERROR"
            self.report({level}, f"HAMR: {job.message or job.state}")
            return {"CANCELLED"}
        new = NewData()
        try:
            video = parse_video(job.result)
            rigs = fetch_rigs(
                job.client,
                {h.side for _, hands in video.frames for h in hands},
                video.hand_model,
            )
            result = scene.key_video(
                context,
                video,
                rigs,
                _options(self),
                scene.ImageSource("movie", self._path, ""),
                new,
                align=self.align_camera,
            )
        except DOMAIN_ERRORS as e:
            new.remove_all()
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        except BaseException:
            new.remove_all()
            raise
        _report_notes(self, result.notes)
        n = len(result.armatures)
        self.report({"INFO"}, f"HAMR: keyed {n} hand track{'s' if n != 1 else ''}")
        return {"FINISHED"}


class HAMR_OT_align_camera(bpy.types.Operator):
    """Make the scene camera see the active hand as its photo or video did"""

    bl_idname = "hamr.align_camera"
    bl_label = "Align Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        arm = find_hand_armature(context.active_object)
        return arm is not None and scene.CAMERA_PROP in arm

    def execute(self, context):
        arm = find_hand_armature(context.active_object)
        if arm is None:
            self.report({"ERROR"}, "HAMR: select a hand imported by HAMR")
            return {"CANCELLED"}
        new = NewData()
        try:
            cam = scene.align_camera(context, arm, new)
        except DOMAIN_ERRORS as e:
            new.remove_all()
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"HAMR: {cam.name} aligned with {arm.name}'s image")
        return {"FINISHED"}


classes = (
    HAMR_OT_check_backend,
    HAMR_OT_start_backend,
    HAMR_OT_stop_backend,
    HAMR_OT_import_image,
    HAMR_OT_keyframe_video,
    HAMR_OT_align_camera,
)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
    backend_process.BACKEND.stop()  # never leave a backend we started running
