"""The HAMR network: configuration, modules, rotations, the weak camera and the checkpoint format.

Imports torch, safetensors and the backend's hand model; never the training package or bpy.
"""

from .camera import (
    fit_weak_perspective,
    normalized_to_pixels,
    pixels_to_normalized,
    weak_project,
    weak_to_full_translation,
)
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import HamrConfig
from .hamr import HamrNet, HamrOutput
from .regressor import RegressorParams
from .rotation import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)

__all__ = [
    "CheckpointError",
    "HamrConfig",
    "HamrNet",
    "HamrOutput",
    "RegressorParams",
    "axis_angle_to_matrix",
    "fit_weak_perspective",
    "load_checkpoint",
    "matrix_to_axis_angle",
    "matrix_to_rotation_6d",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "rotation_6d_to_matrix",
    "save_checkpoint",
    "weak_project",
    "weak_to_full_translation",
]
