"""Start and stop a local `hamr serve` as a child process of Blender (or of `hamr blend`).

`BackendProcess` owns at most one child: `start` launches it (its output goes to a log file, so a
failure can be explained), `poll` says whether it is still starting, ready or dead (with the log's
last lines), `wait_ready` blocks until health answers or a timeout, `stop` terminates it (then
kills it if it does not exit). It only ever signals the process it started itself.

The command comes from the preferences: either a Python (an interpreter or a virtual environment
folder) that has HAMR installed, run as ``PYTHON -m backend.cli serve``, or a command line
(default ``hamr serve``). ``--host`` and ``--port`` are taken from the backend URL unless the
command gives them. Only loopback URLs can be started: a backend elsewhere is not ours to run.

A local backend reads a video job's clip by its path only under the folders it was started with
(``--allow-path``): `start` passes the user's home folder (where Blender's file browser picks
clips; `default_allow_paths`), and the client uploads a clip from anywhere else.

Standard library only (no bpy), so it is tested under plain pytest and reused headless.
"""

from __future__ import annotations

import atexit
import os
import shlex
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from .client import HamrClient, is_loopback, normalize_url

DEFAULT_COMMAND = "hamr serve"
DEFAULT_START_TIMEOUT_S = 120.0
LOG_NAME = "backend.log"


class BackendStartError(RuntimeError):
    """The backend could not be started; the message says why and what to change."""


def python_executable(python: str) -> str:
    """An interpreter path or a virtual environment folder -> the interpreter to run."""
    path = Path(os.path.expanduser(python.strip()))
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe"):
            if candidate.is_file():
                return str(candidate)
        raise BackendStartError(f"no Python interpreter found in the environment folder {path}")
    if not path.is_file():
        raise BackendStartError(f"the Python interpreter {path} does not exist")
    return str(path)


def build_command(
    url: str,
    command: str = DEFAULT_COMMAND,
    python: str = "",
    checkpoint: str = "",
    extra: Sequence[str] = (),
    allow_paths: Sequence[str] = (),
) -> list[str]:
    """The argv that serves HAMR at `url` (loopback only). python, when set, wins over command;
    `allow_paths`: folders whose clips the backend may read by path (``--allow-path``, unless
    the command gives its own); `extra` arguments are appended (e.g. ``--device cuda``)."""
    url = normalize_url(url)
    if not is_loopback(url):
        raise BackendStartError(
            f"the backend URL {url} is not on this machine; only a local backend can be started "
            "from Blender (start the remote one there, or use http://127.0.0.1:PORT)"
        )
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if python.strip():
        argv = [python_executable(python), "-m", "backend.cli", "serve"]
    else:
        try:
            argv = shlex.split(command or DEFAULT_COMMAND, posix=os.name != "nt")
        except ValueError as e:
            raise BackendStartError(f"cannot parse the backend command {command!r}: {e}") from e
        if not argv:
            raise BackendStartError("the backend command is empty; set it in the preferences")
    if "--host" not in argv:
        argv += ["--host", parts.hostname or "127.0.0.1"]
    if "--port" not in argv:
        argv += ["--port", str(port)]
    if checkpoint and "--checkpoint" not in argv:
        argv += ["--checkpoint", checkpoint]
    if "--allow-path" not in argv:
        for folder in allow_paths:
            argv += ["--allow-path", folder]
    return argv + list(extra)


def default_allow_paths() -> list[str]:
    """The folders a backend started from Blender reads clips from by path: the user's home
    (when it is a folder). Clips elsewhere are uploaded (`HamrClient.submit_video`)."""
    home = os.path.expanduser("~")
    return [home] if os.path.isdir(home) and home not in ("/", "~") else []


def log_tail(path: Path | None, lines: int = 8) -> str:
    """The last lines of a log file ('' when missing)."""
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 8192))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-lines:])


class BackendProcess:
    """One child `hamr serve` process."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log_path: Path | None = None
        self._log = None

    @property
    def running(self) -> bool:
        """True while the child we started is alive."""
        return self.process is not None and self.process.poll() is None

    def start(
        self,
        url: str,
        log_dir: str | os.PathLike,
        command: str = DEFAULT_COMMAND,
        python: str = "",
        checkpoint: str = "",
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
        allow_paths: Sequence[str] | None = None,
    ) -> list[str]:
        """Launch the backend (returns at once; see `poll` / `wait_ready`). Returns the argv.
        allow_paths: folders it may read clips from by path (None: `default_allow_paths`)."""
        if self.running:
            raise BackendStartError(
                f"a backend started from here is already running (pid {self.process.pid})"
            )
        if allow_paths is None:
            allow_paths = default_allow_paths()
        argv = build_command(url, command, python, checkpoint, extra, allow_paths)
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / LOG_NAME
        child_env = dict(os.environ if env is None else env)
        child_env.pop("PYTHONHOME", None)  # Blender's own Python home must not leak into it
        self._close_log()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 kept open for the child's lifetime
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # Ctrl+C in Blender's terminal does not reach it
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=child_env,
                **kwargs,
            )
        except FileNotFoundError:
            self._close_log()
            raise BackendStartError(
                f"cannot start the backend: {argv[0]!r} was not found. Install HAMR "
                "(`pip install -e .` in its folder) and set the HAMR preferences' Python to that "
                "environment's interpreter, or give the full path of `hamr` in the command"
            ) from None
        except OSError as e:
            self._close_log()
            raise BackendStartError(f"cannot start the backend ({' '.join(argv)}): {e}") from e
        self.url = normalize_url(url)
        return argv

    def poll(self, client: HamrClient | None = None) -> str:
        """'ready', 'starting', 'stopped' (never started / stopped) or 'exited'."""
        if self.process is None:
            return "stopped"
        if self.process.poll() is not None:
            return "exited"
        client = client or HamrClient(self.url, timeout=2.0)
        return "ready" if client.is_ready(timeout=2.0) else "starting"

    def exit_message(self) -> str:
        """Why the child exited: its exit code and the last lines of its log."""
        code = None if self.process is None else self.process.poll()
        tail = log_tail(self.log_path)
        msg = f"the backend exited with code {code}"
        if tail:
            msg += f"; its log ({self.log_path}) ends with:\n{tail}"
        return msg

    def wait_ready(
        self,
        client: HamrClient | None = None,
        timeout: float = DEFAULT_START_TIMEOUT_S,
        interval: float = 0.25,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """Block until health answers 200; raises BackendStartError when the child exits or the
        timeout passes (the child is then stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.poll(client)
            if state == "ready":
                return
            if state in ("exited", "stopped"):
                raise BackendStartError(self.exit_message())
            if cancelled is not None and cancelled():
                self.stop()
                raise BackendStartError("starting the backend was cancelled")
            if time.monotonic() > deadline:
                tail = log_tail(self.log_path)
                self.stop()
                raise BackendStartError(
                    f"the backend did not become ready within {timeout:g} s"
                    + (f"; its log ends with:\n{tail}" if tail else "")
                )
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the child (SIGTERM, then SIGKILL after `timeout`); returns its exit code."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
            code = proc.returncode
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# The one backend this Blender session started (operators and `hamr blend` share the class).
BACKEND = BackendProcess()
# Blender does not unregister add-ons when it quits, and the child runs in its own session, so
# stop it when the interpreter ends rather than leave a server behind.
atexit.register(BACKEND.stop)


def current_python() -> str:
    """This interpreter (used by `hamr blend`, which runs in the backend's own environment)."""
    return sys.executable
