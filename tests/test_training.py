"""Training, evaluation and their helpers: metrics against hand computations, the left->right flip
against the hand models, and real (tiny) training runs: loss goes down, resume, 2-process DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.camera import project_points
from backend.hand_model.model import HandModel
from training.data.transforms import flip_to_right
from training.metrics import f_score, pa_error, pck_2d, pck_auc_3d, procrustes_align
from training.synth.engine import SynthConfig, SyntheticHands

REPO = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
out_dir = "{out}"
model_preset = "light"
steps = {steps}
batch_size = {batch}
lr = 1e-3
warmup_steps = 3
log_every = 1
ckpt_every = 5
eval_count = 4
num_workers = 0
{top}
[model]
hourglass_features = 16
stem_widths = [8, 16]
encoder_widths = [16, 16, 32, 32]
regressor_hidden = 64

[synth]
camera_effects = false
occluder_prob = 0.0
"""


def _write_cfg(tmp: Path, steps: int, batch: int = 2, top: str = "") -> Path:
    """The tiny config with `steps`, `batch` and extra top-level lines `top`."""
    path = tmp / "tiny.toml"
    out = str(tmp / "run").replace("\\", "/")
    path.write_text(TINY.format(out=out, steps=steps, batch=batch, top=top))
    return path


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


# --------------------------------------------------------------------------- metrics


def _random_rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q * torch.sign(torch.det(q))


def test_procrustes_undoes_a_similarity_transform():
    gt = torch.randn(2, 21, 3, dtype=torch.float64)
    rot = _random_rotation(0)
    pred = 1.7 * gt @ rot.T + torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(procrustes_align(pred, gt), gt, atol=1e-9, rtol=0)
    assert pa_error(pred, gt).max() < 1e-9
    # a non-rigid change is not undone: the error equals the hand-computed residual
    bent = gt.clone()
    bent[:, 0] += torch.tensor([0.0, 0.0, 0.21], dtype=torch.float64)
    assert pa_error(bent, gt).min() > 0.001


