"""Evaluate a checkpoint: `python -m training.evaluate --checkpoint PATH --dataset NAME[:PATH]`.

Datasets:
  synthetic-test        the held-out synthetic split (fixed seed 2019; skin-tone bands and a
                        background family never used in training), --count samples
  samples               every annotated hand in ../shared/samples (2D; 3D for InterHand2.6M)
  freihand:PATH, rhd:PATH, stb:PATH, samples-<name>[:PATH], synthetic-folder:PATH
                        any reader of training.data.mix.build_dataset (evaluation split)

Prints one JSON object with the metrics of training/metrics.py; metrics a dataset cannot support
(e.g. 3D errors without 3D labels, vertex metrics without vertices of the model's topology) are
left out. `--overlays DIR` writes the predicted mesh and skeleton over each crop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from backend.network.camera import normalized_to_pixels

from .data.transforms import flip_to_right
from .metrics import f_score, pa_error, pck_2d, pck_auc_3d
from .synth.engine import SynthConfig, SyntheticHands

SYNTHETIC_TEST_SEED = 2019
PCK_2D_FRACTIONS = (0.05, 0.1, 0.2)  # of the crop side


class _Accumulator:
    """Collects predictions and labels over batches, then computes the metrics."""

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, **tensors: torch.Tensor) -> None:
        for k, v in tensors.items():
            self.parts.setdefault(k, []).append(v.detach().float().cpu())

    def get(self, key: str) -> torch.Tensor | None:
        return torch.cat(self.parts[key]) if key in self.parts else None

    def metrics(self, crop_size: int) -> dict[str, float]:
        out: dict[str, float] = {"count": float(len(self.get("kp2d_pred")))}
        has3d = self.get("has_3d")
        if has3d is not None and has3d.sum() > 0:
            sel = has3d > 0.5
            pred, gt = self.get("kp3d_pred")[sel], self.get("kp3d_gt")[sel]
            out["pa_mpjpe_mm"] = float(pa_error(pred, gt).mean() * 1000)
            _, auc = pck_auc_3d(pred, gt)
            out["pck3d_auc_20_50"] = float(auc)
            out["mpjpe_root_rel_mm"] = float(
                ((pred - pred[:, :1]) - (gt - gt[:, :1])).norm(dim=-1).mean() * 1000
            )
        vgt = self.get("verts_gt")
        if vgt is not None:
            vp = self.get("verts_pred")
            out["pa_mpvpe_mm"] = float(pa_error(vp, vgt).mean() * 1000)
            from .metrics import procrustes_align

            aligned = procrustes_align(vp, vgt)
            out["f_at_5mm"] = float(f_score(aligned, vgt, 0.005).mean())
            out["f_at_15mm"] = float(f_score(aligned, vgt, 0.015).mean())
        pred2d, gt2d, vis = self.get("kp2d_pred"), self.get("kp2d_gt"), self.get("vis")
        for frac in PCK_2D_FRACTIONS:
            out[f"pck2d_{frac:g}"] = float(pck_2d(pred2d, gt2d, vis, frac * crop_size))
        out["mean_2d_error_px"] = float(((pred2d - gt2d).norm(dim=-1) * vis).sum() / vis.sum())
        return out


@torch.no_grad()
def _run(model, batches, device, overlay_dir: Path | None = None) -> dict[str, float]:
    model.eval()
    acc = _Accumulator()
    size = model.config.input_size
    n_overlay = 0
    for batch in batches:
        batch = flip_to_right({k: v.to(device) for k, v in batch.items()})
        out = model(batch["image"])
        kp2d = normalized_to_pixels(out.keypoints2d, size)
        acc.add(
            kp2d_pred=kp2d,
            kp2d_gt=batch["keypoints2d"],
            vis=batch["keypoints2d_vis"],
            kp3d_pred=out.keypoints3d,
            kp3d_gt=batch["keypoints3d"],
            has_3d=batch.get("has_3d", torch.zeros(len(kp2d), device=device)),
        )
        verts = batch.get("vertices")
        if verts is not None and verts.shape[1] == out.vertices.shape[1]:
            acc.add(verts_pred=out.vertices, verts_gt=verts)
        if overlay_dir is not None:
            n_overlay += _write_overlays(overlay_dir, batch, out, kp2d, n_overlay)
    return acc.metrics(size)


def _write_overlays(folder: Path, batch, out, kp2d, start: int) -> int:
    """Mesh (weak camera, as an orthographic-ish pinhole far away) and skeleton over each crop."""
    from backend.network.camera import weak_to_full_translation
    from backend.render import render_overlay, save_png

    folder.mkdir(parents=True, exist_ok=True)
    size = batch["image"].shape[-1]
    focal = 5000.0  # a long lens approximates the weak-perspective camera
    k = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], device=kp2d.device)
    centre = torch.full((2,), size / 2, device=kp2d.device)
    transl = weak_to_full_translation(out.cam, centre, size, focal, centre)
    for i in range(len(kp2d)):
        img = (batch["image"][i].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).clip(0, 255)
        verts = (out.vertices[i] + transl[i]).cpu().numpy()
        pic = render_overlay(
            img.astype(np.uint8),
            verts,
            out.faces.cpu().numpy(),
            k.cpu().numpy(),
            kp2d[i].cpu().numpy(),
        )
        save_png(folder / f"{start + i:05d}.png", pic)
    return len(kp2d)


def synthetic_test_batches(
    count: int, device, batch_size: int = 16, seed: int = SYNTHETIC_TEST_SEED
):
    """The held-out synthetic test split as a list of batches (deterministic)."""
    engine = SyntheticHands(SynthConfig(split="test"), device)
    batches, done = [], 0
    while done < count:
        n = min(batch_size, count - done)
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + done)
        batches.append(engine.sample(n, g))
        done += n
    return batches


def evaluate_synthetic(model, count: int = 256, device="cpu", overlay_dir=None) -> dict:
    return _run(model, synthetic_test_batches(count, torch.device(device)), device, overlay_dir)


def evaluate_dataset(
    model, spec: str, device="cpu", batch_size: int = 16, overlay_dir=None, limit: int | None = None
) -> dict:
    from .data.mix import build_dataset

    ds = build_dataset(spec, "test")
    if limit:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    return _run(model, loader, device, overlay_dir)


SAMPLE_SETS = (
    "samples-freihand",
    "samples-onehand10k",
    "samples-panoptic",
    "samples-interhand2.6m",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint")
    which.add_argument(
        "--untrained",
        choices=("light", "paper"),
        help="a freshly initialised network (torch seed 0) of this preset instead: the baseline of "
        "predicting (nearly) the mean initialisation",
    )
    ap.add_argument("--dataset", default="synthetic-test")
    ap.add_argument("--count", type=int, default=256, help="synthetic-test samples")
    ap.add_argument("--limit", type=int, default=None, help="at most this many dataset items")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--overlays", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    from backend.network.checkpoint import CheckpointError, load_checkpoint

    try:
        if args.untrained:
            from backend.network.config import HamrConfig
            from backend.network.hamr import HamrNet

            torch.manual_seed(0)
            model = HamrNet(getattr(HamrConfig, args.untrained)()).to(args.device).eval()
        else:
            model, _ = load_checkpoint(args.checkpoint, args.device)
        if args.dataset == "synthetic-test":
            result = {
                "synthetic-test": evaluate_synthetic(model, args.count, args.device, args.overlays)
            }
        elif args.dataset == "samples":
            result = {}
            for name in SAMPLE_SETS:
                sub = args.overlays / name if args.overlays else None
                result[name] = evaluate_dataset(model, name, args.device, overlay_dir=sub)
        else:
            result = {
                args.dataset: evaluate_dataset(
                    model, args.dataset, args.device, overlay_dir=args.overlays, limit=args.limit
                )
            }
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = (
        {"checkpoint": str(args.checkpoint)} if args.checkpoint else {"untrained": args.untrained}
    )
    text = json.dumps({**source, **result}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
