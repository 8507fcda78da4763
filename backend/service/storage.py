"""What the service keeps on disk, in $XDG_CACHE_HOME/hamr: the upload folders (one per server,
named for its process, so a later server sweeps those of servers that are gone) and a small
record per unfinished job (so a job killed with its server is reported failed, not unknown);
and `all_finite`, the check that a result can be sent as JSON.

Imports the standard library only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("hamr.server")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/hamr (default ~/.cache/hamr), created."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hamr"
    root.mkdir(parents=True, exist_ok=True)
    return root


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a recycled id counts: its folder waits a start)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def upload_root_for(root: Path) -> Path:
    """A new upload folder for this server: uploads-<pid>-<random>, so a later server knows
    whose it is."""
    path = root / f"uploads-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def sweep_stale(root: Path) -> list[Path]:
    """Remove the upload folders of servers that are gone (killed mid-job: nothing else removes
    them), and those of an older naming without a process id. Returns what was removed."""
    removed = []
    for folder in root.glob("uploads-*"):
        parts = folder.name.split("-")
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0
        if pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class JobRecords:
    """One small JSON file per unfinished job, {"id", "pid", "state"}, in a folder of the cache
    (None: kept nowhere). `orphans` takes those of servers that are gone."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def write(self, job_id: str, state: str = "queued") -> None:
        if self.folder is None:
            return
        record = {"id": job_id, "pid": os.getpid(), "state": state}
        tmp = self.folder / f".{job_id}.tmp"
        try:
            tmp.write_text(json.dumps(record))
            tmp.replace(self.folder / f"{job_id}.json")
        except OSError:
            log.warning("cannot write the record of job %s", job_id, exc_info=True)

    def remove(self, job_id: str) -> None:
        if self.folder is not None:
            (self.folder / f"{job_id}.json").unlink(missing_ok=True)

    def orphans(self) -> list[tuple[str, str]]:
        """(id, state) of the jobs whose server is gone; their records are removed."""
        if self.folder is None:
            return []
        found = []
        for path in self.folder.glob("*.json"):
            try:
                record = json.loads(path.read_text())
                job_id, pid, state = str(record["id"]), int(record["pid"]), str(record["state"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if pid == os.getpid() or process_alive(pid):
                continue  # another live server's job
            found.append((job_id, state))
            path.unlink(missing_ok=True)
        return found


def all_finite(value: Any) -> bool:
    """Whether every float in a JSON-like value is finite (JSON has no NaN or infinity)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True
