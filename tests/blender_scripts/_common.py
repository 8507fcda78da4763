"""Helpers shared by the scripts that tests/test_blender.py runs in headless bpy subprocesses.

Each script prints one line ``HAMR_RESULT {json}`` with what it measured; the pytest side
asserts on it. The environment (XDG_CONFIG_HOME, XDG_CACHE_HOME, BLENDER_USER_RESOURCES) is set
by the test before the subprocess starts, so bpy never touches the real user folders.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EXT_MODULE = "bl_ext.user_default.hamr_blender"
DATA_KINDS = (
    "objects",
    "meshes",
    "armatures",
    "actions",
    "materials",
    "cameras",
    "images",
    "movieclips",
    "scenes",
    "collections",
    "shape_keys",
)


def emit(result: dict) -> None:
    print("HAMR_RESULT " + json.dumps(result), flush=True)


def install_extension(zip_path: str, url: str | None = None):
    """Install (or re-install) the extension zip, enable it, point it at `url`; returns the
    extension package (bl_ext.user_default.hamr_blender)."""
    import bpy

    if EXT_MODULE not in bpy.context.preferences.addons:
        result = bpy.ops.extensions.package_install_files(
            filepath=zip_path, repo="user_default", enable_on_install=True
        )
        assert result == {"FINISHED"}, result
    if EXT_MODULE not in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_enable(module=EXT_MODULE)
    pkg = importlib.import_module(EXT_MODULE)
    if url is not None:
        bpy.context.preferences.addons[EXT_MODULE].preferences.backend_url = url
    return pkg


def snapshot() -> dict[str, list[str]]:
    """Names of every data-block kind that an import could create."""
    import bpy

    return {kind: sorted(b.name for b in getattr(bpy.data, kind)) for kind in DATA_KINDS}


def scene_state() -> dict:
    """Data-blocks plus the scene settings an import may change."""
    import bpy

    scene = bpy.context.scene
    return {
        "data": snapshot(),
        "scene_objects": sorted(o.name for o in scene.objects),
        "camera": scene.camera.name if scene.camera else None,
        "resolution": [scene.render.resolution_x, scene.render.resolution_y],
        "frame_end": scene.frame_end,
    }


def hand_model_vertices(side: str, pose, betas, transl=None, posedirs=None):
    """The backend's vertices (V, 3) for one hand (the exactness reference); posedirs (V, 3, 135)
    replaces the model's pose correctives when given."""
    import numpy as np
    import torch

    from backend.hand_model.model import HandModel

    model = HandModel(side)
    if posedirs is not None:
        pd = np.asarray(posedirs, dtype=np.float32).reshape(-1, 135).T  # smplx layout (135, V*3)
        model.mano.posedirs = torch.from_numpy(np.ascontiguousarray(pd))
    with torch.no_grad():
        out = model(
            torch.tensor(np.asarray(pose), dtype=torch.float32)[None],
            torch.tensor(np.asarray(betas), dtype=torch.float32)[None],
            None if transl is None else torch.tensor(np.asarray(transl), dtype=torch.float32)[None],
        )
    return out.vertices[0].numpy().astype(np.float64), out.keypoints[0].numpy().astype(np.float64)


def evaluated_vertices(mesh_obj, world: bool = False):
    """(V, 3) vertices of the evaluated (deformed) mesh, local or world coordinates."""
    import bpy
    import numpy as np

    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    ev = mesh_obj.evaluated_get(dg)
    co = np.empty(len(ev.data.vertices) * 3)
    ev.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    if world:
        m = np.array(ev.matrix_world)
        co = co @ m[:3, :3].T + m[:3, 3]
    return co


def camera_view_to_photo(ndc, scene, width: int, height: int) -> tuple[float, float]:
    """A point's camera view coordinates (world_to_camera_view: x right, y up, 0..1 over the
    render frame) -> pixels of the width x height photo shown 'FIT' in that frame (scaled by
    min(frame_w / w, frame_h / h), centred), origin top-left: what lies on the photo there."""
    fw = scene.render.resolution_x
    fh = scene.render.resolution_y
    s = min(fw / width, fh / height)
    u_frame, v_frame = ndc.x * fw, (1.0 - ndc.y) * fh
    return (u_frame - (fw - s * width) / 2) / s, (v_frame - (fh - s * height) / 2) / s
