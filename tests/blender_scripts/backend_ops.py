"""The backend operators in headless bpy: a backend that is down, then one started from Blender.

argv: ZIP CLOSED_URL FREE_URL IMAGE VIDEO CHECKPOINT.
1. Preferences point at a closed port: check, import and keyframe report a clear error, return
   CANCELLED, and leave every data-block and scene setting as it was; start with a missing
   program explains itself; stop with nothing started is a warning.
2. Preferences point at a free port with this Python and a checkpoint: hamr.start_backend starts
   `python -m backend.cli serve` as a child, waits for health, hamr.check_backend says ready,
   hamr.stop_backend stops it (the process is gone).
"""

from __future__ import annotations

import sys
import time

import _common
import bpy

zip_path, closed_url, free_url, image_path, video_path, checkpoint = sys.argv[1:7]
pkg = _common.install_extension(zip_path, closed_url)
prefs = bpy.context.preferences.addons[_common.EXT_MODULE].preferences
out: dict = {}


def call(op, **kwargs):
    try:
        return {"result": sorted(op(**kwargs)), "error": None}
    except RuntimeError as e:
        return {"result": ["CANCELLED"], "error": str(e).strip()}


before = _common.scene_state()
out["check"] = call(bpy.ops.hamr.check_backend)
out["import"] = call(bpy.ops.hamr.import_image, filepath=image_path)
out["video"] = call(bpy.ops.hamr.keyframe_video, filepath=video_path)
out["stop_nothing"] = call(bpy.ops.hamr.stop_backend)
prefs.start_command = "hamr-no-such-program serve"
out["start_missing"] = call(bpy.ops.hamr.start_backend)
out["unchanged"] = _common.scene_state() == before
out["status_text"] = pkg.blender.operators.STATUS["text"]

# a real backend, started and stopped from Blender
prefs.backend_url = free_url
prefs.python_path = sys.executable
prefs.checkpoint = checkpoint
prefs.start_timeout = 120.0
t0 = time.perf_counter()
out["start"] = call(bpy.ops.hamr.start_backend)
out["start_s"] = time.perf_counter() - t0
proc = pkg.io.backend_process.BACKEND.process
out["running"] = pkg.io.backend_process.BACKEND.running
out["check_up"] = call(bpy.ops.hamr.check_backend)
out["stop"] = call(bpy.ops.hamr.stop_backend)
out["exit_code"] = None if proc is None else proc.poll()
out["running_after"] = pkg.io.backend_process.BACKEND.running
_common.emit(out)
