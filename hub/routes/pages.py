"""The pages people browse, server-rendered from the same registry functions as the API (and the same
visibility rules: a page of something the viewer may not see answers 404, exactly like one that does not
exist). Usable without JavaScript; hub/web.py has the safety rules (sanitised cards, CSP, CSRF).

    /                        search, recently updated adapters, base models, find adapters for a text
    /search, /find           by meaning or by name, with filters; by example text (route/text)
    /{ns}/{name}             an adapter: card, versions and tags, files, lineage, modules, snippets
    /{ns}, /models/{base}    a user's or organisation's adapters; every adapter of one base model
    /clusters/{id}           a cluster run, with a picture of the library
    /login, /logout, /settings/tokens, /orgs/{org}   signed in with a token: tokens and members
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from quiver_hub.hub.deps import StateDep
from quiver_hub.hub.web import check_csrf, page, page_principal, sign_in, sign_out
from quiver_hub.registry import limits
from quiver_hub.registry.accounts import orgs, tokens
from quiver_hub.registry.accounts.access import allowed
from quiver_hub.registry.catalogue import metadata, reads
from quiver_hub.registry.clusters import runs
from quiver_hub.registry.errors import NotFound, RegistryError
from quiver_hub.registry.models import Namespace, Version
from quiver_hub.registry.search import routing
from quiver_hub.registry.search.indexes import Filters

router = APIRouter(include_in_schema=False)
# First path segments that belong to the API and the docs, never to a namespace's page.
RESERVED = {"v1", "api", "docs", "redoc", "openapi.json", "static", "static-offline-docs", "healthz", "readyz"}
PICTURE = 480
PAGE = 20  # search results a page
MARGIN = 48  # room for the axes' names and the points' labels
MAX_LABELS = 40  # a picture of more members shows names on hover only


def not_found(request: Request, what: str) -> HTMLResponse:
    return page(request, "error.html", 404, heading="404 Not Found", message=f"{what} was not found.")


@router.get("/", response_class=HTMLResponse)
def home(request: Request, state: StateDep) -> HTMLResponse:
    principal = page_principal(request, state)
    with state.sessions() as session:
        recent = reads.recent_adapters(session, principal)
        latest = reads.latest_versions(session, recent)
        counts = reads.base_model_counts(session, principal)
        return page(request, "home.html", principal=principal, recent=recent, latest=latest, counts=counts)


@router.get("/search", response_class=HTMLResponse)
def search(
    request: Request,
    state: StateDep,
    q: str = "",
    by: str = "meaning",
    base_model: str | None = None,
    task: str | None = None,
    tag: str | None = None,
    namespace: str | None = None,
    page_number: Annotated[int, Query(alias="page")] = 1,
) -> HTMLResponse:
    """By meaning (the ranking of POST /v1/search, PAGE a page) or by name, with the same filters."""
    principal = page_principal(request, state)
    q = q[:2000]
    filters = {
        "base_model": base_model or None,
        "task": task or None,
        "tag": tag or None,
        "namespace": namespace or None,
    }
    context = {"q": q, "by": by, "filters": filters, "results": [], "adapters": [], "latest": {}}
    if by == "name":
        with state.sessions() as session:
            listing = reads.AdapterFilter(
                base_model=filters["base_model"],
                task=filters["task"],
                tags=(tag,) if tag else (),
                namespace=filters["namespace"],
                search=q or None,
            )
            adapters, _ = reads.list_adapters(session, principal, listing, None, 50)
            context.update(adapters=adapters, latest=reads.latest_versions(session, adapters))
            return page(request, "search.html", principal=principal, **context)
    page_number = max(1, min(page_number, limits.MAX_ROUTE_RESULTS // PAGE))
    context.update(page_number=page_number, start=(page_number - 1) * PAGE + 1, more=False)
    context["query_for"] = lambda n: urlencode({**request.query_params, "page": n})
    if q:
        query = state.embedder.embed_one(q)
        index_filters = Filters(
            base_model=filters["base_model"],
            task=filters["task"],
            tags=(tag,) if tag else (),
            namespace=filters["namespace"],
        )
        wanted = page_number * PAGE + 1  # one more than shown: is there a next page?
        ranked = routing.search_text(
            state.fresh_indexes(), principal, query, index_filters, min(wanted, limits.MAX_ROUTE_RESULTS)
        )
        ranked = routing.visible_now(state.sessions, principal, ranked)
        shown = ranked[(page_number - 1) * PAGE : page_number * PAGE]
        context["results"] = results(state, shown)
        context["more"] = len(ranked) > page_number * PAGE and page_number * PAGE < limits.MAX_ROUTE_RESULTS
    return page(request, "search.html", principal=principal, **context)


def results(state: StateDep, ranked: list[routing.Ranked]) -> list[dict]:
    """Ranked adapters as the pages list them: the score as a share a person reads (the cosine, 0 to
    100%), with each adapter's description."""
    with state.sessions() as session:
        described = reads.descriptions(session, [r.entry.adapter_id for r in ranked])
    return [
        {
            "id": r.entry.identity.id,
            "version": r.entry.identity.version,
            "score": r.score,
            "match": round(100 * max(0.0, min(1.0, r.score))),
            "base_model": r.entry.base_model,
            "task": r.entry.task,
            "description": described.get(r.entry.adapter_id, ""),
        }
        for r in ranked
    ]


