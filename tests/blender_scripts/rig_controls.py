"""The animator's rig (issue #22) in headless bpy, against the backend's hand model.

For both sides with a random shape: the named poses (fist, point, pinch, spread) set through
the bones' Euler controls (ZYX: spread, then flexion) with the rig's IK and limits at their
defaults (off) give HandModel's vertices; the flexion-only joints read as one X rotation equal
to the named pose's angle; each bone's X axis against the backend's own flexion axes (torch
code, backend.hand_model.poses.digit_axes); Blender's pose copy + paste flipped from the left
hand onto the right gives the right hand of MANO's mirror rule (axis-angle (x, -y, -z));
the IK and the rotation limits switched on do what they say; collections, custom shapes, the
UV map.
"""

from __future__ import annotations

import json
import math

import _common
import bpy
import numpy as np
import torch
from mathutils import Quaternion

from backend.hand_model.poses import DIGIT_JOINTS, NAMED_POSES, digit_axes, named_pose
from backend.schema import rig_json
from hamr_blender.blender import rig
from hamr_blender.io import convert, payload

POSES = ("fist", "point", "pinch", "spread")
rng = np.random.default_rng(3)
beta = rng.normal(0.0, 0.8, size=10)
out: dict = {"sides": {}}
arms = {}


def evaluate() -> None:
    bpy.context.view_layer.update()


def set_controls(arm, pose) -> None:
    """A MANO pose through the bones' Euler controls (ZYX order: spread about Z, then X)."""
    names = rig.joint_bones(arm)
    quats = convert.bone_local_rotations(
        np.asarray(pose)[None], rig.bone_rest_rotations(arm, names)
    )
    for name, q in zip(names, quats[0], strict=True):
        pb = arm.pose.bones[name]
        pb.rotation_mode = "ZYX"
        pb.rotation_euler = Quaternion(q.tolist()).to_euler("ZYX")


def mesh_error(arm, mesh, side, pose) -> float:
    evaluate()
    got = convert.blender_to_model(_common.evaluated_vertices(mesh))
    ref, _ = _common.hand_model_vertices(side, pose, beta)
    return float(np.abs(got - ref).max())


