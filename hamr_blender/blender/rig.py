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
from ..io.payload import NUM_BETAS, RigData

RIG_PROP = "hamr_rig"  # JSON on the armature object: what set_betas needs
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


def _rig_record(rig: RigData, tails_minus_heads: np.ndarray, tip_vectors: np.ndarray) -> str:
    """The JSON stored on the armature for `set_betas` (model frame arrays, metres)."""
    tip_dirs = rig.shapedirs[rig.tip_vertex_ids]  # (5, 3, 10)
    return json.dumps(
        {
            "side": rig.side,
            "hand_model": rig.hand_model,
            "joint_names": rig.joint_names,
            "tip_names": rig.tip_names,
            "joints_rest": rig.joints_rest.tolist(),
            "joints_shapedirs": rig.joints_shapedirs.tolist(),
            "tips_rest": rig.v_template[rig.tip_vertex_ids].tolist(),
            "tips_shapedirs": tip_dirs.tolist(),
            "tip_vertex_ids": rig.tip_vertex_ids.tolist(),
            "bone_vectors": tails_minus_heads.tolist(),  # Blender frame, tail - head
            "tip_vectors": tip_vectors.tolist(),
        }
    )


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
    """Drive a shape key's value by a bone's local rotation as a quaternion (w, x, y, z)."""
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

    joints_b = convert.model_to_blender(rig.joints(beta))  # (16, 3)
    tips_b = convert.model_to_blender(rig.tips(beta))  # (5, 3)
    tails_b = _bone_tails(rig, joints_b, tips_b)  # (16, 3)
    dorsal = convert.model_to_blender(np.array([0.0, 1.0, 0.0]))  # bone Z: back of the hand

    # --- armature (edit bones need edit mode: done in a temporary scene, see armature_edit)
    arm = new.add(bpy.data.armatures.new(base))
    arm.display_type = "OCTAHEDRAL"
    arm_obj = new.add(bpy.data.objects.new(base, arm))
    arm_obj.show_in_front = True
    arm_obj[KIND_PROP] = "armature"
    tip_vectors = np.zeros((5, 3))
    with armature_edit(arm_obj) as edit_arm:
        bones = []
        for j, name in enumerate(rig.joint_names):
            eb = edit_arm.edit_bones.new(name)
            eb.head, eb.tail = joints_b[j].tolist(), tails_b[j].tolist()
            eb.align_roll(dorsal.tolist())
            eb.use_connect = False
            if rig.parents[j] >= 0:
                eb.parent = bones[rig.parents[j]]
            bones.append(eb)
        for t, name in enumerate(rig.tip_names):
            parent = rig.tip_parents[t]
            vec = 0.5 * (tails_b[parent] - joints_b[parent])
            tip_vectors[t] = vec
            eb = edit_arm.edit_bones.new(name)
            eb.head, eb.tail = tips_b[t].tolist(), (tips_b[t] + vec).tolist()
            eb.align_roll(dorsal.tolist())
            eb.use_connect = False
            eb.use_deform = False
            eb.parent = bones[parent]
    if len(arm.bones) != len(rig.joint_names) + len(rig.tip_names):
        raise RigBuildError("Blender did not create the hand's bones")
    arm_obj[RIG_PROP] = _rig_record(rig, tails_b - joints_b, tip_vectors)
    for pbone in arm_obj.pose.bones:
        pbone.rotation_mode = "QUATERNION"
        if pbone.name != rig.joint_names[0]:
            pbone.lock_location = (True, True, True)  # joints stay on their parents

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

    # vertex groups: one per deforming bone, MANO's skinning weights
    weights = rig.weights
    for j, name in enumerate(rig.joint_names):
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
                name = rig.joint_names[j]
                c_rest = np.array(arm.bones[name].matrix_local.to_3x3(), dtype=np.float64)
                exprs = convert.corrective_driver_expressions(c_rest)
                for e in range(9):
                    k = (j - 1) * 9 + e
                    kb = mesh_obj.shape_key_add(name=f"pose_{name}_{e // 3}{e % 3}", from_mix=False)
                    kb.slider_min, kb.slider_max = -2.0, 2.0
                    if posedirs is not None:
                        offset = convert.model_to_blender(posedirs[:, :, k])
                        kb.data.foreach_set("co", (base_co + offset).astype(np.float32).ravel())
                    _add_driver(kb, arm_obj, name, exprs[e])
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
    names = rig_record(arm_obj)["joint_names"]
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
    heads = np.concatenate([convert.model_to_blender(joints), convert.model_to_blender(tips)])
    vectors = np.concatenate([np.asarray(rec["bone_vectors"]), np.asarray(rec["tip_vectors"])])
    names = rec["joint_names"] + rec["tip_names"]
    with armature_edit(arm_obj) as arm:
        for name, head, vec in zip(names, heads, vectors, strict=True):
            eb = arm.edit_bones[name]
            roll = eb.roll
            eb.head, eb.tail = head.tolist(), (head + vec).tolist()
            eb.roll = roll


# ------------------------------------------------------------------------------ registration
def _betas_update(self: bpy.types.Object, context: bpy.types.Context) -> None:
    if self.get(RIG_PROP):
        try:
            set_betas(self, np.asarray(self.hamr_betas, dtype=np.float64))
        except RigBuildError as e:
            print(f"HAMR: {e}")


def register() -> None:
    bpy.types.Object.hamr_betas = bpy.props.FloatVectorProperty(
        name="Shape",
        description="The hand's shape coefficients (β); the joints follow the shape",
        size=NUM_BETAS,
        soft_min=-3.0,
        soft_max=3.0,
        min=-10.0,
        max=10.0,
        update=_betas_update,
    )


def unregister() -> None:
    del bpy.types.Object.hamr_betas
