"""The pages, in a real headless Chromium against a real hub: find an adapter by meaning and open it, read
its card, versions and files (a download gives the exact bytes), run the snippet it shows, see nothing run
from a card that tries, never see another user's private adapter (until signed in as its owner), and a
cluster run drawn as one point per member. Screenshots of the home, adapter and cluster pages go to
docs/screenshots when QUIVER_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.adapters import upload_parts, write_adapter
from tests.support.browser import browser, offline_page
from tests.support.servers import LiveServer

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ROOT = Path(__file__).resolve().parents[2]
FR_CARD = b"""---
license: mit
tags: [translation]
---
# French translator

Translates English sentences into **French**.

| metric | value |
|---|---|
| BLEU | 31.2 |
"""
EVIL_CARD = b"""# Harmless

<script>window.__pwned = "script"</script>
<img src="x" onerror="window.__pwned = 'onerror'">
<a href="javascript:window.__pwned='link'" id="evil-link">click me</a>
<div onmouseover="window.__pwned='hover'">hover me</div>
<iframe src="javascript:window.__pwned='iframe'"></iframe>
[markdown link](javascript:window.__pwned='md')
"""


@pytest.fixture
def site(server: LiveServer, tmp_path: Path) -> dict:
    alice, bob = server.token("alice"), server.token("bob")
    with server.client(alice) as c:
        for i, (name, card, description) in enumerate(
            [
                ("fr", FR_CARD, "Translates English into French"),
                ("summaries", b"# Summaries\n\nCondenses long articles.\n", "Summarises long news articles"),
                ("sql", b"# SQL\n\nWrites SQL queries.\n", "Turns questions into SQL queries"),
            ]
        ):
            folder = write_adapter(tmp_path / name, seed=i, extra_files={"README.md": card})
            r = c.post(f"/v1/adapters/alice/{name}", files=upload_parts(folder), data={"description": description})
            assert r.status_code == 201, r.text
        run = c.post("/v1/clusters", json={"base_model": "quiver-test/tiny-llama", "k": 2}).json()
    with server.client(bob) as c:
        secret = write_adapter(tmp_path / "secret", seed=7, extra_files={"README.md": b"# Secret French work\n"})
        assert (
            c.post(
                "/v1/adapters/bob/secret",
                files=upload_parts(secret),
                data={"visibility": "private", "description": "Secret French translation"},
            ).status_code
            == 201
        )
        evil = write_adapter(tmp_path / "evil", seed=8, extra_files={"README.md": EVIL_CARD})
        assert c.post("/v1/adapters/bob/evil", files=upload_parts(evil)).status_code == 201
    return {"alice": alice, "bob": bob, "run": run, "fr": tmp_path / "fr"}


def screenshot(page, name: str, tmp_path: Path) -> None:  # noqa: ANN001
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if os.environ.get("QUIVER_UPDATE_SCREENSHOTS") == "1":
        (ROOT / "docs" / "screenshots").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / "screenshots" / f"{name}.png"), full_page=True)


def test_find_read_download_and_load(server: LiveServer, site: dict, tmp_path: Path) -> None:
    blocked: list[str] = []
    with browser() as b:
        page = offline_page(b, server.url, blocked)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(server.url + "/")
        assert "alice/fr" in page.inner_text("ul.adapters")  # recently updated
        assert "quiver-test/tiny-llama" in page.inner_text("ul.counts")
        screenshot(page, "home", tmp_path)
        page.fill(".hero input[name=q]", "a model that speaks French")
        page.click(".hero button")
        page.wait_for_selector("ol.ranked")
        assert page.locator("ol.ranked a.name").first.inner_text() == "alice/fr"  # by meaning
        page.locator("ol.ranked a.name").first.click()
        page.wait_for_selector(".card h1")
        assert page.inner_text(".card h1") == "French translator"
        assert page.locator(".card table").count() == 1 and "BLEU" in page.inner_text(".card table")
        assert "v1" in page.inner_text("ul.versions")
        files = page.locator("table.files a")
        assert {files.nth(i).inner_text() for i in range(files.count())} == {
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
        }
        snippet = page.inner_text('[data-snippet="Python (quiver_hub)"]')
        screenshot(page, "adapter", tmp_path)
        adapter_url = page.url
        page.locator("table.files a", has_text="adapter_model.safetensors").click()  # its page: the tensors
        page.wait_for_selector("table.tensors")
        assert "lora_A.weight" in page.inner_text("table.tensors") and "F32" in page.inner_text("table.tensors")
        screenshot(page, "blob", tmp_path)
        href = page.locator("a", has_text="download").first.get_attribute("href")
        downloaded = page.request.get(server.url + href)
        assert downloaded.body() == (site["fr"] / "adapter_model.safetensors").read_bytes()
        page.goto(adapter_url)
        page.goto(server.url + "/login")  # a cluster run is its maker's
        page.fill("input[name=token]", site["alice"])
        page.click("form.stack button")
        page.goto(f"{server.url}/clusters/{site['run']['id']}")
        page.wait_for_selector("svg.scatter")
        circles = page.locator("svg.scatter circle").count()
        members = sum(len(c["members"]) for c in site["run"]["clusters"])
        assert circles == members == 3 and page.locator("section.cluster").count() == 2
        labels = page.locator("svg.scatter text.point-label").all_text_contents()
        assert sorted(labels) == ["fr", "sql", "summaries"] and "principal direction" in page.text_content(
            "svg.scatter"
        )
        titles = page.locator("svg.scatter circle title").all_text_contents()  # hover: the full name and cluster
        assert all(t.startswith("alice/") and "(cluster" in t for t in titles)
        for i in range(circles):  # every point clear of the frame's edges (and of the axes' names)
            point = page.locator("svg.scatter circle").nth(i)
            assert all(40 <= float(point.get_attribute(a)) <= 440 for a in ("cx", "cy"))
        screenshot(page, "cluster", tmp_path)
    assert blocked == []  # the pages need nothing from outside the hub
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env["QUIVER_CACHE"] = str(tmp_path / "cache")
    ran = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    folder = Path(ran.stdout.split()[0])
    assert (folder / "adapter_model.safetensors").read_bytes() == (
        site["fr"] / "adapter_model.safetensors"
    ).read_bytes()


def test_a_card_cannot_run_anything(server: LiveServer, site: dict) -> None:
    blocked: list[str] = []
    with browser() as b:
        page = offline_page(b, server.url, blocked)
        response = page.goto(server.url + "/bob/evil")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector(".card h1")
        page.hover("text=hover me")
        page.locator("#evil-link, .card a", has_text="click me").first.click()
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None
        card = page.inner_html(".card")
        for bad in ("<script", "onerror", "onmouseover", "<iframe"):
            assert bad not in card, bad
        attributes = page.evaluate(
            "[...document.querySelectorAll('.card *')].flatMap(e => [...e.attributes].map(a => a.name + '=' + a.value))"
        )
        assert not [a for a in attributes if "javascript:" in a or a.startswith("on")], attributes


def test_private_adapters_stay_private_until_their_owner_signs_in(server: LiveServer, site: dict) -> None:
    with browser() as b:
        page = b.new_page()
        for path in (
            "/",
            "/search?q=secret+French+translation",
            "/search?by=name&q=secret",
            "/bob",
            "/models/quiver-test/tiny-llama",
            "/find?text=Secret+French",
            f"/clusters/{site['run']['id']}",
        ):
            page.goto(server.url + path)
            assert "bob/secret" not in page.content(), path
        response = page.goto(server.url + "/bob/secret")
        assert response.status == 404 and "not found" in page.inner_text("main")
        page.goto(server.url + "/login")
        page.fill("input[name=token]", "qv_wrong")
        page.click("form.stack button")
        assert "invalid or revoked token" in page.inner_text("main")
        page.fill("input[name=token]", site["bob"])
        page.click("form.stack button")
        page.wait_for_url(server.url + "/bob")
        assert "bob/secret" in page.inner_text("ul.adapters")
        assert page.goto(server.url + "/bob/secret").status == 200
        page.goto(server.url + "/settings/tokens")
        page.fill("form.stack input[name=name]", "from the browser")
        page.click("form.stack button")
        new_token = page.inner_text("#new-token")
        assert new_token.startswith("qv_") and "from the browser" in page.inner_text("table.tokens")
        page.locator("form.inline button", has_text="Sign out").click()
        assert page.goto(server.url + "/bob/secret").status == 404
    with server.client(new_token) as c:  # the token made in the browser works
        assert c.get("/v1/whoami").json()["user"] == "bob"


def test_forms_without_the_csrf_token_are_refused(server: LiveServer, site: dict) -> None:
    with server.client() as c:
        r = c.post("/login", data={"token": site["bob"], "csrf": "forged"})
        assert r.status_code == 400 and "stale" in r.text
        assert c.post("/logout", data={"csrf": ""}).status_code in (400, 422)


def test_files_history_and_private_repos_on_the_repo_pages(server: LiveServer, site: dict) -> None:
    with server.client() as c:
        tree = c.get("/alice/fr/tree/main")
        assert tree.status_code == 200 and "adapter_model.safetensors" in tree.text and "README.md" in tree.text
        card = c.get("/alice/fr/blob/main/README.md")
        assert card.status_code == 200 and "French translator" in card.text
        evil = c.get("/bob/evil/blob/main/README.md")  # the file shown as text: nothing in it is markup
        assert "&lt;script&gt;" in evil.text and "<script>window" not in evil.text
        tensors = c.get("/alice/fr/blob/1/adapter_model.safetensors")
        assert tensors.status_code == 200 and "lora_B.weight" in tensors.text and "F32" in tensors.text
        history = c.get("/alice/fr/commits/main")
        assert history.status_code == 200 and "v1" in history.text
        for path in (
            "/bob/secret/tree/main",
            "/bob/secret/blob/main/README.md",
            "/bob/secret/commits/main",
            "/alice/fr/blob/main/nope.txt",
            "/alice/fr/tree/99",
        ):
            assert c.get(path).status_code == 404, path
    with server.client(site["bob"]) as bob, browser() as b:
        assert bob.get("/bob/secret/tree/main").status_code == 404  # the pages go by the browser's session
        page = b.new_page()
        page.goto(server.url + "/login")
        page.fill("input[name=token]", site["bob"])
        page.click("form.stack button")
        page.wait_for_url(server.url + "/bob")
        assert page.goto(server.url + "/bob/secret/commits/main").status == 200


def test_the_pages_hold_at_phone_width(server: LiveServer, site: dict, tmp_path: Path) -> None:
    with browser() as b:
        page = b.new_page(viewport={"width": 390, "height": 844})
        for path, name in (
            ("/alice/fr", "phone-adapter"),
            ("/alice/fr/blob/main/adapter_config.json", None),
            ("/", None),
        ):
            page.goto(server.url + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)  # nothing overflows sideways
            if name:
                screenshot(page, name, tmp_path)


def test_search_results_read_as_people_read_them(server: LiveServer, site: dict, tmp_path: Path) -> None:
    with server.client() as c:
        found = c.get("/search", params={"q": "French translation"}).text
        assert "Translates English into French" in found and "% match" in found and "next" not in found
    token = server.token("carol")
    with server.client(token) as c:
        for i in range(21):
            files = upload_parts(write_adapter(tmp_path / f"m{i}", seed=10 + i))
            assert (
                c.post(f"/v1/adapters/carol/m{i}", files=files, data={"description": f"model {i}"}).status_code == 201
            )
        first = c.get("/search", params={"q": "a model", "page": 1}).text
        second = c.get("/search", params={"q": "a model", "page": 2}).text
    names = lambda html: set(re.findall(r'class="name" href="/([^"]+)"', html))  # noqa: E731
    assert len(names(first)) == 20 and "next &rarr;" in first and "page=2" in first
    assert names(second) and not names(first) & names(second) and "previous" in second


def test_a_long_card_is_folded_and_unfolds_without_javascript(server: LiveServer, tmp_path: Path) -> None:
    long_card = b"# Model Card for Model ID\n\n" + b"".join(
        b"## Section %d\n\n<!-- Provide a longer summary. -->\n\n[More Information Needed]\n\n" % i for i in range(60)
    )
    folder = write_adapter(tmp_path / "long", extra_files={"README.md": long_card})
    with server.client(server.token("alice")) as c:
        assert c.post("/v1/adapters/alice/long", files=upload_parts(folder)).status_code == 201
    with browser() as b:
        page = b.new_page()
        page.route("**/*.js", lambda route: route.abort())  # no script runs: the fold is CSS alone
        page.goto(server.url + "/alice/long")
        folded = page.locator(".card").bounding_box()["height"]
        assert folded < 800 and page.locator("label.unfold").is_visible()
        page.click("label.unfold")
        assert page.locator(".card").bounding_box()["height"] > 2 * folded
