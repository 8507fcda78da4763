"""The Blender side of the extension (imports bpy): the hand rig (`rig`), the scene and its
takes (`scene`), the aligned camera and its background (`camera`), the import use cases
(`importer`), the operators, the panel and preferences, and the headless `hamr blend` command.
The bpy-free half (HTTP client, payload parsing, conversions) is `..io`."""

# the extension's own module name (bl_ext.<repository>.hamr_blender, or hamr_blender when
# imported directly): the key of its preferences and of its user folder
ADDON = __package__.rpartition(".")[0]
