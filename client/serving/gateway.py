"""`quiver gateway`: an OpenAI-compatible front that picks the adapter for each chat request from the hub's
library and forwards the request to a serving engine that loads adapters by name (vLLM with the Quiver
resolver plugin, LoRAX): "route, then serve" in one hop for an app.

A request whose `model` is `quiver:auto` (AUTO) is routed on its last user message: the hub's example
ranking (`/v1/route/text`, adapters with examples) and, where none has examples, its text search
(`/v1/search`, descriptions and cards), within the engine's base model; the best adapter's pinned name
`ns/name@revision` replaces `model`. With no adapter at all it goes to the engine's base model. Any other
`model` is forwarded as it is. Answers stream back unchanged, with `X-Quiver-Adapter` naming the choice.
Needs the server extras (FastAPI, uvicorn).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from quiver_hub.api import HubClient
from quiver_hub.errors import HubError

AUTO = "quiver:auto"
MAX_BODY = 8 * 1024 * 1024
PASSED_HEADERS = ("content-type", "cache-control")


def last_user_text(messages: object) -> str:
    """The words of the last user message (its text parts, for a message of several)."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def pick(hub: HubClient, text: str, base_model: str) -> str | None:
    """The adapter for `text` among those of `base_model` the gateway's token may see, as a pinned name."""
    if not text.strip():
        return None
    found = hub.route_text(text[:20_000], base_model=base_model, limit=1) or hub.search(
        text[:2_000], base_model=base_model, limit=1
    )
    return f"{found[0]['id']}@{found[0]['revision']}" if found else None


def error(status: int, message: str) -> JSONResponse:
    """An error as OpenAI-compatible servers answer one."""
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def create_gateway(engine: str, hub: HubClient, base_model: str, engine_model: str | None = None) -> FastAPI:
    """The gateway's app: `engine` is the serving engine's URL (its /v1/... routes), `base_model` the hub's
    name of the model it serves, `engine_model` the name the engine serves it under (default base_model)."""
    upstream = httpx.AsyncClient(base_url=engine.rstrip("/"), timeout=httpx.Timeout(600, connect=10))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await upstream.aclose()

    app = FastAPI(title="Quiver gateway", docs_url=None, redoc_url=None, lifespan=lifespan)

    async def forward(request: Request, path: str, text_of: Any) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return error(413, f"request bodies are at most {MAX_BODY} bytes")
        try:
            body = await request.json() if raw else {}
        except ValueError:
            return error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        chosen = "-"
        if body.get("model") == AUTO:
            try:
                adapter = await run_in_threadpool(pick, hub, text_of(body), base_model)
            except HubError as e:
                return error(502, f"the hub could not route this request: {e.message}")
            body["model"] = chosen = adapter or engine_model or base_model
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        sent = upstream.build_request("POST", path, json=body, headers=headers)
        try:
            answer = await upstream.send(sent, stream=True)
        except httpx.TransportError as e:
            return error(502, f"the engine at {engine} did not answer: {e}")
        kept = {k: v for k, v in answer.headers.items() if k.lower() in PASSED_HEADERS}
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers={**kept, "X-Quiver-Adapter": chosen},
            background=BackgroundTask(answer.aclose),
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await forward(request, "/v1/chat/completions", lambda body: last_user_text(body.get("messages")))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward(request, "/v1/completions", lambda body: str(body.get("prompt") or ""))

    @app.get("/v1/models")
    async def models() -> Response:
        """The engine's models, and AUTO."""
        try:
            listed = (await upstream.get("/v1/models")).json()
        except (httpx.TransportError, ValueError) as e:
            return error(502, f"the engine at {engine} did not list its models: {e}")
        data = listed.get("data", []) if isinstance(listed, dict) else []
        return JSONResponse({"object": "list", "data": [{"id": AUTO, "object": "model", "owned_by": "quiver"}, *data]})

    return app
