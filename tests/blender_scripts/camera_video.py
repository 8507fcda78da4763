"""Camera alignment, video keying and failure safety in headless bpy, without a server.

1. Camera: a synthetic two-hand prediction whose keypoints2d are the backend hand model's
   keypoints projected with K (an independent pinhole, off-centre principal point, portrait
   image). After import with "align camera", the joints (pose-bone heads) and fingertips
   (evaluated tip vertices) projected through Blender's camera
   (bpy_extras.object_utils.world_to_camera_view, y flipped to pixels) must land on keypoints2d.
2. Video: a synthetic 30 fps track whose root rotation passes through 180 degrees (quaternion
   sign flips) keyed into a 24 fps scene: every video frame keyed at its time (scene frame
   1 + i * 24 / 30, none dropped), w >= 0 on every first key, continuous quaternion signs, no
   overshoot between keys, the frame range the take's, and the evaluated mesh at a keyed
   frame equal to the hand model in the camera frame.
3. Failure safety: an error injected after the rigs are built leaves no data-block behind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import _common
import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from backend.hand_model.constants import KEYPOINTS_FROM_JOINTS_AND_TIPS
from backend.schema import rig_json as rig_data
from hamr_blender.blender import camera, rig, scene
from hamr_blender.io import convert, payload

rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
out: dict = {}
W, H = 334, 512
K = np.array([[600.0, 0.0, 150.5], [0.0, 600.0, 270.25], [0.0, 0.0, 1.0]])
rigs = {side: payload.parse_rig(rig_data(side)) for side in ("right", "left")}


def synthetic_hand(side: str, transl) -> dict:
    pose = rng.normal(0.0, 0.4, size=(16, 3))
    betas = rng.normal(0.0, 1.0, size=10)
    _, kp = _common.hand_model_vertices(side, pose, betas, transl)  # (21, 3) camera frame
    uv = kp @ K.T
    return {
        "side": side,
        "score": 1.0,
        "box_xyxy": [0, 0, W, H],
        "pose_axis_angle": pose.tolist(),
        "betas": betas.tolist(),
        "cam_weak": [1, 0, 0],
        "camera": {"K": K.tolist()},
        "transl": list(transl),
        "joints3d_cam": kp.tolist(),
        "keypoints2d": (uv[:, :2] / uv[:, 2:]).tolist(),
    }


# ------------------------------------------------------------------------------ 1. camera
photo = os.path.join(tempfile.mkdtemp(), "photo.png")
img = bpy.data.images.new("photo", W, H)
img.filepath_raw, img.file_format = photo, "PNG"
img.save()
bpy.data.images.remove(img)
doc = {
    "schema": "hamr.prediction/1",
    "image": {"width": W, "height": H},
    "model": {"checkpoint": "synthetic", "hand_model": rigs["right"].hand_model},
    "hands": [synthetic_hand("right", (0.03, 0.05, 0.6)), synthetic_hand("left", (-0.1, 0.0, 0.7))],
}
prediction = payload.parse_prediction(doc)
context = bpy.context
context.scene.cursor.location = (1.0, 2.0, 0.5)
new = rig.NewData()
result = scene.import_prediction(
    context, prediction, rigs, rig.RigOptions(), scene.ImageSource("image", photo), new
)
cam_obj = context.scene.camera
dg = context.evaluated_depsgraph_get()
dg.update()
errors = []
for arm, mesh, hand in zip(result.armatures, result.meshes, prediction.hands, strict=True):
    names = json.loads(arm["hamr_rig"])["bone_names"]
    joints = [arm.matrix_world @ arm.pose.bones[n].head for n in names]  # 16, world
    verts = _common.evaluated_vertices(mesh, world=True)
    tips = [Vector(verts[i]) for i in rigs[hand.side].tip_vertex_ids]
    points = [(joints + tips)[i] for i in KEYPOINTS_FROM_JOINTS_AND_TIPS]  # 21 keypoints
    uv = []
    for p in points:
        ndc = world_to_camera_view(context.scene, cam_obj, p)
        uv.append(_common.camera_view_to_photo(ndc, context.scene, W, H))
    errors.append(float(np.abs(np.array(uv) - hand.keypoints2d).max()))
bg = cam_obj.data.background_images
out["camera"] = {
    "max_px_err": errors,
    "hands": len(result.armatures),
    "first_hand_at_cursor": float(
        np.abs(np.array(result.armatures[0].location) - (1.0, 2.0, 0.5)).max()
    ),
    "resolution": [context.scene.render.resolution_x, context.scene.render.resolution_y],
    "sensor_fit": cam_obj.data.sensor_fit,
    "type": cam_obj.data.type,
    "background": [b.image.filepath if b.image else None for b in bg],
    "show_background": cam_obj.data.show_background_images,
    "stored_prediction": json.loads(result.armatures[1]["hamr_prediction"].as_string())["hands"][0][
        "side"
    ],
}
# align_camera again after moving the hand: the camera follows the hand
arm0 = result.armatures[0]
arm0.location.x += 0.5
camera.align_camera(context, arm0, rig.NewData())
out["camera"]["camera_follows_hand"] = float(
    np.abs(
        np.array(cam_obj.matrix_world.translation)
        - convert.camera_location_for_hand(np.array(arm0.location), prediction.hands[0].transl)
    ).max()
)

# Set Resolution: the render size becomes the photo's, the old one kept and restorable; the
# joints still land on keypoints2d
render = context.scene.render
size_before = [render.resolution_x, render.resolution_y, render.resolution_percentage]
camera.align_camera(context, result.armatures[1], rig.NewData(), set_resolution=True)
set_size = [render.resolution_x, render.resolution_y]
arm1, hand1 = result.armatures[1], prediction.hands[1]
names = json.loads(arm1["hamr_rig"])["bone_names"]
dg.update()
uv = [
    _common.camera_view_to_photo(
        world_to_camera_view(context.scene, cam_obj, arm1.matrix_world @ arm1.pose.bones[n].head),
        context.scene, W, H,
    )
    for n in names
]  # fmt: skip
joint_kp = [KEYPOINTS_FROM_JOINTS_AND_TIPS.index(j) for j in range(16)]
out["set_resolution"] = {
    "before": size_before,
    "set": set_size,
    "stored": list(context.scene.get("hamr_previous_resolution", [])),
    "px_err": float(np.abs(np.array(uv) - hand1.keypoints2d[joint_kp]).max()),
    "restored": camera.restore_resolution(context.scene),
    "after_restore": [render.resolution_x, render.resolution_y, render.resolution_percentage],
}

# ------------------------------------------------------------------------------ 2. video keying
scene_ = context.scene
scene_.render.fps, scene_.render.fps_base = 24, 1.0
scene_.frame_start = 1
n = 45
t = np.linspace(0.0, 1.0, n)
axis = np.array([0.3, 0.9, 0.3]) / np.linalg.norm([0.3, 0.9, 0.3])
base_pose = rng.normal(0.0, 0.3, size=(16, 3))
betas = rng.normal(0.0, 1.0, size=10)
frames_doc = []
for i in range(n):
    pose = base_pose * (0.5 + 0.5 * np.sin(3 * t[i]))
    pose[0] = axis * (0.2 + 1.6 * np.pi * t[i])  # root turns through 180 degrees
    transl = [0.05 * np.sin(4 * t[i]), 0.02 * t[i], 0.6 + 0.1 * t[i]]
    hand = synthetic_hand("right", transl)
    hand.update(pose_axis_angle=pose.tolist(), betas=betas.tolist(), track=0)
    frames_doc.append({"index": i, "hands": [hand]})
video = payload.parse_video({"schema": "hamr.video/1", "fps": 30.0, "frames": frames_doc})
movie = scene.ImageSource("movie", "", "")
before = _common.snapshot()
vres = scene.key_video(context, video, rigs, rig.RigOptions(name="Video"), movie, rig.NewData())
arm = vres.armatures[0]
action = arm.animation_data.action
fcurves = [
    fc
    for layer in action.layers
    for strip in layer.strips
    for bag in strip.channelbags
    for fc in bag.fcurves
]
expected_frames = [1 + i * 24 / 30 for i in range(n)]  # by time: fractional scene frames
counts = {len(fc.keyframe_points) for fc in fcurves}
names = json.loads(arm["hamr_rig"])["bone_names"]


def curve(path: str, index: int):
    return next(fc for fc in fcurves if fc.data_path == path and fc.array_index == index)


min_dot, overshoot, first_w = 1.0, 0.0, 1.0
for name in names:
    path = f'pose.bones["{name}"].rotation_quaternion'
    chans = [curve(path, k) for k in range(4)]
    keys = np.array([[kp.co[1] for kp in c.keyframe_points] for c in chans]).T  # (N, 4)
    min_dot = min(min_dot, float(np.min(np.sum(keys[1:] * keys[:-1], axis=1))))
    first_w = min(first_w, float(keys[0, 0]))
    # between two keys the curve stays between them: the rotation half-way is no farther from
    # either key than the keys are from each other (no spin the long way round)
    for a in range(len(expected_frames) - 1):
        f0, f1 = expected_frames[a], expected_frames[a + 1]
        mid = np.array([c.evaluate(0.5 * (f0 + f1)) for c in chans])
        mid /= np.linalg.norm(mid)
        step = np.arccos(min(1.0, abs(float(keys[a] @ keys[a + 1]))))
        far = max(np.arccos(min(1.0, abs(float(mid @ keys[a])))), 0.0)
        overshoot = max(overshoot, float(far - step))
# the evaluated hand at a keyed frame, in the camera frame, equals the hand model
idx = 20
frame = 1 + idx * 24 / 30  # 17.0: a whole frame
scene_.frame_set(int(frame), subframe=frame - int(frame))
origin = arm.parent
verts_world = _common.evaluated_vertices(vres.meshes[0], world=True)
verts_cam = convert.blender_to_model(verts_world - np.array(origin.matrix_world.translation))
hand = video.frames[idx][1][0]
ref, _ = _common.hand_model_vertices("right", hand.pose_axis_angle, betas, hand.transl)
# without the continuity pass the root's quaternions would flip sign somewhere on this track
root_rest = np.array(arm.data.bones[names[0]].matrix_local.to_3x3())[None]
raw = convert.bone_local_rotations(
    np.stack([h[0].pose_axis_angle[:1] for _, h in video.frames]), root_rest
)[:, 0]
out["video"] = {
    "raw_min_consecutive_dot": float(np.min(np.sum(raw[1:] * raw[:-1], axis=1))),
    "expected_frames": len(expected_frames),
    "key_counts": sorted(counts),
    "first_last_key": [
        curve("location", 0).keyframe_points[0].co[0],
        curve("location", 0).keyframe_points[-1].co[0],
    ],
    "expected_first_last": [expected_frames[0], expected_frames[-1]],
    "fcurves": len(fcurves),
    "min_consecutive_dot": min_dot,
    "min_first_w": first_w,
    "max_overshoot_rad": overshoot,
    "mesh_err_at_frame_m": float(np.abs(verts_cam - ref).max()),
    "frame_end": scene_.frame_end,
    "new_objects": sorted(set(_common.snapshot()["objects"]) - set(before["objects"])),
}

# ------------------------------------------------------------------------------ 3. failure safety
before = _common.scene_state()
original = scene.pose_hand


def broken_pose(*args, **kwargs):
    raise RuntimeError("injected failure after the rigs were built")


scene.pose_hand = broken_pose
new = rig.NewData()
error = None
try:
    scene.import_prediction(
        context, prediction, rigs, rig.RigOptions(), scene.ImageSource("image", photo), new
    )
except RuntimeError as e:
    error = str(e)
    created = len(new.ids)
    new.remove_all()
scene.pose_hand = original
out["failure"] = {
    "error": error,
    "created_before_error": created,
    "unchanged": _common.scene_state() == before,
}
_common.emit(out)
