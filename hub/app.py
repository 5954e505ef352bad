"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from hub import errors
from hub.limits import BodyLimit
from hub.routes import adapters, clusters, discovery, health, hf
from hub.settings import Settings
from hub.state import HubState


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.hub = HubState.open(settings, index=True)
        # Load the text embedder now (seconds), not on the first search or publish.
        await run_in_threadpool(app.state.hub.embedder.embed_one, "warm-up")
        try:
            yield
        finally:
            app.state.hub.close()

    app = FastAPI(
        title="Quiver",
        summary="A registry and hub for LoRA adapters",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(adapters.router)
    app.include_router(discovery.router)
    app.include_router(clusters.router)
    app.include_router(hf.router)  # last: its /{namespace}/{name}/resolve/... is the broadest path
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    return app
