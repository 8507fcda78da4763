"""The Blender extension's bpy-free core under plain pytest: conversions, payloads, HTTP client,
backend process. References are independent of the code under test: scipy's rotations, a plain
pinhole projection, the backend's own rig encoder, a stdlib HTTP server. Never imports bpy.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hamr_blender.io import backend_process, client, convert, orientation, payload

RNG = np.random.default_rng(1234)


def test_pure_modules_do_not_import_bpy_or_torch() -> None:
    import subprocess

    code = (
        "import sys; import hamr_blender, hamr_blender.io.client, hamr_blender.io.convert, "
        "hamr_blender.io.payload, hamr_blender.io.backend_process, hamr_blender.io.orientation; "
        "bad = [m for m in ('bpy', 'torch', 'mathutils') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_read_and_applied_like_pillow(fmt: str, tmp_path) -> None:
    """Files Pillow writes with each orientation tag: the tag read back, and the stored pixels
    turned upright equal to the image the backend decodes (`backend.media.image.load_image`,
    Pillow's decoder and ImageOps.exif_transpose), which is what its prediction is for.
    Blender shows the stored pixels of all four formats as they are (checked with bpy 5.0)."""
    import io

    from PIL import Image

    from backend.media.image import load_image

    stored = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # not square: turns show
    for tag in range(1, 9):
        exif = Image.Exif()
        exif[orientation.ORIENTATION_TAG] = tag
        buf = io.BytesIO()
        extra = {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(stored).save(buf, format=fmt, exif=exif, **extra)
        data = buf.getvalue()
        assert orientation.exif_orientation(data) == tag, (fmt, tag)
        backend_image, _ = load_image(data)
        raw = stored
        if fmt == "JPEG":  # lossy: the pixels as Pillow decodes them, before any turn
            with Image.open(io.BytesIO(data)) as im:
                raw = np.asarray(im.convert("RGB"))
        got = orientation.upright(raw, tag)
        assert got.shape == backend_image.shape, (fmt, tag)
        assert np.array_equal(got, backend_image), (fmt, tag)
        assert (got.shape[0] != stored.shape[0]) == (tag in orientation.SWAPS_SIDES)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(data)
    assert orientation.file_orientation(str(path)) == 8
    assert orientation.file_orientation(str(tmp_path / "missing.jpg")) == 1


def test_heif_photos_are_told_apart_like_the_backend_does(tmp_path) -> None:
    """is_heif (Blender cannot read these; the extension asks the backend) agrees with the
    backend's own test on a HEIC that pillow-heif writes and on other formats."""
    import io

    from PIL import Image

    from backend.media.image import HEIF_BRANDS, is_heif

    pillow_heif = pytest.importorskip("pillow_heif", reason="make setup installs pillow-heif")
    pillow_heif.register_heif_opener()
    samples = {}
    for fmt in ("HEIF", "JPEG", "PNG"):
        buf = io.BytesIO()
        Image.new("RGB", (16, 12), (200, 120, 90)).save(buf, format=fmt)
        samples[fmt] = buf.getvalue()
    for fmt, data in samples.items():
        assert orientation.is_heif(data) == is_heif(data) == (fmt == "HEIF"), fmt
    path = tmp_path / "photo.heic"
    path.write_bytes(samples["HEIF"])
    assert orientation.is_heif(orientation.file_head(str(path)))
    assert orientation.file_head(str(tmp_path / "missing.heic")) == b""
    assert orientation.HEIF_BRANDS == HEIF_BRANDS


def test_exif_orientation_without_a_tag_or_with_damage() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6)).save(buf, format="JPEG")  # no EXIF at all
    plain = buf.getvalue()
    assert orientation.exif_orientation(plain) == 1
    exif = Image.Exif()
    exif[orientation.ORIENTATION_TAG] = 6
    buf = io.BytesIO()
    Image.new("RGB", (8, 6)).save(buf, format="JPEG", exif=exif)
    tagged = buf.getvalue()
    assert orientation.exif_orientation(tagged) == 6
    # cut anywhere, garbage, another format, nothing: "as stored", never an exception
    for cut in range(0, len(tagged), 7):
        assert orientation.exif_orientation(tagged[:cut]) in (1, 6)
    assert orientation.exif_orientation(b"GIF89a" + bytes(40)) == 1
    assert orientation.exif_orientation(b"") == 1
    assert orientation.exif_orientation(bytes(RNG.integers(0, 256, 500, dtype=np.uint8))) == 1


