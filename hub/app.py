"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.sessions import SessionMiddleware

from quiver_hub.hub import error_handlers
from quiver_hub.hub.api import accounts, adapters, clusters, discovery, health
from quiver_hub.hub.body_limit import BodyLimit
from quiver_hub.hub.hf import commits, reads, repos, unsupported
from quiver_hub.hub.pages import account, repo, site
from quiver_hub.hub.pages.web import HERE
from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import VERSION, Settings, secret_key
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
        version=VERSION,
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(adapters.router)
    app.include_router(discovery.router)
    app.include_router(clusters.router)
    app.include_router(accounts.router)
    app.include_router(repos.router)
    app.include_router(commits.router)
    app.include_router(reads.router)  # after the API: its /{namespace}/{name}/resolve/... is broad
    app.include_router(unsupported.router)  # /api/... that nothing above answers: a clear refusal
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(repo.router)  # /{ns}/{name}/tree|blob|commits/...: before the broad page paths
    app.include_router(account.router)  # /login, /settings/tokens, /orgs/...: before the broad page paths
    app.include_router(site.router)  # last: /{namespace} and /{namespace}/{name} are the broadest paths
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(settings),
        session_cookie="quiver_session",
        max_age=int(LIFETIME.total_seconds()),
        same_site="lax",
        https_only=False,
    )
    app.add_middleware(BodyLimit, settings=settings)
    error_handlers.install(app)  # last: its middleware wraps all the others
    return app
