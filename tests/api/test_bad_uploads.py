"""Every rejected upload is a 4xx with a message a person can act on, and stores nothing."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from quiver_hub.registry.models import Base
from tests.support.adapters import lora_config, raw_safetensors
from tests.support.servers import LiveServer

Q = "model.layers.0.self_attn.q_proj"
KA, KB = f"base_model.model.{Q}.lora_A.weight", f"base_model.model.{Q}.lora_B.weight"
CONFIG = json.dumps(lora_config(r=4)).encode()


def tensor_header(a_shape=(4, 8), b_shape=(8, 4), dtype="F32", a_off=None, b_off=None) -> tuple[dict, bytes]:
    item = 4
    a_len, b_len = a_shape[0] * a_shape[1] * item, b_shape[0] * b_shape[1] * item
    header = {
        KA: {"dtype": dtype, "shape": list(a_shape), "data_offsets": a_off or [0, a_len]},
        KB: {"dtype": dtype, "shape": list(b_shape), "data_offsets": b_off or [a_len, a_len + b_len]},
    }
    return header, bytes(a_len + b_len)


def weights(**kw) -> bytes:
    header, data = tensor_header(**kw)
    return raw_safetensors(header, data)


def valid_weights() -> bytes:
    return weights()


def only_a() -> bytes:
    header, data = tensor_header()
    del header[KB]
    return raw_safetensors(header, data[:128])


def raw_header(text: str, data: bytes) -> bytes:
    """Safetensors bytes from a header written by hand (duplicate keys, literals json.dumps never makes)."""
    blob = text.encode()
    return struct.pack("<Q", len(blob)) + blob + data


def config_text(**replace: str) -> bytes:
    """adapter_config.json with some values spelled by hand (NaN, huge integers...)."""
    text = json.dumps(lora_config(r=4))
    for key, literal in replace.items():
        text = text.replace(f'"{key}": {json.dumps(lora_config(r=4)[key])}', f'"{key}": {literal}')
    return text.encode()


def zip_in_weights() -> bytes:
    """Weights whose data bytes end with a zip archive holding a pickle: what torch.load would load."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": 1}))
    tail = archive.getvalue()
    header, data = tensor_header(a_shape=(4, 64), b_shape=(64, 4))
    return raw_safetensors(header, data[: len(data) - len(tail)] + tail)