# ------------------------------------------------------------------------------ frames, rotations
def test_model_to_blender_is_a_rotation_and_round_trips() -> None:
    m = convert.MODEL_TO_BLENDER
    assert np.allclose(m @ m.T, np.eye(3)) and np.isclose(np.linalg.det(m), 1.0)
    # OpenCV/model axes: y down -> Blender -Z, z forward -> Blender +Y
    assert np.allclose(convert.model_to_blender([0, 1, 0]), [0, 0, -1])
    assert np.allclose(convert.model_to_blender([0, 0, 1]), [0, 1, 0])
    p = RNG.normal(size=(50, 3))
    assert np.allclose(convert.blender_to_model(convert.model_to_blender(p)), p)


def test_axis_angle_to_matrix_matches_scipy() -> None:
    aa = np.concatenate([RNG.normal(size=(200, 3)), np.zeros((1, 3)), [[1e-9, 0, 0]]])
    assert np.allclose(
        convert.axis_angle_to_matrix(aa), Rotation.from_rotvec(aa).as_matrix(), atol=1e-12
    )


def test_matrix_quaternion_round_trip_including_near_pi() -> None:
    rots = Rotation.random(300, random_state=3)
    near_pi = Rotation.from_rotvec(
        RNG.normal(size=(20, 3)) * 0 + np.array([[0, 0, math.pi - 1e-7], [math.pi, 0, 0]] * 10)
    )
    for r in (rots, near_pi):
        m = r.as_matrix()
        q = convert.matrix_to_quaternion(m)
        assert np.allclose(np.linalg.norm(q, axis=-1), 1.0)
        assert np.allclose(convert.quaternion_to_matrix(q), m, atol=1e-9)
        ref = r.as_quat()[:, [3, 0, 1, 2]]  # scipy is (x, y, z, w)
        assert np.allclose(np.abs(np.sum(q * ref, axis=-1)), 1.0, atol=1e-9)


def test_quaternion_continuity_flips_signs_only() -> None:
    # a smooth rotation track with random sign flips, (N, 3 bones, 4)
    t = np.linspace(0, 3, 60)[:, None]
    aa = np.stack([t * [1.0, 0.2, 0], t * [0, 1.0, 0.3], t * [0.5, 0.5, 0.5]], axis=1)
    q = convert.matrix_to_quaternion(convert.axis_angle_to_matrix(aa))
    q *= RNG.choice([-1.0, 1.0], size=q.shape[:2])[..., None]
    q[0] *= -np.sign(q[0, :, :1])  # every first quaternion with w < 0
    fixed = convert.quaternion_continuity(q)
    assert np.all(fixed[0, :, 0] >= 0)  # the first key turns the short way (issue #22)
    assert np.all(np.sum(fixed[1:] * fixed[:-1], axis=-1) >= 0)
    assert np.allclose(np.abs(np.sum(fixed * q, axis=-1)), 1.0)  # same rotations
    assert np.allclose(convert.quaternion_to_matrix(fixed), convert.quaternion_to_matrix(q))


def test_bone_local_rotations_reproduce_the_model_rotation() -> None:
    pose = RNG.normal(0, 0.8, size=(16, 3))
    rest = Rotation.random(16, random_state=5).as_matrix()  # any bone rest frames
    q = convert.bone_local_rotations(pose, rest)
    r_bone = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()
    m = convert.MODEL_TO_BLENDER
    # C R_bone C^T is the joint's rotation in the Blender frame, M R M^T
    got = rest @ r_bone @ np.swapaxes(rest, 1, 2)
    assert np.allclose(got, m @ Rotation.from_rotvec(pose).as_matrix() @ m.T, atol=1e-12)


def test_corrective_driver_expressions_give_R_minus_I() -> None:
    rest = Rotation.random(4, random_state=7).as_matrix()
    pose = RNG.normal(0, 1.0, size=(4, 3))
    q = convert.bone_local_rotations(pose, rest)
    for j in range(4):
        exprs = convert.corrective_driver_expressions(rest[j])
        assert len(exprs) == 9
        want = (Rotation.from_rotvec(pose[j]).as_matrix() - np.eye(3)).ravel()
        for scale in (1.0, 1.7):  # a non-normalised quaternion gives the same rotation
            w, x, y, z = q[j] * scale
            got = [eval(e, {"__builtins__": {}}, dict(w=w, x=x, y=y, z=z)) for e in exprs]
            assert np.allclose(got, want, atol=1e-7)
        # only arithmetic and the four variables: Blender's Python-free "simple expressions"
        assert all(set(e) <= set("wxyz0123456789.+-*/() ") for e in exprs)


