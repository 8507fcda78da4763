"""Put predictions into the scene: posed hands and video keyframes (the camera: `camera`).

- `import_prediction`: one posed rig per hand of a ``hamr.prediction/1`` result, the first hand's
  model origin at the 3D cursor and the others where the photo puts them relative to it; the
  pose is keyed into an action at the scene's start frame (so exporters such as glTF carry it);
  the prediction JSON is kept in a text data-block that each armature's ``hamr_prediction``
  points to (`store_prediction`), with the camera it implies
  (``hamr_camera``) and its confidence (``hamr_score``, ``hamr_signals``,
  ``hamr_network_weight``); optionally the scene camera is aligned. Hands that a detector found
  with a score under `TakeOptions.min_score` are not built (a given box always is).
- `key_video`: one rig per video track, parented to an "origin" empty that stands for the fixed
  camera; each video frame keys the bones' rotations (quaternions with w >= 0 on the first key
  and continuous signs, or XYZ Euler angles) and the armature's location (the hand's
  translation in the camera frame) with the bulk F-curve API, at the scene frame of its time
  (`convert.scene_frame_times`: fractional frames when the rates differ, none dropped or
  doubled); the clip behind the camera is driven to show the frame whose key is nearest
  (`convert.clip_offset_expression`), and the scene's frame range becomes the take's.
- each import (a take) goes into a new collection named for its source.
- the camera (optional): `camera.align_camera`'s steps, its data-blocks made before anything
  is linked.

Failure safety: everything is built into new data-blocks that no scene links to, recorded in a
`rig.NewData`; only the last step links them and changes scene settings. On any error the
caller removes what was recorded, so the user's scene is as it was.

Imports bpy, mathutils and numpy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import bpy
import numpy as np

from ..io import convert
from ..io.payload import (
    Hand,
    Prediction,
    RigData,
    Track,
    VideoResult,
    image_size_from_K,
    video_tracks,
)
from .camera import (
    CAMERA_PROP,
    ImageSource,
    SceneBuildError,
    apply_camera,
    camera_record_json,
    prepare_camera,
)
from .rig import (
    KIND_PROP,
    NewData,
    RigOptions,
    bone_rest_rotations,
    build_hand_rig,
    joint_bones,
    pose_hand,
    pose_rotations,
    rig_record,
    store_betas,
)

PREDICTION_PROP = "hamr_prediction"
SCORE_PROP = "hamr_score"  # the hand's confidence (a video track's: its median frame score)
SIGNALS_PROP = "hamr_signals"  # what made the hand, e.g. "mediapipe_2d, mediapipe_3d, network"
NETWORK_WEIGHT_PROP = "hamr_network_weight"  # the fusion's trust in the network, when fused
# Hands a detector finds under this score are not built. Measured with the shipped checkpoint
# (README "Detection on the wild photos"): real hands that MediaPipe finds score 0.22-0.29, the
# network detector's false boxes on a trumpet's valves 0.09-0.11 and on a glove's cuff 0.08.
DEFAULT_MIN_SCORE = 0.15
NO_HAND_HINT = (
    "pass the hand's box (Use Box in the Image panel, --box for hamr blend) or lower the "
    "Min Score option"
)


@dataclass(frozen=True)
class TakeOptions:
    """How a prediction or a video becomes keys in the scene."""

    rotation_mode: str = "QUATERNION"  # the bones' rotation channels: QUATERNION or XYZ (Euler)
    min_score: float = DEFAULT_MIN_SCORE  # detected hands under this score are not built
    scene_fps: str = "KEEP"  # video: KEEP the scene's rate (keys mapped by time) or CLIP (use its)
    set_resolution: bool = False  # the aligned camera: the render size becomes the image's


def take_options(op) -> TakeOptions:
    """The take options an operator (or `headless.BlendOptions`) carries; defaults for any
    it lacks."""
    return TakeOptions(
        rotation_mode=getattr(op, "rotation_mode", "QUATERNION"),
        min_score=float(getattr(op, "min_score", DEFAULT_MIN_SCORE)),
        scene_fps=getattr(op, "scene_fps", "KEEP"),
        set_resolution=bool(getattr(op, "set_resolution", False)),
    )


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


def source_label(source: ImageSource) -> str:
    """A short name for the photo or clip of a take (its file name, or the image's name)."""
    if source.path:
        return os.path.basename(source.path)
    return source.image_name or ("clip" if source.kind == "movie" else "image")


def _take_collection(source: ImageSource, new: NewData) -> bpy.types.Collection:
    """A new collection for one take, named for its source, not linked yet (`_link_take`)."""
    return new.add(bpy.data.collections.new(f"HAMR {source_label(source)}"))


def _link_take(context, collection: bpy.types.Collection, objects) -> None:
    """The last step of a take: its objects into its collection, the collection into the
    scene's (beside the user's collections, never inside the active one)."""
    _link(objects, collection)
    context.scene.collection.children.link(collection)


def hand_signals(hand: Hand) -> tuple[str, float | None]:
    """(what made a hand, the fusion's trust in the network or None) from its "fit": the signals
    the backend lists, or "network" alone for a hand that was not fused."""
    fit = hand.raw.get("fit")
    if isinstance(fit, dict) and isinstance(fit.get("signals"), list):
        weight = fit.get("network_weight")
        weight = float(weight) if isinstance(weight, (int, float)) else None
        return ", ".join(str(x) for x in fit["signals"]), weight
    return "network", None


def store_prediction(arm_obj, doc: dict, new: NewData) -> bpy.types.Text:
    """Keep a hand's prediction (or video track summary) as JSON in a text data-block named for
    the hand (readable in the Text Editor), pointed to by the armature's ``hamr_prediction``
    property: not a long string among its custom properties."""
    text = new.add(bpy.data.texts.new(f"{arm_obj.name} prediction.json"))
    text.from_string(json.dumps(doc, indent=1))
    arm_obj[PREDICTION_PROP] = text
    return text


def stored_prediction(arm_obj) -> dict | None:
    """The prediction kept on a hand (`store_prediction`; a JSON string in files from before),
    or None when it has none or it is unreadable."""
    value = arm_obj.get(PREDICTION_PROP) if arm_obj is not None else None
    if isinstance(value, bpy.types.Text):
        value = value.as_string()
    if not isinstance(value, str):
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _store_confidence(arm_obj, score: float, signals: str, weight: float | None) -> None:
    arm_obj[SCORE_PROP] = float(score)
    arm_obj[SIGNALS_PROP] = signals
    if weight is not None:
        arm_obj[NETWORK_WEIGHT_PROP] = float(weight)


def confident_hands(prediction: Prediction, min_score: float) -> list[Hand]:
    """The hands to build: all of them when the boxes were given (the user says there is a
    hand), else those a detector found with score >= min_score. SceneBuildError, saying so and
    what to do, when none is left."""
    hands = prediction.hands
    detector = prediction.raw.get("detector")
    if detector:
        hands = [h for h in hands if h.score >= min_score]
    if hands:
        return hands
    if not prediction.hands:
        raise SceneBuildError(f"no hand found in the image: {NO_HAND_HINT}")
    best = max(h.score for h in prediction.hands)
    n = len(prediction.hands)
    raise SceneBuildError(
        f"no hand found: {n} candidate{'s' if n != 1 else ''} scored under the Min Score "
        f"{min_score:g} (best {best:.2f}); {NO_HAND_HINT}"
    )


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
    take: TakeOptions = TakeOptions(),
) -> ImportResult:
    """Build one posed hand per confident hand (see the module docstring). `rigs` maps each side
    that occurs to its rig data. Links everything into a new collection at the end."""
    hands = confident_hands(prediction, take.min_score)
    result = ImportResult()
    dropped = len(prediction.hands) - len(hands)
    if dropped:
        result.notes.append(
            f"{dropped} detected hand{'s' if dropped != 1 else ''} under the Min Score "
            f"{take.min_score:g} not built"
        )
    scene = context.scene
    cursor = np.asarray(scene.cursor.location if location is None else location, dtype=np.float64)
    camera_loc = convert.camera_location_for_hand(cursor, hands[0].transl)
    cam_rot = convert.camera_rotation_world()
    collection = _take_collection(source, new)
    for i, hand in enumerate(hands):
        if hand.side not in rigs:
            raise SceneBuildError(f"no rig data for the {hand.side} hand")
        name = options.name if len(hands) == 1 else f"{options.name} {i + 1}"
        arm_obj, mesh_obj = _build_rig(
            rigs[hand.side], hand.betas, name, options, new, result.notes
        )
        hand_loc = camera_loc + convert.model_to_blender(hand.transl)
        arm_obj.location = hand_loc.tolist()
        pose_hand(arm_obj, hand.pose_axis_angle, take.rotation_mode)
        _key_pose(arm_obj, f"{name} Pose", hand.pose_axis_angle[None], None,
                  np.array([float(scene.frame_start)]), take.rotation_mode, new)  # fmt: skip
        store_betas(arm_obj, hand.betas)  # the shape slider's value
        doc = dict(prediction.raw)
        doc["hands"] = [hand.raw]
        store_prediction(arm_obj, doc, new)
        _store_confidence(arm_obj, hand.score, *hand_signals(hand))
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
        camera_parts = prepare_camera(context, result.armatures[0], new, take.set_resolution)
    # --- last step: link and change the scene
    _link_take(
        context,
        collection,
        [o for pair in zip(result.armatures, result.meshes, strict=True) for o in pair],
    )
    if camera_parts is not None:
        result.camera = apply_camera(context, *camera_parts)
    _select(context, result.armatures)
    return result


