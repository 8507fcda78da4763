"""Build HAMR rigs in headless bpy and compare the evaluated mesh with the backend's hand model.

For both sides, with random non-zero pose correctives injected into the rig data (the open hand
model has none), random θ and β: Blender's evaluated mesh (depsgraph) must equal
HandModel(side)(θ, β) with the same correctives, within 1e-4 m, in the model frame
(convert.blender_to_model undoes the model -> Blender mapping). Then β is changed on the built
rig (set_betas: shape keys + rest bones) and compared again; the AUTO / OFF / baked-shape
options are checked on the real rig data; build times are measured.
"""

from __future__ import annotations

import json
import sys
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import bpy
import numpy as np

from backend.schema import encode_array
from backend.schema import rig_json as rig_data
from hamr_blender.blender import rig
from hamr_blender.io import convert, payload

rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
out: dict = {"sides": {}}


def build(doc: dict, betas, options: rig.RigOptions):
    new = rig.NewData()
    arm, mesh, notes = rig.build_hand_rig(payload.parse_rig(doc), betas, options, new)
    for obj in (arm, mesh):
        bpy.context.scene.collection.objects.link(obj)
    return arm, mesh, notes


for side in ("right", "left"):
    doc = rig_data(side)
    n_v = len(payload.decode_array(doc["v_template"]))
    posedirs = rng.normal(0.0, 0.01, size=(n_v, 3, 135))  # metres per unit of (R - I)
    doc_pd = dict(doc, posedirs=encode_array(posedirs, "f4"), pose_correctives_zero=False)
    posedirs = payload.decode_array(doc_pd["posedirs"]).astype(np.float64)  # what Blender gets
    beta = rng.normal(0.0, 1.0, size=10)
    arm, mesh, notes = build(doc_pd, beta, rig.RigOptions(name=f"T {side}"))
    errors = []
    for _ in range(2):
        pose = rng.normal(0.0, 0.6, size=(16, 3))
        rig.pose_hand(arm, pose)
        got = convert.blender_to_model(_common.evaluated_vertices(mesh))
        ref, _ = _common.hand_model_vertices(side, pose, beta, posedirs=posedirs)
        errors.append(float(np.abs(got - ref).max()))
    # the correctives really contribute (else the test would prove little)
    flat, _ = _common.hand_model_vertices(side, pose, beta, posedirs=np.zeros_like(posedirs))
    corrective_size = float(np.abs(ref - flat).max())
    # change the shape on the built, posed rig: shape keys and the rest joints follow
    beta2 = rng.normal(0.0, 1.0, size=10)
    rig.set_betas(arm, beta2)
    got = convert.blender_to_model(_common.evaluated_vertices(mesh))
    ref2, _ = _common.hand_model_vertices(side, pose, beta2, posedirs=posedirs)
    keys = mesh.data.shape_keys.key_blocks
    drivers = mesh.data.shape_keys.animation_data.drivers
    out["sides"][side] = {
        "max_err_m": errors,
        "max_err_after_set_betas_m": float(np.abs(got - ref2).max()),
        "corrective_size_m": corrective_size,
        "bones": len(arm.data.bones),
        "deform_bones": sum(b.use_deform for b in arm.data.bones),
        "bone_names": [b.name for b in arm.data.bones],
        "vertex_groups": [g.name for g in mesh.vertex_groups],
        "shape_keys": len(keys),
        "beta_keys": [k.name for k in keys if k.name.startswith("beta_")],
        "drivers": len(drivers),
        "driver_errors": sum(not d.driver.is_valid for d in drivers),
        "simple_expressions": all(d.driver.is_simple_expression for d in drivers),
        "modifiers": [m.type for m in mesh.modifiers],
        "materials": len(mesh.data.materials),
        "notes": notes,
    }

# real rig data (no correctives): AUTO skips them with a note; the mesh still matches
doc = rig_data("right")
beta = rng.normal(0.0, 1.0, size=10)
pose = rng.normal(0.0, 0.6, size=(16, 3))
checks = {}
for label, options in {
    "auto": rig.RigOptions(name="auto"),
    "off": rig.RigOptions(name="off", correctives="OFF"),
    "baked": rig.RigOptions(name="baked", shape_keys=False, correctives="OFF"),
}.items():
    arm, mesh, notes = build(doc, beta, options)
    rig.pose_hand(arm, pose)
    got = convert.blender_to_model(_common.evaluated_vertices(mesh))
    ref, _ = _common.hand_model_vertices("right", pose, beta)
    keys = mesh.data.shape_keys
    checks[label] = {
        "max_err_m": float(np.abs(got - ref).max()),
        "shape_keys": 0 if keys is None else len(keys.key_blocks),
        "notes": notes,
    }
out["options"] = checks

# build time (rig data already parsed: what an import pays once the backend has answered)
parsed = payload.parse_rig(doc)
parsed_pd = payload.parse_rig(doc_pd)
times = {"auto": [], "correctives_on": []}
for _ in range(3):
    for label, rd in (("auto", parsed), ("correctives_on", parsed_pd)):
        new = rig.NewData()
        t0 = time.perf_counter()
        rig.build_hand_rig(rd, beta, rig.RigOptions(name="timing"), new)
        times[label].append(time.perf_counter() - t0)
        new.remove_all()
out["build_s"] = {k: float(np.median(v)) for k, v in times.items()}
out["leftover_timing_objects"] = [o.name for o in bpy.data.objects if o.name.startswith("timing")]
_common.emit(json.loads(json.dumps(out)))