def test_f_score_and_pck_hand_computed():
    gt = torch.zeros(1, 4, 3)
    gt[0, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    pred = gt.clone()
    pred[0, 3, 1] = 0.5  # one of four points 0.5 m off
    # precision 3/4, recall 3/4 at a 0.1 threshold -> F = 0.75
    assert math.isclose(float(f_score(pred, gt, 0.1)), 0.75, abs_tol=1e-6)
    assert float(f_score(pred, gt, 0.6)) == 1.0
    kp = torch.zeros(1, 21, 3)
    kp[0, :, 0] = torch.linspace(0, 0.1, 21)
    _, auc = pck_auc_3d(kp, kp)
    assert math.isclose(float(auc), 1.0, abs_tol=1e-6)
    off = kp.clone()
    off[0, 1:, 1] += 0.035  # every non-root keypoint 35 mm off: PCK is 0 below 35, 1 above
    pck, auc = pck_auc_3d(off, kp)
    assert math.isclose(float(auc), 0.5, abs_tol=0.04)
    p2 = torch.zeros(1, 21, 2)
    g2 = torch.zeros(1, 21, 2)
    g2[0, :10, 0] = 20.0  # 10 keypoints 20 px off
    vis = torch.ones(1, 21)
    assert math.isclose(float(pck_2d(p2, g2, vis, 10.0)), 11 / 21, abs_tol=1e-6)
    vis[0, :10] = 0
    assert float(pck_2d(p2, g2, vis, 10.0)) == 1.0


# ---------------------------------------------------------------------- left -> right


def test_flip_to_right_gives_consistent_right_hand_labels():
    engine = SyntheticHands(SynthConfig(left_fraction=1.0, camera_effects=False))
    batch = engine.sample(3, torch.Generator().manual_seed(3))
    assert (batch["side"] == 1).all()
    flipped = flip_to_right(batch)
    right = HandModel("right")
    out = right(flipped["pose"], flipped["betas"], flipped["transl"])
    torch.testing.assert_close(out.vertices, flipped["vertices"], atol=2e-5, rtol=0)
    proj = project_points(flipped["keypoints3d"], flipped["K"])
    torch.testing.assert_close(proj, flipped["keypoints2d"], atol=1e-3, rtol=0)
    assert torch.equal(flipped["image"], batch["image"].flip(-1))
    # the flipped mask still covers the flipped keypoints
    kp = flipped["keypoints2d"][0].long().clamp(0, 255)
    assert flipped["mask"][0][kp[:, 1], kp[:, 0]].float().mean() > 0.7
    # right-hand items pass through unchanged
    rb = SyntheticHands(SynthConfig(left_fraction=0.0)).sample(1, torch.Generator().manual_seed(1))
    assert all(torch.equal(v, flip_to_right(rb)[k]) for k, v in rb.items())


# --------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_smoke_config_reduces_the_loss(tmp_path):
    """training/configs/smoke.toml (a few minutes at most on a CPU) must reduce the loss."""
    from training.train import TrainConfig, train

    cfg = TrainConfig.from_toml(REPO / "training" / "configs" / "smoke.toml")
    cfg.out_dir = str(tmp_path / "smoke")
    run = train(cfg, log=lambda *a, **k: None)
    rows = _rows(run)
    first = sum(r["total"] for r in rows[:3]) / 3
    last = sum(r["total"] for r in rows[-3:]) / 3
    assert last < 0.6 * first, f"loss {first:.3f} -> {last:.3f}"
    assert rows[-1]["keypoints2d"] < rows[0]["keypoints2d"]
    assert (run / "last.safetensors").exists() and (run / "loss_curve.png").exists()
    assert (run / "eval.csv").exists()


@pytest.mark.slow
def test_resume_continues_the_run(tmp_path):
    from backend.network.checkpoint import read_checkpoint_header
    from training.train import TrainConfig, train

    cfg = TrainConfig.from_toml(_write_cfg(tmp_path, steps=6))
    run = train(cfg, log=lambda *a, **k: None)
    rows = _rows(run)
    first = read_checkpoint_header(run / "last.safetensors")["metadata"]
    cfg.steps = 9
    train(cfg, resume=True, log=lambda *a, **k: None)
    rows2 = _rows(run)
    assert rows2[-1]["step"] == 8 and len(rows2) == len(rows) + 3
    assert rows2[: len(rows)] == rows
    header = read_checkpoint_header(run / "last.safetensors")
    assert header["metadata"]["step"] == 9
    # wall time, samples and throughput cover both invocations; the CSV's clock keeps running
    meta = header["metadata"]
    assert meta["resumed_at"] == [6] and "resumed_at" not in first
    assert meta["samples_seen"] == 9 * cfg.batch_size
    assert meta["wall_time_s"] > first["wall_time_s"]
    assert meta["samples_per_s"] == pytest.approx(
        meta["samples_seen"] / meta["wall_time_s"], rel=0.02
    )
    assert rows2[len(rows)]["time_s"] >= rows[-1]["time_s"]
    assert header["metadata"]["train_config"]["name"] == "tiny"
    with pytest.raises(FileNotFoundError, match="--resume"):
        cfg.out_dir = str(tmp_path / "elsewhere")
        train(cfg, resume=True, log=lambda *a, **k: None)


def test_init_from_starts_a_new_run_from_a_checkpoint(tmp_path):
    """init_from loads the weights (lr 0: they come through unchanged), starts the step count and
    schedule afresh, keeps the source's record, and refuses a checkpoint of another network."""
    from backend.network.checkpoint import load_checkpoint, read_checkpoint_header
    from training.train import TrainConfig, train

    quiet = {"log": lambda *a, **k: None}
    cfg = TrainConfig.from_toml(_write_cfg(tmp_path, steps=3))
    first = train(cfg, **quiet) / "last.safetensors"
    second = TrainConfig.from_toml(_write_cfg(tmp_path, steps=2))
    second.out_dir, second.init_from, second.lr = str(tmp_path / "stage2"), str(first), 0.0
    run = train(second, **quiet)
    a, b = load_checkpoint(first)[0].state_dict(), load_checkpoint(run / "last.safetensors")[0]
    for name, tensor in b.state_dict().items():
        if tensor.is_floating_point() and "running" not in name:  # BN statistics still update
            torch.testing.assert_close(tensor, a[name], rtol=0, atol=0, msg=name)
    meta = read_checkpoint_header(run / "last.safetensors")["metadata"]
    assert meta["step"] == 2 and _rows(run)[0]["step"] == 0
    assert meta["init_from"]["path"] == str(first) and meta["init_from"]["metadata"]["step"] == 3
    other = TrainConfig.from_toml(_write_cfg(tmp_path, steps=1))
    other.model = {**other.model, "regressor_hidden": 32}
    other.out_dir, other.init_from = str(tmp_path / "stage3"), str(first)
    with pytest.raises(ValueError, match="regressor_hidden"):
        train(other, **quiet)
    other.init_from = str(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(other, **quiet)


def test_accumulated_micro_batches_step_on_the_mean_of_their_gradients(tmp_path):
    """train_step over a list of micro-batches: the gradient of their mean loss, which is the
    mean of the gradients each micro-batch gives alone (the reference: train_step on each),
    and the logged losses are their means. Summing the gradients would double them. (A batch
    holding both micro-batches is no reference: BatchNorm normalises over the whole batch.)"""
    import copy

    from backend.network.hamr import HamrNet
    from training.losses import LossWeights
    from training.train import BatchSource, TrainConfig, train_step

    cfg = TrainConfig.from_toml(_write_cfg(tmp_path, steps=1))
    cfg.model = {**cfg.model, "dropout": 0.0}  # the same network function on every call
    torch.manual_seed(0)
    net = HamrNet(cfg.hamr_config())
    source = BatchSource(cfg, torch.device("cpu"), 0, 1)
    first, second = source.batch(0), source.batch(1)
    weights = LossWeights(**cfg.loss)

    def step(batch):
        model = copy.deepcopy(net)
        optim = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay; grads remain
        total, terms, norm = train_step(model, batch, weights, optim, 1e9, False)
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return total, terms, norm, grads

    t_both, terms_both, norm_both, g_both = step([first, second])
    t_1, terms_1, _, g_1 = step(first)
    t_2, terms_2, _, g_2 = step(second)
    assert not torch.allclose(g_1, g_2, rtol=0.1)  # two different batches
    torch.testing.assert_close(
        g_both, (g_1 + g_2) / 2, rtol=1e-4, atol=1e-6 * float(g_1.abs().max())
    )
    torch.testing.assert_close(norm_both, g_both.norm(), rtol=1e-5, atol=0)
    torch.testing.assert_close(t_both, (t_1 + t_2) / 2, rtol=1e-6, atol=0)
    for name, value in terms_both.items():
        torch.testing.assert_close(value, (terms_1[name] + terms_2[name]) / 2, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="at least one"):
        train_step(net, [], weights, torch.optim.SGD(net.parameters(), lr=0.0), 1.0, False)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_with_gloo(tmp_path):
    """Two ranks train, stop together on the time limit (the ranks agree on it through an
    all-reduce, or one would wait forever for the other), then resume to the end. Each step
    accumulates two micro-batches (the first without DDP's all-reduce)."""
    import socket

    from backend.network.checkpoint import load_checkpoint

    cfg = _write_cfg(tmp_path, steps=4, batch=1, top="accum_steps = 2")
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def torchrun(config: Path, *extra: str) -> None:
        with socket.socket() as sock:  # a free port for the rendezvous (0 would reach workers)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
            + ["--master_addr", "127.0.0.1", "--master_port", str(port)]
            + ["-m", "training.train", "--config", str(config), *extra],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(cfg, "--time-limit-min", "1e-6")  # a limit every rank passes at once
    _, info = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert info["metadata"]["world_size"] == 2 and info["metadata"]["step"] == 1
    torchrun(cfg, "--resume")
    _, info = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert info["metadata"]["step"] == 4 and info["metadata"]["resumed_at"] == [1]
    assert info["metadata"]["samples_seen"] == 4 * 2 * 2  # 2 micro-batches of 1, on 2 ranks


@pytest.mark.slow
def test_evaluate_untrained_baseline(tmp_path, capsys):
    """--untrained evaluates a fresh network (the mean-initialisation baseline): deterministic."""
    from training.evaluate import main

    runs = []
    for _ in range(2):
        assert main(["--untrained", "light", "--count", "2"]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0]["untrained"] == "light" and runs[0] == runs[1]
    assert math.isfinite(runs[0]["synthetic-test"]["pa_mpjpe_mm"])
    with pytest.raises(SystemExit):  # one of --checkpoint / --untrained is required
        main(["--count", "2"])


def test_evaluate_cli_on_a_trained_checkpoint(tmp_path):
    from training.train import TrainConfig, train

    run = train(TrainConfig.from_toml(_write_cfg(tmp_path, steps=2)), log=lambda *a, **k: None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.evaluate",
            "--checkpoint",
            str(run / "last.safetensors"),
            "--count",
            "4",
            "--overlays",
            str(tmp_path / "ov"),
            "--json",
            str(tmp_path / "m.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "m.json").read_text())["synthetic-test"]
    for key in (
        "pa_mpjpe_mm",
        "pa_mpvpe_mm",
        "f_at_5mm",
        "f_at_15mm",
        "pck3d_auc_20_50",
        "pck2d_0.1",
    ):
        assert key in result and math.isfinite(result[key])
    assert len(list((tmp_path / "ov").glob("*.png"))) == 4
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.evaluate",
            "--checkpoint",
            str(tmp_path / "missing.safetensors"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "error" in bad.stderr


def test_bf16_on_the_cpu_is_used_where_the_cpu_has_it_and_recorded(tmp_path):
    """`bf16_cpu = true`: the forward passes run under bf16 autocast where the CPU has native
    bf16 (AMX / AVX512-BF16), float32 elsewhere; the checkpoint records which, and a bf16 step
    lands within bf16's rounding of the float32 step from the same weights and batch."""
    from backend.network.checkpoint import read_checkpoint_header
    from training.losses import LossWeights
    from training.train import BatchSource, TrainConfig, autocast_bf16, cpu_has_bf16, train
    from training.train import train_step as one_step

    cfg = TrainConfig.from_toml(_write_cfg(tmp_path, steps=2, top="bf16_cpu = true"))
    cpu = torch.device("cpu")
    assert autocast_bf16(cfg, cpu) == cpu_has_bf16()
    assert not autocast_bf16(TrainConfig(), cpu)  # off unless asked (and bf16 alone is CUDA's)
    run = train(cfg, log=lambda *a, **k: None)
    meta = read_checkpoint_header(run / "last.safetensors")["metadata"]
    assert meta["precision"] == ("bf16 autocast" if cpu_has_bf16() else "float32")
    assert all(math.isfinite(r["total"]) for r in _rows(run))

    from backend.network import HamrNet

    batch = BatchSource(cfg, cpu, 0, 1).batch(0)
    losses = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        net = HamrNet(cfg.hamr_config())
        optim = torch.optim.AdamW(net.parameters(), lr=1e-3)
        total, _, _ = one_step(net, batch, LossWeights(**cfg.loss), optim, 5.0, bf16)
        losses[bf16] = float(total)
    # bf16 keeps 8 bits of mantissa: the loss moves by a few per cent at most, not more
    assert losses[True] == pytest.approx(losses[False], rel=0.05)
    path = tmp_path / "bad.toml"
    path.write_text('bf16_cpu = "yes"\n')
    with pytest.raises(ValueError, match="bf16_cpu must be true or false"):
        TrainConfig.from_toml(path)


def test_prefetching_the_next_batches_changes_nothing_but_the_time(tmp_path):
    """`prefetch` (the CPU default) draws step s+1's batches in a second thread while step s
    trains: the same batches, so the same losses and the same weights as drawing them in turn."""
    from backend.network.checkpoint import load_checkpoint
    from training.train import TrainConfig, train

    runs = {}
    for prefetch in (True, False):
        folder = tmp_path / str(prefetch)
        folder.mkdir()
        top = f"prefetch = {str(prefetch).lower()}\naccum_steps = 2"
        cfg = TrainConfig.from_toml(_write_cfg(folder, steps=5, top=top))
        runs[prefetch] = train(cfg, log=lambda *a, **k: None)
    assert _rows(runs[True]) and [
        {k: v for k, v in r.items() if k != "time_s"} for r in _rows(runs[True])
    ] == [{k: v for k, v in r.items() if k != "time_s"} for r in _rows(runs[False])]
    (a, _), (b, _) = (load_checkpoint(runs[p] / "last.safetensors") for p in (True, False))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_bad_training_configs_are_refused(tmp_path):
    from training.train import TrainConfig

    path = tmp_path / "bad.toml"
    path.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_toml(path)
    cfg = TrainConfig(model={"hourglass_featurez": 8})
    with pytest.raises(ValueError, match="unknown HamrConfig"):
        cfg.hamr_config()
    with pytest.raises(ValueError):
        TrainConfig(model_preset="huge").hamr_config()

    from training.train import main

    ok = _write_cfg(tmp_path, steps=1)
    assert main(["--config", str(ok), "--time-limit-min", "-1"]) == 2
    assert main(["--config", str(ok), "--steps", "-5"]) == 2
    for bad in ("accum_steps = 0", "accum_steps = 1.5", "batch_size = 0"):
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match="positive integer"):
            TrainConfig.from_toml(path)
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert not (tmp_path / "run").exists()  # nothing was started


def test_every_shipped_training_config_is_valid():
    """Each TOML in training/configs builds its network, losses and synthetic engine settings,
    names known datasets and devices, and starts (init_from) from a file in the repository or
    from another config's run folder, so a chain of stages can be replayed from a fresh clone."""
    import dataclasses

    from training.data.mix import DATASET_NAMES
    from training.losses import LossWeights
    from training.train import TrainConfig

    configs = sorted((REPO / "training" / "configs").glob("*.toml"))
    assert len(configs) >= 7
    parsed = {p.stem: TrainConfig.from_toml(p) for p in configs}
    run_outputs = {f"{c.out_dir}/last.safetensors" for c in parsed.values()}
    for stem, cfg in parsed.items():
        assert cfg.name == stem, f"{stem}.toml names its run {cfg.name!r}"
        cfg.hamr_config()
        LossWeights(**cfg.loss)
        SynthConfig(**cfg.synth)
        assert cfg.device in ("auto", "cpu", "cuda")
        assert 0 <= cfg.warmup_steps < cfg.steps and cfg.batch_size > 0 and cfg.lr > 0
        for entry in cfg.data:
            assert entry["spec"].partition(":")[0] in (*DATASET_NAMES, "synthetic"), entry
        if cfg.init_from:
            assert cfg.init_from in run_outputs or (REPO / cfg.init_from).is_file(), stem
            assert cfg.init_from != f"{cfg.out_dir}/last.safetensors", f"{stem} starts from itself"
        json.dumps(dataclasses.asdict(cfg))  # serialisable into the checkpoint's JSON header


def test_moving_average_of_the_weights_follows_its_formula_and_resumes(tmp_path):
    """ema_decay: raw.safetensors is the run trained without it (the average does not touch the
    training), last.safetensors the average of the weights after each step, computed here by
    hand from the checkpoints of runs 1, 2 and 3 steps long, with the decays min(ema_decay,
    (1 + n) / (10 + n)); --resume continues both."""
    from backend.network.checkpoint import load_checkpoint, read_checkpoint_header
    from training.train import TrainConfig, train

    quiet = {"log": lambda *a, **k: None}
    start = (
        train(TrainConfig.from_toml(_write_cfg(tmp_path, steps=1)), **quiet) / "last.safetensors"
    )
    trained = []  # the weights after 1, 2, 3 steps of the same run, without the average
    for steps in (1, 2, 3):
        cfg = TrainConfig.from_toml(_write_cfg(tmp_path, steps=steps))
        cfg.out_dir, cfg.init_from = str(tmp_path / f"plain{steps}"), str(start)
        trained.append(load_checkpoint(train(cfg, **quiet) / "last.safetensors")[0].state_dict())
    cfg = TrainConfig.from_toml(_write_cfg(tmp_path, steps=2, top="ema_decay = 0.5"))
    cfg.out_dir, cfg.init_from = str(tmp_path / "ema"), str(start)
    run = train(cfg, **quiet)
    cfg.steps = 3
    train(cfg, resume=True, **quiet)
    average = load_checkpoint(run / "last.safetensors")[0].state_dict()
    raw = load_checkpoint(run / "raw.safetensors")[0].state_dict()
    expected = {k: v.double() for k, v in load_checkpoint(start)[0].state_dict().items()}
    for n, weights in enumerate(trained, start=1):
        d = min(0.5, (1 + n) / (10 + n))  # 0.1818..., 0.25, 0.3077...
        for k, v in weights.items():
            expected[k] = d * expected[k] + (1 - d) * v.double() if v.is_floating_point() else v
    moved = 0
    for name, value in average.items():
        torch.testing.assert_close(raw[name], trained[-1][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(
            value.to(expected[name].dtype), expected[name], rtol=1e-5, atol=1e-6, msg=name
        )
        moved += int(not torch.equal(value, trained[-1][name]))
    assert moved > 10  # the average is not the last weights
    meta = read_checkpoint_header(run / "last.safetensors")["metadata"]
    assert meta["ema"] == {"decay": 0.5, "updates": 3} and meta["resumed_at"] == [2]
    for bad in ("ema_decay = 1.0", "ema_decay = -0.1", "ema_decay = true"):
        (tmp_path / "bad.toml").write_text(bad + "\n")
        with pytest.raises(ValueError, match="ema_decay"):
            TrainConfig.from_toml(tmp_path / "bad.toml")