# ------------------------------------------------------------------------------ camera
@pytest.mark.parametrize("size", [(640, 480), (334, 512), (1000, 1000)])
def test_camera_K_to_blender_and_back(size: tuple[int, int]) -> None:
    w, h = size
    K = np.array([[900.0, 0, 0.45 * w], [0, 900.0, 0.58 * h], [0, 0, 1]])
    cam = convert.opencv_camera_to_blender(K, w, h, camera_location_world=(0.1, -0.2, 0.3))
    assert cam.sensor_fit == "HORIZONTAL" and (cam.resolution_x, cam.resolution_y) == (w, h)
    assert np.allclose(convert.blender_camera_to_K(cam), K)
    assert np.isclose(cam.lens_mm, 900.0 * cam.sensor_width_mm / w)


def test_blender_camera_projection_equals_opencv_pinhole() -> None:
    w, h = 334, 512
    K = np.array([[612.0, 0, 160.0], [0, 612.0, 270.0], [0, 0, 1]])
    cam_loc = np.array([0.3, -1.0, 0.2])
    cam = convert.opencv_camera_to_blender(K, w, h, camera_location_world=cam_loc)
    pts_cv = RNG.uniform([-0.1, -0.1, 0.3], [0.1, 0.1, 0.8], size=(30, 3))  # OpenCV frame
    uv_ref = pts_cv @ K.T
    uv_ref = uv_ref[:, :2] / uv_ref[:, 2:]
    world = cam_loc + convert.model_to_blender(pts_cv)
    assert np.allclose(convert.project_blender_camera(cam, world), uv_ref, atol=1e-9)
    # the camera's local axes: OpenCV frame via diag(1, -1, -1)
    rot = np.asarray(cam.matrix_world)[:3, :3]
    assert np.allclose(rot, convert.MODEL_TO_BLENDER @ np.diag([1.0, -1.0, -1.0]))
    assert np.allclose(rot @ [0, 0, -1], [0, 1, 0])  # looks along world +Y


def test_camera_rejects_bad_intrinsics() -> None:
    good = np.array([[500.0, 0, 100], [0, 500.0, 80], [0, 0, 1]])
    with pytest.raises(ValueError, match="non-square"):
        convert.opencv_camera_to_blender(good * [[1, 1, 1], [1, 1.2, 1], [1, 1, 1]], 200, 160)
    skew = good.copy()
    skew[0, 1] = 3.0
    with pytest.raises(ValueError, match="skew"):
        convert.opencv_camera_to_blender(skew, 200, 160)
    with pytest.raises(ValueError, match="size"):
        convert.opencv_camera_to_blender(good, 0, 160)


def test_canonical_quaternion_has_w_non_negative() -> None:
    q = np.array([[-0.6, 0.0, 0.8, 0.0], [0.6, 0.0, 0.8, 0.0], [-0.0, 1.0, 0.0, 0.0]])
    assert np.allclose(convert.canonical_quaternion(q), [[0.6, 0, -0.8, 0], q[1], q[2]])


def test_euler_xyz_matches_scipy_and_stays_continuous() -> None:
    r = Rotation.random(200, random_state=3)
    e = convert.matrix_to_euler_xyz(r.as_matrix())
    # Blender's 'XYZ' is R = Rz Ry Rx: scipy's extrinsic "xyz"
    assert np.allclose(Rotation.from_euler("xyz", e).as_matrix(), r.as_matrix(), atol=1e-9)
    lock = Rotation.from_euler("xyz", [0.3, np.pi / 2, 0.2]).as_matrix()
    assert np.allclose(
        Rotation.from_euler("xyz", convert.matrix_to_euler_xyz(lock)).as_matrix(), lock, atol=1e-7
    )
    # a joint turning steadily past +-180 degrees about x, and through y = 90 degrees
    t = np.linspace(0.0, 1.0, 80)
    angles = np.stack([0.2 + 5.0 * t, 1.9 * np.sin(3 * t), 0.5 - 4.0 * t], axis=-1)
    mats = Rotation.from_euler("xyz", angles).as_matrix()
    raw = convert.matrix_to_euler_xyz(mats)
    assert np.abs(np.diff(raw, axis=0)).max() > 3.0  # the raw angles jump by a turn
    fixed = convert.euler_continuity(raw)
    assert np.allclose(Rotation.from_euler("xyz", fixed).as_matrix(), mats, atol=1e-9)
    assert np.abs(np.diff(fixed, axis=0)).max() < 0.3  # steps of the motion itself


