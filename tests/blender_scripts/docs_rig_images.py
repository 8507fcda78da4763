"""The docs' pictures of the rig, headless (not a test): docs/images/blender_rig_controls.png
(the right hand in a relaxed pose, Workbench, X-ray, the control shapes drawn as tubes in their
bone colours: blue FK rings, green wrist, red IK targets, yellow poles, violet curl controls;
Blender does not render bone overlays) and docs/images/blender_hand_uv.png (convert.hand_uv's
layout, drawn with PIL).

    cd tests/blender_scripts && ../../.venv/bin/python docs_rig_images.py
"""

import math
import sys
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import bpy
import numpy as np
import torch
from mathutils import Matrix, Vector
from PIL import Image, ImageDraw

from backend.hand_model.poses import named_pose
from backend.schema import rig_json
from hamr_blender.blender import rig
from hamr_blender.io import convert, payload

OUT = Path(_common.REPO) / "docs" / "images"
COLOURS = {
    "THEME01": (0.9, 0.15, 0.1, 1),
    "THEME09": (0.95, 0.75, 0.05, 1),
    "THEME03": (0.2, 0.75, 0.2, 1),
    "THEME04": (0.15, 0.4, 0.95, 1),
    "THEME06": (0.6, 0.25, 0.85, 1),
}

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
data = payload.parse_rig(rig_json("right"))
arm, mesh, _ = rig.build_hand_rig(data, np.zeros(10), rig.RigOptions(), rig.NewData())
for obj in (arm, mesh):
    scene.collection.objects.link(obj)
pose = named_pose("relaxed", torch.tensor(data.joints(np.zeros(10))), "right").double().numpy()
rig.pose_hand(arm, pose)
bpy.context.view_layer.update()
for pb in arm.pose.bones:  # each visible control's shape as a tube where Blender draws it
    if pb.custom_shape is None or not any(c.is_visible for c in pb.bone.collections):
        continue
    m = np.array(arm.matrix_world @ pb.matrix @ Matrix.Scale(pb.bone.length, 4))
    shape = pb.custom_shape.data
    v = np.array([tuple(x.co) for x in shape.vertices]) @ m[:3, :3].T + m[:3, 3]
    curve = bpy.data.curves.new("shape", "CURVE")
    curve.dimensions, curve.bevel_depth = "3D", 0.0012
    for edge in shape.edges:
        spline = curve.splines.new("POLY")
        spline.points.add(1)
        for k, i in enumerate(edge.vertices):
            spline.points[k].co = (*v[i], 1.0)
    mat = bpy.data.materials.new("shape")
    mat.diffuse_color = COLOURS.get(pb.color.palette, (1, 1, 1, 1))
    curve.materials.append(mat)
    scene.collection.objects.link(bpy.data.objects.new("shape", curve))
cam_data = bpy.data.cameras.new("camera")
cam_data.type, cam_data.ortho_scale = "ORTHO", 0.26
cam = bpy.data.objects.new("camera", cam_data)
scene.collection.objects.link(cam)
scene.camera = cam
cam.location = Vector((0.07, 0.0, -0.5))  # below: the back of the hand faces -Z
cam.rotation_euler = (math.pi, 0.0, 0.0)
scene.render.engine = "BLENDER_WORKBENCH"
shading = scene.display.shading
shading.light, shading.color_type = "STUDIO", "MATERIAL"
shading.show_xray, shading.xray_alpha = True, 0.45
scene.render.resolution_x, scene.render.resolution_y = 640, 520
path = str(OUT / "blender_rig_controls.png")
scene.render.filepath = path
bpy.ops.render.render(write_still=True)
image = Image.open(path).convert("RGB").crop((20, 20, 630, 420)).resize((458, 300), Image.LANCZOS)
image.quantize(colors=96).save(path, optimize=True)

# the UV layout
uv = convert.hand_uv(data.v_template, data.faces, "right")
n = 480
image = Image.new("RGB", (n, n), (245, 245, 245))
draw = ImageDraw.Draw(image)
nails = data.nail_mask[data.faces].all(axis=1)
for tri, nail in zip(uv, nails, strict=True):
    points = [(float(u * n), float((1 - v) * n)) for u, v in tri]
    draw.polygon(points, fill=(235, 190, 170) if nail else (214, 160, 140), outline=(120, 80, 70))
draw.line([(n / 2, 0), (n / 2, n)], fill=(60, 60, 60))
draw.text((10, n - 20), "back of the hand", fill=(0, 0, 0))
draw.text((n / 2 + 10, n - 20), "palm", fill=(0, 0, 0))
image.save(OUT / "blender_hand_uv.png", optimize=True)
print("wrote", path, file=sys.stderr)
