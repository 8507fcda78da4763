"""hamr.import_result in headless Blender: a saved `hamr predict --json` result builds the same
hands as importing the photo through the backend, a saved `hamr video --json` keys its tracks, and
a file that is no result is refused with the scene unchanged.

argv: ZIP URL PHOTO PREDICTION_JSON VIDEO_JSON NOT_A_RESULT OTHER_PREDICTION_JSON. The reference
for the photo: the same photo imported with hamr.import_image (the backend gives the same result
to the bit every time), compared on the evaluated meshes' vertices. Then Apply to Active Hand:
another photo's result keyed onto that hand at frame 10 (no new hand), its rotations there
against the same result built as a new hand, and no quaternion sign flip from frame 1.
"""

from __future__ import annotations

import json
import sys

import _common
import bpy
import numpy as np

zip_path, url, photo, prediction_json, video_json, junk, other_json = sys.argv[1:8]
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
# Apply to Active Hand: the other photo's pose keyed at frame 10 onto the hand just built
hand = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
bpy.context.view_layer.objects.active = hand
names = [b.name for b in hand.pose.bones if b.rotation_mode == "QUATERNION"]


def rotations(arm) -> np.ndarray:
    return np.array([list(arm.pose.bones[n].rotation_quaternion) for n in names])


bpy.context.scene.frame_set(1)
at_one = rotations(hand)
bpy.context.scene.frame_set(10)
objects_before = len(bpy.data.objects)
result = bpy.ops.hamr.import_result(filepath=other_json, apply_to_active=True, **options)
out["apply_result"] = list(result)
out["apply_new_objects"] = len(bpy.data.objects) - objects_before
bpy.context.scene.frame_set(10)
applied = rotations(hand)
bpy.context.scene.frame_set(1)
out["apply_frame1_kept"] = float(np.abs(rotations(hand) - at_one).max())
out["apply_min_dot_1_to_10"] = float(np.min(np.sum(at_one * applied, axis=1)))
# the reference: the other result built as a new hand with this hand's shape (bone rests, and
# so the keyed local rotations, depend on the shape; the applied hand keeps its own)
with open(other_json) as fh:
    other = json.load(fh)
betas = [float(b) for b in hand.data["hamr_hand"]["betas"]]
for h in other["hands"]:
    h["betas"] = betas
same_shape = other_json.replace(".json", "_same_shape.json")
with open(same_shape, "w") as fh:
    json.dump(other, fh)
clear()
assert bpy.ops.hamr.import_result(filepath=same_shape, **options) == {"FINISHED"}
fresh = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
bpy.context.scene.frame_set(1)
built = rotations(fresh)
out["apply_max_rotation_diff"] = float(
    np.min([np.abs(applied - built).max(axis=1), np.abs(applied + built).max(axis=1)], axis=0).max()
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