def test_scene_frame_mapping() -> None:
    assert [convert.scene_frame(i, 30.0, 24.0, 1) for i in range(6)] == [1, 2, 3, 3, 4, 5]
    # by time: 30 fps into 24 fps, video frame i at scene frame 1 + 0.8 i (none dropped)
    assert np.allclose(
        convert.scene_frame_times(np.arange(6), 30.0, 24.0, 1), [1, 1.8, 2.6, 3.4, 4.2, 5]
    )
    assert np.allclose(convert.scene_frame_times([0, 1, 4], 24.0, 30.0, 10), [10, 11.25, 15])
    # the clip frame shown at each scene frame: the one whose time is nearest
    # (held at the last frame, 5 here, once the clip has ended)
    assert [convert.clip_frame_at(f, 30.0, 24.0, 1, 5) for f in range(0, 8)] == [
        0,
        0,
        1,
        3,
        4,
        5,
        5,
        5,
    ]
    assert [convert.clip_frame_at(f, 24.0, 30.0, 1, 9) for f in range(1, 7)] == [0, 1, 2, 2, 3, 4]
    expr = convert.clip_offset_expression(30.0, 24.0, 1, 5)
    names = {"floor": math.floor, "min": min, "max": max}
    offsets = [eval(expr, {**names, "frame": f}) for f in range(1, 8)]  # noqa: S307
    assert [f - 1 + o for f, o in zip(range(1, 8), offsets, strict=True)] == [0, 1, 3, 4, 5, 5, 5]
    assert convert.scene_rate(29.97) == (30, pytest.approx(30 / 29.97))
    assert convert.scene_rate(24.0) == (24, 1.0)
    assert convert.scene_frame(10, 25.0, 25.0, 100) == 110
    with pytest.raises(ValueError):
        convert.scene_frame(1, 0.0, 24.0, 1)


# ------------------------------------------------------------------------------ payloads
@pytest.fixture(scope="module")
def rig_doc() -> dict:
    from backend.schema import rig_json as rig_data

    return rig_data("right")


def test_parse_rig_decodes_like_the_backend(rig_doc: dict) -> None:
    from backend.schema import decode_array

    rig = payload.parse_rig(rig_doc)
    assert rig.side == "right" and len(rig.joint_names) == 16 and rig.joint_names[0] == "wrist"
    assert np.array_equal(rig.v_template, decode_array(rig_doc["v_template"]))
    assert np.array_equal(rig.faces, decode_array(rig_doc["faces"]))
    assert rig.pose_correctives_zero == rig_doc["pose_correctives_zero"]
    beta = RNG.normal(size=10)
    j = rig.joints(beta)
    ref = decode_array(rig_doc["joints_rest"]) + np.einsum(
        "jcl,l->jc", decode_array(rig_doc["joints_shapedirs"]), beta
    )
    assert np.allclose(j, ref)


def test_parse_rig_errors_name_the_field(rig_doc: dict) -> None:
    bad = dict(rig_doc, schema="hamr.rig/0")
    with pytest.raises(payload.PayloadError, match="schema"):
        payload.parse_rig(bad)
    bad = {k: v for k, v in rig_doc.items() if k != "weights"}
    with pytest.raises(payload.PayloadError, match="weights"):
        payload.parse_rig(bad)
    bad = dict(rig_doc, faces=dict(rig_doc["faces"], data="***"))
    with pytest.raises(payload.PayloadError, match="faces.*base64"):
        payload.parse_rig(bad)
    bad = dict(rig_doc, joints_rest=dict(rig_doc["joints_rest"], shape=[15, 3]))
    with pytest.raises(payload.PayloadError, match="joints_rest"):
        payload.parse_rig(bad)


