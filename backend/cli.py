"""The `hamr` command line (DESIGN.md "Command line"): demo, info, predict, video, serve, blend.

    hamr predict IMAGE [--side auto|left|right] [--box X0,Y0,X1,Y1 ...] [--focal PX]
                       [--json OUT.json] [--overlay OUT.png] [--checkpoint PATH] [--device cpu|cuda]
    hamr video VIDEO   [--json OUT.json] [--overlay-video OUT.mp4] [same options] [--smoothing S]
    hamr serve         [--host 127.0.0.1] [--port 8734] [--token T] [--allow-path DIR ...]
                       [--allow-origin URL ...] [--allow-host NAME ...] [--checkpoint PATH] ...
    hamr blend IMAGE|VIDEO --out SCENE.blend [--render OUT.png] [--render-frame F OUT.png] ...
                       (bpy: hamr_blender.blender.headless)

Bad input (a missing file, an unreadable image, a bad option, a missing checkpoint) prints one
line `hamr: error: ...` on stderr and exits with code 2, never a traceback. Options are parsed
and checked with `backend.options`, as the HTTP service's forms are, so every entry point
accepts and refuses the same things. Nothing in the backend imports this module.

Heavy imports (torch, the network, OpenCV, FastAPI) happen inside each subcommand so `hamr --help`
stays fast and this module stays importable anywhere. Never imports the training package; bpy only
inside `blend`, which hands over to the extension's headless import (DESIGN.md: the one place the
backend runs bpy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from backend.errors import OptionError
from backend.options import (
    DEFAULT_SMOOTHING,
    DETECTORS,
    REFINE_MODES,
    SIDES,
    check_box,
    parse_boxes,
    parse_focal,
    parse_smoothing,
)

if TYPE_CHECKING:
    from backend.pipeline.photo import Predictor

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8734
T = TypeVar("T")


def resolve_checkpoint(path: str | None) -> Path:
    """The checkpoint to load: `path`, else $HAMR_CHECKPOINT, else the shipped one; must exist."""
    from backend.network.runner import DEFAULT_CHECKPOINT

    resolved = Path(path or os.environ.get("HAMR_CHECKPOINT") or DEFAULT_CHECKPOINT)
    if not resolved.is_file():
        raise OptionError(
            f"checkpoint not found: {resolved} (pass --checkpoint PATH or set HAMR_CHECKPOINT)"
        )
    return resolved


def _existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"{what} not found: {path}")
    return p


def _write_json(data: dict[str, Any], out: str | None) -> None:
    text = json.dumps(data, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


def _load_predictor(args: argparse.Namespace, frozen: bool = False) -> Predictor:
    """The predictor the options ask for; frozen: the traced network (`HandNetwork`), for the
    many crops of a clip."""
    from backend.pipeline.photo import Predictor

    return Predictor(
        resolve_checkpoint(args.checkpoint),
        args.device,
        mano_dir=args.mano_dir,
        detector=args.detector,
        refine=args.refine,
        frozen=frozen,
    )


# ----------------------------------------------------------------------------- subcommands
def _cmd_demo(args: argparse.Namespace) -> int:
    from backend.demo import main as demo_main

    demo_main(["--out", args.out])
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from backend.hand_model.model import hand_model_id, open_hand_metadata

    info = {"hand_model": hand_model_id(args.hand_model, args.mano_dir)}
    if args.hand_model == "open":
        meta = open_hand_metadata()
        info.update(mesh=meta["mesh"], wrist_to_middle_tip_m=meta["wrist_to_middle_tip_m"])
    print(json.dumps(info, indent=1))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    image_path = _existing_file(args.image, "image")
    boxes = parse_boxes(args.box)
    focal = parse_focal(args.focal)
    from backend.media.image import load_image
    from backend.options import HandRequest
    from backend.pipeline.photo import overlay

    image, exif_f35 = load_image(image_path)
    height, width = image.shape[:2]
    for box in boxes:
        check_box(box, width, height)
    predictor = _load_predictor(args)
    hands = [HandRequest(box, args.side) for box in boxes] or None
    prediction = predictor.predict(image, hands, focal=focal, exif_f35_mm=exif_f35, side=args.side)
    if not prediction["hands"]:
        print("hamr: no hand found (pass --box X0,Y0,X1,Y1 to point at one)", file=sys.stderr)
    if args.overlay:
        from backend.render import save_png

        save_png(args.overlay, overlay(predictor, image, prediction))
    _write_json(prediction, args.json)
    return 0


def _cmd_video(args: argparse.Namespace) -> int:
    video_path = _existing_file(args.video, "video")
    boxes = parse_boxes(args.box)
    focal = parse_focal(args.focal)
    smoothing = parse_smoothing(args.smoothing)
    from tqdm import tqdm

    from backend.media.video import probe_video
    from backend.pipeline.video import VideoOptions, process_video, write_overlay_video

    probe_video(video_path)  # fail fast on an unreadable clip, before loading the model
    predictor = _load_predictor(args, frozen=True)

    def run_with_bar(desc: str, work: Callable[[Callable[[int, int], None]], T]) -> T:
        """work(progress) with a tqdm bar on stderr that progress(done, total) moves."""
        with tqdm(desc=desc, unit="frame", file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            return work(progress)

    with contextlib.ExitStack() as stack:
        fit_bars: list[tqdm] = []

        def fit_progress(done: int, total: int) -> None:
            """A second bar for refine's track fit, opened when the fit starts."""
            if not fit_bars:
                bar = tqdm(desc="fit", unit="frame", file=sys.stderr)
                fit_bars.append(stack.enter_context(bar))
            fit_bars[0].total = total
            fit_bars[0].update(done - fit_bars[0].n)

        result = run_with_bar(
            "hands",
            lambda progress: process_video(
                predictor,
                video_path,
                VideoOptions(boxes=boxes or None, side=args.side, focal=focal, smoothing=smoothing),
                progress_cb=progress,
                fit_progress_cb=fit_progress,
            ),
        )
    if args.overlay_video:
        run_with_bar(
            "overlay",
            lambda progress: write_overlay_video(
                predictor, video_path, result, args.overlay_video, progress
            ),
        )
    _write_json(result, args.json)
    return 0


