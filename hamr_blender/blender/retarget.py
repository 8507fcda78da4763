"""Retarget HAMR hands onto another armature's hand bones: a pose, or a baked take.

`retarget(context, sources, target, options)` is the use case (the operator `hamr.retarget` and
`hamr blend --retarget` call it): for each HAMR hand in `sources` (one per side is used), the
target's bones for that side come from a bone map (`..io.bone_maps`: given, or detected from
the bone names) and every missing bone is reported before anything changes. The geometry is
`..io.retarget_math` (module docstring there): per finger bone, the rotation that makes the target
bone point and twist in its hand frame as the source bone does in its own, rest curl, roll and
proportions compensated; optionally the wrist's orientation (through the map's wrist control,
relative to its parent: the forearm), and the hand's world placement (off by default).
With `fingertips` (off by default) the fingers are then bent, as little as needed, so that the
target's fingertips reach the HAMR fingertips' places in the hand frame scaled by the two hands'
lengths, and a fingertip touching the HAMR thumb's follows the target thumb where that thumb is
too short to reach its own goal: for rigs whose finger proportions are not MANO's (a fist
closes, a pinch touches), at the cost of bone directions.

What is read is the HAMR hand as Blender evaluates it, what the animator sees: its bones'
pose matrices after constraints (the curl controls, the fingertip IK, the rotation limits, any
constraint or driver added), not its keyed channels (`source_motion`).

- POSE (a photo's hand, no animation): the hand as evaluated now; the target's pose bones are
  set (one undo step);
- BAKE (a keyed take): the hand evaluated at every keyed frame of its action (keys on any
  channel: deform bones, curl controls, IK targets, properties; optionally within a frame range;
  the video import already mapped the video's frame rate onto the scene's), the armature alone
  stepped through the frames in a temporary scene (`evaluated_frames`: 0.15-0.26 s for 1,000
  frames), solved for all frames at once in numpy, and keyed into ONE new action on the target
  with the bulk F-curve path (`keyframe_points.add` + `foreach_set`, Blender 5's layered
  actions: a slot, a layer, a keyframe strip, its channelbag), quaternion signs continuous.
  Only the mapped bones get channels, so the target's other bones are untouched. The action
  becomes the target's active action, or is pushed onto a new NLA track (asked for, or
  whenever the target already plays an action: that one stays active and keeps driving every
  other bone).

Failure safety: everything is checked before the scene changes; on an error during the change,
the pose values and created data-blocks are restored / removed (scene as it was).

The sidebar section (`HAMR_PT_retarget`) holds the target, map, options and a user map
(`Scene.hamr_retarget.user_map`: joint -> bone per side, editable, saved and loaded as JSON
presets). Imports bpy, mathutils and numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import bpy
import numpy as np
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from mathutils import Quaternion

from ..io import bone_maps, retarget_math
from ..io.bone_maps import BoneMap, BoneMapError
from ..io.retarget_math import RetargetError
from .rig import RIG_PROP, find_hand_armature, joint_bones

DOMAIN_ERRORS = (BoneMapError, RetargetError)
MAP_ITEMS = (
    ("AUTO", "Detect", "Detect the bone map from the target's bone names"),
    ("RIGIFY", "Rigify Rig", "A generated Rigify rig: the FK finger controls"),
    ("RIGIFY_METARIG", "Rigify Metarig", "Rigify's human metarig"),
    ("MIXAMO", "Mixamo", "Mixamo names: mixamorig:LeftHandIndex1 ..."),
    ("HAMR", "HAMR", "This extension's own hand rig"),
    ("USER", "User Map", "The map edited below (and saved as a JSON preset)"),
)
MODE_ITEMS = (
    ("AUTO", "Auto", "Bake when the HAMR hand is animated, else set the pose"),
    ("POSE", "Pose", "Set the target's pose at the current frame"),
    ("BAKE", "Bake", "Bake the HAMR hand's keyed take into a new action on the target"),
)
ACTION_PROP = bone_maps.RETARGET_PROP  # on targets and baked actions


@dataclass
class RetargetOptions:
    """How to retarget. bone_map None: detect it from the target's bone names."""

    bone_map: BoneMap | None = None
    wrist: bool = False  # transfer the wrist's orientation (through the map's wrist control)
    placement: bool = False  # also move the hand to the HAMR hand's world position
    mode: str = "AUTO"  # AUTO / POSE / BAKE
    frame_start: int | None = None  # bake only keys in [frame_start, frame_end]
    frame_end: int | None = None
    use_nla: bool = False  # put the baked action on a new NLA track
    fingertips: bool = False  # also bend the target's fingers so its fingertips reach MANO's


@dataclass
class RetargetResult:
    """What a retarget did."""

    sides: list[str] = field(default_factory=list)
    map_name: str = ""
    actions: list[bpy.types.Action] = field(default_factory=list)
    frames: int = 0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ reading rigs
def _m(matrix) -> np.ndarray:
    return np.array(matrix, dtype=np.float64)


def hand_side(arm_obj: bpy.types.Object) -> str:
    """The side of a HAMR hand armature (from its stored rig record)."""
    raw = arm_obj.get(RIG_PROP)
    if not raw:
        raise RetargetError(f"{arm_obj.name!r} is not a HAMR hand")
    return json.loads(raw)["side"]


def has_hand_bones(arm_obj: bpy.types.Object) -> bool:
    """Whether a built-in map fits at least one hand of this armature."""
    return (
        arm_obj is not None
        and arm_obj.type == "ARMATURE"
        and bone_maps.detect_map(b.name for b in arm_obj.data.bones) is not None
    )


