"""The interactive API docs render in a real browser with the network cut (their assets come from the
hub), and the OpenAPI spec documents the upload body and the bearer-token scheme."""

from __future__ import annotations

import pytest

from tests.support.browser import browser, offline_page
from tests.support.servers import LiveServer


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_docs_render_offline(server: LiveServer) -> None:
    blocked: list[str] = []
    with browser() as b:
        page = offline_page(b, server.url, blocked)
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        operations = page.locator(".opblock").count()
        title = page.locator(".title").first.inner_text()
        page.locator("button.authorize").first.wait_for(timeout=10_000)  # the bearer scheme is offered
    assert blocked == []  # nothing was fetched from anywhere but the hub
    assert operations > 20 and "Quiver" in title


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openapi_documents_uploads_and_tokens(server: LiveServer) -> None:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["token"]["description"],
    }
    publish = spec["paths"]["/v1/adapters/{namespace}/{name}"]["post"]
    schema = publish["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["files"]["items"]["format"] == "binary"
    assert {"description", "task", "tags", "license", "visibility"} <= set(schema["properties"])
    assert {"token": []} in publish["security"]
