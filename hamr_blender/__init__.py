"""HAMR for Blender: recover rigged, posed hand meshes from photos and videos.

This file only wires registration (node_wrangler's habit); the parts are rig.py (the hand rig and
its shape property), operators.py and ui.py. Their imports happen inside `register` so that the
bpy-free modules (client, convert, payload, backend_process) import anywhere, without bpy.
"""

from __future__ import annotations

_MODULES = ("rig", "operators", "ui")


def _parts():
    import importlib

    return [importlib.import_module(f".{name}", __package__) for name in _MODULES]


def register() -> None:
    for module in _parts():
        module.register()


def unregister() -> None:
    for module in reversed(_parts()):
        module.unregister()
