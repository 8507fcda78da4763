"""`hamr serve` against hostile and careless clients (issue #20), over HTTP on a real uvicorn
server: a bad-input suite (0 answers >= 500, every error JSON, the server healthy after each),
browsers refused (Origin, Host), bounded work (boxes), timeouts, tokens, stale uploads and a
job killed with its server, large photos read at a reduced size, the OpenAPI description.

References: HTTP semantics (DESIGN.md statuses), the error shape, the photo predicted at its
own size (for the reduced one: a 2x nearest-neighbour enlargement reduces back to it exactly),
the pinhole projection (camera identity), the job's files on disk.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import check_camera_identity
from PIL import Image
from test_server import (
    ROOT,
    Server,
    assert_error,
    box_field,
    png_header_only,
    start_server,
    stop_server,
)

from backend.media.image import exif_f35_mm, load_image, load_image_within
from backend.options import MAX_BOXES
from backend.service.guard import Guard
from backend.service.storage import all_finite

TOKEN = "0123456789abcdef-token"


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's --allow-path folder: a text file and a subfolder in it."""
    folder = tmp_path_factory.mktemp("allowed")
    (folder / "notes.txt").write_text("not a video")
    (folder / "sub").mkdir()
    return folder


@pytest.fixture(scope="module")
def server(checkpoint: Path, server_env: dict[str, str], allowed: Path) -> Iterator[Server]:
    server = start_server(
        checkpoint,
        server_env,
        *("--allow-path", str(allowed), "--allow-origin", "http://ok.example"),
        *("--max-upload-mb", "64"),  # the 33 Mpx PNG of the reduced-size test
    )
    yield server
    stop_server(server)
    log = server.process.stderr.read()
    assert "Traceback" not in log, log


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


# ----------------------------------------------------------------------------- inputs
def jpeg_with_f35(value, kind: str) -> bytes:
    """A 64x64 JPEG whose EXIF FocalLengthIn35mmFilm is written raw as `kind` (ASCII text,
    two SHORTs, a SHORT, a huge RATIONAL): the tag as odd writers store it."""
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)  # created empty
    ifd[0xA405] = value
    data = exif.tobytes()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(buf, "JPEG", exif=data)
    out = buf.getvalue()
    # Pillow writes what the value's Python type says; check the tag reads back as written
    back = Image.open(io.BytesIO(out)).getexif().get_ifd(0x8769).get(0xA405)
    assert back is not None, kind
    return out


