"""Build the rigged hand in Blender from the backend's rig data (``hamr.rig/1``).

What gets built (`build_hand_rig`), all in the Blender frame (convert.MODEL_TO_BLENDER), objects
with identity rotation and scale:

- an armature: one bone per MANO joint (16, MANO order and names), head at the joint of the
  shaped hand, tail at the child joint (the wrist's at middle1, a distal joint's at its
  fingertip), Z axis towards the back of the hand; plus 5 fingertip bones (non-deforming, head at
  the fingertip vertex) to pin IK targets or read fingertips. No bone is connected, so heads stay
  exactly on the joints whatever the shape;
- a mesh parented to it with an Armature modifier (linear blend skinning, no preserve-volume)
  and one vertex group per deforming bone, weights from the hand model;
- shape keys: ``Basis`` (the template), ``beta_00``..``beta_09`` (shape directions, values = β)
  and, when the hand model has them, 135 pose correctives ``pose_<joint>_<r><c>`` whose value is
  driven by the joint's bone: entry (r, c) of MANO's (R - I) (convert.corrective_driver_
  expressions, simple expressions that run without Python auto-run);
- two materials (skin, nails).

Why this reproduces MANO exactly. Blender skins a vertex with sum_j w_j P_j B_j^-1 where B_j is
bone j's rest matrix (rotation C_j, head J_j) and P_j = P_parent B_parent^-1 B_j L_j its posed
matrix, L_j the pose-bone rotation. By induction P_j B_j^-1 = A_parent [C_j L_j C_j^T, J_j -
C_j L_j C_j^T J_j], and MANO's skinning transform is A_j = A_parent [R_j, J_j - R_j J_j]: they are
equal when L_j = C_j^T R_j C_j (R_j in the armature frame), whatever the C_j. Shape keys are applied
before the Armature modifier, as MANO adds shape and pose offsets before skinning.

Changing β after import. The joints depend on β (J = joints_rest + joints_shapedirs @ β).
`set_betas` writes the β shape-key values *and* moves the rest bones to the new joints, by
translation only: each bone keeps its rest orientation C_j, so the bones' pose rotations and the
corrective drivers (which depend on C_j) stay valid. The rig stores what it needs for that on
the armature (``hamr_rig`` custom property: rest joints, their shape directions, fingertips), so
it works in a later session without the backend. In the UI, `Object.hamr_betas` calls
`set_betas` on every change (registered by `register`).

Imports bpy and numpy; the geometry comes from convert.py and payload.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import bpy
import numpy as np

from ..io import convert
from ..io.bone_maps import hamr_bone_name
from ..io.payload import NUM_BETAS, RigData

RIG_PROP = "hamr_rig"  # JSON on the armature object: what set_betas needs
IK_PROP = "hamr_ik"  # on the armature object: the fingertip IKs' influence (0: off, the default)
LIMITS_PROP = "hamr_limits"  # on the armature object: the rotation limits' influence (0: off)
HAND_PROPS = "hamr_hand"  # the Armature's property group (`HandSettings`: the shape slider)
# bone collections; the tips and the curl controls' mechanism hidden
COLLECTIONS = ("Deform", "Controls", "Tips", "Mechanism")
HIDDEN_COLLECTIONS = ("Tips", "Mechanism")
WIDGET_PREFIX = "HAMR WGT "
KIND_PROP = "hamr_kind"  # "armature" / "mesh" / "camera" on HAMR's objects
SKIN_RGBA = (0.80, 0.57, 0.47, 1.0)
NAIL_RGBA = (0.90, 0.72, 0.68, 1.0)
BETA_KEY = "beta_{:02d}"
CORRECTIVES = ("AUTO", "ON", "OFF")


class RigBuildError(RuntimeError):
    """The rig could not be built (the message is for the user)."""


# ------------------------------------------------------------------------------ bookkeeping
@dataclass
class NewData:
    """Data-blocks created by one operation, so a failure can remove them all (scene unchanged).

    Everything is built into new data-blocks that are not linked to the user's scene; `link_all`
    is the last step. On an error, `remove_all` deletes what was created, newest first."""

    ids: list = field(default_factory=list)

    def add(self, id_block):
        self.ids.append(id_block)
        return id_block

    def remove_all(self) -> None:
        collections = {
            bpy.types.Object: bpy.data.objects,
            bpy.types.Mesh: bpy.data.meshes,
            bpy.types.Armature: bpy.data.armatures,
            bpy.types.Material: bpy.data.materials,
            bpy.types.Action: bpy.data.actions,
            bpy.types.Camera: bpy.data.cameras,
            bpy.types.Image: bpy.data.images,
            bpy.types.MovieClip: bpy.data.movieclips,
            bpy.types.Scene: bpy.data.scenes,
            bpy.types.Collection: bpy.data.collections,
            bpy.types.Text: bpy.data.texts,
        }
        for id_block in reversed(self.ids):
            for cls, coll in collections.items():
                if isinstance(id_block, cls):
                    try:
                        coll.remove(id_block)
                    except (ReferenceError, RuntimeError):
                        pass  # already gone (e.g. removed with its owner)
                    break
        self.ids.clear()


@contextmanager
def armature_edit(arm_obj: bpy.types.Object) -> Iterator[bpy.types.Armature]:
    """Edit mode on `arm_obj` without touching the user's scene or selection.

    The object is linked into a temporary scene, made active there and switched to edit mode
    with a context override; the scene is removed afterwards. If the armature already is in
    edit mode, its edit bones are used as they are. A previous pose mode is restored."""
    arm = arm_obj.data
    if arm.is_editmode:
        yield arm
        return
    was_pose = arm_obj.mode == "POSE"
    tmp = bpy.data.scenes.new("HAMR temporary")
    try:
        tmp.collection.objects.link(arm_obj)
        view_layer = tmp.view_layers[0]
        view_layer.objects.active = arm_obj
        with bpy.context.temp_override(
            scene=tmp, view_layer=view_layer, active_object=arm_obj, object=arm_obj
        ):
            bpy.ops.object.mode_set(mode="EDIT")
            if not arm.is_editmode:
                raise RigBuildError("could not enter edit mode on the armature")
            try:
                yield arm
            finally:
                # mode_set(OBJECT) is a no-op under this override; the toggle writes the bones back
                bpy.ops.object.editmode_toggle()
                if arm.is_editmode:
                    bpy.ops.object.mode_set(mode="OBJECT")
                if was_pose:
                    bpy.ops.object.mode_set(mode="POSE")
    finally:
        bpy.data.scenes.remove(tmp)


# ------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class RigOptions:
    """How to build a hand."""

    name: str = "HAMR Hand"
    shape_keys: bool = True  # β as shape keys (else the shape is baked into the mesh)
    correctives: str = "AUTO"  # AUTO: when the model has any; ON: always; OFF: never


def _bone_tails(rig: RigData, joints_b: np.ndarray, tips_b: np.ndarray) -> np.ndarray:
    """(16, 3) tail of each joint bone (Blender frame): its child joint, the wrist's middle1,
    a distal joint's fingertip."""
    tails = np.zeros_like(joints_b)
    children: dict[int, list[int]] = {}
    for j, p in enumerate(rig.parents):
        if p >= 0:
            children.setdefault(p, []).append(j)
    middle1 = rig.joint_names.index("middle1") if "middle1" in rig.joint_names else None
    for j in range(len(joints_b)):
        kids = children.get(j, [])
        if j == 0:
            tails[j] = joints_b[middle1 if middle1 is not None else kids[len(kids) // 2]]
        elif kids:
            tails[j] = joints_b[kids[0]]
        else:
            tails[j] = tips_b[rig.tip_parents.index(j)]
    return tails


def _rig_record(rig: RigData, names: list[str], tip_bones: list[str], follow: list) -> str:
    """The JSON stored on the armature (compact: no spaces, float32 precision): the MANO joint
    names and the bones that play them, the rest joints and fingertips and their shape
    directions (model frame, metres) for `set_betas`, and how each bone follows them."""
    tip_dirs = rig.shapedirs[rig.tip_vertex_ids]  # (5, 3, 10)

    def arr(a) -> list:
        return np.asarray(a, dtype=np.float32).tolist()

    return json.dumps(
        {
            "side": rig.side,
            "hand_model": rig.hand_model,
            "joint_names": rig.joint_names,  # MANO's (the backend's) names, MANO order
            "bone_names": names,  # the bones playing them ("index1.R")
            "tip_names": rig.tip_names,
            "tip_bones": tip_bones,
            "joints_rest": rig.joints_rest.tolist(),
            "joints_shapedirs": arr(rig.joints_shapedirs),
            "tips_rest": rig.v_template[rig.tip_vertex_ids].tolist(),
            "tips_shapedirs": arr(tip_dirs),
            "tip_vertex_ids": rig.tip_vertex_ids.tolist(),
            "follow": [[b, k, i, arr(o), arr(v)] for b, k, i, o, v in follow],
        },
        separators=(",", ":"),
    )


def _bone_z_axes(rig: RigData, joints_m: np.ndarray, vectors_b: np.ndarray) -> np.ndarray:
    """(16, 3) the Z axis (Blender frame) each joint bone's roll aligns to, so that its local X
    is its digit's flexion axis (`convert.digit_axes`, the backend's; a positive X rotation curls
    towards the palm, Z points out of the palm) made perpendicular to the bone; the wrist's Z is
    the palm normal. The thumb gets its own flexion axis, not the palm's."""
    axes = convert.digit_axes(joints_m, rig.side)
    flex = np.zeros((len(rig.joint_names), 3))
    for digit, joints in convert.DIGIT_JOINTS.items():
        flex[list(joints)] = axes[digit][0]
    flex_b = convert.model_to_blender(flex)
    y = vectors_b / np.linalg.norm(vectors_b, axis=-1, keepdims=True)
    x = flex_b - np.sum(flex_b * y, axis=-1, keepdims=True) * y
    z = np.cross(x, y)
    z[0] = convert.model_to_blender(convert.palm_normal(joints_m, rig.side))
    return z


def _new_bone(edit_arm, name: str, head, vector, z_axis, deform: bool = True):
    eb = edit_arm.edit_bones.new(name)
    eb.head, eb.tail = np.asarray(head).tolist(), (np.asarray(head) + vector).tolist()
    eb.align_roll(np.asarray(z_axis).tolist())
    eb.use_connect = False  # heads stay exactly on the joints whatever the shape
    eb.use_deform = deform
    return eb


def _ik_bones(edit_arm, rig, bones, joints_b, tips_b, tails_b, z_axes) -> list:
    """Each digit's IK target (at its fingertip) and pole (behind its middle joint, on the back
    of the hand), children of the wrist bone; returns their `follow` entries."""
    out = []
    wrist = bones[0]
    for digit, (_, j2, j3) in convert.DIGIT_JOINTS.items():
        t = rig.tip_parents.index(j3)
        vec = 0.5 * (tails_b[j3] - joints_b[j3])
        ik = _new_bone(edit_arm, hamr_bone_name(f"{digit}_ik", rig.side), tips_b[t], vec,
                       z_axes[j3], deform=False)  # fmt: skip
        ik.parent = wrist
        out.append([ik.name, "tip", t, [0.0] * 3, vec.tolist()])
        length = float(np.linalg.norm(tails_b[j2] - joints_b[j2]))
        offset = -2.0 * length * z_axes[j2] / np.linalg.norm(z_axes[j2])  # dorsal
        pvec = 0.4 * (tails_b[j2] - joints_b[j2])
        pole = _new_bone(edit_arm, hamr_bone_name(f"{digit}_pole", rig.side),
                         joints_b[j2] + offset, pvec, z_axes[j2], deform=False)  # fmt: skip
        pole.parent = wrist
        out.append([pole.name, "joint", j2, offset.tolist(), pvec.tolist()])
    return out


def _curl_bones(edit_arm, rig, bones, joints_b, tips_b, tails_b, joints_m) -> list:
    """Each digit's curl control (``index_curl.R``: X curls, Z spreads) and its mechanism bone
    (``index_curl_mch.R``, hidden: the control's curl alone), children of the wrist; returns
    their `follow` entries.

    The control lies above the digit's base joint on the back of the hand, along the digit (its
    first bone projected onto the palm's plane), with X the digit's flexion axis and Z the palm
    normal exactly (`convert.digit_axes`, the backend's): X = Y x Z = d x n."""
    out = []
    wrist = bones[0]
    axes = convert.digit_axes(joints_m, rig.side)
    n_b = convert.model_to_blender(convert.palm_normal(joints_m, rig.side))
    for digit, (j1, _, j3) in convert.DIGIT_JOINTS.items():
        flex_b = convert.model_to_blender(axes[digit][0])
        along = np.cross(n_b, flex_b)  # the digit's direction in the palm's plane
        tip = tips_b[rig.tip_parents.index(j3)]
        vec = 0.9 * float(np.dot(tip - joints_b[j1], along)) * along
        length = float(np.linalg.norm(tails_b[j1] - joints_b[j1]))
        offset = -0.6 * length * n_b  # on the back of the hand, below the poles
        for suffix in ("curl", "curl_mch"):
            eb = _new_bone(edit_arm, hamr_bone_name(f"{digit}_{suffix}", rig.side),
                           joints_b[j1] + offset, vec, n_b, deform=False)  # fmt: skip
            eb.parent = wrist
            out.append([eb.name, "joint", j1, offset.tolist(), vec.tolist()])
    return out


def _curl_constraints(arm_obj, rig: RigData, names: list[str], colls, widget) -> None:
    """The curl controls drive the digits' joints (the deform bones keep their own channels,
    so the imported keys stay exact while the controls are at rest).

    Each joint gets a Copy Rotation (mix *Before Original*, owner in its local space, the target
    read in *Local Space (Owner Orientation)*): its local rotation L becomes D L, where D is the
    target's own rotation turned into the joint's rest frame, C_j^T B R B^T C_j (B the target's
    rest orientation, R its local rotation). With B's X the digit's flexion axis f, in MANO's
    terms the joint's rotation becomes Rot(f, a) R_j, about f exactly whatever the bone's own
    axes. The base joint follows the control (curl and spread); the middle and distal joints
    follow the mechanism bone, which copies only the control's X rotation (Euler ZYX, the
    control's own order), so the spread turns the base alone. Each joint curls by the control's
    full angle."""
    for digit, joints in convert.DIGIT_JOINTS.items():
        control = hamr_bone_name(f"{digit}_curl", rig.side)
        mch = hamr_bone_name(f"{digit}_curl_mch", rig.side)
        pb = arm_obj.pose.bones[control]
        colls["Controls"].assign(pb)
        pb.custom_shape = widget
        pb.color.palette = "THEME06"
        pb.rotation_mode = "ZYX"  # spread (Z) first, then curl (X): MANO's named poses' order
        pb.lock_location = pb.lock_scale = (True, True, True)
        pb.lock_rotation = (False, True, False)  # no twist
        mpb = arm_obj.pose.bones[mch]
        colls["Mechanism"].assign(mpb)
        con = mpb.constraints.new("COPY_ROTATION")
        con.name = "HAMR Curl"
        con.target, con.subtarget = arm_obj, control
        con.use_y = con.use_z = False
        con.euler_order = "ZYX"
        con.target_space = con.owner_space = "LOCAL"
        for k, j in enumerate(joints):
            jpb = arm_obj.pose.bones[names[j]]
            con = jpb.constraints.new("COPY_ROTATION")
            con.name = "HAMR Curl"
            con.target, con.subtarget = arm_obj, control if k == 0 else mch
            con.mix_mode = "BEFORE"
            con.target_space = "LOCAL_OWNER_ORIENT"
            con.owner_space = "LOCAL"
            jpb.constraints.move(len(jpb.constraints) - 1, 0)  # before the limits and the IK


# Blender's IK pole angle that keeps each finger chain in its rest plane with the pole on the
# back of the hand (bone X the flexion axis, Z out of the palm): measured, see tests.
IK_POLE_ANGLE = -np.pi / 2


def _drive_influence(constraint, arm_obj, prop: str) -> None:
    """Drive a constraint's influence by a custom property of the armature object (a simple
    expression: no Python auto-run needed)."""
    fcurve = constraint.driver_add("influence")
    driver = fcurve.driver
    driver.type = "SCRIPTED"
    var = driver.variables.new()
    var.name = "v"
    var.type = "SINGLE_PROP"
    var.targets[0].id = arm_obj
    var.targets[0].data_path = f'["{prop}"]'
    driver.expression = "v"
    while len(fcurve.modifiers):
        fcurve.modifiers.remove(fcurve.modifiers[0])


def _limits(rig: RigData, joints_m: np.ndarray, arm_obj, names: list[str]) -> dict:
    """bone -> ((x_min, x_max), (y_min, y_max), (z_min, z_max)) radians in the bone's own axes,
    from `convert.LIMITS_DEG`: X flexion, Y twist, Z spread (signed as the spread axis lies along
    the bone's Z) for the first bone of a digit, the twist range sideways for the others."""
    axes = convert.digit_axes(joints_m, rig.side)
    out = {}
    for digit, joints in convert.DIGIT_JOINTS.items():
        limits = np.radians(np.asarray(convert.LIMITS_DEG[digit], dtype=np.float64))
        spread_b = convert.model_to_blender(axes[digit][1])
        for k, j in enumerate(joints):
            bone = arm_obj.data.bones[names[j]]
            z = np.array(bone.matrix_local.to_3x3().col[2])
            side_range = limits[4]
            if k == 0:
                lo, hi = limits[3]
                side_range = (lo, hi) if float(np.dot(spread_b, z)) >= 0 else (-hi, -lo)
            out[names[j]] = (tuple(limits[k]), tuple(limits[4]), tuple(side_range))
    return out


def _dress_rig(arm_obj, rig: RigData, names, tip_bones, joints_m, new: NewData) -> None:
    """What makes the deform skeleton an animator's rig, none of it changing the imported pose:
    bone collections, custom shapes and colours, the fingertip IKs with pole targets and the
    anatomical rotation limits (both driven by a property of the armature, 0 = off), IK limits
    (which act on the IK solver only)."""
    arm = arm_obj.data
    colls = {name: arm.collections.new(name) for name in COLLECTIONS}
    for name in HIDDEN_COLLECTIONS:
        colls[name].is_visible = False
    arm_obj[IK_PROP] = 0.0
    arm_obj[LIMITS_PROP] = 0.0
    for prop, what in ((IK_PROP, "fingertip IK"), (LIMITS_PROP, "anatomical rotation limits")):
        text = f"Influence of the {what} (0: off, the imported pose exact)"
        arm_obj.id_properties_ui(prop).update(min=0.0, max=1.0, description=text)
    widgets = {k: _widget(k, new) for k in ("finger", "wrist", "ik", "pole", "curl")}
    limits = _limits(rig, joints_m, arm_obj, names)
    for j, name in enumerate(names):
        pb = arm_obj.pose.bones[name]
        pb.rotation_mode = "QUATERNION"
        colls["Deform"].assign(pb)
        pb.custom_shape = widgets["wrist" if j == 0 else "finger"]
        pb.color.palette = "THEME03" if j == 0 else "THEME04"
        if j == 0:
            continue
        pb.lock_location = (True, True, True)  # joints stay on their parents
        (xr, yr, zr) = limits[name]
        con = pb.constraints.new("LIMIT_ROTATION")
        con.name = "HAMR Limits"
        con.owner_space = "LOCAL"
        if hasattr(con, "euler_order"):
            con.euler_order = "ZYX"  # a first joint: spread (Z), then flexion (X)
        for axis, (lo, hi) in zip("xyz", (xr, yr, zr), strict=True):
            setattr(con, f"use_limit_{axis}", True)
            setattr(con, f"min_{axis}", float(lo))
            setattr(con, f"max_{axis}", float(hi))
        _drive_influence(con, arm_obj, LIMITS_PROP)
        # the IK solver's own limits (no effect on FK poses): flexion and, for a first joint,
        # spread; no twist
        pb.lock_ik_y = True
        pb.use_ik_limit_x, pb.ik_min_x, pb.ik_max_x = True, float(xr[0]), float(xr[1])
        first = j in [joints[0] for joints in convert.DIGIT_JOINTS.values()]
        pb.lock_ik_z = not first
        if first:
            pb.use_ik_limit_z, pb.ik_min_z, pb.ik_max_z = True, float(zr[0]), float(zr[1])
    for name in tip_bones:
        colls["Tips"].assign(arm_obj.pose.bones[name])
        arm_obj.pose.bones[name].lock_location = (True, True, True)
    for digit, (_, _, j3) in convert.DIGIT_JOINTS.items():
        ik_name = hamr_bone_name(f"{digit}_ik", rig.side)
        pole_name = hamr_bone_name(f"{digit}_pole", rig.side)
        for bone, widget, palette in ((ik_name, "ik", "THEME01"), (pole_name, "pole", "THEME09")):
            pb = arm_obj.pose.bones[bone]
            colls["Controls"].assign(pb)
            pb.custom_shape = widgets[widget]
            pb.color.palette = palette
        con = arm_obj.pose.bones[names[j3]].constraints.new("IK")
        con.name = "HAMR Fingertip IK"
        con.target, con.subtarget = arm_obj, ik_name
        con.pole_target, con.pole_subtarget = arm_obj, pole_name
        con.pole_angle = IK_POLE_ANGLE
        con.chain_count = 3
        con.use_tail = True
        con.use_stretch = False
        _drive_influence(con, arm_obj, IK_PROP)
    _curl_constraints(arm_obj, rig, names, colls, widgets["curl"])


def _widget(kind: str, new: NewData) -> bpy.types.Object:
    """A custom-shape object (wire mesh, not linked to any scene), shared by every HAMR rig: a
    ring around the bone for the FK bones, a square for the wrist, a box at the tip for the IK
    targets, a diamond for the poles (unit bone length: Blender scales shapes by the bone)."""
    name = f"{WIDGET_PREFIX}{kind}"
    obj = bpy.data.objects.get(name)
    if obj is not None and obj.get(KIND_PROP) == "widget" and obj.type == "MESH":
        return obj
    t = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
    ring = lambda r, y: [(r * np.cos(a), y, r * np.sin(a)) for a in t]  # noqa: E731
    loop = lambda n, o=0: [(o + i, o + (i + 1) % n) for i in range(n)]  # noqa: E731
    if kind == "finger":
        verts, edges = ring(0.3, 0.5), loop(24)
    elif kind == "wrist":
        verts = [(-0.6, 0.15, -0.6), (0.6, 0.15, -0.6), (0.6, 0.15, 0.6), (-0.6, 0.15, 0.6)]
        edges = loop(4)
    elif kind == "ik":
        c = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
        verts = [tuple(0.6 * v for v in p) for p in c]
        edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    elif kind == "curl":  # a paddle along the bone, flat on the back of the hand
        verts = [(0.0, 0.0, 0.0), (0.0, 0.8, 0.0)] + [
            (0.12 * np.cos(a), 0.92 + 0.12 * np.sin(a), 0.0) for a in t
        ]
        edges = [(0, 1)] + loop(24, 2)
    else:  # pole: a diamond
        verts = [(0.5, 0, 0), (0, 0.5, 0), (-0.5, 0, 0), (0, -0.5, 0), (0, 0, 0.5), (0, 0, -0.5)]
        edges = loop(4) + [(4, i) for i in range(4)] + [(5, i) for i in range(4)]
    mesh = new.add(bpy.data.meshes.new(name))
    mesh.from_pydata([tuple(map(float, v)) for v in verts], edges, [])
    obj = new.add(bpy.data.objects.new(name, mesh))
    obj[KIND_PROP] = "widget"
    return obj


def _make_material(new: NewData, name: str, rgba: tuple[float, ...], rough: float):
    mat = new.add(bpy.data.materials.new(name))
    mat.diffuse_color = rgba  # viewport and Workbench
    mat.roughness = rough
    if mat.node_tree is None:  # Blender < 5: node trees are opt-in
        mat.use_nodes = True
    bsdf = mat.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = rgba
        bsdf.inputs["Roughness"].default_value = rough
        for socket, value in (("Subsurface Weight", 0.15), ("Subsurface Scale", 0.01)):
            if socket in bsdf.inputs:
                bsdf.inputs[socket].default_value = value
    return mat


def _add_driver(key_block, arm_obj: bpy.types.Object, bone: str, expression: str) -> None:
    """Drive a shape key's value by a bone's local rotation as a quaternion (w, x, y, z): the
    evaluated one (Blender's Local Space "includes effects of constraints", so the curl
    controls, the IK and the limits move the correctives too; the expressions are quadratic in
    the quaternion, so its sign does not matter)."""
    fcurve = key_block.driver_add("value")
    driver = fcurve.driver
    driver.type = "SCRIPTED"
    for name, channel in (("w", "ROT_W"), ("x", "ROT_X"), ("y", "ROT_Y"), ("z", "ROT_Z")):
        var = driver.variables.new()
        var.name = name
        var.type = "TRANSFORMS"
        target = var.targets[0]
        target.id = arm_obj
        target.bone_target = bone
        target.transform_type = channel
        target.rotation_mode = "QUATERNION"
        target.transform_space = "LOCAL_SPACE"
    driver.expression = expression
    while len(fcurve.modifiers):  # older Blenders add a Generator to new drivers
        fcurve.modifiers.remove(fcurve.modifiers[0])


def build_hand_rig(
    rig: RigData,
    betas: Sequence[float] | np.ndarray | None,
    options: RigOptions,
    new: NewData,
) -> tuple[bpy.types.Object, bpy.types.Object, list[str]]:
    """Build the armature and the skinned mesh of one hand, unlinked from any scene.

    betas (10,) or None (zeros): the shape; the rest bones sit at its joints. Returns
    (armature object, mesh object, notes for the user). Every data-block created is recorded in
    `new`, so the caller can remove them all if a later step fails.
    """
    beta = np.zeros(NUM_BETAS) if betas is None else np.asarray(betas, dtype=np.float64)
    if beta.shape != (NUM_BETAS,):
        raise RigBuildError(f"expected {NUM_BETAS} shape coefficients, got {beta.shape}")
    if options.correctives not in CORRECTIVES:
        raise RigBuildError(f"correctives must be one of {CORRECTIVES}")
    notes: list[str] = []
    suffix = "R" if rig.side == "right" else "L"
    base = f"{options.name} {suffix}"

    joints_m = rig.joints(beta)
    joints_b = convert.model_to_blender(joints_m)  # (16, 3)
    tips_b = convert.model_to_blender(rig.tips(beta))  # (5, 3)
    tails_b = _bone_tails(rig, joints_b, tips_b)  # (16, 3)
    z_axes = _bone_z_axes(rig, joints_m, tails_b - joints_b)  # (16, 3) each bone's Z (palmar)
    names = [hamr_bone_name(j, rig.side) for j in rig.joint_names]
    tip_bones = [hamr_bone_name(t, rig.side) for t in rig.tip_names]

    # --- armature (edit bones need edit mode: done in a temporary scene, see armature_edit)
    arm = new.add(bpy.data.armatures.new(base))
    arm.display_type = "OCTAHEDRAL"
    arm_obj = new.add(bpy.data.objects.new(base, arm))
    arm_obj.show_in_front = True
    arm_obj[KIND_PROP] = "armature"
    # every bone's head follows a joint or a fingertip when the shape changes (set_betas):
    # [bone, "joint" | "tip", index, head offset, tail - head] (Blender frame)
    follow: list[list] = []
    with armature_edit(arm_obj) as edit_arm:
        bones = []
        for j, name in enumerate(names):
            eb = _new_bone(edit_arm, name, joints_b[j], tails_b[j] - joints_b[j], z_axes[j])
            if rig.parents[j] >= 0:
                eb.parent = bones[rig.parents[j]]
            bones.append(eb)
            follow.append([name, "joint", j, [0.0] * 3, (tails_b[j] - joints_b[j]).tolist()])
        for t, name in enumerate(tip_bones):
            parent = rig.tip_parents[t]
            vec = 0.5 * (tails_b[parent] - joints_b[parent])
            eb = _new_bone(edit_arm, name, tips_b[t], vec, z_axes[parent], deform=False)
            eb.parent = bones[parent]
            follow.append([name, "tip", t, [0.0] * 3, vec.tolist()])
        follow += _ik_bones(edit_arm, rig, bones, joints_b, tips_b, tails_b, z_axes)
        follow += _curl_bones(edit_arm, rig, bones, joints_b, tips_b, tails_b, joints_m)
    if len(arm.bones) != len(follow):
        raise RigBuildError("Blender did not create the hand's bones")
    arm_obj[RIG_PROP] = _rig_record(rig, names, tip_bones, follow)
    _dress_rig(arm_obj, rig, names, tip_bones, joints_m, new)

    # --- mesh
    with_keys = options.shape_keys
    verts_model = rig.v_template if with_keys else rig.vertices(beta)
    mesh = new.add(bpy.data.meshes.new(base))
    verts = convert.model_to_blender(verts_model).astype(np.float32)
    faces = rig.faces.astype(np.int32)
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    if mesh.validate(verbose=False):
        notes.append("the hand mesh needed repairs when loaded")
    if hasattr(mesh, "shade_smooth"):
        mesh.shade_smooth()
    else:
        mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), dtype=bool))
    mesh.materials.append(_make_material(new, f"{base} Skin", SKIN_RGBA, 0.5))
    if rig.nail_mask.any():
        mesh.materials.append(_make_material(new, f"{base} Nail", NAIL_RGBA, 0.25))
        nail_faces = rig.nail_mask[faces].all(axis=1).astype(np.int32)
        mesh.polygons.foreach_set("material_index", nail_faces)
    mesh_obj = new.add(bpy.data.objects.new(f"{base} Mesh", mesh))
    mesh_obj[KIND_PROP] = "mesh"
    mesh_obj.parent = arm_obj
    uv_layer = mesh.uv_layers.new(name="UVMap")  # the hand's back and palm, side by side
    uv_layer.data.foreach_set(
        "uv", convert.hand_uv(rig.v_template, faces, rig.side).astype(np.float32).ravel()
    )

    # vertex groups: one per deforming bone, MANO's skinning weights
    weights = rig.weights
    for j, name in enumerate(names):
        group = mesh_obj.vertex_groups.new(name=name)
        column = weights[:, j]
        for value in np.unique(column[column > 0]):
            group.add(np.flatnonzero(column == value).tolist(), float(value), "REPLACE")
    mod = mesh_obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm_obj
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    mod.use_deform_preserve_volume = False

    # --- shape keys
    correctives = options.correctives
    if correctives == "AUTO":
        use_correctives = not rig.pose_correctives_zero
        if rig.pose_correctives_zero:
            notes.append("the hand model has no pose correctives (all zero): none were created")
    else:
        use_correctives = correctives == "ON"
        if use_correctives and rig.pose_correctives_zero:
            notes.append("the hand model's pose correctives are all zero; created as asked")
    if with_keys or use_correctives:
        mesh_obj.shape_key_add(name="Basis", from_mix=False)
        base_co = verts.astype(np.float64)
        if with_keys:
            for i in range(NUM_BETAS):
                kb = mesh_obj.shape_key_add(name=BETA_KEY.format(i), from_mix=False)
                kb.slider_min, kb.slider_max = -10.0, 10.0
                offset = convert.model_to_blender(rig.shapedirs[:, :, i])
                kb.data.foreach_set("co", (base_co + offset).astype(np.float32).ravel())
                kb.value = float(beta[i])
        if use_correctives:
            posedirs = rig.posedirs if rig.posedirs is not None else None
            for j in range(1, len(rig.joint_names)):
                name, bone = rig.joint_names[j], names[j]
                c_rest = np.array(arm.bones[bone].matrix_local.to_3x3(), dtype=np.float64)
                exprs = convert.corrective_driver_expressions(c_rest)
                for e in range(9):
                    k = (j - 1) * 9 + e
                    kb = mesh_obj.shape_key_add(name=f"pose_{name}_{e // 3}{e % 3}", from_mix=False)
                    kb.slider_min, kb.slider_max = -2.0, 2.0
                    if posedirs is not None:
                        offset = convert.model_to_blender(posedirs[:, :, k])
                        kb.data.foreach_set("co", (base_co + offset).astype(np.float32).ravel())
                    _add_driver(kb, arm_obj, bone, exprs[e])
    mesh_obj[RIG_PROP + "_options"] = json.dumps(
        {"shape_keys": with_keys, "correctives": bool(use_correctives)}
    )
    return arm_obj, mesh_obj, notes


