"""The HTTP server: uvicorn, with the guards a server on a network needs (hub/settings.py).

uvicorn holds a connection that never sends a whole request head for ever, and counts its concurrency
limit only once a request has arrived: thousands of idle or half-sent connections then exhaust the
process's file descriptors. Its HTTP/1.1 protocol is extended here with two guards:
- a connection over QUIVER_MAX_CONNECTIONS is answered 503 and closed at once;
- a connection that has not sent a whole request head within QUIVER_HEADER_TIMEOUT_S (from when it
  opened, or from the end of its previous response) is closed.
Idle keep-alive connections are closed after QUIVER_KEEP_ALIVE_S (uvicorn's own timer).
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from quiver_hub.hub.settings import Settings

_BUSY_BODY = b'{"error": {"code": "busy", "message": "the hub has too many connections open; try again"}}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(_BUSY_BODY)
    + _BUSY_BODY
)


def guarded_protocol(settings: Settings) -> type[asyncio.Protocol]:
    class GuardedH11Protocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                transport.write(BUSY)
                transport.close()
                return
            self.arm_header_timer()

        def arm_header_timer(self) -> None:
            self.cancel_header_timer()
            self.header_timer = self.loop.call_later(settings.header_timeout_s, self.header_timeout)

        def cancel_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def header_timeout(self) -> None:
            self.header_timer = None
            if self.cycle is None or self.cycle.response_complete:  # still waiting for a request head
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cancel_header_timer()  # a request is in: the app takes it from here

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.arm_header_timer()  # the next request head must come in time too

        def connection_lost(self, exc: Exception | None) -> None:
            self.cancel_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


def server_config(app: object, settings: Settings, host: str, port: int, **extra: object) -> uvicorn.Config:
    """The uvicorn configuration `quiver serve` (and the test suite) runs the hub with."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings),
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        backlog=2048,
        **extra,
    )
