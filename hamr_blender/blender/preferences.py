"""The extension's preferences (Edit > Preferences > Extensions > HAMR): the backend URL, how to
start it (a command, or a Python / virtual environment with HAMR installed, an optional
checkpoint), a token, the start timeout. `importer.settings` reads them. Imports bpy.
"""

from __future__ import annotations

import bpy
from bpy.props import FloatProperty, StringProperty

from ..io import backend_process
from ..io.client import DEFAULT_URL
from . import ADDON


class HAMR_Preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON  # the extension's module: preferences are keyed by it

    backend_url: StringProperty(
        name="Backend URL",
        description="Where the HAMR backend (`hamr serve`) listens",
        default=DEFAULT_URL,
    )
    start_command: StringProperty(
        name="Start Command",
        description="Command that serves HAMR (--host and --port are added from the URL)",
        default=backend_process.DEFAULT_COMMAND,
    )
    python_path: StringProperty(
        name="Python",
        description=(
            "Optional: the Python interpreter or virtual environment folder where HAMR is "
            "installed; when set, the backend runs as `PYTHON -m backend.cli serve`"
        ),
        subtype="FILE_PATH",
        default="",
    )
    checkpoint: StringProperty(
        name="Checkpoint",
        description="Optional: a HAMR checkpoint for the backend (default: the shipped one)",
        subtype="FILE_PATH",
        default="",
    )
    token: StringProperty(
        name="Token",
        description="Bearer token, if the backend was started with --token",
        subtype="PASSWORD",
        default="",
    )
    start_timeout: FloatProperty(
        name="Start Timeout (s)",
        description="How long to wait for a started backend to load its model",
        default=backend_process.DEFAULT_START_TIMEOUT_S,
        min=5.0,
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_url")
        layout.prop(self, "token")
        box = layout.box()
        box.label(text="Starting the backend from Blender")
        box.prop(self, "start_command")
        box.prop(self, "python_path")
        box.prop(self, "checkpoint")
        box.prop(self, "start_timeout")


def register() -> None:
    bpy.utils.register_class(HAMR_Preferences)


def unregister() -> None:
    bpy.utils.unregister_class(HAMR_Preferences)
