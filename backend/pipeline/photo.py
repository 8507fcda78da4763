"""From a photo to hands: crop, run HAMR, place each hand in the full image's camera, build JSON.

`Predictor` holds one loaded network (the shipped checkpoint by default) and turns an RGB image
into a `hamr.prediction/1` dict (DESIGN.md). Steps, each a function below:

1. hands: the user's boxes (`--box`), or `backend.detect.detect_hands` (MediaPipe Hands or the
   network as the detector; each found hand comes with its side);
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

Imports torch, numpy and the backend's stages; never the HTTP service, the CLI, bpy or the
training package.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from backend.camera import default_focal, intrinsics, project_points, solve_translation
from backend.crop import CROP_SIZE, box_side, points_from_crop
from backend.detect import detect_hands, with_mediapipe
from backend.errors import Cancelled
from backend.fuse.fusion import fuse_hands
from backend.hand_model.keypoints import keypoint_layer, layer_keypoints
from backend.hand_model.model import mirror_pose
from backend.network.camera import normalized_to_pixels, weak_to_full_translation
from backend.network.rotation import axis_angle_to_matrix
from backend.network.runner import HandNetwork
from backend.options import (
    HandRequest,
    check_box,
    check_detector,
    check_refine,
    check_side,
    parse_focal,
)
from backend.render import render_overlay
from backend.schema import Hand, prediction_json


class Predictor(HandNetwork):
    """The photo pipeline on a loaded network (`HandNetwork`) and its two settings: what finds
    hands when no box is given, and whether hands are fitted to MediaPipe's landmarks."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        mano_dir: str | os.PathLike | None = None,
        detector: str = "auto",
        refine: str = "auto",
        frozen: bool = False,
    ) -> None:
        self.detector = check_detector(detector)  # finds hands when no box is given
        # "auto": fit each hand to MediaPipe's landmarks when there are any
        self.refine = check_refine(refine)
        super().__init__(checkpoint, device, mano_dir, frozen)

    # ------------------------------------------------------------------------- predict
    def predict(self, image: np.ndarray, hands: list[HandRequest] | None = None, **options) -> dict:
        """(H, W, 3) uint8 RGB -> prediction dict (`hamr.prediction/1`): `predict_hands` (its
        options: focal, exif_f35_mm, side, detector, refine) in JSON."""
        h, w = image.shape[:2]
        found, detector = self.predict_hands(image, hands, **options)
        return prediction_json(w, h, self.checkpoint.name, self.hand_model_id, detector, found)

    def predict_hands(
        self,
        image: np.ndarray,
        hands: list[HandRequest] | None = None,
        focal: float | None = None,
        exif_f35_mm: float | None = None,
        side: str = "auto",
        detector: str | None = None,
        refine: bool | None = None,
        found: list[dict] | None = None,
        views: bool = True,
        cancel: threading.Event | None = None,
    ) -> tuple[list[Hand], str | None]:
        """(H, W, 3) uint8 RGB -> (the hands, what found them: None for given boxes). Without
        `hands`, the hands are found by `detector` (None: this predictor's own setting). refine:
        fuse each hand with MediaPipe's landmarks where it has them (`fuse`; None: this
        predictor's setting). found: MediaPipe's hands in this image when the caller has them
        (`mediapipe_hands.detect`'s list), so it does not run again; views: let MediaPipe look
        at tiles and closer views (a photo) or the whole image only (a video frame). Each hand
        carries the MediaPipe landmarks it was matched with (`Hand.landmarks`, `Hand.world`).
        cancel: set, it stops the work (`errors.Cancelled`) at the next hand or batch of crops."""
        check_side(side)
        focal = parse_focal(focal)
        h, w = image.shape[:2]
        if hands is None:
            hands, detector = detect_hands(
                self, image, side, detector=detector, views=views, cancel=cancel
            )
        else:
            detector = None  # the boxes were given
        f = focal or default_focal(w, h, exif_f35_mm)
        K = intrinsics(w, h, f)
        refine = self.refine == "auto" if refine is None else refine
        if refine or any(h.side == "auto" for h in hands):
            # landmarks to fuse with; handedness for auto
            hands = with_mediapipe(image, hands, found, views)
        results = []
        for req in hands:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after {len(results)} of {len(hands)} hands")
            results.append(self._predict_hand(image, req, K))
        if refine:
            self.fuse([h for h in results if h.landmarks is not None])
        return results, detector

    def _predict_hand(self, image: np.ndarray, req: HandRequest, K: np.ndarray) -> Hand:
        h, w = image.shape[:2]
        check_box(req.box_xyxy, w, h)
        # `auto`: one batch holds the crop read as a right hand and, mirrored, as a left hand;
        # the side whose heat-maps peak higher wins and its output is used as it is
        sides = ("right", "left") if req.side == "auto" else (req.side,)
        crops = [self.crops_for(image, req.box_xyxy, flip=s == "left") for s in sides]
        out = self.run_crops(np.stack([rgb for rgb, _ in crops]), mesh=False)  # no vertices read
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
        # (21, 3) model frame, rotated, no translation: the hand model's keypoints without its
        # mesh (`HandModel(...).keypoints` to float rounding, a quarter of the time); a right
        # hand's are the head's own, a left hand's those of the left model's mirrored pose
        if flip:
            layer = keypoint_layer(self.hands[side])
            kp3d = layer_keypoints(layer, axis_angle_to_matrix(pose[None]), betas[None])[0]
        else:
            kp3d = out.keypoints3d[best]
        init = weak_to_full_translation(cam, crop_t[:2], crop_t[2], Kt[0, 0], Kt[:2, 2])[0]
        transl = solve_translation(kp3d, kp_img, Kt, init)
        joints = kp3d + transl
        uv = project_points(joints, Kt)
        box = (crop_t[:2] - crop_t[2] / 2).tolist() + (crop_t[:2] + crop_t[2] / 2).tolist()
        return Hand(
            side=side,
            score=round(min(req.score, 1.0) * conf, 4),
            box_xyxy=[round(v, 2) for v in req.box_xyxy],
            crop_xyxy=[round(v, 2) for v in box],
            pose_axis_angle=pose.tolist(),
            betas=betas.tolist(),
            cam_weak=cam[0].tolist(),
            camera={"K": K.tolist()},
            transl=transl.tolist(),
            joints3d_cam=joints.tolist(),
            keypoints2d=uv.tolist(),
            fit=None,  # set by fuse
            landmarks=req.landmarks,
            world=req.world,
        )

    def fuse(self, hands: list[Hand]) -> list[Hand]:
        """Fuse each hand (changed in place) with the MediaPipe landmarks it carries
        (`Hand.landmarks`, and `Hand.world` where there are world landmarks), the hands of each
        side in one batch (`backend.fuse.fusion`). Its "fit" records the signals used, the
        network's trust and the landmark RMS error in pixels before (the network's hand) and
        after."""
        for side in ("right", "left"):
            group = [h for h in hands if h.side == side and h.landmarks is not None]
            if not group:
                continue
            missing = np.full((21, 3), np.nan)
            world = np.stack([missing if h.world is None else h.world for h in group])
            fused = fuse_hands(
                self.hands[side],
                side,
                np.asarray(group[0].camera["K"]),
                np.stack([h.landmarks for h in group]),
                world,
                np.array([h.pose_axis_angle for h in group]),
                np.array([h.betas for h in group]),
                np.array([h.transl for h in group]),
                np.array([h.keypoints2d for h in group]),
                np.array([h.score for h in group]),
                np.array([box_side(h.box_xyxy) for h in group]),
            )
            for i, hand in enumerate(group):
                hand.pose_axis_angle = fused.pose[i].tolist()
                hand.betas = fused.betas[i].tolist()
                hand.transl = fused.transl[i].tolist()
                hand.joints3d_cam = fused.joints[i].tolist()
                hand.keypoints2d = fused.keypoints2d[i].tolist()
                hand.fit = fused.fit_record(i)
        return hands

    def refine_hand(
        self, hand: Hand, landmarks: np.ndarray, world: np.ndarray | None = None
    ) -> Hand:
        """`fuse` of one hand with the given landmarks (21, 2) and world landmarks (21, 3)."""
        hand.landmarks, hand.world = np.asarray(landmarks, dtype=np.float64), world
        return self.fuse([hand])[0]

    def vertices_cam(self, hand: dict) -> np.ndarray:
        """(V, 3) camera-frame vertices of a predicted hand (a `hamr.prediction/1` hand dict)."""
        model = self.hands[hand["side"]]
        pose = torch.tensor(hand["pose_axis_angle"], device=self.device)[None]
        betas = torch.tensor(hand["betas"], device=self.device)[None]
        transl = torch.tensor(hand["transl"], device=self.device)[None]
        return model(pose, betas, transl).vertices[0].detach().cpu().numpy()


def overlay(predictor: Predictor, image: np.ndarray, prediction: dict) -> np.ndarray:
    """The photo with every predicted hand's mesh and skeleton drawn over it (`prediction`: a
    `hamr.prediction/1` dict, or one frame of `hamr.video/1`)."""
    hands = prediction["hands"]
    if not hands:
        return image.copy()
    K = np.asarray(hands[0]["camera"]["K"])
    verts = [predictor.vertices_cam(h) for h in hands]
    faces = [predictor.hands[h["side"]].faces for h in hands]
    kps = [np.asarray(h["keypoints2d"]) for h in hands]
    return render_overlay(image, verts, faces, K, kps)
