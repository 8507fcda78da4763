"""The service's front door: the error shape, where it may listen, and the `Guard` middleware
that every request passes before the app sees it:

- browsers: a request whose `Origin` is present and not allowed is refused (403
  `forbidden_origin`), and one whose `Host` names neither this machine's loopback, an IP address
  nor a name the server was told of (--allow-host) is refused (421 `misdirected`): a web page in
  the user's browser can then neither post a form to the server (browsers send `Origin` on every
  cross-origin POST, PUT and DELETE) nor read it through DNS rebinding (its requests carry the
  attacker's host name). Non-browser clients (the Blender extension, curl) send no `Origin`.
- the bearer token (every path but health); a token must be at least MIN_TOKEN_CHARS long;
- the upload cap, checked on Content-Length up front and on the bytes as they stream in;
- the body's pace: a request body that stalls for BODY_IDLE_TIMEOUT_S, or takes longer than
  BODY_TIMEOUT_S in all, is answered 408 (headers are timed by `protocol`);
- at most MAX_OPEN_REQUESTS requests at once (health apart): more is 503 with Retry-After.

Imports Starlette only.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import OptionError

HEALTH_PATH = "/v1/health"
MIN_TOKEN_CHARS = 16
BODY_IDLE_TIMEOUT_S = 30.0  # longest pause between two parts of a request body
BODY_TIMEOUT_S = 600.0  # longest time for a whole request body (50 MB at 85 kB/s)
MAX_OPEN_REQUESTS = 64  # requests in the app at once (each may hold a spooled upload)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class ApiError(Exception):
    """An error response: HTTP status, a stable machine-readable code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse (OptionError) to serve on a non-loopback address without a token, and a token
    shorter than MIN_TOKEN_CHARS or with spaces or control characters (`check_token`)."""
    if token:  # an empty one is none
        check_token(token)
    if not is_loopback(host) and not token:
        raise OptionError(
            f"refusing to serve on {host} without --token: anyone on the network could use it; "
            "pass --token (or set HAMR_TOKEN), or bind 127.0.0.1"
        )


def check_token(token: str) -> None:
    """A bearer token must be MIN_TOKEN_CHARS or more visible ASCII characters (no spaces):
    short ones are guessed, and others cannot travel in an HTTP header as they are."""
    if not (len(token) >= MIN_TOKEN_CHARS and token.isascii() and token.isprintable()):
        raise OptionError(
            f"the token must be at least {MIN_TOKEN_CHARS} visible ASCII characters without "
            "spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if any(c.isspace() for c in token):
        raise OptionError("the token must not contain spaces")


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port and brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _timed(send: Send, started: float) -> Send:
    """`send` that adds `total;dur=MS` (the time since `started`: the request's arrival here,
    its upload included) to the response's Server-Timing header, after any spans the endpoint
    put there (/v1/predict: decode, predict)."""

    async def timed_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            total = f"total;dur={(time.perf_counter() - started) * 1e3:.2f}".encode()
            headers = [(k, v) for k, v in message.get("headers", []) if k != b"server-timing"]
            spans = [v for k, v in message.get("headers", []) if k == b"server-timing" and v]
            headers.append((b"server-timing", b", ".join([*spans, total])))
            message = {**message, "headers": headers}
        await send(message)

    return timed_send


class Guard:
    """Pure ASGI middleware in front of the app (module docstring): origin and host, token,
    upload cap, body pace, requests at once."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        max_body_bytes: int,
        allow_origins: Iterable[str] = (),
        allow_hosts: Iterable[str] = (),
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_open_requests: int = MAX_OPEN_REQUESTS,
    ) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body_bytes
        self.allow_origins = frozenset(o.rstrip("/").lower() for o in allow_origins)
        self.allow_hosts = frozenset(host_name(h) for h in allow_hosts) | LOOPBACK_NAMES
        self.body_idle_timeout_s, self.body_timeout_s = body_idle_timeout_s, body_timeout_s
        self.max_open = max_open_requests
        self.open = 0

    def host_allowed(self, host_header: bytes | None) -> bool:
        """Whether a request's Host names this server: an IP address (a request by address is
        no DNS rebinding), localhost, or a name given with --allow-host. No Host (HTTP/1.0) is
        no browser's request."""
        if host_header is None:
            return True
        name = host_name(host_header.decode("latin-1"))
        return name in self.allow_hosts or is_ip_address(name)

    def origin_allowed(self, origin: bytes | None) -> bool:
        """No Origin (not a browser's cross-site request), or one on the --allow-origin list."""
        return origin is None or origin.decode("latin-1").rstrip("/").lower() in self.allow_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            refusal.headers["Connection"] = "close"
            await refusal(scope, receive, send)
            return
        if scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        if self.open >= self.max_open:
            busy = error_response(
                503,
                "busy",
                f"the server is handling {self.open} requests; retry shortly",
                {"Retry-After": "1", "Connection": "close"},
            )
            await busy(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, self._paced(receive), _timed(send, time.perf_counter()))
        finally:
            self.open -= 1

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> JSONResponse | None:
        """The response that refuses a request before the app sees it, or None."""
        if not self.origin_allowed(headers.get(b"origin")):
            return error_response(
                403,
                "forbidden_origin",
                "requests from web pages are refused (Origin not allowed; see --allow-origin)",
            )
        if not self.host_allowed(headers.get(b"host")):
            return error_response(
                421,
                "misdirected",
                "the Host header names another server (see --allow-host)",
            )
        if self.expected is not None and scope["path"] != HEALTH_PATH:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return error_response(
                    401,
                    "unauthorized",
                    "missing or wrong token: send 'Authorization: Bearer <token>'",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            return error_response(413, "too_large", self._too_large_message(int(length)))
        return None

    def _paced(self, receive: Receive) -> Receive:
        """`receive` that counts the body against the cap and times it (408 when it stalls or
        drags); once the body is in, it waits without a limit (for a disconnect)."""
        received = 0
        body_done = False
        deadline = time.monotonic() + self.body_timeout_s

        async def paced_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            wait = min(self.body_idle_timeout_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except asyncio.TimeoutError:
                raise ApiError(
                    408, "body_timeout", "the request body stopped arriving or took too long"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ApiError(413, "too_large", self._too_large_message(received))
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return paced_receive

    def _too_large_message(self, size: int) -> str:
        return f"upload too large ({size} bytes); the limit is {self.max_body} bytes"
