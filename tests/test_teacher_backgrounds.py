"""Real backgrounds for the synthetic engine (training/backgrounds.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.backgrounds import HAND_MARGIN, extract, hand_free_regions, voc_boxes

WEBCAM = Path(__file__).resolve().parents[2] / "shared" / "realhands" / "webcam_scenes" / "images"


def test_regions_avoid_the_grown_hand_box():
    # a 480 x 640 photo with a 160-px hand box at 400..560 x 100..260, grown by 0.25 x 160 =
    # 40 px to 360..600 x 60..300: the first 0.6 x 480 = 288 px square fits at the top left
    box = np.array([400.0, 100.0, 560.0, 260.0])
    regions = hand_free_regions((480, 640), [box], per_photo=3, min_side=64)
    assert regions[0] == (0, 0, 288) and len(regions) == 3
    m = HAND_MARGIN * 160
    for x0, y0, s in regions:
        assert x0 >= 0 and y0 >= 0 and x0 + s <= 640 and y0 + s <= 480
        overlaps = (
            x0 < box[2] + m and x0 + s > box[0] - m and y0 < box[3] + m and y0 + s > box[1] - m
        )
        assert not overlaps, (x0, y0, s)
    # regions do not overlap each other
    for i, (a, b, s) in enumerate(regions):
        for c, d, t in regions[i + 1 :]:
            assert not (a < c + t and a + s > c and b < d + t and b + s > d)
    # a hand filling the photo leaves nothing
    assert hand_free_regions((480, 640), [np.array([0.0, 0, 640, 480])], 2, 64) == []


@pytest.mark.skipif(not WEBCAM.exists(), reason="../shared/realhands is absent")
def test_webcam_regions_touch_no_annotated_hand(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    photos = sorted(WEBCAM.glob("*.jpg"))[:3]
    for p in photos:
        (src / p.name).symlink_to(p)
        (src / p.with_suffix(".xml").name).symlink_to(p.with_suffix(".xml"))
    manifest = extract(src, tmp_path / "bg", per_photo=2, min_side=96)
    assert manifest["photos"] == 3 and manifest["from_xml"] == 3 and manifest["regions"] >= 1
    from PIL import Image

    for item in manifest["items"]:
        with Image.open(src / item["source"]) as im:
            w, h = im.size
        boxes = voc_boxes((src / item["source"]).with_suffix(".xml"), (w, h))
        assert boxes
        x0, y0, s = item["x0"], item["y0"], item["side"]
        for b in boxes:
            assert not (x0 < b[2] and x0 + s > b[0] and y0 < b[3] and y0 + s > b[1])
        with Image.open(tmp_path / "bg" / item["file"]) as im:
            assert im.size == (s, s)
