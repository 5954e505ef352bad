"""What the Hugging Face Hub protocol has and Quiver does not: a clear refusal in the Hub's error shape
({"error": message}, a 400 that huggingface_hub raises as BadRequestError with this message), never a bare
404 that reads as a missing repo. Included after every Hugging Face route Quiver does implement, so only
what nothing else answers arrives here (docs/huggingface-protocol.md lists what is implemented)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request

from quiver_hub.hub.deps import PrincipalDep, SessionDep
from quiver_hub.hub.error_handlers import HF_TAG
from quiver_hub.hub.hf.repos import LINEAR
from quiver_hub.registry.catalogue import reads
from quiver_hub.registry.errors import InvalidRequest, NotFound

router = APIRouter(tags=[HF_TAG], include_in_schema=False)
# (pattern over "METHOD /api/path", the HfApi methods that send it, why Quiver has none)
KNOWN = [
    (r"POST /api/models/[^/]+/[^/]+/super-squash/", "super_squash_history", LINEAR),
    (r"\w+ /api/(datasets|spaces)(/|$)", "dataset and Space calls", "Quiver holds model repos (LoRA adapters) only"),
    (r"\w+ /api/models/[^/]+/[^/]+/like", "like, unlike", "Quiver keeps no likes"),
    (r"\w+ /api/users/[^/]+/likes", "list_liked_repos", "Quiver keeps no likes"),
    (r"\w+ /api/models/[^/]+/[^/]+/(lfs-files|xet-)", "list_lfs_files, permanently_delete_lfs_files", "no LFS store"),
    (r"\w+ /api/collections", "collections", "Quiver has no collections"),
    (r"\w+ /api/(settings/)?webhooks", "webhooks", "Quiver sends no webhooks"),
    (r"\w+ /api/models/[^/]+/[^/]+/(resource-group|scan|user-access-request)", "repo administration", ""),
    (r"\w+ /api/(papers|daily_papers|organizations|posts|blog|jobs|scheduled-jobs)", "that part of the Hub", ""),
]


def explain(method: str, path: str) -> str:
    asked = f"{method} {path}"
    for pattern, calls, why in KNOWN:
        if re.match(pattern, asked):
            return f"Quiver does not implement {calls} ({asked}){': ' + why if why else ''}"
    return f"Quiver does not implement {asked} of the Hugging Face Hub protocol"


# A repo route whose revision holds a '/' (refs/pr/1, a branch name: uvicorn decodes %2F before routing),
# so that no route of the repo matched it.
SLASHED_REVISION = re.compile(
    r"^/api/models/([^/]+)/([^/]+)/(?:revision|tree|paths-info|commits|preupload|commit)/(.+)$"
)


@router.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
def unsupported(request: Request, rest: str, session: SessionDep, principal: PrincipalDep) -> None:
    """Anything under /api that no route of Quiver's answers."""
    if found := SLASHED_REVISION.match(request.url.path):
        namespace, name, revision = found.groups()
        reads.get_adapter(session, principal, namespace, name)  # a repo the caller may not see: not found
        raise NotFound(
            f"revision {revision!r} not found: Quiver's revisions are main, a revision id, a version number or "
            "a tag (no branches or refs/pr/...)",
            code="revision_not_found",
        )
    raise InvalidRequest(
        explain(request.method, request.url.path) + "; docs/huggingface-protocol.md lists what it does"
    )
