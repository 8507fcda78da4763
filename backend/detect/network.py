"""The network as a hand detector, for photos where MediaPipe finds nothing (gloves, a
box it does not see) or when asked for (`--detector hamr`).

The network as a detector (`find_hands`; documented in the README):
1. proposals: connected blobs of skin-like colour (YCrCb box of Chai & Ngan 1999, widened)
   and a coarse grid of square windows at three scales (1/4, 2/5 and 3/5 of the shorter side);
2. scoring: each proposal's crop goes through the network as a right hand and, mirrored, as a
   left hand; the score is the heat-maps' mean peak (`HandNetwork.heatmap_confidence`), the side
   the better of the two;
3. refinement: proposals above `min_score` are re-cropped around the tight box of their predicted
   2D keypoints (grown by 20 %) and scored again;
4. non-maximum suppression (IoU > 0.3) keeps at most `max_hands`.
Its quality follows the network's: with the shipped CPU-trained checkpoint it is a rough
detector (README: detection results on the sample photos). Imports numpy, scipy, torch and
the backend's crop geometry and network.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.crop import CROP_SIZE, iou, points_from_crop
from backend.errors import Cancelled
from backend.network.camera import normalized_to_pixels
from backend.network.runner import HandNetwork
from backend.options import HandRequest

WINDOW_SCALES = (0.25, 0.4, 0.6)
MIN_SCORE = 0.3
NMS_IOU = 0.3
# boxes a batch (8 crops with both sides): find_hands peaks at 550 MB on a photo, not 871 as at
# 16 boxes, and is no slower on a CPU (4.9 vs 6.8 s on wild_hamer/test2.jpg, 1 thread)
BATCH = 4


def skin_boxes(image: np.ndarray, min_area_frac: float = 0.002) -> list[tuple[float, ...]]:
    """Boxes (x0, y0, x1, y1) of connected skin-coloured blobs, image pixels."""
    from scipy import ndimage

    h, w = image.shape[:2]
    step = max(1, int(max(h, w) / 320))
    small = image[::step, ::step].astype(np.float32)
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    cr = 128 + 0.5 * r - 0.4187 * g - 0.0813 * b
    cb = 128 - 0.1687 * r - 0.3313 * g + 0.5 * b
    mask = (cr > 133) & (cr < 180) & (cb > 77) & (cb < 135)
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    boxes = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        ys, xs = sl
        area = (ys.stop - ys.start) * (xs.stop - xs.start)
        if area < min_area_frac * mask.size:
            continue
        boxes.append((xs.start * step, ys.start * step, xs.stop * step, ys.stop * step))
    return boxes


def window_boxes(width: int, height: int) -> list[tuple[float, ...]]:
    """Square windows on a half-overlapping grid at WINDOW_SCALES of the shorter side."""
    boxes = []
    for scale in WINDOW_SCALES:
        side = scale * min(width, height)
        xs = np.arange(0, max(width - side, 0) + 1e-6, side / 2)
        ys = np.arange(0, max(height - side, 0) + 1e-6, side / 2)
        boxes += [(x, y, x + side, y + side) for y in ys for x in xs]
    return boxes


def score_boxes(network: HandNetwork, image: np.ndarray, boxes, side: str, cancel=None):
    """For each box: (score, side, keypoint box in the image) from the network."""
    results = []
    sides = ("right", "left") if side == "auto" else (side,)
    for i in range(0, len(boxes), BATCH):
        if cancel is not None and cancel.is_set():  # a threading.Event: checked between batches
            raise Cancelled("cancelled while looking for hands")
        chunk = boxes[i : i + BATCH]
        crops, metas = [], []
        for box in chunk:
            for s in sides:
                rgb, crop = network.crops_for(image, box, flip=s == "left")
                crops.append(rgb)
                metas.append((s, crop))
        out = network.run_crops(np.stack(crops))
        conf = network.heatmap_confidence(out).cpu()
        kp = normalized_to_pixels(out.keypoints2d, CROP_SIZE).cpu()
        for j in range(len(chunk)):
            k = max(range(len(sides)), key=lambda t: float(conf[j * len(sides) + t]))
            idx = j * len(sides) + k
            s, crop = metas[idx]
            pts = kp[idx].clone().double()
            if s == "left":
                pts[:, 0] = CROP_SIZE - pts[:, 0]
            img_pts = points_from_crop(pts[None], crop[None])[0]
            lo, hi = img_pts.amin(0), img_pts.amax(0)
            grow = (hi - lo) * 0.2
            kbox = tuple((torch.cat([lo - grow, hi + grow])).tolist())
            results.append((float(conf[idx]), s, kbox))
    return results


def find_hands(
    network: HandNetwork,
    image: np.ndarray,
    side: str = "auto",
    max_hands: int = 4,
    min_score: float = MIN_SCORE,
    cancel=None,
) -> list[HandRequest]:
    """HandRequests for the hands found in `image` (best first); [] when none passes. cancel: a
    threading.Event that stops the search (`errors.Cancelled`) between batches of crops."""
    h, w = image.shape[:2]
    proposals = skin_boxes(image) + window_boxes(w, h)
    first = score_boxes(network, image, proposals, side, cancel)
    keep = [r for r in first if r[0] >= min_score]
    keep.sort(key=lambda r: -r[0])
    keep = keep[: 4 * max_hands]
    refined = score_boxes(network, image, [r[2] for r in keep], side, cancel) if keep else []
    found: list[tuple[float, str, tuple]] = []
    for score, s, box in sorted(refined, key=lambda r: -r[0]):
        box = (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))
        if score < min_score or box[2] - box[0] < 8 or box[3] - box[1] < 8:
            continue
        if all(iou(box, f[2]) <= NMS_IOU for f in found):
            found.append((score, s, box))
        if len(found) == max_hands:
            break
    return [
        HandRequest(box_xyxy=b, side=s if side == "auto" else side, score=sc) for sc, s, b in found
    ]