def _cmd_blend(argv: list[str]) -> int:
    """`hamr blend ...`: hand over to the extension's headless import (it parses its own
    options, prints its own errors and starts its own `hamr serve`); needs bpy."""
    try:
        import bpy  # noqa: F401
    except ImportError:
        raise OptionError(
            "hamr blend needs Blender as a Python module (bpy 5.0 on Python 3.11: "
            "pip install bpy==5.0.1)"
        ) from None
    from hamr_blender.blender.headless import main as blend_main

    return blend_main(argv)


def _cmd_serve(args: argparse.Namespace) -> int:
    from backend.service import check_bind, create_app

    check_bind(args.host, args.token)
    checkpoint = resolve_checkpoint(args.checkpoint)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise OptionError("device 'cuda' requested but no CUDA device is available")
    for folder in args.allow_path or []:
        if not Path(folder).expanduser().is_dir():
            raise OptionError(f"--allow-path {folder}: no such folder")
    import uvicorn

    from backend.service.protocol import HamrH11Protocol

    app = create_app(
        checkpoint=checkpoint,
        device=args.device,
        token=args.token,
        max_upload_mb=args.max_upload_mb,
        mano_dir=args.mano_dir,
        detector=args.detector,
        refine=args.refine,
        allow_paths=args.allow_path or [],
        allow_origins=args.allow_origin or [],
        allow_hosts=[args.host, *(args.allow_host or [])],
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=HamrH11Protocol,  # a header timeout and JSON 400s (backend.service.protocol)
        timeout_keep_alive=5,
    )
    return 0


