"""FBX and glTF export of HAMR hands (and retargeted rigs) with Blender's bundled exporters.

`export_scene_hands(context, path)` writes the scene's HAMR hands (armature, skinned mesh,
shape keys, animation), the empties they hang from (a video's origin) and every armature a take
was retargeted onto (with the meshes it deforms), as ``.fbx`` or ``.glb`` / ``.gltf`` by the
file's extension. The options are the ones that make the files round-trip (re-imported into
Blender, the evaluated vertices match; tests/test_retarget_blender.py):

FBX (`FBX_OPTIONS`): no leaf bones (they would add a bone per chain end), bones' primary axis Y
and secondary X (Blender's own, so rest orientations survive), -Z forward / Y up with the unit
scale applied to all, the mesh written *without* modifiers (the Armature modifier is the skin;
applying it would bake one pose and drop the shape keys), the animation baked from the
evaluated scene (constraints, NLA and drivers included), every frame keyed, no simplification.
Import with `FBX_IMPORT_OPTIONS` (no automatic bone orientation, leaf bones kept, and
``anim_offset=0``: the importer's default shifts the animation one frame later).

glTF (`GLTF_OPTIONS`): skins with *all* vertex influences (glTF's default keeps 4 per vertex,
MANO's skinning uses more), morph targets (the β shape keys, their names as extras), no normals
in the morph targets, the animation sampled from the evaluated scene (mode SCENE, every frame),
+Y up. Import with ``bone_heuristic='BLENDER'`` (bones keep their Blender orientation).

Pose-corrective drivers do not survive either format (neither stores drivers); the open hand
model has none. Imports bpy.
"""

from __future__ import annotations

import os

import bpy

from ..io.bone_maps import RETARGET_PROP as ACTION_PROP
from .rig import KIND_PROP, RIG_PROP

FBX_OPTIONS = {
    "use_selection": True,
    "object_types": {"ARMATURE", "MESH", "EMPTY"},
    "add_leaf_bones": False,
    "primary_bone_axis": "Y",
    "secondary_bone_axis": "X",
    "axis_forward": "-Z",
    "axis_up": "Y",
    "apply_scale_options": "FBX_SCALE_ALL",
    "use_mesh_modifiers": False,
    "mesh_smooth_type": "FACE",
    "use_armature_deform_only": False,
    "bake_anim": True,
    "bake_anim_use_all_bones": True,
    "bake_anim_use_nla_strips": False,
    "bake_anim_use_all_actions": False,
    "bake_anim_force_startend_keying": True,
    "bake_anim_step": 1.0,
    "bake_anim_simplify_factor": 0.0,
}
FBX_IMPORT_OPTIONS = {
    "use_anim": True,
    "anim_offset": 0.0,  # the importer's default (1) shifts every key one frame later
    "automatic_bone_orientation": False,
    "ignore_leaf_bones": False,
    "primary_bone_axis": "Y",
    "secondary_bone_axis": "X",
}
GLTF_OPTIONS = {
    "use_selection": True,
    "export_yup": True,
    "export_apply": False,
    "export_skins": True,
    "export_all_influences": True,
    "export_morph": True,
    "export_morph_normal": False,
    "export_animations": True,
    "export_animation_mode": "SCENE",
    "export_force_sampling": True,
    "export_frame_step": 1,
    "export_def_bones": False,
    "export_leaf_bone": False,
}
GLTF_IMPORT_OPTIONS = {"bone_heuristic": "BLENDER"}


class ExportError(RuntimeError):
    """Nothing to export, or an unknown format (the message is for the user)."""


def _is_retarget_target(obj: bpy.types.Object) -> bool:
    if obj.type == "ARMATURE" and obj.get(ACTION_PROP):
        return True
    anim = obj.animation_data
    if obj.type != "ARMATURE" or anim is None:
        return False
    actions = [anim.action] + [s.action for t in anim.nla_tracks for s in t.strips]
    return any(a is not None and a.get(ACTION_PROP) for a in actions)


def objects_to_export(context: bpy.types.Context) -> list[bpy.types.Object]:
    """The scene's HAMR hands and retarget targets, their meshes and the objects above them."""
    scene_objs = list(context.scene.objects)
    roots = [o for o in scene_objs if o.get(RIG_PROP) or _is_retarget_target(o)]
    out: list[bpy.types.Object] = []
    for arm in roots:
        for obj in scene_objs:
            deforms = any(
                m.type == "ARMATURE" and m.object == arm for m in getattr(obj, "modifiers", [])
            )
            if obj == arm or deforms or (obj.parent == arm and obj.get(KIND_PROP) == "mesh"):
                if obj not in out:
                    out.append(obj)
        parent = arm.parent
        while parent is not None:
            if parent not in out:
                out.append(parent)
            parent = parent.parent
    return out


def export_file(context: bpy.types.Context, path: str, objects=None) -> list[str]:
    """Export `objects` (default: `objects_to_export`) to `path` (.fbx, .glb or .gltf) with the
    round-trip options; the selection is restored afterwards. Returns the exported names."""
    path = os.path.abspath(os.fspath(path))
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".fbx", ".glb", ".gltf"):
        raise ExportError(f"export to .fbx, .glb or .gltf, not {ext or 'no extension'!r}")
    objects = objects_to_export(context) if objects is None else list(objects)
    if not objects:
        raise ExportError("no HAMR hand or retargeted rig in the scene to export")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    view_layer = context.view_layer
    was_selected = [o for o in view_layer.objects if o.select_get()]
    was_active = view_layer.objects.active
    hidden = [o for o in objects if o.hide_get()]
    try:
        for o in was_selected:
            o.select_set(False)
        for o in hidden:
            o.hide_set(False)
        for o in objects:
            o.select_set(True)
        view_layer.objects.active = objects[0]
        if ext == ".fbx":
            result = bpy.ops.export_scene.fbx(filepath=path, **FBX_OPTIONS)
        else:
            fmt = "GLB" if ext == ".glb" else "GLTF_SEPARATE"
            result = bpy.ops.export_scene.gltf(filepath=path, export_format=fmt, **GLTF_OPTIONS)
        if result != {"FINISHED"}:
            raise ExportError(f"the exporter did not finish ({result})")
    finally:
        for o in view_layer.objects:
            o.select_set(o in was_selected)
        for o in hidden:
            o.hide_set(True)
        view_layer.objects.active = was_active
    return [o.name for o in objects]


def import_file(path: str) -> list[bpy.types.Object]:
    """Import a file written by `export_file` with the matching options; returns new objects."""
    before = set(bpy.data.objects)
    if path.lower().endswith(".fbx"):
        bpy.ops.import_scene.fbx(filepath=path, **FBX_IMPORT_OPTIONS)
    else:
        bpy.ops.import_scene.gltf(filepath=path, **GLTF_IMPORT_OPTIONS)
    return [o for o in bpy.data.objects if o not in before]