def resolve_map(target: bpy.types.Object, bone_map: BoneMap | None, side: str) -> BoneMap:
    """The map to use for `side` on `target`, validated (BoneMapError lists missing bones)."""
    if target is None or target.type != "ARMATURE":
        raise BoneMapError("choose a target armature (no armature is selected)")
    names = [b.name for b in target.data.bones]
    if bone_map is None:
        found = bone_maps.detect_map(names)
        if found is None:
            raise BoneMapError(
                f"no hand bones found on {target.name!r}: it fits none of the built-in bone maps "
                "(Rigify, Mixamo, HAMR); choose a map or fill in the user map"
            )
        bone_map = found[1]
    bone_maps.validate_map(bone_map, side, names)
    return bone_map


def _fcurve_index(obj: bpy.types.Object) -> dict[tuple[str, int], bpy.types.FCurve]:
    """(data_path, index) -> F-curve of the object's active action (its slot's channelbag on
    Blender 5's layered actions)."""
    anim = obj.animation_data
    action = anim.action if anim is not None else None
    if action is None:
        return {}
    curves = []
    slot = getattr(anim, "action_slot", None)
    if hasattr(action, "layers"):
        for layer in action.layers:
            for strip in layer.strips:
                bag = strip.channelbag(slot) if slot is not None else None
                if bag is not None:
                    curves.extend(bag.fcurves)
    if not curves and hasattr(action, "fcurves"):  # Blender < 4.4
        curves = list(action.fcurves)
    return {(fc.data_path, fc.array_index): fc for fc in curves}


def _keyed_frames(curves: Sequence[bpy.types.FCurve]) -> np.ndarray:
    frames: set[float] = set()
    for fc in curves:
        co = np.empty(len(fc.keyframe_points) * 2, dtype=np.float32)
        fc.keyframe_points.foreach_get("co", co)
        frames.update(co[0::2].tolist())
    return np.array(sorted(frames), dtype=np.float64)


@dataclass
class SourceMotion:
    """A HAMR hand over N frames, as Blender evaluates it: posed joint matrices (N, 16, 4, 4) in
    its armature space (after constraints), the rest matrices (16, 4, 4) and bone lengths (16,),
    its object's world matrices (N, 4, 4)."""

    frames: np.ndarray
    posed: np.ndarray
    rest: np.ndarray
    world: np.ndarray
    animated: bool
    lengths: np.ndarray


def source_bones(src: bpy.types.Object) -> list[str]:
    """The HAMR hand's bone for each of `bone_maps.JOINTS`: through the HAMR bone map of its
    side, else the bones its rig record names (`rig.joint_bones`: a hand built with other
    names)."""
    names = {b.name for b in src.data.bones}
    entries = bone_maps.BUILTIN_MAPS["HAMR"].bones(hand_side(src))
    if all(entries.get(j) in names for j in bone_maps.JOINTS):
        return [entries[j] for j in bone_maps.JOINTS]
    recorded = joint_bones(src)
    if len(recorded) == len(bone_maps.JOINTS) and all(n in names for n in recorded):
        return list(recorded)
    raise RetargetError(f"the HAMR hand {src.name!r} lacks its joint bones")