# ----------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`hamr: error: ...`, exit code 2), like the commands'."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hamr: error: {message}\n")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="HAMR checkpoint (default: shipped one)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--mano-dir", default=None, help="folder with the official MANO files")
    p.add_argument(
        "--detector",
        choices=DETECTORS,
        default="auto",
        help="what finds hands when no --box is given: MediaPipe Hands, the network itself, or "
        "auto (MediaPipe when installed and it finds a hand, else the network; default)",
    )
    p.add_argument(
        "--refine",
        choices=REFINE_MODES,
        default="auto",
        help="auto (default): fit each hand to MediaPipe's 2D landmarks where it finds them "
        "(a photo's hands one by one, a video's tracks over all their frames); off: the "
        "network's hand as it is",
    )


def _add_hand_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--side", choices=SIDES, default="auto", help="hand side (default: auto)")
    p.add_argument(
        "--box",
        action="append",
        metavar="X0,Y0,X1,Y1",
        help="hand box in image pixels; repeat for several hands (default: detect hands)",
    )
    p.add_argument("--focal", default=None, metavar="PX", help="full-image focal length, pixels")
    _add_model_options(p)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="hamr", description="HAMR hand mesh recovery backend")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("demo", help="render the embedded hand model in several poses and shapes")
    p.add_argument("--out", default="docs/images", help="output folder")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("info", help="print the hand model in use")
    p.add_argument("--hand-model", choices=("open", "mano"), default="open")
    p.add_argument("--mano-dir", default=None, help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("predict", help="hands in one photo -> hamr.prediction/1 JSON")
    p.add_argument("image", help="photo (JPEG, PNG, ...)")
    _add_hand_options(p)
    p.add_argument(
        "--json", default=None, metavar="OUT.json", help="write JSON here (default: stdout)"
    )
    p.add_argument("--overlay", default=None, metavar="OUT.png", help="write an overlay picture")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("video", help="tracked, smoothed hands in a clip -> hamr.video/1 JSON")
    p.add_argument("video", help="video file (anything OpenCV decodes: mp4, avi, mov, ...)")
    _add_hand_options(p)
    p.add_argument(
        "--json", default=None, metavar="OUT.json", help="write JSON here (default: stdout)"
    )
    p.add_argument("--overlay-video", default=None, metavar="OUT.mp4", help="write an overlay clip")
    p.add_argument(
        "--smoothing",
        default=None,
        metavar="S",
        help=f"temporal smoothing strength 0..1, 0 = off (default {DEFAULT_SMOOTHING})",
    )
    p.set_defaults(func=_cmd_video)

    # `blend` is dispatched in main() before parsing: its options are the extension's
    # (hamr_blender.blender.headless)
    sub.add_parser(
        "blend",
        help="the Blender import of a photo or a clip, headless (IMAGE|VIDEO --out SCENE.blend "
        "[--render OUT.png] [--render-frame F OUT.png] ...; hamr blend --help lists all)",
    )

    p = sub.add_parser("serve", help="run the local HTTP service for Blender")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--token",
        default=os.environ.get("HAMR_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' (default $HAMR_TOKEN), at least 16 "
        "characters; needed off loopback",
    )
    p.add_argument(
        "--allow-path",
        action="append",
        metavar="DIR",
        help="a folder whose clips video jobs may name by path (repeatable; default none: "
        "clips are uploaded)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="URL",
        help="a web origin (scheme://host[:port]) whose pages may call the API (repeatable; "
        "default none: requests with any Origin header are refused)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="a host name requests may be addressed to, besides localhost, IP addresses and "
        "--host (repeatable); others are refused (DNS rebinding)",
    )
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload (default 50)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    _add_model_options(p)
    p.set_defaults(func=_cmd_serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["blend"]:
            return _cmd_blend(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as e:  # InputError, OptionError, CheckpointError are ValueErrors
        print(f"hamr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
