"""Gather a photo set from public git repositories: a manifest becomes the folder it lists.

    python -m training.gather MANIFEST --repos DIR --out OUT [--only-missing] [--no-progress]

MANIFEST is a tab-separated table (gzipped or plain), one header line and one row per file of
the set (the record's `morehands*_manifest.tsv.gz`):
  path                where the file lives inside OUT (relative, '/'-separated)
  repository          the GitHub repository it comes from (OWNER/NAME)
  commit              the commit it was read at (40 hex digits)
  path_in_repository  the file in that commit's tree
  sha256              of the file in the repository (for a video frame: of the whole video;
                      for a photo re-encoded into another format: of the re-encoded file)
  frame               optional column; when set, the 0-based index of the frame of the video
                      `path_in_repository` that `path` (a .jpg) holds
Each row's file is read from a local copy of its repository under DIR (`git cat-file --batch`:
no checkout, no network), checked against its sha256 and written to OUT/path. A video frame is
decoded with OpenCV (`cv2.VideoCapture`, frames read in order from the first, one thread; each
video once for all its frames) and written as a JPEG (`cv2.imencode`, OpenCV's default quality
95; the manifest has no checksum of a frame, only of its video). A row whose `path` names
another image format than its source (a .png listed as a .jpg) is re-encoded as the set was
made (`reencode`: Pillow, RGB without alpha, shrunk to at most MAX_SIDE px on its longer side
with Lanczos, JPEG quality JPEG_QUALITY) and the re-encoded bytes are checked against the
sha256 (those bytes depend on Pillow's resampling and its libjpeg: if only these rows fail after
a Pillow upgrade, that is why); every other file is written byte for byte.

A repository OWNER/NAME is looked up as DIR/OWNER+NAME (the layout of the `fetch` mirrors:
DIR/OWNER+NAME/repo, a bare repository), DIR/OWNER/NAME and DIR/NAME, each as a bare repository
or a normal clone, or a `*.git` folder in them; get a missing one with
`git clone https://github.com/OWNER/NAME DIR/OWNER+NAME`.

Every file is written atomically (a temporary file renamed into place), so a cut run leaves no
half-written file; `--only-missing` skips the files OUT already has (resume). Deterministic
(manifest order; the same bytes for the same repositories). A row that fails (no repository, no
commit or file, a checksum that differs, a frame that does not decode) is named on stderr and
the others go on; the counts (written, skipped, failed) are printed as JSON at the end and the
exit status is 1 when any row failed (2 for a manifest that cannot be read).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

COLUMNS = ("path", "repository", "commit", "path_in_repository", "sha256")
MAX_SIDE = 1024  # px: a re-encoded photo's longer side at most (the sets were made so)
JPEG_QUALITY = 90  # a re-encoded photo's JPEG quality (Pillow)
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


class GatherError(Exception):
    """A row (or a video's rows) that cannot be gathered; the message names what and why."""


@dataclass(frozen=True)
class Row:
    line: int  # line number in the manifest (the header is line 1)
    path: str
    repository: str
    commit: str
    path_in_repository: str
    sha256: str
    frame: int | None = None


def read_manifest(path: Path) -> list[Row]:
    """The manifest's rows (module docstring); ValueError for a malformed manifest."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty manifest")
    header = lines[0].split("\t")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: header lacks column(s) {', '.join(missing)}")
    col = {name: i for i, name in enumerate(header)}
    rows, seen = [], set()
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < len(header):
            cells += [""] * (len(header) - len(cells))
        get = {name: cells[i] for name, i in col.items()}
        frame_text = get.get("frame", "")
        where = f"{path} line {n}"
        out = PurePosixPath(get["path"])
        if out.is_absolute() or ".." in out.parts or not get["path"]:
            raise ValueError(f"{where}: path {get['path']!r} is not a relative path inside OUT")
        if get["path"] in seen:
            raise ValueError(f"{where}: path {get['path']} listed twice")
        seen.add(get["path"])
        if len(get["commit"]) != 40 or len(get["sha256"]) != 64:
            raise ValueError(f"{where}: commit (40 hex) or sha256 (64 hex) malformed")
        if get["repository"].count("/") != 1:
            raise ValueError(f"{where}: repository {get['repository']!r} is not OWNER/NAME")
        try:
            frame = int(frame_text) if frame_text.strip() else None
        except ValueError:
            raise ValueError(f"{where}: frame {frame_text!r} is not an integer") from None
        if frame is not None and frame < 0:
            raise ValueError(f"{where}: frame {frame} is negative")
        rows.append(
            Row(
                n,
                get["path"],
                get["repository"],
                get["commit"].lower(),
                get["path_in_repository"],
                get["sha256"].lower(),
                frame,
            )
        )
    return rows


def _is_git_dir(p: Path) -> bool:
    """A bare repository (or a clone's .git): HEAD, objects/ and refs/ right there."""
    return (p / "HEAD").is_file() and (p / "objects").is_dir() and (p / "refs").is_dir()


def candidate_paths(repos: Path, repository: str) -> list[Path]:
    owner, name = repository.split("/")
    bases = [repos / f"{owner}+{name}", repos / owner / name, repos / name]
    out = []
    for base in bases:
        out += [base / "repo", base, base.with_name(base.name + ".git")]
        if base.is_dir():
            out += sorted(base.glob("*.git"))
    return out


def find_repository(repos: Path, repository: str) -> Path | None:
    """The git directory of OWNER/NAME under `repos` (module docstring), or None."""
    for p in candidate_paths(repos, repository):
        if _is_git_dir(p):
            return p
        if (p / ".git").is_dir() and _is_git_dir(p / ".git"):
            return p / ".git"
        if (p / ".git").is_file():  # a worktree or submodule: ask git where its directory is
            r = subprocess.run(
                ["git", "-C", str(p), "rev-parse", "--absolute-git-dir"],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                return Path(r.stdout.strip())
    return None


def missing_repository_message(repos: Path, repository: str, commit: str) -> str:
    owner, name = repository.split("/")
    target = repos / f"{owner}+{name}"
    return (
        f"repository {repository} not found under {repos} (looked for {owner}+{name}/repo, "
        f"{owner}+{name}, {owner}/{name}, {name}, bare or cloned); get it with: "
        f"git clone https://github.com/{repository} {target} && "
        f"git -C {target} checkout {commit}"
    )


class Repository:
    """One git directory, read through a long-lived `git cat-file --batch`."""

    def __init__(self, git_dir: Path, name: str) -> None:
        self.git_dir = git_dir
        self.name = name
        self._batch: subprocess.Popen | None = None
        self._commits: dict[str, str | None] = {}

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "--git-dir", str(self.git_dir), *args], capture_output=True, check=False
        )

    def check_commit(self, commit: str) -> str | None:
        """None when the commit is there, else why not."""
        if commit not in self._commits:
            r = self._git("cat-file", "-e", f"{commit}^{{commit}}")
            why = None
            if r.returncode != 0:
                err = r.stderr.decode(errors="replace").strip()
                why = (
                    f"commit {commit} is not in {self.name}'s copy at {self.git_dir} "
                    f"(an older or shallow copy? git -C {self.git_dir} fetch origin {commit})"
                )
                if "dubious ownership" in err or "not a git repository" in err:
                    why = f"{self.name}: git cannot read {self.git_dir}: {err}"
            self._commits[commit] = why
        return self._commits[commit]

    def read(self, commit: str, path: str) -> bytes:
        """The bytes of `path` in `commit`'s tree; GatherError when it is not there."""
        why = self.check_commit(commit)
        if why:
            raise GatherError(why)
        if "\n" in path:
            raise GatherError(f"{self.name}: a path with a newline cannot be read: {path!r}")
        if self._batch is None:
            self._batch = subprocess.Popen(
                ["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        assert self._batch.stdin is not None and self._batch.stdout is not None
        self._batch.stdin.write(f"{commit}:{path}\n".encode())
        self._batch.stdin.flush()
        header = self._batch.stdout.readline()
        if not header:
            self._batch = None
            raise GatherError(f"{self.name}: git cat-file stopped while reading {commit}:{path}")
        parts = header.decode(errors="replace").rstrip("\n").rsplit(" ", 2)
        if len(parts) != 3 or not parts[2].isdigit():
            raise GatherError(self._why_missing(commit, path))
        _, kind, size = parts
        data = self._batch.stdout.read(int(size))
        self._batch.stdout.read(1)  # the newline after the contents
        if kind != "blob":
            raise GatherError(f"{self.name}: {path} at {commit[:12]} is a {kind}, not a file")
        return data

    def _why_missing(self, commit: str, path: str) -> str:
        r = self._git("ls-tree", commit, "--", path)
        listed = r.stdout.decode(errors="replace").split()
        if r.returncode == 0 and len(listed) >= 3:
            return (
                f"{self.name}: {path} is in commit {commit[:12]}'s tree (object {listed[2]}) but "
                f"its contents are absent from {self.git_dir} (a partial snapshot leaves out "
                "large files): use a full clone, git clone https://github.com/"
                f"{self.name}"
            )
        return f"{self.name}: no file {path} in commit {commit[:12]}"

    def close(self) -> None:
        if self._batch is not None:
            assert self._batch.stdin is not None
            self._batch.stdin.close()
            self._batch.wait()
            self._batch = None


def check_sha256(data: bytes, row: Row, note: str = "") -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != row.sha256:
        why = ""
        if data.startswith(LFS_POINTER):
            why = " (it is a Git LFS pointer, not the file: git lfs pull in that repository)"
        raise GatherError(
            f"checksum mismatch for {row.repository} {row.commit[:12]}:"
            f"{row.path_in_repository}{note}: manifest sha256 {row.sha256}, read {got}{why}"
        )


def write_atomic(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a temporary file in its folder and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a photo set is for every user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_image(image, suffix: str) -> bytes:
    import cv2

    ok, buf = cv2.imencode(suffix, image)
    if not ok:
        raise GatherError(f"OpenCV cannot encode a {suffix} image")
    return buf.tobytes()


def reencode(data: bytes, suffix: str) -> bytes:
    """A photo in another format, as the sets were made: Pillow, RGB (alpha dropped), the longer
    side shrunk to MAX_SIDE with Lanczos when larger, JPEG at JPEG_QUALITY (or PNG)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise GatherError(f"the source does not decode as a photo ({e})") from None
    w, h = image.size
    scale = MAX_SIDE / max(w, h)
    if scale < 1:
        image = image.resize((round(w * scale), round(h * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    if suffix in (".jpg", ".jpeg"):
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
    elif suffix == ".png":
        image.save(buf, "PNG")
    else:
        raise GatherError(f"cannot re-encode a photo as {suffix}")
    return buf.getvalue()


def _needs_conversion(row: Row) -> bool:
    def fmt(p: str) -> str:
        s = PurePosixPath(p).suffix.lower()
        return ".jpg" if s == ".jpeg" else s

    return fmt(row.path) != fmt(row.path_in_repository)


def decode_frames(data: bytes, frames: list[int], video_name: str):
    """Yield (index, BGR image) of the wanted 0-based frames of a video given as bytes, reading
    it from the first frame in order; GatherError for a frame past its end or unreadable."""
    import cv2

    suffix = PurePosixPath(video_name).suffix or ".mp4"
    wanted = sorted(set(frames))
    with tempfile.TemporaryDirectory(prefix="hamr-gather-") as tmp:
        path = Path(tmp) / f"video{suffix}"
        path.write_bytes(data)
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if not cap.isOpened():
            raise GatherError(f"{video_name}: OpenCV cannot open the video")
        try:
            index, k = 0, 0
            while k < len(wanted):
                ok, image = cap.read()
                if not ok or image is None:
                    raise GatherError(
                        f"{video_name}: OpenCV read {index} frames; frame {wanted[k]} and the "
                        "frames after it cannot be read"
                    )
                if index == wanted[k]:
                    yield index, image
                    k += 1
                index += 1
        finally:
            cap.release()


def gather(
    manifest: Path,
    repos: Path,
    out: Path,
    only_missing: bool = False,
    progress: bool = True,
    log=None,
) -> dict:
    """Gather every row of `manifest` into `out` (module docstring); returns the summary."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    rows = read_manifest(manifest)
    t0 = time.perf_counter()
    counts = Counter(written=0, skipped=0)
    failures: list[dict] = []
    repositories: dict[str, Repository | None] = {}

    reasons: Counter = Counter()

    def fail(row: Row, reason: str) -> None:
        """Count a failed row; each reason is logged once (with its first row's path)."""
        failures.append({"path": row.path, "line": row.line, "error": reason})
        if not reasons[reason]:
            log(f"error: {row.path}: {reason}")
        reasons[reason] += 1

    def repository(row: Row) -> Repository:
        if row.repository not in repositories:
            git_dir = find_repository(repos, row.repository)
            repositories[row.repository] = git_dir and Repository(git_dir, row.repository)
        repo = repositories[row.repository]
        if repo is None:
            raise GatherError(missing_repository_message(repos, row.repository, row.commit))
        return repo

    # units of work in manifest order: a photo row, or every frame row of one video (at the
    # place of its first row)
    units: list[list[Row]] = []
    videos: dict[tuple[str, str, str, str], list[Row]] = {}
    for row in rows:
        if row.frame is None:
            units.append([row])
            continue
        key = (row.repository, row.commit, row.path_in_repository, row.sha256)
        if key not in videos:
            videos[key] = []
            units.append(videos[key])
        videos[key].append(row)

    from tqdm import tqdm

    bar = tqdm(
        total=len(rows), unit="file", dynamic_ncols=True, file=sys.stderr, disable=not progress
    )
    try:
        for unit in units:
            todo = [r for r in unit if not (only_missing and (out / r.path).is_file())]
            counts["skipped"] += len(unit) - len(todo)
            bar.update(len(unit) - len(todo))
            if not todo:
                continue
            first = todo[0]
            convert = first.frame is None and _needs_conversion(first)
            try:
                data = repository(first).read(first.commit, first.path_in_repository)
                if convert:
                    data = reencode(data, PurePosixPath(first.path).suffix.lower())
                check_sha256(data, first, " re-encoded" if convert else "")
            except GatherError as e:
                for r in todo:
                    fail(r, str(e))
                bar.update(len(todo))
                continue
            if first.frame is None:
                write_atomic(out / first.path, data)
                counts["written"] += 1
                bar.update(1)
                continue
            by_frame: dict[int, list[Row]] = {}
            for r in todo:
                by_frame.setdefault(r.frame, []).append(r)
            done: set[str] = set()
            try:
                for index, image in decode_frames(data, list(by_frame), first.path_in_repository):
                    for r in by_frame[index]:
                        suffix = PurePosixPath(r.path).suffix.lower() or ".jpg"
                        write_atomic(out / r.path, encode_image(image, suffix))
                        counts["written"] += 1
                        done.add(r.path)
                        bar.update(1)
            except GatherError as e:
                for r in todo:
                    if r.path not in done:
                        fail(r, f"{r.repository} {r.commit[:12]}: {e}")
                        bar.update(1)
            bar.set_postfix(written=counts["written"], failed=len(failures))
    finally:
        bar.close()
        for repo in repositories.values():
            if repo is not None:
                repo.close()
    for reason, n in reasons.items():
        if n > 1:
            log(f"error: {n} rows in all failed with: {reason}")
    return {
        "manifest": str(manifest),
        "out": str(out),
        "rows": len(rows),
        "written": counts["written"],
        "skipped": counts["skipped"],
        "failed": len(failures),
        "failures": failures,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, help="the manifest (.tsv or .tsv.gz)")
    ap.add_argument(
        "--repos",
        type=Path,
        required=True,
        help="the folder of the repositories' git copies (OWNER+NAME/repo, OWNER/NAME, NAME)",
    )
    ap.add_argument("--out", type=Path, required=True, help="the folder the set is written to")
    ap.add_argument(
        "--only-missing", action="store_true", help="skip the files OUT already has (resume)"
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.manifest.is_file():
        print(f"error: {args.manifest} does not exist", file=sys.stderr)
        return 2
    if not args.repos.is_dir():
        print(f"error: {args.repos} is not a folder", file=sys.stderr)
        return 2
    try:
        summary = gather(
            args.manifest, args.repos, args.out, args.only_missing, not args.no_progress
        )
    except (ValueError, UnicodeDecodeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if summary["failed"]:
        print(
            f"error: {summary['failed']} of {summary['rows']} files failed (listed above)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
