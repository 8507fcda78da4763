"""The `hamr` command line: predict, video and serve's checks, run through `backend.cli.main` (and
twice as a real subprocess, for exit codes and the absence of tracebacks).

References: the pinhole projection (camera identity), the mirror-image geometry of a left hand
(axis-angle (x, -y, -z), camera x -> -x, pixels u -> W - u), the annotated box of the sample.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import check_prediction
from PIL import Image

from backend.cli import main

ROOT = Path(__file__).resolve().parents[1]


def box_arg(box: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in box)


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """main(args) in-process -> (exit code, stdout, stderr); argparse's exits included."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_box_json_overlay(sample_photo, sample_box, checkpoint, tmp_path, capsys) -> None:
    out_json, out_png = tmp_path / "pred.json", tmp_path / "overlay.png"
    box = box_arg(sample_box)
    args = ["predict", sample_photo, "--box", box, "--side", "left", "--checkpoint", checkpoint]
    code, out, err = run_cli([*args, "--json", out_json, "--overlay", out_png], capsys)
    assert code == 0, err
    assert out == ""  # the JSON went to the file
    pred = json.loads(out_json.read_text())
    width, height = Image.open(sample_photo).size
    check_prediction(pred, width, height, hands=1)
    assert pred["hands"][0]["side"] == "left"
    assert pred["hands"][0]["box_xyxy"] == pytest.approx(sample_box, abs=0.01)
    with Image.open(out_png) as im:
        assert im.size == (width, height)
        drawn = np.asarray(im.convert("RGB"), dtype=int)
    photo = np.asarray(Image.open(sample_photo).convert("RGB"), dtype=int)
    assert np.abs(drawn - photo).max() > 50  # something was drawn


def test_predict_prints_json_and_uses_focal(sample_photo, sample_box, checkpoint, capsys) -> None:
    code, out, err = run_cli(
        [
            "predict",
            sample_photo,
            "--box",
            box_arg(sample_box),
            "--box",
            "150,300,300,450",
            "--focal",
            "900",
        ]
        + ["--checkpoint", checkpoint],
        capsys,
    )
    assert code == 0, err
    pred = json.loads(out)
    width, height = Image.open(sample_photo).size
    check_prediction(pred, width, height, hands=2)
    K = pred["hands"][0]["camera"]["K"]
    assert K == [[900.0, 0.0, width / 2], [0.0, 900.0, height / 2], [0.0, 0.0, 1.0]]


def test_left_and_right_are_mirror_images(
    sample_photo, sample_box, checkpoint, tmp_path, capsys
) -> None:
    """The photo with --side left and its mirror image with --side right: one hand, mirrored."""
    photo = Image.open(sample_photo).convert("RGB")
    width = photo.width
    mirrored = tmp_path / "mirrored.png"
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    x0, y0, x1, y1 = sample_box
    mirrored_box = f"{width - x1:g},{y0:g},{width - x0:g},{y1:g}"
    results = []
    for image, box, side in (
        (sample_photo, box_arg(sample_box), "left"),
        (mirrored, mirrored_box, "right"),
    ):
        code, out, err = run_cli(
            # the network's own mirroring: MediaPipe's landmarks of a photo and of its mirror
            # image are not mirror images of each other (tests/test_fusion.py mirrors the fusion)
            [
                "predict",
                image,
                "--box",
                box,
                "--side",
                side,
                "--checkpoint",
                checkpoint,
                "--refine",
                "off",
            ],
            capsys,
        )
        assert code == 0, err
        results.append(json.loads(out)["hands"][0])
    left, right = results
    assert (left["side"], right["side"]) == ("left", "right")
    np.testing.assert_allclose(
        np.asarray(left["pose_axis_angle"]) * [1, -1, -1], right["pose_axis_angle"], atol=1e-4
    )
    np.testing.assert_allclose(left["betas"], right["betas"], atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(left["joints3d_cam"]) * [-1, 1, 1], right["joints3d_cam"], atol=1e-4
    )
    uv_left = np.asarray(left["keypoints2d"])
    np.testing.assert_allclose(
        np.stack([width - uv_left[:, 0], uv_left[:, 1]], 1), right["keypoints2d"], atol=0.05
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "1,2,3"], "four numbers"),
        (["--box", "10,10,5,50"], "empty"),
        (["--box", "1000,1000,1100,1100"], "outside"),
        (["--side", "up"], "invalid choice"),
        (["--focal", "-5"], "positive"),
        (["--focal", "abc"], "number"),
        (["--checkpoint", "/nonexistent/model.safetensors"], "checkpoint not found"),
    ],
)
def test_predict_bad_options_exit_2(
    sample_photo, sample_box, checkpoint, capsys, extra, message
) -> None:
    args = ["predict", sample_photo, "--checkpoint", checkpoint, "--box", box_arg(sample_box)]
    code, out, err = run_cli([*args, *extra], capsys)
    assert code == 2
    assert err.startswith("hamr: error:") and message in err and err.count("\n") == 1
    assert out == ""