NESTED = "[" * 2000 + "]" * 2000
CASES = {
    # name: (files, form, status, code, words in the message)
    "truncated file": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights()[:-100]},
        {},
        422,
        "invalid_adapter",
        "truncated",
    ),
    "file shorter than its length prefix": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": b"\x01\x02\x03"},
        {},
        422,
        "invalid_adapter",
        "truncated",
    ),
    "header length past the end": (
        {
            "adapter_config.json": CONFIG,
            "adapter_model.safetensors": raw_safetensors(*tensor_header(), header_len=10_000),
        },
        {},
        422,
        "invalid_adapter",
        "runs past the end",
    ),
    "header length over the limit": (
        {
            "adapter_config.json": CONFIG,
            "adapter_model.safetensors": raw_safetensors(*tensor_header(), header_len=2**40),
        },
        {},
        422,
        "invalid_adapter",
        "limit",
    ),
    "overlapping offsets": (
        {
            "adapter_config.json": CONFIG,
            "adapter_model.safetensors": raw_safetensors(tensor_header(a_off=[0, 128], b_off=[64, 192])[0], bytes(256)),
        },
        {},
        422,
        "invalid_adapter",
        "overlaps",
    ),
    "unknown dtype": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": weights(dtype="I32")},
        {},
        422,
        "invalid_adapter",
        "dtype 'I32'",
    ),
    "header not JSON": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": b"\x05\0\0\0\0\0\0\0{oops"},
        {},
        422,
        "invalid_adapter",
        "not valid JSON",
    ),
    "lora_B missing": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": only_a()},
        {},
        422,
        "invalid_adapter",
        f"lora_B missing for {Q}",
    ),
    "shape not matching r": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": weights(a_shape=(3, 8), b_shape=(8, 3))},
        {},
        422,
        "invalid_adapter",
        "config says rank 4",
    ),
    "shape not matching rank_pattern": (
        {
            "adapter_config.json": json.dumps(lora_config(r=4, rank_pattern={"q_proj": 2})).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "config says rank 2",
    ),
    "module outside target_modules": (
        {
            "adapter_config.json": json.dumps(lora_config(targets=["k_proj"])).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "not selected by target_modules",
    ),
    "pickle file": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights(), "adapter_model.bin": b"\x80"},
        {},
        422,
        "invalid_adapter",
        "pickle",
    ),
    "pickle instead of safetensors": (
        {"adapter_config.json": CONFIG, "training_args.pt": b"\x80\x04", "optimizer.bin": b"\x80\x02"},
        {},
        422,
        "invalid_adapter",
        "pickle",
    ),
    "config is not LoRA": (
        {
            "adapter_config.json": json.dumps({**lora_config(), "peft_type": "PREFIX_TUNING"}).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "only LoRA",
    ),
    "config is invalid JSON": (
        {"adapter_config.json": b'{"peft_type": "LORA",', "adapter_model.safetensors": valid_weights()},
        {},
        422,
        "invalid_adapter",
        "adapter_config.json: not valid JSON",
    ),
    "config without base model": (
        {
            "adapter_config.json": json.dumps({**lora_config(), "base_model_name_or_path": None}).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "base_model_name_or_path",
    ),
    "weights missing": (
        {"adapter_config.json": CONFIG},
        {},
        422,
        "invalid_adapter",
        "adapter_model.safetensors is missing",
    ),
    "unexpected file": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights(), "run.sh": b"rm -rf /"},
        {},
        422,
        "invalid_adapter",
        "does not store: run.sh",
    ),
    "path traversal": (
        {"adapter_config.json": CONFIG, "../adapter_model.safetensors": valid_weights()},
        {},
        400,
        "invalid_name",
        "not a valid relative path",
    ),
    "bad examples line": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights(), "examples.jsonl": b"{x\n"},
        {},
        422,
        "invalid_adapter",
        "examples.jsonl: line 1",
    ),
    "bad visibility": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights()},
        {"visibility": "hidden"},
        400,
        "invalid_request",
        "visibility",
    ),
    "duplicate keys in the header": (
        {
            "adapter_config.json": CONFIG,
            "adapter_model.safetensors": raw_header(
                json.dumps(tensor_header()[0])[:-1] + f', "{KA}": ' + json.dumps(tensor_header()[0][KA]) + "}",
                tensor_header()[1],
            ),
        },
        {},
        422,
        "invalid_adapter",
        "appears twice",
    ),
    "header nested deeply": (
        {
            "adapter_config.json": CONFIG,
            "adapter_model.safetensors": raw_header('{"__metadata__": ' + NESTED + "}", b""),
        },
        {},
        422,
        "invalid_adapter",
        "nested more than",
    ),
    "boolean-shaped tensor": (
        {
            "adapter_config.json": CONFIG,
            "adapter_model.safetensors": raw_header(
                json.dumps(tensor_header()[0]).replace("[4, 8]", "[true, 8]", 1), tensor_header()[1]
            ),
        },
        {},
        422,
        "invalid_adapter",
        "invalid shape",
    ),
    "zero-size factors": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": weights(a_shape=(4, 0), b_shape=(8, 4))},
        {},
        422,
        "invalid_adapter",
        "no side may be 0",
    ),
    "weights that are also a zip archive": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": zip_in_weights()},
        {},
        422,
        "invalid_adapter",
        "zip archive",
    ),
    "pickle bytes under a text name": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights(), "notes.txt": b"\x80\x04K."},
        {},
        422,
        "invalid_adapter",
        "pickle files, which run code when loaded: notes.txt",
    ),
    "config nested deeply": (
        {"adapter_config.json": config_text(bias=NESTED), "adapter_model.safetensors": valid_weights()},
        {},
        422,
        "invalid_adapter",
        "nested more than",
    ),
    "lora_alpha NaN": (
        {"adapter_config.json": config_text(lora_alpha="NaN"), "adapter_model.safetensors": valid_weights()},
        {},
        422,
        "invalid_adapter",
        "NaN is not a JSON number",
    ),
    "lora_alpha Infinity": (
        {"adapter_config.json": config_text(lora_alpha="Infinity"), "adapter_model.safetensors": valid_weights()},
        {},
        422,
        "invalid_adapter",
        "Infinity is not a JSON number",
    ),
    "lora_alpha too large for a float": (
        {"adapter_config.json": config_text(lora_alpha="1" + "0" * 400), "adapter_model.safetensors": valid_weights()},
        {},
        422,
        "invalid_adapter",
        "lora_alpha must be a finite number",
    ),
    "target_modules not a regex": (
        {
            "adapter_config.json": json.dumps(lora_config(r=4, targets="q_proj(")).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "not a valid regular expression",
    ),
    "rank_pattern not a regex": (
        {
            "adapter_config.json": json.dumps(lora_config(r=4, rank_pattern={"[q": 2})).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "not a valid regular expression",
    ),
    "base model longer than the column": (
        {
            "adapter_config.json": json.dumps({**lora_config(r=4), "base_model_name_or_path": "m" * 300}).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "1 to 255 characters",
    ),
    "base model is a local path": (
        {
            "adapter_config.json": json.dumps(
                {**lora_config(r=4), "base_model_name_or_path": "/home/me/llama"}
            ).encode(),
            "adapter_model.safetensors": valid_weights(),
        },
        {},
        422,
        "invalid_adapter",
        "path on the machine that trained it",
    ),
    "module name longer than the column": (
        {
            "adapter_config.json": json.dumps(lora_config(r=4, targets="all-linear")).encode(),
            "adapter_model.safetensors": raw_safetensors(
                {
                    f"base_model.model.{'m' * 300}.lora_A.weight": {
                        "dtype": "F32",
                        "shape": [4, 8],
                        "data_offsets": [0, 128],
                    },
                    f"base_model.model.{'m' * 300}.lora_B.weight": {
                        "dtype": "F32",
                        "shape": [8, 4],
                        "data_offsets": [128, 256],
                    },
                },
                bytes(256),
            ),
        },
        {},
        422,
        "invalid_adapter",
        "is longer than 255",
    ),
    "examples line nested deeply": (
        {
            "adapter_config.json": CONFIG,
            "adapter_model.safetensors": valid_weights(),
            "examples.jsonl": NESTED.encode() + b"\n",
        },
        {},
        422,
        "invalid_adapter",
        "nested more than",
    ),
    "description too long": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights()},
        {"description": "d" * 10_001},
        400,
        "invalid_request",
        "at most 10000",
    ),
    "unknown form field": (
        {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights()},
        {"owner": "bob"},
        400,
        "invalid_request",
        "unknown form fields: owner",
    ),
}


