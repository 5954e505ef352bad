"""Generated input for the pages' forms and the accounts routes (hypothesis, against a real hub on SQLite):
whatever a signed-in browser or an API client sends to sign-in, tokens, organisations and members, the
answer is never a server error. The OpenAPI routes as a whole are fuzzed by schemathesis
(tests/system/test_fuzz.py); the pages' forms are not in the spec, so they are driven here."""

from __future__ import annotations

import os
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from tests.api.test_security import csrf_of, signed_in
from tests.support.servers import LiveServer

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
EXAMPLES = int(os.environ.get("QUIVER_FORM_FUZZ_EXAMPLES", "40"))
RUN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same inputs in every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Field values people and attackers send: numbers out of every range, other digits, huge and odd text.
field = (
    st.text(max_size=40)
    | st.integers().map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(str)
    | st.sampled_from(["", " ", "²", "٣", "1e3", "-1", "99999999999", "0x10", "admin", "write", "read", "acme"])
    | st.text(min_size=200, max_size=400)
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=12,
)


def no_server_error(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:500])


def own_token(token_id: str, own: int) -> bool:
    """Whether the hub would read `token_id` as the caller's own token (as FastAPI parses an int: "1.0"
    and " 1" are 1 too)."""
    try:
        return TypeAdapter(int).validate_python(token_id) == own
    except ValidationError:
        return False


def test_the_pages_forms_never_answer_a_server_error(server: LiveServer) -> None:
    alice = server.token("alice", org="acme")
    server.token("bob")
    with server.client(alice) as c:
        own = c.get("/v1/whoami").json()["token_id"]
    browser = signed_in(server, alice)
    csrf = csrf_of(browser, "/settings/tokens")

    @RUN
    @given(name=field, scope=field, days=field, user=field, role=field, token_id=field, sent_csrf=field)
    def forms(name: str, scope: str, days: str, user: str, role: str, token_id: str, sent_csrf: str) -> None:
        no_server_error(
            browser.post("/settings/tokens", data={"csrf": csrf, "name": name, "scope": scope, "expires_in_days": days})
        )
        if not own_token(token_id, own):  # (revoking its own token would sign the browser out)
            no_server_error(browser.post(f"/settings/tokens/{quote(token_id, safe='')}/revoke", data={"csrf": csrf}))
        no_server_error(browser.post("/orgs/acme/members", data={"csrf": csrf, "user": user, "role": role}))
        no_server_error(
            browser.post(f"/orgs/{quote(user, safe='')}/members", data={"csrf": csrf, "user": "bob", "role": role})
        )
        no_server_error(browser.post(f"/orgs/acme/members/{quote(user, safe='')}/remove", data={"csrf": csrf}))
        no_server_error(browser.post("/settings/tokens", data={"csrf": sent_csrf, "name": name}))
        with httpx.Client(base_url=server.url, timeout=30) as visitor:
            no_server_error(visitor.post("/login", data={"token": name, "csrf": csrf_of(visitor)}))
            no_server_error(visitor.post("/login", data={"token": name, "csrf": sent_csrf}))

    forms()
    assert browser.get("/settings/tokens").status_code == 200  # still signed in
    browser.close()


def test_the_accounts_routes_never_answer_a_server_error(server: LiveServer) -> None:
    alice = server.token("alice", org="acme")
    server.token("bob")
    api = server.client(alice)
    own = api.get("/v1/whoami").json()["token_id"]

    @RUN
    @given(body=json_value, name=field, user=field, ident=field)
    def routes(body: object, name: str, user: str, ident: str) -> None:
        no_server_error(api.post("/v1/tokens", json=body))
        if isinstance(body, dict):
            no_server_error(api.post("/v1/tokens", json={"name": name[:64], **body}))
        no_server_error(api.post("/v1/orgs", json=body))
        no_server_error(api.post("/v1/orgs/acme/members", json=body))
        no_server_error(api.post("/v1/orgs/acme/members", json={"user": user, "role": name}))
        no_server_error(api.get(f"/v1/orgs/{quote(user, safe='')}/members"))
        no_server_error(api.get("/v1/audit", params={"namespace": user, "action": name, "before": ident}))
        no_server_error(api.get(f"/v1/orgs/{quote(user, safe='')}/tokens"))
        if not own_token(ident, own):
            no_server_error(api.delete(f"/v1/tokens/{quote(ident, safe='')}"))

    routes()
    assert api.get("/v1/whoami").status_code == 200
    api.close()
