"""HTTP client for the HAMR backend (DESIGN.md "HTTP API"), on urllib only.

`HamrClient` wraps the endpoints the extension uses: health, model (rig data), predict (one image,
multipart upload) and video jobs (submit, poll, fetch the result, cancel). Every failure becomes a
`BackendError` whose message can be shown to the user as is:

- `BackendUnreachable`: nothing answers at the URL (connection refused, unknown host, timeout);
  the message says how to start the backend;
- `BackendError` with ``status`` and ``code``: the backend answered with its JSON error
  ``{"error": {"code", "message"}}`` (or with something that is not JSON).

Loopback URLs bypass any HTTP proxy configured in the environment (a proxy cannot reach the
user's own machine). Uploads stream from disk, so a large video is not read into memory.
Pure standard library (no bpy): testable anywhere.
"""

from __future__ import annotations

import http.client
import io
import json
import mimetypes
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO

DEFAULT_URL = "http://127.0.0.1:8734"
START_HINT = "Start it with 'Start Backend' in the HAMR panel, or run `hamr serve` in a terminal."
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Python's repr of an object, e.g. "<_io.BytesIO object at 0x7f...>": a backend message that
# names the upload by its in-memory stream says nothing to the user (the file name does)
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
# the backend's error codes about the uploaded file itself: their messages get its name
UPLOAD_ERRORS = frozenset({"bad_image", "empty_image", "bad_video", "too_many_pixels"})


