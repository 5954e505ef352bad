"""The Hugging Face Hub protocol, repo side: create, delete, move and settings of model repos; their refs,
commits and tags; and a clear refusal for what Quiver does not have (branches, pull requests: versions are
linear). What huggingface_hub's HfApi and the `hf repos` commands call."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from quiver_hub.hub.deps import PrincipalDep, SessionDep, StateDep
from quiver_hub.hub.error_handlers import HF_TAG
from quiver_hub.hub.hf.protocol import EMPTY_COMMIT, endpoint, timestamp, version_for
from quiver_hub.registry.catalogue import edits, metadata, publishing, reads, tags
from quiver_hub.registry.errors import InvalidRequest, Unauthorized

COMMITS_PAGE = 50

router = APIRouter(tags=[HF_TAG])


class CreateRepo(BaseModel):
    name: str
    organization: str | None = None
    private: bool | None = None
    visibility: str | None = None
    type: str | None = None


@router.post("/api/repos/create")
def create_repo(body: CreateRepo, request: Request, state: StateDep, principal: PrincipalDep) -> JSONResponse:
    if body.type not in (None, "model"):
        raise InvalidRequest(f"only model repos can be created here, not {body.type!r}")
    if principal.anonymous:
        raise Unauthorized("creating a repo needs a token: send Authorization: Bearer <token>")
    namespace = body.organization or principal.user
    visibility = "private" if body.private or body.visibility == "private" else "public"
    adapter, created = publishing.create_adapter(state.sessions, principal, namespace, body.name, visibility)
    url = f"{endpoint(request)}/{namespace}/{body.name}"
    if not created:
        return JSONResponse({"error": "You already created this model repo", "url": url}, 409)
    return JSONResponse({"url": url, "name": f"{namespace}/{body.name}", "id": str(adapter.id)})


class RepoRef(BaseModel):
    name: str
    organization: str | None = None
    type: str | None = None


def repo_of(body: RepoRef, principal: PrincipalDep) -> tuple[str, str]:
    if body.type not in (None, "model"):
        raise InvalidRequest(f"Quiver holds model repos only, not {body.type!r}")
    if principal.anonymous:
        raise Unauthorized("this needs a token: send Authorization: Bearer <token>")
    if "/" in body.name:  # some clients send the whole repo id as the name
        namespace, name = body.name.split("/", 1)
        return namespace, name
    return body.organization or principal.user, body.name


@router.delete("/api/repos/delete")
def delete_repo(body: RepoRef, state: StateDep, principal: PrincipalDep) -> dict:
    """delete_repo / `hf repos delete`: the adapter and every version (numbers stay retired)."""
    namespace, name = repo_of(body, principal)
    edits.delete_adapter(state.sessions, state.store, principal, namespace, name)
    return {}


class Settings(BaseModel):
    private: bool | None = None
    visibility: str | None = None
    gated: str | bool | None = None


@router.put("/api/models/{namespace}/{name}/settings")
def update_settings(namespace: str, name: str, body: Settings, state: StateDep, principal: PrincipalDep) -> dict:
    """update_repo_settings / `hf repos settings --private`: visibility. Gating is not something Quiver has."""
    if body.gated not in (None, False, "false"):
        raise InvalidRequest("Quiver has no gated repos: an adapter is public or private (visibility)")
    visibility = body.visibility or (
        {True: "private", False: "public"}.get(body.private) if body.private is not None else None
    )
    if visibility is None:
        raise InvalidRequest("nothing to change: send visibility ('public' or 'private') or private")
    edits.update_adapter(
        state.sessions,
        state.store,
        state.embedder,
        principal,
        namespace,
        name,
        metadata.AdapterMeta(visibility=visibility),
    )
    return {}


class Move(BaseModel):
    fromRepo: str  # noqa: N815 - the Hub's names
    toRepo: str  # noqa: N815
    type: str | None = None


@router.post("/api/repos/move")
def move_repo(body: Move, state: StateDep, principal: PrincipalDep) -> dict:
    """move_repo / `hf repos move`: a rename within the namespaces the caller may write. The old name
    redirects to the new one, as the Hub's does."""
    if body.type not in (None, "model"):
        raise InvalidRequest(f"Quiver holds model repos only, not {body.type!r}")
    source, target = (split_repo_id(r) for r in (body.fromRepo, body.toRepo))
    edits.move_adapter(state.sessions, principal, source, target)
    return {}


