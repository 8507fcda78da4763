"""Retarget HAMR hands onto a generated Rigify rig and a Mixamo-named armature (headless bpy).

For both sides and the 8 named poses of backend.hand_model.poses: the HAMR hand is posed
(rig.pose_hand), `retarget.retarget` transfers it, and the result is measured on what Blender
evaluates, against the backend's own forward kinematics (HandModel keypoints):

- per finger bone, the angle between the target bone's direction (Rigify: its DEF bone, which
  the FK controls drive through Rigify's constraints; Mixamo: the bone itself) and the MANO
  bone's direction (joint -> child keypoint), each in its own hand frame (origin at the wrist,
  y to the middle knuckle, x towards the index knuckle made orthogonal, z = x cross y);
- fingertips relative to the wrist in the hand frame, divided by the hand length (wrist to middle
  knuckle plus the middle finger's bones at rest), compared between target and MANO.

The Mixamo armature is built here from the HAMR rest joints, scaled to centimetres, with its
fingers curled at rest (20-35 degrees per joint), random bone rolls, a forearm parent and an
object transform like an FBX import (rotation, scale 0.01). Then the error cases: no target, a
map with a missing bone, a target without hand bones: each raises with a message and leaves
every pose value and data-block as it was.
"""

from __future__ import annotations

import json
import sys

import _common
import _retarget_common
import bpy
import numpy as np
import torch

from backend.hand_model.model import HandModel
from backend.hand_model.poses import NAMED_POSES, named_pose
from backend.schema import rig_json as rig_data
from hamr_blender.blender import retarget, rig
from hamr_blender.io import bone_maps, payload
from hamr_blender.io.bone_maps import BoneMapError
from hamr_blender.io.retarget_math import RetargetError

rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
POSES = list(NAMED_POSES)[:8]
# MANO bone -> (head keypoint, tail keypoint) in the 21-keypoint order
KP = {"thumb": (1, 2, 3, 4), "index": (5, 6, 7, 8), "middle": (9, 10, 11, 12),
      "ring": (13, 14, 15, 16), "pinky": (17, 18, 19, 20)}  # fmt: skip
DIGITS = ("thumb", "index", "middle", "ring", "pinky")


def frame(wrist, index1, middle1, pinky1):
    """(3, 3) hand axes as rows (x, y, z) and the origin: measured independently of the code."""
    y = middle1 - wrist
    y /= np.linalg.norm(y)
    x = index1 - pinky1
    x -= x.dot(y) * y
    x /= np.linalg.norm(x)
    return np.stack([x, y, np.cross(x, y)]), wrist


def mano_reference(side: str, pose: np.ndarray, betas: np.ndarray):
    """Bone directions {digit: (3, 3)} and tips {digit: (3,)} in MANO's hand frame (keypoints)."""
    model = HandModel(side)
    with torch.no_grad():
        kp = (
            model(
                torch.tensor(pose, dtype=torch.float32)[None],
                torch.tensor(betas, dtype=torch.float32)[None],
            )
            .keypoints[0]
            .numpy()
            .astype(np.float64)
        )
        kp0 = (
            model(torch.zeros(1, 16, 3), torch.tensor(betas, dtype=torch.float32)[None])
            .keypoints[0]
            .numpy()
            .astype(np.float64)
        )
    axes, origin = frame(kp[0], kp[5], kp[9], kp[17])
    length = np.linalg.norm(kp0[9] - kp0[0]) + sum(
        np.linalg.norm(kp0[KP["middle"][k + 1]] - kp0[KP["middle"][k]]) for k in range(3)
    )
    dirs = {
        d: np.stack([axes @ (kp[KP[d][k + 1]] - kp[KP[d][k]]) for k in range(3)]) for d in DIGITS
    }
    tips = {d: axes @ (kp[KP[d][3]] - origin) / length for d in DIGITS}
    return dirs, tips


def _target_frame(arm, names: dict[str, list[str]], wrist: str):
    """The evaluated target's hand axes, origin and rest hand length."""
    bpy.context.view_layer.update()
    pb, bones = arm.pose.bones, arm.data.bones
    h = lambda n: np.array(pb[n].head)  # noqa: E731
    axes, origin = frame(
        h(wrist), h(names["index"][0]), h(names["middle"][0]), h(names["pinky"][0])
    )
    rest_len = np.linalg.norm(
        np.array(bones[names["middle"][0]].head_local) - np.array(bones[wrist].head_local)
    ) + sum(bones[n].length for n in names["middle"])
    return axes, origin, rest_len


def target_measure(arm, names: dict[str, list[str]], wrist: str):
    """Same measures on Blender's evaluated pose: names[digit] = the 3 bones measured."""
    axes, origin, rest_len = _target_frame(arm, names, wrist)
    pb = arm.pose.bones
    h = lambda n: np.array(pb[n].head)  # noqa: E731
    t = lambda n: np.array(pb[n].tail)  # noqa: E731
    dirs = {d: np.stack([axes @ (t(n) - h(n)) for n in names[d]]) for d in DIGITS}
    tips = {d: axes @ (t(names[d][2]) - origin) / rest_len for d in DIGITS}
    return dirs, tips