class BackendError(RuntimeError):
    """A request to the backend failed; str(error) is a message for the user."""

    def __init__(self, message: str, status: int | None = None, code: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BackendUnreachable(BackendError):
    """No HAMR backend answers at the URL."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, code="unreachable")


def normalize_url(url: str) -> str:
    """'127.0.0.1:8734/' -> 'http://127.0.0.1:8734'. Raises ValueError for an unusable URL."""
    url = (url or "").strip()
    if not url:
        raise ValueError("the backend URL is empty; set it in the HAMR preferences")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        # http.client refuses these when the request is made (InvalidURL, not an OSError)
        raise ValueError(
            f"the backend URL must not contain spaces or control characters, got {url!r}"
        )
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number in 0-65535
    except ValueError as e:
        raise ValueError(f"the backend URL {url!r} is not valid: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the backend URL must look like http://HOST:PORT, got {url!r}")
    del port
    return url.rstrip("/")


def is_loopback(url: str) -> bool:
    """True when the URL points at this machine."""
    host = urllib.parse.urlsplit(normalize_url(url)).hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


# ------------------------------------------------------------------------------ multipart
class _Multipart(io.RawIOBase):
    """A multipart/form-data body read in chunks: text fields in memory, files streamed."""

    def __init__(self, fields: dict[str, str], files: dict[str, tuple[str, Any]]) -> None:
        super().__init__()
        self.boundary = "hamr-" + uuid.uuid4().hex
        self._parts: list[bytes | tuple[BinaryIO, int]] = []
        self.length = 0
        self.file_names = [filename for filename, _ in files.values()]
        for name, value in fields.items():
            self._add(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for name, (filename, source) in files.items():
            ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
            self._add(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{safe}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
            )
            if isinstance(source, (bytes, bytearray)):
                self._add(bytes(source))
            else:  # a path: streamed
                size = os.path.getsize(source)
                self._parts.append((open(source, "rb"), size))  # noqa: SIM115 closed in read/close
                self.length += size
            self._add(b"\r\n")
        self._add(f"--{self.boundary}--\r\n".encode())
        self._index = 0

    def _add(self, data: bytes) -> None:
        self._parts.append(data)
        self.length += len(data)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while self._index < len(self._parts) and (size < 0 or len(out) < size):
            part = self._parts[self._index]
            want = -1 if size < 0 else size - len(out)
            if isinstance(part, bytes):
                take = part if want < 0 else part[:want]
                out += take
                rest = part[len(take) :]
                if rest:
                    self._parts[self._index] = rest
                else:
                    self._index += 1
            else:
                fh, _ = part
                chunk = fh.read(want if want > 0 else 1 << 20)
                if chunk:
                    out += chunk
                else:
                    fh.close()
                    self._index += 1
        return bytes(out)

    def close(self) -> None:
        for part in self._parts:
            if isinstance(part, tuple):
                part[0].close()
        super().close()


# ------------------------------------------------------------------------------ client
def _image_source(
    image: str | os.PathLike | bytes, filename: str | None, default_name: str
) -> tuple[Any, str]:
    """(what _Multipart uploads, the file name) for an image given as a path or encoded bytes;
    BackendError when the path is not a file."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), filename or default_name
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise BackendError(f"Image file not found: {path}", code="not_found")
    return path, filename or os.path.basename(path)


class HamrClient:
    """Talks to one HAMR backend. Each call raises BackendError (or a subclass) on failure.
    handlers: urllib handlers its requests also go through (a caller that must be able to cut
    a request off passes its own HTTP(S) handlers); a loopback URL bypasses proxies."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str = "",
        timeout: float = 30.0,
        handlers: Sequence[urllib.request.BaseHandler] = (),
    ) -> None:
        self.url = normalize_url(url)
        self.token = token
        self.timeout = timeout
        chain = list(handlers)
        if is_loopback(self.url):
            chain.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*chain)

    # -------------------------------------------------------------------- transport
    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: bytes | _Multipart | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> dict:
        """One request -> the decoded JSON object of a 2xx answer; raises BackendError."""
        raw, status = self._send(method, path, query, body, content_type, timeout)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BackendError(
                f"The server at {self.url} answered {method} {path} with something that is not "
                f"JSON (HTTP {status}); is it a HAMR backend?",
                status=status,
                code="bad_response",
            ) from None
        if not isinstance(doc, dict):
            raise BackendError(
                f"The backend answered {method} {path} with a JSON {type(doc).__name__}, "
                "expected an object",
                status=status,
                code="bad_response",
            )
        return doc

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: bytes | _Multipart | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        accept: str = "application/json",
    ) -> tuple[bytes, int]:
        """One request -> (the body of a 2xx answer, its status); raises BackendError."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": accept, "User-Agent": "hamr-blender"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        if isinstance(body, _Multipart):
            headers["Content-Length"] = str(body.length)
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        wait = self.timeout if timeout is None else timeout
        try:
            with self._opener.open(req, timeout=wait) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            names = body.file_names if isinstance(body, _Multipart) else []
            raise self._http_error(e, names[0] if names else None) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise BackendUnreachable(
                    f"The HAMR backend at {self.url} did not answer within {wait:g} s."
                ) from None
            if isinstance(reason, ConnectionRefusedError):
                why = "connection refused (nothing is listening there)"
            elif isinstance(reason, socket.gaierror):
                why = "unknown host"
            else:
                why = str(reason)
            raise BackendUnreachable(
                f"Cannot reach the HAMR backend at {self.url}: {why}. {START_HINT}"
            ) from None
        except TimeoutError:
            raise BackendUnreachable(
                f"The HAMR backend at {self.url} did not answer within {wait:g} s."
            ) from None
        except (ConnectionError, OSError) as e:
            raise BackendUnreachable(
                f"Lost the connection to the HAMR backend at {self.url}: {e}. {START_HINT}"
            ) from None
        except http.client.HTTPException as e:  # InvalidURL, a malformed answer...
            raise BackendError(
                f"Cannot talk to the HAMR backend at {self.url}: {type(e).__name__}: {e}",
                code="bad_request",
            ) from None
        finally:
            if isinstance(body, _Multipart):
                body.close()
        return raw, status

    def _http_error(
        self, e: urllib.error.HTTPError, upload_name: str | None = None
    ) -> BackendError:
        try:
            raw = e.read()
        except OSError:
            raw = b""
        message, code = "", "http_error"
        try:
            err = json.loads(raw.decode("utf-8")).get("error", {})
            message, code = str(err.get("message", "")), str(err.get("code", code))
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            pass
        if not message:
            message = f"HTTP {e.code} {e.reason}"
            if e.code == 404:
                message += f" (is {self.url} a HAMR backend?)"
        message = _OBJECT_REPR.sub(repr(upload_name) if upload_name else "the upload", message)
        if upload_name and code in UPLOAD_ERRORS and repr(upload_name) not in message:
            message = f"{upload_name!r}: {message}"  # which of the user's files it was
        return BackendError(f"HAMR backend: {message}", status=e.code, code=code)

    # -------------------------------------------------------------------- endpoints
    def health(self, timeout: float = 3.0) -> dict:
        """GET /v1/health -> {"status": "ok", ...}; BackendError with status 503 while loading."""
        return self.request("GET", "/v1/health", timeout=timeout)

    def is_ready(self, timeout: float = 3.0) -> bool:
        """True when the backend answers health with 200."""
        try:
            self.health(timeout=timeout)
        except BackendError:
            return False
        return True

    def model(self, side: str) -> dict:
        """GET /v1/model?side= -> the ``hamr.rig/1`` dict of that side."""
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        return self.request("GET", "/v1/model", query={"side": side})

    def predict(
        self,
        image: str | os.PathLike | bytes,
        filename: str | None = None,
        side: str = "auto",
        box: Iterable[float] | None = None,
        focal: float | None = None,
        timeout: float = 120.0,
        detector: str | None = None,
        refine: bool | None = None,
    ) -> dict:
        """POST /v1/predict with an image (path or encoded bytes) -> ``hamr.prediction/1``.
        detector: what finds the hands without a box ("auto", "mediapipe", "hamr"; None: the
        backend's own setting); refine: fit the hands to MediaPipe's landmarks (None: the
        backend's own setting)."""
        source, name = _image_source(image, filename, "image.png")
        fields = {"side": side}
        if box is not None:
            fields["box"] = ",".join(f"{float(v):g}" for v in box)
        if focal:
            fields["focal"] = f"{float(focal):g}"
        if detector:
            fields["detector"] = detector
        if refine is not None:
            fields["refine"] = "auto" if refine else "off"
        body = _Multipart(fields, {"image": (name, source)})
        return self.request(
            "POST", "/v1/predict", body=body, content_type=body.content_type, timeout=timeout
        )

    def upright_png(
        self, image: str | os.PathLike | bytes, filename: str | None = None, timeout: float = 120.0
    ) -> bytes:
        """POST /v1/image -> PNG bytes of the photo as the backend reads it (decoded, turned
        upright by its EXIF orientation): for photos Blender cannot read itself (HEIC)."""
        source, name = _image_source(image, filename, "image")
        body = _Multipart({}, {"image": (name, source)})
        raw, status = self._send(
            "POST",
            "/v1/image",
            body=body,
            content_type=body.content_type,
            timeout=timeout,
            accept="image/png",
        )
        if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
            raise BackendError(
                f"The backend answered POST /v1/image with something that is not a PNG "
                f"(HTTP {status}); is it an older HAMR backend?",
                status=status,
                code="bad_response",
            )
        return raw

    def submit_video(
        self,
        video_path: str | os.PathLike,
        upload: bool = True,
        side: str = "auto",
        smoothing: float | None = None,
        focal: float | None = None,
        timeout: float = 600.0,
        detector: str | None = None,
        refine: bool | None = None,
    ) -> str:
        """POST /v1/jobs -> the job id. `upload` streams the file; otherwise only its path is
        sent (the backend must then run on this machine and read the file itself), and the file
        is uploaded after all when the backend reads no paths there (403 `path_not_allowed`: it
        reads only folders it was started with, `--allow-path`). smoothing:
        the backend's temporal smoothing strength in [0, 1] (None: its default); refine: fit
        each track to MediaPipe's landmarks (None: the backend's own setting)."""
        path = os.fspath(video_path)
        if not os.path.isfile(path):
            raise BackendError(f"Video file not found: {path}", code="not_found")
        fields = {"side": side}
        if smoothing is not None:
            fields["smoothing"] = f"{float(smoothing):g}"
        if focal:
            fields["focal"] = f"{float(focal):g}"
        if detector:
            fields["detector"] = detector
        if refine is not None:
            fields["refine"] = "auto" if refine else "off"
        doc = None
        if not upload:
            body = _Multipart({**fields, "path": os.path.abspath(path)}, {})
            try:
                doc = self.request(
                    "POST", "/v1/jobs", body=body, content_type=body.content_type, timeout=timeout
                )
            except BackendError as e:
                if e.code != "path_not_allowed":
                    raise
        if doc is None:
            body = _Multipart(fields, {"video": (os.path.basename(path), path)})
            doc = self.request(
                "POST", "/v1/jobs", body=body, content_type=body.content_type, timeout=timeout
            )
        job_id = doc.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise BackendError("The backend did not return a job id", code="bad_response")
        return job_id

    def job(self, job_id: str) -> dict:
        """GET /v1/jobs/{id} -> the job's state and progress."""
        return self.request("GET", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}")

    def job_result(self, job_id: str) -> dict:
        """GET /v1/jobs/{id}/result -> ``hamr.video/1``."""
        return self.request(
            "GET", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/result", timeout=120.0
        )

    def cancel_job(self, job_id: str) -> dict:
        """DELETE /v1/jobs/{id}: cancel (and forget) a job."""
        return self.request("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}")


def job_message(job: dict) -> str:
    """A queued or running job's status dict -> a short line for the panel."""
    if job.get("stage") == "fitting" and job.get("fit_total"):
        return f"fitting to landmarks: frame {job.get('fit_done', 0)}/{job['fit_total']}"
    done, total = job.get("frames_done"), job.get("frames_total")
    return f"frame {done}/{total}" if total else str(job.get("state", ""))


def job_progress(job: dict) -> float:
    """A job status dict -> progress in [0, 1] (accepts a fraction or done/total counts)."""
    p = job.get("progress")
    if isinstance(p, dict):
        done, total = p.get("done", 0), p.get("total") or 0
        return max(0.0, min(1.0, done / total)) if total else 0.0
    if isinstance(p, (int, float)):
        return max(0.0, min(1.0, float(p if p <= 1.0 else p / 100.0)))
    return 0.0


class VideoJob:
    """A backend video job run from a worker thread, so Blender's UI never waits on HTTP.

    `start` submits the clip and polls the job until it ends; the owner (a modal operator)
    reads `state`, `progress` and `message` from its timer and takes `result` when `state` is
    "done". `cancel` asks the thread to stop and DELETE the backend job. States: "submitting",
    "queued", "running", "fetching", then one of "done", "failed", "cancelled".
    """

    FINAL = ("done", "failed", "cancelled")

    def __init__(
        self,
        client: HamrClient,
        video_path: str | os.PathLike,
        upload: bool | None = None,
        side: str = "auto",
        smoothing: float | None = None,
        focal: float | None = None,
        poll_interval: float = 0.5,
        detector: str | None = None,
        refine: bool | None = None,
    ) -> None:
        import threading

        self.client = client
        self.video_path = os.fspath(video_path)
        self.upload = (not is_loopback(client.url)) if upload is None else upload
        self.options = {
            "side": side,
            "smoothing": smoothing,
            "focal": focal,
            "detector": detector,
            "refine": refine,
        }
        self.poll_interval = poll_interval
        self.state = "submitting"
        self.progress = 0.0
        self.message = ""
        self.job_id: str | None = None
        self.result: dict | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hamr-video-job", daemon=True)

    @property
    def finished(self) -> bool:
        return self.state in self.FINAL

    def start(self) -> VideoJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop polling and cancel the backend job (the thread sends the DELETE)."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.job_id = self.client.submit_video(
                self.video_path, upload=self.upload, **self.options
            )
            while True:
                if self._cancel.is_set():
                    self._delete()
                    self.state, self.message = "cancelled", "cancelled"
                    return
                status = self.client.job(self.job_id)
                state = status.get("state", "")
                self.progress = job_progress(status)
                if state in ("queued", "running"):
                    self.state = state
                    self.message = job_message(status)
                elif state == "done":
                    self.state, self.message = "fetching", "fetching the result"
                    self.result = self.client.job_result(self.job_id)
                    self.progress = 1.0
                    self.state = "done"
                    return
                elif state == "cancelled":
                    self.state, self.message = "cancelled", "the backend cancelled the job"
                    return
                else:
                    err = status.get("error") or {}
                    detail = err.get("message") if isinstance(err, dict) else str(err)
                    self.state = "failed"
                    self.message = f"the video job failed: {detail or state or 'unknown state'}"
                    return
                self._cancel.wait(self.poll_interval)
        except BackendError as e:
            if self._cancel.is_set():
                self.state, self.message = "cancelled", "cancelled"
            else:
                self.state, self.message = "failed", str(e)
        except Exception as e:  # the thread must always end in a final state
            self.state, self.message = "failed", f"unexpected error: {e!r}"

    def _delete(self) -> None:
        if self.job_id is None:
            return
        try:
            self.client.cancel_job(self.job_id)
        except BackendError:
            pass  # the job may have ended or the backend gone; nothing left to cancel
