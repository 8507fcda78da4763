"""Train HAMR: `python -m training.train --config training/configs/NAME.toml [--resume]`.

Multi-GPU / multi-node: `torchrun --nproc_per_node N -m training.train --config ...` (DDP; NCCL on
CUDA, gloo on CPU). bf16 autocast on CUDA. Each rank draws its own synthetic batches on its own
device (seeded by (seed, rank, micro-batch)) and its own share of any dataset mix. With
`accum_steps` N > 1 each optimizer step accumulates the gradients of N micro-batches of
`batch_size` (a batch N times larger where memory or, on a CPU, cache size limits the batch).

Writes to the run folder (`out_dir` in the config):
  last.safetensors                       the checkpoint (backend.network.checkpoint format); with
                                         `ema_decay`, the weights' moving average
  raw.safetensors                        with `ema_decay` only: the weights being trained
  train_state.pt                         optimizer, scheduler, step, RNG: what --resume reads
  metrics.csv, loss_curve.png            every logged step; eval.csv for the periodic evaluation
  tensorboard/                           when the tensorboard package is installed
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
import torch
import torch.distributed as dist

from backend.hand_model.model import hand_model_id
from backend.network.checkpoint import load_checkpoint, save_checkpoint
from backend.network.config import HamrConfig
from backend.network.hamr import HamrNet

from .data.mix import LABEL_WEIGHT_KEYS
from .data.transforms import flip_to_right
from .losses import LossWeights, hamr_loss
from .synth.engine import SynthConfig, SyntheticHands


@dataclass
class TrainConfig:
    """A training run, read from TOML: top-level keys below, plus [model], [synth], [loss] and
    [[data]] tables that override HamrConfig, SynthConfig, LossWeights and the data mix."""

    name: str = "run"  # run name (used in logs and checkpoint metadata)
    out_dir: str = "runs/run"  # run folder, relative to the current directory
    model_preset: str = "light"  # "light" or "paper"; [model] overrides single fields
    model: dict = field(default_factory=dict)
    synth: dict = field(default_factory=dict)  # SynthConfig overrides for on-the-fly data
    loss: dict = field(default_factory=dict)  # LossWeights overrides
    # data mix: [{"spec": "synthetic"} | {"spec": "freihand:/path", "weight": 0.5}, ...];
    # "synthetic" is the on-the-fly engine; others go through training.data.mix.build_dataset,
    # with a table's other keys as the reader's options (teacher-folder's labels_2d)
    data: list = field(default_factory=lambda: [{"spec": "synthetic", "weight": 1.0}])
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # per rank and micro-batch
    # micro-batches per optimizer step (gradient accumulation): each step learns from
    # batch_size * accum_steps samples per rank
    accum_steps: int = 1
    lr: float = 3e-4  # peak learning rate (AdamW)
    weight_decay: float = 1e-4
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0  # global gradient-norm clip
    seed: int = 0
    device: str = "auto"  # "auto" (cuda when present), "cpu" or "cuda"
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # bf16 autocast on the CPU too, where it has native bf16 matrix units (AMX or AVX512-BF16:
    # `cpu_has_bf16`; this project's 2-core Xeon has both, ~1.8x the model step's speed);
    # on a CPU without them it stays float32 (emulated bf16 is slower)
    bf16_cpu: bool = False
    log_every: int = 10  # steps between metrics.csv rows
    ckpt_every: int = 200  # steps between checkpoints
    eval_every: int = 0  # steps between synthetic test evaluations (0: only at the end)
    eval_count: int = 64  # synthetic test samples per evaluation
    time_limit_min: float = 0.0  # stop cleanly (with a checkpoint) after this long; 0: none
    num_workers: int = 2  # DataLoader workers for dataset mixes
    # > 0: draw this many synthetic batches once and cycle through them (overfitting a small
    # pool: the smoke test's check that gradients reach everything); 0: fresh data every step
    synth_pool: int = 0
    # a checkpoint whose weights start this run (fine-tuning, or a second stage of training): the
    # optimizer, schedule and step start afresh; its header's metadata is kept in this run's
    # checkpoint under "init_from". "": start from the network's own initialisation
    init_from: str = ""
    # on the CPU, draw the next step's micro-batches (the synthetic engine, the datasets) in a
    # second thread while this step trains: the same batches, the data's time hidden behind the
    # network's on a machine with a second core (`benchmarks.train_step`'s prefetched_step_ms)
    prefetch: bool = True
    # turn and recolour the crops of teacher-labelled real hands ([[data]] specs
    # "teacher-folder:...", training.data.common.RealAugment's defaults); others: crop jitter only
    real_augment: bool = False
    # > 0: also keep an exponential moving average of the weights (every floating-point tensor of
    # the network's state, BatchNorm statistics included), updated after each optimizer step with
    # decay min(ema_decay, (1 + n) / (10 + n)) at the n-th update (`WeightAverage`); the run's
    # last.safetensors (what evaluation, shipping and init_from read) is then the average, and
    # raw.safetensors the trained weights (what --resume continues). 0: off
    ema_decay: float = 0.0

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        data = tomllib.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(names)}")
        cfg = cls(**data)
        for key in ("steps", "batch_size", "accum_steps"):
            value = getattr(cfg, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
        for key in ("real_augment", "bf16", "bf16_cpu", "prefetch"):
            if not isinstance(getattr(cfg, key), bool):
                raise ValueError(f"{path}: {key} must be true or false, got {getattr(cfg, key)!r}")
        decay = cfg.ema_decay
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise ValueError(f"{path}: ema_decay must be a number in [0, 1), got {decay!r}")
        return cfg

    def hamr_config(self) -> HamrConfig:
        if self.model_preset not in ("light", "paper"):
            raise ValueError(f"model_preset must be 'light' or 'paper', got {self.model_preset!r}")
        base = getattr(HamrConfig, self.model_preset)().to_dict()
        unknown = sorted(set(self.model) - set(base))
        if unknown:
            raise ValueError(f"[model]: unknown HamrConfig fields {unknown}")
        return HamrConfig.from_dict({**base, **self.model})


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (1 process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay; a multiplier of cfg.lr."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


class BatchSource:
    """Yields training batches: on-the-fly synthetic samples mixed with dataset items by weight."""

    def __init__(
        self, cfg: TrainConfig, device: torch.device, rank: int, world: int, start_micro: int = 0
    ) -> None:
        """start_micro: the first micro-batch this source yields (a resumed run's step times
        accum_steps), so a resumed run reads the dataset items it has not read yet."""
        self.cfg, self.device, self.rank = cfg, device, rank
        synth_weight = sum(d.get("weight", 1.0) for d in cfg.data if d["spec"] == "synthetic")
        others = [d for d in cfg.data if d["spec"] != "synthetic"]
        total = synth_weight + sum(d.get("weight", 1.0) for d in others)
        self.n_synth = round(cfg.batch_size * synth_weight / total) if total else 0
        self.n_data = cfg.batch_size - self.n_synth
        self.engine = SyntheticHands(SynthConfig(**cfg.synth), device) if self.n_synth else None
        self.pool: dict[int, dict[str, torch.Tensor]] = {}
        self.loader = None
        if self.n_data:
            from .data.common import CropJitter, RealAugment
            from .data.mix import MixedDataset, build_dataset

            def augment(spec: str) -> dict:
                real = cfg.real_augment and spec.partition(":")[0] == "teacher-folder"
                return {"real_augment": RealAugment()} if real else {}

            sets = [
                build_dataset(
                    d["spec"],
                    "train",
                    crop_jitter=CropJitter(),
                    seed=cfg.seed + rank,
                    **augment(d["spec"]),
                    **{k: v for k, v in d.items() if k not in ("spec", "weight")},
                )
                for d in others
            ]
            mixed = MixedDataset(
                sets,
                [d.get("weight", 1.0) for d in others],
                length=10**9,
                seed=cfg.seed + 7919 * rank,
            )
            # MixedDataset draws a random dataset and item for each index (seeded by the index),
            # so consecutive indices are a random stream; a RandomSampler over 10**9 indices would
            # hold a 10**9-long permutation (8 GB) in memory
            sampler = range(start_micro * self.n_data, 10**9)
            self.loader = iter(
                torch.utils.data.DataLoader(
                    mixed,
                    batch_size=self.n_data,
                    sampler=sampler,
                    num_workers=cfg.num_workers,
                    drop_last=True,
                    persistent_workers=cfg.num_workers > 0,
                )
            )

    def _synthetic(self, step: int) -> dict[str, torch.Tensor]:
        pool = self.cfg.synth_pool
        key = step % pool if pool else step
        if pool and key in self.pool:
            return self.pool[key]
        g = torch.Generator(device=self.device).manual_seed(
            self.cfg.seed * 1_000_003 + self.rank * 100_003 + key
        )
        batch = self.engine.sample(self.n_synth, g)
        batch["keypoints3d_valid"] = batch["has_3d"][:, None].expand(-1, 21).clone()
        if pool:
            self.pool[key] = batch
        return batch

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        parts = []
        if self.n_synth:
            parts.append(self._synthetic(step))
        if self.n_data:
            parts.append({k: v.to(self.device) for k, v in next(self.loader).items()})
        for p in parts:  # per-sample label weights: 1 where a source has none (synthetic)
            n = p["image"].shape[0]
            for k in LABEL_WEIGHT_KEYS:
                if k not in p:
                    p[k] = torch.ones(n, device=self.device)
        keys = set.intersection(*(set(p) for p in parts))
        batch = {k: torch.cat([p[k] for p in parts]) for k in keys}
        return flip_to_right(batch)


def _plot_curve(rows: list[dict], path: Path) -> None:
    """A small loss-curve PNG (total loss, log scale) drawn with PIL."""
    from PIL import Image, ImageDraw

    if len(rows) < 2:
        return
    w, h, m = 640, 360, 40
    steps = [r["step"] for r in rows]
    vals = [math.log10(max(r["total"], 1e-8)) for r in rows]
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([m, m // 2, w - m // 2, h - m], outline="black")
    pts = [
        (
            m + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (w - 1.5 * m),
            h - m - (v - lo) / (hi - lo) * (h - 1.5 * m),
        )
        for s, v in zip(steps, vals, strict=True)
    ]
    d.line(pts, fill=(40, 90, 200), width=2)
    d.text(
        (m, 4),
        f"total loss (log10 {lo:.2f} .. {hi:.2f}) vs step {steps[0]}..{steps[-1]}",
        fill="black",
    )
    img.save(path)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix units (Intel AMX or AVX512-BF16), where oneDNN's
    bf16 convolutions beat float32; elsewhere bf16 is emulated and slower."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training on `device` runs its forward passes under bf16 autocast: on CUDA when
    the config's `bf16` asks, on the CPU when `bf16_cpu` asks and the CPU has native bf16."""
    if device.type == "cuda":
        return cfg.bf16
    return device.type == "cpu" and cfg.bf16_cpu and cpu_has_bf16()


