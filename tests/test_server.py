"""The HTTP service: a real `hamr serve` (uvicorn) in a subprocess, driven over HTTP with httpx,
plus FastAPI TestClient checks of the app's pieces.

References: the pinhole projection (camera identity), a direct in-process `Predictor.predict` on
the same image and box, HTTP semantics (status codes of DESIGN.md "HTTP API"), and the clip's
known frame count.
"""

from __future__ import annotations

import io
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import SAMPLES, check_camera_identity, check_prediction, free_port
from fastapi.testclient import TestClient
from PIL import Image

from backend.detect import mediapipe_hands
from backend.errors import InputError, OptionError
from backend.media.image import load_image
from backend.options import HandRequest
from backend.service.app import create_app
from backend.service.forms import decode_image
from backend.service.guard import ApiError, check_bind, is_loopback
from backend.service.jobs import FIT_SHARE, Job

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token-0123456789"  # at least 16 characters (guard.MIN_TOKEN_CHARS)
MAX_UPLOAD_MB = 2
LOCAL = "http://127.0.0.1"  # TestClient's own Host, "testserver", is refused like any foreign one
WILD = SAMPLES / "wild_hamer" / "test5.jpg"  # a woman holding both hands at her face


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    cache: Path  # the server's XDG_CACHE_HOME
    first_health_s: float  # time of the first health answer once the port was open
    first_health_status: int

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


