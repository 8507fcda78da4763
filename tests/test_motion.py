"""backend.track.motion.median_flow: box motion from the image, against warps of a known amount (the
box moved and scaled by hand from the warp's parameters)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from backend.track.motion import _median_flow, median_flow, template_shift, to_gray


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 2)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _warp(image: np.ndarray, matrix) -> np.ndarray:
    return cv2.warpAffine(image, np.float32(matrix), (image.shape[1], image.shape[0]))


def test_a_shift_moves_the_box_by_it(texture) -> None:
    moved = median_flow(texture, _warp(texture, [[1, 0, 5.5], [0, 1, -3.25]]), (100, 80, 180, 160))
    assert moved == pytest.approx((105.5, 76.75, 185.5, 156.75), abs=0.25)


def test_a_zoom_scales_the_box_about_its_centre(texture) -> None:
    # x' = 1.1 (x - 140) + 140 about the box centre (140, 120): the box grows to 88 x 88
    zoom = cv2.getRotationMatrix2D((140, 120), 0, 1.1)
    moved = median_flow(texture, _warp(texture, zoom), (100, 80, 180, 160))
    assert moved == pytest.approx((96, 76, 184, 164), abs=0.6)


def test_a_far_jump_is_found_again(texture) -> None:
    """A 30-pixel box that moves 40 pixels, too far for the flow started from no motion: the
    flow started from a guess of the shift follows it, and without a guess template matching
    finds it first."""
    jump = _warp(texture, [[1, 0, 40], [0, 1, 12]])
    box = (100, 100, 130, 130)
    assert _median_flow(texture, jump, box, None) is None  # the flow alone loses it
    expected = (140, 112, 170, 142)
    assert median_flow(texture, jump, box, guess=(36, 10)) == pytest.approx(expected, abs=0.3)
    assert template_shift(texture, jump, box) == pytest.approx((40, 12), abs=30 / 48 + 1e-6)
    assert median_flow(texture, jump, box) == pytest.approx(expected, abs=0.3)


def test_template_shift_needs_content(texture) -> None:
    flat = np.full_like(texture, 128)
    assert template_shift(flat, flat, (100, 80, 180, 160)) is None  # nothing to match
    noise = np.random.default_rng(3).integers(0, 256, texture.shape, dtype=np.uint8)
    assert template_shift(texture, noise, (100, 80, 180, 160)) is None  # no clear peak
    assert template_shift(texture, texture, (300, 200, 400, 300)) is None  # off the image


def test_nothing_to_follow_gives_none(texture) -> None:
    flat = np.full_like(texture, 128)
    assert median_flow(flat, flat, (100, 80, 180, 160)) is None  # no corners
    assert median_flow(texture, texture, (0, 0, 5, 5)) is None  # too small
    assert median_flow(texture, texture, (400, 300, 500, 400)) is None  # off the image
    noise = np.random.default_rng(2).integers(0, 256, texture.shape, dtype=np.uint8)
    assert median_flow(texture, noise, (100, 80, 180, 160)) is None  # no consistent motion


def test_to_gray_matches_the_luma_weights() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 0, 255)
    gray = to_gray(rgb)
    assert gray[0, 0] == round(0.299 * 255) and gray[1, 1] == round(0.114 * 255)


def _paste_disc(background: np.ndarray, texture: np.ndarray, centre, radius: int) -> np.ndarray:
    """`background` with a disc of `texture` (its own pixels at the same offsets) at centre."""
    out = background.copy()
    cx, cy = centre
    yy, xx = np.mgrid[: out.shape[0], : out.shape[1]]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    out[disc] = texture[yy[disc] - cy + 120, xx[disc] - cx + 160]
    return out


@pytest.fixture(scope="module")
def other_texture() -> np.ndarray:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 2)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def test_an_object_moving_over_a_still_background_is_followed(texture, other_texture) -> None:
    """A disc filling a quarter of the box moves by (4, -3) over a still, textured background:
    most corners in the box are the background's, yet the box follows the disc, the part of its
    content that moves apart from the ring around it. Without that split (`_apart` patched to
    keep every point) the median follows the background and the box stays."""
    box = (100, 80, 180, 160)
    before = _paste_disc(texture, other_texture, (140, 120), 25)
    after = _paste_disc(texture, other_texture, (144, 117), 25)
    moved = (104, 77, 184, 157)
    # the disc is the minority of the box: the median over all its points (nearly) stands still
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("backend.track.motion._apart", lambda *args: None)
        assert median_flow(before, after, box) == pytest.approx(box, abs=1.0)
    assert median_flow(before, after, box) == pytest.approx(moved, abs=0.6)


def test_an_object_held_still_while_the_background_pans_stays(texture, other_texture) -> None:
    """The camera pans (the background moves by (-5, 2)) while the disc stays where it is in
    the frame, as a hand held up to a moving camera: the box stays on the disc."""
    box = (100, 80, 180, 160)
    before = _paste_disc(texture, other_texture, (140, 120), 25)
    panned = _warp(texture, [[1, 0, -5], [0, 1, 2]])
    after = _paste_disc(panned, other_texture, (140, 120), 25)
    assert median_flow(before, after, box) == pytest.approx(box, abs=0.6)
