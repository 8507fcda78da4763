"""The extension's operators (DESIGN.md "Blender extension").

    hamr.check_backend    ask the backend's health, report it
    hamr.start_backend    start `hamr serve` as a child process, wait (modal) until it is ready
    hamr.stop_backend     stop the backend started from Blender
    hamr.import_image     photo (file or an image already in Blender) -> posed hands (+ camera)
    hamr.keyframe_video   movie -> a backend job polled from a modal timer -> keyed hands
    hamr.align_camera     the scene camera from the active hand's photo or clip
    hamr.restore_resolution  the render size that Align Camera's Set Resolution replaced

Errors are reported with self.report({'ERROR'}, msg) and the operator returns {'CANCELLED'}
(glTF-Blender-IO's habit); whatever was built before the error is removed, so a failed import
leaves the scene as it was. Imports and video keying are one undo step each ('UNDO').

In background mode (scripts, `hamr blend`, tests) there is no event loop, so the modal operators
run the same steps blocking. The import use cases are in `importer`; the HTTP and parsing work
in `..io.client` / `..io.payload`. Imports bpy.
"""

from __future__ import annotations

import os
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, FloatVectorProperty, StringProperty

from ..io import backend_process
from ..io.client import BackendError, VideoJob
from . import camera, scene
from .importer import (
    DOMAIN_ERRORS,
    PhotoTask,
    build_photo,
    cached_prediction,
    client_for,
    import_saved,
    key_video_result,
    predict_photo,
    prepare_photo,
    refuse_photo_as_video,
    settings,
    user_dir,
)
from .rig import NewData, find_hand_armature

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
ROTATION_ITEMS = (
    ("QUATERNION", "Quaternion", "Quaternion keys, w >= 0 on the first key, continuous signs"),
    ("XYZ", "Euler XYZ", "XYZ Euler keys, continuous (no jumps by a turn)"),
)
SCENE_FPS_ITEMS = (
    ("KEEP", "Keep Scene's", "Keep the scene's frame rate: each video frame is keyed at its "
     "time (fractional scene frames) and the clip is driven to stay in step"),
    ("CLIP", "Use Clip's", "Set the scene's frame rate to the clip's: one key per scene frame"),
)  # fmt: skip
CORRECTIVE_ITEMS = (
    ("AUTO", "Auto", "Create pose correctives when the hand model has any (non-zero)"),
    ("ON", "On", "Always create the 135 driven pose-corrective shape keys"),
    ("OFF", "Off", "No pose correctives"),
)
# Last known backend state, for the panel (drawing must never wait on HTTP).
STATUS = {"text": "not checked", "ok": False, "time": 0.0}


def _set_status(text: str, ok: bool) -> None:
    STATUS.update(text=text, ok=ok, time=time.time())
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


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
            client = client_for(context, timeout=3.0)
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


class _HandOptions:
    """Options shared by the import operators (a mixin of bpy properties), and their poll and
    invoke: a chosen file runs at once, else the file browser asks for one."""

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
    set_resolution: BoolProperty(
        name="Set Resolution",
        description="Make the render size the photo's (the scene's old size is kept and can be "
        "restored); off: the camera fits the photo into the scene's render size",
        default=False,
    )
    focal: FloatProperty(
        name="Focal (px)",
        description="Focal length in pixels of the full image (0: EXIF or the default view)",
        default=0.0,
        min=0.0,
    )
    rotation_mode: EnumProperty(name="Rotations", items=ROTATION_ITEMS, default="QUATERNION")
    min_score: FloatProperty(
        name="Min Score",
        description="Hands that a detector finds with a lower confidence are not built (a "
        "given box always is); the network detector's false boxes score about 0.1, real hands "
        "0.2-0.3 with the shipped checkpoint",
        default=scene.DEFAULT_MIN_SCORE,
        min=0.0,
        max=1.0,
    )

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT"

    def invoke(self, context, event):
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class _ApplyOption:
    """The photo imports' option to key onto an existing hand (a mixin of a bpy property)."""

    apply_to_active: BoolProperty(
        name="Apply to Active Hand",
        description="Key the photo's pose onto the selected HAMR hand at the current frame "
        "instead of building a new hand",
        default=False,
    )


def _report_import(op, run, done: str):
    """run() -> ImportResult, reported on `op`: a domain error as an ERROR ({'CANCELLED'}),
    else the notes and `done` with the hand count ({n}, {s} the plural's s)."""
    try:
        result = run()
    except DOMAIN_ERRORS as e:
        op.report({"ERROR"}, f"HAMR: {e}")
        return {"CANCELLED"}
    _report_notes(op, result.notes)
    n = len(result.armatures)
    op.report({"INFO"}, "HAMR: " + done.format(n=n, s="s" if n != 1 else ""))
    return {"FINISHED"}


