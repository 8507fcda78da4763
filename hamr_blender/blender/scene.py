"""Put predictions into the scene: posed hands and video keyframes (the camera: `camera`).

- `import_prediction`: one posed rig per hand of a ``hamr.prediction/1`` result, the first hand's
  model origin at the 3D cursor and the others where the photo puts them relative to it; the
  prediction JSON is stored on each armature (``hamr_prediction``) with the camera it implies
  (``hamr_camera``); optionally the scene camera is aligned.
- `key_video`: one rig per video track, parented to an "origin" empty that stands for the fixed
  camera; each frame keys the bones' quaternions (continuous signs) and the armature's location
  (the hand's translation in the camera frame) with the bulk F-curve API.
- the camera (optional): `camera.align_camera`'s steps, its data-blocks made before anything
  is linked.

Failure safety: everything is built into new data-blocks that no scene links to, recorded in a
`rig.NewData`; only the last step links them and changes scene settings. On any error the
caller removes what was recorded, so the user's scene is as it was.

Imports bpy, mathutils and numpy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import bpy
import numpy as np

from ..io import convert
from ..io.payload import Prediction, RigData, Track, VideoResult, image_size_from_K, video_tracks
from .camera import (
    CAMERA_PROP,
    ImageSource,
    SceneBuildError,
    apply_camera,
    camera_record_json,
    prepare_camera,
)
from .rig import KIND_PROP, NewData, RigOptions, bone_rest_rotations, build_hand_rig, pose_hand

PREDICTION_PROP = "hamr_prediction"


@dataclass
class ImportResult:
    """What an import created, and notes for the user."""

    armatures: list[bpy.types.Object] = field(default_factory=list)
    meshes: list[bpy.types.Object] = field(default_factory=list)
    camera: bpy.types.Object | None = None
    notes: list[str] = field(default_factory=list)


def _link(objects: Sequence[bpy.types.Object], collection: bpy.types.Collection) -> None:
    for obj in objects:
        if obj.name not in collection.objects:
            collection.objects.link(obj)


# ------------------------------------------------------------------------------ photo
def _build_rig(rig: RigData, betas, name: str, options, new: NewData, notes: list[str]):
    """build_hand_rig with the import options; its notes are added to `notes` once each."""
    arm_obj, mesh_obj, rig_notes = build_hand_rig(
        rig, betas, RigOptions(name, options.shape_keys, options.correctives), new
    )
    notes.extend(n for n in rig_notes if n not in notes)
    return arm_obj, mesh_obj


def import_prediction(
    context: bpy.types.Context,
    prediction: Prediction,
    rigs: dict[str, RigData],
    options: RigOptions,
    source: ImageSource,
    new: NewData,
    align: bool = True,
    location: Sequence[float] | None = None,
) -> ImportResult:
    """Build one posed hand per predicted hand (see the module docstring). `rigs` maps each side
    that occurs to its rig data. Links everything to the active collection at the end."""
    if not prediction.hands:
        raise SceneBuildError(
            "the backend found no hand in the image; give the hand's box (Box option) or try "
            "another side"
        )
    result = ImportResult()
    cursor = np.asarray(
        context.scene.cursor.location if location is None else location, dtype=np.float64
    )
    camera_loc = convert.camera_location_for_hand(cursor, prediction.hands[0].transl)
    cam_rot = convert.camera_rotation_world()
    for i, hand in enumerate(prediction.hands):
        if hand.side not in rigs:
            raise SceneBuildError(f"no rig data for the {hand.side} hand")
        name = options.name if len(prediction.hands) == 1 else f"{options.name} {i + 1}"
        arm_obj, mesh_obj = _build_rig(
            rigs[hand.side], hand.betas, name, options, new, result.notes
        )
        hand_loc = camera_loc + convert.model_to_blender(hand.transl)
        arm_obj.location = hand_loc.tolist()
        pose_hand(arm_obj, hand.pose_axis_angle)
        arm_obj["hamr_betas"] = [float(b) for b in hand.betas]  # storage of Object.hamr_betas
        doc = dict(prediction.raw)
        doc["hands"] = [hand.raw]
        arm_obj[PREDICTION_PROP] = json.dumps(doc)
        rel = np.eye(4)  # the camera in the armature's space: at -transl, looking along +Y
        rel[:3, :3] = cam_rot
        rel[:3, 3] = -convert.model_to_blender(hand.transl)
        arm_obj[CAMERA_PROP] = camera_record_json(
            hand.K, prediction.width, prediction.height, source, "self", rel
        )
        result.armatures.append(arm_obj)
        result.meshes.append(mesh_obj)
    camera_parts = None
    if align:  # build the camera's data-blocks before anything is linked
        camera_parts = prepare_camera(context, result.armatures[0], new)
    # --- last step: link and change the scene
    collection = context.collection or context.scene.collection
    _link(
        [o for pair in zip(result.armatures, result.meshes, strict=True) for o in pair], collection
    )
    if camera_parts is not None:
        result.camera = apply_camera(context, *camera_parts)
    _select(context, result.armatures)
    return result


def _select(context: bpy.types.Context, objects: Sequence[bpy.types.Object]) -> None:
    view_layer = context.view_layer
    for obj in view_layer.objects:
        if obj.select_get():
            obj.select_set(False)
    for obj in objects:
        if obj.name in view_layer.objects:
            obj.select_set(True)
    if objects and objects[0].name in view_layer.objects:
        view_layer.objects.active = objects[0]


# ------------------------------------------------------------------------------ video
def _new_fcurve(action, slot, data_path: str, index: int, group: str):
    """An F-curve on `action` for `slot`: the layered API (Blender 4.4+), else the legacy one."""
    if slot is not None:
        layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
        strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
        bag = strip.channelbag(slot, ensure=True)
        return bag.fcurves.new(data_path, index=index, group_name=group)
    return action.fcurves.new(data_path, index=index, action_group=group)


def _assign_action(obj: bpy.types.Object, action, new: NewData):
    """Give `obj` the action; returns the slot (None on Blender without slotted actions)."""
    anim = obj.animation_data_create()
    slot = None
    if hasattr(action, "slots"):
        slot = action.slots.new(id_type="OBJECT", name=obj.name)
    anim.action = action
    if slot is not None:
        anim.action_slot = slot
    return slot


def key_fcurves(
    action, slot, channels: list[tuple[str, int, str, np.ndarray]], frames: np.ndarray
) -> None:
    """Key many channels at once: each (data_path, index, group, values (N,)) at `frames` (N,),
    with keyframe_points.add(N) + foreach_set("co") (no per-key Python calls)."""
    co = np.empty((len(frames), 2), dtype=np.float32)
    co[:, 0] = frames
    for data_path, index, group, values in channels:
        fc = _new_fcurve(action, slot, data_path, index, group)
        fc.keyframe_points.add(len(frames))
        co[:, 1] = values
        fc.keyframe_points.foreach_set("co", co.ravel())
        fc.update()


def track_keys(
    track: Track, rest_rotations: np.ndarray, video_fps: float, scene_fps: float, start: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A track's keys: (frames (N,), bone quaternions (N, 16, 4) with continuous signs,
    locations (N, 3) = the translation in the Blender frame). When several video frames land on
    one scene frame (video faster than the scene), the last one wins."""
    frames = np.array(
        [convert.scene_frame(int(i), video_fps, scene_fps, start) for i in track.frame_indices]
    )
    keep = np.ones(len(frames), dtype=bool)
    keep[:-1] = frames[1:] != frames[:-1]
    quats = convert.bone_local_rotations(track.pose_axis_angle[keep], rest_rotations)
    quats = convert.quaternion_continuity(quats)
    locs = convert.model_to_blender(track.transl[keep])
    return frames[keep], quats, locs


