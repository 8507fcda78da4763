"""The checkpoint format: one safetensors file that rebuilds its `HamrNet` alone.

Tensors: the network's parameters and buffers (`state_dict`) except the hand model's own buffers
(v_template, shapedirs, ...), which come from the hand model in use, never from the checkpoint.
With `half=True` the parameters are stored as float16 (buffers such as BatchNorm statistics and the
regressor's mean stay float32) and are cast back to float32 on load.

Metadata (safetensors' string -> string header):
    "format": "hamr.checkpoint", "format_version": "1",
    "config": HamrConfig.to_dict() as JSON, "hand_model_id": e.g. "open_hand-v1-b93eb6d61d0e",
    "side": "right" | "left", "metadata": the caller's dict as JSON (training command, data,
    metrics, ...).

Loading checks, in order, and raises `CheckpointError` naming the problem: the file exists and is
safetensors, it is a HAMR checkpoint of a known version with a valid config, the hand model in use
is the one it was trained with, and the weights match the config exactly.

Imports torch, safetensors and the network; never the training package or bpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from backend.hand_model.model import hand_model_id as current_hand_model_id

from .config import HamrConfig
from .hamr import HamrNet

FORMAT_NAME = "hamr.checkpoint"
FORMAT_VERSION = 1
HAND_MODEL_PREFIX = "hand_model."  # state_dict keys that belong to the hand model, never saved


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message saying why and what to do."""


def network_state_dict(model: HamrNet) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: `model.state_dict()` without the hand model's buffers."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(HAND_MODEL_PREFIX)}


def save_checkpoint(
    path: str | os.PathLike,
    model: HamrNet,
    *,
    hand_model_id: str,
    metadata: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """Write `model` to `path` (one .safetensors file, written atomically).

    hand_model_id: `backend.hand_model.model.hand_model_id(source)` of the hand model the network
    was trained with; metadata: JSON-serialisable facts to keep beside the weights; half: store the
    parameters as float16 (half the size; outputs change by float16 rounding)."""
    parameter_names = {name for name, _ in model.named_parameters()}
    tensors = {}
    for name, value in network_state_dict(model).items():
        value = value.detach().cpu()
        if half and name in parameter_names and value.is_floating_point():
            value = value.half()
        tensors[name] = value.contiguous().clone()  # own storage: safetensors refuses sharing
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "hand_model_id": hand_model_id,
        "side": model.side,
        "metadata": json.dumps(metadata or {}),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    os.replace(tmp, path)


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a checkpoint without loading its weights: config (dict),
    hand_model_id, side, format_version (int), metadata (dict). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a malformed file
        raise CheckpointError(f"{path} is not a safetensors file ({exc})") from exc
    if header.get("format") != FORMAT_NAME or "config" not in header:
        raise CheckpointError(
            f"{path} is a safetensors file but not a HAMR checkpoint (no {FORMAT_NAME!r} header "
            "with a config)"
        )
    try:
        version = int(header["format_version"])
        info = {
            "config": json.loads(header["config"]),
            "hand_model_id": header["hand_model_id"],
            "side": header["side"],
            "format_version": version,
            "metadata": json.loads(header.get("metadata", "{}")),
        }
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} has a damaged HAMR header ({exc!r})") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version}, newer than this backend's "
            f"{FORMAT_VERSION}; update the backend"
        )
    return info


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    hand_model_source: str | None = None,
    mano_dir: str | os.PathLike | None = None,
) -> tuple[HamrNet, dict[str, Any]]:
    """Rebuild the network stored at `path` from the file alone, in eval mode, float32.

    hand_model_source: the hand model to run with ("open" or "mano"); None uses the one recorded
    in the config. Its id must equal the checkpoint's. mano_dir: where the official MANO files
    are, for the "mano" source (defaults to $HAMR_MANO_DIR). Returns (model, info) with info as in
    `read_checkpoint_header` plus "dtype" ("float32" or "float16", how the weights were stored).
    Raises CheckpointError (a ValueError) for every problem with the file."""
    info = read_checkpoint_header(path)
    try:
        config = HamrConfig.from_dict(info["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} holds an invalid network config: {exc}") from exc
    source = hand_model_source or config.hand_model
    in_use = current_hand_model_id(source, mano_dir)
    if in_use != info["hand_model_id"]:
        raise CheckpointError(
            f"this checkpoint was trained with hand model {info['hand_model_id']} but the hand "
            f"model in use is {in_use}; use the matching hand model or retrain"
        )
    config = HamrConfig.from_dict({**info["config"], "hand_model": source})
    model = HamrNet(config, side=info["side"], mano_dir=mano_dir)

    expected = network_state_dict(model)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        details = [
            f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
            )
            if names
        ]
        raise CheckpointError(
            f"the weights in {path} do not match its config: " + "; ".join(details)
        )
    stored_half = any(t.dtype == torch.float16 for t in tensors.values())
    state = {k: t.to(expected[k].dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    model.load_state_dict(state, strict=False)  # the hand model's buffers are not in the file
    model.to(device).eval()
    info["dtype"] = "float16" if stored_half else "float32"
    return model, info
