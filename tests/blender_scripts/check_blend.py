"""Open a .blend written by `hamr blend` and describe it. argv: BLEND."""

from __future__ import annotations

import sys

import _common
import bpy

bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
scene = bpy.context.scene
arms = [o for o in bpy.data.objects if o.get("hamr_rig")]
meshes = [o for o in bpy.data.objects if o.get("hamr_kind") == "mesh"]
cam = scene.camera
_common.emit(
    {
        "hands": len(arms),
        "scene_camera": cam is not None,
        "camera_background": bool(cam and len(cam.data.background_images)),
        "shape_keys": len(meshes[0].data.shape_keys.key_blocks) if meshes else 0,
        "resolution": [scene.render.resolution_x, scene.render.resolution_y],
    }
)
