"""Which adapters fit this input? Text search, Arrow routing on hidden states, routing by text."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from quiver_hub.hub.deps import PrincipalDep, StateDep
from quiver_hub.registry import limits
from quiver_hub.registry.accounts.access import Principal
from quiver_hub.registry.catalogue.metadata import parse_tags
from quiver_hub.registry.errors import InvalidRequest
from quiver_hub.registry.search import routing
from quiver_hub.registry.search.indexes import Filters, IndexSet

router = APIRouter(prefix="/v1", tags=["discovery"])


class Result(BaseModel):
    id: str
    version: int
    revision: str
    score: float
    base_model: str
    task: str | None


class RankedAnswer(BaseModel):
    results: list[Result]
    notice: str | None = Field(None, description="why there are no results: a base model you have no adapter of")


class SearchRequest(BaseModel):
    model_config = {"extra": "forbid"}
    query: str = Field(min_length=1, max_length=2000)
    base_model: str | None = None
    task: str | None = None
    tags: list[str] = []
    limit: int = Field(10, ge=1, le=limits.MAX_ROUTE_RESULTS)


class RouteTextRequest(BaseModel):
    model_config = {"extra": "forbid"}
    text: str = Field(min_length=1, max_length=20000)
    base_model: str | None = None
    limit: int = Field(10, ge=1, le=limits.MAX_ROUTE_RESULTS)


class RouteRequest(BaseModel):
    model_config = {"extra": "forbid"}
    hidden_states: dict[str, list[list[float]]] = Field(
        description="per module name, one row of in_features floats per token"
    )
    base_model: str
    top_k: int = 3
    temperature: float = 1.0
    limit: int = 10
    task: str | None = None
    tags: list[str] = []
    namespace: str | None = None
    all_scores: bool = Field(False, description="every adapter with a score above zero, not the `limit` best")
    text: str | None = Field(
        None, max_length=20000, description='the input as text: method "arrow+examples" adds its match to examples'
    )


class RouteAnswer(RankedAnswer):
    base_model: str
    top_k: int
    temperature: float
    tokens: int


def answer(ranked: list[routing.Ranked]) -> list[Result]:
    return [
        Result(
            id=r.entry.identity.id,
            version=r.entry.identity.version,
            revision=r.entry.identity.revision,
            score=r.score,
            base_model=r.entry.base_model,
            task=r.entry.task,
        )
        for r in ranked
    ]


class RouteModules(BaseModel):
    base_model: str
    modules: dict[str, int] = Field(description="module name -> in_features (the width of its input rows)")
    max_rows: int = Field(limits.MAX_ROUTE_TOKENS, description="token rows a route request may hold, over its modules")
    route_modules: str = Field(
        description="the expression of the modules this hub routes on (QUIVER_ROUTE_MODULES; '.*': every module); "
        "an adapter that adapts none of them is routed on its own, so `modules` lists what is indexed"
    )


@router.get("/route/modules", response_model=RouteModules)
def route_modules(base_model: str, state: StateDep, principal: PrincipalDep) -> RouteModules:
    """The modules adapters of this base model that you can see adapt: what /v1/route accepts."""
    indexes = state.fresh_indexes()
    with indexes.lock:
        modules = routing.visible_modules(indexes, principal, base_model)
    return RouteModules(base_model=base_model, modules=modules, route_modules=indexes.route_modules or ".*")


@router.post("/search", response_model=RankedAnswer)
def search(body: SearchRequest, state: StateDep, principal: PrincipalDep) -> RankedAnswer:
    """Rank adapters by cosine similarity of MiniLM embeddings: the query against each adapter's
    description, task, tags and card, and against its examples (the better of the two)."""
    query = state.embedder.embed_one(body.query)
    filters = Filters(base_model=body.base_model, task=body.task, tags=tuple(body.tags))
    indexes = state.fresh_indexes()
    ranked = routing.visible_now(
        state.sessions, principal, routing.search_text(indexes, principal, query, filters, body.limit)
    )
    return RankedAnswer(results=answer(ranked), notice=base_model_notice(indexes, principal, body.base_model, ranked))


@router.post("/route/text", response_model=RankedAnswer)
def route_text(body: RouteTextRequest, state: StateDep, principal: PrincipalDep) -> RankedAnswer:
    """Rank adapters by cosine of the text's embedding to the mean embedding of their examples.jsonl."""
    query = state.embedder.embed_one(body.text)
    indexes = state.fresh_indexes()
    ranked = routing.search_text(
        indexes, principal, query, Filters(base_model=body.base_model), body.limit, use_text=False
    )
    ranked = routing.visible_now(state.sessions, principal, ranked)
    return RankedAnswer(results=answer(ranked), notice=base_model_notice(indexes, principal, body.base_model, ranked))