def apply_prediction(
    arm_obj: bpy.types.Object,
    prediction: Prediction,
    frame: float,
    take: TakeOptions = TakeOptions(),
) -> Hand:
    """Key a photo's pose onto an existing HAMR hand at `frame` instead of building a new one
    (photos taken one after another become the hand's keys): the prediction's best hand of the
    rig's side, its rotations keyed into the rig's action (inserted among the keys it has, each
    quaternion on the side of the key before it, so blends never swing the long way). The rig
    keeps its shape and place. SceneBuildError when no hand of that side is confident enough."""
    side = rig_record(arm_obj).get("side", "right")
    hands = [h for h in confident_hands(prediction, take.min_score) if h.side == side]
    if not hands:
        raise SceneBuildError(f"the result has no {side} hand for {arm_obj.name!r}")
    hand = max(hands, key=lambda h: h.score)
    names = joint_bones(arm_obj)
    values = pose_rotations(
        hand.pose_axis_angle[None], bone_rest_rotations(arm_obj, names), take.rotation_mode
    )[0]
    for name, value in zip(names, values, strict=True):
        pbone = arm_obj.pose.bones[name]
        if take.rotation_mode == "QUATERNION":
            before = _evaluated_quaternion(arm_obj, pbone, frame)
            if before is not None and float(np.dot(before, value)) < 0:
                value = -value  # the short way from the key before
            pbone.rotation_mode = "QUATERNION"
            pbone.rotation_quaternion = value.tolist()
            pbone.keyframe_insert("rotation_quaternion", frame=frame, group=name)
        else:
            pbone.rotation_mode = take.rotation_mode
            pbone.rotation_euler = value.tolist()
            pbone.keyframe_insert("rotation_euler", frame=frame, group=name)
    _store_confidence(arm_obj, hand.score, *hand_signals(hand))
    return hand


