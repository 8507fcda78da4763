"""The redo panel needs no new prediction for options that only change the build: in headless
Blender, a photo is imported, built again with other build options (shape keys, rotations,
correctives), then imported with another side. The test counts the backend's predictions in its
log: the rebuild must not have asked for one.

argv: ZIP URL PHOTO.
"""

from __future__ import annotations

import sys

import _common
import bpy

zip_path, url, photo = sys.argv[1:4]
_common.install_extension(zip_path, url)
options = dict(side="right", refine=True, align_camera=False, detector="auto")


def armatures() -> int:
    return sum(o.type == "ARMATURE" for o in bpy.data.objects)


out = {"first": list(bpy.ops.hamr.import_image(filepath=photo, **options))}
out["after_first"] = armatures()
changed = dict(options, shape_keys=False, rotation_mode="XYZ", correctives="OFF")
out["rebuilt"] = list(bpy.ops.hamr.import_image(filepath=photo, **changed))
out["after_rebuilt"] = armatures()
other = dict(options, side="left")
out["other_side"] = list(bpy.ops.hamr.import_image(filepath=photo, **other))
out["after_other_side"] = armatures()
_common.emit(out)
