"""From a photo to hands: crop, run HAMR, place each hand in the full image's camera, build JSON.

`Predictor` holds one loaded network (the shipped checkpoint by default) and turns an RGB image
into a `hamr.prediction/1` dict (DESIGN.md). Steps, each a function below:

1. hands: the user's boxes (`--box`), or `detect.detect_hands` (MediaPipe Hands or the network
   as the detector; each found hand comes with its side);
2. side: `right` / `left` as asked or as the detector found it; for a user's box with `auto`,
   the handedness of the MediaPipe hand that overlaps it, else the crop and its mirror image both
   go through the network, and the side whose heat-maps peak higher wins;
3. crop (backend.crop, as in training), left crops mirrored into right hands, the network;
4. camera: K from `--focal`, else the EXIF 35 mm-equivalent focal length, else a 60 degree
   horizontal field of view on the longer image side (`default_focal`); the crop's weak camera
   gives a first translation, refined by a linear least-squares perspective fit of the 3D
   keypoints to the network's 2D keypoints in the image; then `keypoints2d` is, by construction,
   the projection of `joints3d_cam` with K;
5. left hands: results mirrored back (axis-angle (x, -y, -z), points x -> -x) into the left
   model's parameters.

Imports torch, numpy, PIL and the backend; never bpy or the training package.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from backend.crop import CROP_SIZE, box_side, crop_image, points_from_crop, square_crop
from backend.hand_model.model import HandModel, mirror_pose
from backend.network.camera import normalized_to_pixels, weak_to_full_translation
from backend.network.checkpoint import load_checkpoint

SCHEMA = "hamr.prediction/1"
DEFAULT_HFOV_DEG = 60.0  # horizontal field of view assumed for the longer side without --focal
DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parent / "assets" / "checkpoints" / "hamr_light.safetensors"
)
MAX_IMAGE_PIXELS = 80_000_000  # refuse larger images (decompression bombs)


class InputError(ValueError):
    """Bad input from the user (unreadable image, bad option); the message says what to fix."""


# ISO base media "ftyp" brands of HEIF still images (phones' HEIC photos)
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"hevc", b"hevx"})
_heif_ready: bool | None = None


def is_heif(head: bytes) -> bool:
    """Whether encoded bytes (their first 12 are enough) are a HEIF/HEIC image."""
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def enable_heif() -> bool:
    """Let Pillow open HEIF/HEIC photos through pillow-heif, when it is installed (make setup
    installs it); whether it is."""
    global _heif_ready
    if _heif_ready is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_ready = True
        except ImportError:
            _heif_ready = False
    return _heif_ready


def require_heif_reader(head: bytes) -> None:
    """Raise InputError, naming what is missing, for a HEIF/HEIC image (by its first 12 bytes)
    when pillow-heif is not installed; make Pillow able to open it otherwise."""
    if is_heif(head) and not enable_heif():
        raise InputError(
            "this is a HEIF/HEIC photo, and reading it needs the pillow-heif package (make setup "
            "installs it; by hand: pip install pillow-heif), or export the photo as JPEG"
        )


def load_image(data: bytes | str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Decode an image (path or bytes) -> (H, W, 3) uint8 RGB and its EXIF 35 mm-equivalent focal
    length in mm (None when absent). EXIF orientation is applied. HEIF/HEIC photos need the
    pillow-heif package. Raises InputError."""
    if isinstance(data, (bytes, bytearray)):
        head = bytes(data[:12])
    else:
        try:
            with open(data, "rb") as fh:
                head = fh.read(12)
        except OSError as e:
            raise InputError(f"cannot read the image: {e}") from e
    require_heif_reader(head)
    try:
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        with Image.open(src) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise InputError(f"image too large ({im.width}x{im.height} pixels)")
            exif = im.getexif()
            f35 = exif.get_ifd(0x8769).get(0xA405) if exif else None
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit, 32-bit or float grey
                # values in [0, 1] (float images) as they are, larger ones by the brightest
                arr = np.nan_to_num(np.asarray(im, dtype=np.float64)).clip(0, None)
                arr = (arr / max(arr.max(), 1) * 255).astype(np.uint8)
                im = Image.fromarray(arr)
            rgb = np.asarray(im.convert("RGB"))
    except InputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise InputError(f"cannot read the image: {e}") from e
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise InputError(f"image too small ({rgb.shape[1]}x{rgb.shape[0]}); need at least 8x8")
    return rgb, (float(f35) if f35 else None)


