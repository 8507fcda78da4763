"""The HAMR sidebar tab in the 3D viewport and the scene's HAMR settings.

Panels (View3D > Sidebar > HAMR): Backend (last known status, check / start / stop), Image
(file or Blender image, box, focal, import), Video (file, smoothing, keyframe), Hand (side, shape
keys, pose correctives, camera) and, for the active HAMR hand, its shape sliders, Align
Camera and, after an alignment that set the render size, Restore Resolution. Drawing never
talks to the backend: the status is the one the last operator saw.

The preferences are `preferences`'. Imports bpy.
"""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    PointerProperty,
    StringProperty,
)

from ..io import backend_process
from ..io.payload import describe
from . import operators, scene
from .camera import RESOLUTION_PROP
from .rig import IK_PROP, LIMITS_PROP, find_hand_armature, hand_mesh
from .scene import stored_prediction


class HAMR_SceneSettings(bpy.types.PropertyGroup):
    """What the panel remembers between clicks (scene.hamr)."""

    image_path: StringProperty(name="Image", subtype="FILE_PATH", default="")
    image: PointerProperty(
        name="Blender Image", type=bpy.types.Image, description="Use an image already in Blender"
    )
    video_path: StringProperty(name="Video", subtype="FILE_PATH", default="")
    side: EnumProperty(name="Side", items=operators.SIDE_ITEMS, default="auto")
    detector: EnumProperty(name="Detector", items=operators.DETECTOR_ITEMS, default="auto")
    refine: BoolProperty(name="Refine on Landmarks", default=True)
    use_box: BoolProperty(name="Hand Box", default=False)
    box: FloatVectorProperty(name="Box", size=4, default=(0,) * 4)
    focal: FloatProperty(name="Focal (px)", default=0.0, min=0.0)
    shape_keys: BoolProperty(name="Shape Keys", default=True)
    correctives: EnumProperty(
        name="Pose Correctives", items=operators.CORRECTIVE_ITEMS, default="AUTO"
    )
    smoothing: FloatProperty(name="Smoothing", default=0.5, min=0.0, max=1.0)
    align_camera: BoolProperty(name="Align Camera", default=True)
    rotation_mode: EnumProperty(
        name="Rotations", items=operators.ROTATION_ITEMS, default="QUATERNION"
    )
    min_score: FloatProperty(name="Min Score", default=scene.DEFAULT_MIN_SCORE, min=0.0, max=1.0)
    scene_fps: EnumProperty(name="Frame Rate", items=operators.SCENE_FPS_ITEMS, default="KEEP")
    apply_to_active: BoolProperty(
        name="Apply to Active Hand",
        description="Key a photo's pose onto the selected HAMR hand at the current frame",
        default=False,
    )


def _pass_options(op, s: HAMR_SceneSettings) -> None:
    op.side = s.side
    op.detector = s.detector
    op.refine = s.refine
    op.shape_keys = s.shape_keys
    op.correctives = s.correctives
    op.align_camera = s.align_camera
    op.focal = s.focal
    op.rotation_mode = s.rotation_mode
    op.min_score = s.min_score


class _HamrPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "HAMR"


class HAMR_PT_main(_HamrPanel, bpy.types.Panel):
    bl_label = "HAMR Hands"

    def draw(self, context):
        layout = self.layout
        status = operators.STATUS
        row = layout.row()
        row.label(text=f"Backend: {status['text']}", icon="CHECKMARK" if status["ok"] else "INFO")
        row = layout.row(align=True)
        row.operator("hamr.check_backend", icon="FILE_REFRESH")
        if backend_process.BACKEND.running:
            row.operator("hamr.stop_backend", icon="CANCEL")
        else:
            row.operator("hamr.start_backend", icon="PLAY")


