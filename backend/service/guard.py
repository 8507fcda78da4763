"""The service's front door: the error shape, where it may listen, and the `Guard` middleware
(bearer token, upload cap) that every request passes before the app sees it.

Imports Starlette only.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import OptionError

HEALTH_PATH = "/v1/health"


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
    """Refuse (OptionError) to serve on a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise OptionError(
            f"refusing to serve on {host} without --token: anyone on the network could use it; "
            "pass --token (or set HAMR_TOKEN), or bind 127.0.0.1"
        )


class Guard:
    """Pure ASGI middleware in front of the app: the bearer token (every path but health) and
    the upload cap, checked on Content-Length up front and on the bytes as they stream in."""

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] != HEALTH_PATH:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong token: send 'Authorization: Bearer <token>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await self._too_large(int(length))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ApiError(413, "too_large", self._too_large_message(received))
            return message

        await self.app(scope, counting_receive, send)

    def _too_large_message(self, size: int) -> str:
        return f"upload too large ({size} bytes); the limit is {self.max_body} bytes"

    def _too_large(self, size: int) -> JSONResponse:
        response = error_response(413, "too_large", self._too_large_message(size))
        response.headers["Connection"] = "close"
        return response