def _evaluated_quaternion(arm_obj, pbone, frame: float) -> np.ndarray | None:
    """The bone's keyed quaternion at `frame` from its F-curves (the last key before it rules),
    or None when it has no keys yet."""
    anim = arm_obj.animation_data
    action = anim.action if anim is not None else None
    if action is None:
        return None
    path = f'pose.bones["{pbone.name}"].rotation_quaternion'
    curves = [_find_fcurve(action, anim, path, i) for i in range(4)]
    if any(c is None or not len(c.keyframe_points) for c in curves):
        return None
    return np.array([c.evaluate(frame) for c in curves])


def _find_fcurve(action, anim, data_path: str, index: int):
    """An F-curve of a (layered, Blender 5) action for the animated object's slot."""
    for layer in action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(anim.action_slot) if anim.action_slot is not None else None
            if bag is not None:
                curve = bag.fcurves.find(data_path, index=index)
                if curve is not None:
                    return curve
    return None


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


def _assign_action(id_block, action, new: NewData, id_type: str = "OBJECT"):
    """Give `id_block` the action; returns the slot (None on Blender without slotted actions)."""
    anim = id_block.animation_data_create()
    slot = None
    if hasattr(action, "slots"):
        slot = action.slots.new(id_type=id_type, name=id_block.name)
    anim.action = action
    if slot is not None:
        anim.action_slot = slot
    return slot


