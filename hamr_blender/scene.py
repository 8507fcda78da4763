"""Put predictions into the scene: posed hands, video keyframes and the aligned camera.

- `import_prediction`: one posed rig per hand of a ``hamr.prediction/1`` result, the first hand's
  model origin at the 3D cursor and the others where the photo puts them relative to it; the
  prediction JSON is stored on each armature (``hamr_prediction``) with the camera it implies
  (``hamr_camera``); optionally the scene camera is aligned.
- `key_video`: one rig per video track, parented to an "origin" empty that stands for the fixed
  camera; each frame keys the bones' quaternions (continuous signs) and the armature's location
  (the hand's translation in the camera frame) with the bulk F-curve API.
- `align_camera`: the scene camera from a hand's stored camera (convert.opencv_camera_to_blender),
  render resolution from the image, the photo or the movie clip as the camera's background. A
  photo stored sideways with an EXIF orientation (phones do this) shows upright there, as the
  backend saw it: Blender itself ignores the tag, so the background is an upright copy of the
  photo, packed into the .blend (`upright_image`).

Failure safety: everything is built into new data-blocks that no scene links to, recorded in a
`rig.NewData`; only the last step links them and changes scene settings. On any error the
caller removes what was recorded, so the user's scene is as it was.

Imports bpy, mathutils and numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import bpy
import numpy as np
from mathutils import Matrix

from . import convert, orientation
from .payload import Prediction, RigData, Track, VideoResult, image_size_from_K, video_tracks
from .rig import KIND_PROP, NewData, RigOptions, bone_rest_rotations, build_hand_rig, pose_hand

PREDICTION_PROP = "hamr_prediction"
CAMERA_PROP = "hamr_camera"
CAMERA_NAME = "HAMR Camera"
UPRIGHT_PROP = "hamr_upright_of"  # on an upright copy: which photo and orientation it turns


class SceneBuildError(RuntimeError):
    """The scene could not be built (the message is for the user)."""


@dataclass
class ImageSource:
    """Where the photo or the clip of a prediction lives in Blender (for the camera background)."""

    kind: str = "image"  # "image" or "movie"
    path: str = ""  # file path ("" for an image that only exists inside Blender)
    image_name: str = ""  # name of an image data-block already in Blender
    orientation: int = 1  # the photo's EXIF orientation (1: shown as stored)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImportResult:
    """What an import created, and notes for the user."""

    armatures: list[bpy.types.Object] = field(default_factory=list)
    meshes: list[bpy.types.Object] = field(default_factory=list)
    camera: bpy.types.Object | None = None
    notes: list[str] = field(default_factory=list)


def _matrix(rows: np.ndarray) -> Matrix:
    return Matrix([list(map(float, r)) for r in np.asarray(rows)])


def _camera_record(
    K: np.ndarray, width: int, height: int, source: ImageSource, anchor: str, rel: np.ndarray
) -> str:
    """JSON of a hand's camera: intrinsics, image size, source, and its placement relative to
    the anchor object ("self": the armature, "parent": the armature's parent)."""
    return json.dumps(
        {
            "K": np.asarray(K).tolist(),
            "width": int(width),
            "height": int(height),
            "source": source.to_dict(),
            "anchor": anchor,
            "matrix": np.asarray(rel).tolist(),
        }
    )


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
        arm_obj[CAMERA_PROP] = _camera_record(
            hand.K, prediction.width, prediction.height, source, "self", rel
        )
        result.armatures.append(arm_obj)
        result.meshes.append(mesh_obj)
    camera_parts = None
    if align:  # build the camera's data-blocks before anything is linked
        camera_parts = _prepare_camera(context, result.armatures[0], new)
    # --- last step: link and change the scene
    collection = context.collection or context.scene.collection
    _link(
        [o for pair in zip(result.armatures, result.meshes, strict=True) for o in pair], collection
    )
    if camera_parts is not None:
        result.camera = _apply_camera(context, *camera_parts)
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


# ------------------------------------------------------------------------------ camera
def camera_record(arm_obj: bpy.types.Object) -> dict:
    """The camera stored on a HAMR armature; SceneBuildError when it has none."""
    raw = arm_obj.get(CAMERA_PROP)
    if not raw:
        raise SceneBuildError(
            f"{arm_obj.name!r} has no HAMR camera: import a photo or a video first"
        )
    return json.loads(raw)


def object_world_matrix(obj: bpy.types.Object) -> Matrix:
    """An object's world matrix from its own transform and its parents' (object parenting).

    Unlike `matrix_world`, this is right before the depsgraph has evaluated the object, e.g. for
    objects that are not linked to a scene yet or were just moved by a script."""
    world = obj.matrix_basis.copy()
    while obj.parent is not None:
        world = obj.matrix_parent_inverse @ world
        obj = obj.parent
        world = obj.matrix_basis @ world
    return world


def camera_world_matrix(arm_obj: bpy.types.Object, record: dict) -> Matrix:
    """World matrix of a hand's camera: its anchor's world matrix times the stored placement."""
    anchor = arm_obj if record.get("anchor", "self") == "self" else arm_obj.parent
    if anchor is None:
        raise SceneBuildError(f"the camera anchor of {arm_obj.name!r} is missing")
    return object_world_matrix(anchor) @ _matrix(record["matrix"])


def _background_source(record: dict, new: NewData):
    """The image or movie clip to show behind the camera (loaded if needed), or None when it
    is gone or Blender cannot read it (the camera is aligned all the same)."""
    try:
        return _load_background(record, new)
    except RuntimeError as e:  # bpy's "cannot read file": no background, not a failed import
        print(f"HAMR: no camera background: {e}")
        return None


def upright_image(raw: bpy.types.Image, turn: int, name: str) -> bpy.types.Image:
    """A new image holding `raw`'s pixels turned as EXIF orientation `turn` says (the photo as
    a viewer and the backend show it); not packed, not recorded anywhere."""
    w, h = raw.size
    if w == 0 or h == 0:
        raise RuntimeError(f"the image {raw.name!r} has no pixels")
    pixels = np.empty(w * h * 4, dtype=np.float32)
    raw.pixels.foreach_get(pixels)
    # Blender's rows run bottom to top; EXIF's turns are for rows top to bottom
    turned = orientation.upright(pixels.reshape(h, w, 4)[::-1], turn)[::-1]
    out_h, out_w = turned.shape[:2]
    image = bpy.data.images.new(name, out_w, out_h, alpha=True, float_buffer=raw.is_float)
    image.colorspace_settings.name = raw.colorspace_settings.name
    image.alpha_mode = raw.alpha_mode
    image.pixels.foreach_set(np.ascontiguousarray(turned).ravel())
    return image


def _upright_background(raw_of, src: dict, turn: int, new: NewData):
    """The upright copy of a sideways photo: one made before for the same photo and turn, or a
    new one, packed (it exists nowhere on disk). raw_of() gives (the stored image, whether it
    was loaded just for this)."""
    key = json.dumps([src.get("path", ""), src.get("image_name", ""), turn])
    for image in bpy.data.images:
        if image.get(UPRIGHT_PROP) == key:
            return image
    raw, loaded = raw_of()
    if raw is None:
        return None
    try:
        stem = os.path.splitext(os.path.basename(src.get("path", "")))[0] or raw.name
        image = new.add(upright_image(raw, turn, f"{stem} (upright)"))
    finally:
        if loaded:
            bpy.data.images.remove(raw)
    image[UPRIGHT_PROP] = key
    image.pack()
    return image


def _load_background(record: dict, new: NewData):
    src = record.get("source") or {}
    if src.get("kind") == "movie":
        return _movie(src, new)
    turn = int(src.get("orientation", 1) or 1)
    if turn != 1:
        return _upright_background(lambda: _stored_image(src, None), src, turn, new)
    return _stored_image(src, new)[0]


def _movie(src: dict, new: NewData):
    path = src.get("path", "")
    if not path or not os.path.isfile(path):
        return None
    for clip in bpy.data.movieclips:
        if bpy.path.abspath(clip.filepath) == path:
            return clip
    return new.add(bpy.data.movieclips.load(path))


def _stored_image(src: dict, new: NewData | None):
    """(The photo's image as Blender loads it, whether it was loaded now): an image data-block
    of that name or file, else the file loaded (recorded in `new`, when given); (None, False)
    when it is gone."""
    path = src.get("path", "")
    name = src.get("image_name", "")
    if name and name in bpy.data.images:
        return bpy.data.images[name], False
    if path and os.path.isfile(path):
        for image in bpy.data.images:
            if image.filepath and bpy.path.abspath(image.filepath) == path:
                return image, False
        image = bpy.data.images.load(path)
        return (image if new is None else new.add(image)), True
    return None, False


def _prepare_camera(context: bpy.types.Context, arm_obj: bpy.types.Object, new: NewData):
    """Everything align_camera needs, creating data-blocks but changing nothing visible."""
    record = camera_record(arm_obj)
    try:
        cam = convert.opencv_camera_to_blender(
            np.asarray(record["K"]), int(record["width"]), int(record["height"])
        )
    except ValueError as e:
        raise SceneBuildError(f"cannot align the camera: {e}") from e
    world = camera_world_matrix(arm_obj, record)
    cam_obj = bpy.data.objects.get(CAMERA_NAME)
    if cam_obj is None or cam_obj.type != "CAMERA" or cam_obj.get(KIND_PROP) != "camera":
        data = new.add(bpy.data.cameras.new(CAMERA_NAME))
        cam_obj = new.add(bpy.data.objects.new(CAMERA_NAME, data))
        cam_obj[KIND_PROP] = "camera"
    background = _background_source(record, new)
    return cam_obj, cam, world, background


def _apply_camera(
    context: bpy.types.Context,
    cam_obj: bpy.types.Object,
    cam: convert.BlenderCamera,
    world: Matrix,
    background,
) -> bpy.types.Object:
    """Set the camera, make it the scene camera, set the render size and the background."""
    data = cam_obj.data
    data.type = "PERSP"
    data.lens_unit = "MILLIMETERS"
    data.sensor_fit = cam.sensor_fit
    data.sensor_width = cam.sensor_width_mm
    data.lens = cam.lens_mm
    data.shift_x, data.shift_y = cam.shift_x, cam.shift_y
    data.clip_start, data.clip_end = 0.01, 100.0
    cam_obj.matrix_world = world
    scene = context.scene
    if cam_obj.name not in scene.collection.all_objects:
        (context.collection or scene.collection).objects.link(cam_obj)
    scene.camera = cam_obj
    render = scene.render
    render.resolution_x, render.resolution_y = cam.resolution_x, cam.resolution_y
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    data.background_images.clear()
    if background is not None:
        bg = data.background_images.new()
        if isinstance(background, bpy.types.MovieClip):
            bg.source = "MOVIE_CLIP"
            bg.clip = background
            background.frame_start = scene.frame_start  # the clip's first frame at the start
        else:
            bg.source = "IMAGE"
            bg.image = background
        bg.frame_method = "STRETCH"
        bg.alpha = 1.0
        data.show_background_images = True
    return cam_obj


def align_camera(
    context: bpy.types.Context, arm_obj: bpy.types.Object, new: NewData
) -> bpy.types.Object:
    """Align the scene camera with a HAMR hand's photo or clip (see the module docstring)."""
    return _apply_camera(context, *_prepare_camera(context, arm_obj, new))


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
        arm_obj[CAMERA_PROP] = _camera_record(track.K, width, height, source, "parent", rel)
        last_frame = max(last_frame, int(frames[-1]))
        result.armatures.append(arm_obj)
        result.meshes.append(mesh_obj)
    camera_parts = _prepare_camera(context, result.armatures[0], new) if align else None
    # --- last step: link and change the scene
    collection = context.collection or scene.collection
    pairs = zip(result.armatures, result.meshes, strict=True)
    _link([origin] + [o for p in pairs for o in p], collection)
    scene.frame_end = max(scene.frame_end, last_frame)
    if camera_parts is not None:
        result.camera = _apply_camera(context, *camera_parts)
    _select(context, result.armatures)
    return result
