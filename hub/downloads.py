"""Serving a blob: streamed by the hub from a local file (Range and ETag honoured); handed to a fronting
nginx with X-Accel-Redirect (QUIVER_ACCEL_REDIRECT; the local store only), which sends the file from the
kernel; or, where the store can serve it itself and the hub is configured to (QUIVER_DOWNLOAD_REDIRECT; the
default for S3), a 302 to a short-lived presigned URL. The redirect carries the headers clients read from
it without following it (huggingface_hub's HEAD: X-Repo-Commit, X-Linked-Etag, X-Linked-Size)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from quiver_hub.hub.services import Services

# Every download of a user's file: never sniffed into something else, never run as a page (a file opened
# in a browser is a sandboxed document with no scripts, styles or requests of its own).
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}


class BlobFileResponse(FileResponse):
    """Starlette's FileResponse (Range, ETag, HEAD) read in 1 MiB chunks instead of 64 KiB: a quarter of the
    Python work per byte on large weights files. A Range in a unit other than bytes is ignored and the
    whole file sent, as RFC 9110 (14.2) requires; Starlette would answer 400."""

    chunk_size = 1024 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        range_header = Headers(scope=scope).get("range")
        if range_header is not None and range_header.partition("=")[0].strip().lower() != "bytes":
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]}
        await super().__call__(scope, receive, send)


def redirects(state: Services) -> bool:
    setting = state.settings.download_redirect
    return state.store.name != "local" if setting is None else setting


def blob_response(
    state: Services, sha256: str, filename: str, headers: dict[str, str], media_type: str, inline: bool = False
) -> Response:
    """`inline` only for types a browser shows as text (JSON, Markdown): anything it would render as a
    page is the caller's to send as an attachment."""
    headers = {**headers, **FILE_HEADERS}
    if redirects(state):
        url = state.store.presigned_url(sha256, filename, state.settings.presign_seconds)
        if url is not None:
            return RedirectResponse(url, status_code=302, headers=headers)
    if state.settings.accel_redirect and state.store.name == "local":
        path = state.store.local_path(sha256)  # FileNotFoundError (a 500 that says so) when it is gone
        relative = path.relative_to(state.store.objects).as_posix()
        disposition = "inline" if inline else "attachment"
        quoted = quote(filename)  # as Starlette's FileResponse writes it
        disposition += f"; filename*=utf-8''{quoted}" if quoted != filename else f'; filename="{filename}"'
        return Response(
            headers={
                **headers,
                "X-Accel-Redirect": state.settings.accel_redirect.rstrip("/") + "/" + relative,
                "Content-Disposition": disposition,
            },
            media_type=media_type,
        )
    return BlobFileResponse(
        state.store.local_path(sha256),
        media_type=media_type,
        headers=headers,
        filename=filename,
        content_disposition_type="inline" if inline else "attachment",
    )
