"""The Blender extension in real headless Blender (bpy 5.0), against the real backend server.

Each test runs one script of tests/blender_scripts in its own bpy subprocess (so the XDG and
BLENDER_USER_RESOURCES folders below are set before bpy starts, user preferences are never
touched, and a crash cannot take pytest down); the script prints ``HAMR_RESULT {json}`` and the
assertions live here. The backend is one `hamr serve` per session on a free port, with the
conftest checkpoint (a tiny random network of the real format).

Undo: headless bpy has no window to undo in (``bpy.ops.ed.undo.poll()`` is False in background
mode), so the single-undo-step property is checked through the operators' bl_options and the
failure tests (a failed or cancelled import leaves every data-block and scene setting as it was).
The modal (timer) path of hamr.keyframe_video needs an event loop; its parts (VideoJob, keying)
are tested here, the blocking path runs the same code.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLE_BOX, SAMPLES, free_port

# bpy is only located here, never imported: importing it would write Blender's user folders
pytestmark = [
    pytest.mark.bpy,
    pytest.mark.skipif(
        importlib.util.find_spec("bpy") is None, reason="needs Blender as a Python module (bpy)"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "blender_scripts"
BOX_TEXT = ",".join(str(v) for v in SAMPLE_BOX)


@pytest.fixture(scope="session")
def bpy_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for bpy subprocesses: fresh config, cache and user-resource folders."""
    root = tmp_path_factory.mktemp("blender_user")
    env = dict(os.environ)
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "BLENDER_USER_RESOURCES"):
        folder = root / name.lower()
        folder.mkdir()
        env[name] = str(folder)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("HAMR_TOKEN", "HAMR_CHECKPOINT", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    return env


def run_bpy(script: str, *args: object, env: dict[str, str], timeout: float = 300) -> dict:
    """Run a bpy script, return its HAMR_RESULT dict (fail with its output otherwise)."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=SCRIPTS,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("HAMR_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        pytest.fail(f"{script} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("HAMR_RESULT ") :])


def hamr_blend(
    args: list, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """`tools/hamr_blend.py ARGS` (the `hamr blend` command) in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "hamr_blend.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension built and validated by Blender's own tool (tools/package_extension.py)."""
    from tools.package_extension import build

    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def server(checkpoint: Path, bpy_env: dict[str, str]):
    """A real `hamr serve` on a free loopback port."""
    from hamr_blender.io.client import HamrClient

    port = free_port()
    log = open(Path(bpy_env["XDG_CACHE_HOME"]) / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)]
        + ["--checkpoint", str(checkpoint)],
        cwd=ROOT,
        env=bpy_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    client = HamrClient(url)
    deadline = time.monotonic() + 120
    while not client.is_ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(
                "the backend did not start:\n" + Path(log.name).read_text(errors="replace")[-3000:]
            )
        time.sleep(0.25)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