def bad_inputs(photo: bytes, box: str, allowed: Path) -> list[tuple[str, str, str, dict]]:
    """(name, method, path, httpx keyword arguments) of the bad-input suite."""
    rng = np.random.default_rng(20)
    cases: list[tuple[str, str, str, dict]] = []

    def predict(name: str, data: dict | None = None, image: bytes | None = photo, **kw) -> None:
        files = {"image": ("x.jpg", image, "image/jpeg")} if image is not None else None
        fields = {"box": box, "refine": "off", **(data or {})}
        cases.append((name, "POST", "/v1/predict", {"files": files, "data": fields, **kw}))

    # the five causes of a 500 (issue #20, 3.)
    for value, kind in (("35", "text"), ((35, 2), "two values"), (0, "zero"), (10**6, "huge")):
        exif_photo = jpeg_with_f35(value, kind)
        predict(f"exif f35 {kind}", {}, exif_photo)
        predict(f"exif f35 {kind}, no box", {"box": ""}, exif_photo)
        cases.append(
            (f"image exif f35 {kind}", "POST", "/v1/image", {"files": {"image": exif_photo}})
        )
    for focal in ("1e40", "1e-100", "1e308", "1e-320", "5e-324", "1e309", "-1e40"):
        predict(f"focal {focal}", {"focal": focal})
    for coords in (
        "1e18,1e18,2e18,2e18",
        "-1e18,-1e18,1e18,1e18",
        "0,0,1e300,1e300",
        "-1e300,0,1e300,10",
        "0,0,1e6,1e6",
        "-9e5,-9e5,9e5,9e5",
        "0,0,3e3,1e5",
    ):
        predict(f"box {coords}", {"box": coords})
    long_name = "a" * 300
    for path in (
        f"{allowed}/{long_name}.mp4",
        f"/{long_name}/x.mp4",
        "~nosuchuser/clip.mp4",
        "~/clip.mp4",
        f"{allowed}/" + "b/" * 2000 + "x.mp4",
    ):
        cases.append((f"job path {path[:40]}", "POST", "/v1/jobs", {"json": {"path": path}}))
        cases.append((f"job form path {path[:40]}", "POST", "/v1/jobs", {"data": {"path": path}}))
    for depth in (1000, 5000, 20000):
        body = "[" * depth + "]" * depth
        headers = {"content-type": "application/json"}
        cases.append(
            (f"json depth {depth}", "POST", "/v1/jobs", {"content": body, "headers": headers})
        )
        body = '{"path": ' + "[" * depth + "]" * depth + "}"
        cases.append(
            (f"json path depth {depth}", "POST", "/v1/jobs", {"content": body, "headers": headers})
        )

    # images
    garbage = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (1, 17, 1000, 65536)]
    images = {
        "empty": b"",
        "text": b"this is not an image",
        "truncated jpeg": photo[: len(photo) // 2],
        "jpeg head only": photo[:200],
        "1x1 png": _png(Image.new("RGB", (1, 1))),
        "7x7 png": _png(Image.new("RGB", (7, 7))),
        "header 100000^2": png_header_only(100_000, 100_000),
        "header 8000x6000": png_header_only(8000, 6000),
        "header 0x0": png_header_only(0, 0),
        "header 1x2^31": png_header_only(1, 2**31 - 1),
        "gif broken": b"GIF89a-broken",
        "tiff junk": b"II*\x00" + bytes(100),
        "tiff big-endian junk": b"MM\x00*" + b"\xff" * 100,
        "bmp junk": b"BM" + bytes(60),
        "webp junk": b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(20),
        "heic junk": b"\x00\x00\x00\x18ftypheic" + bytes(40),
        "ico junk": b"\x00\x00\x01\x00" + bytes(40),
        "psd junk": b"8BPS" + bytes(40),
        "pdf": b"%PDF-1.4\n%junk",
        "svg": b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
    }
    images.update({f"random {len(g)} bytes": g for g in garbage})
    for name, data in images.items():
        predict(f"image {name}", {}, data)
        cases.append((f"/v1/image {name}", "POST", "/v1/image", {"files": {"image": data}}))

    # options
    for side in ("up", "", "RIGHT", "left ", "\x00", "é", "auto;right", "1"):
        predict(f"side {side!r}", {"side": side})
    for b in (
        "",
        ";",
        ";;;;",
        "1,2,3",
        "1,2,3,4,5",
        "a,b,c,d",
        "nan,0,10,10",
        "0,0,inf,10",
        "0,0,-inf,10",
        "10,10,5,50",
        "1000,1000,1100,1100",
        "-50,-50,-10,-10",
        "1_0,0,20,20",
        "٠,٠,١٠,١٠",
        "0x10,0,20,20",
        " , , , ",
        "0,0,10,10,",
        "1e-320,0,10,10",
        box + ";" + "1,2,3",
        "x" * 5000,
        "9" * 400 + ",0,10,10",
    ):
        predict(f"box {b[:30]!r}", {"box": b})
    for count in (MAX_BOXES + 1, 100, 10_000):
        predict(f"{count} boxes", {"box": ";".join([box] * count)})
    predict("9 box fields", {"box": [box] * (MAX_BOXES + 1)})
    for focal in ("0", "-1", "nan", "inf", "-inf", "wide", " ", "0x10", "1" * 5000, "1e", "0.5"):
        predict(f"focal {focal[:20]!r}", {"focal": focal})
    for name, value in (
        ("detector", "yolo"),
        ("detector", ""),
        ("refine", "always"),
        ("refine", "1"),
        ("colour", "blue"),
        ("image2", "x"),
    ):
        predict(f"{name}={value!r}", {name: value})
    predict("box as a file", {}, photo, files={"image": ("x.jpg", photo), "box": ("b", b"1,2")})
    cases.append(("two images", "POST", "/v1/predict", {"files": [("image", ("a", photo))] * 2}))
    cases.append(("image as text", "POST", "/v1/predict", {"data": {"image": "abc"}}))
    cases.append(("no image", "POST", "/v1/predict", {"data": {"side": "left"}}))
    for ctype, body in (
        ("text/plain", b"hello"),
        ("application/json", b'{"image": 1}'),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data\r\n\r\n"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nbroken"),
        ("application/x-www-form-urlencoded", b"%%%=%%%&&&"),
        ("application/x-www-form-urlencoded", b"image=" + b"A" * 1000),
        ("", b"abc"),
        ("image/jpeg", photo),
    ):
        for path in ("/v1/predict", "/v1/jobs", "/v1/image"):
            kw = {"content": body, "headers": {"content-type": ctype} if ctype else {}}
            cases.append((f"{path} {ctype or 'no type'} {body[:10]!r}", "POST", path, kw))
    cases.append(("empty body", "POST", "/v1/predict", {}))

    # jobs
    for body in (
        [1, 2],
        "text",
        5,
        None,
        {"path": 5},
        {"path": None},
        {"path": ["a"]},
        {"path": {"a": 1}},
        {"box": {"a": 1}},
        {"box": [[1, [2]]]},
        {"box": [True] * 4},
        {"side": {"x": 1}},
        {"smoothing": "high"},
        {"smoothing": 3},
        {"focal": 1e308},
        {"focal": -0.0},
        {"speed": 2},
        {"video": "x"},
        {},
        {"path": "/etc/passwd"},
        {"path": "/dev/zero"},
        {"path": str(allowed)},
        {"path": str(allowed / "sub")},
        {"path": str(allowed / "notes.txt")},
        {"path": str(allowed / "none.mp4")},
        {"path": str(allowed / ".." / "x.mp4")},
        {"path": str(allowed) + "/\x00x.mp4"},
        {"path": ""},
        {"path": str(allowed / "none.mp4"), "box": ";".join([box] * 10_000)},
    ):
        cases.append((f"job json {str(body)[:40]}", "POST", "/v1/jobs", {"json": body}))
    for raw in (
        b"{",
        b"{'a': 1}",
        b'{"path": NaN}',
        b'{"focal": Infinity, "path": "/x"}',
        b'{"focal": ' + b"1" * 5000 + b"}",
        b"\xff\xfe",
        b'"\\ud800"',
        b"",
    ):
        headers = {"content-type": "application/json"}
        cases.append(
            (f"job raw {raw[:20]!r}", "POST", "/v1/jobs", {"content": raw, "headers": headers})
        )
    for files in (
        {"video": ("clip.mp4", b"not a video" * 50)},
        {"video": ("clip.mp4", b"")},
        {"video": ("clip", b"\x00" * 10)},
        {"other": ("a", b"1")},
    ):
        cases.append((f"job upload {list(files)}", "POST", "/v1/jobs", {"files": files}))
    cases.append(
        (
            "job upload and path",
            "POST",
            "/v1/jobs",
            {"files": {"video": ("c.mp4", b"x")}, "data": {"path": str(allowed / "x.mp4")}},
        )
    )
    cases.append(("two videos", "POST", "/v1/jobs", {"files": [("video", ("a.mp4", b"x"))] * 2}))

    # other routes and methods
    for side in ("middle", "", "\x00", "x" * 10_000):
        cases.append((f"model side {side[:10]!r}", "GET", "/v1/model", {"params": {"side": side}}))
    for job_id in ("0123", "x" * 5000, "..%2F..%2Fetc", "%00", "é", "a b"):
        for suffix, method in (("", "GET"), ("/result", "GET"), ("", "DELETE")):
            cases.append(
                (f"{method} job {job_id[:10]}{suffix}", method, f"/v1/jobs/{job_id}{suffix}", {})
            )
    for method, path in (
        ("PUT", "/v1/health"),
        ("PATCH", "/v1/predict"),
        ("GET", "/v1/predict"),
        ("DELETE", "/v1/jobs"),
        ("GET", "/v1/nothing"),
        ("POST", "/v1/model"),
        ("OPTIONS", "/v1/predict"),
        ("GET", "/docs"),
        ("GET", "/" + "a" * 8000),
    ):
        cases.append((f"{method} {path[:20]}", method, path, {}))
    return cases


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_bad_input_suite(http, photo_bytes, sample_box, allowed) -> None:
    """Every case: an answer below 500, an error as {"error": {"code", "message"}} with no
    Python repr in it, and health 200 after it."""
    cases = bad_inputs(photo_bytes, box_field(sample_box), allowed)
    assert len(cases) >= 150, len(cases)
    failures = []
    for name, method, path, kwargs in cases:
        response = http.request(method, path, **kwargs)
        problem = None
        if response.status_code >= 500:
            problem = "5xx"
        elif response.status_code >= 400:
            try:
                error = response.json()["error"]
                assert set(error) == {"code", "message"} and error["code"] and error["message"]
                assert "Error(" not in error["message"] and "Traceback" not in error["message"]
            except (ValueError, KeyError, AssertionError, TypeError):
                problem = "not a JSON error"
        if problem is None and http.get("/v1/health").status_code != 200:
            problem = "unhealthy after"
        if problem:
            failures.append((name, problem, response.status_code, response.text[:200]))
    assert not failures, failures


