"""The scene camera aligned with a hand's photo or clip, and the photo or clip behind it.

`align_camera`: the scene camera from a hand's stored camera (`convert.opencv_camera_to_blender`),
made for the scene's render size (the photo fitted inside the frame: `convert.fit_intrinsics`;
the render size becomes the photo's only with Set Resolution, and the old one is kept), the
photo or the movie clip as the camera's background. A
photo stored sideways with an EXIF orientation (phones do this) shows upright there, as the
backend saw it: Blender itself ignores the tag, so the background is an upright copy of the
photo, packed into the .blend (`upright_image`). `prepare_camera` creates what is needed
without changing anything visible; `apply_camera` is the last step that does.

Imports bpy, mathutils and numpy; never `scene` (which builds on this module).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import bpy
import numpy as np
from mathutils import Matrix

from ..io import convert, orientation
from .rig import KIND_PROP, NewData

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


def _matrix(rows: np.ndarray) -> Matrix:
    return Matrix([list(map(float, r)) for r in np.asarray(rows)])


def camera_record_json(
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


RESOLUTION_PROP = "hamr_previous_resolution"  # on the scene: what Set Resolution replaced


def prepare_camera(
    context: bpy.types.Context,
    arm_obj: bpy.types.Object,
    new: NewData,
    set_resolution: bool = False,
):
    """Everything align_camera needs, creating data-blocks but changing nothing visible.

    set_resolution False (the default): the scene's render size is kept and the camera is made
    for it (`convert.fit_intrinsics`: the photo fitted inside the frame, centred, as the
    background shows it); True: the camera is made for the photo's own size, which becomes the
    render size (`apply_camera` keeps the old one in the scene's ``hamr_previous_resolution``)."""
    record = camera_record(arm_obj)
    width, height = int(record["width"]), int(record["height"])
    K = np.asarray(record["K"])
    try:
        if set_resolution:
            cam = convert.opencv_camera_to_blender(K, width, height)
        else:
            render = context.scene.render
            frame_w, frame_h = render.resolution_x, render.resolution_y
            K = convert.fit_intrinsics(K, width, height, frame_w, frame_h)
            cam = convert.opencv_camera_to_blender(K, frame_w, frame_h)
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


def apply_camera(
    context: bpy.types.Context,
    cam_obj: bpy.types.Object,
    cam: convert.BlenderCamera,
    world: Matrix,
    background,
) -> bpy.types.Object:
    """Set the camera, make it the scene camera, the background. The render size changes only
    when the camera was made for another size (Set Resolution): the size it replaces is kept in
    the scene's ``hamr_previous_resolution`` (`restore_resolution` puts it back)."""
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
    size = (cam.resolution_x, cam.resolution_y)
    if (render.resolution_x, render.resolution_y) != size:
        if RESOLUTION_PROP not in scene:
            scene[RESOLUTION_PROP] = [
                render.resolution_x,
                render.resolution_y,
                render.resolution_percentage,
            ]
        render.resolution_x, render.resolution_y = size
        render.resolution_percentage = 100
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
        bg.frame_method = "FIT"  # as convert.fit_intrinsics places it (the frame's own size: all)
        bg.alpha = 1.0
        data.show_background_images = True
    return cam_obj


def restore_resolution(scene: bpy.types.Scene) -> bool:
    """Put back the render size that an alignment with Set Resolution replaced (width, height,
    percentage, as `apply_camera` stored them); False when there is none to restore. A stored
    value that is no size raises SceneBuildError, the scene unchanged."""
    old = scene.get(RESOLUTION_PROP)
    if old is None:
        return False
    try:
        values = [float(v) for v in old]
    except (TypeError, ValueError):
        values = []
    whole = len(values) in (2, 3) and all(v.is_integer() for v in values)
    width, height, percent = (int(v) for v in (values + [100.0])[:3]) if whole else (0, 0, 0)
    if not (4 <= width <= 65536 and 4 <= height <= 65536 and 1 <= percent <= 32767):
        raise SceneBuildError(
            f"the scene's {RESOLUTION_PROP} is not a render size (width, height, percentage): "
            f"{old.to_list() if hasattr(old, 'to_list') else old!r}; delete it or set the size "
            "by hand"
        )
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, percent
    del scene[RESOLUTION_PROP]
    return True


def align_camera(
    context: bpy.types.Context,
    arm_obj: bpy.types.Object,
    new: NewData,
    set_resolution: bool = False,
) -> bpy.types.Object:
    """Align the scene camera with a HAMR hand's photo or clip (see the module docstring)."""
    return apply_camera(context, *prepare_camera(context, arm_obj, new, set_resolution))