# ------------------------------------------------------------------------------ packaging
def test_extension_builds_validates_installs_and_registers(
    extension_zip: Path, bpy_env: dict[str, str]
) -> None:
    import zipfile

    names = zipfile.ZipFile(extension_zip).namelist()
    assert {"blender_manifest.toml", "__init__.py", "blender/rig.py", "io/client.py"} <= set(names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    out = run_bpy("install_check.py", extension_zip, env=bpy_env)
    assert out["enabled"] and all(out["operators"].values()), out["operators"]
    assert out["panel_category"] == "HAMR" and out["panel_space"] == "VIEW_3D"
    assert "HAMR_PT_main" in out["panels"]
    assert out["prefs"]["backend_url"] == "http://127.0.0.1:8734"
    assert out["prefs"]["start_command"] == "hamr serve"
    assert out["scene_settings"] == "auto" and out["armature_hand"]
    assert not out["object_betas"]  # the shape lives on HAMR armatures, not on every Object
    assert out["user_dir"].startswith(bpy_env["BLENDER_USER_RESOURCES"])
    assert not out["torch_imported"] and not out["backend_imported"]
    assert set(out["drawn_operators"]) == {
        "hamr.check_backend", "hamr.start_backend", "hamr.import_image",
        "hamr.import_result", "hamr.keyframe_video", "hamr.align_camera",
        "hamr.retarget", "hamr.bone_map_fill", "hamr.bone_map_load", "hamr.bone_map_save",
    }  # fmt: skip
    assert out["drawn_props"] >= 10
    # the Active Hand panel describes the hand's stored prediction
    assert "Fitted to landmarks: 12.0 -> 3.0 px" in out["drawn_labels"]
    assert {"backend_url", "token", "start_command", "python_path"} <= set(out["prefs_drawn"])
    assert not any(out["after_disable"].values()), out["after_disable"]


# ------------------------------------------------------------------------------ rig exactness
def test_rig_equals_hand_model_both_sides_with_correctives(bpy_env: dict[str, str]) -> None:
    out = run_bpy("rig_exactness.py", 7, env=bpy_env)
    for side, r in out["sides"].items():
        assert max(r["max_err_m"]) < 1e-4, (side, r["max_err_m"])
        assert r["max_err_after_set_betas_m"] < 1e-4, side
        assert r["corrective_size_m"] > 1e-3  # the injected correctives really move vertices
        assert r["bones"] == 21 + 20 and r["deform_bones"] == 16  # + IK, poles, curl controls
        s = "R" if side == "right" else "L"
        assert r["vertex_groups"] == [
            f"{j}.{s}" for j in ("wrist", "index1", "index2", "index3", "middle1", "middle2",
            "middle3", "pinky1", "pinky2", "pinky3", "ring1", "ring2", "ring3", "thumb1",
            "thumb2", "thumb3")
        ]  # fmt: skip
        assert {f"{d}4.{s}" for d in ("thumb", "index", "middle", "ring", "pinky")} <= set(
            r["bone_names"]
        )
        assert r["beta_keys"] == [f"beta_{i:02d}" for i in range(10)]
        assert r["shape_keys"] == 1 + 10 + 135 and r["drivers"] == 135
        assert r["driver_errors"] == 0 and r["simple_expressions"]
        assert r["modifiers"] == ["ARMATURE"] and r["materials"] >= 1
    opts = out["options"]
    assert all(o["max_err_m"] < 1e-4 for o in opts.values()), opts
    assert opts["auto"]["shape_keys"] == 11 and "no pose correctives" in opts["auto"]["notes"][0]
    assert opts["off"]["shape_keys"] == 11 and opts["baked"]["shape_keys"] == 0
    assert out["build_s"]["auto"] < 2.0 and out["build_s"]["correctives_on"] < 3.0
    assert out["leftover_timing_objects"] == []


def test_camera_alignment_video_keying_and_failure_safety(bpy_env: dict[str, str]) -> None:
    out = run_bpy("camera_video.py", 3, env=bpy_env)
    cam = out["camera"]
    assert cam["hands"] == 2 and max(cam["max_px_err"]) < 0.5, cam["max_px_err"]
    assert cam["first_hand_at_cursor"] < 1e-6 and cam["camera_follows_hand"] < 1e-5
    # the scene's render size is kept (issue #22: it became the photo's); the camera fits the
    # photo into it, and the joints still land on keypoints2d (max_px_err above)
    assert cam["resolution"] == [1920, 1080] and cam["type"] == "PERSP"
    res = out["set_resolution"]  # Set Resolution: the photo's size, the old one restorable
    assert res["set"] == [334, 512] and res["stored"] == res["before"] == [1920, 1080, 100]
    assert res["px_err"] < 0.5 and res["restored"] and res["after_restore"] == res["before"]
    assert cam["sensor_fit"] == "HORIZONTAL" and cam["show_background"]
    assert cam["background"][0].endswith("photo.png") and cam["stored_prediction"] == "left"
    vid = out["video"]
    assert vid["raw_min_consecutive_dot"] < 0  # the track does flip sign without the fix
    assert vid["min_consecutive_dot"] > 0.9 and vid["max_overshoot_rad"] < 1e-3
    assert vid["key_counts"] == [vid["expected_frames"]] and vid["fcurves"] == 3 + 16 * 4
    assert np.allclose(vid["first_last_key"], vid["expected_first_last"], atol=1e-4)
    assert vid["expected_first_last"] == [1.0, 1.0 + 44 * 0.8] and vid["frame_end"] == 37
    assert vid["min_first_w"] >= 0.0
    assert vid["mesh_err_at_frame_m"] < 1e-4
    fail = out["failure"]
    assert "injected" in fail["error"] and fail["created_before_error"] > 0 and fail["unchanged"]


# ------------------------------------------------------------------------------ with the server
def sideways_photo(photo: Path, folder: Path, suffix: str = ".jpg") -> Path:
    """The photo stored turned a quarter counter-clockwise, with EXIF orientation 6 (turn it a
    quarter clockwise to show it), as a phone stores a portrait photo: upright, it is `photo`
    (exactly so as a PNG, whose eXIf chunk carries the tag)."""
    from PIL import Image

    pixels = np.asarray(Image.open(photo).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = folder / f"sideways{suffix}"
    Image.fromarray(np.rot90(pixels, 1).copy()).save(path, quality=95, exif=exif)
    return path


def heic_photo(photo: Path, folder: Path) -> Path:
    """The photo saved as HEIC (pillow-heif, which make setup installs)."""
    from PIL import Image

    pillow_heif = pytest.importorskip("pillow_heif", reason="make setup installs pillow-heif")
    pillow_heif.register_heif_opener()
    path = folder / "photo.heic"
    Image.open(photo).convert("RGB").save(path, format="HEIF", quality=95)
    return path


def test_import_image_through_server(
    extension_zip: Path,
    server: str,
    sample_photo: Path,
    bpy_env: dict[str, str],
    tmp_path: Path,
) -> None:
    out = run_bpy(
        "import_server.py",
        extension_zip,
        server,
        sample_photo,
        BOX_TEXT,
        sideways_photo(sample_photo, tmp_path),
        heic_photo(sample_photo, tmp_path),
        env=bpy_env,
    )
    assert out["check"] == ["FINISHED"] and out["result"] == ["FINISHED"]
    assert out["bl_options"] == ["REGISTER", "UNDO"]
    assert "HAMR Camera" in out["new_objects"]
    for hand in out["hands"] + out["packed_hands"] + [out["align_check"]]:
        assert hand["mesh_err_m"] < 1e-4, hand
        assert hand["px_err"] < 0.5, hand  # on the photo as the camera's background fits it
        assert hand["resolution"] == [1920, 1080]  # the scene's, kept
        K, (w, h) = np.array(hand["K"]), hand["image"]
        scale = min(1920 / w, 1080 / h)  # the photo fitted into the 1920 x 1080 frame
        assert np.isclose(hand["lens"], scale * K[0, 0] * 36.0 / 1920, rtol=1e-5)
    assert out["hands"] and out["packed_hands"] and out["packed_result"] == ["FINISHED"]
    assert out["camera_background"] and out["align"] == ["FINISHED"]
    # the shape slider moves the joints with the shape keys (the hand stays exact)
    assert out["betas_check"]["mesh_err_m"] < 1e-4 and out["betas_check"]["px_err"] > 0.5
    assert out["generated_result"] == ["FINISHED"]
    assert "image file not found" in out["missing_error"] and out["missing_unchanged"]
    # the sideways photo: hands and camera as for the upright one, the upright photo behind them
    assert out["sideways_result"] == ["FINISHED"] and len(out["sideways_hands"]) == 1
    for hand in out["sideways_hands"]:
        assert hand["mesh_err_m"] < 1e-4 and hand["px_err"] < 0.5, hand
        assert hand["image"] == out["sideways_upright_size"]
    background = out["sideways_background"]
    assert background["size"] == out["sideways_upright_size"] and background["packed"]
    assert background["mean_abs_diff"] < 0.01, background  # JPEG decoders differ slightly
    assert out["sideways_align"] == ["FINISHED"]
    assert len(out["sideways_new_images"]) == 1  # one upright copy, reused by the new align
    # the HEIC photo: the backend's decoding behind the camera
    assert out["heic_result"] == ["FINISHED"] and len(out["heic_hands"]) == 1
    for hand in out["heic_hands"]:
        assert hand["mesh_err_m"] < 1e-4 and hand["px_err"] < 0.5, hand
        assert hand["image"] == out["heic_photo_size"]
    background = out["heic_background"]
    assert background["size"] == out["heic_photo_size"] and background["packed"]
    assert background["mean_abs_diff"] < 0.02, background  # HEIC is lossy


def test_backend_down_then_started_and_stopped_from_blender(
    extension_zip: Path,
    checkpoint: Path,
    sample_photo: Path,
    hand_video,
    bpy_env: dict[str, str],
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    free = f"http://127.0.0.1:{free_port()}"
    out = run_bpy(
        "backend_ops.py",
        extension_zip,
        closed,
        free,
        sample_photo,
        hand_video.path,
        checkpoint,
        env=bpy_env,
    )
    for op in ("check", "import", "video"):
        assert out[op]["result"] == ["CANCELLED"], out[op]
        assert "Cannot reach the HAMR backend" in out[op]["error"] and closed in out[op]["error"]
    assert out["stop_nothing"]["result"] == ["CANCELLED"]
    assert "was not found" in out["start_missing"]["error"]
    assert out["unchanged"]
    assert out["start"]["result"] == ["FINISHED"], out["start"]
    assert out["running"] and out["check_up"]["result"] == ["FINISHED"]
    assert out["stop"]["result"] == ["FINISHED"] and out["exit_code"] is not None
    assert not out["running_after"]


def test_keyframe_video_through_server_and_cancel(
    extension_zip: Path, server: str, hand_video, bpy_env: dict[str, str]
) -> None:
    out = run_bpy("video_server.py", extension_zip, server, hand_video.path, env=bpy_env)
    assert out["result"] == ["FINISHED"] and out["checks"], out
    assert len(out["checks"]) == len(out["tracks"])
    for check in out["checks"]:
        assert check["key_counts"] == [check["frames"]] and check["frames"] >= 2
        assert check["fcurves"] == 3 + 16 * 4 and check["first_key"] == 1.0
        assert check["min_dot"] >= 0.0
        assert check["mesh_err_m"] < 1e-5, check  # measured 1.4e-7 m: float32 in Blender
    assert out["camera"] == "HAMR Camera" and out["clip_background"] == ["MOVIE_CLIP"]
    assert any(n.endswith("Video Origin") for n in out["new_objects"])
    assert out["job2_state"] == "cancelled" and out["backend_job_state"] == "cancelled"
    assert out["unchanged_after_cancel"]


def test_hamr_blend_headless_scene_and_render(
    server: str, sample_photo: Path, bpy_env: dict[str, str], tmp_path: Path
) -> None:
    """The photo stored sideways with an EXIF orientation (as phones store portraits), and as a
    HEIC (which Blender cannot read): each render lies over the upright photo."""
    from PIL import Image

    photo = np.asarray(Image.open(sample_photo).convert("RGB"), dtype=np.int16)
    # the PNG keeps the pixels exactly; HEIC is lossy
    for source, close in (
        (sideways_photo(sample_photo, tmp_path, ".png"), 3),
        (heic_photo(sample_photo, tmp_path), 12),
    ):
        blend, png = tmp_path / f"{source.stem}.blend", tmp_path / f"{source.stem}.png"
        proc = hamr_blend(
            [source, "--out", blend, "--render", png, "--backend-url", server]
            + ["--box", BOX_TEXT, "--samples", "8"],
            bpy_env,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert blend.stat().st_size > 0 and "wrote" in proc.stdout
        render = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
        assert render.shape == photo.shape, source.name
        diff = np.abs(render - photo).max(axis=-1)
        assert (diff > 30).mean() > 0.005, source.name  # the hand is drawn...
        assert (diff <= close).mean() > 0.5, source.name  # ...over the photo, seen elsewhere
        out = run_bpy("check_blend.py", blend, env=bpy_env)
        assert out["hands"] == 1 and out["camera_background"] and out["scene_camera"]
        assert out["shape_keys"] >= 11


def test_hamr_blend_finds_the_hands_of_a_photo_without_a_box(
    server: str, bpy_env: dict[str, str], tmp_path: Path
) -> None:
    """No box: the backend's MediaPipe detector finds both hands of a real photo, and the scene
    gets one rigged hand for each."""
    from backend.detect import mediapipe_hands

    photo = SAMPLES / "wild_hamer" / "test5.jpg"
    if not photo.is_file() or not mediapipe_hands.available():
        pytest.skip("needs ../shared/samples and mediapipe")
    blend = tmp_path / "scene.blend"
    proc = hamr_blend(
        [photo, "--out", blend, "--backend-url", server, "--detector", "mediapipe"], bpy_env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = run_bpy("check_blend.py", blend, env=bpy_env)
    assert out["hands"] == 2 and out["scene_camera"]


def test_hamr_blend_reports_errors(bpy_env: dict[str, str], tmp_path: Path) -> None:
    proc = hamr_blend(
        [
            tmp_path / "none.jpg",
            "--out",
            tmp_path / "x.blend",
            "--backend-url",
            "http://127.0.0.1:1",
        ],
        bpy_env,
        timeout=120,
    )
    assert proc.returncode == 2 and "hamr blend: error: image not found" in proc.stderr
    assert not (tmp_path / "x.blend").exists()


# ------------------------------------------------------------------------------ issue #22 bugs
def test_extension_bugs_reported_cleanly(
    extension_zip: Path, sample_photo: Path, bpy_env: dict[str, str], tmp_path: Path
) -> None:
    import shutil

    photo_as_mp4 = tmp_path / "clip.mp4"  # the photo named as a clip
    shutil.copy(sample_photo, photo_as_mp4)
    out = run_bpy(
        "extension_bugs.py",
        extension_zip,
        sideways_photo(sample_photo, tmp_path),
        photo_as_mp4,
        env=bpy_env,
    )
    for op, res in out["space"].items():  # was an uncaught http.client.InvalidURL
        assert res["result"] == ["CANCELLED"], (op, res)
        assert "must not contain spaces" in res["error"] and "Traceback" not in res["error"]
    assert out["online_access"] is False and out["online_access_on"] is True
    for op, res in out["offline"].items():  # refused before any connection is tried
        assert res["result"] == ["CANCELLED"] and "online access is off" in res["error"], op
        assert res["seconds"] < 1.0, (op, res)
    assert "Cannot reach the HAMR backend" in out["online"]["check"]["error"]
    assert "is a JPEG photo, not a video" in out["video_jpg"]["error"]
    assert "clip.mp4 is a JPEG photo, not a video" in out["video_photo_as_mp4"]["error"]
    assert out["unchanged"]


def test_not_an_image_message_names_the_file(server: str) -> None:
    """The backend's 400 for bytes that are no image quoted Python's repr of its in-memory
    stream (<_io.BytesIO object at 0x...>); the client names the file instead."""
    from hamr_blender.io.client import BackendError, HamrClient

    with pytest.raises(BackendError) as info:
        HamrClient(server).predict(b"these are my notes, not a photo", filename="notes.jpg")
    msg = str(info.value)
    assert info.value.status == 400 and "'notes.jpg'" in msg, msg
    assert "object at 0x" not in msg and "BytesIO" not in msg, msg


@pytest.mark.parametrize(("clip_fps", "scene_fps"), [(30.0, 24.0), (24.0, 30.0)])
def test_keyframe_video_maps_the_clip_rate_onto_the_scene(
    extension_zip: Path,
    server: str,
    bpy_env: dict[str, str],
    tmp_path: Path,
    clip_fps: float,
    scene_fps: float,
) -> None:
    """Issue #22: a 30 fps clip in a 24 fps scene had its keys squeezed (video frames dropped,
    the last one winning) while the clip played a frame per scene frame, and the frame range
    stayed at 250. Every video frame is now keyed at its time and the clip shows, at each
    scene frame, the video frame keyed nearest it."""
    from tests.conftest import render_hand_frames, write_clip

    frames, _ = render_hand_frames(num_frames=10, size=192)
    clip = write_clip(tmp_path / f"hand{clip_fps:g}.mp4", frames, clip_fps)
    out = run_bpy("video_timing.py", extension_zip, server, clip, scene_fps, env=bpy_env)
    assert out["result"] == ["FINISHED"] and out["checks"], out
    assert out["video_fps"] == pytest.approx(clip_fps)
    ratio = scene_fps / clip_fps
    for check in out["checks"]:
        n = check["video_frames"]
        assert check["keys"] == n == 10 and check["key_counts"] == [n]  # none dropped or doubled
        assert check["max_time_err_frames"] < 1e-3  # within half a scene frame: exactly there
        assert check["last_key"] == pytest.approx(1 + 9 * ratio, abs=1e-4)
        assert out["frame_range"] == [1, math.ceil(1 + 9 * ratio - 1e-6)]
        assert check["mesh_err_m"] < 1e-5, check
        assert check["min_first_w"] >= 0.0 and check["min_dot"] >= 0.0
        assert check["clip_all_nearest"], json.dumps(check)
        # by hand: the clip frame nearest each scene frame's time
        last = out["frame_range"][1]
        expected = [min(math.floor((f - 1) / ratio + 0.5), 9) for f in range(1, last + 1)]
        assert check["clip_shown"] == expected
    assert f"HAMR {clip.name}" in out["collections"]  # the take's own collection
    assert out["euler_result"] == ["FINISHED"] and out["euler"]["modes"] == ["XYZ"]
    assert "rotation_euler" in out["euler"]["paths"]
    assert "rotation_quaternion" not in out["euler"]["paths"]
    assert out["euler"]["mesh_err_m"] < 1e-5
    assert out["clip_fps"]["scene_rate"] == pytest.approx(clip_fps)
    assert np.allclose(out["clip_fps"]["keys"], np.arange(1, 11), atol=1e-4)
    assert out["clip_fps"]["frame_end"] == 10


def test_hamr_blend_keys_a_clip_headless(
    server: str, bpy_env: dict[str, str], tmp_path: Path
) -> None:
    """`hamr blend VIDEO` keys a clip as hamr.keyframe_video does, in a scene at Blender's
    default 24 fps (or --scene-fps): a 30 fps clip's 10 frames keyed at 1 + 0.8 i."""
    from tests.conftest import render_hand_frames, write_clip

    frames, _ = render_hand_frames(num_frames=10, size=192)
    clip = write_clip(tmp_path / "hand30.mp4", frames, 30.0)
    for extra, fps, last in (([], 24.0, 1 + 9 * 0.8), (["--scene-fps", "30"], 30.0, 10.0)):
        blend = tmp_path / f"clip{fps:g}.blend"
        proc = hamr_blend([clip, "--out", blend, "--backend-url", server, *extra], bpy_env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        out = run_bpy("check_blend.py", blend, env=bpy_env)
        assert out["hands"] >= 1 and out["camera_background"] and out["fps"] == fps
        assert out["key_frames"][0] == pytest.approx(1.0) and len(out["key_frames"]) == 10
        assert out["key_frames"][-1] == pytest.approx(last, abs=1e-4)
        assert out["frame_range"] == [1, math.ceil(last - 1e-6)]
        assert out["clip_driver"] == (fps != 30.0)
    proc = hamr_blend(
        [clip, "--out", tmp_path / "x.blend", "--backend-url", server, "--scene-fps", "zero"],
        bpy_env,
    )
    assert proc.returncode == 2 and "--scene-fps must be a frame rate" in proc.stderr


def test_photo_take_confidence_action_collection_and_gltf(bpy_env: dict[str, str]) -> None:
    """Issue #22: false detections (the network detector's ~0.1 boxes) were built as rigs; a
    photo import made no action, so glTF export with default options wrote the flat rest
    hand; objects landed in the active collection."""
    out = run_bpy("photo_take.py", 5, env=bpy_env)
    low, none = out["errors"]
    assert low.startswith("no hand found: 2 candidates scored under the Min Score 0.15")
    assert "pass the hand's box" in low and "another side" not in low
    assert none.startswith("no hand found in the image: pass the hand's box")
    assert out["unchanged_after_errors"] and out["given_box_low_score"] == 1
    assert out["built"] == 1 and any("under the Min Score" in n for n in out["notes"])
    assert out["stored"] == {
        "score": 0.6,
        "signals": "mediapipe_2d, network",
        "network_weight": 0.25,
    }
    assert len(out["collections"]) == 1  # its own, the second take of this photo:
    assert out["collections"][0] == "HAMR trumpet.jpg.001"
    assert out["action"]["fcurves"] == 16 * 4 and out["action"]["key_frames"] == [1.0]
    assert out["action"]["min_first_w"] >= 0.0 and out["action"]["bones_w"] >= 0.0
    assert out["blender_err_m"] < 1e-5
    assert out["export"] == ["FINISHED"] and out["import"] == ["FINISHED"]
    # the photo's pose (1.2 mm measured: glTF keeps 4 joint influences per vertex by default,
    # MANO's skin has more)...
    assert out["gltf"]["pose_err_m"] < 3e-3, out["gltf"]
    assert out["gltf"]["rest_err_m"] > 3e-2, out["gltf"]  # ...not the flat rest hand (9 cm)


def test_a_saved_result_builds_what_its_import_builds(
    extension_zip: Path, server: str, bpy_env: dict[str, str], tmp_path: Path, sample_photo: Path
) -> None:
    """Issue #22: a result saved with `hamr predict --json` could not be loaded. It now builds the
    same hands as importing its photo (evaluated vertices), a `hamr video --json` result keys its
    tracks, and a JSON file that is no result is refused with the scene unchanged."""
    from hamr_blender.io.client import HamrClient

    client = HamrClient(server)
    prediction = client.predict(sample_photo, side="right", refine=True)
    saved = tmp_path / "photo.json"
    saved.write_text(json.dumps(prediction))
    from conftest import render_hand_frames, write_clip

    frames, _ = render_hand_frames()
    clip = write_clip(tmp_path / "clip.mp4", frames[:4])
    job = client.submit_video(clip, side="right")
    for _ in range(600):
        if client.job(job)["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    video = client.job_result(job)
    saved_video = tmp_path / "clip.json"
    saved_video.write_text(json.dumps(video))
    junk = tmp_path / "notes.json"
    junk.write_text(json.dumps({"schema": "something/1", "hands": []}))
    other = tmp_path / "other.json"  # another photo's hand, for Apply to Active Hand
    webcam = ROOT / "backend" / "assets" / "samples" / "webcam_hand.jpg"
    other.write_text(json.dumps(client.predict(webcam, side="right", refine=True)))
    out = run_bpy(
        "saved_result.py", extension_zip, server, sample_photo, saved, saved_video, junk, other,
        env=bpy_env,
    )  # fmt: skip
    assert out["photo_result"] == ["FINISHED"] and out["photo_hands"][0] == out["photo_hands"][1]
    assert out["photo_hands"][0] >= 1
    assert out["photo_max_diff_m"] < 1e-6, out
    assert out["video_result"] == ["FINISHED"] and out["video_rigs"] >= 1 and out["video_keyed"]
    assert out["junk"][0] == "CANCELLED" and out["junk_unchanged"], out
    # Apply to Active Hand: keyed onto the existing hand at frame 10, nothing new built, frame 1
    # as it was, the pose there the one a new hand gets, the short way round from frame 1
    assert out["apply_result"] == ["FINISHED"] and out["apply_new_objects"] == 0, out
    assert out["apply_frame1_kept"] < 1e-6 and out["apply_max_rotation_diff"] < 1e-5, out
    assert out["apply_min_dot_1_to_10"] >= 0, out


def test_redo_of_build_options_asks_the_backend_nothing(
    extension_zip: Path, server: str, bpy_env: dict[str, str], sample_photo: Path
) -> None:
    """Issue #22: every change in the redo panel ran the prediction again. A photo and options
    the backend answered are now built again without asking it (counted in the server's access
    log), while an option that changes the prediction (the side) asks it."""
    log = Path(bpy_env["XDG_CACHE_HOME"]) / "server.log"

    def predictions() -> int:
        return log.read_text(errors="replace").count("POST /v1/predict")

    before = predictions()
    out = run_bpy("photo_redo.py", extension_zip, server, sample_photo, env=bpy_env)
    assert out["first"] == out["rebuilt"] == out["other_side"] == ["FINISHED"], out
    assert out["after_rebuilt"] == 2 * out["after_first"] >= 2, out
    assert predictions() - before == 2  # the first import and the other side, not the rebuild


def test_hamr_blend_renders_a_frame_of_a_clip_over_the_clip(
    server: str, bpy_env: dict[str, str], tmp_path: Path
) -> None:
    """`hamr blend VIDEO --render-frame F OUT.png` (issue #22, item 8): scene frame 5 of a
    30 fps clip keyed in a 24 fps scene is drawn over the clip's video frame 5, the one whose
    time is nearest (4 / 24 s -> frame round(4 * 30 / 24) = 5; one clip frame per scene frame
    would show 4): of the clip's frames, 5 matches the render's background best."""
    from PIL import Image

    from tests.conftest import render_hand_frames, write_clip

    frames, _ = render_hand_frames(num_frames=10, size=192)
    clip = write_clip(tmp_path / "hand30.mp4", frames, 30.0)
    png = tmp_path / "frame5.png"
    proc = hamr_blend(
        [clip, "--out", tmp_path / "clip.blend", "--backend-url", server]
        + ["--render-frame", 5, png, "--samples", 4],
        bpy_env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    render = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert render.shape == frames[0].shape
    match = [float((np.abs(render - f.astype(np.int16)).max(axis=-1) <= 12).mean()) for f in frames]
    assert int(np.argmax(match)) == 5, match
    assert match[5] > 0.5 and match[5] < 0.995, match  # the clip there, the hand drawn over it
    # errors: a frame outside the take, a photo
    for extra, message in (
        ([clip, "--render-frame", 99, png], "outside the take's frames"),
        ([SAMPLES / "wild_hamer" / "test5.jpg", "--render-frame", 1, png], "for a photo use"),
    ):
        proc = hamr_blend([*extra, "--out", tmp_path / "x.blend", "--backend-url", server], bpy_env)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_photo_task_cancel_leaves_the_scene_unchanged_and_stops_the_backend(
    server: str, bpy_env: dict[str, str], sample_photo: Path, tmp_path: Path
) -> None:
    """Issue #22 (never block): the photo import's worker, window-free (`importer.PhotoTask`,
    what hamr.import_image's timer and Esc drive), against the real backend. Cancelled at once
    or mid-request, poll() driven to the worker's end answers PhotoCancelled and the scene's
    state is exactly as before; the cancel shuts the request's connection, so the worker ends at
    once and the backend stops (the request is never answered, the model is free at once for
    the next one); not cancelled, it builds what the synchronous import builds."""
    from PIL import Image

    big = tmp_path / "big.jpg"  # 4008 x 6144: about 2 s of work with the network detector
    with Image.open(sample_photo) as im:
        im.resize((im.width * 12, im.height * 12)).save(big, quality=90)
    log = Path(bpy_env["XDG_CACHE_HOME"]) / "server.log"
    out = run_bpy("photo_cancel.py", server, sample_photo, BOX_TEXT, big, log, env=bpy_env)
    now = out["at_once"]
    assert now["outcome"] == "PhotoCancelled" and "cancelled" in now["message"], now
    assert now["unchanged"] and not now["cached"], now
    mid = out["mid"]
    assert mid["running_at_cancel"] and mid["outcome"] == "PhotoCancelled", mid
    assert mid["unchanged"], mid
    # without the connection shut, the worker waited for the answer (measured 1.6 s of 1.9)
    assert mid["ended_after_cancel_s"] < 0.25 * mid["full_s"], mid
    assert mid["logged_new"] == 1, mid  # the next request's answer only, not the cancelled one
    assert mid["next_request_s"] < 0.5 * mid["full_s"], mid
    done = out["complete"]
    assert done["hands"] == done["sync_hands"] == 1 and done["objects_same"], done
    assert done["max_vertex_diff_m"] < 1e-9 and done["sync_asked_backend"] == 1, done
