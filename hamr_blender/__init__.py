"""HAMR for Blender: recover rigged, posed hand meshes from photos and videos.

This file only wires registration (node_wrangler's habit). Two halves: `io/` is bpy-free (the
backend's HTTP client, payload parsing, conversions, the backend process) and imports anywhere;
`blender/` is the bpy side (rig, scene, camera, import use cases, operators, panel, preferences,
headless `hamr blend`). The parts registered are blender/'s preferences, rig (the hand's shape
property), operators and ui; their imports happen inside `register`, so importing this package
needs no bpy.
"""

from __future__ import annotations

_MODULES = (
    "blender.preferences",
    "blender.rig",
    "blender.operators",
    "blender.retarget",
    "blender.ui",
)


def _parts():
    import importlib

    return [importlib.import_module(f".{name}", __package__) for name in _MODULES]


def register() -> None:
    for module in _parts():
        module.register()


def unregister() -> None:
    for module in reversed(_parts()):
        module.unregister()
