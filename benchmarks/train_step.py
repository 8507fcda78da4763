"""Training speed: whole optimisation steps per second, per training config. Prints one JSON object.

    python -m benchmarks.train_step [--configs A.toml,B.toml] [--repeats 5] [--budget-min 20]
                                    [--batch N] [--accum N] [--compare-bf16]

Each config runs on the device training.train would give it ("auto": CUDA when present, else the
CPU; a "cuda" config is skipped, with the reason, on a machine without one), at its batch size
(--batch overrides) with its gradient accumulation (`accum_steps` micro-batches per step;
--accum overrides) and precision (bf16 autocast on CUDA when the config's `bf16` asks, on a CPU
with native bf16 units when its `bf16_cpu` asks: `training.train.autocast_bf16`). Timed, as
medians over --repeats after two warm-up runs:

- step: one step drawn and trained in turn (training.train on CUDA, or with `prefetch = false`):
  draw fresh micro-batches (synthetic ones on the device, and the config's datasets from disk,
  e.g. a teacher-labelled folder, through the same loader as training), forward, the config's
  weighted loss, backward (each micro-batch), clip, AdamW;
- model_step (the baseline): the same step on micro-batches drawn beforehand, no data generation;
- data: drawing one step's micro-batches alone.

samples_per_s counts every micro-batch: comparing `--batch 64` with `--batch 32 --accum 2` shows
what the larger batch costs per sample against accumulating it.

--compare-bf16 times each CPU config's step in the other precision too, after its own, and reports
bf16_speedup (float32 step time / bf16 step time, the same run).

On the CPU, prefetched_step_ms times the steps as training.train runs them there (`prefetch`, on
by default): the next step's batches drawn in a second thread while this one trains, so with a
second core the data's time hides behind the network's; prefetched_samples_per_s is the training
speed.

step / model_step is what drawing data on the fly costs. --budget-min adds the number of steps
that fit in that many minutes, to size `steps` for a run on a time budget (a lent GPU session):
`python -m training.train --config C.toml --steps N`. Weights are the network's initialisation
(speed does not depend on them); the optimizer state is reset for every config.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from backend.network import HamrNet
from benchmarks.timing import median_ms
from training.losses import LossWeights
from training.train import (
    BatchSource,
    TrainConfig,
    _device,
    autocast_bf16,
    cpu_has_bf16,
    train_step,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ",".join(
    str(Path("training/configs") / name)
    for name in ("polish_cpu.toml", "gpu_light.toml", "paper_gpu.toml")
)


def _spec_exists(entry: dict) -> bool:
    _, _, path = entry["spec"].partition(":")
    return not path or Path(path).expanduser().exists()


def bench_config(
    path: Path,
    repeats: int,
    batch: int | None,
    budget_min: float | None,
    accum: int | None = None,
    compare_bf16: bool = False,
) -> dict:
    cfg = TrainConfig.from_toml(path)
    if batch:
        cfg.batch_size = batch
    if accum:
        cfg.accum_steps = accum
    n = cfg.accum_steps
    row: dict = {"config": cfg.name, "preset": cfg.model_preset, "batch": cfg.batch_size}
    row["accum_steps"] = n
    if cfg.device == "cuda" and not torch.cuda.is_available():
        return {**row, "skipped": "the config asks for CUDA and this machine has none"}
    missing = [d["spec"] for d in cfg.data if d["spec"] != "synthetic" and not _spec_exists(d)]
    if missing:
        return {**row, "skipped": f"the config's datasets are not on this machine: {missing}"}
    device = _device(cfg.device, 0)
    torch.manual_seed(0)
    net = HamrNet(cfg.hamr_config()).to(device)
    weights = LossWeights(**cfg.loss)
    optim = torch.optim.AdamW(net.parameters(), lr=1e-6, weight_decay=cfg.weight_decay)
    source = BatchSource(cfg, device, 0, 1)
    bf16 = autocast_bf16(cfg, device)
    counter = itertools.count()
    fixed = [source.batch(10**6 + k) for k in range(n)]

    def draw() -> list:
        return [source.batch(next(counter)) for _ in range(n)]

    def step() -> None:
        train_step(net, draw(), weights, optim, cfg.grad_clip, bf16)

    def model_step() -> None:
        train_step(net, fixed, weights, optim, cfg.grad_clip, bf16)

    def data() -> None:
        draw()

    step_ms = median_ms(step, repeats, device)
    model_ms = median_ms(model_step, repeats, device)
    data_ms = median_ms(data, repeats, device)
    prefetched_ms = None
    if device.type == "cpu":
        # what training.train does on a CPU (`prefetch`): the next step's batches drawn in a
        # second thread while this one trains; each step timed from taking its batches to the
        # end of its optimizer step, the next draw running meanwhile
        with ThreadPoolExecutor(1) as drawer:
            pending = drawer.submit(draw)
            times = []
            for _ in range(repeats + 2):  # two warm-up steps
                t0 = time.perf_counter()
                batches = pending.result()
                pending = drawer.submit(draw)
                train_step(net, batches, weights, optim, cfg.grad_clip, bf16)
                times.append((time.perf_counter() - t0) * 1e3)
            pending.result()
        prefetched_ms = statistics.median(times[2:])
    row.update(
        device=device.type,
        bf16=bf16,
        params=sum(p.numel() for p in net.parameters()),
        step_ms=round(step_ms, 1),
        model_step_ms=round(model_ms, 1),
        data_ms=round(data_ms, 1),
        samples_per_s=round(cfg.batch_size * n / step_ms * 1e3, 2),
        step_over_model_step=round(step_ms / model_ms, 3),
    )
    if prefetched_ms is not None:
        row.update(
            prefetched_step_ms=round(prefetched_ms, 1),
            prefetched_samples_per_s=round(cfg.batch_size * n / prefetched_ms * 1e3, 2),
        )
    if compare_bf16 and device.type == "cpu":
        # the same steps in the other precision, after the config's own: float32 against bf16
        # autocast (where the CPU has native bf16), so the speed-up is measured in one run
        if not cpu_has_bf16():
            row["other_precision"] = {"skipped": "this CPU has no native bf16 (AMX/AVX512-BF16)"}
        else:
            other = not bf16

            def other_step() -> None:
                train_step(net, draw(), weights, optim, cfg.grad_clip, other)

            def other_model_step() -> None:
                train_step(net, fixed, weights, optim, cfg.grad_clip, other)

            other_ms = median_ms(other_step, repeats, device)
            row["other_precision"] = {
                "bf16": other,
                "step_ms": round(other_ms, 1),
                "model_step_ms": round(median_ms(other_model_step, repeats, device), 1),
                "samples_per_s": round(cfg.batch_size * n / other_ms * 1e3, 2),
            }
            fp32_ms, bf16_ms = (other_ms, step_ms) if bf16 else (step_ms, other_ms)
            row["bf16_speedup"] = round(fp32_ms / bf16_ms, 3)
    if budget_min:
        row["steps_in_budget"] = int(budget_min * 60e3 / step_ms)
    return row


def run(
    configs: list[str],
    repeats: int,
    batch: int | None,
    budget_min: float | None,
    accum: int | None = None,
    compare_bf16: bool = False,
) -> dict:
    results = []
    for name in configs:
        path = Path(name)
        if not path.is_absolute() and not path.exists():
            path = REPO / path
        results.append(bench_config(path, repeats, batch, budget_min, accum, compare_bf16))
    return {
        "benchmark": "hamr_train_step",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_bf16": cpu_has_bf16(),
        "repeats": repeats,
        "budget_min": budget_min,
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated TOML paths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="override every config's batch")
    parser.add_argument(
        "--accum", type=int, default=None, help="override every config's accum_steps"
    )
    parser.add_argument("--budget-min", type=float, default=None, help="minutes to size a run for")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--compare-bf16",
        action="store_true",
        help="on the CPU, also time each config's step in the other precision (float32 / bf16)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("batch", "accum", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    report = run(
        args.configs.split(","),
        args.repeats,
        args.batch,
        args.budget_min,
        args.accum,
        args.compare_bf16,
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
