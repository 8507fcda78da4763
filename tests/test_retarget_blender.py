"""Retargeting and export in real headless Blender (bpy 5.0, bundled Rigify and exporters).

Each test runs one script of tests/blender_scripts in its own bpy subprocess (tests/test_blender
`run_bpy`, user folders isolated); the assertions live here. Measured on Blender's evaluated
bones against the backend's forward kinematics (HandModel keypoints), see the scripts' docstrings.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_blender import (  # noqa: F401  (fixtures, marks)
    BOX_TEXT,
    bpy_env,
    hamr_blend,
    pytestmark,
    run_bpy,
    server,
)

DIGITS = ("thumb", "index", "middle", "ring", "pinky")


@pytest.fixture(scope="module")
def rigify_mixamo(bpy_env: dict[str, str]) -> dict:  # noqa: F811
    return run_bpy("retarget_rigify.py", 5, env=bpy_env, timeout=600)


def _stats(per_side: dict) -> tuple[float, float, float]:
    """(worst per-finger mean angle, max angle, max tip error) over sides, poses and fingers."""
    means, maxes, tips = [], [], []
    for poses in per_side.values():
        for r in poses.values():
            for d in DIGITS:
                means.append(np.mean(r["angles_deg"][d]))
                maxes.append(np.max(r["angles_deg"][d]))
                tips.append(r["tip_err"][d])
    return max(means), max(maxes), max(tips)


def test_rigify_generated_rig_follows_hamr_hands(rigify_mixamo: dict) -> None:
    out = rigify_mixamo
    assert len(out["poses"]) == 8 and set(out["rigify"]) == {"right", "left"}
    assert out["rigify_map"] == "Rigify (generated rig)"  # detected from the bone names
    mean, worst, tip = _stats(out["rigify"])
    assert mean <= 5.0 and worst <= 10.0, (mean, worst)
    # Rigify's stock metarig has other proportions than MANO (relative to the hand's length its
    # palm is longer, its fingers and above all its thumb shorter): with every bone pointing as
    # MANO's, fingertips land within 0.18 hand lengths (docs/retarget.md). No rotation of its
    # bones brings the thumb tip within 0.1 of MANO's in the flat hand (the geometric floor,
    # measured from the bone lengths alone), so the 0.1 target cannot be met by a retarget that
    # keeps the rig's proportions; `fingertips` gets as close as that floor allows.
    assert tip <= 0.2, tip
    floors = [r["floor"]["thumb"] for poses in out["rigify_tips"].values() for r in poses.values()]
    assert max(floors) > 0.15


def test_rigify_fingertips_mode_closes_the_fist_and_the_grasp(rigify_mixamo: dict) -> None:
    """`fingertips=True`: every tip as close to MANO's as the Rigify finger can get (its floor),
    but for fingers touching MANO's thumb, which follow the target thumb instead: the fist
    closes, the grasp's thumb and index touch."""
    for side, poses in rigify_mixamo["rigify_tips"].items():
        for name, r in poses.items():
            for d in DIGITS:
                touching = d != "thumb" and r["ref_thumb_gap"][d] < 0.15
                if not touching:
                    assert r["tip_err"][d] <= r["floor"][d] + 0.02, (side, name, d, r)
            if name == "fist":  # the four fingers' tips where MANO's are: the fist closes
                assert max(r["tip_err"][d] for d in DIGITS[1:]) < 0.03, (side, r["tip_err"])
            mano_gap, gap = r["pinch_gap"]
            if mano_gap < 0.05:  # thumb and index touch on MANO: they touch on Rigify
                assert gap <= mano_gap + 0.02, (side, name, r["pinch_gap"])
    # in directions mode the same grasp leaves a gap of 0.14 hand lengths between them
    plain = rigify_mixamo["rigify"]["right"]["grasp"]["pinch_gap"]
    assert plain[1] > plain[0] + 0.05