def _hand(side: str = "right", track: int | None = None, shift: float = 0.0) -> dict:
    K = [[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]]
    joints = RNG.uniform(-0.05, 0.05, size=(21, 3)) + [0, 0, 0.5]
    uv = joints @ np.array(K).T
    hand = {
        "side": side,
        "score": 0.9,
        "box_xyxy": [10, 10, 100, 100],
        "pose_axis_angle": (RNG.normal(0, 0.3, size=(16, 3)) + shift).tolist(),
        "betas": RNG.normal(size=10).tolist(),
        "cam_weak": [1.0, 0.0, 0.0],
        "camera": {"K": K},
        "transl": [0.01, 0.02, 0.5],
        "joints3d_cam": joints.tolist(),
        "keypoints2d": (uv[:, :2] / uv[:, 2:]).tolist(),
    }
    if track is not None:
        hand["track"] = track
    return hand


def _prediction(hands: list[dict]) -> dict:
    return {
        "schema": "hamr.prediction/1",
        "image": {"width": 320, "height": 240},
        "model": {"checkpoint": "x", "hand_model": "m"},
        "hands": hands,
    }


def test_parse_prediction_valid_and_invalid() -> None:
    pred = payload.parse_prediction(_prediction([_hand(), _hand("left")]))
    assert (pred.width, pred.height, len(pred.hands)) == (320, 240, 2)
    assert pred.hands[1].side == "left" and pred.hands[0].pose_axis_angle.shape == (16, 3)
    broken = _hand()
    broken["betas"] = broken["betas"][:9]
    with pytest.raises(payload.PayloadError, match=r"hands\[0\]\.betas"):
        payload.parse_prediction(_prediction([broken]))
    broken = _hand()
    broken["transl"] = [0, float("nan"), 1]
    with pytest.raises(payload.PayloadError, match="NaN"):
        payload.parse_prediction(_prediction([broken]))
    with pytest.raises(payload.PayloadError, match="side"):
        payload.parse_prediction(_prediction([_hand("both")]))
    with pytest.raises(payload.PayloadError, match="image"):
        payload.parse_prediction({**_prediction([]), "image": {"width": 0, "height": 3}})
    with pytest.raises(payload.PayloadError, match="prediction"):
        payload.parse_prediction([1, 2])


def test_video_tracks_group_by_track_and_side() -> None:
    frames = []
    for i in range(6):
        hands = [_hand("right", track=0, shift=0.01 * i)]
        if i < 4:  # track 0 fitted to landmarks on four frames
            hands[0]["fit"] = {"landmarks": "mediapipe", "rms_px_before": 9.0, "rms_px_after": 2.0}
        if i % 2 == 0:
            hands.append(_hand("left" if i else "right", track=1))  # track 1: mostly left
        frames.append({"index": 5 - i, "hands": hands})  # out of order on purpose
    video = payload.parse_video({"schema": "hamr.video/1", "fps": 30.0, "frames": frames})
    assert [i for i, _ in video.frames] == list(range(6))
    tracks = payload.video_tracks(video)
    assert [t.track for t in tracks] == [0, 1]
    assert tracks[0].side == "right" and list(tracks[0].frame_indices) == list(range(6))
    assert tracks[1].side == "left" and len(tracks[1].frame_indices) == 2  # the right one dropped
    assert tracks[0].pose_axis_angle.shape == (6, 16, 3) and tracks[0].shape_betas.shape == (10,)
    assert (tracks[0].fitted_frames, tracks[1].fitted_frames) == (4, 0)
    with pytest.raises(payload.PayloadError, match="fps"):
        payload.parse_video({"schema": "hamr.video/1", "fps": -1, "frames": []})
    assert payload.image_size_from_K(np.array(_hand()["camera"]["K"])) == (320, 240)


