"""An ASGI guard on request body size (QUIVER_MAX_UPLOAD_BYTES), before anything is parsed or stored."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quiver_hub.hub.errors import error_response
from quiver_hub.registry.errors import TooLarge


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = error_response(413, TooLarge.code, self._message(), {"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body is larger than the hub's limit of {self.limit} bytes (QUIVER_MAX_UPLOAD_BYTES)"