class HAMR_PT_image(_HamrPanel, bpy.types.Panel):
    bl_label = "Image"
    bl_parent_id = "HAMR_PT_main"

    def draw(self, context):
        s = context.scene.hamr
        layout = self.layout
        layout.prop(s, "image_path")
        layout.prop_search(s, "image", bpy.data, "images")
        row = layout.row(align=True)
        row.prop(s, "use_box")
        sub = row.row(align=True)
        sub.enabled = s.use_box
        sub.prop(s, "box", text="")
        layout.prop(s, "focal")
        layout.prop(s, "apply_to_active")
        op = layout.operator("hamr.import_image", icon="IMPORT")
        _pass_options(op, s)
        op.filepath = s.image_path
        op.image_name = s.image.name if s.image is not None else ""
        op.use_box = s.use_box
        op.box = s.box
        op.apply_to_active = s.apply_to_active
        # a result saved by `hamr predict --json` / `hamr video --json`: the file browser asks
        op = layout.operator("hamr.import_result", icon="FILE_FOLDER")
        _pass_options(op, s)
        op.apply_to_active = s.apply_to_active


class HAMR_PT_video(_HamrPanel, bpy.types.Panel):
    bl_label = "Video"
    bl_parent_id = "HAMR_PT_main"

    def draw(self, context):
        s = context.scene.hamr
        layout = self.layout
        layout.prop(s, "video_path")
        layout.prop(s, "smoothing", slider=True)
        layout.prop(s, "scene_fps")
        op = layout.operator("hamr.keyframe_video", icon="RENDER_ANIMATION")
        _pass_options(op, s)
        op.filepath = s.video_path
        op.smoothing = s.smoothing
        op.scene_fps = s.scene_fps


class HAMR_PT_hand(_HamrPanel, bpy.types.Panel):
    bl_label = "Hand Options"
    bl_parent_id = "HAMR_PT_main"

    def draw(self, context):
        s = context.scene.hamr
        layout = self.layout
        layout.use_property_split = True
        layout.prop(s, "side")
        layout.prop(s, "detector")
        layout.prop(s, "refine")
        layout.prop(s, "shape_keys")
        layout.prop(s, "correctives")
        layout.prop(s, "align_camera")
        layout.prop(s, "rotation_mode")
        layout.prop(s, "min_score")


class HAMR_PT_active(_HamrPanel, bpy.types.Panel):
    bl_label = "Active Hand"
    bl_parent_id = "HAMR_PT_main"

    @classmethod
    def poll(cls, context):
        return find_hand_armature(context.active_object) is not None

    def draw(self, context):
        arm = find_hand_armature(context.active_object)
        layout = self.layout
        layout.label(text=arm.name, icon="ARMATURE_DATA")
        record = stored_prediction(arm)
        col = layout.column(align=True)
        for line in describe(record):
            col.label(text=line)
        row = layout.row(align=True)
        row.operator("hamr.align_camera", icon="CAMERA_DATA")
        if RESOLUTION_PROP in context.scene:  # what Align Camera's Set Resolution replaced
            row.operator("hamr.restore_resolution", icon="LOOP_BACK")
        col = layout.column(align=True)  # the rig's options (0: off, the imported pose exact)
        for prop, label in ((IK_PROP, "Fingertip IK"), (LIMITS_PROP, "Rotation Limits")):
            if prop in arm:
                col.prop(arm, f'["{prop}"]', text=label, slider=True)
        mesh = hand_mesh(arm)
        keys = mesh.data.shape_keys if mesh is not None else None
        if keys is not None and keys.key_blocks.get("beta_00") is not None:
            col = layout.column(align=True)
            col.label(text="Shape (β); the joints follow:")
            col.prop(arm.data.hamr_hand, "betas", text="")
        else:
            layout.label(text="Shape baked into the mesh (no shape keys)", icon="INFO")


classes = (
    HAMR_SceneSettings,
    HAMR_PT_main,
    HAMR_PT_image,
    HAMR_PT_video,
    HAMR_PT_hand,
    HAMR_PT_active,
)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.hamr = PointerProperty(type=HAMR_SceneSettings)


def unregister() -> None:
    del bpy.types.Scene.hamr
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