# ------------------------------------------------------------------------------ HTTP client
class _Handler(BaseHTTPRequestHandler):
    """A stand-in backend: echoes multipart uploads, fails on demand, runs one fake job."""

    jobs: dict[str, dict] = {}
    deleted: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: object, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def do_GET(self) -> None:
        if self.path == "/v1/health":
            self._send(200, {"status": "ok", "auth": self.headers.get("Authorization")})
        elif self.path == "/v1/slow":
            time.sleep(1.5)
            self._send(200, {})
        elif self.path == "/v1/html":
            self._send(200, None, raw=b"<html>hello</html>")
        elif self.path.startswith("/v1/jobs/"):
            job_id = self.path.split("/")[3]
            job = self.jobs[job_id]
            if self.path.endswith("/result"):
                self._send(200, {"schema": "hamr.video/1", "fps": 10.0, "frames": []})
                return
            job["polls"] += 1
            done = job["polls"] >= 3 and not job.get("hold")
            self._send(
                200,
                {
                    "id": job_id,
                    "state": "done" if done else "running",
                    "progress": 1.0 if done else 0.3,
                    "frames_done": 3,
                    "frames_total": 10,
                },
            )
        else:
            self._send(404, {"error": {"code": "not_found", "message": "no route"}})

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        fields, files = {}, {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                files[name] = [part.get_filename(), len(part.get_payload(decode=True))]
            else:
                fields[name] = part.get_content().strip()
        if self.path == "/v1/predict":
            if fields.get("side") == "bad":
                self._send(422, {"error": {"code": "bad_option", "message": "side is bad"}})
            else:
                self._send(200, {"fields": fields, "files": files})
        elif self.path == "/v1/jobs":
            job_id = f"job{len(self.jobs)}"
            self.jobs[job_id] = {"polls": 0, "hold": fields.get("side") == "left"}
            self._send(202, {"id": job_id, "fields": fields})
        else:
            self._send(404, {"error": {"code": "not_found", "message": "no route"}})

    def do_DELETE(self) -> None:
        job_id = self.path.split("/")[3]
        self.deleted.append(job_id)
        self._send(200, {"id": job_id, "state": "cancelled"})


@pytest.fixture(scope="module")
def fake_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_describe_stored_records() -> None:
    fit = {
        "rms_px_before": 31.04,
        "rms_px_after": 4.96,
        "signals": ["mediapipe_2d", "mediapipe_3d", "network"],
        "network_weight": 0.029,
    }
    hand = {"side": "left", "score": 0.8123, "fit": fit}
    doc = {"schema": "hamr.prediction/1", "detector": "mediapipe", "hands": [hand]}
    assert payload.describe(doc) == [
        "Left hand, confidence 0.81",
        "Found by MediaPipe Hands",
        "Fitted to landmarks: 31.0 -> 5.0 px",
        "Signals: MediaPipe 2D, MediaPipe 3D, network",
        "Network weight 0.03",
    ]
    plain = {"schema": "hamr.prediction/1", "detector": None, "hands": [{**hand, "fit": None}]}
    assert payload.describe(plain)[1:] == [
        "Box given",
        "Not fitted to landmarks (the network's hand)",
    ]
    video = {"schema": "hamr.video/1", "fps": 29.97, "track": 1, "frames": 40, "fitted_frames": 38}
    video["score"] = 0.256
    assert payload.describe(video) == [
        "Video track 1, 29.97 fps",
        "Median confidence 0.26",
        "Fitted to landmarks on 38 of 40 frames",
    ]
    for damaged in (None, [], {"schema": "x"}, {"schema": "hamr.prediction/1", "hands": []}):
        assert len(payload.describe(damaged)) == 1


def test_client_unreachable_backend_has_a_clear_message() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    c = client.HamrClient(url, timeout=2.0)
    with pytest.raises(client.BackendUnreachable) as info:
        c.health()
    msg = str(info.value)
    assert url in msg and "connection refused" in msg and "hamr serve" in msg
    assert not c.is_ready()


def test_client_urls() -> None:
    assert client.normalize_url("127.0.0.1:8734/") == "http://127.0.0.1:8734"
    assert client.is_loopback("http://localhost:1") and not client.is_loopback("http://10.0.0.2")
    with pytest.raises(ValueError, match="empty"):
        client.normalize_url(" ")
    with pytest.raises(ValueError, match="HOST:PORT"):
        client.normalize_url("ftp://x")


def test_client_multipart_upload_errors_and_token(fake_backend: str, tmp_path) -> None:
    c = client.HamrClient(fake_backend, token="s3cret")
    assert c.health()["auth"] == "Bearer s3cret"
    img = tmp_path / "hand photo.jpg"
    img.write_bytes(bytes(range(256)) * 40)
    out = c.predict(img, side="left", box=(1, 2, 30.5, 40), focal=812.5)
    assert out["files"]["image"] == ["hand photo.jpg", 256 * 40]
    assert out["fields"] == {"side": "left", "box": "1,2,30.5,40", "focal": "812.5"}
    out = c.predict(b"\x89PNG....", filename="x.png")
    assert out["files"]["image"] == ["x.png", 8]
    assert "refine" not in out["fields"]  # None: the backend's own setting
    assert c.predict(img, refine=False)["fields"]["refine"] == "off"
    assert c.predict(img, refine=True, detector="hamr")["fields"] == {
        "side": "auto",
        "refine": "auto",
        "detector": "hamr",
    }
    with pytest.raises(client.BackendError) as info:
        c.predict(img, side="bad")
    assert info.value.status == 422 and info.value.code == "bad_option"
    assert "side is bad" in str(info.value)
    with pytest.raises(client.BackendError) as info:
        c.request("GET", "/v1/nothing")
    assert info.value.status == 404
    with pytest.raises(client.BackendError, match="not JSON"):
        c.request("GET", "/v1/html")
    with pytest.raises(client.BackendUnreachable, match="did not answer"):
        c.request("GET", "/v1/slow", timeout=0.3)
    with pytest.raises(client.BackendError, match="not found"):
        c.predict(tmp_path / "missing.jpg")


def test_video_job_polls_to_done_and_cancel_deletes(fake_backend: str, tmp_path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 1000)
    c = client.HamrClient(fake_backend)
    job = client.VideoJob(c, clip, side="right", smoothing=0.25, poll_interval=0.05).start()
    job.join(10)
    assert job.state == "done" and job.result["schema"] == "hamr.video/1"
    assert job.upload is False  # loopback: the backend reads the file itself
    held = client.VideoJob(c, clip, side="left", poll_interval=0.05).start()
    deadline = time.time() + 5
    while held.state != "running" and time.time() < deadline:
        time.sleep(0.02)
    assert held.state == "running" and 0 < held.progress < 1 and "3/10" in held.message
    held.cancel()
    held.join(5)
    assert held.state == "cancelled" and held.job_id in _Handler.deleted
    dead = client.VideoJob(client.HamrClient(f"http://127.0.0.1:{_closed_port()}"), clip)
    dead.start().join(5)
    assert dead.state == "failed" and "Cannot reach" in dead.message


def test_job_progress() -> None:
    assert client.job_progress({"progress": 0.25}) == 0.25
    assert client.job_progress({"progress": 50}) == 0.5
    assert client.job_progress({"progress": {"done": 1, "total": 4}}) == 0.25
    assert client.job_progress({}) == 0.0


def test_job_message() -> None:
    assert client.job_message({"state": "running", "frames_done": 3, "frames_total": 10}) == (
        "frame 3/10"
    )
    fitting = {"state": "running", "stage": "fitting", "frames_done": 10, "frames_total": 10}
    assert client.job_message({**fitting, "fit_done": 4, "fit_total": 20}) == (
        "fitting to landmarks: frame 4/20"
    )
    assert client.job_message({"state": "queued", "frames_done": 0, "frames_total": 0}) == "queued"


# ------------------------------------------------------------------------------ backend process
def test_build_command(tmp_path) -> None:
    argv = backend_process.build_command("http://127.0.0.1:9001", "hamr serve")
    assert argv == ["hamr", "serve", "--host", "127.0.0.1", "--port", "9001"]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    argv = backend_process.build_command("localhost:9002", python=str(venv), checkpoint="c.st")
    assert argv[:4] == [str(venv / "bin" / "python"), "-m", "backend.cli", "serve"]
    assert argv[-4:] == ["--port", "9002", "--checkpoint", "c.st"]
    argv = backend_process.build_command("http://127.0.0.1:1", "hamr serve --port 5")
    assert argv.count("--port") == 1
    with pytest.raises(backend_process.BackendStartError, match="not on this machine"):
        backend_process.build_command("http://192.0.2.1:8734")
    with pytest.raises(backend_process.BackendStartError, match="does not exist"):
        backend_process.build_command("http://127.0.0.1:1", python=str(tmp_path / "nope"))


FAKE_SERVER = """
import sys, json
from http.server import BaseHTTPRequestHandler, HTTPServer
port = int(sys.argv[sys.argv.index('--port') + 1])
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({'status': 'ok'}).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
print('fake backend up', flush=True)
HTTPServer(('127.0.0.1', port), H).serve_forever()
"""


def test_backend_process_start_wait_stop(tmp_path) -> None:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    url = f"http://127.0.0.1:{_closed_port()}"
    proc = backend_process.BackendProcess()
    proc.start(url, tmp_path / "logs", command=f"{sys.executable} {script}")
    proc.wait_ready(timeout=20)
    assert proc.running and proc.poll() == "ready"
    code = proc.stop()
    assert not proc.running and code is not None
    assert "fake backend up" in backend_process.log_tail(tmp_path / "logs" / "backend.log")


def test_backend_process_reports_why_it_failed(tmp_path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    proc = backend_process.BackendProcess()
    proc.start(
        url,
        tmp_path,
        command=f"{sys.executable} -c \"print('no model here'); raise SystemExit(3)\"",
    )
    with pytest.raises(backend_process.BackendStartError, match="(?s)code 3.*no model here"):
        proc.wait_ready(timeout=20)
    with pytest.raises(backend_process.BackendStartError, match="was not found"):
        proc.start(url, tmp_path, command="hamr-no-such-program serve")


def test_client_refuses_urls_http_client_cannot_send() -> None:
    """A space in the backend URL (a typo in the preferences) raised http.client.InvalidURL,
    which no operator caught: now a ValueError when the client is made."""
    for url in ("http://127.0.0.1:8734 ", "http://127.0.0.1 :8734", "http://local host:1"):
        with pytest.raises(ValueError, match="spaces"):
            client.HamrClient(url + "/x" if url.endswith(" ") else url)
    with pytest.raises(ValueError, match="not valid"):
        client.normalize_url("http://127.0.0.1:99999")
    with pytest.raises(ValueError, match="spaces"):
        client.normalize_url("http://127.0.0.1:8734/\x01")


# ------------------------------------------------------------------------------ rig anatomy (#22)
@pytest.mark.parametrize("side", ["right", "left"])
def test_digit_axes_are_the_backends(side: str) -> None:
    """The extension's numpy copy of the flexion / spread axes against the backend's torch code
    (backend.hand_model.poses), on a shaped hand."""
    import torch

    from backend.hand_model.poses import digit_axes
    from backend.schema import rig_json
    from hamr_blender.io import convert, payload

    rig = payload.parse_rig(rig_json(side))
    joints = rig.joints(np.random.default_rng(0).normal(size=10))
    ours = convert.digit_axes(joints, side)
    theirs = digit_axes(torch.tensor(joints), side)
    for digit, (flex, spread) in theirs.items():
        assert np.allclose(ours[digit][0], flex.numpy(), atol=1e-9), digit
        assert np.allclose(ours[digit][1], spread.numpy(), atol=1e-9), digit


def test_rig_tables_are_the_backends() -> None:
    """The extension cannot import the backend or training (no torch in Blender): its copies of
    the digits' joints and the pose prior's ranges of motion are pinned here."""
    from backend.hand_model.poses import DIGIT_JOINTS
    from hamr_blender.io import convert
    from training.synth.prior import LIMITS_DEG

    assert convert.LIMITS_DEG == LIMITS_DEG
    assert convert.DIGIT_JOINTS == DIGIT_JOINTS


@pytest.mark.parametrize("side", ["right", "left"])
def test_hand_uv_islands(side: str) -> None:
    """Every face in [0, 1], none seen from behind (positive UV area), the back of the hand
    (normal towards the model's +y) left of u = 0.5, the palm right of it."""
    from backend.schema import rig_json
    from hamr_blender.io import convert, payload

    rig = payload.parse_rig(rig_json(side))
    uv = convert.hand_uv(rig.v_template, rig.faces, side)
    assert uv.shape == rig.faces.shape + (2,) and uv.min() >= 0.0 and uv.max() <= 1.0
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    assert np.all(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0)
    p = rig.v_template[rig.faces]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    back = n[:, 1] >= 0  # the back of either hand faces the model's +y
    assert np.all(uv[back, :, 0] <= 0.5) and np.all(uv[~back, :, 0] >= 0.5)


def test_hamr_bone_names_pair_for_mirroring() -> None:
    from hamr_blender.io.bone_maps import BUILTIN_MAPS, hamr_bone_name

    assert hamr_bone_name("index1", "right") == "index1.R"
    assert hamr_bone_name("thumb4", "left") == "thumb4.L"
    hamr = BUILTIN_MAPS["HAMR"]
    assert hamr.bones("left")["wrist"] == "wrist.L" and hamr.bones("right")["pinky3"] == "pinky3.R"
