"""Restore Resolution (issue #22's follow-up): the installed extension's
`hamr.restore_resolution` puts back the render size that Align Camera's Set Resolution
replaced. tests/blender_scripts/restore_resolution.py runs it in headless bpy; the assertions
live here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.test_blender import bpy_env, extension_zip, run_bpy  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.bpy,
    pytest.mark.skipif(
        importlib.util.find_spec("bpy") is None, reason="needs Blender as a Python module (bpy)"
    ),
]
SCENE_SIZE = [1920, 1080, 50]  # what the script sets before aligning: width, height, percent


@pytest.fixture(scope="module")
def out(extension_zip: Path, bpy_env: dict[str, str]) -> dict:  # noqa: F811
    return run_bpy("restore_resolution.py", extension_zip, env=bpy_env)


def test_align_with_set_resolution_then_restore_gives_the_old_size_back(out: dict) -> None:
    align = out["align"]
    assert align["result"] == ["FINISHED"]
    assert align["size"] == [334, 512, 100]  # the photo's size, at 100 %
    assert align["stored"] == SCENE_SIZE
    restore = out["restore"]
    assert restore["result"] == ["FINISHED"] and restore["error"] is None
    assert restore["size"] == SCENE_SIZE and restore["stored"] is None  # restored, forgotten
    assert "restored to 1920 x 1080 (50 %)" in restore["printed"]


@pytest.mark.parametrize("when", ["none_before", "again"])
def test_without_a_stored_size_it_is_a_no_op_that_says_so(out: dict, when: str) -> None:
    r = out[when]
    assert r["result"] == ["CANCELLED"] and r["error"] is None  # a warning, not an error
    assert r["size"] == SCENE_SIZE and r["stored"] is None
    assert "no render size to restore" in r["printed"] and "nothing was changed" in r["printed"]


def test_a_stored_value_that_is_no_size_is_refused_by_name(out: dict) -> None:
    r = out["bad"]
    assert r["result"] == ["CANCELLED"]
    assert "hamr_previous_resolution is not a render size" in r["error"] and "'big'" in r["error"]
    assert r["size"] == SCENE_SIZE and r["stored"] == "big"  # the scene unchanged


def test_the_panel_shows_the_button_only_when_there_is_a_size_to_restore(out: dict) -> None:
    assert out["panel_before"] == ["hamr.align_camera"]
    assert out["panel_aligned"] == ["hamr.align_camera", "hamr.restore_resolution"]
    assert out["panel_restored"] == ["hamr.align_camera"]