def test_the_five_former_500s(http, photo_bytes, sample_box, allowed) -> None:
    """Each former cause of a 500 answers as it should now (status and code)."""
    box = box_field(sample_box)

    def predict(image: bytes, **fields: str) -> httpx.Response:
        return http.post("/v1/predict", files={"image": ("x.jpg", image)}, data=fields)

    # an EXIF focal stored as text or as two values: read (text) or ignored (two values)
    for value in ("35", (35, 2)):
        response = predict(jpeg_with_f35(value, str(value)), box="4,4,60,60", refine="off")
        assert response.status_code == 200, response.text
        check_camera_identity(response.json()["hands"][0])
    # focal out of range; box coordinates out of range
    for focal in ("1e40", "1e-100"):
        assert_error(predict(photo_bytes, box=box, focal=focal), 422, "bad_option")
    for coords in ("1e18,1e18,2e18,2e18", "0,0,1e300,1e300"):
        assert_error(predict(photo_bytes, box=coords), 422, "bad_option")
    # paths: a 300-character component under the allowed folder; another user's home
    long = http.post("/v1/jobs", json={"path": f"{allowed}/{'a' * 300}.mp4"})
    assert_error(long, 400, "bad_video")
    assert_error(http.post("/v1/jobs", json={"path": "~nosuchuser/x.mp4"}), 403)
    deep = "[" * 20000 + "]" * 20000
    headers = {"content-type": "application/json"}
    assert_error(http.post("/v1/jobs", content=deep, headers=headers), 400, "bad_json")


