"""Every error a client sees is {"error": {"code", "message"}} with the right status; never a trace."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quiver_hub.registry import errors

log = logging.getLogger("quiver.hub")
HF_TAG = "huggingface"  # routes speaking the Hugging Face Hub protocol answer errors in its shape
HF_ERROR_CODES = {
    "not_found": "RepoNotFound",
    "revision_not_found": "RevisionNotFound",
    "entry_not_found": "EntryNotFound",
}

STATUS = {
    errors.InvalidRequest: 400,
    errors.InvalidName: 400,
    errors.InvalidAdapter: 422,
    errors.TooLarge: 413,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
}
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "invalid_request",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: str
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


def header_safe(text: str) -> str:
    """A header value HTTP can carry (latin-1, one line): other characters as escapes."""
    return text.replace("\r", " ").replace("\n", " ").encode("ascii", "backslashreplace").decode("ascii")[:1000]


def respond(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: str
) -> JSONResponse:
    """Quiver's error shape, or the Hub's ({"error": message} + X-Error-Code) on Hugging Face routes."""
    route = request.scope.get("route")
    if route is None or HF_TAG not in getattr(route, "tags", ()):
        return error_response(status, code, message, headers, **extra)
    if status == 422:  # the Hub answers a request it cannot take with 400: huggingface_hub's BadRequestError
        status = 400
    hf_headers = {**(headers or {}), "X-Error-Message": header_safe(message)}
    if code in HF_ERROR_CODES:
        hf_headers["X-Error-Code"] = HF_ERROR_CODES[code]
    return JSONResponse({"error": message}, status_code=status, headers=hf_headers)


def moved(request: Request, repo_id: str) -> Response:
    """A read of a renamed adapter's old name: a redirect to the same path under its new name, as the Hub
    answers after a move (huggingface_hub and httpx follow it)."""
    old = f"/{request.path_params.get('namespace')}/{request.path_params.get('name')}"
    path = request.url.path.replace(old, f"/{repo_id}", 1)
    location = path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(location, status_code=307)


def status_of(exc: errors.RegistryError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


class RequestIds:
    """Every response carries X-Request-ID. An exception nothing else handled becomes a 500 whose body
    names that id, logged with it (so an operator finds the trace from what the user saw), and the
    connection stays open for the client's next request. Never a trace to the client."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id)
            if started:  # half an answer is out: nothing sound can follow it on this connection
                raise
            message = f"internal server error (request {request_id}); the hub's log has the details"
            response = respond(Request(scope), 500, "internal", message, request_id=request_id)
            await response(scope, receive, send_with_id)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.RegistryError)
    async def registry_error(request: Request, exc: errors.RegistryError) -> Response:
        if isinstance(exc, errors.NotFound) and exc.moved_to and request.method in ("GET", "HEAD"):
            return moved(request, exc.moved_to)
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return respond(request, status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return respond(request, 422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return respond(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    app.add_middleware(RequestIds)  # added last: the outermost of the app's own middleware