def key_fcurves(
    action, slot, channels: list[tuple[str, int, str, np.ndarray]], frames: np.ndarray
) -> None:
    """Key many channels at once: each (data_path, index, group, values (N,)) at `frames` (N,),
    scene frames, fractional where the keys fall between frames; with keyframe_points.add(N) +
    foreach_set("co") (no per-key Python calls)."""
    co = np.empty((len(frames), 2), dtype=np.float32)
    co[:, 0] = frames
    for data_path, index, group, values in channels:
        fc = _new_fcurve(action, slot, data_path, index, group)
        fc.keyframe_points.add(len(frames))
        co[:, 1] = values
        fc.keyframe_points.foreach_set("co", co.ravel())
        fc.update()


def _key_pose(
    arm_obj: bpy.types.Object,
    action_name: str,
    poses: np.ndarray,
    locations: np.ndarray | None,
    frames: np.ndarray,
    rotation_mode: str,
    new: NewData,
) -> np.ndarray:
    """Key MANO poses (N, 16, 3) at scene frames (N,) into a new action on `arm_obj` (and the
    object's location (N, 3) when given); the bones take `rotation_mode`. Returns the keyed
    rotation values (N, 16, 4 or 3)."""
    names = joint_bones(arm_obj)
    values = pose_rotations(poses, bone_rest_rotations(arm_obj, names), rotation_mode)
    action = new.add(bpy.data.actions.new(action_name))
    slot = _assign_action(arm_obj, action, new)
    channels = []
    if locations is not None:
        channels += [("location", k, "Object Transforms", locations[:, k]) for k in range(3)]
    prop = "rotation_quaternion" if rotation_mode == "QUATERNION" else "rotation_euler"
    for j, bone in enumerate(names):
        arm_obj.pose.bones[bone].rotation_mode = rotation_mode
        path = f'pose.bones["{bone}"].{prop}'
        channels += [(path, k, bone, values[:, j, k]) for k in range(values.shape[-1])]
    key_fcurves(action, slot, channels, frames)
    # the first key, so the rig looks right before the animation is evaluated
    if locations is not None:
        arm_obj.location = locations[0].tolist()
    for j, bone in enumerate(names):
        setattr(arm_obj.pose.bones[bone], prop, values[0, j].tolist())
    return values