def base_model_notice(indexes: IndexSet, principal: Principal, base_model: str | None, ranked: list) -> str | None:
    if ranked or not base_model:
        return None
    with indexes.lock:
        return routing.unknown_base_model(indexes, principal, base_model)


ROUTE_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": RouteRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "safetensors: keys are module names, values tokens x in_features; the other "
                "parameters go in the query string",
            },
        }
    }
}


@router.post("/route", response_model=RouteAnswer, openapi_extra=ROUTE_BODY)
async def route(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    base_model: Annotated[str | None, Query(description="with a safetensors body")] = None,
    top_k: Annotated[int, Query()] = 3,
    temperature: Annotated[float, Query()] = 1.0,
    limit: Annotated[int, Query()] = 10,
    all_scores: Annotated[bool, Query(description="every adapter scoring above zero")] = False,
    text: Annotated[str | None, Query(max_length=20000, description="the input's text (arrow+examples)")] = None,
    task: Annotated[str | None, Query()] = None,
    tags: Annotated[str | None, Query(description="comma separated")] = None,
    namespace: Annotated[str | None, Query()] = None,
) -> RouteAnswer:
    """Arrow retrieval: which adapters' prototypes best explain these hidden states (the inputs of the
    adapted modules), scored by the routing weight averaged over tokens, then over the routed modules each
    adapter adapts. A module with no token rows (safetensors, 0 x in_features) is part of the input scored
    in another request: it counts in each adapter's routed modules. With `text` (the
    same input as text), method "arrow+examples": averaged with the adapters' share of a sharp softmax
    of its similarity to their example inputs (docs/routing-and-clustering.md)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()  # bounded by QUIVER_MAX_ROUTE_BYTES (hub.body_limit); parsed off the event loop
    if content_type == "application/octet-stream":
        hidden = await run_in_threadpool(hidden_from_safetensors, body)
        params = dict(
            base_model=base_model,
            top_k=top_k,
            temperature=temperature,
            limit=limit,
            all_scores=all_scores,
            text=text,
            task=task,
            tags=tuple(parse_tags(tags) or ()),
            namespace=namespace,
        )
    elif content_type in ("application/json", ""):
        body, hidden = await run_in_threadpool(route_from_json, body)
        params = dict(
            base_model=body.base_model,
            top_k=body.top_k,
            temperature=body.temperature,
            limit=body.limit,
            all_scores=body.all_scores,
            text=body.text,
            task=body.task,
            tags=tuple(body.tags),
            namespace=body.namespace,
        )
    else:
        raise InvalidRequest("send hidden states as application/json or as a safetensors application/octet-stream")

    filters = Filters(
        base_model=params["base_model"], task=params["task"], tags=params["tags"], namespace=params["namespace"]
    )

    def run() -> list[routing.Ranked]:  # off the event loop: it reads the change sequence, then searches
        query = state.embedder.embed_one(params["text"]) if params["text"] else None
        ranked = routing.route(
            state.fresh_indexes(),
            principal,
            hidden,
            filters,
            params["top_k"],
            params["temperature"],
            params["limit"],
            params["all_scores"],
            query,
        )
        return routing.visible_now(state.sessions, principal, ranked)

    ranked = await run_in_threadpool(run)
    return RouteAnswer(
        results=answer(ranked),
        base_model=params["base_model"],
        top_k=params["top_k"],
        temperature=params["temperature"],
        tokens=sum(h.shape[0] for h in hidden.values()),
    )


def route_from_json(body: bytes) -> tuple[RouteRequest, dict[str, np.ndarray]]:
    try:
        request = RouteRequest.model_validate_json(body)
    except ValueError as e:
        raise InvalidRequest(f"route body is not valid: {str(e)[:2000]}") from None
    return request, hidden_from_json(request.hidden_states)


def hidden_from_json(rows: dict[str, list[list[float]]]) -> dict[str, np.ndarray]:
    hidden = {}
    for module, values in rows.items():
        widths = {len(r) for r in values}
        if not values or widths == {0}:
            raise InvalidRequest(f"hidden_states[{module!r}] has no token rows", code="bad_dimension")
        if len(widths) > 1:
            raise InvalidRequest(
                f"hidden_states[{module!r}]: every token row must have the same length", code="bad_dimension"
            )
        hidden[module] = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    return hidden


def hidden_from_safetensors(body: bytes) -> dict[str, np.ndarray]:
    try:
        tensors = load_safetensors(body)
    except (SafetensorError, ValueError) as e:
        raise InvalidRequest(f"the body is not a valid safetensors file: {e}") from None
    hidden = {}
    for module, t in tensors.items():
        if not t.is_floating_point():
            raise InvalidRequest(f"hidden_states[{module!r}] must be a floating-point tensor, got {t.dtype}")
        hidden[module] = t.float().numpy()
    return hidden
