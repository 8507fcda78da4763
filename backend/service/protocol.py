"""uvicorn's HTTP/1.1 protocol (h11) with two changes for `hamr serve`:

- a header timeout: a connection that has not sent a whole request head within
  HEADER_TIMEOUT_S (from its opening, or from the end of its previous response) is answered
  408 and closed; uvicorn alone keeps a half-sent head open for as long as the client likes;
- its own 400 for a malformed request is JSON `{"error": {"code", "message"}}` like every other
  error of the service.

`HamrH11Protocol` is passed to `uvicorn.run(http=...)`. Imports uvicorn and h11 only.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0


def json_error_bytes(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, as bytes."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    return head + body


class HamrH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a JSON 400 (module docstring)."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # a head still incomplete keeps its timer; one complete (the request is in the app)
        # stops it
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:
                self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request's head is timed from here (uvicorn's keep-alive timeout closes an
        # idle connection sooner)
        if not self.transport.is_closing():
            self._arm_header_timer()

    def send_400_response(self, msg: str) -> None:
        self._disarm_header_timer()
        self.transport.write(json_error_bytes(400, "Bad Request", "bad_request", msg))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered (pipelined data waits its turn)
        self.transport.write(
            json_error_bytes(
                408,
                "Request Timeout",
                "header_timeout",
                f"the request head did not arrive within {self.header_timeout_s:g} s",
            )
        )
        self.transport.close()
