"""The checkpoint the repository ships: it loads from the file alone, matches the embedded hand
model, carries its training record, and predicts a hand with the exact camera identity."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.hand_model.model import hand_model_id
from backend.media.image import load_image
from backend.network.checkpoint import read_checkpoint_header
from backend.network.runner import DEFAULT_CHECKPOINT
from backend.options import HandRequest
from backend.pipeline.photo import Predictor

RECORD = DEFAULT_CHECKPOINT.parent / "hamr_light_training"
BUNDLED_PHOTO = Path(__file__).resolve().parents[1] / "backend" / "assets" / "samples"


def manifest_rows(name: str) -> list[list[str]]:
    """A real set's gzipped TSV list of photos in the record, header row first."""
    with gzip.open(RECORD / name, "rt") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def test_shipped_checkpoint_header_and_record():
    header = read_checkpoint_header(DEFAULT_CHECKPOINT)
    assert header["hand_model_id"] == hand_model_id("open")
    meta = header["metadata"]
    # twenty-five stages, each started from the previous one's weights (init_from): default_cpu.toml
    # from scratch, then finetune_cpu, refine_cpu, polish_cpu, extend_cpu, settle_cpu,
    # rewarm_cpu, restart_cpu, anneal_cpu, batch64_cpu, real_mix_cpu (synthetic + real photos),
    # real_bg_cpu (the same, real backgrounds behind half of the synthetic hands), real_aug_cpu
    # (the same, the real hands turned and colour-jittered), then real_aug2_cpu, real_aug3_cpu
    # and real_aug4_cpu (more of the same, in bf16 on the CPU), real_aug5_cpu and real_aug6_cpu
    # (the same, the real hands' 2D labels from the landmark fit), real_diverse_cpu (the same with
    # a second teacher-labelled real set), real_diverse2_cpu (+ a third, video frames),
    # real_signer_cpu (+ a fourth), real_rps_cpu (+ a fifth), real_saudi_cpu (+ a sixth) and
    # real_relabel_cpu (the six sets rebuilt and relabelled on a new machine) and real_relabel2_cpu
    chain = []
    stage = meta
    while stage is not None:
        chain.append(stage)
        assert 0 < stage["step"] <= stage["train_config"]["steps"]
        cfg = stage["train_config"]
        samples = stage["step"] * cfg["batch_size"] * cfg.get("accum_steps", 1)
        assert samples / stage["wall_time_s"] == (pytest.approx(stage["samples_per_s"], rel=0.01))
        stage = (stage.get("init_from") or {}).get("metadata")
    names = [s["train_config"]["name"] for s in reversed(chain)]
    assert names == [
        "default_cpu",
        "finetune_cpu",
        "refine_cpu",
        "polish_cpu",
        "extend_cpu",
        "settle_cpu",
        "rewarm_cpu",
        "restart_cpu",
        "anneal_cpu",
        "batch64_cpu",
        "real_mix_cpu",
        "real_bg_cpu",
        "real_aug_cpu",
        "real_aug2_cpu",
        "real_aug3_cpu",
        "real_aug4_cpu",
        "real_aug5_cpu",
        "real_aug6_cpu",
        "real_diverse_cpu",
        "real_diverse2_cpu",
        "real_signer_cpu",
        "real_rps_cpu",
        "real_saudi_cpu",
        "real_relabel_cpu",
        "real_relabel2_cpu",
    ]
    assert meta["train_config"]["real_augment"] is True
    assert [s.get("precision") for s in chain[:12]] == ["bf16 autocast"] * 12
    labels_2d = [s["train_config"]["data"][1].get("labels_2d") for s in chain[:10]]
    assert labels_2d == ["fit"] * 9 + [None]
    # stage 25's mix: synthetic and six teacher-labelled real sets
    specs = [d["spec"].partition(":")[0] for d in meta["train_config"]["data"]]
    assert specs == ["synthetic"] + ["teacher-folder"] * 6
    # the shipped weights: stage 25's own, not interpolated (stages 11 to 17 were shipped
    # interpolated towards stage 10, stage 18 as it was, stages 19 and 22 halfway from stage 18,
    # stage 24 0.7 of the way from it; stages 20, 21 and 23 were not shipped on their own)
    assert "interpolation" not in meta
    assert meta["init_from"]["path"] == "runs/real_relabel_cpu/last.safetensors"  # stage 24 alone
    for s in chain[:13]:  # the last thirteen stages ran all their steps
        assert s["step"] == s["train_config"]["steps"]
    for prefix in (
        "",
        "stage1_",
        "stage2_",
        "stage3_",
        "stage4_",
        "stage5_",
        "stage6_",
        "stage7_",
        "stage8_",
        "stage9_",
        "stage10_",
        "stage11_",
        "stage12_",
        "stage13_",
        "stage14_",
        "stage15_",
        "stage16_",
        "stage17_",
        "stage18_",
        "stage19_",
        "stage20_",
        "stage21_",
        "stage22_",
        "stage24_",
    ):
        assert (RECORD / f"{prefix}metrics.csv").exists()
        assert (RECORD / f"{prefix}loss_curve.png").exists()
    # stage 19's second real set: every photo named with its source and checksum (the photos
    # themselves are not in the project)
    rows = manifest_rows("morehands_manifest.tsv.gz")
    assert rows[0] == ["path", "repository", "commit", "path_in_repository", "sha256"]
    assert len(rows) - 1 == 1853 and len({r[0] for r in rows[1:]}) == 1853
    assert all(len(r[2]) == 40 and len(r[4]) == 64 for r in rows[1:])
    recorded = json.loads((RECORD / "eval_synthetic_test.json").read_text())["synthetic-test"]
    assert recorded["count"] == 256 and np.isfinite(recorded["pa_mpjpe_mm"])
    assert DEFAULT_CHECKPOINT.stat().st_size < 100 * 2**20