def test_exif_focal_parsing() -> None:
    """The tag as the standard says (a SHORT) is read; text of one number too; two values, zero,
    out-of-range and junk are ignored (a missing tag's default then applies)."""
    assert exif_f35_mm(35) == 35.0 and exif_f35_mm("35") == 35.0 and exif_f35_mm((28,)) == 28.0
    for junk in ((35, 2), 0, -5, 1e9, "wide", b"\xff", None, float("nan"), float("inf"), []):
        assert exif_f35_mm(junk) is None, junk
    assert load_image(jpeg_with_f35("35", "text"))[1] == 35.0
    assert load_image(jpeg_with_f35((35, 2), "two values"))[1] is None


def test_browsers_are_refused(server: Server, http, photo_bytes, sample_box, allowed) -> None:
    """A web page's cross-origin POST (multipart and form-urlencoded) and a DNS-rebound Host are
    refused before anything runs; an allowed origin, localhost and IP hosts are served."""
    box = box_field(sample_box)
    files = {"image": ("x.jpg", photo_bytes, "image/jpeg")}
    evil = {"Origin": "http://attacker.example"}
    assert_error(http.post("/v1/predict", files=files, data={"box": box}, headers=evil), 403)
    form = http.post("/v1/jobs", data={"path": str(allowed / "x.mp4")}, headers=evil)
    assert_error(form, 403, "forbidden_origin")
    assert_error(http.get("/v1/health", headers={"Origin": "null"}), 403)
    for host in ("attacker.example", "attacker.example:" + str(port_of(server)), "localhost.evil"):
        assert_error(http.get("/v1/model", headers={"Host": host}), 421, "misdirected")
    for host in ("localhost", f"127.0.0.1:{port_of(server)}", "[::1]:80", "127.0.0.2"):
        assert http.get("/v1/health", headers={"Host": host}).status_code == 200, host
    ok = http.post(
        "/v1/predict",
        files=files,
        data={"box": box, "refine": "off"},
        headers={"Origin": "http://ok.example"},
    )
    assert ok.status_code == 200, ok.text


def test_ten_thousand_boxes_refused_fast(http, photo_bytes, sample_box) -> None:
    """Refused from the fields alone, before the photo is decoded (median of 5 < 50 ms)."""
    boxes = ";".join([box_field(sample_box)] * 10_000)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        response = http.post(
            "/v1/predict", files={"image": ("x.jpg", photo_bytes)}, data={"box": boxes}
        )
        times.append(time.perf_counter() - t0)
        assert_error(response, 422, "bad_option")
        assert f"at most {MAX_BOXES} boxes" in response.json()["error"]["message"]
    assert sorted(times)[2] < 0.05, times