def pinch_gap(tips) -> float:
    """Thumb tip to index tip, hand lengths."""
    return float(np.linalg.norm(tips["thumb"] - tips["index"]))


def reach_floor(arm, names, wrist, ref_tips) -> dict:
    """The least distance (hand lengths) any rotation of the target finger's bones can bring its
    tip to MANO's, by geometry alone: a chain of bones l1..l3 from its first head reaches the
    shell between max(0, 2 max(l) - sum(l)) and sum(l) around that head."""
    axes, origin, rest_len = _target_frame(arm, names, wrist)
    pb, bones = arm.pose.bones, arm.data.bones
    h = lambda n: np.array(pb[n].head)  # noqa: E731
    out = {}
    for d in DIGITS:
        lens = [bones[n].length / rest_len for n in names[d]]
        dist = np.linalg.norm(ref_tips[d] - axes @ (h(names[d][0]) - origin) / rest_len)
        out[d] = float(max(0.0, dist - sum(lens), 2 * max(lens) - sum(lens) - dist))
    return out


def compare(ref, got) -> dict:
    angles = {}
    for d in DIGITS:
        a, b = ref[0][d], got[0][d]
        cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        angles[d] = np.degrees(np.arccos(np.clip(cos, -1, 1))).tolist()
    tips = {d: float(np.linalg.norm(ref[1][d] - got[1][d])) for d in DIGITS}
    return {
        "angles_deg": angles, "tip_err": tips,
        "pinch_gap": [pinch_gap(ref[1]), pinch_gap(got[1])],
        "ref_thumb_gap": {d: float(np.linalg.norm(ref[1][d] - ref[1]["thumb"])) for d in DIGITS},
    }  # fmt: skip


def build_hand(side: str, betas) -> bpy.types.Object:
    new = rig.NewData()
    arm, mesh, _ = rig.build_hand_rig(
        payload.parse_rig(rig_data(side)), betas, rig.RigOptions(name=f"Src {side}"), new
    )
    for obj in (arm, mesh):
        bpy.context.scene.collection.objects.link(obj)
    arm.location = (float(rng.normal()), 0.5, 1.0)  # the hands are anywhere in the world
    return arm


def rigify_names(s: str) -> dict[str, list[str]]:
    return {
        d: [f"DEF-{'thumb' if d == 'thumb' else 'f_' + d}.{k:02d}.{s}" for k in (1, 2, 3)]
        for d in DIGITS
    }


def mixamo_rig(hands: dict[str, bpy.types.Object]) -> bpy.types.Object:
    """A Mixamo-named armature from the HAMR rest joints: centimetres, curled rest, random roll."""
    arm_data = bpy.data.armatures.new("Mixamo")
    obj = bpy.data.objects.new("Mixamo", arm_data)
    bpy.context.scene.collection.objects.link(obj)
    obj.rotation_euler = (np.pi / 2, 0.0, 0.3)  # like an FBX import: Y-up turned, 1 cm units
    obj.scale = (0.01, 0.01, 0.01)
    with rig.armature_edit(obj) as arm:
        for side, word in (("left", "Left"), ("right", "Right")):
            bones = hands[side].data.bones
            hamr = bone_maps.BUILTIN_MAPS["HAMR"].bones(side)  # the HAMR rig's names
            src = {j: bones[hamr[j]] for j in bone_maps.JOINTS}
            offset = np.array([-30.0 if side == "left" else 30.0, 0.0, 0.0])
            to_cm = lambda p, o=offset: np.array(p) * 100.0 + o  # noqa: E731
            wrist = src["wrist"]
            fore = arm.edit_bones.new(f"mixamorig:{word}ForeArm")
            fore.head = (to_cm(wrist.head_local) - np.array([0, 25.0, 0])).tolist()
            fore.tail = to_cm(wrist.head_local).tolist()
            hand = arm.edit_bones.new(f"mixamorig:{word}Hand")
            hand.head, hand.tail = (
                to_cm(wrist.head_local).tolist(),
                to_cm(src["middle1"].head_local).tolist(),
            )
            hand.roll = float(rng.uniform(-np.pi, np.pi))
            hand.parent, hand.use_connect = fore, True
            for digit in DIGITS:
                joints = [to_cm(src[f"{digit}{k}"].head_local) for k in (1, 2, 3)]
                joints.append(to_cm(src[f"{digit}3"].tail_local))  # the fingertip
                # a curled rest: each joint bent 20-35 degrees about the palm's flexion axis
                palm_z = np.cross(joints[1] - joints[0], np.array([0, 0, 1.0]))
                axis = palm_z / np.linalg.norm(palm_z)
                pts = [joints[0]]
                direction_rot = np.eye(3)
                for k in range(3):
                    ang = np.radians(rng.uniform(20, 35))
                    kx = np.array(
                        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]
                    )
                    rot = np.eye(3) + np.sin(ang) * kx + (1 - np.cos(ang)) * kx @ kx
                    direction_rot = rot @ direction_rot
                    pts.append(pts[-1] + direction_rot @ (joints[k + 1] - joints[k]))
                parent = hand
                for k in range(3):
                    eb = arm.edit_bones.new(f"mixamorig:{word}Hand{digit.capitalize()}{k + 1}")
                    eb.head, eb.tail = pts[k].tolist(), pts[k + 1].tolist()
                    eb.roll = float(rng.uniform(-np.pi, np.pi))
                    eb.parent, eb.use_connect = parent, k > 0
                    parent = eb
                end = arm.edit_bones.new(f"mixamorig:{word}Hand{digit.capitalize()}4")
                end.head = pts[3].tolist()
                end.tail = (pts[3] + 0.3 * (pts[3] - pts[2])).tolist()
                end.parent, end.use_connect = parent, True
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    # a non-rest current pose of the forearm: the hand's frame is not the rest one
    obj.pose.bones["mixamorig:LeftForeArm"].rotation_quaternion = (0.9, 0.3, 0.2, 0.1)
    return obj


