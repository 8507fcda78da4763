"""The animator's rig (issue #22) in headless bpy, against the backend's hand model.

For both sides with a random shape: the named poses (fist, point, pinch, spread) set through
the bones' Euler controls (ZYX: spread, then flexion) with the rig's IK and limits at their
defaults (off) give HandModel's vertices; the flexion-only joints read as one X rotation equal
to the named pose's angle; each bone's X axis against the backend's own flexion axes (torch
code, backend.hand_model.poses.digit_axes); Blender's pose copy + paste flipped from the left
hand onto the right gives the right hand of MANO's mirror rule (axis-angle (x, -y, -z));
the IK and the rotation limits switched on do what they say; collections, custom shapes, the
UV map.

The curl controls (one per digit: X curls its three joints, Z spreads its base) are measured on
the evaluated pose bones: each joint's rotation relative to its parent, in MANO's frame, against
the backend's own flexion axes and palm normal (torch code), with SciPy's rotations as the
second library; and end to end, a random keyed pose plus every control turned gives the
backend's vertices for the composed MANO pose (Rot(f, a) Rot(n, b) R on the base joint,
Rot(f, a) R on the others).
"""

from __future__ import annotations

import json
import math

import _common
import bpy
import numpy as np
import torch
from mathutils import Quaternion
from scipy.spatial.transform import Rotation

from backend.hand_model.poses import DIGIT_JOINTS, NAMED_POSES, digit_axes, named_pose, palm_normal
from backend.schema import encode_array, rig_json
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


def relative_rotations(arm, data) -> np.ndarray:
    """(16, 3, 3) each joint's evaluated rotation relative to its parent, in MANO's (model)
    frame: G_j = P_j B_j^T (posed over rest, armature frame), R_j = G_parent^T G_j."""
    evaluate()
    names = rig.joint_bones(arm)
    posed = [np.array(arm.pose.bones[n].matrix)[:3, :3] for n in names]
    rest = [np.array(arm.data.bones[n].matrix_local)[:3, :3] for n in names]
    g = np.array([p @ r.T for p, r in zip(posed, rest, strict=True)])
    rel = np.array([g[j] if p < 0 else g[p].T @ g[j] for j, p in enumerate(data.parents)])
    m = convert.MODEL_TO_BLENDER
    return m.T @ rel @ m


def rotation_error_deg(got: np.ndarray, want: np.ndarray) -> float:
    """Largest angle (degrees) between rotation matrices (..., 3, 3) got and want."""
    diff = Rotation.from_matrix(np.swapaxes(want, -1, -2) @ got)
    return float(np.degrees(np.max(diff.magnitude())))


def set_curls(arm, side, values: dict) -> None:
    """digit -> (curl, spread) in radians on the digit's curl control (its Euler X, Z)."""
    s_ = "R" if side == "right" else "L"
    for digit in DIGIT_JOINTS:
        curl, spread = values.get(digit, (0.0, 0.0))
        arm.pose.bones[f"{digit}_curl.{s_}"].rotation_euler = (curl, 0.0, spread)


def composed_pose(pose, values: dict, axes: dict, normal) -> np.ndarray:
    """The MANO pose a keyed `pose` (16, 3) plus the curl controls' `values` (digit -> (curl,
    spread)) should give: Rot(f, a) Rot(n, b) R on a digit's base, Rot(f, a) R on the others."""
    composed = np.array(pose, dtype=np.float64)
    for digit, joints in DIGIT_JOINTS.items():
        curl, spread = values.get(digit, (0.0, 0.0))
        r_curl = Rotation.from_rotvec(curl * axes[digit][0])
        for k, j in enumerate(joints):
            r = r_curl * Rotation.from_rotvec(spread * normal) if k == 0 else r_curl
            composed[j] = (r * Rotation.from_rotvec(pose[j])).as_rotvec()
    return composed


def backend_axes(data, side) -> tuple[dict, np.ndarray]:
    """The backend's (torch) digit -> (flexion, spread) axes and palm normal, numpy."""
    rest_joints = torch.tensor(data.joints(beta))
    axes = digit_axes(rest_joints, side)
    axes = {d: (f.double().numpy(), s.double().numpy()) for d, (f, s) in axes.items()}
    return axes, palm_normal(rest_joints, side).double().numpy()


