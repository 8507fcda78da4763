"""Bugs of issue #22 in the installed extension, each reported cleanly (no traceback, scene as
it was), without a backend.

argv: ZIP JPG PHOTO_AS_MP4.
1. A backend URL with a space: http.client raised InvalidURL, which no operator caught.
2. A backend URL that is not loopback while Blender's online access is off (bpy's default):
   refused before any connection; with online access on, the connection is tried.
3. A photo given to hamr.keyframe_video (a JPG, and a photo named .mp4): the backend's video
   decoder reads it as a one-frame clip, so it is refused as a photo, by its bytes.
"""

from __future__ import annotations

import sys
import time

import _common
import bpy

zip_path, jpg_path, photo_as_mp4 = sys.argv[1:4]
pkg = _common.install_extension(zip_path, "http://127.0.0.1:8734 /v1")
prefs = bpy.context.preferences.addons[_common.EXT_MODULE].preferences
out: dict = {}


def call(op, **kwargs):
    t0 = time.perf_counter()
    try:
        res = {"result": sorted(op(**kwargs)), "error": None}
    except RuntimeError as e:
        res = {"result": ["CANCELLED"], "error": str(e).strip()}
    res["seconds"] = time.perf_counter() - t0
    return res


before = _common.scene_state()
out["space"] = {
    "check": call(bpy.ops.hamr.check_backend),
    "import": call(bpy.ops.hamr.import_image, filepath=jpg_path),
    "start": call(bpy.ops.hamr.start_backend),
}
prefs.backend_url = "http://192.0.2.7:8734"  # TEST-NET-1: never a real host
out["online_access"] = bpy.app.online_access
out["offline"] = {
    "check": call(bpy.ops.hamr.check_backend),
    "import": call(bpy.ops.hamr.import_image, filepath=jpg_path),
}
bpy.context.preferences.system.use_online_access = True
prefs.backend_url = "http://0.0.0.0:1"  # not loopback by name; refused at once on Linux
out["online_access_on"] = bpy.app.online_access
out["online"] = {"check": call(bpy.ops.hamr.check_backend)}
bpy.context.preferences.system.use_online_access = False
prefs.backend_url = "http://127.0.0.1:1"
out["video_jpg"] = call(bpy.ops.hamr.keyframe_video, filepath=jpg_path)
out["video_photo_as_mp4"] = call(bpy.ops.hamr.keyframe_video, filepath=photo_as_mp4)
out["unchanged"] = _common.scene_state() == before
_common.emit(out)