def snapshot(server: LiveServer) -> tuple[dict[str, int], list[str]]:
    """Row counts of every table, and every file under the blob store (objects and tmp)."""
    with server.state.sessions() as s:
        counts = {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    root = server.state.store.root
    return counts, sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def seeded(server: LiveServer, tmp_path: Path) -> tuple[LiveServer, str]:
    """A hub that already holds one good version, so 'unchanged' is checked against real content."""
    token = server.token("alice")
    with server.client(token) as c:
        files = [
            ("files", (n, b))
            for n, b in {"adapter_config.json": CONFIG, "adapter_model.safetensors": valid_weights()}.items()
        ]
        assert c.post("/v1/adapters/alice/good", files=files).status_code == 201
    return server, token


@pytest.mark.parametrize("case", list(CASES))
def test_bad_upload_is_refused_and_stores_nothing(seeded: tuple[LiveServer, str], case: str) -> None:
    server, token = seeded
    files, form, status, code, words = CASES[case]
    before = snapshot(server)
    with server.client(token) as c:
        r = c.post("/v1/adapters/alice/good", files=[("files", (n, b)) for n, b in files.items()], data=form)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and words in error["message"], error
        assert c.get("/v1/adapters/alice/good").json()["latest"]["version"] == 1
    assert snapshot(server) == before


@pytest.mark.parametrize(
    "repo", ["alice/bad--name", "alice/x.git", "alice/-lead", "alice/" + "n" * 97, "alice/sp%20ace", "ali..ce/x"]
)
def test_bad_names_are_refused(seeded: tuple[LiveServer, str], repo: str) -> None:
    server, token = seeded
    before = snapshot(server)
    files = [("files", ("adapter_config.json", CONFIG)), ("files", ("adapter_model.safetensors", valid_weights()))]
    with server.client(token) as c:
        r = c.post(f"/v1/adapters/{repo}", files=files)
    assert r.status_code in (400, 403), r.text
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "invalid_name" and "not valid" in r.json()["error"]["message"]
    else:  # a namespace that cannot exist is nobody's to write to
        assert r.json()["error"]["code"] == "forbidden"
    assert snapshot(server) == before


def test_oversize_body_is_refused(seeded: tuple[LiveServer, str]) -> None:
    server, token = seeded
    before = snapshot(server)
    big = bytes(server.settings.max_upload_bytes + 1)
    with server.client(token) as c:
        r = c.post(
            "/v1/adapters/alice/good",
            files=[("files", ("adapter_model.safetensors", big)), ("files", ("adapter_config.json", CONFIG))],
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        assert "QUIVER_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit must hold while streaming too
            yield b'--x\r\nContent-Disposition: form-data; name="files"; filename="adapter_model.safetensors"\r\n\r\n'
            for _ in range(server.settings.max_upload_bytes // 65536 + 2):
                yield bytes(65536)

        r = c.post(
            "/v1/adapters/alice/good", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert snapshot(server) == before


def test_writes_without_permission_store_nothing(seeded: tuple[LiveServer, str]) -> None:
    server, _ = seeded
    files = [("files", ("adapter_config.json", CONFIG)), ("files", ("adapter_model.safetensors", valid_weights()))]
    reader = server.token("alice", scope="read")
    bob = server.token("bob")
    before = snapshot(server)
    with server.client() as anon, server.client(reader) as ro, server.client(bob) as other:
        assert anon.post("/v1/adapters/alice/good", files=files).status_code == 401
        r = ro.post("/v1/adapters/alice/good", files=files)
        assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]
        assert other.post("/v1/adapters/alice/good", files=files).status_code == 403
        assert other.post("/v1/adapters/nobody/new", files=files).status_code == 403
    assert snapshot(server) == before