def test_half_sent_head_times_out_with_json(server: Server) -> None:
    """A connection that never finishes its request head is answered 408 (JSON) and closed after
    the header timeout (10 s), and a malformed request line gets uvicorn's 400 as JSON."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        t0 = time.monotonic()
        reply = _read_all(s)
        waited = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408") and 8 < waited < 20, (reply, waited)
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "header_timeout"
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 400")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_stalled_body_is_a_408() -> None:
    """The Guard's body pace (in process, with short timeouts): a body that stops arriving
    raises the 408 the app turns into JSON; a body that keeps coming passes."""
    import asyncio

    from backend.service.guard import ApiError

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    async def run(gaps: list[float]) -> None:
        guard = Guard(app, None, 1 << 20, body_idle_timeout_s=0.2, body_timeout_s=5)
        parts = iter(gaps)

        async def receive():
            gap = next(parts, None)
            if gap is None:
                return {"type": "http.request", "body": b"x", "more_body": False}
            await asyncio.sleep(gap)
            return {"type": "http.request", "body": b"x", "more_body": True}

        scope = {"type": "http", "path": "/v1/predict", "headers": [(b"host", b"127.0.0.1")]}
        await guard(scope, receive, None)

    asyncio.run(run([0.05, 0.05, 0.05]))
    with pytest.raises(ApiError) as err:
        asyncio.run(run([0.05, 1.0]))
    assert err.value.status == 408


def test_token_rules(checkpoint, server_env) -> None:
    """`hamr serve --token` with fewer than 16 characters, or blank, exits at once with a
    message; a long token is required as a bearer token."""
    for bad in ("x", " ", "short-token"):
        proc = subprocess.run(
            [sys.executable, "-m", "backend.cli", "serve", "--token", bad, "--port", "1"],
            cwd=ROOT,
            env=server_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "at least 16" in proc.stderr, proc.stderr


def test_killed_job_is_reported_failed_and_its_upload_swept(
    checkpoint, server_env, tmp_path, hand_video
) -> None:
    """SIGKILL mid-job: the upload stays on disk (nothing could remove it); the next server on
    the same cache removes it at start and reports the job as failed, not unknown."""
    import cv2

    cap = cv2.VideoCapture(str(hand_video.path))
    frames = []
    while (read := cap.read())[0]:
        frames.append(read[1])
    cap.release()
    clip = tmp_path / "long.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    for i in range(300):
        writer.write(frames[i % len(frames)])
    writer.release()
    cache_env = dict(server_env, XDG_CACHE_HOME=str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    first = start_server(checkpoint, cache_env)
    try:
        with first.client() as client, open(clip, "rb") as f:
            box = box_field(hand_video.boxes[0])
            response = client.post("/v1/jobs", files={"video": ("c.mp4", f)}, data={"box": box})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            while client.get(f"/v1/jobs/{job_id}").json()["frames_done"] < 2:
                time.sleep(0.05)
        uploads = list((tmp_path / "cache").glob(f"hamr/uploads-*/{job_id}/*"))
        assert len(uploads) == 1
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
    assert uploads[0].exists()  # left behind by the killed server
    second = start_server(checkpoint, cache_env)
    try:
        assert not uploads[0].exists() and not uploads[0].parent.parent.exists()
        with second.client() as client:
            status = client.get(f"/v1/jobs/{job_id}").json()
        assert status["state"] == "failed" and status["error"]["code"] == "server_stopped"
    finally:
        stop_server(second)
    assert not list((tmp_path / "cache").glob("hamr/uploads-*"))
    assert not list((tmp_path / "cache").glob("hamr/jobs/*.json"))


def test_path_jobs_fall_back_to_upload_in_the_client(server: Server, hand_video, tmp_path) -> None:
    """The Blender extension's client sends a local clip by path; a server that does not read
    that folder (403 path_not_allowed) gets it uploaded instead, and the job runs."""
    from hamr_blender.io.client import HamrClient

    clip = tmp_path / "clip.mp4"  # not under the server's --allow-path
    clip.write_bytes(hand_video.path.read_bytes())
    client = HamrClient(server.url, timeout=60)
    job_id = client.submit_video(clip, upload=False, side="right")
    deadline = time.monotonic() + 120
    while (status := client.job(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status["state"] == "done", status
    assert status["frames_total"] == hand_video.num_frames


def test_large_photo_is_predicted_at_a_reduced_size(http, sample_photo, sample_box) -> None:
    """A photo over the 16 Mpx budget (the sample enlarged 14x, nearest neighbour: 4676x7168,
    33.5 Mpx) is decoded reduced by 2 (a box filter: back to the sample enlarged 7x, exactly)
    and mapped back: the same 3D hand as the 7x photo predicted whole, its 2D keypoints twice
    as far from the corner, and the camera identity in the full photo's pixels."""
    photo = Image.open(sample_photo).convert("RGB")
    w, h = photo.size

    def enlarged(k: int) -> bytes:
        return _png(photo.resize((w * k, h * k), Image.NEAREST))

    box7 = [v * 7 for v in sample_box]
    box14 = [v * 14 for v in sample_box]
    common = {"side": "left", "refine": "off"}
    seven = http.post(
        "/v1/predict",
        files={"image": ("7.png", enlarged(7))},
        data={"box": box_field(box7), "focal": "5000", **common},
    )
    fourteen = http.post(
        "/v1/predict",
        files={"image": ("14.png", enlarged(14))},
        data={"box": box_field(box14), "focal": "10000", **common},
    )
    assert seven.status_code == fourteen.status_code == 200, (seven.text, fourteen.text)
    a, b = seven.json(), fourteen.json()
    assert b["image"] == {"width": 14 * w, "height": 14 * h}
    ha, hb = a["hands"][0], b["hands"][0]
    assert hb["box_xyxy"] == [round(v, 2) for v in box14]
    np.testing.assert_allclose(hb["joints3d_cam"], ha["joints3d_cam"], atol=1e-4)
    np.testing.assert_allclose(hb["keypoints2d"], 2 * np.array(ha["keypoints2d"]), atol=1e-2)
    np.testing.assert_allclose(hb["crop_xyxy"], 2 * np.array(ha["crop_xyxy"]), atol=0.02)
    assert hb["camera"]["K"][0] == [10000.0, 0.0, 14 * w / 2]
    check_camera_identity(hb)


