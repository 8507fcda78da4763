"""The two bpy halves of the `hamr blend --retarget --export` end-to-end test.

retarget_cli.py rig OUT.blend         a .blend holding a generated Rigify human rig
retarget_cli.py check SCENE.blend EXPORT
    open the scene `hamr blend` saved: its armatures, for each HAMR hand the largest angle
    between each finger bone's direction and the Rigify DEF bone's (each in its own hand
    frame: origin at the wrist, y to the middle knuckle, x towards the index knuckle made
    orthogonal), each digit's tip gap (tip relative to the wrist over the hand's length, in
    the hand frame), and the Rigify finger controls' rotation; then the export re-imported
    into an empty scene: its armatures, how many carry animation (an active action or an NLA
        strip), the largest one's bone count, its meshes.
"""

from __future__ import annotations

import sys

import _common
import bpy
import numpy as np

from hamr_blender.blender import export
from hamr_blender.io import bone_maps
from hamr_blender.io.retarget_math import hand_frame

DIGITS = ("thumb", "index", "middle", "ring", "pinky")


def dirs(arm, names: dict[str, str]) -> np.ndarray:
    """(15, 3) finger bone directions in the hand frame; names: MANO joint -> bone."""
    pb = arm.pose.bones
    head = lambda j: np.array(arm.matrix_world @ pb[names[j]].head)  # noqa: E731
    tail = lambda j: np.array(arm.matrix_world @ pb[names[j]].tail)  # noqa: E731
    # the hand frame as retarget_math builds it (checked by hand in test_retarget_pure)
    axes = hand_frame(head("wrist"), head("index1"), head("middle1"), head("pinky1"))[:3, :3].T
    return np.array([axes @ (tail(j) - head(j)) for j in bone_maps.FINGER_JOINTS])


def tips(arm, names: dict[str, str]) -> np.ndarray:
    """(5, 3) each digit's tip (the tail of its last bone) relative to the wrist, in the hand
    frame, divided by the hand's length (wrist to the middle finger's tip)."""
    pb = arm.pose.bones
    head = lambda j: np.array(arm.matrix_world @ pb[names[j]].head)  # noqa: E731
    axes = hand_frame(head("wrist"), head("index1"), head("middle1"), head("pinky1"))[:3, :3].T
    ends = np.array([np.array(arm.matrix_world @ pb[names[f"{d}3"]].tail) for d in DIGITS])
    rel = ends - head("wrist")
    return (rel @ axes.T) / np.linalg.norm(rel[DIGITS.index("middle")])


if sys.argv[1] == "rig":
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    meta = bpy.context.active_object
    bpy.ops.pose.rigify_generate()
    bpy.data.objects.remove(meta)  # the character file holds the generated rig only
    bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2])
    _common.emit({"armatures": [o.name for o in bpy.data.objects if o.type == "ARMATURE"]})
    sys.exit(0)

bpy.ops.wm.open_mainfile(filepath=sys.argv[2])
scene = bpy.context.scene
hands = [o for o in scene.objects if o.type == "ARMATURE" and o.get("hamr_rig")]
rigs = [o for o in scene.objects if o.type == "ARMATURE" and not o.get("hamr_rig")]
out: dict = {"hands": [], "rigs": [o.name for o in rigs]}
rig = rigs[0] if rigs else None
for hand in hands:
    import json

    side = json.loads(hand["hamr_rig"])["side"]
    s = {"left": "L", "right": "R"}[side]
    deform = {"wrist": f"DEF-hand.{s}"}
    for d in DIGITS:
        for k in (1, 2, 3):
            deform[f"{d}{k}"] = f"DEF-{'thumb' if d == 'thumb' else 'f_' + d}.{k:02d}.{s}"
    hamr_bones = bone_maps.BUILTIN_MAPS["HAMR"].bones(side)
    a = dirs(hand, hamr_bones)
    b = dirs(rig, deform)
    tip_gap = np.linalg.norm(tips(hand, hamr_bones) - tips(rig, deform), axis=1)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    controls = bone_maps.BUILTIN_MAPS["RIGIFY"].bones(side)
    turned = [
        float(np.degrees(rig.pose.bones[controls[j]].rotation_quaternion.angle))
        for j in bone_maps.FINGER_JOINTS
    ]
    out["hands"].append(
        {
            "side": side,
            "mean_deg": float(angles.mean()),
            "max_deg": float(angles.max()),
            "controls_turned_max_deg": max(turned),
            "tips": dict(zip(DIGITS, tip_gap.tolist(), strict=True)),
        }  # fmt: skip
    )
bpy.ops.wm.read_factory_settings(use_empty=True)
objs = export.import_file(sys.argv[3])
arms = [o for o in objs if o.type == "ARMATURE"]
out["imported"] = {
    "armatures": len(arms),
    # the glTF importer puts each object's animation on an NLA track and makes only the first
    # one active: an armature counts as animated with an active action or an NLA strip
    "animated": sum(
        1
        for o in arms
        if o.animation_data is not None
        and (
            o.animation_data.action is not None
            or any(s.action for t in o.animation_data.nla_tracks for s in t.strips)
        )
    ),
    "rig_bones": max((len(o.data.bones) for o in arms), default=0),
    "meshes": sum(1 for o in objs if o.type == "MESH"),
}
_common.emit(out)