def train_step(
    net: torch.nn.Module,
    batch: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
    weights: LossWeights,
    optim: torch.optim.Optimizer,
    grad_clip: float,
    bf16: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step on a batch, or on a list of micro-batches whose gradients add up
    (each one's loss divided by their number: the mean of their losses). Per micro-batch:
    forward (bf16 autocast if asked, on the batch's device), the weighted HAMR loss in float32,
    backward; then the global-norm clip and the optimizer step. Under DDP the gradients are
    all-reduced once, with the last micro-batch. Returns (total loss, {term: value}, gradient
    norm before clipping), losses averaged over the micro-batches."""
    batches = [batch] if isinstance(batch, dict) else list(batch)
    if not batches:
        raise ValueError("train_step needs at least one batch")
    net.train()
    optim.zero_grad(set_to_none=True)
    total_sum, term_sums = None, {}
    for i, micro in enumerate(batches):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            device_type = micro["image"].device.type
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                output = net(micro["image"])
            total, terms = hamr_loss(output, micro, weights)
            (total / len(batches)).backward()
        total_sum = total.detach() if total_sum is None else total_sum + total.detach()
        for k, v in terms.items():
            term_sums[k] = term_sums.get(k, 0.0) + v.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optim.step()
    n = len(batches)
    return total_sum / n, {k: v / n for k, v in term_sums.items()}, grad_norm


class WeightAverage:
    """An exponential moving average of a network's weights: a copy whose floating-point state
    (parameters and BatchNorm statistics) moves after each `update(model)` by a share 1 - d of its
    distance to the model's, d = min(decay, (1 + n) / (10 + n)) at the n-th update (so the first
    updates follow the model closely); other state (counters) is copied."""

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = updates

    def decay_at(self, n: int) -> float:
        """The decay d of the n-th update."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        ours, theirs = self.model.state_dict(), model.state_dict()
        for name, avg in ours.items():
            if avg.is_floating_point():
                avg.lerp_(theirs[name].detach(), weight)
            else:
                avg.copy_(theirs[name])


def train(cfg: TrainConfig, resume: bool = False, log=print) -> Path:
    """Run the training loop; returns the run folder."""
    rank, world, local_rank = _dist_info()
    device = _device(cfg.device, local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed + rank)
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    hamr_cfg = cfg.hamr_config()
    model = HamrNet(hamr_cfg).to(device)
    weights = LossWeights(**cfg.loss)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_at(s, cfg))
    start = 0
    state_path = out / "train_state.pt"
    init_record = None  # what started this run's weights, kept in every checkpoint's metadata
    prior_wall_s, prior_samples, resumed_at = 0.0, 0, []  # earlier invocations of this run
    ema = None  # the weights' moving average (ema_decay)
    if resume:  # this run's own weights; init_from, if any, was recorded when the run began
        if not state_path.exists():
            raise FileNotFoundError(f"--resume: no {state_path}; start without --resume")
        state = torch.load(state_path, map_location=device, weights_only=False)
        if cfg.ema_decay and "ema_updates" not in state:
            raise ValueError(f"--resume with ema_decay: {state_path} was written without it")
        # with a moving average, the trained weights are raw.safetensors, the average last's
        raw = out / ("raw.safetensors" if cfg.ema_decay else "last.safetensors")
        loaded, info = load_checkpoint(raw, device)
        model.load_state_dict(loaded.state_dict())
        previous = info.get("metadata", {})
        init_record = previous.get("init_from")
        prior_wall_s = float(previous.get("wall_time_s", 0.0))
        # checkpoints written before samples_seen was recorded: every rank drew batch_size a step
        legacy = previous.get("step", 0) * cfg.batch_size * previous.get("world_size", 1)
        prior_samples = int(previous.get("samples_seen", legacy))
        resumed_at = list(previous.get("resumed_at", []))
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        if cfg.ema_decay:
            averaged, _ = load_checkpoint(out / "last.safetensors", device)
            ema = WeightAverage(averaged, cfg.ema_decay, state["ema_updates"])
        torch.set_rng_state(state["rng_cpu"])
        resumed_at.append(start)
        log(f"resumed from step {start}")
    elif cfg.init_from:
        init_meta = _init_weights(model, cfg.init_from, device)
        init_record = {"path": cfg.init_from, "metadata": init_meta}
        log(f"initialised from {cfg.init_from} (its step {init_meta.get('step', '?')})")
    if cfg.ema_decay and ema is None:  # a new run's average starts at its first weights
        ema = WeightAverage(model, cfg.ema_decay)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    source = BatchSource(cfg, device, rank, world, start_micro=start * cfg.accum_steps)
    rows: list[dict] = []
    csv_path = out / "metrics.csv"
    if resume and csv_path.exists():
        with csv_path.open() as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    writer = _tensorboard(out) if rank == 0 else None
    use_bf16 = autocast_bf16(cfg, device)
    meta = {
        "train_config": dataclasses.asdict(cfg),
        "world_size": world,
        "device": device.type,
        "torch": torch.__version__,
        # what the forward passes ran in (the config asks; the device decides, `autocast_bf16`)
        "precision": "bf16 autocast" if use_bf16 else "float32",
    }
    if init_record is not None:
        meta["init_from"] = init_record
    if resumed_at:
        meta["resumed_at"] = resumed_at  # steps where --resume continued the run
    shipped = model if ema is None else ema.model  # what last.safetensors holds
    progress = _progress(cfg.steps, start, rank == 0)
    t0 = time.perf_counter()
    samples_seen = 0
    step = start
    n_micro = cfg.accum_steps

    def draw(step: int) -> list[dict[str, torch.Tensor]]:
        # micro-batch indices step * N .. step * N + N - 1: with N = 1, the step's own data
        return [source.batch(step * n_micro + k) for k in range(n_micro)]

    # the data thread is the only caller of `source` (its loader is a stateful iterator), one
    # step ahead; seeded generators everywhere, so the batches are those of the plain loop
    drawer = ThreadPoolExecutor(1) if cfg.prefetch and device.type == "cpu" else None
    pending = drawer.submit(draw, start) if drawer is not None and start < cfg.steps else None
    for step in range(start, cfg.steps):
        if drawer is None:
            batches = draw(step)
        else:
            batches = pending.result()
            pending = drawer.submit(draw, step + 1) if step + 1 < cfg.steps else None
        total, terms, grad_norm = train_step(net, batches, weights, optim, cfg.grad_clip, use_bf16)
        del batches
        if ema is not None:
            ema.update(model)
        sched.step()
        samples_seen += cfg.batch_size * n_micro * world
        progress.update(1)
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            row = {
                "step": step,
                "time_s": round(prior_wall_s + time.perf_counter() - t0, 2),
                "lr": sched.get_last_lr()[0],
                "total": float(total.detach()),
                "grad_norm": float(grad_norm),
                **{k: float(v) for k, v in terms.items()},
            }
            rows.append(row)
            progress.set_postfix(loss=f"{row['total']:.4f}")
            if writer is not None:
                for k, v in row.items():
                    writer.add_scalar(f"train/{k}", v, step)
        done = step == cfg.steps - 1
        over_time = bool(cfg.time_limit_min) and time.perf_counter() - t0 > cfg.time_limit_min * 60
        if world > 1 and cfg.time_limit_min:
            # every rank must stop after the same step, or the others wait forever in all-reduce
            flag = torch.tensor([float(over_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over_time = bool(flag.item())
        if rank == 0 and ((step + 1) % cfg.ckpt_every == 0 or done or over_time):
            # wall time and throughput of the whole run, over every --resume
            elapsed = prior_wall_s + time.perf_counter() - t0
            seen = prior_samples + samples_seen
            meta.update(
                step=step + 1,
                wall_time_s=round(elapsed, 3),  # ms: a short run's throughput stays exact
                samples_seen=seen,
                samples_per_s=round(seen / max(elapsed, 1e-9), 2),
            )
            _save(out, model, optim, sched, step + 1, meta, rows, ema)
        if cfg.eval_every and rank == 0 and (step + 1) % cfg.eval_every == 0 and not done:
            _periodic_eval(shipped, cfg, device, out, step + 1, log)
        if over_time:
            log(f"\ntime limit reached after step {step + 1}")
            break
    if drawer is not None:
        drawer.shutdown(wait=True, cancel_futures=True)  # a drawn step left over: let it finish
    progress.close()
    if rank == 0:
        _periodic_eval(shipped, cfg, device, out, step + 1, log)
    if world > 1:
        # every rank reaches the end (rank 0 after its last checkpoint and evaluation) before any
        # tears the group down: a rank that left early aborted once in CI ("terminate called
        # without an active exception", exit -6) in the two-rank time-limit test
        dist.barrier()
        dist.destroy_process_group()
    return out


def _init_weights(model: HamrNet, path: str, device: torch.device) -> dict:
    """Load the weights of checkpoint `path` into `model`; it must be the same network (config and
    hand model). Returns the checkpoint's metadata."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    loaded, info = load_checkpoint(path, device)
    if loaded.config != model.config:
        theirs, ours = loaded.config.to_dict(), model.config.to_dict()
        diff = sorted(k for k in ours if theirs[k] != ours[k])
        raise ValueError(f"init_from: {path} is another network (differs in {diff})")
    model.load_state_dict(loaded.state_dict())
    return info.get("metadata", {})


def _save(
    out: Path, model: HamrNet, optim, sched, step: int, meta: dict, rows: list, ema=None
) -> None:
    hand_id = hand_model_id(model.config.hand_model)
    state = {
        "optim": optim.state_dict(),
        "sched": sched.state_dict(),
        "step": step,
        "rng_cpu": torch.get_rng_state(),
    }
    if ema is None:
        save_checkpoint(out / "last.safetensors", model, hand_model_id=hand_id, metadata=meta)
    else:
        average = {"decay": ema.decay, "updates": ema.updates}
        save_checkpoint(
            out / "raw.safetensors",
            model,
            hand_model_id=hand_id,
            metadata={**meta, "weights": "trained (last.safetensors: their moving average)"},
        )
        save_checkpoint(
            out / "last.safetensors",
            ema.model,
            hand_model_id=hand_id,
            metadata={**meta, "weights": "moving average", "ema": average},
        )
        state["ema_updates"] = ema.updates
    torch.save(state, out / "train_state.pt")
    if rows:
        with (out / "metrics.csv").open("w", newline="") as f:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        _plot_curve(rows, out / "loss_curve.png")


def _periodic_eval(model: HamrNet, cfg: TrainConfig, device, out: Path, step: int, log) -> None:
    from .evaluate import evaluate_synthetic

    metrics = evaluate_synthetic(model, count=cfg.eval_count, device=device)
    metrics["step"] = step
    path = out / "eval.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(metrics))
        if new:
            w.writeheader()
        w.writerow(metrics)
    log(f"\nstep {step}: " + json.dumps({k: round(v, 4) for k, v in metrics.items()}))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.csv always exists
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _progress(total: int, start: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the train extra
        tqdm = None
    if tqdm is None or not enabled:

        class _Null:
            def update(self, n):
                pass

            def set_postfix(self, **k):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--resume", action="store_true", help="continue the run in out_dir")
    ap.add_argument("--out-dir", default=None, help="override out_dir")
    ap.add_argument("--steps", type=int, default=None, help="override steps")
    ap.add_argument(
        "--time-limit-min",
        type=float,
        default=None,
        help="override time_limit_min (this invocation's limit; 0: none)",
    )
    args = ap.parse_args(argv)
    try:
        cfg = TrainConfig.from_toml(args.config)
        if args.out_dir:
            cfg.out_dir = args.out_dir
        if args.steps is not None:
            if args.steps < 1:
                raise ValueError("--steps must be >= 1")
            cfg.steps = args.steps
        if args.time_limit_min is not None:
            if args.time_limit_min < 0:
                raise ValueError("--time-limit-min must be >= 0")
            cfg.time_limit_min = args.time_limit_min
        out = train(cfg, resume=args.resume)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"run": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
