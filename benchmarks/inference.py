"""Inference speed of the HAMR network per preset. Prints one JSON object.

    python -m benchmarks.inference [--repeats 15] [--configs light,paper] [--threads N]

For each device (CPU, and CUDA when present), preset and precision (fp32; bf16 autocast on CUDA,
and on CPU with --cpu-bf16): the median (and best) wall time of a full forward pass (heat-maps,
regressor, mesh, keypoints; eval mode, no grad) at batch 1 (per-crop latency) and at a throughput
batch (64 on CUDA, 16 on CPU where 64 crops of the paper network take seconds), reported as crops
per second. Weights are random: speed does not depend on them. On a CPU shared with other work,
medians with as many torch threads as cores can be many times the best run (threads wait for
each other): compare runs on an idle machine.

`cpu_runtimes`: per preset, a crop's forward pass at batch 1 on the CPU in the three forms the
backend can run (`backend.network.runner`): eager, the convolutional part traced and frozen by
TorchScript, and the convolutional part and regressor on ONNX Runtime (`hamr serve` and `hamr
video`), timed in turn (one call of each per round, so a change in the machine's load falls on
all three alike), with each one's ratio to eager.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from backend.network import HamrConfig, HamrNet

CPU_THROUGHPUT_BATCH = 16
CUDA_THROUGHPUT_BATCH = 64


def time_ms(net: HamrNet, images: torch.Tensor, repeats: int, bf16: bool) -> tuple[float, float]:
    """(median, best) milliseconds of `net(images)` over `repeats` timed runs after 3 warm-up
    runs. The best run shows what the machine can do when other work shares its cores."""
    device = images.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    with torch.no_grad(), autocast:
        for i in range(3 + repeats):
            sync()
            t0 = time.perf_counter()
            net(images)
            sync()
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def cpu_runtimes(configs: list[str], repeats: int) -> list[dict]:
    """`cpu_runtimes` of the module docstring: medians over `repeats` rounds after 3 warm-up
    rounds; a form that cannot be built here (no onnxruntime) is reported as null."""
    return [cpu_runtime_row(name, repeats) for name in configs]


def cpu_runtime_row(name: str, repeats: int) -> dict:
    from backend.network.runner import OnnxBackbone, frozen_backbone

    config = getattr(HamrConfig, name)()
    net = HamrNet(config).eval()
    image = torch.rand(1, 3, config.input_size, config.input_size)
    traced = frozen_backbone(net)
    backbones = {
        "eager": net.backbone,
        "torchscript": None if traced is net.backbone else traced,
        "onnxruntime": OnnxBackbone.build(net, threads=torch.get_num_threads()),
    }
    times: dict[str, list[float]] = {k: [] for k, bb in backbones.items() if bb is not None}
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for i in range(3 + repeats):
            for key in times:
                t0 = time.perf_counter()
                net.head(*backbones[key](image))
                if i >= 3:
                    times[key].append((time.perf_counter() - t0) * 1e3)
    median = {k: statistics.median(v) for k, v in times.items()}
    row: dict = {"config": name, "batch": 1}
    for key in backbones:
        ms = median.get(key)
        row[f"{key}_ms"] = None if ms is None else round(ms, 2)
        if key != "eager":
            row[f"{key}_over_eager"] = None if ms is None else round(ms / median["eager"], 3)
    return row


def run(configs: list[str], repeats: int, cpu_bf16: bool) -> dict:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for name in configs:
        config = getattr(HamrConfig, name)()
        net = HamrNet(config).eval()
        params = sum(p.numel() for p in net.parameters())
        for device in devices:
            net = net.to(device)
            big = CUDA_THROUGHPUT_BATCH if device.type == "cuda" else CPU_THROUGHPUT_BATCH
            precisions = ["fp32", "bf16"] if device.type == "cuda" or cpu_bf16 else ["fp32"]
            for precision in precisions:
                bf16 = precision == "bf16"
                one = torch.rand(1, 3, config.input_size, config.input_size, device=device)
                many = torch.rand(big, 3, config.input_size, config.input_size, device=device)
                latency, latency_best = time_ms(net, one, repeats, bf16)
                batch_ms, batch_best = time_ms(net, many, max(3, repeats // 3), bf16)
                results.append(
                    {
                        "config": name,
                        "params": params,
                        "device": device.type,
                        "precision": precision,
                        "latency_ms_batch1": round(latency, 2),
                        "latency_ms_batch1_best": round(latency_best, 2),
                        "throughput_batch": big,
                        "throughput_crops_per_s": round(big / batch_ms * 1e3, 1),
                        "throughput_crops_per_s_best": round(big / batch_best * 1e3, 1),
                    }
                )
    return {
        "benchmark": "hamr_inference",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "repeats": repeats,
        "results": results,
        "cpu_runtimes": cpu_runtimes(configs, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--configs", default="light,paper")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run(args.configs.split(","), args.repeats, args.cpu_bf16), indent=1))


if __name__ == "__main__":
    main()