# ------------------------------------------------------------------------------ queries
def rig_record(arm_obj: bpy.types.Object) -> dict:
    """The rig JSON stored on a HAMR armature; RigBuildError when it is not one."""
    raw = arm_obj.get(RIG_PROP) if arm_obj is not None else None
    if not raw:
        raise RigBuildError(f"{getattr(arm_obj, 'name', None)!r} is not a HAMR hand armature")
    return json.loads(raw)


def hand_mesh(arm_obj: bpy.types.Object) -> bpy.types.Object | None:
    """The skinned mesh child of a HAMR armature."""
    for child in arm_obj.children:
        if child.get(KIND_PROP) == "mesh":
            return child
    return None


def find_hand_armature(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """The HAMR armature of `obj` (itself, or the parent of its mesh), else None."""
    while obj is not None:
        if obj.get(RIG_PROP):
            return obj
        obj = obj.parent
    return None


def set_option(arm_obj: bpy.types.Object, prop: str, value: float) -> None:
    """Set a rig option (IK_PROP, LIMITS_PROP: 0 off .. 1 on) from a script: the property and a
    depsgraph tag, so the drivers that read it run again (the panel's slider does both)."""
    arm_obj[prop] = float(value)
    arm_obj.update_tag(refresh={"OBJECT", "DATA", "TIME"})


def joint_bones(arm_obj: bpy.types.Object) -> list[str]:
    """The 16 bones playing MANO's joints, in MANO order ("wrist.R", "index1.R", ...; a rig
    built before the .L/.R names has MANO's names)."""
    rec = rig_record(arm_obj)
    return list(rec.get("bone_names") or rec["joint_names"])


def bone_rest_rotations(arm_obj: bpy.types.Object, joint_names: Sequence[str]) -> np.ndarray:
    """(16, 3, 3) rest rotations C_j of the joint bones in armature space."""
    return np.array(
        [np.array(arm_obj.data.bones[n].matrix_local.to_3x3()) for n in joint_names],
        dtype=np.float64,
    )


def pose_hand(
    arm_obj: bpy.types.Object, pose_axis_angle: np.ndarray, rotation_mode: str = "QUATERNION"
) -> None:
    """Set the pose bones' rotations from a MANO pose (16, 3) model-frame axis-angle: quaternions
    with w >= 0 (the short way round), or Euler angles in `rotation_mode` 'XYZ'."""
    names = joint_bones(arm_obj)
    pose = np.asarray(pose_axis_angle, dtype=np.float64)[None]  # (1, 16, 3)
    values = pose_rotations(pose, bone_rest_rotations(arm_obj, names), rotation_mode)
    for name, value in zip(names, values[0], strict=True):
        pbone = arm_obj.pose.bones[name]
        pbone.rotation_mode = rotation_mode
        if rotation_mode == "QUATERNION":
            pbone.rotation_quaternion = value.tolist()
        else:
            pbone.rotation_euler = value.tolist()


ROTATION_MODES = ("QUATERNION", "XYZ")


def pose_rotations(
    pose_axis_angle: np.ndarray, bone_rest_rotations_: np.ndarray, rotation_mode: str
) -> np.ndarray:
    """(N, 16, 3) MANO poses over N frames -> the pose bones' rotation channels, continuous
    over the frames: (N, 16, 4) quaternions, the first with w >= 0, or (N, 16, 3) 'XYZ' Euler
    angles (radians) without jumps by a turn."""
    if rotation_mode not in ROTATION_MODES:
        raise RigBuildError(f"rotation mode must be one of {ROTATION_MODES}, got {rotation_mode!r}")
    quats = convert.bone_local_rotations(pose_axis_angle, bone_rest_rotations_)
    if rotation_mode == "QUATERNION":
        return convert.quaternion_continuity(quats)
    eulers = convert.matrix_to_euler_xyz(convert.quaternion_to_matrix(quats))
    return convert.euler_continuity(eulers)


def current_betas(arm_obj: bpy.types.Object) -> np.ndarray:
    """(10,) β of a hand: its β shape-key values (zeros when the shape is baked)."""
    mesh_obj = hand_mesh(arm_obj)
    keys = mesh_obj.data.shape_keys if mesh_obj is not None else None
    out = np.zeros(NUM_BETAS)
    if keys is not None:
        for i in range(NUM_BETAS):
            kb = keys.key_blocks.get(BETA_KEY.format(i))
            if kb is not None:
                out[i] = kb.value
    return out


def set_betas(arm_obj: bpy.types.Object, betas: Sequence[float] | np.ndarray) -> None:
    """Change a hand's shape: the β shape keys' values and the rest joints (bones translated to
    joints_rest + joints_shapedirs @ β, rest orientations kept; see the module docstring)."""
    rec = rig_record(arm_obj)
    beta = np.asarray(betas, dtype=np.float64)
    if beta.shape != (NUM_BETAS,):
        raise RigBuildError(f"expected {NUM_BETAS} shape coefficients, got {beta.shape}")
    mesh_obj = hand_mesh(arm_obj)
    keys = mesh_obj.data.shape_keys if mesh_obj is not None else None
    if keys is None or keys.key_blocks.get(BETA_KEY.format(0)) is None:
        raise RigBuildError("this hand was built without shape keys; its shape cannot change")
    for i in range(NUM_BETAS):
        keys.key_blocks[BETA_KEY.format(i)].value = float(beta[i])
    joints = np.asarray(rec["joints_rest"]) + np.asarray(rec["joints_shapedirs"]) @ beta
    tips = np.asarray(rec["tips_rest"]) + np.asarray(rec["tips_shapedirs"]) @ beta
    points = {"joint": convert.model_to_blender(joints), "tip": convert.model_to_blender(tips)}
    follow = rec.get("follow")
    if follow is None:  # a rig built before the follow list: its joint and tip bones
        vectors = rec["bone_vectors"] + rec["tip_vectors"]
        kinds = [("joint", j) for j in range(len(joints))] + [("tip", t) for t in range(5)]
        names = rec["joint_names"] + rec["tip_names"]
        rows = zip(names, kinds, vectors, strict=True)
        follow = [[n, k, i, [0.0] * 3, v] for n, (k, i), v in rows]
    with armature_edit(arm_obj) as arm:
        for name, kind, index, offset, vec in follow:
            eb = arm.edit_bones[name]
            roll = eb.roll
            head = points[kind][index] + np.asarray(offset)
            eb.head, eb.tail = head.tolist(), (head + np.asarray(vec)).tolist()
            eb.roll = roll


# ------------------------------------------------------------------------------ registration
def _hand_armature_objects(arm: bpy.types.Armature) -> list[bpy.types.Object]:
    return [o for o in bpy.data.objects if o.data is arm and o.get(RIG_PROP)]


def _betas_update(self, context: bpy.types.Context) -> None:
    for arm_obj in _hand_armature_objects(self.id_data):
        try:
            set_betas(arm_obj, np.asarray(self.betas, dtype=np.float64))
        except RigBuildError as e:
            print(f"HAMR: {e}")


class HandSettings(bpy.types.PropertyGroup):
    """A HAMR hand's settings, on its Armature data only (``Armature.hamr_hand``)."""

    betas: bpy.props.FloatVectorProperty(
        name="Shape",
        description="The hand's shape coefficients (β); the joints follow the shape",
        size=NUM_BETAS,
        soft_min=-3.0,
        soft_max=3.0,
        min=-10.0,
        max=10.0,
        update=_betas_update,
    )


def store_betas(arm_obj: bpy.types.Object, betas) -> None:
    """Record β as the shape slider's value (`HandSettings.betas`) without running its update
    (the rig is already built with that shape); works whether or not the add-on is registered."""
    arm_obj.data[HAND_PROPS] = {"betas": [float(b) for b in betas]}


def stored_betas(arm_obj: bpy.types.Object) -> list[float]:
    group = arm_obj.data.get(HAND_PROPS)
    return [float(b) for b in group["betas"]] if group is not None else []


def register() -> None:
    bpy.utils.register_class(HandSettings)
    bpy.types.Armature.hamr_hand = bpy.props.PointerProperty(type=HandSettings)


def unregister() -> None:
    del bpy.types.Armature.hamr_hand
    bpy.utils.unregister_class(HandSettings)
