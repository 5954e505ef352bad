"""An organisation never loses its last admin, even when two admins demote or remove each other at the
same moment through two hub processes on one database (SQLite and Postgres). Before the namespace row was
locked for member changes, Postgres let both succeed in 2-3 of 6 rounds."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
from sqlalchemy import func, select

from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from quiver_hub.registry.accounts.tokens import token_for_user
from quiver_hub.registry.db import writing
from quiver_hub.registry.models import Membership, Namespace
from tests.support.servers import free_port, serve_process

ROUNDS = 16


def admins(state: Services, org: str) -> int:
    with state.sessions() as s:
        org_id = s.scalar(select(Namespace.id).where(Namespace.name == org))
        query = select(func.count()).select_from(Membership).where(Membership.org_id == org_id)
        return s.scalar(query.where(Membership.role == "admin"))


def test_two_admins_demoting_each_other_at_once_leave_one_admin(database_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    state = Services.open(settings)
    with writing(state.sessions) as s:
        tokens = {user: token_for_user(s, user=user) for user in ("ann", "ben")}
        s.commit()
    env = {**os.environ, "QUIVER_HOME": str(settings.home), "QUIVER_DATABASE_URL": database_url}
    outcomes: list[tuple[int, int]] = []
    try:
        with (
            serve_process({**env, "QUIVER_PORT": str(free_port())}) as a,
            serve_process({**env, "QUIVER_PORT": str(free_port())}) as b,
        ):
            for n in range(ROUNDS):
                org = f"org{n}"
                ann = httpx.Client(base_url=a, headers={"Authorization": f"Bearer {tokens['ann']}"}, timeout=60)
                ben = httpx.Client(base_url=b, headers={"Authorization": f"Bearer {tokens['ben']}"}, timeout=60)
                assert ann.post("/v1/orgs", json={"name": org}).status_code == 201
                assert ann.post(f"/v1/orgs/{org}/members", json={"user": "ben", "role": "admin"}).status_code == 200
                ann.get("/v1/whoami"), ben.get("/v1/whoami")  # connections open before the race
                start = threading.Barrier(2)
                answers: dict[str, httpx.Response] = {}

                def act(
                    name: str,
                    client: httpx.Client,
                    other: str,
                    remove: bool,
                    org: str = org,
                    answers: dict = answers,
                    start: threading.Barrier = start,
                ) -> None:
                    start.wait()
                    if remove:
                        answers[name] = client.delete(f"/v1/orgs/{org}/members/{other}")
                    else:
                        answers[name] = client.post(f"/v1/orgs/{org}/members", json={"user": other, "role": "read"})

                remove = n % 2 == 1  # odd rounds remove, even rounds demote
                threads = [
                    threading.Thread(target=act, args=("ann", ann, "ben", remove)),
                    threading.Thread(target=act, args=("ben", ben, "ann", remove)),
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                ann.close(), ben.close()
                codes = sorted(r.status_code for r in answers.values())
                assert all(c < 500 for c in codes), {k: r.text for k, r in answers.items()}
                assert admins(state, org) == 1, (org, {k: (r.status_code, r.text) for k, r in answers.items()})
                # exactly one change went through; the other was refused (no longer admin, or the last one)
                assert codes[0] in (200, 204) and codes[1] in (403, 409), codes
                outcomes.append(tuple(codes))
    finally:
        state.close()
    assert len(outcomes) == ROUNDS
