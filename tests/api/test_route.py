"""POST /v1/route against an independent brute-force implementation of the formula (docs/architecture.md)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_np
from safetensors.numpy import save as save_np
from safetensors.torch import load_file

from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer

HIDDEN = 16
Q0, V0, Q1, V1 = (f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj"))


def dense_prototypes(folder: Path) -> dict[str, np.ndarray]:
    """Top right singular vector of each module's dense B @ A, straight from the file with numpy."""
    tensors = {k: v.double().numpy() for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = tensors[key.replace("lora_A", "lora_B")]
            out[module] = np.linalg.svd(b @ a)[2][0]
    return out


def brute_force(
    protos: dict[str, dict[str, np.ndarray]], hidden: dict[str, np.ndarray], top_k: int, temperature: float
) -> dict[str, float]:
    """Each adapter's weight averaged over tokens, then over the modules of `hidden` it adapts."""
    scores: dict[str, float] = defaultdict(float)
    for module, h in hidden.items():
        names = sorted(n for n, p in protos.items() if module in p)
        logits = np.abs(h.astype(np.float64) @ np.stack([protos[n][module] for n in names]).T) / temperature
        k = min(top_k, len(names))
        for row in logits:
            top = np.argsort(-row)[:k]
            w = np.exp(row[top] - row[top].max())
            w /= w.sum()
            for j, i in enumerate(top):
                scores[names[i]] += w[j] / len(h)
    return {n: s / sum(m in protos[n] for m in hidden) for n, s in scores.items()}


@pytest.fixture
def library(server: LiveServer, tmp_path: Path) -> dict:
    """12 public adapters of alice and carol (some without v_proj), and 4 private ones of bob built to
    dominate the query if they leaked."""
    tokens = {u: server.token(u) for u in ("alice", "carol", "bob")}
    rng = np.random.default_rng(0)
    query_dir = {m: torch.tensor(rng.standard_normal(HIDDEN), dtype=torch.float32) for m in (Q0, V0, Q1, V1)}
    query_dir = {m: v / v.norm() for m, v in query_dir.items()}
    protos: dict[str, dict[str, np.ndarray]] = {}
    published = []
    for i in range(16):
        owner = "bob" if i >= 12 else ("alice" if i % 2 else "carol")
        projs = ("q_proj",) if i % 5 == 0 else ("q_proj", "v_proj")
        folder = write_adapter(
            tmp_path / f"ad{i}",
            seed=100 + i,
            projs=projs,
            hidden=HIDDEN,
            direction=query_dir if owner == "bob" else None,
        )
        repo = f"{owner}/ad{i}"
        with server.client(tokens[owner]) as c:
            data = {"visibility": "private" if owner == "bob" else "public", "task": "even" if i % 2 == 0 else "odd"}
            r = c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data=data)
            assert r.status_code == 201, r.text
        protos[repo] = dense_prototypes(folder)
        published.append(repo)
    hidden = {m: (rng.standard_normal((5, HIDDEN)) + 3 * query_dir[m].numpy()).astype(np.float32) for m in (Q0, V0, Q1)}
    return {"tokens": tokens, "protos": protos, "hidden": hidden}


def route_json(server: LiveServer, token: str | None, hidden: dict[str, np.ndarray], **params) -> dict:
    body = {"hidden_states": {m: h.tolist() for m, h in hidden.items()}, "base_model": BASE, **params}
    with server.client(token) as c:
        r = c.post("/v1/route", json=body)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.mark.parametrize("top_k, temperature", [(3, 1.0), (1, 1.0), (8, 0.5), (16, 2.0)])
def test_route_matches_brute_force(server: LiveServer, library: dict, top_k: int, temperature: float) -> None:
    visible = {repo: p for repo, p in library["protos"].items() if not repo.startswith("bob/")}
    expected = brute_force(visible, library["hidden"], top_k, temperature)
    got = route_json(
        server, library["tokens"]["alice"], library["hidden"], top_k=top_k, temperature=temperature, limit=100
    )
    ranking = [r["id"] for r in got["results"]]
    assert ranking == sorted(expected, key=lambda n: (-expected[n], n))[: len(ranking)]
    assert set(ranking) == {n for n, s in expected.items() if s > 0}
    for r in got["results"]:
        assert abs(r["score"] - expected[r["id"]]) < 1e-5
        assert r["version"] == 1 and len(r["revision"]) == 40
    # The weights of each token sum to 1: each adapter's score times its share of the routed modules.
    adapted = {n: sum(m in visible[n] for m in library["hidden"]) / len(library["hidden"]) for n in expected}
    assert abs(sum(r["score"] * adapted[r["id"]] for r in got["results"]) - 1.0) < 1e-5
    assert any(adapted[r["id"]] < 1 for r in got["results"])  # an adapter without v_proj: 2 of its 3 modules
    assert got["tokens"] == 15 and got["top_k"] == top_k


def test_private_adapters_never_appear_nor_change_scores(server: LiveServer, library: dict) -> None:
    anonymous = route_json(server, None, library["hidden"], limit=100)
    alice = route_json(server, library["tokens"]["alice"], library["hidden"], limit=100)
    assert anonymous["results"] == alice["results"]
    assert not any(r["id"].startswith("bob/") for r in alice["results"])
    # Bob sees his own, and they win: they were built around the query directions.
    bob = route_json(server, library["tokens"]["bob"], library["hidden"], limit=100)
    everything = brute_force(library["protos"], library["hidden"], 3, 1.0)
    assert [r["id"] for r in bob["results"]][:4] == sorted(everything, key=lambda n: -everything[n])[:4]
    assert all(r["id"].startswith("bob/") for r in bob["results"][:4])


