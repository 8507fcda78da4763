"""The photo import's worker without a window (`importer.PhotoTask`, what the modal
hamr.import_image drives from its timer and Esc), against the real backend (headless bpy).

argv: URL PHOTO BOX BIG_PHOTO SERVER_LOG.

- cancelled at once: started and cancelled before its request is answered; poll() driven
  until the worker ends answers PhotoCancelled; nothing was built: the scene's state
  (`_common.scene_state`: every data-block kind, the scene's objects, camera, render size,
  frame range) and the scene settings that an import may touch are as before;
- cancelled mid-request: a slow request (a large photo, the network detector, landmark
  refinement), timed first uncancelled; then again (another focal: not the cached answer)
  cancelled 0.3 s in: the worker ends at once (it does not wait for the answer), nothing
  built, the scene as before; the backend saw the client go away (the server's access log,
  which uvicorn writes only for answered requests, has no line for the cancelled request)
  and stopped: a small request sent right after is answered well before the cancelled one
  could have been (the model is used by one request at a time);
- not cancelled: the task's prediction, built with `build_photo`, gives the hands that the
  synchronous `import_image` builds (same objects, same evaluated vertices), from the
  backend (no cached answer) both times.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import _common
import bpy
import numpy as np

from hamr_blender.blender import importer
from hamr_blender.blender.headless import BlendOptions
from hamr_blender.io.client import HamrClient

url, photo, box_text, big_photo, server_log = sys.argv[1:6]
box = tuple(float(v) for v in box_text.split(","))
client = HamrClient(url)
bpy.ops.wm.read_factory_settings(use_empty=True)
context = bpy.context
scene = context.scene
scene.render.resolution_x, scene.render.resolution_y = 1234, 567
scene.frame_start, scene.frame_end = 3, 77
opts = BlendOptions(side="left", use_box=True, box=box, refine=False, set_resolution=True)
out: dict = {}


def settings() -> dict:
    """Scene settings beyond `_common.scene_state`."""
    r = scene.render
    return {
        "state": _common.scene_state(),
        "fps": [r.fps, r.fps_base],
        "frame": [scene.frame_current, scene.frame_start],
        "percentage": r.resolution_percentage,
        "props": sorted(scene.keys()),
        "active": getattr(context.view_layer.objects.active, "name", None),
    }


def drive(task: importer.PhotoTask, limit: float = 60.0):
    """poll() until the worker has ended (as the modal operator's timer does)."""
    deadline = time.monotonic() + limit
    while (outcome := task.poll()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the photo task did not end")
        time.sleep(0.01)
    return outcome


def predictions_logged() -> int:
    with open(server_log, errors="replace") as fh:
        return fh.read().count("POST /v1/predict")


def timed(request) -> float:
    t0 = time.perf_counter()
    importer.predict_photo(request)
    return time.perf_counter() - t0


before = settings()
# ------------------------------------------------------------ cancelled at once
request = importer.prepare_photo(context, opts, photo, client=client)
task = importer.PhotoTask(request).start()
task.cancel()
outcome = drive(task)
out["at_once"] = {
    "outcome": type(outcome).__name__,
    "message": str(outcome),
    "unchanged": settings() == before,
    "cached": importer.cached_prediction(request) is not None,
}

# ------------------------------------------------------------ cancelled mid-request
slow_opts = replace(opts, use_box=False, detector="hamr", refine=True)


def slow_request(focal: float) -> importer.PhotoRequest:
    """The large photo, the network detector and landmark refinement: about 2 s of work."""
    return importer.prepare_photo(
        context, replace(slow_opts, focal=focal), big_photo, client=client
    )


timed(slow_request(900.0))  # warm-up
full_s = timed(slow_request(950.0))
logged = predictions_logged()
task = importer.PhotoTask(slow_request(1000.0)).start()
time.sleep(0.3)
running_at_cancel = task.running
t_cancel = time.perf_counter()
task.cancel()
outcome = drive(task)
ended_s = time.perf_counter() - t_cancel
next_s = timed(importer.prepare_photo(context, replace(opts, focal=1100.0), photo, client=client))
time.sleep(0.5)  # the access log is written as the answer goes out
out["mid"] = {
    "full_s": full_s,
    "running_at_cancel": running_at_cancel,
    "outcome": type(outcome).__name__,
    "ended_after_cancel_s": ended_s,
    "next_request_s": next_s,
    "logged_new": predictions_logged() - logged,  # the small request only
    "unchanged": settings() == before,
}

# ------------------------------------------------------------ not cancelled: as the sync path
importer._PREDICTIONS.clear()
request = importer.prepare_photo(context, opts, photo, client=client)
task = importer.PhotoTask(request).start()
doc = drive(task)
assert isinstance(doc, dict), doc
built = importer.build_photo(context, opts, task.request, doc)
objects = sorted(o.name for o in scene.objects)
verts = [
    _common.evaluated_vertices(m, world=True) for m in bpy.data.objects if m.type == "MESH"
]  # fmt: skip
mesh_names = [m.name for m in bpy.data.objects if m.type == "MESH"]
bpy.ops.wm.read_factory_settings(use_empty=True)
context = bpy.context
scene = context.scene
scene.render.resolution_x, scene.render.resolution_y = 1234, 567
scene.frame_start, scene.frame_end = 3, 77
importer._PREDICTIONS.clear()
logged = predictions_logged()
sync = importer.import_image(context, opts, photo, client=client)
sync_verts = [_common.evaluated_vertices(bpy.data.objects[n], world=True) for n in mesh_names]
out["complete"] = {
    "hands": len(built.armatures),
    "sync_hands": len(sync.armatures),
    "objects_same": objects == sorted(o.name for o in scene.objects),
    "max_vertex_diff_m": max(
        float(np.abs(a - b).max()) for a, b in zip(verts, sync_verts, strict=True)
    ),
    "sync_asked_backend": predictions_logged() - logged,
}
_common.emit(out)