def curl_checks(arm, mesh, data, side) -> dict:
    """The curl controls against the backend's axes (see the module docstring)."""
    axes, normal = backend_axes(data, side)
    rig.pose_hand(arm, np.zeros((16, 3)))
    res: dict = {"curl": {}, "spread": {}}
    a, b = math.radians(50.0), math.radians(15.0)
    for digit, joints in DIGIT_JOINTS.items():
        flex = axes[digit][0]
        set_curls(arm, side, {digit: (a, 0.0)})
        rel = relative_rotations(arm, data)
        want = np.tile(np.eye(3), (16, 1, 1))
        want[list(joints)] = Rotation.from_rotvec(a * flex).as_matrix()
        rotvec = Rotation.from_matrix(rel[list(joints)]).as_rotvec()
        others = [j for j in range(1, 16) if j not in joints]
        res["curl"][digit] = {
            "err_deg": rotation_error_deg(rel, want),
            # each joint's flexion about the backend's axis, and how far its axis is from it
            "flexion_deg": np.degrees(rotvec @ flex).tolist(),
            "off_axis_deg": np.degrees(np.linalg.norm(np.cross(rotvec, flex), axis=-1)).tolist(),
            "others_deg": rotation_error_deg(rel[others], np.tile(np.eye(3), (len(others), 1, 1))),
        }
        set_curls(arm, side, {digit: (0.0, b)})
        rel = relative_rotations(arm, data)
        want = np.tile(np.eye(3), (16, 1, 1))
        want[joints[0]] = Rotation.from_rotvec(b * normal).as_matrix()
        res["spread"][digit] = {
            "err_deg": rotation_error_deg(rel, want),
            "base_deg": float(np.degrees(Rotation.from_matrix(rel[joints[0]]).magnitude())),
            # +1: a positive Z turns the digit away from the middle finger (the backend's
            # spread), -1: towards it
            "away_sign": float(np.sign(np.dot(axes[digit][1], normal))),
        }
    set_curls(arm, side, {})
    res["rest_err_deg"] = rotation_error_deg(
        relative_rotations(arm, data)[1:], np.tile(np.eye(3), (15, 1, 1))
    )
    # end to end: a random keyed pose and every control turned; the deform channels keep
    # their keys (the controls act through constraints)
    pose = rng.normal(0.0, 0.3, size=(16, 3))
    rig.pose_hand(arm, pose)
    channels = [tuple(arm.pose.bones[n].rotation_quaternion) for n in rig.joint_bones(arm)]
    values = {d: tuple(rng.uniform(-0.3, 1.2, size=2) * (1.0, 0.3)) for d in DIGIT_JOINTS}
    set_curls(arm, side, values)
    composed = composed_pose(pose, values, axes, normal)
    res["composed_err_m"] = mesh_error(arm, mesh, side, composed)
    res["channels_kept"] = channels == [
        tuple(arm.pose.bones[n].rotation_quaternion) for n in rig.joint_bones(arm)
    ]
    set_curls(arm, side, {})
    res["back_to_rest_err_m"] = mesh_error(arm, mesh, side, pose)
    rig.pose_hand(arm, np.zeros((16, 3)))
    return res


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
    res["controls"] = curl_checks(arm, mesh, data, side)
    # the rig's parts
    colls = {c.name: sorted(b.name for b in c.bones) for c in arm.data.collections}
    res["collections"] = {k: len(v) for k, v in colls.items()}
    res["tips_visible"] = arm.data.collections["Tips"].is_visible
    res["mechanism_visible"] = arm.data.collections["Mechanism"].is_visible
    res["deform_in_deform"] = (
        sorted(b.name for b in arm.data.bones if b.use_deform) == colls["Deform"]
    )
    res["shapes"] = sum(pb.custom_shape is not None for pb in arm.pose.bones)
    res["ik_constraints"] = sum(c.type == "IK" for pb in arm.pose.bones for c in pb.constraints)
    curl_targets = {f"{d}_{k}.{s_}" for d in DIGIT_JOINTS for k in ("curl", "curl_mch")}
    res["curl_constraints"] = sum(
        c.type == "COPY_ROTATION" and c.subtarget in curl_targets
        for pb in arm.pose.bones for c in pb.constraints
    )  # fmt: skip
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

# pose correctives follow the controls too: a right hand with random non-zero correctives (the
# open hand model has none), a keyed pose and every curl control turned
doc = rig_json("right")
n_v = len(payload.decode_array(doc["v_template"]))
posedirs = rng.normal(0.0, 0.01, size=(n_v, 3, 135))
doc = dict(doc, posedirs=encode_array(posedirs, "f4"), pose_correctives_zero=False)
posedirs = payload.decode_array(doc["posedirs"]).astype(np.float64)  # what Blender gets
data = payload.parse_rig(doc)
arm, mesh, _ = rig.build_hand_rig(data, beta, rig.RigOptions(name="Correctives"), rig.NewData())
for obj in (arm, mesh):
    bpy.context.scene.collection.objects.link(obj)
pose = rng.normal(0.0, 0.3, size=(16, 3))
values = {d: tuple(rng.uniform(0.2, 1.2, size=2) * (1.0, 0.3)) for d in DIGIT_JOINTS}
rig.pose_hand(arm, pose)
set_curls(arm, "right", values)
evaluate()
got = convert.blender_to_model(_common.evaluated_vertices(mesh))
composed = composed_pose(pose, values, *backend_axes(data, "right"))
ref, _ = _common.hand_model_vertices("right", composed, beta, posedirs=posedirs)
flat, _ = _common.hand_model_vertices("right", composed, beta, posedirs=np.zeros_like(posedirs))
out["correctives"] = {
    "err_m": float(np.abs(got - ref).max()),
    "corrective_size_m": float(np.abs(ref - flat).max()),
}

# mirror paste: a left-hand pose copied and pasted flipped onto the right hand
(larm, _), (rarm, rmesh) = arms["left"], arms["right"]
out["mirror_err_m"] = {}
view_layer = bpy.context.view_layer
left_data = payload.parse_rig(rig_json("left"))
for label in ("random", *POSES, "curl_controls"):
    values = {}
    if label == "random":
        pose = rng.normal(0.0, 0.5, size=(16, 3))
    elif label == "curl_controls":  # a keyed pose and every curl control turned
        pose = rng.normal(0.0, 0.3, size=(16, 3))
        values = {d: tuple(rng.uniform(-0.3, 1.2, size=2) * (1.0, 0.3)) for d in DIGIT_JOINTS}
    else:
        pose = (
            named_pose(
                label, torch.tensor(payload.parse_rig(rig_json("left")).joints(beta)), "left"
            )
            .double()
            .numpy()
        )
    rig.pose_hand(larm, pose)
    set_curls(larm, "left", values)
    rig.pose_hand(rarm, np.zeros((16, 3)))
    set_curls(rarm, "right", {})
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
    pose = composed_pose(pose, values, *backend_axes(left_data, "left"))  # the left's pose
    mirrored = pose * np.array([1.0, -1.0, -1.0])  # DESIGN.md: MANO's mirror rule
    out["mirror_err_m"][label] = mesh_error(rarm, rmesh, "right", mirrored)
_common.emit(json.loads(json.dumps(out)))
