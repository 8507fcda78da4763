"""hamr.import_image through the installed extension against a real `hamr serve`.

argv: ZIP URL IMAGE X0,Y0,X1,Y1 SIDEWAYS HEIC. Installs and enables the extension, imports the photo
(file), then the same photo as a packed image already in Blender, and checks each imported hand:
the evaluated mesh in the aligned camera's OpenCV frame equals HandModel(θ, β) + transl from the
stored prediction (1e-4 m), and its joints projected through the camera land on keypoints2d.
SIDEWAYS is the same photo stored turned, with the EXIF orientation that shows it upright: the
camera background must be the upright photo (Blender ignores the tag; the backend does not).
HEIC is the photo as a HEIC file, which Blender cannot read: its background is the backend's
decoding of it (POST /v1/image), packed.
"""

from __future__ import annotations

import json
import sys

import _common
import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from backend.hand_model.constants import KEYPOINTS_FROM_JOINTS_AND_TIPS

zip_path, url, image_path, box_text, sideways_path, heic_path = sys.argv[1:7]
box = [float(v) for v in box_text.split(",")]
_common.install_extension(zip_path, url)
out: dict = {}
scene = bpy.context.scene
out["check"] = list(bpy.ops.hamr.check_backend())
before = _common.snapshot()
out["bl_options"] = sorted(bpy.types.HAMR_OT_import_image.bl_options)
out["undo_poll_background"] = bpy.ops.ed.undo.poll()
result = bpy.ops.hamr.import_image(
    filepath=image_path, side="auto", use_box=True, box=box, align_camera=True
)
out["result"] = list(result)
after = _common.snapshot()
new_objects = sorted(set(after["objects"]) - set(before["objects"]))
out["new_objects"] = new_objects


def check_hand(arm) -> dict:
    pred = json.loads(arm["hamr_prediction"].as_string())
    hand = pred["hands"][0]
    K = np.array(hand["camera"]["K"])
    w, h = pred["image"]["width"], pred["image"]["height"]
    mesh = next(c for c in arm.children if c.get("hamr_kind") == "mesh")
    cam = scene.camera
    m = np.array(cam.matrix_world)
    verts_world = _common.evaluated_vertices(mesh, world=True)
    # world -> Blender camera local -> OpenCV camera frame (diag(1, -1, -1))
    local = (verts_world - m[:3, 3]) @ m[:3, :3]
    verts_cv = local * [1.0, -1.0, -1.0]
    ref, _ = _common.hand_model_vertices(
        hand["side"], hand["pose_axis_angle"], hand["betas"], hand["transl"]
    )
    names = json.loads(arm["hamr_rig"])["bone_names"]
    joints = [arm.matrix_world @ arm.pose.bones[n].head for n in names]
    tips_ids = json.loads(arm["hamr_rig"])["tip_vertex_ids"]
    points = list(joints) + [Vector(verts_world[i]) for i in tips_ids]
    uv = []
    for i in KEYPOINTS_FROM_JOINTS_AND_TIPS:
        ndc = world_to_camera_view(scene, cam, points[i])
        uv.append(_common.camera_view_to_photo(ndc, scene, w, h))
    return {
        "side": hand["side"],
        "mesh_err_m": float(np.abs(verts_cv - ref).max()),
        "px_err": float(np.abs(np.array(uv) - np.array(hand["keypoints2d"])).max()),
        "lens": cam.data.lens,
        "K": K.tolist(),
        "resolution": [scene.render.resolution_x, scene.render.resolution_y],
        "image": [w, h],
    }


arms = [bpy.data.objects[n] for n in new_objects if bpy.data.objects[n].get("hamr_rig")]
out["hands"] = [check_hand(a) for a in arms]
out["camera_background"] = [
    b.image.filepath if b.image else None for b in scene.camera.data.background_images
]

# the same photo as an image already in Blender (packed: no file on disk is used)
img = bpy.data.images.load(image_path)
img.pack()
before2 = _common.snapshot()
result = bpy.ops.hamr.import_image(image_name=img.name, use_box=True, box=box, side="right")
out["packed_result"] = list(result)
new2 = sorted(set(_common.snapshot()["objects"]) - set(before2["objects"]))
out["packed_new_objects"] = new2
arms2 = [bpy.data.objects[n] for n in new2 if bpy.data.objects[n].get("hamr_rig")]
out["packed_hands"] = [check_hand(a) for a in arms2]

# align camera from the first hand again (operator, with the hand active)
bpy.context.view_layer.objects.active = arms[0]
out["align"] = list(bpy.ops.hamr.align_camera())
out["align_check"] = check_hand(arms[0])

