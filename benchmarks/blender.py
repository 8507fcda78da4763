"""Speed of the Blender extension in headless bpy: rig build and video keying. Prints JSON.

    python -m benchmarks.blender [--repeats 5] [--frames 1000]

- rig build: `rig.build_hand_rig` from parsed rig data (what an import pays once the backend
  has answered), for the embedded hand model as shipped (no pose correctives: 11 shape keys) and
  with 135 driven pose correctives; target < 1 s;
- retarget bake: `retarget.retarget` baking the keyed take (N frames) onto a generated Rigify
  rig's FK finger controls, plain and with the fingertip reach (`fingertips`); target: 1,000
  frames <= 2 s; within it, reading the HAMR hand as Blender evaluates it at every keyed frame
  (`retarget.evaluated_frames`: its pose after the rig's constraints) is timed alone;
- keying: `scene.key_video` of one hand over N frames of a synthetic 24 fps trajectory into a
  24 fps scene, so N scene frames are keyed (rig build + quaternions + continuity + bulk
  F-curves), and the keying alone
  (`track_keys` + `key_fcurves`); target: 1,000 frames < 3 s.

Median of `--repeats` runs; created data is removed between runs. Blender's user folders are
pointed at a temporary directory before bpy is imported (nothing touches the real ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time


def _isolate_blender_user_dirs() -> None:
    root = tempfile.mkdtemp(prefix="hamr-bench-blender-")
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "BLENDER_USER_RESOURCES"):
        os.environ.setdefault(name, os.path.join(root, name.lower()))


def _synthetic_video(frames: int, fps: float = 24.0) -> dict:
    """A smooth one-hand trajectory (hamr.video/1), root turning through 180 degrees."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 0.3, size=(16, 3))
    betas = rng.normal(0.0, 1.0, size=10).tolist()
    K = [[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]]
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        pose = base * (0.5 + 0.5 * np.sin(6 * t))
        pose[0] = np.array([0.2, 0.9, 0.3]) * (0.3 + 3.5 * t)
        hand = {
            "side": "right",
            "score": 1.0,
            "track": 0,
            "box_xyxy": [0, 0, 640, 480],
            "pose_axis_angle": pose.tolist(),
            "betas": betas,
            "cam_weak": [1.0, 0.0, 0.0],
            "camera": {"K": K},
            "transl": [0.05 * np.sin(5 * t), 0.02 * np.cos(3 * t), 0.6 + 0.1 * t],
            "joints3d_cam": [[0.0, 0.0, 0.6]] * 21,
            "keypoints2d": [[320.0, 240.0]] * 21,
        }
        out.append({"index": i, "hands": [hand]})
    return {"schema": "hamr.video/1", "fps": fps, "frames": out}


def _retarget_bake(context, video, rig_data, repeats: int) -> tuple[float, float, float]:
    """Median seconds of `retarget.retarget` baking the keyed take onto a generated Rigify rig
    (the rig generated once, its action removed between runs): bones pointing as the HAMR
    hand's, and with `fingertips` (the fingertip reach solve on top); and of the evaluation of
    the HAMR hand at the take's frames alone (`retarget.evaluated_frames`)."""
    import addon_utils
    import bpy
    import numpy as np

    from hamr_blender.blender import retarget, rig, scene

    new = rig.NewData()
    source = scene.ImageSource("movie", "", "")
    hand = scene.key_video(
        context, video, {"right": rig_data}, rig.RigOptions(name="bench"), source, new, align=False
    ).armatures[0]
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    bpy.ops.pose.rigify_generate()
    target = context.active_object
    times: dict[bool, list[float]] = {False: [], True: []}
    evaluation: list[float] = []
    bones = retarget.source_bones(hand)
    frames = np.asarray(_take_frames(hand), dtype=np.float64)
    for _ in range(repeats):
        t0 = time.perf_counter()
        retarget.evaluated_frames(hand, bones, frames)
        evaluation.append(time.perf_counter() - t0)
        for tips in times:
            target.animation_data_clear()
            context.view_layer.update()
            options = retarget.RetargetOptions(mode="BAKE", fingertips=tips)
            t0 = time.perf_counter()
            result = retarget.retarget(context, [hand], target, options)
            times[tips].append(time.perf_counter() - t0)
            for action in result.actions:
                bpy.data.actions.remove(action)
    new.remove_all()
    med = statistics.median
    return med(times[False]), med(times[True]), med(evaluation)