def start_server(checkpoint: Path, env: dict[str, str], *extra: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)]
    cmd += ["--checkpoint", str(checkpoint), "--max-upload-mb", str(MAX_UPLOAD_MB), *extra]
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # wait for the port
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {process.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("server did not open its port within 120 s") from None
            time.sleep(0.1)
    t0 = time.perf_counter()
    first = httpx.get(f"{url}/v1/health", timeout=30)
    server = Server(url, process, Path(env["XDG_CACHE_HOME"]), time.perf_counter() - t0, 0)
    server.first_health_status = first.status_code
    while httpx.get(f"{url}/v1/health", timeout=30).status_code != 200:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the model did not load within 120 s")
        time.sleep(0.1)
    return server


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(
    checkpoint: Path, server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    # jobs may name clips by path under the tests' temporary folders (the clips live there)
    allowed = str(tmp_path_factory.getbasetemp())
    server = start_server(checkpoint, server_env, "--allow-path", allowed)
    yield server
    stop_server(server)
    # a clean shutdown (uvicorn exits by re-raising SIGTERM) that left no upload behind
    log = server.process.stderr.read()
    assert server.process.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log and "Traceback" not in log, log
    assert not list(server.cache.glob("hamr/uploads-*"))


def box_field(box: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in box)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB), with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code is not None:
        assert error["code"] == code


# ----------------------------------------------------------------------------- real server


def test_health_answers_at_once_and_reports_the_model(server: Server, http, checkpoint) -> None:
    assert server.first_health_status in (200, 503)
    assert server.first_health_s < 1.0
    health = http.get("/v1/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["device"] == "cpu"
    assert body["checkpoint"] == checkpoint.name and body["hand_model"].startswith("open_hand")
    assert body["detector"] == "auto" and body["refine"] == "auto"


def test_predict_sample_photo(http, photo_bytes, sample_box, predictor) -> None:
    response = http.post(
        "/v1/predict",
        files={"image": ("photo.jpg", photo_bytes, "image/jpeg")},
        data={"box": box_field(sample_box), "side": "left"},
    )
    assert response.status_code == 200, response.text
    pred = response.json()
    check_prediction(pred, 334, 512, hands=1)
    # the same as a direct in-process call on the same image and box
    image, exif = load_image(photo_bytes)
    direct = predictor.predict(image, [HandRequest(sample_box, "left")], exif_f35_mm=exif)
    np.testing.assert_allclose(
        pred["hands"][0]["joints3d_cam"], direct["hands"][0]["joints3d_cam"], atol=1e-5
    )


def test_server_timing_splits_a_request_into_decode_predict_and_the_rest(
    http, photo_bytes, sample_box
) -> None:
    """/v1/predict's Server-Timing header: decode and predict (the endpoint's spans), then the
    request's total (the Guard's); each positive, their sum within the total, the total within
    the client's own wall time; other routes get the total alone."""
    import time

    def spans(response: httpx.Response) -> dict[str, float]:
        out = {}
        for part in response.headers["server-timing"].split(","):
            name, dur = part.strip().split(";dur=")
            out[name] = float(dur)
        return out

    started = time.perf_counter()
    response = http.post(
        "/v1/predict",
        files={"image": ("photo.jpg", photo_bytes, "image/jpeg")},
        data={"box": box_field(sample_box), "side": "left", "refine": "off"},
    )
    wall_ms = (time.perf_counter() - started) * 1e3
    assert response.status_code == 200, response.text
    t = spans(response)
    assert list(t) == ["decode", "predict", "total"], t
    assert t["decode"] > 0 and t["predict"] > 0
    assert t["decode"] + t["predict"] <= t["total"] <= wall_ms
    assert list(spans(http.get("/v1/model", params={"side": "right"}))) == ["total"]
    refused = http.post("/v1/predict", files={"image": ("p.jpg", photo_bytes, "image/jpeg")},
                        data={"box": "1,2,3"})  # fmt: skip
    assert refused.status_code == 422 and list(spans(refused)) == ["total"]


def test_predict_refine_field(http, photo_bytes, sample_box, predictor) -> None:
    """refine=off gives the network's hand as it is (the same as an in-process call without the
    fit); refine=auto fits each hand MediaPipe finds to its landmarks."""

    def post(data: bytes, **fields: str) -> dict:
        response = http.post(
            "/v1/predict", files={"image": ("photo.jpg", data, "image/jpeg")}, data=fields
        )
        assert response.status_code == 200, response.text
        return response.json()

    off = post(photo_bytes, box=box_field(sample_box), side="left", refine="off")
    assert off["hands"][0]["fit"] is None
    image, exif = load_image(photo_bytes)
    direct = predictor.predict(
        image, [HandRequest(sample_box, "left")], exif_f35_mm=exif, refine=False
    )
    np.testing.assert_allclose(
        off["hands"][0]["joints3d_cam"], direct["hands"][0]["joints3d_cam"], atol=1e-5
    )
    if not mediapipe_hands.available() or not WILD.is_file():
        pytest.skip("needs mediapipe and the wild sample photos")
    wild = WILD.read_bytes()
    plain, fitted = post(wild, refine="off"), post(wild, refine="auto")
    assert len(plain["hands"]) == len(fitted["hands"]) == 2  # MediaPipe finds both hands
    for raw, hand in zip(plain["hands"], fitted["hands"], strict=True):
        assert raw["fit"] is None and raw["box_xyxy"] == hand["box_xyxy"]
        assert hand["fit"]["rms_px_after"] < hand["fit"]["rms_px_before"]
        check_camera_identity(hand)


def test_predict_several_boxes_in_one_field(http, photo_bytes, sample_box) -> None:
    boxes = f"{box_field(sample_box)};150,300,300,450"
    response = http.post(
        "/v1/predict",
        files={"image": ("photo.jpg", photo_bytes, "image/jpeg")},
        data={"box": boxes, "focal": "800"},
    )
    assert response.status_code == 200, response.text
    pred = response.json()
    check_prediction(pred, 334, 512, hands=2)
    assert pred["hands"][0]["camera"]["K"][0][0] == 800.0


def test_load_image_scales_wide_grey_modes_to_8_bits() -> None:
    """16-bit grey keeps its contrast (scaled by its brightest value); float grey in [0, 1]
    maps to 0-255 as it is; negative or NaN values become black instead of wrapping."""
    ramp = np.linspace(0, 1, 40 * 30).reshape(30, 40)
    expected = (ramp * 255).astype(np.uint8)
    sixteen = Image.fromarray((ramp * 65535).astype(np.uint16))
    floats = ramp.astype(np.float32)
    floats[0, :4] = [-1.0, np.nan, -np.inf, 0.5]
    for image, name in ((sixteen, "png"), (Image.fromarray(floats), "tiff")):
        buf = io.BytesIO()
        image.save(buf, format=name.upper())
        rgb, _ = load_image(buf.getvalue())
        assert rgb.shape == (30, 40, 3) and (rgb[..., 0] == rgb[..., 2]).all()
        diff = np.abs(rgb[..., 0].astype(int) - expected)
        diff[0, :4] = 0
        assert diff.max() <= 1, name
    assert rgb[0, :3, 0].tolist() == [0, 0, 0] and rgb[0, 3, 0] == 127


def heic_bytes(pixels: np.ndarray, orientation: int = 1) -> bytes:
    """A HEIC photo of (H, W, 3) pixels (pillow-heif), with an EXIF orientation tag."""
    pillow_heif = pytest.importorskip("pillow_heif", reason="make setup installs pillow-heif")
    pillow_heif.register_heif_opener()
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="HEIF", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_heic_photos_are_read_and_a_missing_reader_is_named(sample_photo, monkeypatch) -> None:
    import backend.media.image as inference

    photo = np.asarray(Image.open(sample_photo).convert("RGB"))
    data = heic_bytes(photo)
    assert inference.is_heif(data) and not inference.is_heif(sample_photo.read_bytes())
    rgb, _ = load_image(data)
    assert rgb.shape == photo.shape
    assert np.abs(rgb.astype(int) - photo).mean() < 4  # a lossy codec, at quality 95
    monkeypatch.setattr(inference, "_heif_ready", False)  # as without pillow-heif
    with pytest.raises(InputError, match="pillow-heif"):
        load_image(data)


def test_upright_image_endpoint(http, sample_photo) -> None:
    """POST /v1/image: the photo as predict reads it, as a PNG (for Blender, which reads neither
    HEIC nor EXIF orientation): a sideways JPEG comes back turned, a HEIC decoded."""
    photo = np.asarray(Image.open(sample_photo).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored a quarter turn counter-clockwise: shown turned clockwise
    buf = io.BytesIO()
    Image.fromarray(np.rot90(photo, 1).copy()).save(buf, format="PNG", exif=exif)
    for name, data, tolerance in (
        ("sideways.png", buf.getvalue(), 0),
        ("photo.heic", heic_bytes(photo), 4),
    ):
        response = http.post("/v1/image", files={"image": (name, data, "application/octet-stream")})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        back = np.asarray(Image.open(io.BytesIO(response.content)))
        assert back.shape == photo.shape, name
        assert np.abs(back.astype(int) - photo).mean() <= tolerance, name
    two = [("image", ("a.png", buf.getvalue(), "image/png"))] * 2
    missing = http.post("/v1/image", files=two)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_image"
    unknown = http.post("/v1/image", files={"image": ("a.png", buf.getvalue())}, data={"x": "1"})
    assert unknown.status_code == 422
    garbage = http.post("/v1/image", files={"image": ("x.png", b"not an image", "image/png")})
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "bad_image"


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_predict_converts_grey_alpha_and_16_bit(http, sample_photo, sample_box, mode) -> None:
    photo = Image.open(sample_photo)
    if mode == "I;16":
        grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(grey)
        assert image.mode.startswith("I;16")
    else:
        image = photo.convert(mode)
    response = http.post(
        "/v1/predict",
        files={"image": ("photo.png", png_bytes(image), "image/png")},
        data={"box": box_field(sample_box)},
    )
    assert response.status_code == 200, response.text
    check_prediction(response.json(), 334, 512, hands=1)


def test_bad_images(http, photo_bytes, sample_box, server: Server) -> None:
    box = {"box": box_field(sample_box)}

    def post(content: bytes, name: str = "x.png") -> httpx.Response:
        return http.post("/v1/predict", files={"image": (name, content, "image/png")}, data=box)

    assert_error(http.post("/v1/predict"), 400, "empty_body")
    assert_error(post(b""), 400, "empty_image")
    garbage = post(b"this is not an image at all")
    assert_error(garbage, 400, "bad_image")
    # what it is, not Pillow's repr of the server's buffer (<_io.BytesIO object at 0x...>)
    assert "not a picture" in garbage.json()["error"]["message"]
    assert "object at 0x" not in garbage.json()["error"]["message"]
    assert_error(post(photo_bytes[: len(photo_bytes) // 2], "x.jpg"), 400, "bad_image")
    assert_error(post(png_bytes(Image.new("RGB", (1, 1)))), 400, "bad_image")
    assert_error(post(png_header_only(100_000, 100_000)), 413, "too_many_pixels")
    assert_error(post(png_header_only(8000, 6000)), 413, "too_many_pixels")  # > 40 Mpx
    too_big = b"\x00" * (MAX_UPLOAD_MB * 1024 * 1024 + 1000)
    assert_error(post(too_big), 413, "too_large")
    assert_error(
        http.post("/v1/predict", content=b"{}", headers={"content-type": "text/plain"}), 415
    )
    assert http.get("/v1/health").status_code == 200


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"side": "up"}, "side"),
        ({"box": "1,2,3"}, "four numbers"),
        ({"box": "10,10,5,50"}, "empty"),
        ({"box": "1000,1000,1100,1100"}, "outside"),
        ({"focal": "0"}, "positive"),
        ({"focal": "wide"}, "number"),
        ({"colour": "blue"}, "unknown"),
        ({"detector": "yolo"}, "detector"),
        ({"refine": "always"}, "refine"),
    ],
)
def test_bad_options_are_422(http, photo_bytes, data, message) -> None:
    response = http.post(
        "/v1/predict", files={"image": ("photo.jpg", photo_bytes, "image/jpeg")}, data=data
    )
    assert_error(response, 422)
    assert message in response.json()["error"]["message"]


def test_unknown_routes_and_jobs_are_404(http) -> None:
    assert_error(http.get("/v1/nothing"), 404, "not_found")
    assert_error(http.get("/v1/jobs/0123"), 404, "unknown_job")
    assert_error(http.get("/v1/jobs/0123/result"), 404, "unknown_job")
    assert_error(http.delete("/v1/jobs/0123"), 404, "unknown_job")
    assert_error(http.put("/v1/health"), 405)


def test_rig_data(http) -> None:
    for side in ("right", "left"):
        response = http.get("/v1/model", params={"side": side})
        assert response.status_code == 200
        rig = response.json()
        assert rig["schema"] == "hamr.rig/1" and rig["side"] == side
        assert len(rig["joint_names"]) == 16 and rig["v_template"]["shape"][1] == 3
    assert_error(http.get("/v1/model", params={"side": "middle"}), 422)


def test_half_sent_upload_does_not_break_the_server(server: Server, http, photo_bytes) -> None:
    boundary = "hamrboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo_bytes
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    port = int(server.url.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + body[: len(body) // 2])
            time.sleep(0.2)
    assert http.get("/v1/health").status_code == 200
    response = http.post(
        "/v1/predict",
        files={"image": ("photo.jpg", photo_bytes, "image/jpeg")},
        data={"box": "40,120,210,230"},
    )
    assert response.status_code == 200


def test_concurrent_clients(server: Server, photo_bytes, sample_box) -> None:
    def request(i: int) -> dict:
        with server.client() as client:
            response = client.post(
                "/v1/predict",
                files={"image": ("photo.jpg", photo_bytes, "image/jpeg")},
                data={"box": box_field(sample_box), "side": "left"},
            )
            assert response.status_code == 200, response.text
            return response.json()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(request, range(8)))
    first = results[0]["hands"][0]
    for result in results:
        check_prediction(result, 334, 512, hands=1)
        np.testing.assert_allclose(
            result["hands"][0]["keypoints2d"], first["keypoints2d"], atol=1e-3
        )


def wait_for(http: httpx.Client, job_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = http.get(f"/v1/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_video_job(http, hand_video) -> None:
    with open(hand_video.path, "rb") as f:
        response = http.post(
            "/v1/jobs",
            files={"video": ("hand.mp4", f, "video/mp4")},
            data={"box": box_field(hand_video.boxes[0]), "side": "right", "smoothing": "0.5"},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    progress = []
    deadline = time.monotonic() + 120
    while (status := http.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        progress.append(status["progress"])
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert status["state"] == "done", status
    assert status["progress"] == 1.0 and progress == sorted(progress)
    assert status["frames_done"] == status["frames_total"] == hand_video.num_frames
    result = http.get(f"/v1/jobs/{job_id}/result").json()
    # the fit's counts: every frame of each track that MediaPipe's landmarks fitted (none
    # when refine is off here or MediaPipe finds nothing on the rendered hand)
    fitted_tracks = {h["track"] for f in result["frames"] for h in f["hands"] if h.get("fit")}
    fitted = sum(h["track"] in fitted_tracks for f in result["frames"] for h in f["hands"])
    assert status["fit_done"] == status["fit_total"] == fitted
    assert status["stage"] == ("fitting" if fitted else "frames")
    assert result["schema"] == "hamr.video/1" and result["fps"] == pytest.approx(hand_video.fps)
    assert [f["index"] for f in result["frames"]] == list(range(hand_video.num_frames))
    tracks = {h["track"] for f in result["frames"] for h in f["hands"]}
    assert tracks and all(isinstance(t, int) for t in tracks)
    for frame in result["frames"]:
        for hand in frame["hands"]:
            check_camera_identity(hand)


def test_job_progress_spans_the_frames_then_the_fit(tmp_path) -> None:
    """progress: the frames' share alone without a fit; with one, 1 - FIT_SHARE for the frames
    and FIT_SHARE for the fit (values worked by hand)."""
    plain = Job("a", tmp_path, {}, None, state="running", frames_done=5, frames_total=20)
    assert plain.status()["progress"] == 0.25 and plain.status()["stage"] == "frames"
    job = Job("b", tmp_path, {}, None, state="running", frames_done=5, frames_total=20, fits=True)
    assert job.status()["progress"] == pytest.approx(0.25 * (1 - FIT_SHARE), abs=1e-4)
    job.frames_done, job.fit_done, job.fit_total = 20, 10, 40
    status = job.status()
    assert status["progress"] == pytest.approx(1 - FIT_SHARE + 0.25 * FIT_SHARE, abs=1e-4)
    assert (status["stage"], status["fit_done"], status["fit_total"]) == ("fitting", 10, 40)
    job.state = "done"
    assert job.status()["progress"] == 1.0


@pytest.fixture(scope="module")
def long_video(hand_video, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic clip looped to 400 frames: long enough to cancel midway."""
    cap = cv2.VideoCapture(str(hand_video.path))
    frames = []
    while (read := cap.read())[0]:
        frames.append(read[1])
    cap.release()
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    for i in range(400):
        writer.write(frames[i % len(frames)])
    writer.release()
    return path


def test_jobs_queue_and_cancel(server: Server, http, long_video, hand_video) -> None:
    box = box_field(hand_video.boxes[0])
    # a job on a local file (JSON body), and a second one (an upload) queued behind it
    first = http.post("/v1/jobs", json={"path": str(long_video), "box": box, "smoothing": 0.2})
    assert first.status_code == 202, first.text
    with open(long_video, "rb") as f:
        second = http.post("/v1/jobs", files={"video": ("long.mp4", f)}, data={"box": box})
    assert second.status_code == 202, second.text
    first_id, second_id = first.json()["id"], second.json()["id"]
    running = wait_for(http, first_id, {"running"})
    assert http.get(f"/v1/jobs/{second_id}").json()["state"] == "queued"  # one job at a time
    uploads = list(server.cache.glob(f"hamr/uploads-*/{second_id}/*"))
    assert len(uploads) == 1
    # health stays immediate while a job runs
    t0 = time.perf_counter()
    assert http.get("/v1/health").status_code == 200
    assert time.perf_counter() - t0 < 1.0
    # the queued job is cancelled at once and its upload removed
    assert http.delete(f"/v1/jobs/{second_id}").json()["state"] == "cancelled"
    assert not uploads[0].exists()
    # the running one midway
    status = wait_for(http, first_id, {"running"})
    assert 0 < running["frames_total"] == status["frames_total"] == 400
    while http.get(f"/v1/jobs/{first_id}").json()["frames_done"] < 5:
        time.sleep(0.02)
    cancelled = http.delete(f"/v1/jobs/{first_id}").json()
    assert cancelled["state"] == "cancelled" and cancelled["frames_done"] < 400
    time.sleep(0.5)
    final = http.get(f"/v1/jobs/{first_id}").json()
    assert final["state"] == "cancelled" and final["frames_done"] < 400
    assert_error(http.get(f"/v1/jobs/{first_id}/result"), 409, "not_done")
    # DELETE on a finished job forgets it
    http.delete(f"/v1/jobs/{first_id}")
    assert_error(http.get(f"/v1/jobs/{first_id}"), 404)


def test_bad_jobs(http, hand_video, tmp_path) -> None:
    bad = http.post("/v1/jobs", files={"video": ("clip.mp4", b"not a video" * 50, "video/mp4")})
    assert_error(bad, 400, "bad_video")
    # a missing file and a file that is no video get the same answer
    missing = http.post("/v1/jobs", json={"path": str(tmp_path / "none.mp4")})
    (tmp_path / "notes.txt").write_text("not a video")
    text = http.post("/v1/jobs", json={"path": str(tmp_path / "notes.txt")})
    assert_error(missing, 400, "bad_video")
    assert missing.json() == text.json()
    # a path outside the --allow-path folders: refused whether it exists or not
    for outside in ("/etc/hostname", "/etc/no-such-file", "relative.mp4", "~root/x.mp4"):
        assert_error(http.post("/v1/jobs", json={"path": outside}), 403, "path_not_allowed")
    assert_error(http.post("/v1/jobs", json={"path": str(hand_video.path), "speed": 2}), 422)
    assert_error(http.post("/v1/jobs", json={"path": str(hand_video.path), "smoothing": 3}), 422)
    assert_error(
        http.post("/v1/jobs", json={"path": str(hand_video.path), "box": [300, 300, 400, 400]}),
        422,
    )
    assert_error(http.post("/v1/jobs", json={"path": str(hand_video.path), "refine": 1}), 422)
    assert_error(http.post("/v1/jobs", json=[1, 2]), 400, "bad_json")
    assert_error(http.post("/v1/jobs", files={"other": ("a", b"1")}), 422, "unknown_field")
    assert http.get("/v1/health").status_code == 200


def test_token_mode(checkpoint, server_env, photo_bytes, sample_box) -> None:
    server = start_server(checkpoint, server_env, "--token", TOKEN)
    try:
        with server.client() as client:
            assert client.get("/v1/health").status_code == 200  # health needs no token
            assert_error(client.get("/v1/model"), 401, "unauthorized")
            wrong = {"Authorization": "Bearer nope"}
            assert_error(client.get("/v1/model", headers=wrong), 401)
            files = {"image": ("photo.jpg", photo_bytes, "image/jpeg")}
            assert_error(client.post("/v1/predict", files=files), 401)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert client.get("/v1/model", headers=auth).status_code == 200
            response = client.post(
                "/v1/predict", files=files, data={"box": box_field(sample_box)}, headers=auth
            )
            assert response.status_code == 200
    finally:
        stop_server(server)


# ----------------------------------------------------------------------------- app pieces


def test_bind_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(OptionError, match="without --token"):
        check_bind("0.0.0.0", None)
    # short, blank or spaced tokens are refused on any address
    for bad in ("x", " ", "short-token", " " * 20, "sixteen chars with spaces"):
        with pytest.raises(OptionError, match="token"):
            check_bind("127.0.0.1", bad)


def test_decode_image(photo_bytes) -> None:
    image, _ = decode_image(photo_bytes, 40e6)
    assert image.shape == (512, 334, 3) and image.dtype == np.uint8
    with pytest.raises(ApiError) as err:
        decode_image(photo_bytes, 1000)
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:
        decode_image(b"GIF89a-broken", 40e6)
    assert err.value.status == 400


def test_app_reports_a_failed_model_load(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with TestClient(create_app(broken), base_url=LOCAL) as client:
        deadline = time.monotonic() + 30
        while (health := client.get("/v1/health")).json()["status"] == "loading":
            assert health.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.05)
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "safetensors" in health.json()["error"]["message"]
        files = {"image": ("a.png", png_bytes(Image.new("RGB", (64, 64))), "image/png")}
        assert_error(client.post("/v1/predict", files=files), 503, "model_load_failed")


def test_app_in_process(checkpoint, tmp_path, monkeypatch, photo_bytes, sample_box) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with TestClient(create_app(checkpoint, token=TOKEN), base_url=LOCAL) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 60
        while client.get("/v1/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert_error(client.get("/v1/jobs/x"), 401)
        response = client.post(
            "/v1/predict",
            files={"image": ("photo.jpg", photo_bytes, "image/jpeg")},
            data={"box": [box_field(sample_box), "150,300,300,450"]},
            headers=auth,
        )
        assert response.status_code == 200
        check_prediction(response.json(), 334, 512, hands=2)
    assert not list(tmp_path.glob("hamr/uploads-*"))  # the upload folder goes with the app
