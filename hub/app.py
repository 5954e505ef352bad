"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.sessions import SessionMiddleware

import quiver_hub
from quiver_hub.hub import errors
from quiver_hub.hub.body_limit import BodyLimit
from quiver_hub.hub.routes import (
    accounts,
    adapters,
    clusters,
    discovery,
    health,
    hf,
    hf_commits,
    hf_repos,
    hf_unsupported,
    pages,
    repo_pages,
)
from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings, secret_key
from quiver_hub.hub.web import HERE
from quiver_hub.registry.accounts.sessions import LIFETIME


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = Services.open(settings, index=True)
        # Load the text embedder now (seconds), not on the first search or publish.
        await run_in_threadpool(app.state.services.embedder.embed_one, "warm-up")
        try:
            yield
        finally:
            app.state.services.close()

    # /docs and /redoc load their scripts and styles from the hub itself, never from a CDN.
    app = FastAPIOffline(
        title="Quiver",
        summary="A registry and hub for LoRA adapters",
        version=quiver_hub.__version__,
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(adapters.router)
    app.include_router(discovery.router)
    app.include_router(clusters.router)
    app.include_router(accounts.router)
    app.include_router(hf_repos.router)
    app.include_router(hf_commits.router)
    app.include_router(hf.router)  # after the API: its /{namespace}/{name}/resolve/... is broad
    app.include_router(hf_unsupported.router)  # /api/... that nothing above answers: a clear refusal
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(repo_pages.router)  # /{ns}/{name}/tree|blob|commits/...: before the broad page paths
    app.include_router(pages.router)  # last: /{namespace} and /{namespace}/{name} are the broadest paths
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(settings),
        session_cookie="quiver_session",
        max_age=int(LIFETIME.total_seconds()),
        same_site="lax",
        https_only=False,
    )
    app.add_middleware(BodyLimit, settings=settings)
    errors.install(app)  # last: its middleware wraps all the others
    return app