def track_keys(
    track: Track, rest_rotations: np.ndarray, video_fps: float, scene_fps: float, start: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A track's keys: (scene frames (N,) at each video frame's time, fractional where the rates
    differ, bone quaternions (N, 16, 4) with w >= 0 first and continuous signs, locations
    (N, 3) = the translation in the Blender frame). One key per video frame."""
    frames = convert.scene_frame_times(track.frame_indices, video_fps, scene_fps, start)
    quats = pose_rotations(track.pose_axis_angle, rest_rotations, "QUATERNION")
    return frames, quats, convert.model_to_blender(track.transl)


def confident_tracks(tracks: list[Track], min_score: float) -> list[Track]:
    """The tracks whose median frame score is at least min_score; SceneBuildError when none."""
    kept = [t for t in tracks if t.median_score >= min_score]
    if kept:
        return kept
    if not tracks:
        raise SceneBuildError("no hand found in the video")
    best = max(t.median_score for t in tracks)
    raise SceneBuildError(
        f"no hand found in the video: {len(tracks)} track(s) scored under the Min Score "
        f"{min_score:g} (best median {best:.2f}); lower the Min Score option"
    )


def align_clip_timing(
    clip, video_fps: float, scene_fps: float, start: int, last_index: int
) -> None:
    """Make the movie clip play in step with the keys: its first frame at the scene's start and,
    when the rates differ, its ``frame_offset`` driven (`convert.clip_offset_expression`) so
    that each scene frame shows the video frame whose time is nearest."""
    clip.frame_start = start
    if clip.animation_data is not None:
        clip.driver_remove("frame_offset")
    clip.frame_offset = 0
    if abs(video_fps - scene_fps) <= 1e-6 * scene_fps:
        return
    fcurve = clip.driver_add("frame_offset")
    fcurve.driver.type = "SCRIPTED"
    fcurve.driver.expression = convert.clip_offset_expression(
        video_fps, scene_fps, start, last_index
    )
    while len(fcurve.modifiers):  # older Blenders add a Generator to new drivers
        fcurve.modifiers.remove(fcurve.modifiers[0])


def key_video(
    context: bpy.types.Context,
    video: VideoResult,
    rigs: dict[str, RigData],
    options: RigOptions,
    source: ImageSource,
    new: NewData,
    align: bool = True,
    location: Sequence[float] | None = None,
    take: TakeOptions = TakeOptions(),
) -> ImportResult:
    """One keyed rig per confident track of a video result (see the module docstring)."""
    tracks = confident_tracks(video_tracks(video), take.min_score)
    scene = context.scene
    if take.scene_fps == "CLIP":
        scene_fps = video.fps
    elif take.scene_fps == "KEEP":
        scene_fps = scene.render.fps / scene.render.fps_base
    else:
        raise SceneBuildError(f"scene_fps must be KEEP or CLIP, got {take.scene_fps!r}")
    start = scene.frame_start
    cursor = np.asarray(scene.cursor.location if location is None else location, dtype=np.float64)
    camera_loc = convert.camera_location_for_hand(cursor, tracks[0].transl[0])
    width, height = video.width, video.height
    if width is None or height is None:
        width, height = image_size_from_K(tracks[0].K)
    result = ImportResult()
    collection = _take_collection(source, new)
    origin = new.add(bpy.data.objects.new(f"{options.name} Video Origin", None))
    origin.empty_display_type = "PLAIN_AXES"
    origin.empty_display_size = 0.02
    origin.location = camera_loc.tolist()
    origin[KIND_PROP] = "video_origin"
    rel = np.eye(4)
    rel[:3, :3] = convert.camera_rotation_world()
    last_frame = float(start)
    for track in tracks:
        name = options.name if len(tracks) == 1 else f"{options.name} {track.track}"
        arm_obj, mesh_obj = _build_rig(
            rigs[track.side], track.shape_betas, name, options, new, result.notes
        )
        arm_obj.parent = origin
        frames = convert.scene_frame_times(track.frame_indices, video.fps, scene_fps, start)
        locs = convert.model_to_blender(track.transl)
        _key_pose(arm_obj, f"{name} Motion", track.pose_axis_angle, locs, frames,
                  take.rotation_mode, new)  # fmt: skip
        store_betas(arm_obj, track.shape_betas)
        store_prediction(
            arm_obj,
            {
                "schema": "hamr.video/1",
                "fps": video.fps,
                "track": track.track,
                "frames": len(track.frame_indices),
                "fitted_frames": track.fitted_frames,
                "score": track.median_score,
            },
            new,
        )
        _store_confidence(arm_obj, track.median_score, track.signals, None)
        arm_obj[CAMERA_PROP] = camera_record_json(track.K, width, height, source, "parent", rel)
        last_frame = max(last_frame, float(frames[-1]))
        result.armatures.append(arm_obj)
        result.meshes.append(mesh_obj)
    camera_parts = None
    if align:
        camera_parts = prepare_camera(context, result.armatures[0], new, take.set_resolution)
    # --- last step: link and change the scene
    pairs = zip(result.armatures, result.meshes, strict=True)
    _link_take(context, collection, [origin] + [o for p in pairs for o in p])
    if take.scene_fps == "CLIP":
        scene.render.fps, scene.render.fps_base = convert.scene_rate(video.fps)
    scene.frame_end = max(start, int(math.ceil(last_frame - 1e-6)))  # the take's range
    if camera_parts is not None:
        result.camera = apply_camera(context, *camera_parts)
        background = camera_parts[3]
        if isinstance(background, bpy.types.MovieClip):
            last_index = max(index for index, _ in video.frames)
            align_clip_timing(background, video.fps, scene_fps, start, last_index)
    _select(context, result.armatures)
    return result