@router.get("/find", response_class=HTMLResponse)
def find(request: Request, state: StateDep, text: str = "", base_model: str | None = None) -> HTMLResponse:
    """Adapters whose example inputs are closest to a text (the ranking of POST /v1/route/text)."""
    principal = page_principal(request, state)
    found = []
    if text.strip():
        query = state.embedder.embed_one(text[:20000])
        ranked = routing.search_text(
            state.fresh_indexes(), principal, query, Filters(base_model=base_model or None), 20, use_text=False
        )
        found = results(state, routing.visible_now(state.sessions, principal, ranked))
    return page(request, "find.html", principal=principal, text=text, base_model=base_model, results=found)


@router.get("/models/{base_model:path}", response_class=HTMLResponse)
def base_model_page(request: Request, state: StateDep, base_model: str, cursor: str | None = None) -> HTMLResponse:
    principal = page_principal(request, state)
    with state.sessions() as session:
        try:
            adapters, next_cursor = reads.list_adapters(
                session, principal, reads.AdapterFilter(base_model=base_model), cursor, 50
            )
        except RegistryError:
            return not_found(request, "That page")
        latest = reads.latest_versions(session, adapters)
        return page(
            request,
            "base_model.html",
            principal=principal,
            base_model=base_model,
            adapters=adapters,
            latest=latest,
            next_cursor=next_cursor,
        )


@router.get("/clusters/{run_id}", response_class=HTMLResponse)
def cluster_page(request: Request, state: StateDep, run_id: int) -> HTMLResponse:
    """A run's clusters (members the viewer may see now) and one point per member, coloured by cluster."""
    principal = page_principal(request, state)
    with state.sessions() as session:
        try:
            run = runs.get_run(session, principal, run_id)
        except NotFound:
            return not_found(request, f"Cluster run {run_id}")
        clusters = runs.visible_clusters(session, principal, run)
    return page(
        request, "cluster.html", principal=principal, run=run, clusters=clusters, **picture(clusters), size=PICTURE
    )


def picture(clusters: list[dict]) -> dict:
    """The members' 2-d coordinates scaled into the picture (runs made before coordinates were kept have
    none)."""
    members = [(c["index"], m) for c in clusters for m in c["members"] if "xy" in m]
    if not members:
        return {"points": []}
    xy = np.array([m["xy"] for _, m in members], dtype=float)
    lo, span = xy.min(axis=0), np.ptp(xy, axis=0)
    span[span == 0] = 1.0
    scaled = MARGIN + (xy - lo) / span * (PICTURE - 2 * MARGIN)  # inside the frame, clear of its edges
    return {
        "points": [
            {
                "id": m["id"],
                "label": m["id"].rsplit("/", 1)[-1] if len(members) <= MAX_LABELS else "",
                "cluster": index,
                "x": round(float(x), 1),
                "y": round(float(PICTURE - y), 1),
            }
            for (index, m), (x, y) in zip(members, scaled, strict=True)
        ]
    }


# -- signing in, tokens, members ----------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html")


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, state: StateDep, token: Annotated[str, Form()], csrf: Annotated[str, Form()]) -> Response:
    check_csrf(request, state, csrf)
    try:
        principal = sign_in(request, state, token.strip())
    except RegistryError as e:
        return page(request, "login.html", 401, error=e.message)
    return RedirectResponse(f"/{principal.user}", status_code=303)


