"""Retarget what the animator sees: a HAMR hand moved only through its rig's controls (headless
bpy, the generated Rigify rig).

The HAMR hand's deform bones keep their channels at rest (identity rotations); the pose comes
from its curl controls (Copy Rotation constraints), its fingertip IK, or both, so a retarget that
read the deform bones' channels would see a flat hand. Measured on what Blender evaluates: the
HAMR hand's bones (head -> tail, after constraints) and the Rigify DEF finger bones, each in its
own hand frame (`_retarget_common.hand_dirs`, computed from the bone heads, not by the retarget
code), per finger bone the angle between them.

- pose: the curl controls turned (every digit, curl and spread) -> retarget (POSE);
- pose with the IK: the rig's fingertip IK on, the index's IK target moved into the palm;
- bake: a keyed video take (`scene.key_video`, 40 frames) whose index and middle curl controls
  are keyed too (0 at frame 1, 70 degrees at frame 40), baked onto a fresh Rigify rig; measured
  at frames 1, 13, 27, 40 after `frame_set`; the bake's keyed frames and its time.
Also: the scene's frame, its scenes and the HAMR hand's channels are as before.
"""

from __future__ import annotations

import math
import time

import _common
import _retarget_common as rc
import bpy
import numpy as np

from backend.schema import rig_json as rig_data
from benchmarks.blender import _synthetic_video
from hamr_blender.blender import retarget, rig, scene
from hamr_blender.io import bone_maps, payload
from hamr_blender.io.retarget_math import RetargetError

bpy.ops.wm.read_factory_settings(use_empty=True)
context = bpy.context
context.scene.render.fps, context.scene.render.fps_base = 24, 1.0
rig_r = payload.parse_rig(rig_data("right"))
CURLS = {
    "thumb": (40, 10),
    "index": (60, -12),
    "middle": (45, 0),
    "ring": (30, 5),
    "pinky": (70, 8),
}
out: dict = {}


def measure(src, gen) -> dict:
    context.view_layer.update()
    a, b = rc.hamr_dirs(src, "right"), rc.rigify_dirs(gen, "R")
    ang = rc.angles_deg(a, b)
    m = bone_maps.BUILTIN_MAPS["HAMR"].bones("right")
    # how far the HAMR fingers turned from their rest directions (the check is not vacuous)
    now = np.array([src.pose.bones[m[j]].y_axis for j in rc.MANO])
    rest = np.array([src.data.bones[m[j]].y_axis for j in rc.MANO])
    moved = rc.angles_deg(now, rest)
    return {
        "mean_deg": float(ang.mean()),
        "max_deg": float(ang.max()),
        "moved_deg": float(moved.max()),
    }


def channels_at_rest(src) -> bool:
    m = bone_maps.BUILTIN_MAPS["HAMR"].bones("right")
    return all(
        np.allclose(src.pose.bones[m[j]].rotation_quaternion, (1, 0, 0, 0))
        for j in bone_maps.JOINTS
    )


def hand() -> bpy.types.Object:
    new = rig.NewData()
    arm, mesh, _ = rig.build_hand_rig(rig_r, None, rig.RigOptions(name="Ctl"), new)
    context.scene.collection.objects.link(arm)
    context.scene.collection.objects.link(mesh)
    return arm


gen = rc.rigify_rig()
# ------------------------------------------------------------ the curl controls (pose)
src = hand()
for digit, (curl, spread) in CURLS.items():
    pb = src.pose.bones[f"{digit}_curl.R"]
    pb.rotation_euler = (math.radians(curl), 0.0, math.radians(spread))
res = retarget.retarget(context, [src], gen, retarget.RetargetOptions(mode="POSE"))
out["curl_pose"] = measure(src, gen) | {"at_rest": channels_at_rest(src), "frames": res.frames}

# ------------------------------------------------------------ the fingertip IK (pose)
for digit in CURLS:
    src.pose.bones[f"{digit}_curl.R"].rotation_euler = (0.0, 0.0, 0.0)
rig.set_option(src, rig.IK_PROP, 1.0)
ik = src.pose.bones["index_ik.R"]
ik.location = (0.0, -0.02, -0.03)  # back along the finger and into the palm (-Z)
context.view_layer.update()
retarget.retarget(context, [src], gen, retarget.RetargetOptions(mode="POSE"))
out["ik_pose"] = measure(src, gen) | {"at_rest": channels_at_rest(src)}
rig.set_option(src, rig.IK_PROP, 0.0)
ik.location = (0.0, 0.0, 0.0)

# ------------------------------------------------------------ a keyed take with keyed curls
new = rig.NewData()
take = scene.key_video(
    context, payload.parse_video(_synthetic_video(40)), {"right": rig_r},
    rig.RigOptions(name="Take"), scene.ImageSource("movie", "", ""), new, align=False,
).armatures[0]  # fmt: skip
for digit in ("index", "middle"):
    pb = take.pose.bones[f"{digit}_curl.R"]
    for frame, angle in ((1, 0.0), (40, 70.0)):
        pb.rotation_euler = (math.radians(angle), 0.0, 0.0)
        pb.keyframe_insert("rotation_euler", frame=frame)
gen.animation_data_clear()
for pb in gen.pose.bones:  # the rig as generated
    pb.rotation_quaternion, pb.rotation_euler = (1, 0, 0, 0), (0, 0, 0)
context.scene.frame_set(1)
scenes_before = sorted(s.name for s in bpy.data.scenes)
state_before = _common.scene_state()
t0 = time.perf_counter()
try:
    res = retarget.retarget(context, [take], gen, retarget.RetargetOptions(mode="BAKE"))
except RetargetError as e:  # (the code before the evaluated pose refused the keyed controls)
    out["bake_error"] = str(e)
    _common.emit(out)
    raise SystemExit(0) from None
bake_s = time.perf_counter() - t0
after = _common.scene_state()
bake = {
    "frames": res.frames,
    "seconds": bake_s,
    "frame_after": context.scene.frame_current,
    "scenes_same": sorted(s.name for s in bpy.data.scenes) == scenes_before,
    "new_actions": sorted(set(after["data"]["actions"]) - set(state_before["data"]["actions"])),
    "at": {},
}
for f in (1, 13, 27, 40):
    context.scene.frame_set(f)
    bake["at"][str(f)] = measure(take, gen)
# a hand disabled in viewports (which no viewport evaluates) is read as it would show
names = retarget.source_bones(take)
frames = np.array([1.0, 13.0, 27.0, 40.0])
shown = retarget.evaluated_frames(take, names, frames)[0]
take.hide_viewport = True
hidden = retarget.evaluated_frames(take, names, frames)[0]
bake["hidden_diff"] = float(np.abs(hidden - shown).max())
bake["hidden_kept"] = take.hide_viewport
out["bake"] = bake
_common.emit(out)