def test_mixamo_armature_with_rest_curl_and_roll(rigify_mixamo: dict) -> None:
    out = rigify_mixamo
    assert out["mixamo_map"] == "Mixamo"
    for key in ("mixamo", "mixamo_tips"):  # same proportions as HAMR: both modes agree
        mean, worst, tip = _stats(out[key])
        assert mean <= 5.0 and worst <= 10.0, (key, mean, worst)
        assert tip <= 0.01, (key, tip)


def test_retarget_errors_leave_the_scene_unchanged(rigify_mixamo: dict) -> None:
    e = rigify_mixamo["errors"]
    assert "no armature is selected" in e["no_target"]
    assert "ring2 -> f_ring.02.R.typo" in e["missing_bone"]
    assert "no hand bones" in e["no_hand_bones"]
    assert "select a HAMR hand" in e["no_source"]
    assert e["unchanged"]


@pytest.fixture(scope="module")
def bake_export(bpy_env: dict[str, str]) -> dict:  # noqa: F811
    return run_bpy("retarget_bake_export.py", 1000, env=bpy_env, timeout=600)


def test_bake_1000_frames_onto_rigify(bake_export: dict) -> None:
    b = bake_export["bake"]
    assert b["frames"] == 1000 and b["key_count"] == 1000
    assert b["median_s"] <= 2.0, b["times_s"]
    # only the 15 mapped FK finger controls are keyed, 4 quaternion channels each
    assert len(b["bones_keyed"]) == 15 and b["fcurves"] == 60
    assert all(n.startswith(("f_", "thumb.")) for n in b["bones_keyed"])
    assert b["min_consecutive_dot"] > 0.9  # continuous quaternion signs
    assert max(b["max_angle_deg_at_frames"]) < 1.0  # evaluated DEF bones follow the take
    nla = bake_export["nla"]
    assert nla["active_kept"] and len(nla["tracks"]) == 1 and "NLA" in nla["notes"][0]
    assert bake_export["cancel"] == {"actions_same": True, "tracks_same": True}


@pytest.mark.parametrize("fmt", ["fbx", "glb"])
def test_export_round_trip(bake_export: dict, fmt: str) -> None:
    r = bake_export["export"][fmt]
    assert len(r["max_err_m"]) == 5 and max(r["max_err_m"]) < 1e-5, r["max_err_m"]
    assert r["shape_keys"] == ["Basis"] + [f"beta_{i:02d}" for i in range(10)]
    assert r["covered"] == r["vertices"][1]  # every original vertex found


@pytest.mark.parametrize("fmt", ["fbx", "glb"])
def test_retargeted_character_round_trip(bake_export: dict, fmt: str) -> None:
    """The Rigify rig with the baked hand take, exported and re-imported: its DEF hand and finger
    bones (heads, tails, world rotations) at 5 frames as before, and they did move."""
    r = bake_export["rig_export"][fmt]
    assert r["animated"] and r["exported"] == [r["exported"][0]]
    assert len(r["max_err_m"]) == 5 and max(r["max_err_m"]) < 1e-5, r["max_err_m"]
    assert max(r["max_angle_deg"]) < 0.01, r["max_angle_deg"]
    assert r["moved_m"] > 0.01  # the fingers move over those frames: the check is not vacuous


def test_headless_retarget_and_export_steps(bake_export: dict) -> None:
    """`hamr blend --retarget RIG.blend:ARMATURE --export OUT.glb`'s steps after the import."""
    h = bake_export["headless"]
    assert h["target"].startswith("rig")
    assert {"Hand right R", "Hand left L", h["target"]} <= set(h["armatures_in_scene"])
    assert h["finger_rotated"] > 10 and h["finger_rotated_left"] > 10  # both sides retargeted
    assert h["target"] in h["exported"] and h["glb_bytes"] > 10_000
    assert "no armature named 'nothing'" in h["errors"]["character.blend:nothing"]
    assert "rig file not found" in h["errors"]["missing.blend"]