def _pose_matrices(arm_obj: bpy.types.Object, index: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """(len(index), 4, 4) armature-space pose matrices (`PoseBone.matrix`, after constraints)
    of the bones at `index` in `arm_obj.pose.bones`, read in bulk (`buf`: float32, 16 per
    bone; the flat array is column-major)."""
    arm_obj.pose.bones.foreach_get("matrix", buf)
    return np.swapaxes(buf.reshape(-1, 4, 4)[index], -1, -2).astype(np.float64)


def evaluated_frames(
    src: bpy.types.Object, bones: Sequence[str], frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The armature `src` as Blender evaluates it at each of `frames` (fractional ones
    included): the pose matrices (N, B, 4, 4) of `bones` (after constraints, drivers, IK) and
    the object's world matrices (N, 4, 4).

    Only the armature (and what it depends on) is evaluated: it is linked into a temporary
    scene whose depsgraph is stepped through the frames (no frame-change handlers run, the
    user's scene and its current frame are not touched), and the temporary scene is removed.
    An armature disabled in viewports (which no viewport depsgraph evaluates) is enabled
    meanwhile and disabled again. 1,000 frames of a HAMR hand take about 0.15-0.26 s."""
    order = {pb.name: i for i, pb in enumerate(src.pose.bones)}
    index = np.array([order[b] for b in bones])
    buf = np.empty(len(order) * 16, dtype=np.float32)
    posed = np.empty((len(frames), len(bones), 4, 4))
    world = np.empty((len(frames), 4, 4))
    hidden = src.hide_viewport
    tmp = bpy.data.scenes.new("HAMR retarget (temporary)")
    try:
        if hidden:
            src.hide_viewport = False
        tmp.collection.objects.link(src)
        layer = tmp.view_layers[0]
        layer.update()  # makes its depsgraph
        graph = layer.depsgraph
        for i, f in enumerate(frames):
            whole = int(np.floor(f))
            tmp.frame_current, tmp.frame_subframe = whole, float(f - whole)
            graph.update()
            ev = src.evaluated_get(graph)
            posed[i] = _pose_matrices(ev, index, buf)
            world[i] = _m(ev.matrix_world)
    finally:
        bpy.data.scenes.remove(tmp)
        if hidden:
            src.hide_viewport = True
    return posed, world


def source_motion(src: bpy.types.Object, bake: bool, options: RetargetOptions) -> SourceMotion:
    """Read the source hand as Blender evaluates it, what the animator sees: the pose bones'
    matrices after constraints (the curl controls, the fingertip IK, the rotation limits and
    any constraint or driver the user added), at the current frame (bake False: the scene as
    evaluated now), or at every keyed frame of its action (any channel: deform bones, controls,
    properties), optionally within a frame range (`evaluated_frames`)."""
    joint_bones_ = source_bones(src)
    bones = src.data.bones
    rest = np.array([_m(bones[j].matrix_local) for j in joint_bones_])
    lengths = np.array([bones[j].length for j in joint_bones_])
    if not bake:
        scene = bpy.context.scene
        frames = np.array([scene.frame_current + scene.frame_subframe])
        if src.hide_viewport:  # not evaluated by the viewport: evaluated alone
            posed, world = evaluated_frames(src, joint_bones_, frames)
        else:  # what the viewport shows (with unkeyed changes to keyed channels)
            posed = np.array([_m(src.pose.bones[j].matrix) for j in joint_bones_])[None]
            world = _m(src.matrix_world)[None]
        return SourceMotion(frames, posed, rest, world, False, lengths)
    frames = _keyed_frames(list(_fcurve_index(src).values()))
    if options.frame_start is not None:
        frames = frames[frames >= options.frame_start]
    if options.frame_end is not None:
        frames = frames[frames <= options.frame_end]
    if len(frames) == 0:
        raise RetargetError(f"{src.name!r} has no keys to bake in the frame range")
    posed, world = evaluated_frames(src, joint_bones_, frames)
    return SourceMotion(frames, posed, rest, world, True, lengths)


# ------------------------------------------------------------------------------ the solve
@dataclass
class Plan:
    """One side's solved transfer: the target bones, their local rotations (N, B, 3, 3) and
    locations (N, B, 3), which bones get a location, the frames."""

    side: str
    bone_map: BoneMap
    names: list[str]
    rot: np.ndarray
    loc: np.ndarray
    keyed_loc: list[bool]
    frames: np.ndarray


def _frame_from(heads: dict[str, np.ndarray]) -> np.ndarray:
    return retarget_math.hand_frame(
        heads["wrist"], heads["index1"], heads["middle1"], heads["pinky1"]
    )


def plan_side(
    src: bpy.types.Object,
    motion: SourceMotion,
    target: bpy.types.Object,
    bone_map: BoneMap,
    side: str,
    options: RetargetOptions,
) -> Plan:
    """Solve one side for every frame of `motion` (the target as currently evaluated)."""
    bmap = bone_map.bones(side)
    tb, tp = target.data.bones, target.pose.bones
    fingers = list(bone_maps.FINGER_JOINTS)
    # --- source: hand frames (N, 4, 4) and finger bones' rotations, rest offsets
    j_index = {j: i for i, j in enumerate(bone_maps.JOINTS)}
    s_heads = {j: motion.posed[:, j_index[j], :3, 3] for j in bone_maps.FRAME_JOINTS}
    h_s = _frame_from(s_heads)  # (N, 4, 4)
    s_rest_heads = {j: motion.rest[j_index[j], :3, 3] for j in bone_maps.FRAME_JOINTS}
    h_s_rest = _frame_from(s_rest_heads)
    fi = [j_index[j] for j in fingers]
    q_s = retarget_math.roll_offsets(h_s_rest[:3, :3].T @ motion.rest[fi, :3, :3])
    # --- target at rest and as it is now
    h_t_rest = _frame_from({j: _m(tb[bmap[j]].head_local) for j in bone_maps.FRAME_JOINTS})
    h_t_now = _frame_from({j: _m(tp[bmap[j]].head) for j in bone_maps.FRAME_JOINTS})
    t_rest_rot = np.array([_m(tb[bmap[j]].matrix_local)[:3, :3] for j in fingers])
    q_t = retarget_math.roll_offsets(h_t_rest[:3, :3].T @ t_rest_rot)
    n = len(motion.frames)
    # --- the target's hand frame per frame (moved when the wrist is transferred)
    hand_motion = None
    h_t = np.broadcast_to(h_t_now, (n, 4, 4)).copy()
    if options.wrist or options.placement:
        t_world = _m(target.matrix_world)
        t_rot_inv = retarget_math.orthonormal(t_world[:3, :3]).T
        s_rot = retarget_math.orthonormal(motion.world[:, :3, :3])
        if options.wrist:
            h_t[:, :3, :3] = t_rot_inv @ s_rot @ h_s[:, :3, :3]
        if options.placement:
            wrist_world = motion.world[:, :3, :3] @ h_s[:, :3, 3, None] + motion.world[:, :3, 3:]
            h_t[:, :3, 3] = (
                np.linalg.inv(t_world) @ np.concatenate([wrist_world, np.ones((n, 1, 1))], axis=1)
            )[:, :3, 0]
        hand_motion = h_t @ np.linalg.inv(h_t_now)
    desired = retarget_math.transfer_rotations(
        h_s[:, :3, :3], motion.posed[:, fi, :3, :3], q_s, q_t, h_t[:, :3, :3]
    )  # (N, 15, 3, 3)
    if options.fingertips:
        desired = _reach_fingertips(motion, h_s, h_t, desired, target, bmap, hand_motion)
    # --- the posed target bones, parents first
    posed_names = [bmap[j] for j in fingers]
    want_rot = {bmap[j]: desired[:, k] for k, j in enumerate(fingers)}
    want_loc: dict[str, np.ndarray] = {}
    control = bone_map.wrist_control(side) if hand_motion is not None else None
    if control is not None:
        p_now = _m(tp[control].matrix)
        p_new = hand_motion @ p_now  # (N, 4, 4): the control moves rigidly with the hand
        posed_names.insert(0, control)
        want_rot[control] = p_new[:, :3, :3]
        if options.placement:
            want_loc[control] = p_new[:, :3, 3]

    def depth(name: str) -> int:
        b, d = tb[name], 0
        while b.parent is not None:
            b, d = b.parent, d + 1
        return d

    order = sorted(posed_names, key=depth)
    pos = {name: i for i, name in enumerate(order)}
    count = len(order)
    rest = np.array([_m(tb[name].matrix_local) for name in order])
    parent_rest = np.tile(np.eye(4), (count, 1, 1))
    parent_now = np.tile(np.eye(4), (count, 1, 1))
    anchor = np.full(count, -1)
    anchor_to_parent = np.tile(np.eye(4), (count, 1, 1))
    for i, name in enumerate(order):
        parent = tb[name].parent
        if parent is None:
            continue
        parent_rest[i] = _m(parent.matrix_local)
        parent_now[i] = _m(tp[parent.name].matrix)
        up = parent
        while up is not None and up.name not in pos:
            up = up.parent
        if up is not None:
            anchor[i] = pos[up.name]
            anchor_to_parent[i] = np.linalg.inv(_m(tp[up.name].matrix)) @ parent_now[i]
    chain = retarget_math.TargetChain(
        order,
        rest,
        parent_rest,
        anchor,
        anchor_to_parent,
        parent_now,
        np.array([list(tp[name].location) for name in order]),
    )
    desired_rot = np.stack([want_rot[name] for name in order], axis=1)
    desired_loc = None
    if want_loc:
        desired_loc = np.full((n, count, 3), np.nan)
        for name, value in want_loc.items():
            desired_loc[:, pos[name]] = value
    rot, loc = retarget_math.solve_chain(chain, desired_rot, desired_loc, hand_motion)
    return Plan(
        side, bone_map, order, rot, loc, [name in want_loc for name in order], motion.frames
    )


TIP_SIGMA = 0.01  # hand lengths of tip distance that weigh as much as a bone turn of 1 radian


def _reach_fingertips(motion, h_s, h_t, desired, target, bmap, hand_motion) -> np.ndarray:
    """The direction transfer's rotations `desired` (N, 15, 3, 3), bent so that each target
    fingertip reaches the HAMR fingertip's place in the hand: in the hand frame, scaled by the
    two hands' lengths (wrist to middle fingertip). Bones turn as little as that needs
    (`retarget_math.reach_fingertips`); a tip out of the target finger's reach gets as close as
    the straightened finger allows."""
    tb, tp = target.data.bones, target.pose.bones
    j_index = {j: i for i, j in enumerate(bone_maps.JOINTS)}
    digits = [bone_maps.FINGER_JOINTS[k][:-1] for k in range(0, 15, 3)]  # MANO order
    mid = [j_index[f"middle{k}"] for k in (1, 2, 3)]
    src_len = retarget_math.hand_length(
        motion.rest[j_index["wrist"], :3, 3], motion.rest[mid[0], :3, 3], motion.lengths[mid]
    )
    tgt_len = retarget_math.hand_length(
        _m(tb[bmap["wrist"]].head_local),
        _m(tb[bmap["middle1"]].head_local),
        [tb[bmap[f"middle{k}"]].length for k in (1, 2, 3)],
    )
    # the HAMR tips (tails of the distal bones) in the HAMR hand frame, in target lengths
    last = [j_index[f"{d}3"] for d in digits]
    p3 = motion.posed[:, last]  # (N, 5, 4, 4)
    tip_s = (
        p3[..., :3, 3]
        + retarget_math.orthonormal(p3[..., :3, :3])[..., :, 1]
        * (motion.lengths[last][None, :, None])
    )
    local = np.linalg.inv(h_s)[:, None, :3, :3] @ (tip_s - h_s[:, None, :3, 3])[..., None]
    goal = (h_t[:, None, :3, :3] @ local)[..., 0] * (tgt_len / src_len) + h_t[:, None, :3, 3]
    # the target chains: first heads (moved with the hand), segments in each bone's rest frame
    heads = np.array([_m(tp[bmap[f"{d}1"]].head) for d in digits])  # (5, 3)
    n = len(h_t)
    base = np.broadcast_to(heads, (n, 5, 3)).copy()
    if hand_motion is not None:
        base = (hand_motion[:, None, :3, :3] @ heads[None, ..., None])[..., 0]
        base += hand_motion[:, None, :3, 3]
    segments = np.zeros((5, 3, 3))
    for f, d in enumerate(digits):
        bones = [tb[bmap[f"{d}{k}"]] for k in (1, 2, 3)]
        for k, bone in enumerate(bones):
            rot = retarget_math.orthonormal(_m(bone.matrix_local)[:3, :3])
            to_next = (
                _m(bones[k + 1].head_local) - _m(bone.head_local)
                if k < 2
                else _m(bone.tail_local) - _m(bone.head_local)
            )
            segments[f, k] = rot.T @ to_next
    rest_rot = desired.reshape(n, 5, 3, 3, 3)
    sigma = TIP_SIGMA * tgt_len
    rot, _ = retarget_math.reach_fingertips(rest_rot, base, segments, goal, sigma)
    # contacts: a finger whose HAMR tip touches the HAMR thumb's follows the target thumb
    # where that could not reach its goal (a short thumb still closes the pinch)
    thumb = digits.index("thumb")
    reached = retarget_math.chain_tips(rot, base, segments)
    follow = retarget_math.contact_weights(tip_s, thumb, src_len)  # (N, 5)
    if np.any(follow > 1e-3):
        goal = goal + follow[..., None] * (reached[:, thumb] - goal[:, thumb])[:, None]
        rot, _ = retarget_math.reach_fingertips(rest_rot, base, segments, goal, sigma)
    return rot.reshape(n, 15, 3, 3)


# ------------------------------------------------------------------------------ writing
def _rotation_channels(pb: bpy.types.PoseBone, rot: np.ndarray) -> tuple[str, np.ndarray]:
    """(property name, (N, k) values) of rotations (N, 3, 3) in the pose bone's rotation mode."""
    quats = retarget_math.continuous_quaternions(rot[:, None])[:, 0]  # (N, 4)
    mode = pb.rotation_mode
    if mode == "QUATERNION":
        return "rotation_quaternion", quats
    if mode == "AXIS_ANGLE":
        out = []
        for q in quats:
            axis, angle = Quaternion(q).to_axis_angle()
            out.append([angle, *axis])
        return "rotation_axis_angle", np.array(out)
    out, prev = [], None
    for q in quats:
        e = Quaternion(q).to_euler(mode) if prev is None else Quaternion(q).to_euler(mode, prev)
        out.append(list(e))
        prev = e
    return "rotation_euler", np.array(out)


def _pose_state(target: bpy.types.Object, names: Sequence[str]) -> dict:
    return {
        n: (
            tuple(target.pose.bones[n].rotation_quaternion),
            tuple(target.pose.bones[n].rotation_euler),
            tuple(target.pose.bones[n].rotation_axis_angle),
            tuple(target.pose.bones[n].location),
        )
        for n in names
    }


def _restore_pose(target: bpy.types.Object, state: dict) -> None:
    for n, (q, e, aa, loc) in state.items():
        pb = target.pose.bones[n]
        pb.rotation_quaternion, pb.rotation_euler = q, e
        pb.rotation_axis_angle, pb.location = aa, loc


def apply_pose(target: bpy.types.Object, plan: Plan, frame: int = 0) -> None:
    """Set the target's pose bones to frame `frame` of the plan."""
    for i, name in enumerate(plan.names):
        pb = target.pose.bones[name]
        prop, values = _rotation_channels(pb, plan.rot[frame : frame + 1, i])
        setattr(pb, prop, values[0].tolist())
        if plan.keyed_loc[i]:
            pb.location = plan.loc[frame, i].tolist()


def bake_action(target: bpy.types.Object, plans: Sequence[Plan], name: str, created: list):
    """One new action holding every plan's bones (one take), keyed with the bulk F-curve API.
    Returns (action, slot); data-blocks created are appended to `created`."""
    action = bpy.data.actions.new(name)
    created.append(action)
    slot = None
    channels = []
    if hasattr(action, "slots"):
        slot = action.slots.new(id_type="OBJECT", name=target.name)
        layer = action.layers.new("Layer")
        strip = layer.strips.new(type="KEYFRAME")
        bag = strip.channelbag(slot, ensure=True)
    frames = plans[0].frames
    for plan in plans:
        for i, bone in enumerate(plan.names):
            pb = target.pose.bones[bone]
            prop, values = _rotation_channels(pb, plan.rot[:, i])
            path = f'pose.bones["{bone}"].{prop}'
            channels += [(path, k, bone, values[:, k]) for k in range(values.shape[1])]
            if plan.keyed_loc[i]:
                lpath = f'pose.bones["{bone}"].location'
                channels += [(lpath, k, bone, plan.loc[:, i, k]) for k in range(3)]
    co = np.empty((len(frames), 2), dtype=np.float32)
    co[:, 0] = frames
    for path, index, group, values in channels:
        if slot is not None:
            fc = bag.fcurves.new(path, index=index, group_name=group)
        else:  # Blender < 4.4
            fc = action.fcurves.new(path, index=index, action_group=group)
        fc.keyframe_points.add(len(frames))
        co[:, 1] = values
        fc.keyframe_points.foreach_set("co", co.ravel())
        fc.update()
    return action, slot


def _install_action(
    target, action, slot, use_nla: bool, frame0: float, notes: list[str], undo: list
):
    """Make `action` play on the target: active, or on a new NLA track. `undo` gets callables
    that reverse each step."""
    had_anim = target.animation_data is not None
    anim = target.animation_data_create()
    if not had_anim:
        undo.append(lambda: target.animation_data_clear())
    if anim.action is not None and not use_nla:
        notes.append(
            f"{target.name!r} already plays the action {anim.action.name!r}: the hand take went "
            "onto a new NLA track under it (that action keeps driving the other bones)"
        )
        use_nla = True
    if use_nla:
        track = anim.nla_tracks.new()
        track.name = action.name
        strip = track.strips.new(action.name, int(frame0), action)
        if slot is not None and hasattr(strip, "action_slot"):
            strip.action_slot = slot
        strip.blend_type = "REPLACE"
        undo.append(lambda: anim.nla_tracks.remove(track))
    else:
        anim.action = action
        if slot is not None:
            anim.action_slot = slot
        undo.append(lambda: setattr(anim, "action", None))


def retarget(
    context: bpy.types.Context,
    sources: Sequence[bpy.types.Object],
    target: bpy.types.Object,
    options: RetargetOptions | None = None,
) -> RetargetResult:
    """Transfer the HAMR hands `sources` onto `target` (module docstring). Raises BoneMapError /
    RetargetError with a message for the user, the scene unchanged."""
    options = options or RetargetOptions()
    if target is None or target.type != "ARMATURE":
        raise BoneMapError("choose a target armature (no armature is selected)")
    hands = [s for s in sources if s is not None and s.get(RIG_PROP) and s is not target]
    if not hands:
        raise RetargetError("select a HAMR hand to retarget (none is selected)")
    result = RetargetResult()
    by_side: dict[str, bpy.types.Object] = {}
    for src in hands:
        side = hand_side(src)
        if side in by_side:
            result.notes.append(
                f"{src.name!r}: the {side} hand is taken from {by_side[side].name!r}"
            )
            continue
        by_side[side] = src
    maps = {side: resolve_map(target, options.bone_map, side) for side in by_side}
    if options.wrist and not any(
        (target.data.bones.get(m.wrist_control(s)) is not None) for s, m in maps.items()
    ):
        raise BoneMapError("the map names no wrist bone to turn")
    context.view_layer.update()  # pose matrices as evaluated now
    plans: list[Plan] = []
    for side, src in by_side.items():
        animated = bool(_fcurve_index(src))
        bake = options.mode == "BAKE" or (options.mode == "AUTO" and animated)
        if bake and not animated:
            raise RetargetError(f"{src.name!r} has no animation to bake")
        motion = source_motion(src, bake, options)
        plans.append(plan_side(src, motion, target, maps[side], side, options))
    result.sides = list(by_side)
    result.map_name = ", ".join(sorted({m.name for m in maps.values()}))
    frame_sets = {tuple(p.frames.tolist()) for p in plans}
    names = [n for p in plans for n in p.names]
    state = _pose_state(target, names)
    created: list = []
    undo: list = []
    try:
        if len(plans[0].frames) == 1 and not (options.mode == "BAKE"):
            for plan in plans:
                apply_pose(target, plan, 0)
            result.frames = 1
        else:
            if len(frame_sets) > 1:  # both hands keyed on different frames: one action each
                groups = [[p] for p in plans]
            else:
                groups = [plans]
            for group in groups:
                srcs = "+".join(by_side[p.side].name for p in group)
                action, slot = bake_action(target, group, f"{target.name} HAMR {srcs}", created)
                action[ACTION_PROP] = json.dumps(
                    {
                        "source": srcs,
                        "target": target.name,
                        "sides": [p.side for p in group],
                        "map": result.map_name,
                    }
                )
                _install_action(
                    target, action, slot, options.use_nla, group[0].frames[0], result.notes, undo
                )
                result.actions.append(action)
            for plan in plans:  # the target shows the first baked frame right away
                apply_pose(target, plan, 0)
            result.frames = len(plans[0].frames)
    except BaseException:
        for step in reversed(undo):
            step()
        for id_block in reversed(created):
            bpy.data.actions.remove(id_block)
        _restore_pose(target, state)
        raise
    # what export.objects_to_export looks for: this armature carries a HAMR hand's motion
    target[ACTION_PROP] = json.dumps({"sources": [s.name for s in by_side.values()]})
    return result


# ------------------------------------------------------------------------------ append (headless)
def append_armature(context: bpy.types.Context, blend_path: str, name: str | None = None):
    """Append an armature (and the objects parented to it, e.g. the character's meshes) from a
    .blend into the active collection: the one named `name`, else the only armature with hand
    bones. Returns the armature object; RetargetError when there is none or several."""
    blend_path = os.path.abspath(blend_path)
    if not os.path.isfile(blend_path):
        raise RetargetError(f"rig file not found: {blend_path}")
    with bpy.data.libraries.load(blend_path, link=False) as (data_from, data_to):
        data_to.objects = list(data_from.objects)
    loaded = [o for o in data_to.objects if o is not None]
    arms = [o for o in loaded if o.type == "ARMATURE"]
    if name is not None:
        chosen = [o for o in arms if o.name == name or o.name.startswith(name + ".")]
        if not chosen:
            _remove(loaded)
            raise RetargetError(f"no armature named {name!r} in {blend_path}")
    else:
        chosen = [o for o in arms if has_hand_bones(o) and not o.get(RIG_PROP)]
        if len(chosen) != 1:
            _remove(loaded)
            what = (
                "no armature with hand bones" if not chosen else "several armatures with hand bones"
            )
            raise RetargetError(f"{what} in {blend_path}; name one as RIG.blend:ARMATURE")
    arm = chosen[0]

    def belongs(o) -> bool:
        while o is not None:
            if o == arm:
                return True
            o = o.parent
        return False

    keep = [o for o in loaded if belongs(o)]
    keep += [
        o
        for o in loaded
        if o not in keep
        and any(m.type == "ARMATURE" and m.object == arm for m in getattr(o, "modifiers", []))
    ]
    _remove([o for o in loaded if o not in keep])
    collection = context.collection or context.scene.collection
    for o in keep:
        collection.objects.link(o)
    return arm


def _remove(objects) -> None:
    for o in objects:
        try:
            bpy.data.objects.remove(o)
        except (ReferenceError, RuntimeError):
            pass


def retarget_all_hands(context: bpy.types.Context, target: bpy.types.Object, options=None):
    """Every HAMR hand in the scene whose side the target has (headless `--retarget`)."""
    hands = [o for o in context.scene.objects if o.type == "ARMATURE" and o.get(RIG_PROP)]
    names = [b.name for b in target.data.bones]
    bone_map = options.bone_map if options and options.bone_map else None
    if bone_map is None:
        found = bone_maps.detect_map(names)
        if found is None:
            raise BoneMapError(f"no hand bones found on {target.name!r}")
        bone_map = found[1]
    sides = set(bone_maps.fitting_sides(bone_map, names))
    matching = [h for h in hands if hand_side(h) in sides]
    if not matching:
        raise RetargetError(f"no HAMR hand of a side that {target.name!r} has ({sorted(sides)})")
    opts = options or RetargetOptions()
    opts.bone_map = bone_map
    return retarget(context, matching, target, opts)


# ------------------------------------------------------------------------------ the user map
def user_map(settings) -> BoneMap:
    """The user map of the scene's retarget settings as a BoneMap."""
    sides: dict[str, dict[str, str]] = {}
    for item in settings.user_map:
        if item.bone:
            sides.setdefault(item.side, {})[item.joint] = item.bone
    return BoneMap(settings.user_map_name or "User", sides)


def fill_user_map(settings, bone_map: BoneMap) -> None:
    """Replace the user map's rows with `bone_map`'s (every joint of both sides, blank when
    the map has no bone for it)."""
    settings.user_map.clear()
    settings.user_map_name = bone_map.name
    for side in bone_maps.SIDES:
        entries = bone_map.sides.get(side, {})
        for joint in (*bone_maps.JOINTS, bone_maps.WRIST_CONTROL):
            item = settings.user_map.add()
            item.side, item.joint, item.bone = side, joint, entries.get(joint, "")


def _map_for(settings, target) -> BoneMap | None:
    key = settings.bone_map
    if key == "AUTO":
        return None
    if key == "USER":
        return user_map(settings)
    if key == "MIXAMO" and target is not None and target.type == "ARMATURE":
        found = bone_maps.detect_map(b.name for b in target.data.bones)
        if found is not None and found[0] == "MIXAMO":
            return found[1]  # with the armature's own prefix
    return bone_maps.BUILTIN_MAPS[key]


def preset_dir() -> str:
    """Where bone-map presets go: the extension's user folder (bone_maps/), or a temp folder
    when not running as an installed extension."""
    pkg = __package__.rsplit(".", 1)[0]
    try:
        return bpy.utils.extension_path_user(pkg, path="bone_maps", create=True)
    except (ValueError, AttributeError):
        import tempfile

        path = os.path.join(tempfile.gettempdir(), "hamr_bone_maps")
        os.makedirs(path, exist_ok=True)
        return path


# ------------------------------------------------------------------------------ UI
class HAMR_BoneMapItem(bpy.types.PropertyGroup):
    side: StringProperty(name="Side")
    joint: StringProperty(name="Joint")
    bone: StringProperty(name="Bone", description="The target bone for this joint")


def _target_poll(self, obj) -> bool:
    return obj.type == "ARMATURE" and not obj.get(RIG_PROP)


class HAMR_RetargetSettings(bpy.types.PropertyGroup):
    """scene.hamr_retarget: the panel's retarget settings and the user map."""

    target: PointerProperty(
        name="Target", type=bpy.types.Object, poll=_target_poll,
        description="The armature that gets the hand's pose (a character rig)",
    )  # fmt: skip
    bone_map: EnumProperty(name="Bone Map", items=MAP_ITEMS, default="AUTO")
    mode: EnumProperty(name="Mode", items=MODE_ITEMS, default="AUTO")
    wrist: BoolProperty(
        name="Wrist", default=False,
        description="Also turn the hand (wrist relative to the forearm) as the HAMR hand turns",
    )  # fmt: skip
    placement: BoolProperty(
        name="Placement", default=False,
        description="Also move the hand to the HAMR hand's world place (off for a character)",
    )  # fmt: skip
    use_nla: BoolProperty(name="Push to NLA", default=False)
    fingertips: BoolProperty(
        name="Match Fingertips", default=False,
        description="Also bend the target's fingers so that its fingertips reach the HAMR "
        "fingertips' places in the hand (scaled by hand length) and a finger touching the thumb "
        "keeps touching it: for a rig with other finger proportions. Off: every bone points as "
        "the HAMR bone does",
    )  # fmt: skip
    use_range: BoolProperty(name="Frame Range", default=False)
    frame_start: IntProperty(name="Start", default=1)
    frame_end: IntProperty(name="End", default=250)
    user_map: CollectionProperty(type=HAMR_BoneMapItem)
    user_map_name: StringProperty(name="Name", default="User")
    user_side: EnumProperty(
        name="Side", items=(("left", "Left", ""), ("right", "Right", "")), default="right"
    )


def _settings(context):
    return context.scene.hamr_retarget


def _target_of(context) -> bpy.types.Object | None:
    s = _settings(context)
    if s.target is not None:
        return s.target
    obj = context.active_object
    if obj is not None and obj.type == "ARMATURE" and not obj.get(RIG_PROP):
        return obj
    return None


def _sources_of(context) -> list[bpy.types.Object]:
    out = []
    for obj in context.selected_objects or []:
        arm = find_hand_armature(obj)
        if arm is not None and arm not in out:
            out.append(arm)
    if not out:
        arm = find_hand_armature(context.active_object)
        if arm is not None:
            out.append(arm)
    return out


class HAMR_OT_retarget(bpy.types.Operator):
    """Transfer the selected HAMR hand's pose or keyed take onto the target armature's hand bones"""

    bl_idname = "hamr.retarget"
    bl_label = "Retarget Hand"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = _settings(context)
        target = _target_of(context)
        options = RetargetOptions(
            bone_map=None,
            wrist=s.wrist,
            placement=s.placement,
            mode=s.mode,
            frame_start=s.frame_start if s.use_range else None,
            frame_end=s.frame_end if s.use_range else None,
            use_nla=s.use_nla,
            fingertips=s.fingertips,
        )
        try:
            options.bone_map = _map_for(s, target)
            result = retarget(context, _sources_of(context), target, options)
        except DOMAIN_ERRORS as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        for note in result.notes:
            self.report({"INFO"}, f"HAMR: {note}")
        what = f"{result.frames} frames baked" if result.actions else "pose set"
        self.report(
            {"INFO"}, f"HAMR: retargeted {'/'.join(result.sides)} onto {target.name} ({what})"
        )
        return {"FINISHED"}


class HAMR_OT_bone_map_fill(bpy.types.Operator):
    """Fill the user map from the chosen (or detected) map, to edit it"""

    bl_idname = "hamr.bone_map_fill"
    bl_label = "Edit as User Map"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = _settings(context)
        target = _target_of(context)
        try:
            bone_map = _map_for(s, target) if s.bone_map != "USER" else user_map(s)
            if bone_map is None:
                found = bone_maps.detect_map(b.name for b in target.data.bones) if target else None
                bone_map = found[1] if found else BoneMap("User", {})
        except DOMAIN_ERRORS as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        fill_user_map(s, bone_map)
        s.bone_map = "USER"
        return {"FINISHED"}


class HAMR_OT_bone_map_save(bpy.types.Operator):
    """Save the user map as a JSON preset"""

    bl_idname = "hamr.bone_map_save"
    bl_label = "Save Map Preset"

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def invoke(self, context, event):
        self.filepath = os.path.join(preset_dir(), f"{_settings(context).user_map_name}.json")
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        text = bone_maps.map_to_json(user_map(_settings(context)))
        try:
            with open(bpy.path.abspath(self.filepath), "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            self.report({"ERROR"}, f"could not save the preset: {e}")
            return {"CANCELLED"}
        return {"FINISHED"}


class HAMR_OT_bone_map_load(bpy.types.Operator):
    """Load a JSON bone-map preset into the user map"""

    bl_idname = "hamr.bone_map_load"
    bl_label = "Load Map Preset"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def invoke(self, context, event):
        self.filepath = preset_dir() + os.sep
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            with open(bpy.path.abspath(self.filepath), encoding="utf-8") as f:
                bone_map = bone_maps.map_from_json(f.read())
        except (OSError, BoneMapError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        s = _settings(context)
        fill_user_map(s, bone_map)
        s.bone_map = "USER"
        return {"FINISHED"}


class HAMR_PT_retarget(bpy.types.Panel):
    bl_label = "HAMR Retarget"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "HAMR"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        s = _settings(context)
        layout.prop(s, "target")
        layout.prop(s, "bone_map")
        target = _target_of(context)
        if target is not None:
            found = bone_maps.detect_map(b.name for b in target.data.bones)
            layout.label(text=f"Detected: {found[1].name if found else 'no hand bones'}")
        row = layout.row(align=True)
        row.prop(s, "mode", expand=True)
        row = layout.row(align=True)
        row.prop(s, "wrist")
        row.prop(s, "placement")
        layout.prop(s, "fingertips")
        layout.prop(s, "use_nla")
        row = layout.row(align=True)
        row.prop(s, "use_range")
        sub = row.row(align=True)
        sub.enabled = s.use_range
        sub.prop(s, "frame_start")
        sub.prop(s, "frame_end")
        layout.operator("hamr.retarget", icon="ARMATURE_DATA")
        box = layout.box()
        row = box.row(align=True)
        row.operator("hamr.bone_map_fill", icon="GREASEPENCIL")
        row.operator("hamr.bone_map_load", text="", icon="FILE_FOLDER")
        row.operator("hamr.bone_map_save", text="", icon="FILE_TICK")
        if s.bone_map == "USER":
            box.prop(s, "user_map_name")
            box.prop(s, "user_side", expand=True)
            for item in s.user_map:
                if item.side != s.user_side:
                    continue
                if target is not None:
                    box.prop_search(item, "bone", target.data, "bones", text=item.joint)
                else:
                    box.prop(item, "bone", text=item.joint)


classes = (
    HAMR_BoneMapItem,
    HAMR_RetargetSettings,
    HAMR_OT_retarget,
    HAMR_OT_bone_map_fill,
    HAMR_OT_bone_map_save,
    HAMR_OT_bone_map_load,
    HAMR_PT_retarget,
)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.hamr_retarget = PointerProperty(type=HAMR_RetargetSettings)


def unregister() -> None:
    del bpy.types.Scene.hamr_retarget
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)


# ------------------------------------------------------------------------------ headless
def parse_rig_spec(spec: str) -> tuple[str, str | None]:
    """'RIG.blend[:ARMATURE]' -> (path, armature name or None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.lower().endswith(".blend") and tail:
        return head, tail
    return spec, None


def headless_steps(
    context: bpy.types.Context,
    rig_spec: str | None,
    export_path: str | None,
    fingertips: bool = False,
) -> dict:
    """`hamr blend --retarget RIG.blend[:ARMATURE] [--retarget-fingertips] --export
    OUT.fbx|OUT.glb`, after the import: append the armature, retarget every HAMR hand of a side
    it has onto it (fingertips: Match Fingertips), export. Returns
    {"target", "notes", "exported"}; raises RetargetError / BoneMapError / export.ExportError."""
    info: dict = {"target": None, "notes": [], "exported": None}
    if rig_spec:
        path, name = parse_rig_spec(rig_spec)
        target = append_armature(context, path, name)
        try:
            result = retarget_all_hands(context, target, RetargetOptions(fingertips=fingertips))
        except DOMAIN_ERRORS:
            _remove([o for o in bpy.data.objects if o == target or o.parent == target])
            raise
        info["target"] = target.name
        info["notes"] = result.notes
    if export_path:
        from . import export

        info["exported"] = export.export_file(context, export_path)
    return info
