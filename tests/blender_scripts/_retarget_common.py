"""Helpers of the retarget scripts (headless bpy): a generated Rigify rig, and bone directions
in a hand frame measured independently of the retarget code."""

from __future__ import annotations

import bpy
import numpy as np

MANO = [f"{d}{k}" for d in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)]


def rigify_rig() -> bpy.types.Object:
    """A generated Rigify human rig (the bundled add-on), its metarig hidden."""
    import addon_utils

    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    meta = bpy.context.active_object
    bpy.ops.pose.rigify_generate()
    gen = bpy.context.active_object
    assert gen is not meta and gen.type == "ARMATURE"
    meta.hide_set(True)
    return gen


def def_names(s: str) -> list[str]:
    """The Rigify DEF finger bones of side suffix `s` ("R"/"L"), in MANO order."""
    return [f"DEF-{'thumb' if j[:-1] == 'thumb' else 'f_' + j[:-1]}.0{j[-1]}.{s}" for j in MANO]


def frame_axes(h) -> np.ndarray:
    """(3, 3) hand axes as rows from the heads (wrist, index1, middle1, pinky1): y to the
    middle knuckle, x towards the index made orthogonal, z = x cross y."""
    y = h[2] - h[0]
    y /= np.linalg.norm(y)
    x = h[1] - h[3]
    x -= x.dot(y) * y
    x /= np.linalg.norm(x)
    return np.stack([x, y, np.cross(x, y)])


def hand_dirs(arm, wrist: str, roots, bones) -> np.ndarray:
    """(B, 3) evaluated head -> tail directions of `bones` in the hand frame of `wrist` and
    the knuckles `roots` (index1, middle1, pinky1)."""
    pb = arm.pose.bones
    axes = frame_axes([np.array(pb[n].head) for n in (wrist, *roots)])
    return np.array([axes @ (np.array(pb[b].tail) - np.array(pb[b].head)) for b in bones])


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def hamr_dirs(arm, side: str) -> np.ndarray:
    """(15, 3) a HAMR hand's evaluated finger-bone directions (MANO order) in its hand frame."""
    from hamr_blender.io import bone_maps

    m = bone_maps.BUILTIN_MAPS["HAMR"].bones(side)
    roots = [m[j] for j in ("index1", "middle1", "pinky1")]
    return hand_dirs(arm, m["wrist"], roots, [m[j] for j in MANO])


def rigify_dirs(gen, s: str) -> np.ndarray:
    """(15, 3) a generated Rigify rig's DEF finger-bone directions in its hand frame."""
    roots = [f"DEF-f_{d}.01.{s}" for d in ("index", "middle", "pinky")]
    return hand_dirs(gen, f"DEF-hand.{s}", roots, def_names(s))
