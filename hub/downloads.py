"""Serving a blob: streamed by the hub from a local file (Range and ETag honoured); handed to a fronting
nginx with X-Accel-Redirect (QUIVER_ACCEL_REDIRECT; the local store only), which sends the file from the
kernel; or, where the store can serve it itself and the hub is configured to (QUIVER_DOWNLOAD_REDIRECT; the
default for S3), a 302 to a short-lived presigned URL. The redirect carries the headers clients read from
it without following it (huggingface_hub's HEAD: X-Repo-Commit, X-Linked-Etag, X-Linked-Size)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi.responses import FileResponse, RedirectResponse, Response

from quiver_hub.hub.services import Services


class BlobFileResponse(FileResponse):
    """Starlette's FileResponse (Range, ETag, HEAD) read in 1 MiB chunks instead of 64 KiB: a quarter of the
    Python work per byte on large weights files."""

    chunk_size = 1024 * 1024


def redirects(state: Services) -> bool:
    setting = state.settings.download_redirect
    return state.store.name != "local" if setting is None else setting


def blob_response(
    state: Services, sha256: str, filename: str, headers: dict[str, str], media_type: str, inline: bool = False
) -> Response:
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
