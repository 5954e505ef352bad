"""`quiver gateway` (the real command) between a client and an OpenAI-compatible engine, with a real hub.

No engine that serves LoRA adapters by name runs on a CPU here (vLLM's needs a GPU), so the engine is a
small OpenAI-compatible server this test starts, which answers every request and records what it was
sent: the test checks the routing decision and the forwarded request, streamed answers included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer, free_port

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
FRENCH = ["Translate to French: good morning", "Translate to French: where is the station?", "In French: thank you"]
SQL = ["Write a SQL query that counts the users", "SQL: select every order from 2024", "Query the table of sales"]


def fake_engine() -> tuple[FastAPI, list[dict]]:
    """An OpenAI-compatible engine that records each request and answers with the model it was asked for."""
    seen: list[dict] = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):  # noqa: ANN202
        body = await request.json()
        seen.append({"body": body, "authorization": request.headers.get("authorization")})
        if body.get("stream"):
            chunks = [f"data: {json.dumps({'choices': [{'delta': {'content': w}}]})}\n\n" for w in ("a", "b")]
            return StreamingResponse(iter([*chunks, "data: [DONE]\n\n"]), media_type="text/event-stream")
        return {"object": "chat.completion", "model": body["model"], "choices": [{"message": {"content": "ok"}}]}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": BASE, "object": "model"}]}

    return app, seen


def serve_in_thread(app: FastAPI) -> tuple[str, uvicorn.Server]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the fake engine did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


@pytest.fixture
def engine() -> Iterator[tuple[str, list[dict]]]:
    app, seen = fake_engine()
    url, server = serve_in_thread(app)
    yield url, seen
    server.should_exit = True


def gateway(server: LiveServer, engine_url: str, token: str) -> subprocess.Popen:
    port = free_port()
    env = {**os.environ, "QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token}
    args = ["gateway", "--engine", engine_url, "--base-model", BASE, "--engine-model", "base", "--port", str(port)]
    proc = subprocess.Popen([sys.executable, "-m", "quiver_hub", *args], env=env, stderr=subprocess.PIPE, text=True)
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            httpx.get(f"{proc.url}/v1/models", timeout=2)  # type: ignore[attr-defined]
            return proc
        except httpx.TransportError:
            assert time.monotonic() < deadline, "quiver gateway did not start"
            time.sleep(0.2)


def test_the_gateway_routes_each_chat_to_its_adapter(
    server: LiveServer, engine: tuple[str, list[dict]], tmp_path: Path
) -> None:
    engine_url, seen = engine
    alice, bob = server.token("alice"), server.token("bob")
    for i, (repo, lines, token, form) in enumerate(
        [
            ("alice/french", FRENCH, alice, {"description": "Translates English into French"}),
            ("alice/sql", SQL, alice, {"description": "Writes SQL queries"}),
            ("bob/private-french", FRENCH, bob, {"visibility": "private"}),
        ]
    ):
        examples = "\n".join(json.dumps({"input": t}) for t in lines).encode()
        folder = write_adapter(tmp_path / repo.replace("/", "-"), seed=i, extra_files={"examples.jsonl": examples})
        with server.client(token) as c:
            r = c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data=form)
            assert r.status_code == 201, r.text
    with server.client(alice) as c:
        revisions = {
            a: c.get(f"/v1/adapters/{a}/versions/latest").json()["revision"] for a in ("alice/french", "alice/sql")
        }
    proc = gateway(server, engine_url, alice)
    url = proc.url  # type: ignore[attr-defined]
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": "Bearer engine-key"}) as c:

            def ask(model: str, text: str, **extra: object) -> httpx.Response:
                return c.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [
                            {"role": "system", "content": "You are helpful."},
                            {"role": "user", "content": [{"type": "text", "text": text}]},
                        ],
                        **extra,
                    },
                )

            french = ask("quiver:auto", "Translate to French: I would like a coffee", temperature=0.2)
            assert (
                french.status_code == 200
                and french.headers["x-quiver-adapter"] == f"alice/french@{revisions['alice/french']}"
            )
            assert french.json()["model"] == f"alice/french@{revisions['alice/french']}"
            assert seen[-1]["body"]["temperature"] == 0.2 and seen[-1]["authorization"] == "Bearer engine-key"
            sql = ask("quiver:auto", "Write a SQL query for the ten largest orders")
            assert sql.headers["x-quiver-adapter"] == f"alice/sql@{revisions['alice/sql']}"
            named = ask("alice/sql@1", "anything")
            assert named.headers["x-quiver-adapter"] == "-" and seen[-1]["body"]["model"] == "alice/sql@1"
            nothing = ask("quiver:auto", "   ")
            assert nothing.headers["x-quiver-adapter"] == "base" and seen[-1]["body"]["model"] == "base"
            streamed = ask("quiver:auto", "Translate to French: the bill, please", stream=True)
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert streamed.text.count("data: ") == 3 and streamed.text.endswith("data: [DONE]\n\n")
            listed = c.get("/v1/models").json()["data"]
            assert [m["id"] for m in listed] == ["quiver:auto", BASE]
            assert c.post("/v1/chat/completions", content=b"{not json").status_code == 400
            assert c.post("/v1/chat/completions", json=[1, 2]).status_code == 400
        routed = [s["body"]["model"] for s in seen]
        assert not any(m.startswith("bob/") for m in routed)  # another user's private adapter: never chosen
    finally:
        proc.terminate()
        proc.wait(timeout=30)