def default_focal(width: int, height: int, exif_f35_mm: float | None = None) -> float:
    """Focal length in pixels: from the EXIF 35 mm equivalent (36 mm spans the longer side), else
    a DEFAULT_HFOV_DEG field of view across the longer side."""
    longer = max(width, height)
    if exif_f35_mm and exif_f35_mm > 0:
        return exif_f35_mm / 36.0 * longer
    return longer / (2 * math.tan(math.radians(DEFAULT_HFOV_DEG) / 2))


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    """(3, 3) K with the principal point at the image centre (pixel-centre convention)."""
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)


def solve_translation(
    points: torch.Tensor, uv: torch.Tensor, K: torch.Tensor, init: torch.Tensor
) -> torch.Tensor:
    """Camera translation T (3,) minimising the perspective reprojection error of points (N, 3)
    (model frame, rotated) to pixels uv (N, 2) under K, in the linearised (DLT) sense:
    f (x + Tx) - (u - c)(z + Tz) = 0 per point and axis. Falls back to `init` when the system is
    ill-posed or puts the hand behind the camera.

    The least-squares solution in closed form: for a given Tz, each axis' rows give
    T_axis = mean(b_axis + d_axis Tz) / f_axis, and substituting that leaves
    Tz = -sum(d' * b') / sum(d'^2) over both axes, with d = u - c, b = d z - f x, and ' the
    deviation from the mean over the points. Computed in float64 from sums of products alone,
    so the result is bitwise the same every call: a LAPACK least-squares solve (MKL's) can
    differ in the last bits between calls on identical inputs, depending on where the arrays
    sit in memory, and the landmark fit started from the result magnifies that: the same clip
    gave hands 1e-4 m apart from one job to the next."""
    p, q = points.to(torch.float64), uv.to(torch.float64)
    k = K.to(torch.float64)
    f = torch.stack([k[0, 0], k[1, 1]])  # (2,)
    d = q - k[:2, 2]  # (N, 2)
    b = d * p[:, 2:3] - f * p[:, :2]  # (N, 2)
    d_mean, b_mean = d.mean(0), b.mean(0)
    dc, bc = d - d_mean, b - b_mean
    spread = dc.square().sum()  # pixels^2: zero when every point projects to one pixel
    if not torch.isfinite(spread) or spread <= 1e-9 * max(1, points.shape[0]):
        return init
    tz = -(dc * bc).sum() / spread
    txy = (b_mean + d_mean * tz) / f
    t = torch.cat([txy, tz[None]])
    if not torch.isfinite(t).all() or t[2] + p[:, 2].min() <= 1e-3:
        return init
    return t.to(dtype=points.dtype)


@dataclass
class HandRequest:
    """One hand to predict: its box (image pixels) and side ('right', 'left' or 'auto')."""

    box_xyxy: tuple[float, float, float, float]
    side: str = "auto"
    score: float = 1.0  # detector confidence when the box came from detection
    landmarks: np.ndarray | None = None  # (21, 2) image pixels, when the detector gave them


REFINE_MODES = ("auto", "off")
LANDMARK_MATCH_IOU = 0.3  # a MediaPipe hand gives its landmarks to a box it overlaps this much


def with_mediapipe(
    image: np.ndarray, hands: list[HandRequest], found: list[dict] | None = None
) -> list[HandRequest]:
    """The requests, each given MediaPipe's landmarks (and, where its side is "auto", MediaPipe's
    handedness) from the MediaPipe hand that best overlaps its box (IoU > LANDMARK_MATCH_IOU).
    MediaPipe runs once on the whole image, and only for requests without landmarks, unless its
    hands in this image are given as `found` (`detect_mediapipe.detect`'s list); a request it
    does not match is returned as it is (so are all, when MediaPipe is not installed)."""
    from backend import detect_mediapipe
    from backend.detect import iou

    if all(h.landmarks is not None for h in hands):
        return list(hands)
    if found is None:
        if not detect_mediapipe.available():
            return list(hands)
        found = detect_mediapipe.detect(image, max(2, len(hands)))
    used: set[int] = set()
    out = []
    for req in hands:
        overlaps = [(iou(req.box_xyxy, d["box_xyxy"]), k) for k, d in enumerate(found)]
        best = max((o for o in overlaps if o[1] not in used), default=(0.0, -1))
        if req.landmarks is None and best[0] > LANDMARK_MATCH_IOU:
            used.add(best[1])
            det = found[best[1]]
            side = det["side"] if req.side == "auto" else req.side
            req = HandRequest(req.box_xyxy, side, req.score, det["keypoints2d"])
        out.append(req)
    return out