def mixamo_names(word: str) -> dict[str, list[str]]:
    return {d: [f"mixamorig:{word}Hand{d.capitalize()}{k}" for k in (1, 2, 3)] for d in DIGITS}


def pose_state(arm) -> list:
    return [
        (
            pb.name,
            tuple(round(v, 9) for v in (*pb.rotation_quaternion, *pb.location, *pb.rotation_euler)),
        )
        for pb in arm.pose.bones
    ]


bpy.ops.wm.read_factory_settings(use_empty=True)
context = bpy.context
betas = {s: rng.normal(0.0, 1.0, size=10) for s in ("right", "left")}
hands = {s: build_hand(s, betas[s]) for s in ("right", "left")}
rest_joints = {s: torch.tensor(json.loads(hands[s][rig.RIG_PROP])["joints_rest"]) for s in hands}
rigify = _retarget_common.rigify_rig()
mixamo = mixamo_rig(hands)
out: dict = {"poses": POSES, "rigify": {}, "mixamo": {}, "rigify_tips": {}, "mixamo_tips": {}}
for side, s, word in (("right", "R", "Right"), ("left", "L", "Left")):
    for name in POSES:
        pose = named_pose(name, rest_joints[side].float(), side).numpy().astype(np.float64)
        if name != "flat":  # and a random wrist turn, which must not matter
            pose[0] = rng.normal(0.0, 0.5, size=3)
        rig.pose_hand(hands[side], pose)
        ref = mano_reference(side, pose, betas[side])
        res = retarget.retarget(context, [hands[side]], rigify, retarget.RetargetOptions())
        out["rigify"].setdefault(side, {})[name] = compare(
            ref, target_measure(rigify, rigify_names(s), f"DEF-hand.{s}")
        )
        out["rigify_map"] = res.map_name
        fit = retarget.RetargetOptions(fingertips=True)
        retarget.retarget(context, [hands[side]], rigify, fit)
        out["rigify_tips"].setdefault(side, {})[name] = compare(
            ref, target_measure(rigify, rigify_names(s), f"DEF-hand.{s}")
        )
        out["rigify_tips"][side][name]["floor"] = reach_floor(
            rigify, rigify_names(s), f"DEF-hand.{s}", ref[1]
        )
        retarget.retarget(context, [hands[side]], mixamo, fit)
        out["mixamo_tips"].setdefault(side, {})[name] = compare(
            ref, target_measure(mixamo, mixamo_names(word), f"mixamorig:{word}Hand")
        )
        res = retarget.retarget(context, [hands[side]], mixamo, retarget.RetargetOptions())
        out["mixamo"].setdefault(side, {})[name] = compare(
            ref, target_measure(mixamo, mixamo_names(word), f"mixamorig:{word}Hand")
        )
        out["mixamo_map"] = res.map_name

# ------------------------------------------------------------ errors leave the scene as it was
errors = {}
before = (_common.snapshot(), pose_state(rigify))
try:
    retarget.retarget(context, [hands["right"]], None)
except BoneMapError as e:
    errors["no_target"] = str(e)
broken = bone_maps.BoneMap(
    "Broken", {"right": dict(bone_maps.BUILTIN_MAPS["RIGIFY"].sides["right"])}
)
broken.sides["right"]["ring2"] = "f_ring.02.R.typo"
try:
    retarget.retarget(context, [hands["right"]], rigify, retarget.RetargetOptions(bone_map=broken))
except BoneMapError as e:
    errors["missing_bone"] = str(e)
plain = bpy.data.objects.new("Plain", bpy.data.armatures.new("Plain"))
context.scene.collection.objects.link(plain)
with rig.armature_edit(plain) as arm:
    b = arm.edit_bones.new("Bone")
    b.head, b.tail = (0, 0, 0), (0, 0, 1)
before = (_common.snapshot(), pose_state(rigify))
try:
    retarget.retarget(context, [hands["right"]], plain)
except BoneMapError as e:
    errors["no_hand_bones"] = str(e)
try:
    retarget.retarget(context, [], rigify)
except RetargetError as e:
    errors["no_source"] = str(e)
errors["unchanged"] = (_common.snapshot(), pose_state(rigify)) == before
out["errors"] = errors
_common.emit(out)