def test_safetensors_body_and_filters(server: LiveServer, library: dict) -> None:
    as_json = route_json(server, None, library["hidden"], top_k=2, limit=5)
    with server.client() as c:
        r = c.post(
            "/v1/route",
            content=save_np(library["hidden"]),
            params={"base_model": BASE, "top_k": 2, "limit": 5},
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        assert [x["id"] for x in r.json()["results"]] == [x["id"] for x in as_json["results"]]
        for a, b in zip(r.json()["results"], as_json["results"], strict=True):
            assert abs(a["score"] - b["score"]) < 1e-6
    odd = route_json(server, None, library["hidden"], task="odd", limit=100)
    assert odd["results"] and all(r["task"] == "odd" for r in odd["results"])
    visible_odd = {k: v for k, v in library["protos"].items() if k.startswith("alice/")}
    expected = brute_force(visible_odd, library["hidden"], 3, 1.0)
    for r in odd["results"]:
        assert abs(r["score"] - expected[r["id"]]) < 1e-5


def test_modules_with_no_rows_count_in_each_adapters_modules_and_only_there(server: LiveServer, library: dict) -> None:
    """A request of V0's rows with Q0 and Q1 sent with no rows (one part of a split input): an adapter
    without v_proj scores nothing here, and the others' V0 weight is divided by the 3 routed modules
    they adapt and scaled by 3 modules / 1 with rows, so that the client's share (1/3) gives it back."""
    visible = {repo: p for repo, p in library["protos"].items() if not repo.startswith("bob/")}
    part = {Q0: np.zeros((0, HIDDEN), np.float32), V0: library["hidden"][V0], Q1: np.zeros((0, HIDDEN), np.float32)}
    with server.client() as c:
        r = c.post(
            "/v1/route",
            content=save_np(part),
            params={"base_model": BASE, "all_scores": True},
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        empty = c.post(
            "/v1/route",
            content=save_np({Q0: part[Q0]}),
            params={"base_model": BASE},
            headers={"Content-Type": "application/octet-stream"},
        )
    alone = brute_force(visible, {V0: library["hidden"][V0]}, 3, 1.0)  # V0's weights, over 1 module
    got = {x["id"]: x["score"] for x in r.json()["results"]}
    assert got and set(got) == {n for n, s in alone.items() if s > 0} and all(V0 in visible[n] for n in got)
    for name, score in got.items():
        assert abs(score - alone[name]) < 1e-5  # its V0 weight, x 3 modules / 1 with rows, / its 3 modules
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]


BAD = [
    ({"hidden_states": {Q0: [[0.0] * 7]}}, "bad_dimension", "takes 16"),
    ({"hidden_states": {Q0: []}}, "bad_dimension", "no token rows"),
    ({"hidden_states": {"model.layers.9.mlp.up_proj": [[0.0] * HIDDEN]}}, "unknown_module", "known modules"),
    ({"hidden_states": {Q0: [[float("nan")] * HIDDEN]}}, "not_finite", "NaN"),
    ({"hidden_states": {Q0: [[0.0] * HIDDEN] * 8193}}, "too_many_tokens", "at most 8192"),
    ({"hidden_states": {Q0: [[0.0] * HIDDEN]}, "base_model": "nobody/unknown"}, "unknown_base_model", "nobody/unknown"),
    ({"hidden_states": {Q0: [[0.0] * HIDDEN, [0.0] * 3]}}, "bad_dimension", "same length"),
    ({"hidden_states": {}}, "invalid_request", "empty"),
    ({"hidden_states": {Q0: [[0.0] * HIDDEN]}, "top_k": 0}, "invalid_request", "top_k"),
    ({"hidden_states": {Q0: [[0.0] * HIDDEN]}, "temperature": 0}, "invalid_request", "temperature"),
]


@pytest.mark.parametrize("body, code, words", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_route_input_is_a_clear_400(server: LiveServer, library: dict, body: dict, code: str, words: str) -> None:
    with server.client() as c:
        r = c.post(
            "/v1/route", content=json.dumps({"base_model": BASE, **body}), headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and words in r.json()["error"]["message"], r.json()


def test_private_only_base_model_is_unknown_to_others(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("bob")
    folder = write_adapter(tmp_path / "p")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "bob/secret-base"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with server.client(token) as c:
        assert (
            c.post("/v1/adapters/bob/p", files=upload_parts(folder), data={"visibility": "private"}).status_code == 201
        )
    body = {"hidden_states": {Q0: [[1.0] * HIDDEN]}, "base_model": "bob/secret-base"}
    with server.client() as anon, server.client(token) as owner:
        r = anon.post("/v1/route", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_base_model"
        assert owner.post("/v1/route", json=body).json()["results"][0]["id"] == "bob/p"


def test_prototypes_download(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a", seed=3)
    with server.client(token) as c:
        c.post("/v1/adapters/alice/pr", files=upload_parts(folder))
        r = c.get("/v1/adapters/alice/pr/versions/latest/prototypes")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    got = load_np(r.content)
    expected = dense_prototypes(folder)
    assert set(got) == set(expected)
    for module, v in got.items():
        assert v.dtype == np.float32 and abs(float(v.astype(np.float64) @ expected[module])) > 1 - 1e-6