def check_photo_manifest(name: str, count: int) -> None:
    """A later real set's photos: each once (by checksum), with its repository's commit, and
    none from the two collections ../shared/realhands already holds (resized copies there have
    other checksums)."""
    rows = manifest_rows(name)
    assert rows[0] == ["path", "repository", "commit", "path_in_repository", "sha256"]
    assert len(rows) - 1 == count and len({r[4] for r in rows[1:]}) == count
    assert all(len(r[2]) == 40 and len(r[4]) == 64 for r in rows[1:])
    shared_sources = {"SubhiH/HandsDataset", "ardamavi/Sign-Language-Digits-Dataset"}
    assert not {r[1] for r in rows[1:]} & shared_sources


def test_later_real_sets_are_listed_with_their_sources():
    """The real sets added after stage 19 (real_diverse2_cpu.toml, real_signer_cpu.toml,
    real_rps_cpu.toml, real_saudi_cpu.toml):
    every video frame by its clip and frame index, every photo by its repository, commit and
    checksum (the photos themselves are not in the project)."""
    rows = manifest_rows("morehands2_manifest.tsv.gz")
    assert rows[0] == ["path", "repository", "commit", "path_in_repository", "sha256", "frame"]
    assert len(rows) - 1 == 753 and len({r[0] for r in rows[1:]}) == 753
    assert sum(r[5] != "" for r in rows[1:]) == 749  # 749 video frames, 4 photos
    assert all(len(r[2]) == 40 and len(r[4]) == 64 for r in rows[1:])
    # the photo sets: none of them from the collections ../shared/realhands already holds
    check_photo_manifest("morehands3_manifest.tsv.gz", 413)  # real_signer_cpu.toml's fourth set
    # real_rps_cpu.toml's fifth set: 600 green-screen photos of one collection (CC BY-SA 4.0)
    check_photo_manifest("morehands4_manifest.tsv.gz", 600)
    # real_saudi_cpu.toml's sixth set: 349 webcam photos of signers, 24 first-person frames
    check_photo_manifest("morehands5_manifest.tsv.gz", 373)


def test_shipped_checkpoint_predicts_the_bundled_photo():
    predictor = Predictor()  # the default: the shipped checkpoint
    image, _ = load_image(BUNDLED_PHOTO / "synthetic_hand.jpg")
    pred = predictor.predict(image, [HandRequest((170, 106, 396, 353), "right")])
    hand = pred["hands"][0]
    k = torch.tensor(hand["camera"]["K"])
    j = torch.tensor(hand["joints3d_cam"])
    uv = j @ k.T
    np.testing.assert_allclose((uv[:, :2] / uv[:, 2:]).numpy(), hand["keypoints2d"], atol=1e-3)
    # the hand lands in its box and in front of the camera at a plausible distance
    kp = np.asarray(hand["keypoints2d"])
    assert (kp[:, 0] > 100).all() and (kp[:, 0] < 470).all()
    assert (kp[:, 1] > 40).all() and (kp[:, 1] < 420).all()
    assert 0.1 < hand["transl"][2] < 3.0


def test_a_checkpoint_of_another_hand_model_is_refused(tmp_path):
    from backend.network.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    path = tmp_path / "other.safetensors"
    save_checkpoint(path, model, hand_model_id="mano-official-000000000000")
    with pytest.raises(CheckpointError, match="hand model"):
        load_checkpoint(path)
