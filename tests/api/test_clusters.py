"""MBC cluster runs and cluster adapters, over real HTTP with adapters published to a live hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import peft
import pytest
import torch
from alembic import command
from sklearn.metrics import adjusted_rand_score
from sqlalchemy import select
from sqlalchemy.orm import Session

from examples.make_adapter import BASE_MODEL, tiny_llama
from quiver_hub.migrations import alembic_config, upgrade
from quiver_hub.registry.clusters import mbc, runs
from quiver_hub.registry.db import make_engine
from quiver_hub.registry.lora import peft_format
from quiver_hub.registry.models import Embedding
from tests.support.adapters import BASE, lora_config, upload_parts, write_factors
from tests.support.servers import LiveServer

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
HIDDEN, R = 16, 4


def planted(k: int = 3, per: int = 8, noise: float = 0.25, seed: int = 0) -> list[tuple[int, dict]]:
    """Adapters around k hidden (A, B) centres plus noise: (true cluster, factors per module)."""
    g = torch.Generator().manual_seed(seed)
    centres = [
        {m: (torch.randn(R, HIDDEN, generator=g), torch.randn(HIDDEN, R, generator=g)) for m in MODULES}
        for _ in range(k)
    ]
    out = []
    for i in range(k * per):
        c = i % k
        out.append(
            (
                c,
                {
                    m: (
                        a + noise * torch.randn(R, HIDDEN, generator=g),
                        b + noise * torch.randn(HIDDEN, R, generator=g),
                    )
                    for m, (a, b) in centres[c].items()
                },
            )
        )
    return out


def publish_library(
    server: LiveServer, token: str, tmp_path: Path, library: list, owner: str = "alice", visibility: str = "public"
) -> list[str]:
    names = []
    with server.client(token) as c:
        for i, (truth, factors) in enumerate(library):
            folder = write_factors(tmp_path / f"{owner}-{i}", factors, lora_config(r=R))
            name = f"{owner}/lib{i}"
            r = c.post(
                f"/v1/adapters/{name}",
                files=upload_parts(folder),
                data={"task": f"task-{truth}", "visibility": visibility},
            )
            assert r.status_code == 201, r.text
            names.append(name)
    return names


def run(server: LiveServer, token: str | None, **body) -> dict:
    with server.client(token) as c:
        r = c.post("/v1/clusters", json={"base_model": BASE, **body})
        assert r.status_code in (201, 202), r.text
        result = r.json()
        while result["status"] == "running":
            time.sleep(0.2)
            result = c.get(f"/v1/clusters/{result['id']}").json()
        assert result["status"] == "done", result
        return result


def labels(result: dict, names: list[str]) -> list[int]:
    where = {m["id"]: c["index"] for c in result["clusters"] for m in c["members"]}
    return [where[n] for n in names]


@pytest.mark.parametrize("method", ["outputs-middle", "outputs", "sketch", "params"])
def test_mbc_recovers_planted_groups(server: LiveServer, tmp_path: Path, method: str) -> None:
    token = server.token("alice")
    library = planted()
    names = publish_library(server, token, tmp_path, library)
    truth = [t for t, _ in library]
    result = run(server, token, method=method, k=3)
    assert result["k"] == 3 and result["method"] == method
    assert adjusted_rand_score(truth, labels(result, names)) >= 0.9
    for cluster in result["clusters"]:
        for m in cluster["members"]:
            assert set(m) == {"id", "version", "revision", "task", "distance", "xy"} and m["distance"] >= 0
            assert len(m["xy"]) == 2
        assert [m["distance"] for m in cluster["members"]] == sorted(m["distance"] for m in cluster["members"])
    chosen = run(server, token, method=method)  # k by silhouette
    assert chosen["k"] == 3 and chosen["silhouette"] > 0.3
    assert adjusted_rand_score(truth, labels(chosen, names)) >= 0.9


@pytest.mark.parametrize("method", ["outputs-middle", "outputs", "sketch"])
def test_sketch_partition_ignores_refactorising(server: LiveServer, tmp_path: Path, method: str) -> None:
    token = server.token("alice")
    library = planted(noise=0.6, seed=1)
    names = publish_library(server, token, tmp_path, library)
    before = run(server, token, method=method, k=3)
    g = torch.Generator().manual_seed(7)
    refactored = []
    for truth, factors in library:
        new = {}
        for m, (a, b) in factors.items():
            M = torch.randn(R, R, generator=g, dtype=torch.float64) + 3 * torch.eye(R, dtype=torch.float64)
            new[m] = (torch.linalg.solve(M, a.double()), b.double() @ M)
        refactored.append((truth, new))
    publish_library(server, token, tmp_path / "again", refactored)  # version 2 of every adapter
    after = run(server, token, method=method, k=3)
    assert all(m["version"] == 2 for c in after["clusters"] for m in c["members"])
    assert adjusted_rand_score(labels(before, names), labels(after, names)) == 1.0


def test_middle_layers() -> None:
    layers = [f"model.layers.{i}.self_attn.q_proj" for i in range(30)]
    assert mbc.middle_layers([*layers, "lm_head"]) == {*layers[7:23], "lm_head"}
    assert mbc.middle_layers(layers[:2]) == set(layers[:2])  # one or two layers: all of them
    assert mbc.middle_layers(["lm_head", "embed"]) == {"lm_head", "embed"}


def test_outputs_middle_groups_by_the_middle_layers(server: LiveServer, tmp_path: Path) -> None:
    """Families planted in layers 1 and 2 of 4, another grouping in layers 0 and 3: "outputs-middle"
    finds the families, whatever the outer layers say."""
    token = server.token("alice")
    g = torch.Generator().manual_seed(3)
    modules = [f"model.layers.{i}.self_attn.q_proj" for i in range(4)]

    def centres(k: int) -> list[dict]:
        return [
            {m: (torch.randn(R, HIDDEN, generator=g), torch.randn(HIDDEN, R, generator=g)) for m in modules}
            for _ in range(k)
        ]

    families, outer = centres(3), centres(2)
    library = []
    for i in range(18):
        family, other = i % 3, (i // 3) % 2
        factors = {}
        for layer, m in enumerate(modules):
            a, b = (families[family] if layer in (1, 2) else outer[other])[m]
            factors[m] = (
                a + 0.25 * torch.randn(R, HIDDEN, generator=g),
                b + 0.25 * torch.randn(HIDDEN, R, generator=g),
            )
        library.append((family, factors))
    with server.client(token) as c:
        for i, (_, factors) in enumerate(library):
            folder = write_factors(tmp_path / f"m{i}", factors, lora_config(r=R, targets=["q_proj"]))
            assert c.post(f"/v1/adapters/alice/m{i}", files=upload_parts(folder)).status_code == 201
    names = [f"alice/m{i}" for i in range(len(library))]
    result = run(server, token, k=3)
    assert result["method"] == "outputs-middle"
    assert adjusted_rand_score([f for f, _ in library], labels(result, names)) >= 0.9


def test_runs_see_only_what_the_caller_may_see(server: LiveServer, tmp_path: Path) -> None:
    alice, bob = server.token("alice"), server.token("bob")
    mine = publish_library(server, alice, tmp_path, planted(per=3))
    theirs = publish_library(server, bob, tmp_path, planted(per=2, seed=5), owner="bob", visibility="private")
    for who, token, expected in [
        ("alice", alice, set(mine)),
        ("bob", bob, set(mine) | set(theirs)),
    ]:
        result = run(server, token, k=2)
        members = {m["id"] for c in result["clusters"] for m in c["members"]}
        assert members == expected, who
        assert result["params"]["adapters"] == len(expected)
    reader = server.token("carol", scope="read")
    with server.client() as anon, server.client(reader) as read_only:
        assert anon.post("/v1/clusters", json={"base_model": BASE, "k": 2}).status_code == 401
        refused = read_only.post("/v1/clusters", json={"base_model": BASE, "k": 2})
        assert refused.status_code == 403 and "write token" in refused.json()["error"]["message"]
    bobs_run = run(server, bob, k=2)
    with server.client(alice) as c, server.client() as anon:
        assert c.get(f"/v1/clusters/{bobs_run['id']}").status_code == 404
        assert bobs_run["id"] not in [r["id"] for r in c.get("/v1/clusters").json()]
        assert anon.get(f"/v1/clusters/{bobs_run['id']}").status_code == 404


def test_large_runs_go_to_the_background(server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = server.token("alice")
    publish_library(server, token, tmp_path, planted(per=2))
    monkeypatch.setattr(runs, "BACKGROUND_OVER", 3)  # 6 adapters: "large" for this test
    with server.client(token) as c:
        r = c.post("/v1/clusters", json={"base_model": BASE, "k": 3})
        assert r.status_code == 202 and r.json()["status"] == "running"
        run_id = r.json()["id"]
        for _ in range(200):
            state = c.get(f"/v1/clusters/{run_id}").json()
            if state["status"] != "running":
                break
            time.sleep(0.1)
        assert state["status"] == "done" and state["progress"] == 1.0 and state["k"] == 3


def test_bad_cluster_requests(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    publish_library(server, token, tmp_path, planted(k=1, per=3))
    with server.client(token) as c:
        for body, status, words in [
            ({"method": "spectral"}, 422, "method"),
            ({"k": 9}, 400, "k=9 is more than the 3 adapters"),
            ({"base_model": "nobody/base"}, 400, "at least 2 adapters"),
            ({"k": 0}, 422, "k"),
        ]:
            r = c.post("/v1/clusters", json={"base_model": BASE, **body})
            assert r.status_code == status and words in r.json()["error"]["message"], r.text
        assert c.get("/v1/clusters/999").status_code == 404


def peft_folder(tmp_path: Path, seed: int, r: int, alpha: float, **extra) -> Path:
    model = tiny_llama()
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **extra
    )
    folder = tmp_path / f"peft-{seed}"
    peft.get_peft_model(model, config).save_pretrained(folder)
    return folder


def deltas(folder: Path) -> dict[str, torch.Tensor]:
    config = json.loads((folder / "adapter_config.json").read_text())
    factors = peft_format.read(folder / "adapter_model.safetensors", config).factors
    return {m: f.scaling * f.B.double() @ f.A.double() for m, f in factors.items()}


def test_cluster_adapters_are_exact_averages_and_load_in_peft(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folders = [
        peft_folder(tmp_path, 1, 4, 8),
        peft_folder(tmp_path, 2, 2, 4, use_rslora=True),
        peft_folder(tmp_path, 3, 4, 16),
    ]
    with server.client(token) as c:
        for i, folder in enumerate(folders):
            assert c.post(f"/v1/adapters/alice/member{i}", files=upload_parts(folder)).status_code == 201
        result = c.post("/v1/clusters", json={"base_model": BASE_MODEL, "k": 1}).json()
        exact = c.post(f"/v1/clusters/{result['id']}/merge", json={})
        compressed = c.post(f"/v1/clusters/{result['id']}/merge", json={"rank": 3})
        assert exact.status_code == compressed.status_code == 201, exact.text + compressed.text
        exact_v, compressed_v = exact.json()[0], compressed.json()[0]
        assert exact_v["id"] == compressed_v["id"] == f"alice/cluster-{result['id']}-0"
        assert (exact_v["version"], compressed_v["version"]) == (1, 2)
        assert exact_v["rank"] == 4 + 2 + 4 and compressed_v["rank"] == 3
        lineage = compressed_v["derived_from"]
        assert lineage["run"] == result["id"] and lineage["method"] == "svd" and lineage["rank"] == 3
        assert sorted(v["id"] for v in lineage["versions"]) == ["alice/member0", "alice/member1", "alice/member2"]
        downloaded = {}
        for v in (exact_v, compressed_v):
            folder = tmp_path / f"merged-{v['version']}"
            folder.mkdir()
            for f in v["files"]:
                url = f"/v1/adapters/{v['id']}/versions/{v['version']}/files/{f['path']}"
                (folder / f["path"]).write_bytes(c.get(url).content)
            downloaded[v["version"]] = folder

    members = [deltas(f) for f in folders]
    average = {m: sum(d[m] for d in members) / len(members) for m in members[0]}
    got_exact, got_compressed = deltas(downloaded[1]), deltas(downloaded[2])
    for m, avg in average.items():
        torch.testing.assert_close(got_exact[m], avg, rtol=0, atol=1e-6)
        u, s, vh = torch.linalg.svd(avg)
        best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
        torch.testing.assert_close(got_compressed[m], best, rtol=0, atol=1e-6)

    # Both load in PEFT and give the outputs of the base model with the dense delta added.
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    for version, target in ((1, average), (2, {m: deltas(downloaded[2])[m] for m in average})):
        loaded = peft.PeftModel.from_pretrained(tiny_llama(), downloaded[version]).eval()
        dense = tiny_llama()
        with torch.no_grad():
            for m, d in target.items():
                dense.get_submodule(m).weight += d.float()
            torch.testing.assert_close(loaded(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-5)


def test_quiver_cluster_command(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    names = publish_library(server, token, tmp_path, planted(per=3))
    env = {**os.environ, "QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token, "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "quiver_hub", "cluster", "--base-model", BASE, "--k", "3", "--merge", "--rank", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "outputs-middle, k=3, silhouette" in out.stdout
    assert all(name in out.stdout for name in names)
    assert out.stdout.count("(rank 2)") == 3 and "published alice/cluster-" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "quiver_hub", "cluster", "--base-model", "nobody/base"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "error 400" in bad.stderr and "at least 2 adapters" in bad.stderr


def test_landmark_rows_agree_with_the_exact_recipe() -> None:
    """Past EXACT_MAX adapters k-means runs on similarities to landmark adapters (n x m) instead of
    the n x n matrix; on a library with real groups both find the same partition."""
    import numpy as np

    from quiver_hub.registry.clusters.mbc import cluster, normalise_rows

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 48))
    truth = np.arange(3000) % 6
    X = normalise_rows(centres[truth] + 1.2 * rng.standard_normal((3000, 48)))
    exact = cluster(X, k=6)
    approximate = cluster(X, k=6, exact_max=500)  # 1,000 landmarks of 3,000
    assert exact.labels.shape == approximate.labels.shape == (3000,)
    assert adjusted_rand_score(truth, exact.labels) > 0.9  # there is something to find
    assert adjusted_rand_score(exact.labels, approximate.labels) >= 0.95
    chosen = cluster(X, exact_max=500)  # k chosen by silhouette on the landmark rows too
    assert chosen.k == 6


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "extra, named", [({"use_dora": True}, "DoRA magnitudes"), ({"modules_to_save": ["lm_head"]}, "saved parameters")]
)
def test_a_cluster_holding_more_than_factors_is_not_averaged(
    server: LiveServer, tmp_path: Path, extra: dict, named: str
) -> None:
    """A DoRA adapter, or one that saves a module whole, is stored, routed and clustered like any other (on
    its factors); but an average of factors is not what its members mean: the merge says so by name."""
    token = server.token("alice")
    folders = [peft_folder(tmp_path, 1, 4, 8), peft_folder(tmp_path, 2, 4, 8, **extra)]
    with server.client(token) as c:
        for i, folder in enumerate(folders):
            assert c.post(f"/v1/adapters/alice/member{i}", files=upload_parts(folder)).status_code == 201
        run = c.post("/v1/clusters", json={"base_model": BASE_MODEL, "k": 1}).json()
        assert run["status"] == "done", run
        merged = c.post(f"/v1/clusters/{run['id']}/merge", json={})
        assert merged.status_code == 400 and f"alice/member1 has {named}" in merged.text, merged.text
        assert c.get("/v1/adapters", params={"tag": "mbc-cluster"}).json()["adapters"] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_over_public_adapters_is_readable_by_anyone(server: LiveServer, tmp_path: Path) -> None:
    """Cluster adapters' lineage links to their run: a run whose members are all public reads for everyone;
    once one is private, only its owner reads it again."""
    alice = server.token("alice")
    ids = publish_library(server, alice, tmp_path, planted(per=2))
    made = run(server, alice, k=2)
    with server.client() as anon, server.client(server.token("bob")) as bob:
        for c in (anon, bob):
            assert c.get(f"/v1/clusters/{made['id']}").status_code == 200
        assert anon.get(f"/clusters/{made['id']}").status_code == 200
        with server.client(alice) as owner:
            assert owner.patch(f"/v1/adapters/{ids[0]}", json={"visibility": "private"}).status_code == 200
        assert anon.get(f"/v1/clusters/{made['id']}").status_code == 404
        assert anon.get(f"/clusters/{made['id']}").status_code == 404
    with server.client(alice) as owner:
        assert owner.get(f"/v1/clusters/{made['id']}").status_code == 200


def test_aligned_sketches_compare_over_the_modules_both_adapt() -> None:
    """An adapter of q_proj alone whose q_proj block equals another's is as similar to it as can be (1),
    not diluted by the v_proj it lacks; with no module in common, 0; and where every adapter adapts every
    module, the cosine of the whole rows."""
    import numpy as np

    from quiver_hub.registry.clusters.mbc import similarity_rows, sketch_matrix

    rng = np.random.default_rng(0)
    q, v, w = (rng.standard_normal(4) for _ in range(3))
    sketches = [(["l.0.q", "l.0.v"], np.concatenate([q, v])), (["l.0.q"], 3 * q), (["l.0.v"], w), (["l.1.o"], q)]
    S = similarity_rows(sketch_matrix(sketches, block=4), seed=0)
    assert np.isclose(S[0, 1], 1.0) and np.isclose(S[1, 0], 1.0)
    assert np.isclose(S[0, 2], v @ w / np.linalg.norm(v) / np.linalg.norm(w), atol=1e-6)
    assert S[1, 2] == 0 and S[0, 3] == 0 and np.isclose(S[3, 3], 1.0)
    same = [(["a.0.q", "a.0.v"], rng.standard_normal(8)) for _ in range(5)]
    rows = np.stack([x for _, x in same])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert np.allclose(similarity_rows(sketch_matrix(same, block=4), seed=0), rows @ rows.T, atol=1e-6)
    landmarks = similarity_rows(sketch_matrix(sketches, block=4), seed=0, exact_max=2)  # 4 landmarks of 4
    assert np.allclose(landmarks, S, atol=1e-6)


def test_sketches_the_migration_deleted_are_computed_stored_and_cluster_as_before(
    server: LiveServer, tmp_path: Path
) -> None:
    """Migration 0009 deletes the sketches of the first draw, which do not compare with the new ones. A
    run then computes each version's sketch from its weights, stores it (the bytes its publish stored),
    and partitions as before; the examples' embeddings are kept."""
    token = server.token("alice")
    library = planted(seed=2)
    names = publish_library(server, token, tmp_path, library)
    engine = make_engine(server.settings.db_url)

    def stored() -> dict[tuple[int, str], bytes]:
        with Session(engine) as session:
            return {(e.version_id, e.kind): e.vector for e in session.scalars(select(Embedding))}

    try:
        published = stored()
        assert {kind for _, kind in published} == {"sketch", "outputs"}
        before = {method: labels(run(server, token, method=method, k=3), names) for method in ("sketch", "outputs")}
        with Session(engine) as session:  # an examples embedding, which the migration keeps
            session.add(Embedding(version_id=1, kind="examples", dim=1, vector=b"\0\0\0\0"))
            session.commit()
        command.downgrade(alembic_config(engine), "0008")
        upgrade(engine)
        assert set(stored()) == {(1, "examples")}
        for method in ("sketch", "outputs"):
            assert labels(run(server, token, method=method, k=3), names) == before[method]
        assert stored() == {**published, (1, "examples"): b"\0\0\0\0"}
    finally:
        engine.dispose()
