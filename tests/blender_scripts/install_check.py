"""Install the built extension zip the way Blender does and check what it registers.

argv: ZIP. package_install_files into the user repository, enabled on install; then: the six
operators, the panels, the preferences with their defaults, the scene settings, the user folder,
that enabling it imported neither torch nor anything from the backend, and that disabling it
unregisters everything.
"""

from __future__ import annotations

import json
import sys

import _common
import bpy

zip_path = sys.argv[1]
had_torch = "torch" in sys.modules
pkg = _common.install_extension(zip_path)
out: dict = {
    "module": _common.EXT_MODULE,
    "enabled": _common.EXT_MODULE in bpy.context.preferences.addons,
}
ops = [
    "import_image",
    "import_result",
    "keyframe_video",
    "align_camera",
    "start_backend",
    "stop_backend",
    "check_backend",
]
out["operators"] = {op: hasattr(bpy.types, f"HAMR_OT_{op}") for op in ops}
out["panels"] = sorted(n for n in dir(bpy.types) if n.startswith("HAMR_PT_"))
out["panel_category"] = bpy.types.HAMR_PT_main.bl_category
out["panel_space"] = bpy.types.HAMR_PT_main.bl_space_type
prefs = bpy.context.preferences.addons[_common.EXT_MODULE].preferences
out["prefs"] = {
    "backend_url": prefs.backend_url,
    "start_command": prefs.start_command,
    "python_path": prefs.python_path,
    "token": prefs.token,
}
out["scene_settings"] = hasattr(bpy.context.scene, "hamr") and bpy.context.scene.hamr.side
out["object_betas"] = "hamr_betas" in bpy.types.Object.bl_rna.properties
out["armature_hand"] = "hamr_hand" in bpy.types.Armature.bl_rna.properties
out["user_dir"] = pkg.blender.importer.user_dir()
out["torch_imported"] = (not had_torch) and "torch" in sys.modules
out["backend_imported"] = any(m == "backend" or m.startswith("backend.") for m in sys.modules)
out["package_file"] = pkg.__file__


# draw every panel with a stand-in layout that checks each drawn property exists (no window)
class FakeLayout:
    def __init__(self, drawn: list) -> None:
        self.drawn = drawn
        self.use_property_split = False
        self.enabled = True

    def _child(self, *args, **kwargs) -> FakeLayout:
        return FakeLayout(self.drawn)

    row = column = box = _child

    def label(self, text: str = "", **kwargs) -> None:
        self.drawn.append(("label", text))

    def prop(self, data, name: str, **kwargs) -> None:
        if name.startswith('["'):  # a custom property
            assert name[2:-2] in data.keys(), name
        else:
            assert name in data.bl_rna.properties, name
        self.drawn.append(("prop", name))

    def prop_search(self, data, name: str, search_data, search_name: str, **kwargs) -> None:
        assert name in data.bl_rna.properties and hasattr(search_data, search_name), name
        self.drawn.append(("prop_search", name))

    def operator(self, idname: str, **kwargs):
        mod, op = idname.split(".")
        rna = getattr(getattr(bpy.ops, mod), op).get_rna_type()
        drawn = self.drawn

        class Props:
            def __setattr__(self, key, value):
                assert key in rna.properties, (idname, key)
                drawn.append(("set", f"{idname}.{key}"))

        drawn.append(("operator", idname))
        return Props()


class FakePanel:
    def __init__(self, drawn: list) -> None:
        self.layout = FakeLayout(drawn)


# a hand for the Active Hand panel
from backend.schema import rig_json as rig_data  # noqa: E402  (after the torch/backend checks above)

new = pkg.blender.rig.NewData()
arm, mesh, _ = pkg.blender.rig.build_hand_rig(
    pkg.io.payload.parse_rig(rig_data("right")), None, pkg.blender.rig.RigOptions(), new
)
bpy.context.scene.collection.objects.link(arm)
bpy.context.scene.collection.objects.link(mesh)
bpy.context.view_layer.objects.active = arm
fit = {"landmarks": "mediapipe", "rms_px_before": 12.0, "rms_px_after": 3.0}
arm["hamr_prediction"] = json.dumps(
    {
        "schema": "hamr.prediction/1",
        "detector": "mediapipe",
        "hands": [{"side": "right", "score": 0.5, "fit": fit}],
    }
)
drawn: list = []
for name in out["panels"]:
    cls = getattr(bpy.types, name)
    if hasattr(cls, "poll") and not cls.poll(bpy.context):
        continue
    cls.draw(FakePanel(drawn), bpy.context)
out["drawn_operators"] = sorted({d[1] for d in drawn if d[0] == "operator"})
out["drawn_props"] = len([d for d in drawn if d[0] in ("prop", "prop_search")])
out["drawn_labels"] = [d[1] for d in drawn if d[0] == "label"]
prefs_drawn: list = []
fake_prefs = FakePanel(prefs_drawn)
fake_prefs.bl_rna = prefs.bl_rna  # the preferences draw their own properties
type(prefs).draw(fake_prefs, bpy.context)
out["prefs_drawn"] = sorted(d[1] for d in prefs_drawn if d[0] == "prop")

bpy.ops.preferences.addon_disable(module=_common.EXT_MODULE)
out["after_disable"] = {
    "operators": any(hasattr(bpy.types, f"HAMR_OT_{op}") for op in ops),
    "panels": any(n.startswith("HAMR_PT_") for n in dir(bpy.types)),
    "scene_settings": hasattr(bpy.types.Scene, "hamr"),
    "object_betas": "hamr_betas" in bpy.types.Object.bl_rna.properties,
    "armature_hand": "hamr_hand" in bpy.types.Armature.bl_rna.properties,
}
_common.emit(out)