for side in ("right", "left"):
    new = rig.NewData()
    data = payload.parse_rig(rig_json(side))
    arm, mesh, _ = rig.build_hand_rig(data, beta, rig.RigOptions(name=f"Hand {side}"), new)
    for obj in (arm, mesh):
        bpy.context.scene.collection.objects.link(obj)
    arms[side] = (arm, mesh)
    names = rig.joint_bones(arm)
    rest_joints = torch.tensor(data.joints(beta))
    res: dict = {"named_err_m": {}, "curl": {}}
    for name in POSES:
        pose = named_pose(name, rest_joints, side).double().numpy()
        set_controls(arm, pose)
        res["named_err_m"][name] = mesh_error(arm, mesh, side, pose)
        # flexion-only joints: the fingers' first two (no spread in these poses' fingers but
        # "spread"), the thumb's first; their Euler X against the pose's angle in degrees
        curl = []
        for digit, (j1, j2, _) in DIGIT_JOINTS.items():
            angles = NAMED_POSES[name].get(digit, (0, 0, 0, 0))
            for k, j in enumerate((j1, j2)):
                if digit == "thumb" and k == 1:
                    continue  # the thumb's MCP is not perpendicular to its flexion axis
                if k == 0 and angles[3] != 0:
                    continue  # spread and flexion together
                e = arm.pose.bones[names[j]].rotation_euler
                curl.append([math.degrees(e.x) - angles[k], math.degrees(abs(e.y) + abs(e.z))])
        res["curl"][name] = np.abs(np.array(curl)).max(axis=0).tolist()
    # each bone's X axis (model frame) against the backend's flexion axis of its digit
    axes = digit_axes(rest_joints, side)
    x_err, roll_vs_index = {}, None
    for digit, joints in DIGIT_JOINTS.items():
        flex = axes[digit][0].double().numpy()
        errs = []
        for j in joints:
            x = convert.blender_to_model(np.array(arm.data.bones[names[j]].matrix_local.col[0][:3]))
            errs.append(math.degrees(math.acos(min(1.0, float(np.dot(x, flex))))))
        x_err[digit] = errs
    xi = np.array(arm.data.bones[names[1]].matrix_local.col[0][:3])
    xt = np.array(arm.data.bones[names[13]].matrix_local.col[0][:3])
    roll_vs_index = math.degrees(math.acos(float(np.dot(xi, xt))))
    res["x_axis_err_deg"] = x_err
    res["thumb_vs_index_axis_deg"] = roll_vs_index
    # IK: on at rest the fingers stay put; the index target moved 3 cm out of the palm pulls
    # the fingertip there (reached), the finger bending in its own plane
    set_controls(arm, np.zeros((16, 3)))
    evaluate()
    heads0 = np.array([arm.pose.bones[n].head for n in names])
    rig.set_option(arm, rig.IK_PROP, 1.0)
    evaluate()
    heads1 = np.array([arm.pose.bones[n].head for n in names])
    res["ik_rest_move_m"] = float(np.abs(heads1 - heads0).max())
    s_ = "R" if side == "right" else "L"
    ik = arm.pose.bones[f"index_ik.{s_}"]
    palm = convert.model_to_blender(convert.palm_normal(data.joints(beta), side))
    target = np.array(ik.head) + 0.03 * palm
    ik.location = (np.array(ik.bone.matrix_local.to_3x3()).T @ (0.03 * palm)).tolist()
    evaluate()
    tip = np.array(arm.pose.bones[f"index4.{s_}"].head)
    flex_b = convert.model_to_blender(axes["index"][0].double().numpy())
    res["ik_reach_m"] = float(np.linalg.norm(tip - target))
    res["ik_out_of_plane_m"] = float(abs(np.dot(tip - heads0[1], flex_b)))
    res["ik_tip_moved_m"] = float(np.linalg.norm(tip - (target - 0.03 * palm)))
    ik.location = (0, 0, 0)
    rig.set_option(arm, rig.IK_PROP, 0.0)
    # limits: a bent-back index PIP (-40 degrees) is held at its limit (0) once switched on
    pose = np.zeros((16, 3))
    pose[2] = -math.radians(40.0) * axes["index"][0].double().numpy()
    set_controls(arm, pose)
    res["limits_off_err_m"] = mesh_error(arm, mesh, side, pose)
    rig.set_option(arm, rig.LIMITS_PROP, 1.0)
    evaluate()
    res["limits_on_err_m"] = mesh_error(arm, mesh, side, np.zeros((16, 3)))
    fist = named_pose("fist", rest_joints, side).double().numpy()
    set_controls(arm, fist)
    res["limits_on_fist_err_m"] = mesh_error(arm, mesh, side, fist)
    rig.set_option(arm, rig.LIMITS_PROP, 0.0)
    evaluate()
    # the rig's parts
    colls = {c.name: sorted(b.name for b in c.bones) for c in arm.data.collections}
    res["collections"] = {k: len(v) for k, v in colls.items()}
    res["tips_visible"] = arm.data.collections["Tips"].is_visible
    res["deform_in_deform"] = (
        sorted(b.name for b in arm.data.bones if b.use_deform) == colls["Deform"]
    )
    res["shapes"] = sum(pb.custom_shape is not None for pb in arm.pose.bones)
    res["ik_constraints"] = sum(c.type == "IK" for pb in arm.pose.bones for c in pb.constraints)
    res["limit_constraints"] = sum(
        c.type == "LIMIT_ROTATION" and c.owner_space == "LOCAL"
        for pb in arm.pose.bones for c in pb.constraints
    )  # fmt: skip
    uv = mesh.data.uv_layers.get("UVMap")
    co = np.empty(len(mesh.data.loops) * 2)
    uv.data.foreach_get("uv", co)
    tri = co.reshape(-1, 3, 2)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    res["uv"] = {
        "range": [float(co.min()), float(co.max())],
        "positive_area_fraction": float(np.mean(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0)),
    }
    res["bone_names"] = [b.name for b in arm.data.bones]
    out["sides"][side] = res

# mirror paste: a left-hand pose copied and pasted flipped onto the right hand
(larm, _), (rarm, rmesh) = arms["left"], arms["right"]
out["mirror_err_m"] = {}
view_layer = bpy.context.view_layer
for label in ("random", *POSES):
    if label == "random":
        pose = rng.normal(0.0, 0.5, size=(16, 3))
    else:
        pose = (
            named_pose(
                label, torch.tensor(payload.parse_rig(rig_json("left")).joints(beta)), "left"
            )
            .double()
            .numpy()
        )
    rig.pose_hand(larm, pose)
    rig.pose_hand(rarm, np.zeros((16, 3)))
    for src, op in ((larm, "copy"), (rarm, "paste")):
        for obj in view_layer.objects:
            obj.select_set(False)
        view_layer.objects.active = src
        src.select_set(True)
        bpy.ops.object.mode_set(mode="POSE")
        bpy.ops.pose.select_all(action="SELECT")
        if op == "copy":
            assert bpy.ops.pose.copy() == {"FINISHED"}
        else:
            assert bpy.ops.pose.paste(flipped=True) == {"FINISHED"}
        bpy.ops.object.mode_set(mode="OBJECT")
    mirrored = pose * np.array([1.0, -1.0, -1.0])  # DESIGN.md: MANO's mirror rule
    out["mirror_err_m"][label] = mesh_error(rarm, rmesh, "right", mirrored)
_common.emit(json.loads(json.dumps(out)))