# the shape slider of the installed extension (Armature.hamr_hand.betas): shape keys and
# joints follow
arm = arms[0]
hand0 = json.loads(arm["hamr_prediction"].as_string())["hands"][0]
new_betas = [0.8, -0.6, 0.4, 0.0, 0.3, -0.2, 0.1, 0.0, 0.5, -0.4]
arm.data.hamr_hand.betas = new_betas
changed = dict(hand0, betas=new_betas)
stored = arm["hamr_prediction"]  # a text data-block
stored.from_string(json.dumps(dict(json.loads(stored.as_string()), hands=[changed])))
out["betas_check"] = check_hand(arm)
stored.from_string(json.dumps(dict(json.loads(stored.as_string()), hands=[hand0])))
arm.data.hamr_hand.betas = hand0["betas"]

# an image made inside Blender (no file, not packed): sent as a PNG copy
gen = bpy.data.images.new("generated", 96, 80)
out["generated_result"] = list(
    bpy.ops.hamr.import_image(image_name=gen.name, use_box=True, box=(8, 8, 88, 72))
)

# a photo stored sideways (EXIF orientation 6): the hands and the camera as for the upright
# photo, whose pixels are the camera's background (an upright copy, packed)
from PIL import Image, ImageOps  # noqa: E402

bpy.ops.object.select_all(action="DESELECT")
before4 = _common.snapshot()
images_before = set(bpy.data.images.keys())
out["sideways_result"] = list(
    bpy.ops.hamr.import_image(filepath=sideways_path, use_box=True, box=box, side="auto")
)
new4 = sorted(set(_common.snapshot()["objects"]) - set(before4["objects"]))
arms4 = [bpy.data.objects[n] for n in new4 if bpy.data.objects[n].get("hamr_rig")]
out["sideways_hands"] = [check_hand(a) for a in arms4]
backgrounds = [b.image for b in scene.camera.data.background_images if b.image]
upright_ref = np.asarray(ImageOps.exif_transpose(Image.open(sideways_path)).convert("RGB"))
if backgrounds:
    bg = backgrounds[0]
    w, h = bg.size
    px = np.empty(w * h * 4, dtype=np.float32)
    bg.pixels.foreach_get(px)
    shown = px.reshape(h, w, 4)[::-1, :, :3]  # top row first
    out["sideways_background"] = {
        "size": [w, h],
        "packed": bg.packed_file is not None,
        "mean_abs_diff": float(np.abs(shown - upright_ref / 255.0).mean())
        if shown.shape == upright_ref.shape
        else None,
    }
out["sideways_upright_size"] = [upright_ref.shape[1], upright_ref.shape[0]]
out["sideways_resolution"] = [scene.render.resolution_x, scene.render.resolution_y]
# aligning again from that hand reuses the upright copy
bpy.context.view_layer.objects.active = arms4[0]
out["sideways_align"] = list(bpy.ops.hamr.align_camera())
out["sideways_new_images"] = sorted(set(bpy.data.images.keys()) - images_before)

# a HEIC photo: Blender reads no pixels of it; the backend's decoding becomes the background
bpy.ops.object.select_all(action="DESELECT")
before5 = _common.snapshot()
out["heic_result"] = list(
    bpy.ops.hamr.import_image(filepath=heic_path, use_box=True, box=box, side="auto")
)
new5 = sorted(set(_common.snapshot()["objects"]) - set(before5["objects"]))
arms5 = [bpy.data.objects[n] for n in new5 if bpy.data.objects[n].get("hamr_rig")]
out["heic_hands"] = [check_hand(a) for a in arms5]
reference = np.asarray(Image.open(image_path).convert("RGB"))
bg = next((b.image for b in scene.camera.data.background_images if b.image), None)
if bg is not None:
    w, h = bg.size
    px = np.empty(w * h * 4, dtype=np.float32)
    bg.pixels.foreach_get(px)
    shown = px.reshape(h, w, 4)[::-1, :, :3]
    out["heic_background"] = {
        "size": [w, h],
        "packed": bg.packed_file is not None,
        "mean_abs_diff": float(np.abs(shown - reference / 255.0).mean())
        if shown.shape == reference.shape
        else None,
    }
out["heic_photo_size"] = [reference.shape[1], reference.shape[0]]

# a missing file: clear error, nothing created
before3 = _common.scene_state()
try:
    bpy.ops.hamr.import_image(filepath="/nonexistent/photo.jpg")
    out["missing_error"] = None
except RuntimeError as e:
    out["missing_error"] = str(e)
out["missing_unchanged"] = _common.scene_state() == before3
_common.emit(out)
