"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from quiver_hub.hub.deps import StateDep

router = APIRouter(tags=["health"])
log = logging.getLogger("quiver.hub")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: StateDep) -> JSONResponse:
    """Ready when the database answers and the blob store is writable."""
    checks: dict[str, str] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        checks["database"] = f"unavailable: {type(e).__name__}"
    checks["blobs"] = state.store.ready()
    try:
        state.fresh_indexes()  # searches and routes answer from these: a failure to catch up is not ready
        checks["indexes"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        log.exception("the search indexes could not catch up with the database")
        checks["indexes"] = f"failing: {type(e).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503)
