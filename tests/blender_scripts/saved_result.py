"""hamr.import_result in headless Blender: a saved `hamr predict --json` result builds the same
hands as importing the photo through the backend, a saved `hamr video --json` keys its tracks, and
a file that is no result is refused with the scene unchanged.

argv: ZIP URL PHOTO PREDICTION_JSON VIDEO_JSON NOT_A_RESULT. The reference for the photo: the
same photo imported with hamr.import_image (the backend gives the same result to the bit every
time), compared on the evaluated meshes' vertices.
"""

from __future__ import annotations

import sys

import _common
import bpy
import numpy as np

zip_path, url, photo, prediction_json, video_json, junk = sys.argv[1:7]
_common.install_extension(zip_path, url)


def mesh_vertices() -> list[np.ndarray]:
    """World-space evaluated vertices of the scene's HAMR hand meshes, by object name."""
    deps = bpy.context.evaluated_depsgraph_get()
    out = []
    for obj in sorted(bpy.context.scene.objects, key=lambda o: o.name):
        if obj.type == "MESH" and obj.parent is not None and obj.parent.type == "ARMATURE":
            ev = obj.evaluated_get(deps)
            out.append(np.array([ev.matrix_world @ v.co for v in ev.data.vertices]))
    return out


def clear() -> None:
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)


options = dict(side="right", refine=True, align_camera=False, detector="auto")
out: dict = {}
bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
assert bpy.ops.hamr.import_image(filepath=photo, **options) == {"FINISHED"}
reference = mesh_vertices()
clear()
result = bpy.ops.hamr.import_result(filepath=prediction_json, source_path=photo, **options)
loaded = mesh_vertices()
out["photo_result"] = list(result)
out["photo_hands"] = [len(reference), len(loaded)]
out["photo_max_diff_m"] = max(
    (float(np.abs(a - b).max()) for a, b in zip(reference, loaded, strict=True)), default=None
)
clear()
result = bpy.ops.hamr.import_result(filepath=video_json, **options)
arms = [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]
out["video_result"] = list(result)
out["video_rigs"] = len(arms)
out["video_keyed"] = bool(arms) and all(
    a.animation_data is not None and a.animation_data.action is not None for a in arms
)
clear()
before = _common.scene_state()
try:
    refused = list(bpy.ops.hamr.import_result(filepath=junk, **options))
except RuntimeError as e:  # background mode raises the operator's ERROR report
    refused = ["CANCELLED", str(e)]
out["junk"] = refused
out["junk_unchanged"] = _common.scene_state() == before
_common.emit(out)
