"""Restore Resolution (`hamr.restore_resolution`) in the installed extension, without a backend.

argv: ZIP. A synthetic hand with a camera (the backend's hand model, no server) is aligned with
Set Resolution through the installed `hamr.align_camera`, which makes the render size the
photo's and keeps the old one; Restore Resolution puts the old size back (width, height and
percentage) and forgets it. Without a stored size it is a no-op that says so; a stored value
that is no size is refused by name, the scene unchanged. The Active Hand panel shows the button
only while there is a size to restore (its own draw, with a layout that records it).
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile

import _common
import bpy
import numpy as np

from backend.schema import rig_json
from hamr_blender.blender import rig, scene
from hamr_blender.io import payload

zip_path = sys.argv[1]
pkg = _common.install_extension(zip_path)
context = bpy.context
render = context.scene.render
W, H = 334, 512
out: dict = {}
libc = ctypes.CDLL(None)


def size() -> list[int]:
    return [render.resolution_x, render.resolution_y, render.resolution_percentage]


def call(op, **kwargs) -> dict:
    """Run an operator; its result, the error it raised and what it printed (Blender prints a
    background operator's reports to stdout), the render size after."""
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 1)
        try:
            res = {"result": sorted(op(**kwargs)), "error": None}
        except RuntimeError as e:
            res = {"result": ["CANCELLED"], "error": str(e).strip()}
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        res["printed"] = f.read().decode(errors="replace").strip()
    res["size"] = size()
    res["stored"] = context.scene.get("hamr_previous_resolution")
    if res["stored"] is not None and hasattr(res["stored"], "to_list"):
        res["stored"] = res["stored"].to_list()
    return res


class Layout:
    """A stand-in for bpy's UILayout that records the operators drawn."""

    def __init__(self, ops: list[str]) -> None:
        self.ops = ops

    def operator(self, idname: str, **_kw):
        self.ops.append(idname)

    def __getattr__(self, name: str):  # row, column, label, prop, ...: nested layouts
        return lambda *_a, **_kw: self


def panel_operators() -> list[str]:
    """The operators the Active Hand panel draws now."""
    ops: list[str] = []

    class Fake:
        layout = Layout(ops)

    pkg.blender.ui.HAMR_PT_active.draw(Fake(), context)
    return ops


render.resolution_x, render.resolution_y, render.resolution_percentage = 1920, 1080, 50
out["none_before"] = call(bpy.ops.hamr.restore_resolution)

# a hand with its photo's camera (synthetic: the hand model's pose, K, the photo's size)
rigs = {"right": payload.parse_rig(rig_json("right"))}
K = np.array([[600.0, 0.0, 150.5], [0.0, 600.0, 270.25], [0.0, 0.0, 1.0]])
hand = {
    "side": "right", "score": 1.0, "box_xyxy": [0, 0, W, H],
    "pose_axis_angle": np.zeros((16, 3)).tolist(), "betas": [0.0] * 10, "cam_weak": [1, 0, 0],
    "camera": {"K": K.tolist()}, "transl": [0.0, 0.0, 0.6],
    "joints3d_cam": np.zeros((21, 3)).tolist(), "keypoints2d": np.zeros((21, 2)).tolist(),
}  # fmt: skip
doc = {
    "schema": "hamr.prediction/1",
    "image": {"width": W, "height": H},
    "model": {"checkpoint": "synthetic", "hand_model": rigs["right"].hand_model},
    "hands": [hand],
}
result = scene.import_prediction(
    context, payload.parse_prediction(doc), rigs, rig.RigOptions(), scene.ImageSource(),
    rig.NewData(), align=False,
)  # fmt: skip
arm = result.armatures[0]
for obj in context.view_layer.objects:
    obj.select_set(False)
context.view_layer.objects.active = arm
arm.select_set(True)
out["panel_before"] = panel_operators()
out["align"] = call(bpy.ops.hamr.align_camera, set_resolution=True)
out["panel_aligned"] = panel_operators()
out["restore"] = call(bpy.ops.hamr.restore_resolution)
out["panel_restored"] = panel_operators()
out["again"] = call(bpy.ops.hamr.restore_resolution)
context.scene["hamr_previous_resolution"] = "big"
out["bad"] = call(bpy.ops.hamr.restore_resolution)
_common.emit(out)
