"""`hamr blend`: the Blender import without Blender's UI, in Blender-as-a-module (bpy).

    python -m hamr_blender.blender.headless IMAGE|VIDEO --out SCENE.blend [--render OUT.png]
           [--backend-url URL] [--checkpoint PATH] [--device cpu|cuda]
           [--side auto|right|left] [--box X0,Y0,X1,Y1] [--focal PX] [--samples N]
           [--scene-fps N|clip] [--smoothing S] [--rotation quaternion|euler] [--min-score S]
           [--render-frame F OUT.png]

`run_blend` builds exactly the scene the `hamr.import_image` operator builds (the same functions:
importer.import_image -> scene.import_prediction -> rig.build_hand_rig, and the aligned
camera with the photo as its background), saves it, and optionally renders the hands over the
photo: Cycles on the CPU with a transparent film, then the render is laid over the photo
(alpha over, straight alpha) and written as PNG. A clip is keyed as `hamr.keyframe_video` keys
it (importer.import_video -> scene.key_video) in a scene at --scene-fps (default 24, Blender's);
--render-frame renders one scene frame of the take over the clip, as the camera's background
shows it there (`render_video_frame`: the compositor lays the render over the movie clip).

The backend: `backend_url` when given; otherwise a `hamr serve` is started as a child process
(this interpreter, ``-m backend.cli serve`` on a free loopback port), used over HTTP like Blender
uses it, and stopped at the end. Imports bpy (run it with the Python that has bpy installed).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from ..io import backend_process, orientation
from ..io.bone_maps import BoneMapError
from ..io.client import BackendError, HamrClient
from ..io.convert import scene_rate
from . import importer
from .camera import upright_image
from .scene import DEFAULT_MIN_SCORE

BLENDER_DEFAULT_FPS = 24.0  # a new scene's frame rate in Blender

MAX_RENDER_SIDE = 1280  # longer side of the render, pixels (the photo is scaled to match)


@dataclass
class BlendOptions:
    """The import options (the attributes `importer.import_image` reads)."""

    side: str = "auto"
    detector: str = "auto"
    refine: bool = True
    use_box: bool = False
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    focal: float = 0.0
    shape_keys: bool = True
    correctives: str = "AUTO"
    align_camera: bool = True
    rotation_mode: str = "QUATERNION"  # the bones' rotation keys: QUATERNION or XYZ (Euler)
    min_score: float = DEFAULT_MIN_SCORE  # detected hands (video: tracks) under this: not built
    smoothing: float = 0.5  # video: the backend's temporal smoothing strength
    scene_fps: str = "KEEP"  # video: KEEP the scene's rate (keys by time) or CLIP (the clip's)
    set_resolution: bool = True  # a scene made for this photo: the render is the photo's size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _empty_scene(fps: float = BLENDER_DEFAULT_FPS) -> bpy.types.Context:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    context = bpy.context
    scene = context.scene
    scene.render.fps, scene.render.fps_base = scene_rate(fps)
    world = bpy.data.worlds.new("HAMR World")
    world.color = (0.6, 0.6, 0.6)
    if world.node_tree is None:
        world.use_nodes = True
    bg = world.node_tree.nodes.get("Background")
    if bg is not None:
        bg.inputs["Color"].default_value = (0.6, 0.6, 0.6, 1.0)
        bg.inputs["Strength"].default_value = 0.8
    scene.world = world
    sun = bpy.data.lights.new("HAMR Key Light", "SUN")
    sun.energy = 3.0
    sun_obj = bpy.data.objects.new("HAMR Key Light", sun)
    sun_obj.rotation_euler = (0.6, 0.2, 0.3)
    scene.collection.objects.link(sun_obj)
    return context


def _pixels(image: bpy.types.Image) -> np.ndarray:
    w, h = image.size
    buf = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(buf)
    return buf.reshape(h, w, 4)


def _upright_photo(context: bpy.types.Context, photo_path: str) -> bpy.types.Image:
    """A new image of the photo as the prediction saw it, for the caller to remove: a copy of
    the aligned camera's background (the photo, its upright copy, or the backend's decoding of
    a HEIC), else the file itself, turned by its EXIF orientation."""
    cam = context.scene.camera
    if cam is not None and cam.type == "CAMERA":
        for bg in cam.data.background_images:
            if bg.source == "IMAGE" and bg.image is not None and bg.image.size[0] > 0:
                return bg.image.copy()
    photo = bpy.data.images.load(photo_path, check_existing=False)
    if photo.size[0] == 0 or photo.size[1] == 0:
        bpy.data.images.remove(photo)
        raise RuntimeError(f"Blender cannot read the photo {photo_path} to render over it")
    turn = orientation.file_orientation(photo_path)
    if turn == 1:
        return photo
    try:
        return upright_image(photo, turn, "HAMR upright photo")
    finally:
        bpy.data.images.remove(photo)


def render_over_photo(
    context: bpy.types.Context, photo_path: str, out_png: str, samples: int = 16
) -> str:
    """Render the scene camera (Cycles, CPU, transparent film) and lay it over the photo (upright,
    as its EXIF orientation says: the prediction is for the upright photo)."""
    scene = context.scene
    render = scene.render
    _render_settings(scene, samples)
    with tempfile.TemporaryDirectory(prefix="hamr-render-") as tmp:
        layer_png = os.path.join(tmp, "hands.png")
        render.filepath = layer_png
        bpy.ops.render.render(write_still=True)
        layer = bpy.data.images.load(layer_png)
        try:
            photo = _upright_photo(context, photo_path)
        except BaseException:
            bpy.data.images.remove(layer)
            raise
        try:
            fg = _pixels(layer)
            h, w = fg.shape[:2]
            if tuple(photo.size) != (w, h):
                photo.scale(w, h)
            bg = _pixels(photo)
            alpha = fg[..., 3:4]
            out = np.empty_like(fg)
            out[..., :3] = fg[..., :3] * alpha + bg[..., :3] * (1.0 - alpha)
            out[..., 3] = 1.0
            result = bpy.data.images.new("HAMR composite", w, h, alpha=False)
            try:
                result.pixels.foreach_set(out.ravel())
                result.filepath_raw = os.path.abspath(out_png)
                result.file_format = "PNG"
                result.save()
            finally:
                bpy.data.images.remove(result)
        finally:
            bpy.data.images.remove(layer)
            bpy.data.images.remove(photo)
    return os.path.abspath(out_png)


def render_video_frame(
    context: bpy.types.Context, frame: int, out_png: str, samples: int = 16
) -> str:
    """Render scene frame `frame` of a keyed take over the clip behind the camera (Cycles, CPU,
    transparent film, the compositor laying the render over the movie clip as the background
    shows it at that frame: the clip's start and its time-mapping driver), as PNG."""
    scene = context.scene
    cam = scene.camera
    clip = None
    if cam is not None and cam.type == "CAMERA":
        clip = next(
            (b.clip for b in cam.data.background_images if b.source == "MOVIE_CLIP" and b.clip),
            None,
        )
    if clip is None:
        raise RuntimeError("the scene has no camera with the clip behind it to render over")
    if not scene.frame_start <= frame <= scene.frame_end:
        raise ValueError(
            f"--render-frame {frame} is outside the take's frames {scene.frame_start}.."
            f"{scene.frame_end}"
        )
    _render_settings(scene, samples)
    tree = bpy.data.node_groups.new("HAMR over the clip", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    movie = tree.nodes.new("CompositorNodeMovieClip")
    movie.clip = clip
    over = tree.nodes.new("CompositorNodeAlphaOver")
    output = tree.nodes.new("NodeGroupOutput")
    tree.links.new(movie.outputs["Image"], over.inputs["Background"])
    tree.links.new(layers.outputs["Image"], over.inputs["Foreground"])
    tree.links.new(over.outputs[0], output.inputs[0])
    scene.compositing_node_group = tree
    scene.frame_set(frame)
    render = scene.render
    render.filepath = os.path.abspath(out_png)
    try:
        bpy.ops.render.render(write_still=True)
    finally:
        scene.compositing_node_group = None
        bpy.data.node_groups.remove(tree)
    return os.path.abspath(out_png)


def _render_settings(scene: bpy.types.Scene, samples: int) -> None:
    """Cycles on the CPU, a transparent film, PNG RGBA, the longer side at most
    MAX_RENDER_SIDE pixels."""
    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    if hasattr(scene.cycles, "use_denoising"):
        scene.cycles.use_denoising = False
    render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    longer = max(render.resolution_x, render.resolution_y)
    render.resolution_percentage = max(1, min(100, int(100 * MAX_RENDER_SIDE / longer)))
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGBA"


def run_blend(
    image_path: str | os.PathLike,
    out_blend: str | os.PathLike,
    render_png: str | os.PathLike | None = None,
    backend_url: str | None = None,
    options: BlendOptions | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    samples: int = 16,
    start_timeout: float = backend_process.DEFAULT_START_TIMEOUT_S,
    retarget: str | None = None,
    export: str | None = None,
    scene_fps: float = BLENDER_DEFAULT_FPS,
    render_frame: tuple[int, str | os.PathLike] | None = None,
    retarget_fingertips: bool = False,
) -> dict:
    """Build the HAMR scene of one photo or one clip, save it, optionally render a photo's
    hands over it. A clip (any file that is not a still image) is keyed as hamr.keyframe_video
    keys it (importer.import_video), in a scene at `scene_fps` (Blender's default, 24) unless
    options.scene_fps is "CLIP".

    Returns {"blend", "render" (or None), "hands", "notes", "backend", "video"}. Raises
    RuntimeError subclasses / ValueError / OSError with a message for the user."""
    image_path = os.path.abspath(os.fspath(image_path))
    if not os.path.isfile(image_path):
        raise ValueError(f"image not found: {image_path}")
    options = options or BlendOptions()
    is_video = orientation.still_image_format(orientation.file_head(image_path)) is None
    if is_video and render_png is not None:
        raise ValueError("--render lays the hands over a photo; it is not for a clip")
    if render_frame is not None and not is_video:
        raise ValueError("--render-frame renders a clip's frame; for a photo use --render")
    if retarget_fingertips and not retarget:
        raise ValueError("--retarget-fingertips goes with --retarget RIG.blend[:ARMATURE]")
    proc: backend_process.BackendProcess | None = None
    if backend_url is None:
        proc = backend_process.BackendProcess()
        backend_url = f"http://127.0.0.1:{_free_port()}"
        proc.start(
            backend_url,
            tempfile.mkdtemp(prefix="hamr-blend-"),
            python=backend_process.current_python(),
            checkpoint=checkpoint or "",
            extra=["--device", device],
        )
    try:
        client = HamrClient(backend_url, os.environ.get("HAMR_TOKEN", ""), timeout=120.0)
        if proc is not None:
            proc.wait_ready(client, timeout=start_timeout)
        context = _empty_scene(scene_fps)
        if is_video:
            result = importer.import_video(
                context, options, image_path, client=client, location=(0.0, 0.0, 0.0)
            )
        else:
            result = importer.import_image(
                context, options, filepath=image_path, client=client, location=(0.0, 0.0, 0.0)
            )
    finally:
        if proc is not None:
            proc.stop()
    from .retarget import headless_steps  # --retarget RIG.blend[:ARMATURE], --export OUT

    steps = headless_steps(context, retarget, export, fingertips=retarget_fingertips)
    out_blend = os.path.abspath(os.fspath(out_blend))
    Path(out_blend).parent.mkdir(parents=True, exist_ok=True)
    rendered = None
    if render_png is not None:
        Path(os.fspath(render_png)).parent.mkdir(parents=True, exist_ok=True)
        rendered = render_over_photo(context, image_path, os.fspath(render_png), samples)
    if render_frame is not None:
        frame, frame_png = render_frame
        Path(os.fspath(frame_png)).parent.mkdir(parents=True, exist_ok=True)
        rendered = render_video_frame(context, int(frame), os.fspath(frame_png), samples)
    bpy.ops.wm.save_as_mainfile(filepath=out_blend)
    return {
        "blend": out_blend,
        "render": rendered,
        "hands": len(result.armatures),
        "notes": result.notes,
        "backend": backend_url,
        "retarget": steps,
        "video": is_video,
    }


def _parse_box(text: str) -> tuple[float, float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("box must be X0,Y0,X1,Y1")
    return tuple(parts)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hamr blend",
        description="Build the Blender scene of a photo's hands or a clip's keyed hands (headless)",
    )
    ap.add_argument("image", help="the photo or the video clip")
    ap.add_argument("--out", required=True, help="the .blend file to write")
    ap.add_argument("--render", default=None, help="also render the hands over the photo (PNG)")
    ap.add_argument(
        "--render-frame",
        nargs=2,
        metavar=("F", "OUT.png"),
        default=None,
        help="a clip: also render scene frame F of the keyed take over the clip (PNG)",
    )
    ap.add_argument("--backend-url", default=None, help="use this running backend")
    ap.add_argument("--checkpoint", default=None, help="checkpoint for the started backend")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--side", default="auto", choices=("auto", "right", "left"))
    ap.add_argument("--box", type=_parse_box, default=None, help="hand box X0,Y0,X1,Y1")
    ap.add_argument(
        "--detector",
        default="auto",
        choices=("auto", "mediapipe", "hamr"),
        help="what finds hands without --box (default auto: MediaPipe if installed, else the net)",
    )
    ap.add_argument(
        "--refine",
        default="auto",
        choices=("auto", "off"),
        help="auto (default): fit the hands to MediaPipe's landmarks where it finds them",
    )
    ap.add_argument("--focal", type=float, default=0.0, help="focal length in pixels")
    ap.add_argument("--samples", type=int, default=16, help="Cycles samples of the render")
    ap.add_argument("--retarget", default=None, help="retarget onto RIG.blend[:ARMATURE]")
    ap.add_argument(
        "--retarget-fingertips",
        action="store_true",
        help="with --retarget: Match Fingertips (bend the target's fingers so their tips land "
        "where the HAMR hand's do, scaled by hand length; docs/retarget.md)",
    )
    ap.add_argument("--export", default=None, help="export hands (+ rig) to OUT.fbx / OUT.glb")
    ap.add_argument(
        "--scene-fps",
        default=str(BLENDER_DEFAULT_FPS),
        help="a clip's scene frame rate (default 24, Blender's): keys go at each video frame's "
        "time; 'clip' uses the clip's own rate",
    )
    ap.add_argument("--smoothing", type=float, default=0.5, help="a clip's smoothing in [0, 1]")
    ap.add_argument(
        "--rotation", default="quaternion", choices=("quaternion", "euler"), help="rotation keys"
    )
    ap.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        help="detected hands scoring under this are not built (default %(default)s)",
    )
    ap.add_argument("--no-shape-keys", action="store_true", help="bake the shape into the mesh")
    ap.add_argument(
        "--correctives", default="AUTO", choices=("AUTO", "ON", "OFF"), help="pose correctives"
    )
    return ap


def _scene_fps(text: str) -> tuple[str, float]:
    """--scene-fps: ("CLIP", 24.0) for 'clip', else ("KEEP", the positive rate given)."""
    if text.strip().lower() == "clip":
        return "CLIP", BLENDER_DEFAULT_FPS
    try:
        fps = float(text)
    except ValueError:
        fps = -1.0
    if not 0.0 < fps <= 1000.0:
        raise ValueError(f"--scene-fps must be a frame rate in (0, 1000] or 'clip', got {text!r}")
    return "KEEP", fps


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fps_mode, scene_fps = _scene_fps(args.scene_fps)
    except ValueError as e:
        print(f"hamr blend: error: {e}", file=sys.stderr)
        return 2
    render_frame = None
    if args.render_frame is not None:
        try:
            render_frame = (int(args.render_frame[0]), args.render_frame[1])
        except ValueError:
            print(f"hamr blend: error: --render-frame F must be a frame number, got "
                  f"{args.render_frame[0]!r}", file=sys.stderr)  # fmt: skip
            return 2
    options = BlendOptions(
        rotation_mode="XYZ" if args.rotation == "euler" else "QUATERNION",
        min_score=args.min_score,
        smoothing=args.smoothing,
        scene_fps=fps_mode,
        side=args.side,
        detector=args.detector,
        refine=args.refine == "auto",
        use_box=args.box is not None,
        box=args.box or (0.0, 0.0, 0.0, 0.0),
        focal=args.focal,
        shape_keys=not args.no_shape_keys,
        correctives=args.correctives,
    )
    try:
        info = run_blend(
            args.image,
            args.out,
            args.render,
            backend_url=args.backend_url,
            options=options,
            checkpoint=args.checkpoint,
            device=args.device,
            samples=args.samples,
            retarget=args.retarget,
            retarget_fingertips=args.retarget_fingertips,
            export=args.export,
            scene_fps=scene_fps,
            render_frame=render_frame,
        )
    except (
        BoneMapError,
        BackendError,
        backend_process.BackendStartError,
        RuntimeError,
        ValueError,
        OSError,
    ) as e:
        print(f"hamr blend: error: {e}", file=sys.stderr)
        return 2
    for note in info["notes"]:
        print(f"hamr blend: {note}", file=sys.stderr)
    print(f"wrote {info['blend']} ({info['hands']} hand{'s' if info['hands'] != 1 else ''})")
    if info["render"]:
        print(f"wrote {info['render']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
