"""The bpy-free half of the extension: the backend's HTTP client (`client`), the parsers of the
backend's JSON (`payload`), the pose and camera conversions into Blender (`convert`), the EXIF
orientation reader (`orientation`) and the backend process (`backend_process`). Imports the
standard library and numpy only (never bpy, mathutils or torch), so it is tested anywhere;
tests/test_layers.py holds it to that."""
