"""hamr.keyframe_video against a real `hamr serve`, and a job cancelled midway.

argv: ZIP URL VIDEO. The operator runs its blocking path (no event loop in background mode;
the modal path runs the same VideoJob and keying). Checks: one rig per track, one key per video
frame on every channel (at its time), continuous quaternion signs, the evaluated mesh at a
keyed frame equal to the backend's hand in the camera frame (the reference: the same clip run
again with the client; the backend gives the same result to the bit every time,
tests/test_detect.py).
Then a second job is cancelled while running: the backend reports it cancelled and the scene
is unchanged.
"""

from __future__ import annotations

import json
import sys
import time

import _common
import bpy
import numpy as np

zip_path, url, video_path = sys.argv[1:4]
pkg = _common.install_extension(zip_path, url)
convert, client_mod, payload = pkg.io.convert, pkg.io.client, pkg.io.payload
scene = bpy.context.scene
scene.render.fps, scene.render.fps_base, scene.frame_start = 24, 1.0, 1
out: dict = {}
before = _common.snapshot()
t0 = time.perf_counter()
out["result"] = list(bpy.ops.hamr.keyframe_video(filepath=video_path, smoothing=0.5))
out["seconds"] = time.perf_counter() - t0
new = sorted(set(_common.snapshot()["objects"]) - set(before["objects"]))
out["new_objects"] = new
out["new_actions"] = sorted(set(_common.snapshot()["actions"]) - set(before["actions"]))
arms = [bpy.data.objects[n] for n in new if bpy.data.objects[n].get("hamr_rig")]

# the backend's result for the same clip (deterministic, network and fit): the reference
c = client_mod.HamrClient(url)
job = client_mod.VideoJob(c, video_path, smoothing=0.5, poll_interval=0.1).start()
job.join(300)
video = payload.parse_video(job.result)
tracks = {t.track: t for t in payload.video_tracks(video)}
out["tracks"] = sorted(tracks)
checks = []
for arm in arms:
    track = tracks[json.loads(arm["hamr_prediction"].as_string())["track"]]
    # each video frame's time in the 24 fps scene (fractional frames: 10 fps -> 1 + 2.4 i)
    frames = convert.scene_frame_times(track.frame_indices, video.fps, 24.0, 1)
    action = arm.animation_data.action
    fcurves = [
        fc
        for layer in action.layers
        for strip in layer.strips
        for bag in strip.channelbags
        for fc in bag.fcurves
    ]
    names = json.loads(arm["hamr_rig"])["bone_names"]
    min_dot = 1.0
    for name in names:
        path = f'pose.bones["{name}"].rotation_quaternion'
        chans = sorted(
            (fc for fc in fcurves if fc.data_path == path), key=lambda fc: fc.array_index
        )
        q = np.array([[kp.co[1] for kp in fc.keyframe_points] for fc in chans]).T
        min_dot = min(min_dot, float(np.min(np.sum(q[1:] * q[:-1], axis=1))))
    k = len(track.frame_indices) // 2
    scene.frame_set(int(frames[k]), subframe=float(frames[k] - int(frames[k])))
    mesh = next(ch for ch in arm.children if ch.get("hamr_kind") == "mesh")
    origin = np.array(arm.parent.matrix_world.translation)
    verts_cam = convert.blender_to_model(_common.evaluated_vertices(mesh, world=True) - origin)
    ref, _ = _common.hand_model_vertices(
        track.side, track.pose_axis_angle[k], track.shape_betas, track.transl[k]
    )
    checks.append(
        {
            "frames": len(set(frames.tolist())),
            "key_counts": sorted({len(fc.keyframe_points) for fc in fcurves}),
            "fcurves": len(fcurves),
            "min_dot": min_dot,
            "mesh_err_m": float(np.abs(verts_cam - ref).max()),
            "first_key": fcurves[0].keyframe_points[0].co[0],
        }
    )
out["checks"] = checks
out["camera"] = scene.camera.name if scene.camera else None
out["clip_background"] = (
    [b.source for b in scene.camera.data.background_images] if scene.camera else []
)

# cancel a running job: the backend says cancelled, nothing is created
state_before = _common.scene_state()
job2 = client_mod.VideoJob(c, video_path, poll_interval=0.05).start()
deadline = time.time() + 60
while job2.state not in ("running", "done", "failed") and time.time() < deadline:
    time.sleep(0.01)
out["state_when_cancelled"] = job2.state
job2.cancel()
job2.join(30)
out["job2_state"] = job2.state
out["backend_job_state"] = c.job(job2.job_id)["state"] if job2.job_id else None
out["unchanged_after_cancel"] = _common.scene_state() == state_before
_common.emit(out)
