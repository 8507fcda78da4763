"""Speed of the HTTP service against direct in-process calls. Prints one JSON object.

    python -m benchmarks.serve [--repeats 15] [--threads N] [--checkpoint PATH] [--frames 60]
                               [--load-requests 1000] [--only-hardening] [--out PATH]

For each device (CPU, and CUDA when present), with a real `hamr serve` (uvicorn) subprocess on a
free loopback port and the same checkpoint loaded in this process:

- photo latency: the median wall time of `POST /v1/predict` (multipart upload, decode, predict,
  JSON) against a direct `Predictor.predict` on the same decoded image and box, both with refine
  off (the same network work, no MediaPipe; the predictor traced and frozen as the server loads
  it), the two timed in alternation; their difference is the server's overhead, of which
  decoding the photo (`load_image`, timed alone) is part; and the same overhead as the server
  times it itself (`server_own_ms`: its Server-Timing total minus its predict span, so the
  client's side of HTTP is not in it; `server_own_beyond_decode_ms`: minus its decode span too);
- a photo with no box, as users send them (the bundled 640x480 webcam photo of one hand):
  `POST /v1/predict` with the default options (decode, MediaPipe (a closer look only at
  hands under 160 px), network, fusion, JSON) against MediaPipe's own single pass of detection
  and landmarks (`mediapipe_hands.detect` without tiles or closer views) in this process on the
  decoded photo, the two timed in alternation, and their ratio; then the same against a second
  server on every core (`all_cores`: `hamr serve`'s default where OMP_NUM_THREADS is unset; the
  rest of the run keeps --threads);
- throughput: requests per second with 4 concurrent clients (threads with their own connection);
- video: frames per second of `process_video` in-process, and of a `POST /v1/jobs` upload until
  its result is fetched, on a synthetic clip panning over the photo (--frames frames, 256x256);
  both re-detect hands when the network's confidence drops (a random network's always does), so
  `video_fps_in_process_tracking_only` (min_score 0: never re-detect) is the tracking speed.

Hardening (issue #20), on a fresh CPU server each: `--load-requests` predicts (default 1,000)
from 8 clients at once: errors, and the server's resident memory (VmRSS) after request 100 and
after the last (flat: within 5 %); a request with 10,000 boxes: the median time to its 422 (of
`--repeats`); a 40 Mpx photo (a 7300x5475 noise JPEG, and a 6300x6300 all-zero PNG) with a box
and with the network detector finding hands (and a 512x512 photo detected, for reference): the
server's peak memory (VmHWM) after a warm-up request and after the photo, and the time.

Image: the InterHand2.6M sample photo (../shared/samples) with its annotated box when present, else
a synthetic noise photo. Checkpoint: --checkpoint, else the shipped one, else a random network of
the default (light) config (speed does not depend on the weights). --threads sets torch's CPU
threads here and OMP_NUM_THREADS in the server; on a CPU shared with other jobs, 1 thread avoids
OpenMP threads spin-waiting on each other (many times slower than one thread there).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import torch

from backend.detect import mediapipe_hands
from backend.media.image import load_image
from backend.media.video import probe_video
from backend.network.runner import DEFAULT_CHECKPOINT
from backend.options import HandRequest
from backend.pipeline.photo import Predictor
from backend.pipeline.video import VideoOptions, process_video
from benchmarks.output import add_out_argument, emit

ROOT = Path(__file__).resolve().parents[1]
WEBCAM = ROOT / "backend" / "assets" / "samples" / "webcam_hand.jpg"
SAMPLE = ROOT.parent / "shared" / "samples" / "interhand2.6m" / "image29590.jpg"
SAMPLE_BOX = (32.6, 116.9, 215.6, 234.7)  # annotations_derived.json of the sample
CLIENTS = 4


def benchmark_inputs(workdir: Path, frames: int) -> tuple[bytes, tuple[float, ...], Path]:
    """(photo bytes, hand box, clip path): the sample photo or a noise photo, and a 256x256 clip
    panning over it."""
    if SAMPLE.is_file():
        photo, box = SAMPLE.read_bytes(), SAMPLE_BOX
    else:
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 255, (512, 334, 3), dtype=np.uint8)
        photo, box = cv2.imencode(".jpg", noise)[1].tobytes(), SAMPLE_BOX
    image, _ = load_image(photo)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    clip = workdir / "pan.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (256, 256))
    for i in range(frames):
        y = int(60 + 60 * np.sin(i / frames * 2 * np.pi))  # pan up and down over the hand
        writer.write(np.ascontiguousarray(bgr[y : y + 256, 0:256]))
    writer.release()
    return photo, box, clip


def ensure_checkpoint(path: str | None, workdir: Path) -> Path:
    if path:
        return Path(path)
    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    from backend.hand_model.model import hand_model_id
    from backend.network import HamrConfig, HamrNet
    from backend.network.checkpoint import save_checkpoint

    out = workdir / "random_light.safetensors"
    save_checkpoint(out, HamrNet(HamrConfig.light()), hand_model_id=hand_model_id("open"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, device: str, threads: int | None, cache: Path):
    port = free_port()
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)]
    cmd += ["--checkpoint", str(checkpoint), "--device", device, "--log-level", "warning"]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("server not ready within 180 s")
        time.sleep(0.2)


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def server_timing(header: str) -> dict[str, float]:
    """A Server-Timing header ("decode;dur=1.02, predict;dur=22.10, total;dur=24.31") as
    {name: milliseconds}."""
    spans = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        spans[name] = float(dur)
    return spans


def paired_median_ms(first, second, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Medians (ms) of two callables timed in alternation, so that a change in the machine's
    load (a shared CPU) falls on both alike; their difference is then the cost of what the
    second adds, not of when it ran."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((first, a), (second, b)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(a), statistics.median(b)


def run_device(
    device: str,
    checkpoint: Path,
    photo: bytes,
    box: tuple[float, ...],
    clip: Path,
    repeats: int,
    threads: int | None,
    workdir: Path,
) -> dict:
    predictor = Predictor(checkpoint, device, frozen=True)  # as `hamr serve` loads it
    image, exif = load_image(photo)
    hands = [HandRequest(box, "left")]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def direct() -> None:
        predictor.predict(image, hands, exif_f35_mm=exif, refine=False)
        sync()

    files = {"image": ("photo.jpg", photo, "image/jpeg")}
    # the server's own overhead: the same work both ways, a given box and no MediaPipe
    form = {"box": ",".join(map(str, box)), "side": "left", "refine": "off"}
    process, url = start_server(checkpoint, device, threads, workdir / f"cache-{device}")
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            server_own: list[float] = []  # the server's Server-Timing: total - predict
            server_decode: list[float] = []  # ... and its decode span

            def over_http() -> None:
                response = client.post("/v1/predict", files=files, data=form)
                response.raise_for_status()
                spans = server_timing(response.headers.get("server-timing", ""))
                server_own.append(spans["total"] - spans["predict"])
                server_decode.append(spans["decode"])

            # in process and over HTTP in alternation: the overhead is their difference
            direct_ms, http_ms = paired_median_ms(direct, over_http, repeats)

            mediapipe_ms, http_detect_ms = detected_against_mediapipe(client, repeats)
        decode_ms = median_ms(lambda: load_image(photo), repeats)

        per_client = max(2, repeats // 2)

        def client_loop(_: int) -> None:
            with httpx.Client(base_url=url, timeout=300) as c:
                for _ in range(per_client):
                    c.post("/v1/predict", files=files, data=form).raise_for_status()

        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                list(pool.map(client_loop, range(CLIENTS)))
            rates.append(CLIENTS * per_client / (time.perf_counter() - t0))

        frames = probe_video(clip).frame_count
        video_box = [(40.0, 60.0, 220.0, 180.0)]
        in_process, tracking_only, over_jobs = [], [], []
        for _ in range(3):
            t0 = time.perf_counter()
            process_video(predictor, clip, VideoOptions(boxes=video_box, side="left"))
            in_process.append(frames / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            process_video(
                predictor, clip, VideoOptions(boxes=video_box, side="left", min_score=0.0)
            )
            tracking_only.append(frames / (time.perf_counter() - t0))
            with httpx.Client(base_url=url, timeout=300) as client:
                t0 = time.perf_counter()
                with open(clip, "rb") as f:
                    job = client.post(
                        "/v1/jobs",
                        files={"video": ("pan.mp4", f, "video/mp4")},
                        data={"box": ",".join(map(str, video_box[0])), "side": "left"},
                    )
                job.raise_for_status()
                job_id = job.json()["id"]
                while client.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running"):
                    time.sleep(0.2)
                client.get(f"/v1/jobs/{job_id}/result").raise_for_status()
                over_jobs.append(frames / (time.perf_counter() - t0))
    finally:
        process.terminate()
        process.wait(timeout=60)
    cores = os.cpu_count() or 1
    all_cores = None
    if device == "cpu" and cores > 1 and mediapipe_hands.available():
        all_cores = detected_on_all_cores(checkpoint, cores, repeats, workdir)
    return {
        "device": device,
        "photo_direct_ms": round(direct_ms, 2),
        "photo_http_ms": round(http_ms, 2),
        "server_overhead_ms": round(http_ms - direct_ms, 2),
        "photo_decode_ms": round(decode_ms, 2),
        "server_overhead_beyond_decode_ms": round(http_ms - direct_ms - decode_ms, 2),
        # the same overhead as the server itself times it (its Server-Timing header: the
        # request's total minus the prediction; decoding included, the client's side not)
        "server_own_ms": round(statistics.median(server_own), 2),
        # ... and without its decode span (the HTTP stack, the form, the thread hop, the JSON)
        "server_own_beyond_decode_ms": round(
            statistics.median(o - d for o, d in zip(server_own, server_decode, strict=True)), 2
        ),
        "photo_http_detected_fused_ms": round(http_detect_ms, 2),
        "mediapipe_in_process_ms": None if mediapipe_ms is None else round(mediapipe_ms, 2),
        "http_detected_over_mediapipe": (
            None if mediapipe_ms is None else round(http_detect_ms / mediapipe_ms, 2)
        ),
        # the same boxless photo against a server on every core (`hamr serve`'s default where
        # OMP_NUM_THREADS is unset), MediaPipe's pass here as above
        "all_cores": all_cores,
        "http_requests_per_s_4_clients": round(statistics.median(rates), 2),
        "video_frames": frames,
        "video_fps_in_process": round(statistics.median(in_process), 2),
        "video_fps_in_process_tracking_only": round(statistics.median(tracking_only), 2),
        "video_fps_http_job": round(statistics.median(over_jobs), 2),
    }


def detected_against_mediapipe(client: httpx.Client, repeats: int) -> tuple[float | None, float]:
    """(MediaPipe's own single pass over the decoded webcam photo in this process, ms or None
    without MediaPipe; the same photo with no box over HTTP: detect, network, fusion, the
    default), medians timed in alternation, so that a change in the machine's load falls on
    both alike."""
    webcam = {"image": ("webcam.jpg", WEBCAM.read_bytes(), "image/jpeg")}

    def detected_over_http() -> None:
        client.post("/v1/predict", files=webcam).raise_for_status()

    if not mediapipe_hands.available():
        return None, median_ms(detected_over_http, repeats)
    image, _ = load_image(WEBCAM)
    return paired_median_ms(
        lambda: mediapipe_hands.detect(image, tiles=False, closer=False),
        detected_over_http,
        repeats,
    )


def detected_on_all_cores(checkpoint: Path, cores: int, repeats: int, workdir: Path) -> dict:
    """`detected_against_mediapipe` with the server on `cores` threads: what `hamr serve` does
    by default on this machine (torch's and ONNX Runtime's threads = the cores)."""
    process, url = start_server(checkpoint, "cpu", cores, workdir / "cache-all-cores")
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            mediapipe_ms, http_ms = detected_against_mediapipe(client, repeats)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        "server_threads": cores,
        "photo_http_detected_fused_ms": round(http_ms, 2),
        "mediapipe_in_process_ms": round(mediapipe_ms, 2),
        "http_detected_over_mediapipe": round(http_ms / mediapipe_ms, 2),
    }


def _proc_kb(pid: int, field: str) -> int:
    """VmRSS / VmHWM of a process, kB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def hardening(
    checkpoint: Path, photo: bytes, box: tuple[float, ...], requests: int, repeats: int,
    threads: int | None, workdir: Path,
) -> dict:  # fmt: skip
    """Issue #20's targets: load from 8 clients (errors, RSS flat), 10,000 boxes refused fast,
    the peak memory of a 40 Mpx photo."""
    form = {"box": ",".join(map(str, box)), "side": "left", "refine": "off"}
    files = {"image": ("photo.jpg", photo, "image/jpeg")}
    out: dict = {}
    process, url = start_server(checkpoint, "cpu", threads, workdir / "cache-load")
    try:
        done, errors, rss = 0, 0, {}
        lock = threading.Lock()

        def client_loop(_: int) -> None:
            nonlocal done, errors
            with httpx.Client(base_url=url, timeout=300) as c:
                while True:
                    with lock:
                        if done >= requests:
                            return
                        done += 1
                        n = done
                    if c.post("/v1/predict", files=files, data=form).status_code != 200:
                        with lock:
                            errors += 1
                    if n in (100, requests):
                        rss[n] = _proc_kb(process.pid, "VmRSS")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client_loop, range(8)))
        seconds = time.perf_counter() - t0
        rss[requests] = _proc_kb(process.pid, "VmRSS")
        out["load"] = {
            "requests": requests,
            "clients": 8,
            "errors": errors,
            "seconds": round(seconds, 1),
            "rss_mb_at_100": round(rss[100] / 1024, 1),
            "rss_mb_at_end": round(rss[requests] / 1024, 1),
            "rss_change_pct": round(100 * (rss[requests] / rss[100] - 1), 2),
        }
        boxes = ";".join([",".join(map(str, box))] * 10_000)
        with httpx.Client(base_url=url, timeout=60) as c:

            def refused() -> None:
                response = c.post("/v1/predict", files=files, data={"box": boxes})
                assert response.status_code == 422, response.text

            out["ten_thousand_boxes_422_ms"] = round(median_ms(refused, repeats), 2)
    finally:
        process.terminate()
        process.wait(timeout=60)
    rng = np.random.default_rng(0)
    noise = cv2.resize(rng.integers(0, 255, (183, 244, 3), dtype=np.uint8), (7300, 5475))
    big = {
        "jpeg_7300x5475_noise": cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
        "png_6300x6300_zero": cv2.imencode(".png", np.zeros((6300, 6300, 3), np.uint8))[1],
    }
    small = cv2.imencode(".jpg", cv2.resize(noise, (512, 512)))[1]
    runs = [  # (name, encoded photo, form): with a box, then the hands found (network detector)
        (f"{name}_{how}", encoded, fields)
        for name, encoded in big.items()
        for how, fields in (
            ("box", {"box": "1000,1000,2400,2400", "refine": "off"}),
            ("detect", {"refine": "off", "detector": "hamr"}),
        )
    ]
    runs.append(("jpeg_512x512_noise_detect", small, {"refine": "off", "detector": "hamr"}))
    out["photo_40mpx"] = {}
    for name, encoded, fields in runs:
        process, url = start_server(checkpoint, "cpu", threads, workdir / f"cache-{name}")
        try:
            with httpx.Client(base_url=url, timeout=600) as c:
                c.post("/v1/predict", files=files, data=form).raise_for_status()  # warm
                before = _proc_kb(process.pid, "VmHWM")
                t0 = time.perf_counter()
                upload = {"image": (name, encoded.tobytes())}
                response = c.post("/v1/predict", files=upload, data=fields)
                response.raise_for_status()
                out["photo_40mpx"][name] = {
                    "bytes": int(encoded.size),
                    "seconds": round(time.perf_counter() - t0, 2),
                    "peak_mb_before": round(before / 1024, 1),
                    "peak_mb_after": round(_proc_kb(process.pid, "VmHWM") / 1024, 1),
                }
        finally:
            process.terminate()
            process.wait(timeout=60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--frames", type=int, default=60, help="frames of the synthetic clip")
    parser.add_argument("--load-requests", type=int, default=1000, help="requests of the load run")
    parser.add_argument(
        "--only-hardening", action="store_true", help="only the hardening figures (issue #20)"
    )
    parser.add_argument("--skip-hardening", action="store_true", help="no hardening figures")
    add_out_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="hamr-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = ensure_checkpoint(args.checkpoint, workdir)
        photo, box, clip = benchmark_inputs(workdir, args.frames)
        results = [
            run_device(d, checkpoint, photo, box, clip, args.repeats, args.threads, workdir)
            for d in devices
            if not args.only_hardening
        ]
        hardened = None
        if not args.skip_hardening:
            hardened = hardening(
                checkpoint, photo, box, args.load_requests, args.repeats, args.threads, workdir
            )
    emit(
        {
            "benchmark": "hamr_serve",
            "checkpoint": checkpoint.name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "repeats": args.repeats,
            "clients": CLIENTS,
            "results": results,
            "hardening": hardened,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