@pytest.mark.parametrize(("ext", "fingertips"), [("fbx", False), ("glb", True)])
def test_hamr_blend_retarget_export_end_to_end(
    server: str,  # noqa: F811
    sample_photo,
    bpy_env: dict[str, str],  # noqa: F811
    tmp_path,
    ext: str,
    fingertips: bool,
) -> None:
    """The real command and backend: `hamr blend PHOTO --out S.blend --retarget RIG.blend
    [--retarget-fingertips] --export OUT.fbx|.glb` with a character file holding a generated
    Rigify rig; the saved scene holds both rigs, the Rigify DEF finger bones point as the HAMR
    hand's (the issue's angle bound) or, with --retarget-fingertips, every tip lies within 0.1
    hand lengths of the HAMR hand's and the four fingers' within 0.05 (measured: 0 to 0.035, the
    thumb 0.075; the default mode leaves the pinky 0.106 and the thumb 0.115 off), and the
    export re-imports with both armatures animated."""
    rig_blend, blend = tmp_path / "character.blend", tmp_path / "scene.blend"
    out_file = tmp_path / f"scene.{ext}"
    made = run_bpy("retarget_cli.py", "rig", rig_blend, env=bpy_env)
    assert made["armatures"] == ["rig"]
    proc = hamr_blend(
        [sample_photo, "--out", blend, "--backend-url", server, "--box", BOX_TEXT]
        + ["--retarget", rig_blend, "--export", out_file]
        + (["--retarget-fingertips"] if fingertips else []),
        bpy_env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = run_bpy("retarget_cli.py", "check", blend, out_file, env=bpy_env)
    assert out["rigs"] == ["rig"] and len(out["hands"]) >= 1
    for hand in out["hands"]:
        if fingertips:
            fingers = {d: g for d, g in hand["tips"].items() if d != "thumb"}
            assert max(fingers.values()) <= 0.05 and hand["tips"]["thumb"] <= 0.1, hand
        else:
            assert hand["mean_deg"] <= 5.0 and hand["max_deg"] <= 10.0, hand
        assert hand["controls_turned_max_deg"] > 1.0, hand  # the rig's fingers were posed
    imported = out["imported"]
    assert imported["armatures"] == 1 + len(out["hands"]), imported  # the hands and the rig
    assert imported["animated"] == imported["armatures"], imported
    assert imported["rig_bones"] > 100 and imported["meshes"] >= len(out["hands"]), imported


@pytest.fixture(scope="module")
def visual(bpy_env: dict[str, str]) -> dict:  # noqa: F811
    return run_bpy("retarget_visual.py", env=bpy_env, timeout=600)


@pytest.mark.parametrize("case", ["curl_pose", "ik_pose"])
def test_retarget_reads_the_evaluated_pose(visual: dict, case: str) -> None:
    """A HAMR hand posed only through its rig (curl controls; the fingertip IK), its deform
    channels at rest: the Rigify DEF finger bones point as the HAMR hand's evaluated bones (the
    issue's angle bound; measured 0.03 degrees). Reading the channels, as before, left the
    target flat (curls: mean 93 degrees off; IK: max 26)."""
    r = visual[case]
    assert r["at_rest"] and r["moved_deg"] > 60, r  # the rig moved the fingers, not the keys
    assert r["mean_deg"] <= 5.0 and r["max_deg"] <= 10.0, r


def test_bake_follows_keyed_curl_controls(visual: dict) -> None:
    """A video take whose curl controls are keyed too (70 degrees over 40 frames) bakes onto
    Rigify following the evaluated hand at every measured frame (the code before refused the
    controls' Euler keys); the user's frame and scenes are untouched."""
    assert "bake_error" not in visual, visual.get("bake_error")
    b = visual["bake"]
    assert b["frames"] == 40 and len(b["new_actions"]) == 1, b
    assert b["scenes_same"] and b["frame_after"] == 1, b
    for frame, r in b["at"].items():
        assert r["mean_deg"] <= 5.0 and r["max_deg"] <= 10.0, (frame, r)
    # disabled in viewports, the hand is read as it shows (was stale: 1.9 off), and stays off
    assert b["hidden_diff"] < 1e-6 and b["hidden_kept"], b