@router.post("/logout")
def logout(request: Request, state: StateDep, csrf: Annotated[str, Form()]) -> Response:
    check_csrf(request, state, csrf)
    sign_out(request, state)
    return RedirectResponse("/", status_code=303)


@router.get("/settings/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, state: StateDep) -> Response:
    principal = page_principal(request, state)
    if principal.anonymous:
        return RedirectResponse("/login", status_code=303)
    with state.sessions() as session:
        rows = tokens.list_tokens(session, principal)
    return page(request, "tokens.html", principal=principal, tokens=rows)


@router.post("/settings/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    state: StateDep,
    csrf: Annotated[str, Form()],
    name: Annotated[str, Form()] = "",
    scope: Annotated[str, Form()] = "read",
    expires_in_days: Annotated[str, Form()] = "",
) -> Response:
    """A new token, shown once in this answer (never through a URL)."""
    principal = check_csrf(request, state, csrf)
    if principal.anonymous:
        return RedirectResponse("/login", status_code=303)
    try:
        expires = tokens.expiry_in_days(expires_in_days)
        _, secret = tokens.issue_token(state.sessions, principal, name, scope, expires)
    except RegistryError as e:
        with state.sessions() as session:
            rows = tokens.list_tokens(session, principal)
        return page(request, "tokens.html", 400, principal=principal, tokens=rows, error=e.message)
    with state.sessions() as session:
        rows = tokens.list_tokens(session, principal)
    return page(request, "tokens.html", principal=principal, tokens=rows, new_token=secret)


@router.post("/settings/tokens/{token_id}/revoke")
def revoke_token(request: Request, state: StateDep, token_id: int, csrf: Annotated[str, Form()]) -> Response:
    principal = check_csrf(request, state, csrf)
    if not principal.anonymous:
        tokens.revoke_token(state.sessions, principal, token_id)
    return RedirectResponse("/settings/tokens", status_code=303)


@router.get("/orgs/{org}", response_class=HTMLResponse)
def org_page(request: Request, state: StateDep, org: str, error: str | None = None) -> HTMLResponse:
    principal = page_principal(request, state)
    with state.sessions() as session:
        try:
            members = orgs.members(session, principal, org)
        except NotFound:
            return not_found(request, f"Organisation {org}")
        org_ns = session.scalar(select(Namespace).where(Namespace.name == org))
        admin = allowed(principal, "admin", org_ns.id)
    return page(request, "org.html", principal=principal, org=org, members=members, admin=admin, error=error)


@router.post("/orgs/{org}/members")
def set_member(
    request: Request,
    state: StateDep,
    org: str,
    csrf: Annotated[str, Form()],
    user: Annotated[str, Form()],
    role: Annotated[str, Form()],
) -> Response:
    principal = check_csrf(request, state, csrf)
    try:
        orgs.set_member(state.sessions, principal, org, user, role)
    except RegistryError as e:
        return org_page(request, state, org, error=e.message)
    return RedirectResponse(f"/orgs/{org}", status_code=303)


@router.post("/orgs/{org}/members/{user}/remove")
def remove_member(request: Request, state: StateDep, org: str, user: str, csrf: Annotated[str, Form()]) -> Response:
    principal = check_csrf(request, state, csrf)
    try:
        orgs.remove_member(state.sessions, principal, org, user)
    except RegistryError as e:
        return org_page(request, state, org, error=e.message)
    return RedirectResponse(f"/orgs/{org}", status_code=303)


# -- namespaces and adapters (last: the broadest paths) ---------------------------------------------------


@router.get("/{namespace}", response_class=HTMLResponse)
def namespace_page(request: Request, state: StateDep, namespace: str, cursor: str | None = None) -> Response:
    if namespace in RESERVED:
        raise NotFound(f"{request.url.path} not found")
    principal = page_principal(request, state)
    with state.sessions() as session:
        ns = session.scalar(select(Namespace).where(Namespace.name == namespace))
        if ns is None:
            return not_found(request, f"{namespace}")
        try:
            adapters, next_cursor = reads.list_adapters(
                session, principal, reads.AdapterFilter(namespace=namespace), cursor, 50
            )
        except RegistryError:
            return not_found(request, "That page")
        return page(
            request,
            "namespace.html",
            principal=principal,
            namespace=namespace,
            kind="organisation" if ns.kind == "org" else "user",
            member=ns.id in principal.roles,
            adapters=adapters,
            latest=reads.latest_versions(session, adapters),
            next_cursor=next_cursor,
        )


@router.get("/{namespace}/{name}", response_class=HTMLResponse)
async def adapter_page(
    request: Request, state: StateDep, namespace: str, name: str, rev: str | None = None
) -> Response:
    if namespace in RESERVED:
        raise NotFound(f"{request.url.path} not found")
    return await run_in_threadpool(render_adapter, request, state, namespace, name, rev)


def render_adapter(request: Request, state: StateDep, namespace: str, name: str, rev: str | None) -> Response:
    principal = page_principal(request, state)
    with state.sessions() as session:
        try:
            adapter = reads.get_adapter(session, principal, namespace, name)
            version = reads.get_version(session, adapter, rev or "latest") if adapter.versions else None
        except NotFound as e:
            if e.moved_to:
                return RedirectResponse(f"/{e.moved_to}", status_code=307)
            return not_found(request, f"{namespace}/{name}")
        except RegistryError:
            return not_found(request, f"{namespace}/{name}@{rev}")
        card = metadata.version_card(state.store, version) if version else None
        lineage = None
        if version is not None and version.derived_from:
            lineage = dict(version.derived_from)
            lineage["versions"] = [
                {**m, "visible": not m.get("local") and visible(session, principal, m["id"])}
                for m in lineage["versions"]
            ]
        derived = derived_from(session, principal, adapter.repo_id)
        endpoint = str(request.base_url).rstrip("/")
        return page(
            request,
            "adapter.html",
            principal=principal,
            adapter=adapter,
            version=version,
            versions=list(reversed(adapter.versions)),
            card=card,
            lineage=lineage,
            derived=derived,
            module_summary=module_summary(version.target_modules) if version else "",
            snippets=snippets(endpoint, adapter.repo_id, version) if version else [],
        )


def visible(session: object, principal: object, repo_id: str) -> bool:
    namespace, _, name = repo_id.partition("/")
    try:
        reads.get_adapter(session, principal, namespace, name)  # type: ignore[arg-type]
    except NotFound:
        return False
    return True


def derived_from(session: object, principal: object, repo_id: str) -> list[str]:
    """The adapters the caller may see whose latest lineage names this one."""
    rows = session.scalars(select(Version).where(Version.derived_from.is_not(None)).limit(1000))  # type: ignore[attr-defined]
    found = set()
    for v in rows:  # (a JSON null is not SQL NULL: some rows hold no lineage)
        lineage = v.derived_from or {}
        if any(m.get("id") == repo_id and not m.get("local") for m in lineage.get("versions", [])) and visible(
            session, principal, v.adapter.repo_id
        ):
            found.add(v.adapter.repo_id)
    return sorted(found)


def module_summary(modules: list[str]) -> str:
    kinds = sorted({m.rsplit(".", 1)[-1] for m in modules})
    layers = {part for m in modules for part in m.split(".") if part.isdigit()}
    return f"{', '.join(kinds)} in {len(layers) or 1} layer{'s' if len(layers) != 1 else ''}"


def snippets(endpoint: str, repo_id: str, version: Version) -> list[tuple[str, str]]:
    spec = f"{repo_id}@{version.revision}"
    return [
        (
            "Python (quiver_hub)",
            "from quiver_hub import Adapter, Hub\n\n"
            f'folder = Hub("{endpoint}").pull("{spec}")\n'
            "adapter = Adapter.load(folder)  # then merged(model, adapter) or apply_arrow(model, [adapter])\n"
            'print(folder, len(adapter.factors), "modules")',
        ),
        ("quiver", f"quiver pull {repo_id}@{version.number} --endpoint {endpoint}"),
        (
            "huggingface_hub",
            f"# HF_ENDPOINT={endpoint} HF_HUB_DISABLE_XET=1 python ...\n"
            "from huggingface_hub import snapshot_download\n\n"
            f'print(snapshot_download("{repo_id}", revision="{version.revision}"))',
        ),
        (
            "PEFT",
            f"# HF_ENDPOINT={endpoint} HF_HUB_DISABLE_XET=1 python ...\n"
            "from peft import PeftModel\n\n"
            f'model = PeftModel.from_pretrained(base_model, "{repo_id}", revision="{version.revision}")',
        ),
    ]
