"""The pages people browse, server-rendered from the same registry functions as the API (and the same
visibility rules: a page of something the viewer may not see answers 404, exactly like one that does not
exist). Usable without JavaScript; hub/pages/web.py has the safety rules (sanitised cards, CSP, CSRF).

    /                        search, recently updated adapters, base models, find adapters for a text
    /search, /find           by meaning or by name, with filters; by example text (route/text)
    /{ns}/{name}             an adapter: card, versions and tags, files, lineage, modules, snippets
    /{ns}, /models/{base}    a user's or organisation's adapters; every adapter of one base model
    /clusters/{id}           a cluster run, with a picture of the library

Signing in, tokens and organisations are hub/pages/account.py.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from quiver_hub.hub.deps import StateDep
from quiver_hub.hub.pages.web import not_found, page, page_principal
from quiver_hub.registry import limits
from quiver_hub.registry.catalogue import metadata, reads
from quiver_hub.registry.catalogue.lineage import derived_from_this
from quiver_hub.registry.clusters import runs
from quiver_hub.registry.errors import NotFound, RegistryError
from quiver_hub.registry.models import Version
from quiver_hub.registry.search import routing
from quiver_hub.registry.search.indexes import Filters

router = APIRouter(include_in_schema=False)


# First path segments that belong to the API and the docs, never to a namespace's page.
RESERVED = {"v1", "api", "docs", "redoc", "openapi.json", "static", "static-offline-docs", "healthz", "readyz"}
PICTURE = 480
PAGE = 20  # search results a page
MARGIN = 48  # room for the axes' names and the points' labels
MAX_LABELS = 40  # a picture of more members shows names on hover only


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


@router.get("/{namespace}", response_class=HTMLResponse)
def namespace_page(request: Request, state: StateDep, namespace: str, cursor: str | None = None) -> Response:
    if namespace in RESERVED:
        raise NotFound(f"{request.url.path} not found")
    principal = page_principal(request, state)
    with state.sessions() as session:
        ns = reads.find_namespace(session, namespace)
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
                {**m, "visible": not m.get("local") and reads.may_see(session, principal, m["id"])}
                for m in lineage["versions"]
            ]
        derived = derived_from_this(session, principal, adapter.repo_id)
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
