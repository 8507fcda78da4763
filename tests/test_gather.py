"""Gathering a photo set from git repositories by its manifest (training/gather.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.gather import find_repository, main

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "alice/hand-set"
# ten well-separated solid colours (BGR), one a frame
COLOURS = [
    (0, 0, 0), (255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0),
    (0, 255, 255), (255, 0, 255), (255, 255, 0), (128, 128, 128), (0, 128, 255),
]  # fmt: skip
HEADER = ["path", "repository", "commit", "path_in_repository", "sha256", "frame"]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_video(path: Path) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for colour in COLOURS:
        writer.write(np.full((48, 64, 3), colour, np.uint8))
    writer.release()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A repository (a normal clone under repos/alice+hand-set) with a binary file, a photo, a
    PNG the set lists as a JPEG and a 10-frame clip, its commit and the files' bytes."""
    repos = tmp_path_factory.mktemp("repos")
    work = repos / "alice+hand-set"
    (work / "photos").mkdir(parents=True)
    files = {
        "notes.bin": bytes(range(256)) + b"\r\n\x00end",
        "photos/hand 1.jpg": b"\xff\xd8\xff\xe0" + os.urandom(3000),
    }
    for name, data in files.items():
        (work / name).write_bytes(data)
    rgba = np.zeros((600, 1200, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(work / "photos" / "wide.png")
    write_video(work / "clip.avi")
    git("init", "-q", cwd=work)
    git("add", "-A", cwd=work)
    git("-c", "commit.gpgsign=false", "commit", "-q", "-m", "set", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work)
    files["photos/wide.png"] = (work / "photos" / "wide.png").read_bytes()
    files["clip.avi"] = (work / "clip.avi").read_bytes()
    # the PNG re-encoded as the sets were made: RGB, longer side 1024 (Lanczos), JPEG 90
    buf = io.BytesIO()
    wide = Image.open(work / "photos" / "wide.png").convert("RGB")
    wide.resize((1024, 512), Image.LANCZOS).save(buf, "JPEG", quality=90)
    return {"repos": repos, "commit": commit, "files": files, "wide_jpg": buf.getvalue()}


def manifest(path: Path, source: dict, rows: list[list[str]] | None = None) -> Path:
    c, f = source["commit"], source["files"]
    if rows is None:
        photo = "photos/hand 1.jpg"
        rows = [
            ["set/notes.bin", REPOSITORY, c, "notes.bin", sha(f["notes.bin"]), ""],
            ["set/photos/hand1.jpg", REPOSITORY, c, photo, sha(f[photo]), ""],
            ["set/wide.jpg", REPOSITORY, c, "photos/wide.png", sha(source["wide_jpg"]), ""],
        ] + [
            [f"frames/clip/{i:05d}.jpg", REPOSITORY, c, "clip.avi", sha(f["clip.avi"]), str(i)]
            for i in (0, 3, 9)
        ]  # fmt: skip
    text = "\n".join("\t".join(r) for r in [HEADER, *rows]) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def check_set(out: Path, source: dict) -> None:
    f = source["files"]
    assert (out / "set/notes.bin").read_bytes() == f["notes.bin"]
    assert (out / "set/photos/hand1.jpg").read_bytes() == f["photos/hand 1.jpg"]
    assert (out / "set/wide.jpg").read_bytes() == source["wide_jpg"]
    for i in (0, 3, 9):
        with Image.open(out / f"frames/clip/{i:05d}.jpg") as im:
            assert im.format == "JPEG" and im.size == (64, 48)
            rgb = np.asarray(im.convert("RGB"), np.float64)
        expected = np.array(COLOURS[i][::-1], np.float64)  # BGR -> RGB
        assert np.abs(rgb.mean(axis=(0, 1)) - expected).max() < 10, (i, rgb.mean(axis=(0, 1)))
    assert not list(out.rglob(".*.tmp"))


def test_gathers_files_and_frames(tmp_path, source, capsys):
    m = manifest(tmp_path / "m.tsv.gz", source)
    out = tmp_path / "out"
    rc, stdout, err = run([str(m), "--repos", str(source["repos"]), "--out", str(out)], capsys)
    assert rc == 0, err
    assert '"written": 6' in stdout and '"failed": 0' in stdout
    check_set(out, source)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "frames/clip/00000.jpg", "frames/clip/00003.jpg", "frames/clip/00009.jpg",
        "set/notes.bin", "set/photos/hand1.jpg", "set/wide.jpg",
    ]  # fmt: skip


def test_bare_mirror_as_a_subprocess(tmp_path, source):
    """The `fetch` mirrors' layout (DIR/OWNER+NAME/repo, bare), the command run as a module;
    the same bytes as from the clone."""
    mirrors = tmp_path / "mirrors"
    git(
        "clone",
        "-q",
        "--bare",
        str(source["repos"] / "alice+hand-set"),
        str(mirrors / "alice+hand-set" / "repo"),
    )
    m = manifest(tmp_path / "m.tsv.gz", source)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "training.gather", str(m), "--repos", str(mirrors)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    check_set(out, source)
    again = tmp_path / "again"
    r = subprocess.run(
        [*cmd, "--out", str(again), "--no-progress"], cwd=ROOT, env=env, capture_output=True
    )
    assert r.returncode == 0
    for p in out.rglob("*.jpg"):  # deterministic, frames included
        assert (again / p.relative_to(out)).read_bytes() == p.read_bytes()


def test_repository_layouts(tmp_path, source):
    clone = source["repos"] / "alice+hand-set"
    bare = tmp_path / "a" / "alice+hand-set" / "repo"
    git("clone", "-q", "--bare", str(clone), str(bare))
    assert find_repository(tmp_path / "a", REPOSITORY) == bare
    assert find_repository(source["repos"], REPOSITORY) == clone / ".git"
    git("clone", "-q", str(clone), str(tmp_path / "b" / "alice" / "hand-set"))
    assert find_repository(tmp_path / "b", REPOSITORY) == tmp_path / "b/alice/hand-set/.git"
    git("clone", "-q", "--bare", str(clone), str(tmp_path / "c" / "hand-set.git"))
    assert find_repository(tmp_path / "c", REPOSITORY) == tmp_path / "c/hand-set.git"
    # a plain folder inside some other git work tree is not taken for a repository
    (tmp_path / "d" / "alice+hand-set").mkdir(parents=True)
    assert find_repository(tmp_path / "d", REPOSITORY) is None


def test_checksum_mismatch_names_the_file(tmp_path, source, capsys):
    c, data = source["commit"], source["files"]["notes.bin"]
    rows = [
        ["bad.bin", REPOSITORY, c, "notes.bin", "0" * 64, ""],
        ["good.bin", REPOSITORY, c, "notes.bin", sha(data), ""],
    ]
    m = manifest(tmp_path / "m.tsv.gz", source, rows)
    out = tmp_path / "out"
    rc, stdout, err = run([str(m), "--repos", str(source["repos"]), "--out", str(out)], capsys)
    assert rc == 1
    assert "bad.bin" in err and "notes.bin" in err and "checksum mismatch" in err
    assert "0" * 64 in err and sha(data) in err and "Traceback" not in err
    assert not (out / "bad.bin").exists() and (out / "good.bin").read_bytes() == data
    assert '"written": 1' in stdout and '"failed": 1' in stdout


def test_missing_repository_commit_path_and_frame(tmp_path, source, capsys):
    c, f = source["commit"], source["files"]
    rows = [
        ["a.bin", "bob/elsewhere", c, "notes.bin", sha(f["notes.bin"]), ""],
        ["b.bin", REPOSITORY, "1" * 40, "notes.bin", sha(f["notes.bin"]), ""],
        ["c.bin", REPOSITORY, c, "no/such/file.bin", sha(f["notes.bin"]), ""],
        ["d.jpg", REPOSITORY, c, "clip.avi", sha(f["clip.avi"]), "10"],
    ]
    m = manifest(tmp_path / "m.tsv.gz", source, rows)
    out = tmp_path / "out"
    rc, stdout, err = run([str(m), "--repos", str(source["repos"]), "--out", str(out)], capsys)
    assert rc == 1 and "Traceback" not in err
    assert "repository bob/elsewhere not found" in err
    assert "git clone https://github.com/bob/elsewhere" in err and "checkout" in err
    assert f"commit {'1' * 40} is not in {REPOSITORY}" in err
    assert "no file no/such/file.bin" in err
    assert "d.jpg" in err and "frame 10" in err and "cannot be read" in err
    assert '"failed": 4' in stdout and not out.exists()


def test_only_missing_skips_present_files(tmp_path, source, capsys):
    m = manifest(tmp_path / "m.tsv.gz", source)
    out = tmp_path / "out"
    (out / "set").mkdir(parents=True)
    (out / "set/notes.bin").write_bytes(b"already here")
    (out / "frames/clip").mkdir(parents=True)
    (out / "frames/clip/00003.jpg").write_bytes(b"also here")
    args = [str(m), "--repos", str(source["repos"]), "--out", str(out)]
    rc, stdout, _ = run([*args, "--only-missing"], capsys)
    assert rc == 0 and '"written": 4' in stdout and '"skipped": 2' in stdout
    assert (out / "set/notes.bin").read_bytes() == b"already here"
    assert (out / "frames/clip/00003.jpg").read_bytes() == b"also here"
    rc, stdout, _ = run(args, capsys)  # without it every file is written again
    assert rc == 0 and '"written": 6' in stdout
    check_set(out, source)


def test_malformed_manifest_is_refused(tmp_path, source, capsys):
    c, data = source["commit"], source["files"]["notes.bin"]
    m = manifest(
        tmp_path / "m.tsv.gz", source, [["../x.bin", REPOSITORY, c, "notes.bin", sha(data), ""]]
    )
    rc, _, err = run(
        [str(m), "--repos", str(source["repos"]), "--out", str(tmp_path / "o")], capsys
    )
    assert rc == 2 and "not a relative path inside OUT" in err
    rc, _, err = run(
        [str(tmp_path / "none.tsv"), "--repos", str(tmp_path), "--out", str(tmp_path / "o")], capsys
    )
    assert rc == 2 and "does not exist" in err