def test_reduced_decoding(tmp_path) -> None:
    """load_image_within: a JPEG over the budget decodes at half size by DCT scaling, a PNG by
    an integer box filter; the full upright size comes back (turned by the EXIF orientation)."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).resize((4000, 3000))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown a quarter turn clockwise
    buf = io.BytesIO()
    big.save(buf, "JPEG", exif=exif)
    rgb, _, full = load_image_within(buf.getvalue(), 4e6)
    assert full == (3000, 4000) and rgb.shape == (2000, 1500, 3)
    rgb, _, full = load_image_within(_png(big), 4e6)
    assert full == (4000, 3000) and rgb.shape == (1500, 2000, 3)
    expected = np.asarray(big, dtype=np.float64).reshape(1500, 2, 2000, 2, 3).mean(axis=(1, 3))
    assert np.abs(rgb - expected).max() <= 1
    same, _, full = load_image_within(_png(big), None)
    assert same.shape == (3000, 4000, 3) and full == (4000, 3000)


def test_all_finite() -> None:
    assert all_finite({"a": [1.0, {"b": (2, 3.5)}], "c": "nan"})
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not all_finite({"hands": [{"transl": [0.0, bad]}]})


def test_openapi_describes_the_request_bodies(http) -> None:
    """/openapi.json gives each POST its body: multipart fields with types and the limits the
    server enforces (boxes, focal range, enums), JSON and urlencoded job bodies."""
    from backend.options import MAX_FOCAL, MIN_FOCAL, SIDES

    doc = http.get("/openapi.json").json()
    predict = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    form = predict["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    assert form["properties"]["box"]["maxItems"] == MAX_BOXES
    focal = form["properties"]["focal"]
    assert (focal["minimum"], focal["maximum"]) == (MIN_FOCAL, MAX_FOCAL)
    assert form["properties"]["side"]["enum"] == list(SIDES)
    jobs = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(jobs) == {
        "multipart/form-data",
        "application/json",
        "application/x-www-form-urlencoded",
    }
    assert "path" in jobs["application/json"]["schema"]["properties"]
    errors = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"403", "413", "421", "422", "429"} <= set(errors)
    assert http.get("/docs").status_code == 404  # no pages that load scripts from the web
