"""The retarget guide's before/after figure: `python -m tools.retarget_figure [PHOTO]`.

Runs `hamr blend` in this process (headless.run_blend: the shipped checkpoint, the backend
started and stopped here) on a real photo (default: backend/assets/samples/webcam_hand.jpg),
generates a stock Rigify human rig in the same scene with a simple skin on its hand (a tapered
tube per DEF hand, palm and finger bone, weighted to that bone: a stand-in for a character's
hand), retargets the HAMR hand onto it (`retarget.retarget`, default options), then moves the
Rigify rig as a whole so that its hand frame lies on the HAMR hand's, scaled by the two hands'
lengths (only for the picture: the retarget itself never moves the character). Renders the
photo twice with headless.render_over_photo (Cycles, CPU): the HAMR hand alone, the Rigify hand
alone, and writes them side by side, downscaled, to docs/images/retarget_before_after.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "backend" / "assets" / "samples" / "webcam_hand.jpg"
OUT = REPO / "docs" / "images" / "retarget_before_after.png"
WIDTH = 960  # the figure's width, pixels


def _frame(points):
    """World hand frame (4x4) from wrist, index1, middle1, pinky1 heads, and the wrist."""
    import numpy as np

    from hamr_blender.io import retarget_math

    return retarget_math.hand_frame(*[np.asarray(p, dtype=float) for p in points])


def _skin(rig, side: str):
    """A mesh skinned to the rig's DEF hand, palm and finger bones of one side."""
    import bpy
    import numpy as np

    s = {"left": "L", "right": "R"}[side]
    names = [b.name for b in rig.data.bones if b.name.startswith("DEF-") and b.name.endswith(s)]
    names = [n for n in names if any(k in n for k in ("hand", "palm", "f_", "thumb"))]
    verts, faces, groups = [], [], []
    ring = 8
    for name in names:
        bone = rig.data.bones[name]
        m = np.array(bone.matrix_local)
        r = bone.length * (0.12 if "palm" in name or "hand" in name else 0.22)
        base = len(verts)
        for end, radius in ((0.0, r), (bone.length, r * 0.8)):
            for k in range(ring):
                a = 2 * np.pi * k / ring
                p = m @ np.array([radius * np.cos(a), end, radius * np.sin(a), 1.0])
                verts.append(p[:3].tolist())
        faces += [
            (base + k, base + (k + 1) % ring, base + ring + (k + 1) % ring, base + ring + k)
            for k in range(ring)
        ]
        faces += [tuple(base + k for k in range(ring)), tuple(base + ring + k for k in range(ring))]
        groups.append((name, list(range(base, base + 2 * ring))))
    mesh = bpy.data.meshes.new("Rigify hand skin")
    mesh.from_pydata(verts, [], faces)
    obj = bpy.data.objects.new("Rigify hand skin", mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.parent = rig
    for name, ids in groups:
        obj.vertex_groups.new(name=name).add(ids, 1.0, "REPLACE")
    obj.modifiers.new("Armature", "ARMATURE").object = rig
    mat = bpy.data.materials.new("Rigify skin")
    mat.diffuse_color = (0.95, 0.55, 0.2, 1.0)
    if mat.node_tree is not None:  # Blender 5 materials use nodes
        bsdf = mat.node_tree.nodes.get("Principled BSDF")
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = (0.95, 0.55, 0.2, 1.0)
    mesh.materials.append(mat)
    return obj


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "photo", nargs="?", default=None, help="the photo (default: the bundled webcam photo)"
    )
    photo = Path(ap.parse_args(argv).photo or PHOTO)
    import bpy  # before addon_utils, which bpy puts on the path
    import numpy as np
    from mathutils import Matrix
    from PIL import Image

    from hamr_blender.blender import headless, retarget, rig
    from hamr_blender.io import bone_maps

    tmp = tempfile.mkdtemp(prefix="hamr-retarget-figure-")
    info = headless.run_blend(photo, os.path.join(tmp, "scene.blend"))
    context = bpy.context
    hand = next(o for o in context.scene.objects if o.type == "ARMATURE" and o.get(rig.RIG_PROP))
    side = retarget.hand_side(hand)
    import addon_utils

    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    meta = context.active_object
    bpy.ops.pose.rigify_generate()
    character = context.active_object
    bpy.data.objects.remove(meta)
    skin = _skin(character, side)
    result = retarget.retarget(context, [hand], character, retarget.RetargetOptions())
    context.view_layer.update()
    # lay the rig's hand frame on the HAMR hand's (scaled by hand length): for the picture
    joints = ("wrist", "index1", "middle1", "pinky1")
    hb = bone_maps.BUILTIN_MAPS["HAMR"].bones(side)
    cb = bone_maps.BUILTIN_MAPS["RIGIFY"].bones(side)

    def world_heads(arm, names):
        return [np.array(arm.matrix_world @ arm.pose.bones[names[j]].head) for j in joints]

    def length(arm, names):  # wrist to middle knuckle to middle fingertip, as posed
        h = world_heads(arm, names)
        tip = np.array(arm.matrix_world @ arm.pose.bones[names["middle3"]].tail)
        return np.linalg.norm(h[2] - h[0]) + np.linalg.norm(tip - h[2])

    cb = dict(cb, wrist=f"DEF-hand.{'L' if side == 'left' else 'R'}")
    scale = np.diag([length(hand, hb) / length(character, cb)] * 3 + [1.0])
    move = _frame(world_heads(hand, hb)) @ scale @ np.linalg.inv(_frame(world_heads(character, cb)))
    character.matrix_world = Matrix((move @ np.array(character.matrix_world)).tolist())
    context.view_layer.update()
    meshes = [o for o in context.scene.objects if o.get(rig.KIND_PROP) == "mesh"]
    panels = []
    for show_hamr in (True, False):
        for o in meshes:
            o.hide_render = not show_hamr
        skin.hide_render = show_hamr
        png = os.path.join(tmp, f"panel_{int(show_hamr)}.png")
        headless.render_over_photo(context, str(photo), png, samples=16)
        panels.append(Image.open(png).convert("RGB"))
    both = Image.new("RGB", (panels[0].width * 2, panels[0].height))
    both.paste(panels[0], (0, 0))
    both.paste(panels[1], (panels[0].width, 0))
    both = both.resize((WIDTH, round(WIDTH * both.height / both.width)), Image.LANCZOS)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    both.quantize(256, dither=Image.Dither.NONE).save(OUT, optimize=True)  # a small PNG
    print(
        {
            "photo": str(photo),
            "side": side,
            "hands": info["hands"],
            "map": result.map_name,
            "out": str(OUT),
            "bytes": OUT.stat().st_size,
        }  # fmt: skip
    )


if __name__ == "__main__":
    main()
