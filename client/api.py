"""HubClient: a hub over HTTP (publishing, downloads through the local cache, search, routing hidden states,
clusters, accounts), with retries of reads and the hub's errors as exceptions."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from quiver_hub.cache import Cache
from quiver_hub.credentials import default_endpoint, default_token
from quiver_hub.errors import HubError, error_for
from quiver_hub.results import AdapterInfo, Hit, TagInfo, VersionInfo, VersionRef, records
from quiver_hub.retries import retrying
from quiver_hub.upload_files import Sent, convert_pickled_weights, preflight, upload_paths

if TYPE_CHECKING:  # routing imports torch, which the commands that only talk HTTP never need
    import torch

    from quiver_hub.routing import Routing

ROUTE_METHODS = ("arrow", "arrow-centered", "arrow+examples")
# How many adapters each token keeps when a route does not say (its top_k): the paper's 3 for its Arrow;
# 1 for the centered methods, chosen leave-one-library-out on four libraries: bare adapters first on
# 0.61 of the worst library's inputs against 0.55 (the first library, of one form, loses 0.08), as often
# with examples (bench/README.md, "Zero-shot routing on libraries no default was chosen on").
DEFAULT_TOP_K = {"arrow": 3, "arrow-centered": 1, "arrow+examples": 1}
ROUTE_MODULES_TTL_S = 60.0  # how long Hub.route trusts the modules it was told (Hub.route_modules)


def check_route_method(method: str) -> None:
    """ValueError for a routing method the hub does not know (before any work is done for it)."""
    if method not in ROUTE_METHODS:
        raise ValueError(f"method must be one of {', '.join(ROUTE_METHODS)}, got {method!r}")


def offline() -> bool:
    """QUIVER_OFFLINE=1: never reach for the hub (as HF_HUB_OFFLINE does for huggingface_hub)."""
    return os.environ.get("QUIVER_OFFLINE", "").lower() in ("1", "true", "yes")


def split_repo(spec: str) -> tuple[str, str | None]:
    """ "ns/name@rev" -> ("ns/name", "rev"); "ns/name" -> ("ns/name", None)."""
    repo, _, rev = spec.partition("@")
    if repo.count("/") != 1:
        raise ValueError(f"{spec!r} is not 'namespace/name[@revision]'")
    return repo, rev or None


class HubClient:
    """A hub over HTTP: push, pull (through the local cache), search, route hidden states, clusters, tokens.
    It does no model work; `quiver_hub.Hub` adds what needs a local model (routing a model's own input,
    publishing a composition)."""

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        timeout: float = 120.0,
    ):
        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        self.token = token if token is not None else default_token()
        self.cache = Cache(cache_dir)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.endpoint, headers=headers, timeout=timeout, follow_redirects=True)
        self._route_modules: dict[str, tuple[float, dict]] = {}  # base model -> (when asked, the answer)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The hub's successful response; a hub error as its exception, an unreachable hub as HubError.
        Reads (GET, HEAD) are tried again on a lost connection or a 502/503/504, with backoff."""
        if method in ("GET", "HEAD"):
            return retrying(lambda: self._request_once(method, path, **kwargs))
        return self._request_once(method, path, **kwargs)

    def _request_once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise HubError(0, "unreachable", f"cannot reach the hub at {self.endpoint}: {e}") from None
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "error", response.text or response.reason_phrase
        raise error_for(response.status_code, code, message)

    # -- publishing --

    def push(
        self,
        folder_or_model: str | Path | Any,
        repo: str,
        description: str | None = None,
        task: str | None = None,
        tags: Sequence[str] | None = None,
        examples: Sequence[str] | None = None,
        visibility: str | None = None,
        license: str | None = None,  # noqa: A002
        base_model: str | None = None,
        exclude: Sequence[str] = (),
        derived_from: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> VersionInfo:
        """Publish a PEFT adapter folder (or a PeftModel, saved first) as the next version of repo;
        `progress(sent, total)` is told the bytes as they go.

        Every file of the folder goes up (subfolders too; not .git or caches) except those matching an
        `exclude` pattern ("*.bin"): the hub stores tokenizer files and the like beside the adapter, and
        refuses pickles by name, with the pattern to exclude them. `base_model` sets or corrects the base
        model the config names."""
        with tempfile.TemporaryDirectory() as tmp:
            if hasattr(folder_or_model, "save_pretrained"):
                folder_or_model.save_pretrained(tmp)
                folder = Path(tmp)
            else:
                folder = Path(folder_or_model)
            paths = upload_paths(folder, exclude)
            preflight(folder, paths)
            if converted := convert_pickled_weights(paths, Path(tmp)):
                warnings.warn(f"{folder}: {converted}", UserWarning, stacklevel=2)
            if examples is not None:
                written = Path(tmp) / ".examples.jsonl"
                written.write_text("".join(json.dumps({"input": e}) + "\n" for e in examples))
                paths["examples.jsonl"] = written
            data = {
                k: v
                for k, v in {
                    "description": description,
                    "task": task,
                    "license": license,
                    "visibility": visibility,
                    "base_model": base_model,
                    "tags": ",".join(tags) if tags else None,
                    "derived_from": json.dumps(derived_from) if derived_from is not None else None,
                }.items()
                if v is not None
            }
            counter = Sent(sum(p.stat().st_size for p in paths.values()), progress)
            with contextlib.ExitStack() as opened:  # streamed from disk, not read into memory
                files = [
                    ("files", (rel, counter.reading(opened.enter_context(open(path, "rb")))))
                    for rel, path in paths.items()
                ]
                version = self._call("POST", f"/v1/adapters/{repo}", files=files, data=data)
            self._route_modules.clear()  # it may adapt modules no adapter did
        for notice in version.get("notices", []):  # what the hub decided for you, or asks you to check
            warnings.warn(f"{repo}: {notice}", UserWarning, stacklevel=2)
        return VersionInfo(version)

    def tag(self, spec: str, tag: str, message: str = "") -> TagInfo:
        """Name the version `spec` names (`ns/name` is the latest) with `tag`."""
        repo, rev = split_repo(spec)
        body = {"tag": tag, "revision": rev or "latest", "message": message}
        return TagInfo(self._call("POST", f"/v1/adapters/{repo}/tags", json=body))

    def untag(self, repo: str, tag: str) -> None:
        self._request("DELETE", f"/v1/adapters/{repo}/tags/{tag}")

    def delete(self, spec: str) -> list[VersionRef]:
        repo, rev = split_repo(spec)
        path = f"/v1/adapters/{repo}" + (f"/versions/{rev}" if rev else "")
        self._route_modules.clear()
        return records(VersionRef, self._call("DELETE", path)["deleted"])

    # -- reading --

    def info(self, spec: str) -> AdapterInfo | VersionInfo:
        """An adapter (with its latest version's identity), or one version with `@rev`."""
        repo, rev = split_repo(spec)
        answer = self._call("GET", f"/v1/adapters/{repo}" + (f"/versions/{rev}" if rev else ""))
        return VersionInfo(answer) if rev else AdapterInfo(answer)

    def list(self, **filters: str) -> list[AdapterInfo]:
        """Every adapter you can see (filters: base_model, task, tag, namespace), following pages."""
        out, cursor = [], None
        while True:
            page = self._call(
                "GET", "/v1/adapters", params={**filters, "limit": 200, **({"cursor": cursor} if cursor else {})}
            )
            out += records(AdapterInfo, page["adapters"])
            cursor = page["next_cursor"]
            if not cursor:
                return out

    def prototypes(self, spec: str) -> dict[str, torch.Tensor]:
        """The version's Arrow prototypes as the hub computed them at publish (module -> unit vector)."""
        repo, rev = split_repo(spec)
        from safetensors.torch import load

        return load(self._request("GET", f"/v1/adapters/{repo}/versions/{rev or 'latest'}/prototypes").content)

    def prototypes_for(self, adapters: Sequence[Any]) -> builtins.list[dict[str, torch.Tensor] | None]:
        """What quiver_hub.apply_arrow takes as `prototypes`: for each "ns/name@rev" or Adapter pulled from
        this hub (its `origin`), the prototypes the hub computed at publish; None for anything else (a
        local folder), whose prototypes apply_arrow computes itself."""

        def spec(a: Any) -> str | None:
            if isinstance(a, str):
                return a
            origin = getattr(a, "origin", None)
            return f"{origin[0]}@{origin[1]}" if origin else None

        return [self.prototypes(s) if (s := spec(a)) else None for a in adapters]

    def pull(self, spec: str, progress: Callable[[str, int, int], None] | None = None) -> Path:
        """A local folder with the version's files, verified against their sha256, cached by revision id.

        The hub is always asked which version `spec` names (a version deleted there is NotFound here too,
        cached or not); only when it cannot be reached, or with QUIVER_OFFLINE=1, does a pinned revision
        (id or number) come from the cache alone."""
        repo, rev = split_repo(spec)
        if offline():
            if revision := self.cache.cached_revision(repo, rev):
                return self.cache.version_dir(repo, revision)
            raise HubError(0, "offline", f"QUIVER_OFFLINE is set and {spec} is not in the cache")
        try:
            version = self._call("GET", f"/v1/adapters/{repo}/versions/{rev or 'latest'}")
        except HubError as e:
            if e.code == "unreachable" and (revision := self.cache.cached_revision(repo, rev)):
                warnings.warn(f"{e.message}; using {repo}@{revision} from the cache", RuntimeWarning, stacklevel=2)
                return self.cache.version_dir(repo, revision)
            raise
        revision = version["revision"]
        if not (folder := self.cache.version_dir(repo, revision)).is_dir():
            files = {}
            for f in version["files"]:
                url = f"/v1/adapters/{repo}/versions/{revision}/files/{f['path']}"
                fetch = lambda start, url=url, f=f: self._stream(url, start, f["path"], f["size"], progress)  # noqa: E731
                # a connection lost or a 5xx: tried again, resuming from the bytes already here
                files[f["path"]] = retrying(lambda f=f, fetch=fetch: self.cache.blob(f["sha256"], f["size"], fetch))
            folder = self.cache.add_version(repo, version["version"], revision, files)
        if rev is None:
            self.cache.remember_latest(repo, revision)
        return folder

    def _stream(
        self,
        url: str,
        start: int,
        path: str = "",
        size: int = 0,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Iterator[bytes]:
        headers = {"Range": f"bytes={start}-"} if start else {}
        with self._http.stream("GET", url, headers=headers) as response:
            if response.status_code not in (200, 206):
                response.read()
                raise error_for(response.status_code, "download_failed", response.text)
            if start and response.status_code == 200:
                raise HubError(200, "no_range", "the hub ignored the Range request; delete the partial file")
            done = start
            for chunk in response.iter_bytes():
                done += len(chunk)
                if progress:
                    progress(path, done, size)
                yield chunk

    # -- finding --

    def search(
        self,
        query: str,
        base_model: str | None = None,
        task: str | None = None,
        tags: Sequence[str] = (),
        limit: int = 10,
    ) -> builtins.list[Hit]:
        body = {"query": query, "base_model": base_model, "task": task, "tags": list(tags), "limit": limit}
        return records(Hit, self._call("POST", "/v1/search", json=body)["results"])

    def route_text(self, text: str, base_model: str | None = None, limit: int = 10) -> builtins.list[Hit]:
        body = {"text": text, "base_model": base_model, "limit": limit}
        return records(Hit, self._call("POST", "/v1/route/text", json=body)["results"])

    def route_modules(self, base_model: str, fresh: bool = False) -> dict:
        """{"modules": {module: in_features}, "max_rows"}: what the hub can route on for this base model.

        Kept for ROUTE_MODULES_TTL_S (a route asks it every time; the set changes only when an adapter of
        new modules is published), unless `fresh`; this client's own push and delete forget it."""
        asked = self._route_modules.get(base_model)
        if fresh or asked is None or time.monotonic() - asked[0] > ROUTE_MODULES_TTL_S:
            asked = (time.monotonic(), self._call("GET", "/v1/route/modules", params={"base_model": base_model}))
            self._route_modules[base_model] = asked
        return asked[1]

    def route(
        self,
        hidden_states: Mapping[str, Any],
        *,
        base_model: str | None = None,
        text: str | None = None,
        top_k: int | None = None,
        temperature: float = 1.0,
        limit: int = 10,
        task: str | None = None,
        tags: Sequence[str] = (),
        namespace: str | None = None,
        method: str = "arrow+examples",
    ) -> Routing:
        """Which adapters fit these hidden states (module -> tokens x in_features, the inputs of adapted
        modules)? With method "arrow+examples", `text` (the user's words) is sent too. Each token keeps
        its `top_k` adapters (DEFAULT_TOP_K of the method unless given). Inputs too long for one request
        are split over several and combined exactly (quiver_hub.routing). To route a model's own input
        (chat messages, text), use quiver_hub.Hub.route."""
        from quiver_hub.routing import Routing, combine, split_requests

        check_route_method(method)
        top_k = DEFAULT_TOP_K[method] if top_k is None else top_k
        if not base_model:
            raise ValueError("base_model is required")
        max_rows = self.route_modules(base_model)["max_rows"]
        params = {"base_model": base_model, "top_k": top_k, "temperature": temperature, "limit": limit}
        params |= {k: v for k, v in {"task": task, "tags": ",".join(tags), "namespace": namespace}.items() if v}
        if method == "arrow+examples" and text:
            params["text"] = text[:20000]
        requests = split_requests(hidden_states, max_rows) if max_rows else [(1.0, hidden_states)]
        if len(requests) == 1:
            return Routing(self._route_request(requests[0][1], params))
        answers = [(w, self._route_request(states, {**params, "all_scores": True})) for w, states in requests]
        return combine(answers, limit)

    def _route_request(self, states: Mapping[str, Any], params: dict) -> builtins.list[Hit]:
        from quiver_hub.routing import routing_payload

        return records(
            Hit,
            self._call(
                "POST",
                "/v1/route",
                params=params,
                content=routing_payload(states),
                headers={"Content-Type": "application/octet-stream"},
            )["results"],
        )

    # -- clustering (MBC) --

    def cluster(
        self, base_model: str, k: int | None = None, method: str = "outputs-middle", seed: int = 0, **filters: Any
    ) -> dict:
        """Start a cluster run over the adapters you can see; it may still be running (poll run())."""
        body = {"base_model": base_model, "method": method, "seed": seed, **({"k": k} if k else {}), **filters}
        return self._call("POST", "/v1/clusters", json=body)

    def cluster_run(self, run_id: int) -> dict:
        return self._call("GET", f"/v1/clusters/{run_id}")

    def merge_clusters(self, run_id: int, rank: int | None = None) -> builtins.list[dict]:
        """Publish one averaged adapter per cluster of a finished run (best rank-r with `rank`)."""
        return self._call("POST", f"/v1/clusters/{run_id}/merge", json={"rank": rank} if rank else {})

    def whoami(self) -> dict:
        """{"user", "scope", "orgs", "token_id"} of the token in use."""
        return self._call("GET", "/v1/whoami")

    # -- accounts --

    def create_token(
        self,
        name: str = "",
        scope: str = "read",
        expires_at: str | None = None,
        namespaces: Sequence[str] | None = None,
    ) -> dict:
        """A new token for yourself; the answer's "token" is its secret, shown this once."""
        body = {"name": name, "scope": scope, "expires_at": expires_at, "namespaces": namespaces}
        return self._call("POST", "/v1/tokens", json={k: v for k, v in body.items() if v is not None})

    def tokens(self) -> builtins.list[dict]:
        return self._call("GET", "/v1/tokens")

    def revoke_token(self, token_id: int) -> None:
        self._request("DELETE", f"/v1/tokens/{token_id}")

    def audit(self, namespace: str | None = None, action: str | None = None, limit: int = 100) -> builtins.list[dict]:
        params = {k: v for k, v in {"namespace": namespace, "action": action, "limit": limit}.items() if v}
        return self._call("GET", "/v1/audit", params=params)


def __getattr__(name: str) -> Any:
    """`quiver_hub.api.Hub` was the whole client before the HTTP part and the model part came apart: it is
    `quiver_hub.Hub` now (deprecated here)."""
    if name == "Hub":
        import importlib

        warnings.warn("quiver_hub.api.Hub is deprecated: use quiver_hub.Hub", DeprecationWarning, stacklevel=2)
        return importlib.import_module("quiver_hub.workflows").Hub
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
