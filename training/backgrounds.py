"""Real backgrounds for the synthetic engine: regions of real photos away from any hand.

    python -m training.backgrounds SRC --out DIR [--exclude GLOB ...] [--per-photo 2]
                                   [--min-side 128] [--limit N]

Every photo under SRC (sorted relative paths) gives up to --per-photo square regions that touch
no hand: the hand boxes come from a Pascal-VOC `.xml` next to the photo when there is one (the
webcam scenes of /work/shared/realhands have them), else from MediaPipe (any hand it finds, at a
low threshold's worth of caution: every box is grown by HAND_MARGIN of its longer side). Squares
of REGION_FRACTIONS of the photo's shorter side are tried on a grid (half a side apart), larger
first, left to right and top to bottom; a square is kept when it overlaps no grown hand box and
no square kept before. Photos matching an --exclude glob are skipped (keep the photos of a
held-out split out of training's backgrounds). Deterministic.

DIR gets NNNNNN.jpg regions and manifest.json (source, options, counts, and for each region its
source photo and (x0, y0, side)). The synthetic engine takes DIR as `background_dir`
(`[synth] background_dir = "DIR"` in a training config; `user_background_fraction` sets the
share of real backgrounds). The synthetic test split never uses them (its own procedural
family), so its backgrounds stay disjoint from training's.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .label_real import IMAGE_SUFFIXES

HAND_MARGIN = 0.25  # each hand box grows by this fraction of its longer side on every side
REGION_FRACTIONS = (0.6, 0.45, 0.3)  # region sides tried, fractions of the shorter image side


def voc_boxes(xml_path: Path, scale_to: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Boxes (x0, y0, x1, y1) of a Pascal-VOC annotation, rescaled to the photo's stored size
    (width, height) when the annotation's <size> differs (the realhands photos were shrunk)."""
    root = ET.parse(xml_path).getroot()
    sx = sy = 1.0
    size = root.find("size")
    if scale_to is not None and size is not None:
        w, h = float(size.findtext("width", "0")), float(size.findtext("height", "0"))
        if w > 0 and h > 0:
            sx, sy = scale_to[0] / w, scale_to[1] / h
    boxes = []
    for obj in root.iter("object"):
        b = obj.find("bndbox")
        if b is None:
            continue
        x0, y0, x1, y1 = (float(b.findtext(k, "0")) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append(np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy]))
    return boxes


def hand_free_regions(
    shape: tuple[int, int], boxes: list[np.ndarray], per_photo: int, min_side: int
) -> list[tuple[int, int, int]]:
    """(x0, y0, side) squares of an (H, W) photo that overlap no grown hand box (module doc)."""
    h, w = shape
    grown = []
    for b in boxes:
        m = HAND_MARGIN * max(b[2] - b[0], b[3] - b[1])
        grown.append(np.array([b[0] - m, b[1] - m, b[2] + m, b[3] + m]))

    def free(x0, y0, s, others) -> bool:
        for g in others:
            if x0 < g[2] and x0 + s > g[0] and y0 < g[3] and y0 + s > g[1]:
                return False
        return True

    kept: list[tuple[int, int, int]] = []
    for frac in REGION_FRACTIONS:
        side = int(frac * min(h, w))
        if side < min_side:
            continue
        step = max(1, side // 2)
        for y0 in range(0, h - side + 1, step):
            for x0 in range(0, w - side + 1, step):
                taken = [np.array([x, y, x + s, y + s]) for x, y, s in kept]
                if free(x0, y0, side, grown + taken):
                    kept.append((x0, y0, side))
                    if len(kept) >= per_photo:
                        return kept
    return kept


def extract(
    src: Path,
    out: Path,
    exclude: list[str] | None = None,
    per_photo: int = 2,
    min_side: int = 128,
    limit: int | None = None,
) -> dict:
    from PIL import Image

    from .data.common import load_rgb

    exclude = list(exclude or [])
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    regions, counts = [], {"photos": 0, "excluded": 0, "from_xml": 0, "from_mediapipe": 0}
    for path in files[:limit]:
        rel = path.relative_to(src).as_posix()
        if any(fnmatch.fnmatch(rel, g) for g in exclude):
            counts["excluded"] += 1
            continue
        image = load_rgb(path)
        h, w = image.shape[:2]
        xml = path.with_suffix(".xml")
        if xml.exists():
            boxes = voc_boxes(xml, (w, h))
            counts["from_xml"] += 1
        else:
            from backend.detect import mediapipe_hands

            boxes = [np.asarray(d["box_xyxy"]) for d in mediapipe_hands.detect(image)]
            counts["from_mediapipe"] += 1
        counts["photos"] += 1
        for x0, y0, side in hand_free_regions((h, w), boxes, per_photo, min_side):
            name = f"{len(regions):06d}.jpg"
            Image.fromarray(image[y0 : y0 + side, x0 : x0 + side]).save(out / name, quality=92)
            regions.append({"file": name, "source": rel, "x0": x0, "y0": y0, "side": side})
    manifest = {
        "source": str(src),
        "exclude": exclude,
        "per_photo": per_photo,
        "min_side": min_side,
        "hand_margin": HAND_MARGIN,
        "region_fractions": list(REGION_FRACTIONS),
        **counts,
        "regions": len(regions),
        "items": regions,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    ap.add_argument("--per-photo", type=int, default=2)
    ap.add_argument("--min-side", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        print(f"error: {args.src} is not a folder", file=sys.stderr)
        return 2
    manifest = extract(args.src, args.out, args.exclude, args.per_photo, args.min_side, args.limit)
    print(json.dumps({k: v for k, v in manifest.items() if k != "items"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