class HAMR_OT_import_image(_ApplyOption, _HandOptions, bpy.types.Operator):
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

    def invoke(self, context, event):  # an image already in Blender needs no file either
        if self.filepath or self.image_name:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        """With a window, the backend's prediction runs on a worker thread (`PhotoTask`) while
        a timer keeps Blender responsive and polls it; Esc cancels it (the request's connection
        is closed, so the backend stops too; the scene unchanged); the hands are built on
        Blender's thread when the prediction arrives. A photo and options the backend
        answered before (the redo panel changing a build option) are built at once, without
        asking it again."""
        try:
            request = prepare_photo(context, self, self.filepath, self.image_name)
            doc = cached_prediction(request)
            if doc is None and (bpy.app.background or context.window is None):
                doc = predict_photo(request)
        except DOMAIN_ERRORS as e:
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        if doc is not None:
            return self._build(context, request, doc)
        self._task = PhotoTask(request).start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        self._status(context, f"predicting {request.name}, Esc cancels")
        return {"RUNNING_MODAL"}

    _task: PhotoTask | None = None
    _timer = None

    def _status(self, context, text: str | None) -> None:
        if context.workspace is not None:
            context.workspace.status_text_set(None if text is None else f"HAMR photo: {text}")

    def _cleanup(self, context) -> None:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        self._status(context, None)

    def modal(self, context, event):
        if event.type == "ESC":
            self._task.cancel()  # the backend stops too (it sees the client go away)
            self._cleanup(context)
            self.report({"WARNING"}, "HAMR: photo import cancelled; nothing was changed")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        outcome = self._task.poll()
        if outcome is None:
            return {"PASS_THROUGH"}
        self._cleanup(context)
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, DOMAIN_ERRORS):
                raise outcome
            self.report({"ERROR"}, f"HAMR: {outcome}")
            return {"CANCELLED"}
        return self._build(context, self._task.request, outcome)

    def _build(self, context, request, doc):
        return _report_import(
            self, lambda: build_photo(context, self, request, doc), "imported {n} hand{s}"
        )


class HAMR_OT_import_result(_ApplyOption, _HandOptions, bpy.types.Operator):
    """Build the hands of a saved HAMR result (hamr predict --json or hamr video --json)"""

    bl_idname = "hamr.import_result"
    bl_label = "Import Saved Result"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Result", subtype="FILE_PATH", default="")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN", "SKIP_SAVE"})
    source_path: StringProperty(
        name="Photo or Clip",
        subtype="FILE_PATH",
        description="Optional: the photo or clip the result was made from (camera background)",
        default="",
    )
    scene_fps: EnumProperty(name="Frame Rate", items=SCENE_FPS_ITEMS, default="KEEP")

    def execute(self, context):
        return _report_import(
            self,
            lambda: import_saved(context, self, self.filepath, self.source_path),
            "built {n} hand{s} from the result",
        )


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
    scene_fps: EnumProperty(name="Frame Rate", items=SCENE_FPS_ITEMS, default="KEEP")

    _job: VideoJob | None = None
    _timer = None

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"HAMR: video file not found: {path or '(none chosen)'}")
            return {"CANCELLED"}
        try:
            refuse_photo_as_video(path)
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
        return _report_import(
            self,
            lambda: key_video_result(context, self, job.client, job.result, self._path),
            "keyed {n} hand track{s}",
        )


class HAMR_OT_align_camera(bpy.types.Operator):
    """Make the scene camera see the active hand as its photo or video did"""

    bl_idname = "hamr.align_camera"
    bl_label = "Align Camera"
    bl_options = {"REGISTER", "UNDO"}

    set_resolution: BoolProperty(
        name="Set Resolution",
        description="Make the render size the photo's (the scene's old size is kept in its "
        "hamr_previous_resolution property); off: the camera fits the photo into the scene's "
        "render size",
        default=False,
    )

    @classmethod
    def poll(cls, context):
        arm = find_hand_armature(context.active_object)
        return arm is not None and camera.CAMERA_PROP in arm

    def execute(self, context):
        arm = find_hand_armature(context.active_object)
        if arm is None:
            self.report({"ERROR"}, "HAMR: select a hand imported by HAMR")
            return {"CANCELLED"}
        new = NewData()
        try:
            cam = camera.align_camera(context, arm, new, self.set_resolution)
        except DOMAIN_ERRORS as e:
            new.remove_all()
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"HAMR: {cam.name} aligned with {arm.name}'s image")
        return {"FINISHED"}


class HAMR_OT_restore_resolution(bpy.types.Operator):
    """Put back the scene's render size that Align Camera's Set Resolution replaced"""

    bl_idname = "hamr.restore_resolution"
    bl_label = "Restore Resolution"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene_ = context.scene
        try:
            restored = camera.restore_resolution(scene_)
        except camera.SceneBuildError as e:
            self.report({"ERROR"}, f"HAMR: {e}")
            return {"CANCELLED"}
        if not restored:
            self.report(
                {"WARNING"},
                "HAMR: no render size to restore (only Align Camera with Set Resolution keeps "
                "one); nothing was changed",
            )
            return {"CANCELLED"}
        r = scene_.render
        self.report(
            {"INFO"},
            f"HAMR: render size restored to {r.resolution_x} x {r.resolution_y} "
            f"({r.resolution_percentage} %)",
        )
        return {"FINISHED"}


classes = (
    HAMR_OT_check_backend,
    HAMR_OT_start_backend,
    HAMR_OT_stop_backend,
    HAMR_OT_import_image,
    HAMR_OT_import_result,
    HAMR_OT_keyframe_video,
    HAMR_OT_align_camera,
    HAMR_OT_restore_resolution,
)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
    backend_process.BACKEND.stop()  # never leave a backend we started running
