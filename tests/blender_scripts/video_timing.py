"""hamr.keyframe_video with a clip whose frame rate differs from the scene's, against a real
`hamr serve` (issue #22: keys squeezed, frames dropped, the clip drifting off the hand).

argv: ZIP URL VIDEO SCENE_FPS. The scene runs at SCENE_FPS; the clip at its own rate v.
Checks, against references independent of the keying code:
- time: video frame i is keyed once, at scene frame 1 + i * SCENE_FPS / v (its time), read
  back from the F-curves; the frame range ends at the last key;
- pose: at each key's (sub)frame, Blender's evaluated mesh equals the backend's hand model
  HandModel(theta_i, beta) + transl_i of the same clip's result (fetched again with the client;
  the backend is deterministic) in the camera frame;
- rotations: w >= 0 on every bone's first key, no sign flip between consecutive keys;
- the clip: at every whole scene frame f, the clip frame Blender shows, f - clip.frame_start +
  the evaluated clip.frame_offset (movieclip.cc), is a video frame whose key lies nearest f;
- Euler: the same clip keyed with rotation_mode XYZ gives the same mesh at a key;
- "Use Clip's" frame rate: the scene takes the clip's rate and keys land on whole frames.
"""

from __future__ import annotations

import json
import math
import sys

import _common
import bpy
import numpy as np

zip_path, url, video_path, scene_fps = sys.argv[1:5]
scene_fps = float(scene_fps)
pkg = _common.install_extension(zip_path, url)
convert, client_mod, payload = pkg.io.convert, pkg.io.client, pkg.io.payload
scene = bpy.context.scene
scene.render.fps, scene.render.fps_base = convert.scene_rate(scene_fps)
scene.frame_start, scene.frame_end = 1, 250
out: dict = {"scene_fps": scene_fps}

c = client_mod.HamrClient(url)
job = client_mod.VideoJob(c, video_path, smoothing=0.5, poll_interval=0.1).start()
job.join(300)
video = payload.parse_video(job.result)
tracks = {t.track: t for t in payload.video_tracks(video)}
out["video_fps"] = video.fps
out["track_scores"] = [t.median_score for t in tracks.values()]


def fcurves_of(id_block):
    action = id_block.animation_data.action
    return [
        fc
        for layer in action.layers
        for strip in layer.strips
        for bag in strip.channelbags
        for fc in bag.fcurves
    ]


def new_arms(before):
    names = sorted(set(_common.snapshot()["objects"]) - set(before["objects"]))
    return [bpy.data.objects[n] for n in names if bpy.data.objects[n].get("hamr_rig")]


def mesh_error(arm, track, k, frame):
    scene.frame_set(int(math.floor(frame)), subframe=frame - math.floor(frame))
    mesh = next(ch for ch in arm.children if ch.get("hamr_kind") == "mesh")
    origin = np.array(arm.parent.matrix_world.translation)
    verts_cam = convert.blender_to_model(_common.evaluated_vertices(mesh, world=True) - origin)
    ref, _ = _common.hand_model_vertices(
        track.side, track.pose_axis_angle[k], track.shape_betas, track.transl[k]
    )
    return float(np.abs(verts_cam - ref).max())


before = _common.snapshot()
out["result"] = list(bpy.ops.hamr.keyframe_video(filepath=video_path, smoothing=0.5))
arms = new_arms(before)
checks = []
for arm in arms:
    track = tracks[json.loads(arm["hamr_prediction"].as_string())["track"]]
    fcurves = fcurves_of(arm)
    loc = next(fc for fc in fcurves if fc.data_path == "location" and fc.array_index == 0)
    key_frames = np.array([kp.co[0] for kp in loc.keyframe_points])
    times = 1.0 + track.frame_indices * scene_fps / video.fps  # each frame's time, in frames
    names = json.loads(arm["hamr_rig"])["bone_names"]
    min_dot, first_w = 1.0, 1.0
    for name in names:
        path = f'pose.bones["{name}"].rotation_quaternion'
        chans = sorted((fc for fc in fcurves if fc.data_path == path), key=lambda f: f.array_index)
        q = np.array([[kp.co[1] for kp in fc.keyframe_points] for fc in chans]).T
        min_dot = min(min_dot, float(np.min(np.sum(q[1:] * q[:-1], axis=1))))
        first_w = min(first_w, float(q[0, 0]))
    errors = [mesh_error(arm, track, k, key_frames[k]) for k in range(len(key_frames))]
    # the clip behind the camera at each whole scene frame
    clip = next(b.clip for b in scene.camera.data.background_images if b.source == "MOVIE_CLIP")
    shown_ok, shown = [], []
    for f in range(scene.frame_start, scene.frame_end + 1):
        scene.frame_set(f)
        dg = bpy.context.evaluated_depsgraph_get()
        offset = clip.evaluated_get(dg).frame_offset
        index = f - clip.frame_start + offset  # the clip's 0-based frame Blender shows
        # the video frame keyed nearest f (of two equally near, either)
        dist = np.abs(key_frames - f)
        at = np.flatnonzero(track.frame_indices == index)
        shown.append(index)
        shown_ok.append(len(at) == 1 and dist[at[0]] <= dist.min() + 1e-4)
    checks.append(
        {
            "keys": len(key_frames),
            "video_frames": len(track.frame_indices),
            "key_counts": sorted({len(fc.keyframe_points) for fc in fcurves}),
            "max_time_err_frames": float(np.abs(key_frames - times).max()),
            "last_key": float(key_frames[-1]),
            "mesh_err_m": max(errors),
            "min_dot": min_dot,
            "min_first_w": first_w,
            "clip_shown": shown,
            "clip_all_nearest": all(shown_ok),
            "clip_frames": clip.frame_duration,
        }
    )
out["checks"] = checks
out["frame_range"] = [scene.frame_start, scene.frame_end]
out["collections"] = [c.name for c in scene.collection.children]

# the same clip with Euler keys
before = _common.snapshot()
out["euler_result"] = list(
    bpy.ops.hamr.keyframe_video(filepath=video_path, smoothing=0.5, rotation_mode="XYZ")
)
arm = new_arms(before)[0]
track = tracks[json.loads(arm["hamr_prediction"].as_string())["track"]]
fcurves = fcurves_of(arm)
loc = next(fc for fc in fcurves if fc.data_path == "location" and fc.array_index == 0)
key_frames = [kp.co[0] for kp in loc.keyframe_points]
k = len(key_frames) // 2
out["euler"] = {
    "modes": sorted(
        {arm.pose.bones[n].rotation_mode for n in json.loads(arm["hamr_rig"])["bone_names"]}
    ),
    "paths": sorted({fc.data_path.rsplit(".", 1)[-1] for fc in fcurves}),
    "mesh_err_m": mesh_error(arm, track, k, key_frames[k]),
}

# the scene takes the clip's frame rate
before = _common.snapshot()
out["clip_fps_result"] = list(
    bpy.ops.hamr.keyframe_video(filepath=video_path, smoothing=0.5, scene_fps="CLIP")
)
arm = new_arms(before)[0]
loc = next(fc for fc in fcurves_of(arm) if fc.data_path == "location" and fc.array_index == 0)
out["clip_fps"] = {
    "scene_rate": scene.render.fps / scene.render.fps_base,
    "keys": [kp.co[0] for kp in loc.keyframe_points],
    "frame_end": scene.frame_end,
}
_common.emit(out)