def split_repo_id(repo_id: str) -> tuple[str, str]:
    namespace, sep, name = repo_id.partition("/")
    if not sep:
        raise InvalidRequest(f"{repo_id!r} is not a namespace/name repo id")
    return namespace, name


@router.get("/api/models/{namespace}/{name}/refs")
def list_refs(namespace: str, name: str, session: SessionDep, principal: PrincipalDep) -> dict:
    """list_repo_refs: `main` (the latest version) and the tags; no converts, no pull requests."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    main = adapter.versions[-1].revision if adapter.versions else EMPTY_COMMIT
    return {
        "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": main}],
        "converts": [],
        "tags": [
            {"name": t.name, "ref": f"refs/tags/{t.name}", "targetCommit": t.version.revision}
            for t in tags.list_tags(session, adapter)
        ],
        "pullRequests": [],
    }


@router.get("/api/models/{namespace}/{name}/commits/{revision}")
def list_commits(
    namespace: str, name: str, revision: str, request: Request, session: SessionDep, principal: PrincipalDep
) -> Response:
    """list_repo_commits: one commit per version, newest first, from `revision` back (paginated with Link)."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    if not adapter.versions:
        return JSONResponse([])
    upto = version_for(session, adapter, revision).number
    history = [v for v in reversed(adapter.versions) if v.number <= upto]
    p = request.query_params.get("p", "0")
    start = int(p) if p.isascii() and p.isdigit() and len(p) < 6 else 0
    page = history[start * COMMITS_PAGE : (start + 1) * COMMITS_PAGE]
    body = [
        {
            "id": v.revision,
            "title": v.title,
            "message": v.message,
            "authors": [{"user": v.published_by.name}] if v.published_by else [],
            "date": timestamp(v.created_at),
            "formatted": {"title": v.title, "message": v.message},
        }
        for v in page
    ]
    headers = {}
    if (start + 1) * COMMITS_PAGE < len(history):
        headers["Link"] = f'<{request.url.include_query_params(p=start + 1)}>; rel="next"'
    return JSONResponse(body, headers=headers)


class CreateTag(BaseModel):
    tag: str
    message: str | None = None


@router.post("/api/models/{namespace}/{name}/tag/{revision}")
def create_tag(
    namespace: str, name: str, revision: str, body: CreateTag, state: StateDep, principal: PrincipalDep
) -> dict:
    """create_tag / `hf repos tag create`: a name for the version `revision` names."""
    tags.create_tag(state.sessions, principal, namespace, name, body.tag, revision, body.message or "")
    return {}


@router.delete("/api/models/{namespace}/{name}/tag/{tag}")
def delete_tag(namespace: str, name: str, tag: str, state: StateDep, principal: PrincipalDep) -> dict:
    tags.delete_tag(state.sessions, principal, namespace, name, tag)
    return {}


LINEAR = (
    "Quiver's versions are linear: every commit to main makes the next version, so there are no branches or "
    "pull requests. Commit to main (each version keeps its revision id and number), and name versions with tags."
)


@router.api_route("/api/models/{namespace}/{name}/discussions", methods=["GET", "POST"])
def no_discussions(namespace: str, name: str, session: SessionDep, principal: PrincipalDep) -> None:
    """Pull requests and discussions: refused, with why."""
    reads.get_adapter(session, principal, namespace, name)  # another user's private repo stays a 404
    raise InvalidRequest(LINEAR)


@router.api_route("/api/models/{namespace}/{name}/branch/{branch:path}", methods=["POST", "DELETE"])
def no_branches(namespace: str, name: str, branch: str, session: SessionDep, principal: PrincipalDep) -> None:
    """create_branch and delete_branch: refused, with why (the branch is named in the path)."""
    no_discussions(namespace, name, session, principal)
