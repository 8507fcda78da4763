"""A photo's take in headless bpy, without a server (issue #22).

1. Confidence: a prediction whose hands a detector found with scores 0.10 (a false box) and
   0.60 builds only the second; only low scores, or no hand, is a "no hand found: pass the
   hand's box" error that leaves the scene as it was; given boxes are built whatever the score.
2. The take: a new collection named for the photo; the pose keyed into an action at the start
   frame with w >= 0 on every bone's key; score and signals stored on the rig.
3. glTF: the file with that one hand exported with the exporter's default options and imported
   into an empty file (the importer makes only the first animation active), the
   hand at frame 1 is the photo's pose: every vertex of the backend's posed hand model
   (HandModel(theta, beta), placed where the rig stands) has an imported vertex within 3 mm
   (the exporter may reorder or split vertices, and keeps 4 skin influences per vertex),
   while the flat rest hand is far off.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import _common
import bpy
import numpy as np
from mathutils import Vector
from mathutils.kdtree import KDTree

from backend.schema import rig_json as rig_data
from hamr_blender.blender import rig, scene
from hamr_blender.io import convert, payload

rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
out: dict = {}
W, H = 320, 240
K = np.array([[400.0, 0.0, 160.0], [0.0, 400.0, 120.0], [0.0, 0.0, 1.0]])
rigs = {"right": payload.parse_rig(rig_data("right"))}


def hand(score: float) -> dict:
    pose = rng.normal(0.0, 0.5, size=(16, 3))
    pose[2] = [0.0, 0.0, 1.75]  # index2 bent 100 degrees: Shepperd's sign may give w < 0
    betas = rng.normal(0.0, 1.0, size=10)
    transl = [0.01, 0.02, 0.5]
    _, kp = _common.hand_model_vertices("right", pose, betas, transl)
    uv = kp @ K.T
    return {
        "side": "right",
        "score": score,
        "box_xyxy": [0, 0, W, H],
        "pose_axis_angle": pose.tolist(),
        "betas": betas.tolist(),
        "cam_weak": [1, 0, 0],
        "camera": {"K": K.tolist()},
        "transl": transl,
        "joints3d_cam": kp.tolist(),
        "keypoints2d": (uv[:, :2] / uv[:, 2:]).tolist(),
        "fit": {"signals": ["mediapipe_2d", "network"], "network_weight": 0.25,
                "rms_px_before": 9.0, "rms_px_after": 2.0},
    }  # fmt: skip


def prediction(hands: list[dict], detector) -> payload.Prediction:
    return payload.parse_prediction(
        {
            "schema": "hamr.prediction/1",
            "image": {"width": W, "height": H},
            "model": {"checkpoint": "synthetic", "hand_model": rigs["right"].hand_model},
            "detector": detector,
            "hands": hands,
        }
    )


context = bpy.context
photo = scene.ImageSource("image", os.path.join(tempfile.mkdtemp(), "trumpet.jpg"))


def build(pred):
    new = rig.NewData()
    try:
        return scene.import_prediction(
            context, pred, rigs, rig.RigOptions(), photo, new, align=False, location=(0, 0, 0)
        )
    except BaseException:
        new.remove_all()
        raise


# 1. confidence
before = _common.scene_state()
errors = []
for pred in (prediction([hand(0.10), hand(0.09)], "hamr"), prediction([], "hamr")):
    try:
        build(pred)
        errors.append(None)
    except scene.SceneBuildError as e:
        errors.append(str(e))
out["errors"] = errors
out["unchanged_after_errors"] = _common.scene_state() == before
given = build(prediction([hand(0.05)], None))
out["given_box_low_score"] = len(given.armatures)
for obj in given.meshes + given.armatures:  # one hand in the file to export
    action = obj.animation_data.action if obj.animation_data else None
    bpy.data.objects.remove(obj)
    if action is not None:
        bpy.data.actions.remove(action)
good = hand(0.60)
result = build(prediction([hand(0.10), good], "hamr"))
out["built"] = len(result.armatures)
out["notes"] = result.notes
arm = result.armatures[0]
out["stored"] = {
    "score": arm.get("hamr_score"),
    "signals": arm.get("hamr_signals"),
    "network_weight": arm.get("hamr_network_weight"),
}
out["collections"] = [c.name for c in arm.users_collection]
action = arm.animation_data.action if arm.animation_data else None
fcurves = (
    [fc for ly in action.layers for st in ly.strips for b in st.channelbags for fc in b.fcurves]
    if action
    else []
)
names = json.loads(arm["hamr_rig"])["bone_names"]
first_w = [
    fc.keyframe_points[0].co[1]
    for fc in fcurves
    if fc.data_path.endswith("rotation_quaternion") and fc.array_index == 0
]
out["action"] = {
    "fcurves": len(fcurves),
    "key_frames": sorted({kp.co[0] for fc in fcurves for kp in fc.keyframe_points}),
    "min_first_w": min(first_w) if first_w else None,
    "bones_w": min(arm.pose.bones[n].rotation_quaternion[0] for n in names),
}
# the reference: the backend's posed hand in the Blender world, where the rig stands
ref, _ = _common.hand_model_vertices("right", good["pose_axis_angle"], good["betas"])
ref_world = convert.model_to_blender(ref) + np.array(arm.location)
rest, _ = _common.hand_model_vertices("right", np.zeros((16, 3)), good["betas"])
rest_world = convert.model_to_blender(rest) + np.array(arm.location)
out["blender_err_m"] = float(
    np.abs(_common.evaluated_vertices(result.meshes[0], world=True) - ref_world).max()
)

# 3. glTF with the default options, imported into an empty file
path = os.path.join(tempfile.mkdtemp(), "hand.glb")
bpy.ops.object.select_all(action="DESELECT")
out["export"] = sorted(bpy.ops.export_scene.gltf(filepath=path))
bpy.ops.wm.read_factory_settings(use_empty=True)
out["import"] = sorted(bpy.ops.import_scene.gltf(filepath=path))
bpy.context.scene.frame_set(1)
meshes = [o for o in bpy.data.objects if o.type == "MESH"]
verts = np.concatenate([_common.evaluated_vertices(m, world=True) for m in meshes])
tree = KDTree(len(verts))
for i, v in enumerate(verts):
    tree.insert(Vector(v), i)
tree.balance()


def farthest(points) -> float:
    return float(max(tree.find(Vector(p))[2] for p in points))


out["gltf"] = {
    "meshes": len(meshes),
    "pose_err_m": farthest(ref_world),
    "rest_err_m": farthest(rest_world),
    "actions": len(bpy.data.actions),
}
_common.emit(out)
