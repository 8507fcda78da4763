"""Bake a keyed HAMR take onto a generated Rigify rig, then export and re-import (headless bpy).

- bake: a synthetic 1,000-frame video take (benchmarks.blender's trajectory, keyed by
  scene.key_video) is baked onto the Rigify rig; timed (median of 3, the Rigify rig as generated);
  the action's channels are only the mapped bones' (the other bones untouched), signs continuous;
  at 4 frames Blender's evaluated DEF finger bones point as the HAMR bones do in the hand frame;
  the NLA option puts the take on a track, a second bake onto a rig that already plays an action
  goes to the NLA too; the undo-free cancel path (an error mid-bake) leaves no action behind.
- export: the HAMR hand (with β, 40 keyed frames) to FBX and GLB with `export.export_file`,
  re-imported with the matching options; at 5 frames the re-imported mesh's evaluated world
  vertices are matched to the original's (nearest vertex at the first frame, kept for the
  others: glTF splits vertices at material borders) and the largest distance is reported; the
  shape keys' names are read back.
- the retargeted character: the Rigify rig playing the baked take exported alone (FBX, GLB),
  re-imported; at 5 frames the world heads and rotations of its DEF hand and 15 DEF finger
  bones (those the skin follows) and the fingertips (distal heads + rotation x the original
  length: neither format stores bone tails) against the original's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import _common
import _retarget_common
import bpy
import numpy as np
from scipy.spatial import cKDTree

from backend.schema import rig_json as rig_data
from benchmarks.blender import _synthetic_video
from hamr_blender.blender import export, retarget, rig, scene
from hamr_blender.io import payload
from hamr_blender.io.retarget_math import RetargetError

FRAMES = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
DIGITS = ("thumb", "index", "middle", "ring", "pinky")
out: dict = {}
bpy.ops.wm.read_factory_settings(use_empty=True)
context = bpy.context
context.scene.render.fps, context.scene.render.fps_base = 24, 1.0
rigs = {"right": payload.parse_rig(rig_data("right"))}


def key_take(frames: int, name: str):
    new = rig.NewData()
    video = payload.parse_video(_synthetic_video(frames))
    res = scene.key_video(
        context, video, rigs, rig.RigOptions(name=name), scene.ImageSource("movie", "", ""),
        new, align=False,
    )  # fmt: skip
    return res.armatures[0], res.meshes[0]


def channels(action):
    return [fc for layer in action.layers for st in layer.strips for bag in st.channelbags
            for fc in bag.fcurves]  # fmt: skip


src, src_mesh = key_take(FRAMES, "Take")
gen = _retarget_common.rigify_rig()
times = []
for _ in range(3):
    for a in [a for a in bpy.data.actions if a.get(retarget.ACTION_PROP)]:
        bpy.data.actions.remove(a)
    gen.animation_data_clear()
    context.view_layer.update()
    t0 = time.perf_counter()
    res = retarget.retarget(context, [src], gen, retarget.RetargetOptions(mode="BAKE"))
    times.append(time.perf_counter() - t0)
action = gen.animation_data.action
curves = channels(action)
bone_names = {fc.data_path.split('"')[1] for fc in curves}
quat_dots = []
for bone in bone_names:
    q = np.stack([
        np.array([kp.co[1] for kp in next(
            fc for fc in curves if fc.data_path == f'pose.bones["{bone}"].rotation_quaternion'
            and fc.array_index == k).keyframe_points]) for k in range(4)], axis=1)  # fmt: skip
    quat_dots.append(float(np.min(np.sum(q[1:] * q[:-1], axis=1))))
def_names = _retarget_common.def_names("R")
angles = []
for f in (1, FRAMES // 3, FRAMES // 2, FRAMES):
    context.scene.frame_set(f)
    a = _retarget_common.hamr_dirs(src, "right")
    b = _retarget_common.rigify_dirs(gen, "R")
    angles.append(float(_retarget_common.angles_deg(a, b).max()))
out["bake"] = {
    "frames": res.frames, "median_s": float(np.median(times)), "times_s": times,
    "bones_keyed": sorted(bone_names), "fcurves": len(curves),
    "actions_on_target": 1 if gen.animation_data.action else 0,
    "min_consecutive_dot": min(quat_dots), "max_angle_deg_at_frames": angles,
    "key_count": len(curves[0].keyframe_points),
}  # fmt: skip

# NLA: asked for, and forced when the rig already plays an action
res2 = retarget.retarget(context, [src], gen, retarget.RetargetOptions(mode="BAKE"))
out["nla"] = {
    "active_kept": gen.animation_data.action == action,
    "tracks": [t.name for t in gen.animation_data.nla_tracks],
    "notes": res2.notes,
}
# an error inside the bake: nothing left behind
n_actions = len(bpy.data.actions)
tracks = len(gen.animation_data.nla_tracks)
orig = retarget._install_action


def failing(*args, **kwargs):
    orig(*args, **kwargs)
    raise RetargetError("cancelled")


retarget._install_action = failing
try:
    retarget.retarget(context, [src], gen, retarget.RetargetOptions(mode="BAKE", use_nla=True))
except RetargetError:
    pass
retarget._install_action = orig
out["cancel"] = {
    "actions_same": len(bpy.data.actions) == n_actions,
    "tracks_same": len(gen.animation_data.nla_tracks) == tracks,
}

# ------------------------------------------------- export round trip of the retargeted character
# the Rigify rig playing the baked take (its action and the NLA track): its DEF hand and finger
# bones' world heads and tails at 5 frames, against the re-imported armature's
context.scene.frame_start, context.scene.frame_end = 1, 40
rig_frames = (1, 9, 17, 29, 40)
rig_bones = ["DEF-hand.R", *def_names]


def bone_points(arm, f):
    """World heads of the bones, and the fingertips: the distal bones' heads plus their world
    y axes times the ORIGINAL rig's bone lengths (neither format stores a bone's tail: the
    importers guess bone lengths, so the re-imported tails are not compared)."""
    context.scene.frame_set(f)
    mw = np.array(arm.matrix_world)
    pts = []
    for name in rig_bones:
        pb = arm.pose.bones[name]
        m = mw @ np.array(pb.matrix)
        pts.append(m[:3, 3])
        if name.endswith((".03.R",)):
            pts.append(m[:3, 3] + m[:3, 1] / np.linalg.norm(m[:3, 1]) * lengths[name])
    return np.array(pts)


def bone_axes(arm, f):
    context.scene.frame_set(f)
    mw = np.array(arm.matrix_world)[:3, :3]
    out = []
    for name in rig_bones:
        m = mw @ np.array(arm.pose.bones[name].matrix)[:3, :3]
        out.append(m / np.linalg.norm(m, axis=0))
    return np.array(out)


lengths = {n: gen.data.bones[n].length * gen.matrix_world.to_scale()[1] for n in rig_bones}
rig_ref = {f: (bone_points(gen, f), bone_axes(gen, f)) for f in rig_frames}
rig_tmp = tempfile.mkdtemp(prefix="hamr-rig-export-")
rig_rt = {}
for ext in ("fbx", "glb"):
    path = os.path.join(rig_tmp, f"character.{ext}")
    exported = export.export_file(context, path, [gen])
    new_objs = export.import_file(path)
    arm = next(o for o in new_objs if o.type == "ARMATURE")
    errs, angs = [], []
    for f in rig_frames:
        pts, axes = bone_points(arm, f), bone_axes(arm, f)
        errs.append(float(np.linalg.norm(pts - rig_ref[f][0], axis=1).max()))
        # |R1 - R2|_F = 2 sqrt(2) sin(angle / 2): precise for small angles, unlike arccos
        diff = np.linalg.norm(axes - rig_ref[f][1], axis=(1, 2)) / (2 * np.sqrt(2))
        angs.append(float(np.degrees(2 * np.arcsin(np.clip(diff, 0, 1))).max()))
    moved = float(
        np.linalg.norm(rig_ref[rig_frames[-1]][0] - rig_ref[rig_frames[0]][0], axis=1).max()
    )
    rig_rt[ext] = {
        "exported": exported, "max_err_m": errs, "max_angle_deg": angs, "moved_m": moved,
        "animated": arm.animation_data is not None and arm.animation_data.action is not None,
        "bones": len(arm.data.bones), "size_bytes": os.path.getsize(path),
    }  # fmt: skip
    for o in new_objs:
        bpy.data.objects.remove(o)
out["rig_export"] = rig_rt

# ------------------------------------------------------------------ export round trip
for obj in list(context.scene.objects):  # a fresh, short take for the round trip
    if obj.get(rig.RIG_PROP) or obj.get(rig.KIND_PROP):
        bpy.data.objects.remove(obj)
context.view_layer.update()
hand, mesh = key_take(40, "Export")
rig.set_betas(hand, np.random.default_rng(0).normal(0, 1, 10))
context.scene.frame_start, context.scene.frame_end = 1, 40
check_frames = (1, 9, 17, 29, 40)


def world_verts(obj, f):
    context.scene.frame_set(f)
    return _common.evaluated_vertices(obj, world=True)


ref = {f: world_verts(mesh, f) for f in check_frames}
tmp = tempfile.mkdtemp(prefix="hamr-export-")
rt = {}
for ext in ("fbx", "glb"):
    path = os.path.join(tmp, f"hand.{ext}")
    names = export.export_file(context, path, [hand.parent, hand, mesh])
    new_objs = export.import_file(path)
    meshes = [o for o in new_objs if o.type == "MESH"]
    got_mesh = meshes[0]
    first = world_verts(got_mesh, check_frames[0])
    dist, match = cKDTree(ref[check_frames[0]]).query(first)
    errs = [float(dist.max())]
    for f in check_frames[1:]:
        errs.append(float(np.linalg.norm(world_verts(got_mesh, f) - ref[f][match], axis=1).max()))
    keys = got_mesh.data.shape_keys
    rt[ext] = {
        "exported": names, "max_err_m": errs, "size_bytes": os.path.getsize(path),
        "shape_keys": [] if keys is None else [k.name for k in keys.key_blocks],
        "vertices": [len(got_mesh.data.vertices), len(mesh.data.vertices)],
        "covered": len(set(match.tolist())),
    }  # fmt: skip
    for o in new_objs:
        bpy.data.objects.remove(o)
out["export"] = rt

# ------------------------------------------------------------------ hamr blend --retarget --export
rig_blend = os.path.join(tmp, "character.blend")
bpy.ops.wm.save_as_mainfile(filepath=rig_blend, copy=True)
bpy.ops.wm.read_factory_settings(use_empty=True)
context = bpy.context
hands = {}
for side in ("right", "left"):
    new = rig.NewData()
    arm, mesh, _ = rig.build_hand_rig(
        payload.parse_rig(rig_data(side)), None, rig.RigOptions(name=f"Hand {side}"), new
    )
    context.scene.collection.objects.link(arm)
    context.scene.collection.objects.link(mesh)
    pose = np.zeros((16, 3))
    pose[1:, 0] = 0.6  # every finger joint bent
    rig.pose_hand(arm, pose)
    hands[side] = arm
glb = os.path.join(tmp, "scene.glb")
steps = retarget.headless_steps(context, f"{rig_blend}:rig", glb)
target = bpy.data.objects[steps["target"]]
errors = {}
for spec in (f"{rig_blend}:nothing", os.path.join(tmp, "missing.blend")):
    try:
        retarget.headless_steps(context, spec, None)
    except RetargetError as e:
        errors[os.path.basename(spec)] = str(e)
out["headless"] = {
    "target": steps["target"],
    "exported": steps["exported"],
    "glb_bytes": os.path.getsize(glb),
    "armatures_in_scene": sorted(o.name for o in context.scene.objects if o.type == "ARMATURE"),
    "finger_rotated": float(
        np.degrees(target.pose.bones["f_index.02.R"].rotation_quaternion.angle)
    ),
    "finger_rotated_left": float(
        np.degrees(target.pose.bones["f_index.02.L"].rotation_quaternion.angle)
    ),
    "errors": errors,
}
_common.emit(json.loads(json.dumps(out)))
