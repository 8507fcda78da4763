"""Box motion between two video frames from the image alone (Median Flow, Kalal et al. 2010).

`median_flow` follows the corners (Shi-Tomasi) inside a box from one grey frame to the next with
pyramidal Lucas-Kanade optical flow, runs the flow back again and keeps the points that return
to where they started (forward-backward error under its median and under FB_MAX_PX); the box
moves by the median displacement of those points and scales by the median ratio of their
pairwise distances. Corners in a ring around the box are followed too: their motion, fitted
as a similarity, is the surroundings' (a still background, or the camera's pan or zoom), and
where a group of the box's points moves apart from it (a hand over a still background, whose
box holds more background corners than hand ones) the box follows that group alone. A jump too
far for the flow (from the guessed shift, then from none) is found by template matching first
(`template_shift`), then refined by the flow. `process_video`
uses it for a track that only the network's keypoints would otherwise place, since a poor
prediction fed back as the next crop can shrink, grow or walk the box off the hand within a few
frames.

Imports numpy and OpenCV only.
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_CORNERS = 80  # corners followed inside a box
MIN_POINTS = 8  # fewer reliable points than this: no estimate
FB_MAX_PX = 2.0  # a point whose forward-backward error exceeds this (pixels) is dropped ...
FB_FLOOR_PX = 0.5  # ... as is one over the median error, unless it is under this
MAX_SCALE_STEP = 1.25  # a scale change beyond this factor in one frame is not believed
TEMPLATE_SIDE = 48.0  # template matching works at this many pixels per box side ...
SEARCH_SIDES = 1.5  # ... searching this many box sides around the box
MATCH_MIN = 0.6  # ... and takes a peak of the normalised cross-correlation above this
RING_SIDES = 0.5  # the surroundings' motion: corners in a band this many box sides wide ...
RING_GAP = 0.1  # ... leaving out this much of a side next to the box (the hand may reach past)
APART_PX, APART_SIDES = 1.0, 0.02  # a point moves apart from the ring by more than both ...
APART_MIN, APART_SHARE = 5, 0.1  # ... and the box follows the largest group of such points
# moving together (within twice that distance of one of them) when it has this many of the box's
LK_PARAMS = {
    "winSize": (15, 15),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
}


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> (H, W) uint8, the frame `median_flow` takes."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def median_flow(
    previous: np.ndarray, current: np.ndarray, box_xyxy, guess=None
) -> tuple[float, float, float, float] | None:
    """The box (x0, y0, x1, y1, pixels of `previous`) moved into `current` (both grey (H, W)
    uint8 of one size), clipped to the image; None when too few points inside it can be
    followed reliably (a flat or blurred region, the box off the image) or the scale jumps.
    guess: the box's expected shift (dx, dy) pixels, its last one say: the flow starts from
    there first (a hand that moves far between frames), then from no motion."""
    starts = [np.asarray(guess, dtype=np.float32), None] if guess is not None else [None]
    for start_shift in starts:
        moved = _median_flow(previous, current, box_xyxy, start_shift)
        if moved is not None:
            return moved
    # a jump too far for both: the box's content found again by template matching, then the
    # flow started from there (its forward-backward check still has the last word)
    coarse = template_shift(previous, current, box_xyxy)
    if coarse is None:
        return None
    return _median_flow(previous, current, box_xyxy, np.asarray(coarse, dtype=np.float32))


def template_shift(
    previous: np.ndarray, current: np.ndarray, box_xyxy
) -> tuple[float, float] | None:
    """Where the box's content of `previous` lies in `current`, searched over SEARCH_SIDES box
    sides around it (normalised cross-correlation, at TEMPLATE_SIDE pixels per box side):
    the shift (dx, dy) in pixels, or None without a clear match (peak under MATCH_MIN)."""
    h, w = previous.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    side = max(x1 - x0, y1 - y0)
    if side < 8 or x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        return None
    f = min(1.0, TEMPLATE_SIDE / side)
    reach = SEARCH_SIDES * side
    rx0, ry0 = int(max(x0 - reach, 0)), int(max(y0 - reach, 0))
    rx1, ry1 = int(min(np.ceil(x1 + reach), w)), int(min(np.ceil(y1 + reach), h))

    def small(image: np.ndarray) -> np.ndarray:  # the search region, scaled by f
        crop = image[ry0:ry1, rx0:rx1]
        return cv2.resize(crop, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)

    small_prev, region = small(previous), small(current)
    tx0, ty0 = int(round((x0 - rx0) * f)), int(round((y0 - ry0) * f))
    tx1, ty1 = int(round((x1 - rx0) * f)), int(round((y1 - ry0) * f))
    template = small_prev[ty0:ty1, tx0:tx1]
    if template.shape[0] < 4 or template.shape[1] < 4 or template.std() < 1.0:
        return None
    if region.shape[0] < template.shape[0] or region.shape[1] < template.shape[1]:
        return None
    scores = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)
    _, peak, _, (px, py) = cv2.minMaxLoc(scores)
    if peak < MATCH_MIN:
        return None
    return ((px - tx0) / f, (py - ty0) / f)


def _median_flow(previous, current, box_xyxy, start_shift):
    """One try of `median_flow`, the flow started from start_shift (None: no motion). Works
    inside the box grown by its side (and the shift), so its cost follows the box, not the
    frame. Corners in a ring around the box give the surroundings' own motion; where enough of
    the box's points move apart from it, the box follows those alone (`_apart`)."""
    h, w = previous.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    ix0, iy0 = max(int(x0), 0), max(int(y0), 0)
    ix1, iy1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    if ix1 - ix0 < 8 or iy1 - iy0 < 8:
        return None
    side = max(x1 - x0, y1 - y0)
    reach = side + (float(np.abs(start_shift).max()) if start_shift is not None else 0.0)
    rx0, ry0 = int(max(ix0 - reach, 0)), int(max(iy0 - reach, 0))
    rx1, ry1 = int(min(ix1 + reach, w)), int(min(iy1 + reach, h))
    previous, current = previous[ry0:ry1, rx0:rx1], current[ry0:ry1, rx0:rx1]
    box = (ix0 - rx0, iy0 - ry0, ix1 - rx0, iy1 - ry0)  # in the region
    spacing = max(2.0, side / 40)
    start = _corners(previous, box, spacing)
    if start is None or len(start) < MIN_POINTS:
        return None
    # the ring: a band RING_SIDES of a side wide around the box, less RING_GAP next to it,
    # where the hand may reach past its box
    outer, gap = int(round(RING_SIDES * side)), int(round(RING_GAP * side))
    grown = (box[0] - outer, box[1] - outer, box[2] + outer, box[3] + outer)
    hole = (box[0] - gap, box[1] - gap, box[2] + gap, box[3] + gap)
    around = _corners(previous, grown, spacing, hole)
    n = len(start)
    points = start if around is None else np.concatenate([start, around])
    # no shift given: the flow starts where the points are (what LK does without an estimate)
    shift = np.zeros(2, np.float32) if start_shift is None else start_shift
    flags = cv2.OPTFLOW_USE_INITIAL_FLOW
    ahead, ok_fwd, _ = cv2.calcOpticalFlowPyrLK(
        previous, current, points, points + shift, flags=flags, **LK_PARAMS
    )
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(
        current, previous, ahead, ahead - shift, flags=flags, **LK_PARAMS
    )
    fb = np.linalg.norm(back - points, axis=-1).ravel()
    ok = (ok_fwd.ravel() == 1) & (ok_back.ravel() == 1) & np.isfinite(fb)
    p0, p1 = points[:, 0].astype(np.float64), ahead[:, 0].astype(np.float64)
    keep = _reliable(fb[:n], ok[:n])
    if keep is None:
        return None
    p0, p1, rest = p0[:n][keep], p1[:n][keep], (p0[n:], p1[n:], fb[n:], ok[n:])
    apart = _apart(p0, p1, rest, side)
    if apart is not None:
        p0, p1 = p0[apart], p1[apart]
    shift = np.median(p1 - p0, axis=0)
    i, j = np.triu_indices(len(p0), k=1)
    d0 = np.linalg.norm(p0[i] - p0[j], axis=1)
    d1 = np.linalg.norm(p1[i] - p1[j], axis=1)
    far = d0 > 1e-3
    scale = float(np.median(d1[far] / d0[far])) if far.any() else 1.0
    if not (1 / MAX_SCALE_STEP <= scale <= MAX_SCALE_STEP):
        return None
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + shift
    half = np.array([(x1 - x0) / 2, (y1 - y0) / 2]) * scale
    nx0, ny0 = np.maximum(centre - half, 0.0)
    nx1, ny1 = np.minimum(centre + half, (w, h))
    if nx1 - nx0 < 1 or ny1 - ny0 < 1:
        return None
    return float(nx0), float(ny0), float(nx1), float(ny1)


