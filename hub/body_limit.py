"""An ASGI guard on request body size, before anything is parsed or stored: uploads and commits may be
large (QUIVER_MAX_UPLOAD_BYTES), route requests carry hidden states (QUIVER_MAX_ROUTE_BYTES), every other
body is small JSON (QUIVER_MAX_JSON_BYTES). A declared Content-Length over the limit is refused before a
byte is read; a body that grows past it is cut off while it is read."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quiver_hub.hub.error_handlers import error_response
from quiver_hub.hub.settings import Settings
from quiver_hub.registry.errors import TooLarge


def body_limit(settings: Settings, scope: Scope) -> tuple[int, str]:
    """(the byte limit for this request's body, the setting that sets it)."""
    path, method = scope["path"], scope["method"]
    if method == "POST" and (path.startswith("/v1/adapters/") or (path.startswith("/api/") and "/commit/" in path)):
        return settings.max_upload_bytes, "QUIVER_MAX_UPLOAD_BYTES"
    if path == "/v1/route":
        return settings.max_route_bytes, "QUIVER_MAX_ROUTE_BYTES"
    return settings.max_json_bytes, "QUIVER_MAX_JSON_BYTES"


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = body_limit(self.settings, scope)
        message = f"request body is larger than the hub's limit of {limit} bytes for this route ({setting})"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            response = error_response(413, TooLarge.code, message, {"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            received = await receive()
            if received["type"] == "http.request":
                seen += len(received.get("body", b""))
                if seen > limit:  # an HTTPException: FastAPI's body parsing lets it through as it is
                    raise HTTPException(413, detail=message)
            return received

        await self.app(scope, counted, send)