def key_video(
    context: bpy.types.Context,
    video: VideoResult,
    rigs: dict[str, RigData],
    options: RigOptions,
    source: ImageSource,
    new: NewData,
    align: bool = True,
    location: Sequence[float] | None = None,
) -> ImportResult:
    """One keyed rig per track of a video result (see the module docstring)."""
    tracks = video_tracks(video)
    if not tracks:
        raise SceneBuildError("the backend found no hand in the video")
    scene = context.scene
    scene_fps = scene.render.fps / scene.render.fps_base
    start = scene.frame_start
    cursor = np.asarray(scene.cursor.location if location is None else location, dtype=np.float64)
    camera_loc = convert.camera_location_for_hand(cursor, tracks[0].transl[0])
    width, height = video.width, video.height
    if width is None or height is None:
        width, height = image_size_from_K(tracks[0].K)
    result = ImportResult()
    origin = new.add(bpy.data.objects.new(f"{options.name} Video Origin", None))
    origin.empty_display_type = "PLAIN_AXES"
    origin.empty_display_size = 0.02
    origin.location = camera_loc.tolist()
    origin[KIND_PROP] = "video_origin"
    rel = np.eye(4)
    rel[:3, :3] = convert.camera_rotation_world()
    last_frame = start
    for track in tracks:
        name = options.name if len(tracks) == 1 else f"{options.name} {track.track}"
        arm_obj, mesh_obj = _build_rig(
            rigs[track.side], track.shape_betas, name, options, new, result.notes
        )
        arm_obj.parent = origin
        names = json.loads(arm_obj["hamr_rig"])["joint_names"]
        frames, quats, locs = track_keys(
            track, bone_rest_rotations(arm_obj, names), video.fps, scene_fps, start
        )
        action = new.add(bpy.data.actions.new(f"{name} Motion"))
        slot = _assign_action(arm_obj, action, new)
        channels = [("location", k, "Object Transforms", locs[:, k]) for k in range(3)]
        for j, bone in enumerate(names):
            path = f'pose.bones["{bone}"].rotation_quaternion'
            channels += [(path, k, bone, quats[:, j, k]) for k in range(4)]
        key_fcurves(action, slot, channels, frames)
        # the first keyed frame, so the rig looks right before the animation is evaluated
        arm_obj.location = locs[0].tolist()
        for j, bone in enumerate(names):
            arm_obj.pose.bones[bone].rotation_quaternion = quats[0, j].tolist()
        arm_obj["hamr_betas"] = [float(b) for b in track.shape_betas]
        arm_obj[PREDICTION_PROP] = json.dumps(
            {
                "schema": "hamr.video/1",
                "fps": video.fps,
                "track": track.track,
                "frames": len(track.frame_indices),
                "fitted_frames": track.fitted_frames,
            }
        )
        arm_obj[CAMERA_PROP] = camera_record_json(track.K, width, height, source, "parent", rel)
        last_frame = max(last_frame, int(frames[-1]))
        result.armatures.append(arm_obj)
        result.meshes.append(mesh_obj)
    camera_parts = prepare_camera(context, result.armatures[0], new) if align else None
    # --- last step: link and change the scene
    collection = context.collection or scene.collection
    pairs = zip(result.armatures, result.meshes, strict=True)
    _link([origin] + [o for p in pairs for o in p], collection)
    scene.frame_end = max(scene.frame_end, last_frame)
    if camera_parts is not None:
        result.camera = apply_camera(context, *camera_parts)
    _select(context, result.armatures)
    return result