class Predictor:
    """A loaded HAMR network plus both hand models; thread-safe for sequential use."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        mano_dir: str | os.PathLike | None = None,
        detector: str = "auto",
        refine: str = "auto",
    ) -> None:
        from backend.detect import check_detector

        self.detector = check_detector(detector)  # finds hands when no box is given
        if refine not in REFINE_MODES:
            raise InputError(f"refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
        self.refine = refine  # "auto": fit each hand to MediaPipe's landmarks when there are any
        self.checkpoint = Path(checkpoint or os.environ.get("HAMR_CHECKPOINT", DEFAULT_CHECKPOINT))
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but no CUDA device is available")
        self.device = torch.device(device)
        self.model, self.info = load_checkpoint(self.checkpoint, self.device, mano_dir=mano_dir)
        self.model.eval()
        source = self.model.config.hand_model
        self.hands = {
            "right": self.model.hand_model,
            "left": HandModel("left", source=source, mano_dir=mano_dir).to(self.device),
        }
        self.hand_model_id = self.info["hand_model_id"]

    # ------------------------------------------------------------------------- network
    @torch.no_grad()
    def run_crops(self, crops: np.ndarray):
        """crops (B, 256, 256, 3) uint8 right-hand crops -> HamrOutput."""
        x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255
        return self.model(x)

    @staticmethod
    def heatmap_confidence(output) -> torch.Tensor:
        """(B,) mean over keypoints of the final heat-maps' peak value (about 1 when confident)."""
        return output.heatmaps[-1].flatten(2).amax(dim=2).mean(dim=1).clamp(0, 1)

    # ------------------------------------------------------------------------- predict
    def predict(
        self,
        image: np.ndarray,
        hands: list[HandRequest] | None = None,
        focal: float | None = None,
        exif_f35_mm: float | None = None,
        side: str = "auto",
        detector: str | None = None,
        refine: bool | None = None,
    ) -> dict:
        """(H, W, 3) uint8 RGB -> prediction dict (`hamr.prediction/1`). Without `hands`, the
        hands are found by `detector` (None: this predictor's own setting). refine: fit each hand
        to MediaPipe's landmarks where it has them (`refine_hand`; None: this predictor's
        setting)."""
        if side not in ("auto", "right", "left"):
            raise InputError(f"side must be auto, right or left, got {side!r}")
        if focal is not None and not (focal > 0 and math.isfinite(focal)):
            raise InputError(f"focal must be a positive number of pixels, got {focal}")
        h, w = image.shape[:2]
        if hands is None:
            from backend.detect import detect_hands

            hands, detector = detect_hands(self, image, side=side, detector=detector)
        else:
            detector = None  # the boxes were given
        f = focal or default_focal(w, h, exif_f35_mm)
        K = intrinsics(w, h, f)
        refine = self.refine == "auto" if refine is None else refine
        if refine or any(h.side == "auto" for h in hands):
            hands = with_mediapipe(image, hands)  # landmarks to refine on; handedness for auto
        results = [self._predict_hand(image, req, K) for req in hands]
        if refine:
            for hand, req in zip(results, hands, strict=True):
                if req.landmarks is not None:
                    self.refine_hand(hand, req.landmarks)
        return {
            "schema": SCHEMA,
            "image": {"width": w, "height": h},
            "model": {"checkpoint": self.checkpoint.name, "hand_model": self.hand_model_id},
            "detector": detector,
            "hands": results,
        }

    def crops_for(self, image: np.ndarray, box_xyxy, flip: bool) -> tuple[np.ndarray, torch.Tensor]:
        """The 256 crop of a box (mirrored when `flip`) and its (cx, cy, side)."""
        crop = square_crop(torch.tensor(box_xyxy, dtype=torch.float64))
        return crop_image(image, tuple(crop.tolist()), CROP_SIZE, flip=flip), crop

    def _predict_hand(self, image: np.ndarray, req: HandRequest, K: np.ndarray) -> dict:
        x0, y0, x1, y1 = (float(v) for v in req.box_xyxy)
        h, w = image.shape[:2]
        if not (x1 > x0 and y1 > y0) or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise InputError(f"box {req.box_xyxy} is empty or outside the {w}x{h} image")
        # `auto`: one batch holds the crop read as a right hand and, mirrored, as a left hand;
        # the side whose heat-maps peak higher wins and its output is used as it is
        sides = ("right", "left") if req.side == "auto" else (req.side,)
        crops = [self.crops_for(image, req.box_xyxy, flip=s == "left") for s in sides]
        out = self.run_crops(np.stack([rgb for rgb, _ in crops]))
        confs = self.heatmap_confidence(out)
        best = int(torch.argmax(confs))
        side, crop, conf = sides[best], crops[best][1], float(confs[best])
        flip = side == "left"
        dev = self.device
        Kt = torch.as_tensor(K, dtype=torch.float32, device=dev)
        # crop pixels of the network's 2D keypoints, back in the (unflipped) image
        kp_crop = normalized_to_pixels(out.keypoints2d[best], CROP_SIZE)  # (21, 2)
        cam = out.cam[best : best + 1].clone()
        if flip:
            kp_crop[:, 0] = CROP_SIZE - kp_crop[:, 0]
            cam[:, 1] = -cam[:, 1]  # the weak camera of the unflipped crop: tx -> -tx
        crop_t = crop.to(torch.float32).to(dev)
        kp_img = points_from_crop(kp_crop[None], crop_t[None])[0]  # (21, 2)
        pose, betas = out.pose[best], out.betas[best]
        if flip:  # right-hand result -> the left model's parameters
            pose = mirror_pose(pose)
        hand = self.hands[side](pose[None], betas[None])
        kp3d = hand.keypoints[0]  # (21, 3) model frame, rotated, no translation
        init = weak_to_full_translation(cam, crop_t[:2], crop_t[2], Kt[0, 0], Kt[:2, 2])[0]
        transl = solve_translation(kp3d, kp_img, Kt, init)
        joints = kp3d + transl
        uv = joints @ Kt.T
        uv = uv[:, :2] / uv[:, 2:]
        box = (crop_t[:2] - crop_t[2] / 2).tolist() + (crop_t[:2] + crop_t[2] / 2).tolist()
        return {
            "side": side,
            "score": round(min(req.score, 1.0) * conf, 4),
            "box_xyxy": [round(v, 2) for v in req.box_xyxy],
            "crop_xyxy": [round(v, 2) for v in box],
            "pose_axis_angle": pose.tolist(),
            "betas": betas.tolist(),
            "cam_weak": cam[0].tolist(),
            "camera": {"K": K.tolist()},
            "transl": transl.tolist(),
            "joints3d_cam": joints.tolist(),
            "keypoints2d": uv.tolist(),
            "fit": None,  # set by refine_hand
        }

    def refine_hand(self, hand: dict, landmarks: np.ndarray) -> dict:
        """Fit a predicted hand (a `hamr.prediction/1` hand dict, changed in place) to 2D
        landmarks (21, 2) in image pixels (`backend.fit`); its "fit" records the landmark RMS
        error in pixels before and after."""
        from backend.fit import fit_to_landmarks

        fitted = fit_to_landmarks(
            self.hands[hand["side"]],
            hand["side"],
            hand["pose_axis_angle"],
            hand["betas"],
            hand["transl"],
            hand["camera"]["K"],
            landmarks,
            box_side(hand["box_xyxy"]),
        )
        hand.update(
            pose_axis_angle=fitted["pose"].tolist(),
            betas=fitted["betas"].tolist(),
            transl=fitted["transl"].tolist(),
            joints3d_cam=fitted["joints"].tolist(),
            keypoints2d=fitted["keypoints2d"].tolist(),
            fit={
                "landmarks": "mediapipe",
                "rms_px_before": round(fitted["rms_px_before"], 2),
                "rms_px_after": round(fitted["rms_px_after"], 2),
            },
        )
        return hand

    def vertices_cam(self, hand: dict) -> np.ndarray:
        """(V, 3) camera-frame vertices of a predicted hand (for overlays and checks)."""
        model = self.hands[hand["side"]]
        pose = torch.tensor(hand["pose_axis_angle"], device=self.device)[None]
        betas = torch.tensor(hand["betas"], device=self.device)[None]
        transl = torch.tensor(hand["transl"], device=self.device)[None]
        return model(pose, betas, transl).vertices[0].detach().cpu().numpy()


def overlay(predictor: Predictor, image: np.ndarray, prediction: dict) -> np.ndarray:
    """The photo with every predicted hand's mesh and skeleton drawn over it."""
    from backend.render import render_overlay

    hands = prediction["hands"]
    if not hands:
        return image.copy()
    K = np.asarray(hands[0]["camera"]["K"])
    verts = [predictor.vertices_cam(h) for h in hands]
    faces = [predictor.hands[h["side"]].faces for h in hands]
    kps = [np.asarray(h["keypoints2d"]) for h in hands]
    return render_overlay(image, verts, faces, K, kps)
