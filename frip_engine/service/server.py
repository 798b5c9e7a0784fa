"""The HTTP server behind ``frip serve``: uvicorn's h11 protocol with connection deadlines.

uvicorn closes a keep-alive connection left idle, and answers 503 once ``limit_concurrency``
connections are open, but it has no deadline for a request's headers or body: a socket
that sends nothing, or one header byte every few seconds, holds its place for ever, and a
handful of them starve every other client. ``GuardedH11Protocol`` adds what is missing:

- the request headers must arrive within ``header_timeout`` seconds of the connection
  opening (or of the previous response on a kept-alive connection), the body within
  ``body_timeout`` seconds of its headers; otherwise the server answers 408
  ``request_timeout`` (a JSON error body) and closes the connection;
- one client address may hold at most ``per_client`` connections; the next is answered
  429 ``too_many_connections`` and closed at once;
- a kept-alive connection idle for ``keep_alive`` seconds is closed (uvicorn's own timer).

The connections held by slow clients therefore free themselves within a deadline, and no
single address can fill ``max_connections``. (Under TLS the handshake is bounded by
asyncio's own 60 s handshake timeout, before these deadlines start.)
"""

from __future__ import annotations

import asyncio
import copy
import http
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections, from whom, and how long a request may take to arrive."""

    max_connections: int = 256
    per_client: int = 32
    header_timeout: float = 10.0  # seconds for a request's headers
    body_timeout: float = 60.0  # seconds for its body, from the end of its headers
    keep_alive: float = 5.0  # seconds a kept-alive connection may sit idle

    def check(self) -> None:
        """Raise InputError unless every limit is positive."""
        from frip_engine.errors import InputError
        from frip_engine.validate import MAX_SECONDS, check_option

        if min(self.max_connections, self.per_client) < 1:
            raise InputError("--max-connections and --max-connections-per-client must be >= 1")
        for option, seconds in (
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--keep-alive", self.keep_alive),
        ):
            check_option(option, seconds, 0, MAX_SECONDS, low_ok=False)


def error_bytes(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying the service's JSON error, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message, "request_id": None}})
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return (head + body).encode()


# A refused connection is closed DRAIN_SECONDS after the client's last byte, and at most
# DRAIN_LIMIT seconds after the refusal: long enough for a request in flight to arrive.
DRAIN_SECONDS = 0.5
DRAIN_LIMIT = 5.0


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """A uvicorn h11 protocol class enforcing ``limits`` (one class, one count, per server)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        guard: ClassVar[ConnectionLimits] = limits
        per_address: ClassVar[Counter[str]] = Counter()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._timer: asyncio.TimerHandle | None = None
            self._drain_until: float | None = None  # refused: reading to discard until then
            self._waiting_for: str | None = None  # "headers", "body" or None
            self._address = self.client[0] if self.client else "?"
            self._idle_kept_alive = False  # a response sent, no byte of the next request yet
            self.per_address[self._address] += 1
            if self.per_address[self._address] > self.guard.per_client:
                self._refuse(
                    429,
                    "too_many_connections",
                    f"more than {self.guard.per_client} connections from your address; "
                    "close some and retry",
                )
                return
            self._track()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self.per_address[self._address] -= 1
            if self.per_address[self._address] <= 0:
                del self.per_address[self._address]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._drain_until is not None:  # refused: what the client still sends is
                self._linger()  # read and dropped, never parsed
                return
            self._idle_kept_alive = False
            super().data_received(data)
            self._track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._idle_kept_alive = True
            self._track()

        def _track(self) -> None:
            """Arm the deadline of what the connection is waiting for from the client."""
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            wanted = {h11.IDLE: "headers", h11.SEND_BODY: "body"}.get(state)
            if wanted == self._waiting_for:
                return
            self._disarm()
            self._waiting_for = wanted
            if wanted is not None:
                seconds = (
                    self.guard.header_timeout if wanted == "headers" else self.guard.body_timeout
                )
                self._timer = self.loop.call_later(seconds, self._expire, wanted, seconds)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiting_for = None

        def _expire(self, what: str, seconds: float) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if what == "headers" and self._idle_kept_alive:
                self.transport.close()  # an idle kept-alive connection: closed, no 408 sent
                return
            cycle = self.cycle
            if what == "body" and cycle is not None:
                cycle.disconnected = True  # the app reading the body sees the client gone
                cycle.message_event.set()
                if cycle.response_started:
                    self.transport.close()
                    return
            self._refuse(
                408,
                "request_timeout",
                f"the request {what} did not arrive within {seconds:g} s; send it at once",
            )

        def eof_received(self) -> None:
            if self._drain_until is not None:
                self.transport.close()  # the client sent all it had: the reply is out

        def _refuse(self, status: int, code: str, message: str) -> None:
            """Answer ``status`` and close, but only once the client stops sending (or
            DRAIN_SECONDS after the last byte, at most DRAIN_LIMIT after the refusal):
            a socket closed with unread bytes makes the kernel send a reset, which throws
            away the reply the client has not read yet (httpx: ReadError, no status)."""
            self._disarm()
            self.connections.discard(self)  # no longer one of the --max-connections served
            self.transport.write(error_bytes(status, code, message))
            self._drain_until = self.loop.time() + DRAIN_LIMIT
            self._linger()

        def _linger(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            left = (self._drain_until or 0.0) - self.loop.time()
            seconds = min(DRAIN_SECONDS, max(0.0, left))
            self._timer = self.loop.call_later(seconds, self.transport.close)

    return GuardedH11Protocol


def build_server(
    app: ASGIApp,
    host: str,
    port: int,
    limits: ConnectionLimits,
    tls: tuple[Path, Path] | None = None,
    configure_logging: bool = True,
    trusted_proxy: str | None = None,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` with the guarded protocol. Access lines are the app's
    own (``frip_engine.service.access``: routes, never paths), so uvicorn's are off; with
    ``configure_logging`` (a process of its own) uvicorn's and the service's loggers print
    to stderr, else the caller's logging is left alone (a server in a test's thread).
    X-Forwarded-For/-Proto are read only from ``trusted_proxy`` (an address, or a
    comma-separated list): uvicorn's default trusts any local peer, so a client's forged
    header would choose the address its rate limits count against."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    options: dict[str, Any] = {"proxy_headers": trusted_proxy is not None}
    if trusted_proxy is not None:
        options["forwarded_allow_ips"] = trusted_proxy
    if tls is not None:
        options |= {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])}
    logs = copy.deepcopy(LOGGING_CONFIG)  # uvicorn's, plus the service's own loggers
    logs["loggers"]["frip_engine.service"] = {"handlers": ["default"], "level": "INFO"}
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits),
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=max(1, round(limits.keep_alive)),
        access_log=False,
        log_config=logs if configure_logging else None,
        lifespan="on",
        timeout_graceful_shutdown=10,
        **options,
    )
    return uvicorn.Server(config)
