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
key_frames = []
if arms and arms[0].animation_data and arms[0].animation_data.action:
    action = arms[0].animation_data.action
    fcurves = [
        fc for ly in action.layers for st in ly.strips for b in st.channelbags for fc in b.fcurves
    ]
    curve = next((fc for fc in fcurves if "rotation" in fc.data_path), None)
    key_frames = [kp.co[0] for kp in curve.keyframe_points] if curve else []
clips = [b.clip for b in cam.data.background_images if b.clip] if cam else []
_common.emit(
    {
        "hands": len(arms),
        "scene_camera": cam is not None,
        "camera_background": bool(cam and len(cam.data.background_images)),
        "shape_keys": len(meshes[0].data.shape_keys.key_blocks) if meshes else 0,
        "resolution": [scene.render.resolution_x, scene.render.resolution_y],
        "fps": scene.render.fps / scene.render.fps_base,
        "frame_range": [scene.frame_start, scene.frame_end],
        "key_frames": key_frames,
        "clip_driver": bool(
            clips and clips[0].animation_data and len(clips[0].animation_data.drivers)
        ),
    }
)