def _reliable(fb: np.ndarray, ok: np.ndarray) -> np.ndarray | None:
    """Points (a boolean mask) whose forward-backward error is under its median (or under
    FB_FLOOR_PX: a still background's points return almost exactly, and the median of a box
    mostly of them would drop every point that moved) and under FB_MAX_PX; None when fewer than
    MIN_POINTS are."""
    if ok.sum() < MIN_POINTS:
        return None
    limit = min(max(float(np.median(fb[ok])), FB_FLOOR_PX), FB_MAX_PX)
    keep = ok & (fb <= limit)
    return keep if keep.sum() >= MIN_POINTS else None


def _corners(image: np.ndarray, rect, spacing: float, hole=None) -> np.ndarray | None:
    """Up to MAX_CORNERS Shi-Tomasi corners (N, 1, 2) float32 of `image` inside rect (x0, y0,
    x1, y1, clipped to the image), none inside `hole` (a rect too, or None); None if there are
    none. Works on the rect's pixels only, so its cost follows the rect."""
    h, w = image.shape[:2]
    x0, y0 = max(int(rect[0]), 0), max(int(rect[1]), 0)
    x1, y1 = min(int(rect[2]), w), min(int(rect[3]), h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    mask = None
    if hole is not None:
        mask = np.full((y1 - y0, x1 - x0), 255, np.uint8)
        hx0, hy0 = max(int(hole[0]) - x0, 0), max(int(hole[1]) - y0, 0)
        mask[hy0 : max(int(hole[3]) - y0, 0), hx0 : max(int(hole[2]) - x0, 0)] = 0
    found = cv2.goodFeaturesToTrack(
        image[y0:y1, x0:x1], MAX_CORNERS, qualityLevel=0.01, minDistance=spacing, mask=mask
    )
    return None if found is None else found + np.float32([x0, y0])


def _apart(p0: np.ndarray, p1: np.ndarray, around, side: float) -> np.ndarray | None:
    """Indices of the box's reliable points (p0 -> p1, (N, 2) each) for the box to follow, the
    largest group of those that move apart from their surroundings: the ring's reliable points
    give the background's motion as a similarity (shift, scale, rotation: a camera's pan, zoom
    or roll; fitted with RANSAC, so a minority of the ring on the hand or arm does not count),
    and a box point moves apart when it lands more than APART_PX pixels and APART_SIDES of the
    box's side from where that motion takes it. A hand moving over a still background, or held
    still while the camera moves, is the box's content that moves apart; its group is the points
    moving together. None, to keep every point, when the ring has too few reliable points or no
    clear motion, or when that group has fewer than APART_MIN points or APART_SHARE of the box's
    (everything moves together, as in a pan, or a few scattered flow errors)."""
    q0, q1, fb, ok = around
    keep = _reliable(fb, ok)
    if keep is None:
        return None
    motion, _ = cv2.estimateAffinePartial2D(
        q0[keep], q1[keep], method=cv2.RANSAC, ransacReprojThreshold=APART_PX
    )
    if motion is None:
        return None
    expected = p0 @ motion[:, :2].T + motion[:, 2]
    tolerance = max(APART_PX, APART_SIDES * side)
    apart = np.flatnonzero(np.linalg.norm(p1 - expected, axis=1) > tolerance)
    needed = max(APART_MIN, APART_SHARE * len(p0))
    if len(apart) < needed:
        return None
    # the largest group moving together: the hand's inside, not the points on its outline whose
    # flow mixes its motion with the background's, nor scattered flow errors
    moves = p1[apart] - p0[apart]
    near = np.linalg.norm(moves[:, None] - moves[None], axis=-1) <= 2 * tolerance
    group = apart[near[np.argmax(near.sum(axis=1))]]
    return group if len(group) >= needed else None