def test_bad_files_exit_2(checkpoint, hand_video, tmp_path, capsys) -> None:
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    not_video = tmp_path / "clip.mp4"
    not_video.write_bytes(b"\x00" * 1000)
    cases = [
        (["predict", tmp_path / "missing.jpg"], "image not found"),
        (["predict", not_image], "cannot read the image"),
        (["predict", truncated], "cannot read the image"),
        (["video", tmp_path / "missing.mp4"], "video not found"),
        (["video", not_video], "cannot decode the video"),
        (["video", hand_video.path, "--smoothing", "3"], "smoothing"),
        (["serve", "--host", "0.0.0.0"], "without --token"),
    ]
    for args, message in cases:
        code, out, err = run_cli([*args, "--checkpoint", checkpoint], capsys)
        assert code == 2, args
        assert err.startswith("hamr: error:") and message in err, (args, err)


def test_subprocess_errors_have_no_traceback(tmp_path, xdg_env) -> None:
    for args in (["predict", tmp_path / "missing.jpg"], ["predict", "x.jpg", "--box", "a,b"]):
        proc = subprocess.run(
            [sys.executable, "-m", "backend.cli", *map(str, args)],
            cwd=ROOT,
            env=xdg_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith("hamr: error:") and "Traceback" not in proc.stderr


def test_video_command(hand_video, checkpoint, tmp_path, capsys) -> None:
    out_json, out_mp4 = tmp_path / "video.json", tmp_path / "overlay.mp4"
    box = ",".join(f"{v:.1f}" for v in hand_video.boxes[0])
    code, out, err = run_cli(
        ["video", hand_video.path, "--box", box, "--side", "right", "--smoothing", "0.3"]
        + ["--json", out_json, "--overlay-video", out_mp4, "--checkpoint", checkpoint],
        capsys,
    )
    assert code == 0, err
    assert "hands" in err and "overlay" in err  # the progress bars, on stderr
    result = json.loads(out_json.read_text())
    assert result["schema"] == "hamr.video/1"
    assert len(result["frames"]) == hand_video.num_frames
    for frame in result["frames"]:
        for hand in frame["hands"]:
            assert hand["side"] == "right" and isinstance(hand["track"], int)
    import cv2

    cap = cv2.VideoCapture(str(out_mp4))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == hand_video.num_frames
    cap.release()


def test_blend_hands_over_to_the_headless_import(tmp_path, capsys) -> None:
    pytest.importorskip("bpy")
    code, out, err = run_cli(
        ["blend", tmp_path / "none.jpg", "--out", tmp_path / "x.blend"], capsys
    )
    assert code == 2 and "hamr blend: error: image not found" in err
    assert not (tmp_path / "x.blend").exists()


def test_a_file_that_is_no_picture_is_named_as_such(tmp_path, capsys) -> None:
    """Pillow's own message names its buffer (<_io.BytesIO object at 0x...>); the user gets what
    the file is not."""
    text = tmp_path / "notes.jpg"
    text.write_text("shopping list")
    code, _, err = run_cli(["predict", str(text)], capsys)
    assert code == 2 and "not a picture" in err and "object at 0x" not in err, err