def _take_frames(arm) -> list[float]:
    """The keyed frames of a take (its first F-curve's keys)."""
    bag = arm.animation_data.action.layers[0].strips[0].channelbag(arm.animation_data.action_slot)
    return [kp.co[0] for kp in bag.fcurves[0].keyframe_points]


def run(repeats: int, frames: int) -> dict:
    _isolate_blender_user_dirs()
    import bpy
    import numpy as np

    from backend.schema import encode_array
    from backend.schema import rig_json as rig_data
    from hamr_blender.blender import rig, scene
    from hamr_blender.io import payload

    doc = rig_data("right")
    n_v = len(payload.decode_array(doc["v_template"]))
    posedirs = np.random.default_rng(1).normal(0.0, 0.01, size=(n_v, 3, 135))
    rigs = {
        "shipped": payload.parse_rig(doc),
        "correctives_135": payload.parse_rig(
            dict(doc, posedirs=encode_array(posedirs, "f4"), pose_correctives_zero=False)
        ),
    }
    betas = np.zeros(10)
    build: dict[str, list[float]] = {k: [] for k in rigs}
    for _ in range(repeats):
        for label, rd in rigs.items():
            new = rig.NewData()
            t0 = time.perf_counter()
            rig.build_hand_rig(rd, betas, rig.RigOptions(name="bench"), new)
            build[label].append(time.perf_counter() - t0)
            new.remove_all()

    video_doc = _synthetic_video(frames)
    t0 = time.perf_counter()
    video = payload.parse_video(video_doc)
    parse_s = time.perf_counter() - t0
    context = bpy.context
    context.scene.render.fps, context.scene.render.fps_base = 24, 1.0
    source = scene.ImageSource("movie", "", "")
    total, keying_only = [], []
    track = payload.video_tracks(video)[0]
    for _ in range(repeats):
        new = rig.NewData()
        t0 = time.perf_counter()
        result = scene.key_video(
            context, video, {"right": rigs["shipped"]}, rig.RigOptions(), source, new, align=False
        )
        total.append(time.perf_counter() - t0)
        arm = result.armatures[0]
        names = rig.joint_bones(arm)
        rest = rig.bone_rest_rotations(arm, names)
        t0 = time.perf_counter()
        keys_frames, quats, locs = scene.track_keys(track, rest, video.fps, 24.0, 1)
        action = bpy.data.actions.new("bench")
        new.add(action)
        slot = (
            action.slots.new(id_type="OBJECT", name="bench") if hasattr(action, "slots") else None
        )
        channels = [("location", k, "Object Transforms", locs[:, k]) for k in range(3)]
        for j, bone in enumerate(names):
            path = f'pose.bones["{bone}"].rotation_quaternion'
            channels += [(path, k, bone, quats[:, j, k]) for k in range(4)]
        scene.key_fcurves(action, slot, channels, keys_frames)
        keying_only.append(time.perf_counter() - t0)
        keyed = len(keys_frames)
        new.remove_all()

    retarget_s, retarget_tips_s, evaluate_s = _retarget_bake(
        context, video, rigs["shipped"], repeats
    )
    med = statistics.median
    return {
        "benchmark": "blender_extension",
        "blender": bpy.app.version_string,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "rig_build_s": {k: round(med(v), 4) for k, v in build.items()},
        "video": {
            "video_frames": frames,
            "scene_frames_keyed": keyed,
            "fcurves": 3 + 16 * 4,
            "parse_video_s": round(parse_s, 4),
            "key_video_total_s": round(med(total), 4),
            "keying_only_s": round(med(keying_only), 4),
        },
        "retarget_bake": {
            "frames": len(payload.video_tracks(video)[0].frame_indices),
            "rigify_bake_s": round(retarget_s, 4),
            "rigify_bake_fingertips_s": round(retarget_tips_s, 4),
            "source_evaluation_s": round(evaluate_s, 4),
        },  # fmt: skip
        "targets": {"rig_build_s": 1.0, "key_1000_frames_s": 3.0, "retarget_bake_s": 2.0},
        "meets_targets": bool(
            max(med(v) for v in build.values()) < 1.0
            and med(total) * 1000 / max(frames, 1) < 3.0
            and max(retarget_s, retarget_tips_s) * 1000 / max(frames, 1) <= 2.0
        ),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=1000)
    args = ap.parse_args(argv)
    print(json.dumps(run(args.repeats, args.frames), indent=1))


if __name__ == "__main__":
    main()
