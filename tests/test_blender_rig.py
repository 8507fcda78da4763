"""The animator's rig of issue #22 in headless bpy (no server): tests/blender_scripts/
rig_controls.py builds both hands with a random shape and measures against the backend's hand
model (HandModel vertices, backend.hand_model.poses), the assertions live here."""

from __future__ import annotations

import importlib.util

import pytest

from tests.test_blender import bpy_env, run_bpy  # noqa: F401  (the session fixture)

pytestmark = [
    pytest.mark.bpy,
    pytest.mark.skipif(
        importlib.util.find_spec("bpy") is None, reason="needs Blender as a Python module (bpy)"
    ),
]


@pytest.fixture(scope="module")
def rig_out(bpy_env: dict[str, str]) -> dict:  # noqa: F811
    return run_bpy("rig_controls.py", env=bpy_env)


@pytest.mark.parametrize("side", ["right", "left"])
def test_named_poses_through_the_controls_are_the_backends(rig_out: dict, side: str) -> None:
    r = rig_out["sides"][side]
    assert set(r["named_err_m"]) == {"fist", "point", "pinch", "spread"}
    assert max(r["named_err_m"].values()) < 1e-5, r["named_err_m"]  # measured 1.2e-7 m


@pytest.mark.parametrize("side", ["right", "left"])
def test_curl_is_one_axis_and_the_thumb_has_its_own(rig_out: dict, side: str) -> None:
    r = rig_out["sides"][side]
    for pose, (x_err_deg, other_deg) in r["curl"].items():
        # the flexion-only joints: Euler X is the named pose's angle, Y and Z (nearly) zero;
        # with a random shape the PIP bones lie up to 0.25 degrees off their digit's plane
        assert x_err_deg < 1e-2 and other_deg < 1.0, (pose, x_err_deg, other_deg)
    axes = r["x_axis_err_deg"]  # bone X against the backend's flexion axis of its digit
    for digit in ("index", "middle", "ring", "pinky"):
        assert max(axes[digit][:2]) < 0.5, (digit, axes[digit])
    assert axes["thumb"][0] < 0.5  # the thumb's own axis ...
    assert r["thumb_vs_index_axis_deg"] > 20  # ... not the palm's


@pytest.mark.parametrize("label", ["random", "fist", "point", "pinch", "spread"])
def test_mirror_paste_left_to_right_is_manos_mirror(rig_out: dict, label: str) -> None:
    """Blender's pose copy and paste flipped (.L onto .R) gives the right hand of the mirrored
    axis-angle (x, -y, -z) (DESIGN.md), vertex for vertex."""
    assert rig_out["mirror_err_m"][label] < 1e-5, rig_out["mirror_err_m"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_ik_limits_collections_shapes_uv(rig_out: dict, side: str) -> None:
    r = rig_out["sides"][side]
    s = "R" if side == "right" else "L"
    assert all(n.endswith(f".{s}") for n in r["bone_names"])
    assert {f"index_ik.{s}", f"index_pole.{s}", f"thumb4.{s}"} <= set(r["bone_names"])
    assert {f"index_curl.{s}", f"thumb_curl_mch.{s}"} <= set(r["bone_names"])
    # Controls: 5 IK targets, 5 poles, 5 curl controls; Mechanism: the curl's 5 helpers
    assert r["collections"] == {"Deform": 16, "Controls": 15, "Tips": 5, "Mechanism": 5}
    assert r["deform_in_deform"] and not r["tips_visible"] and not r["mechanism_visible"]
    assert r["shapes"] == 16 + 15 and r["ik_constraints"] == 5 and r["limit_constraints"] == 15
    assert r["curl_constraints"] == 15 + 5  # each finger joint, each mechanism bone
    # IK (off by default: the poses above are exact with it): on, the rest hand barely moves,
    # and the index fingertip follows its target 3 cm out of the palm, in the finger's plane
    assert r["ik_rest_move_m"] < 2e-3 and r["ik_tip_moved_m"] > 0.02
    assert r["ik_reach_m"] < 6e-3 and r["ik_out_of_plane_m"] < 4e-3, r
    # limits (off by default): a PIP bent back 40 degrees is held at 0 once they are on, a fist
    # (within the ranges) stays a fist
    assert r["limits_off_err_m"] < 1e-5 and r["limits_on_err_m"] < 1e-4
    assert r["limits_on_fist_err_m"] < 1e-3
    assert r["uv"]["range"][0] >= 0.0 and r["uv"]["range"][1] <= 1.0
    assert r["uv"]["positive_area_fraction"] == 1.0  # no face seen from behind


DIGITS = ("thumb", "index", "middle", "ring", "pinky")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("digit", DIGITS)
def test_a_curl_control_curls_its_digits_three_joints_about_the_backends_axis(
    rig_out: dict, side: str, digit: str
) -> None:
    """The digit's curl control turned 50 degrees about its X: each of the digit's three joints
    turns 50 degrees about the backend's flexion axis of that digit (the distal bones and the
    thumb's MCP and IP included, whose own X lies 2-16 degrees off it); no other joint moves."""
    c = rig_out["sides"][side]["controls"]["curl"][digit]
    assert c["flexion_deg"] == pytest.approx([50.0] * 3, abs=1e-3), c  # measured within 2e-5
    assert max(c["off_axis_deg"]) < 1e-3, c
    assert c["err_deg"] < 1e-3 and c["others_deg"] < 1e-3, c


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("digit", DIGITS)
def test_a_curl_controls_z_spreads_the_base_only(rig_out: dict, side: str, digit: str) -> None:
    """Its Z rotation (15 degrees) turns the digit's base joint about the palm normal, and
    nothing else."""
    c = rig_out["sides"][side]["controls"]["spread"][digit]
    assert c["base_deg"] == pytest.approx(15.0, abs=1e-3) and c["err_deg"] < 1e-3, c


def test_spread_direction_follows_blenders_mirror_convention(rig_out: dict) -> None:
    """Positive Z turns every digit of a right hand towards the little finger and of a left
    hand towards the thumb (the middle finger's own sign is the backend's choice): Paste
    Flipped negates Z, so the two hands' controls mirror each other (docs/blender.md)."""
    signs = {s: {d: v["away_sign"] for d, v in r["controls"]["spread"].items()}
             for s, r in rig_out["sides"].items()}  # fmt: skip
    assert signs["right"] == {"thumb": -1, "index": -1, "middle": 1, "ring": 1, "pinky": 1}
    assert signs["left"] == {"thumb": 1, "index": 1, "middle": 1, "ring": -1, "pinky": -1}


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_curl_controls_keep_the_keyed_pose_exact(rig_out: dict, side: str) -> None:
    """At rest the controls change nothing; turned, they compose with a keyed pose exactly as
    MANO's Rot(f, a) Rot(n, b) R (base) and Rot(f, a) R (other joints), vertex for vertex
    against the backend's hand model; the deform bones' channels (their keys) are untouched."""
    c = rig_out["sides"][side]["controls"]
    assert c["rest_err_deg"] < 1e-3
    assert c["composed_err_m"] < 1e-5 and c["back_to_rest_err_m"] < 1e-5, c  # measured 1e-7
    assert c["channels_kept"]


def test_pose_correctives_follow_the_curl_controls(rig_out: dict) -> None:
    """With non-zero correctives (random: the open model has none), a keyed pose plus every
    curl control turned gives the backend's vertices with those correctives: the correctives'
    drivers read the bones' rotations after the constraints."""
    c = rig_out["correctives"]
    assert c["corrective_size_m"] > 1e-3 and c["err_m"] < 1e-4, c
