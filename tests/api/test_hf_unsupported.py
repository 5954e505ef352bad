"""Every HfApi call Quiver does not implement, through the real huggingface_hub client against a real hub:
each fails at once with BadRequestError and a message that names the call and why, in the Hub's error
shape, never a bare 404 that reads as a missing repo (hub/hf/unsupported.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.adapters import write_adapter
from tests.support.servers import LiveServer
from tests.system.test_hf_surface import hf_python

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
REFUSED = {
    "super_squash_history": "api.super_squash_history(repo)",
    "unlike": "api.unlike(repo)",
    "list_liked_repos": "api.list_liked_repos('alice')",
    "list_repo_likers": "list(api.list_repo_likers(repo))",
    "list_lfs_files": "list(api.list_lfs_files(repo))",
    "create_collection": "api.create_collection('mine')",
    "get_collection": "api.get_collection('alice/mine-0123456789abcdef')",
    "list_datasets": "list(api.list_datasets(limit=1))",
    "dataset_info": "api.dataset_info('alice/data')",
    "space_info": "api.space_info('alice/space')",
    "create_repo(dataset)": "api.create_repo('alice/data', repo_type='dataset')",
    "list_webhooks": "api.list_webhooks()",
    "get_repo_discussions": "list(api.get_repo_discussions(repo))",
    "create_discussion": "api.create_discussion(repo, title='x')",
    "create_branch": "api.create_branch(repo, branch='dev')",
    "delete_branch": "api.delete_branch(repo, branch='dev')",
}


def test_unimplemented_hfapi_calls_are_refused_by_name(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    calls = "\n".join(f"out[{name!r}] = outcome(lambda: {call})" for name, call in REFUSED.items())
    script = 'repo = "alice/a"\napi.create_repo(repo)\napi.upload_folder(folder_path=ARGS["folder"], repo_id=repo)\n'
    out = hf_python(server, token, script + calls, folder=str(write_adapter(tmp_path / "a")), home=tmp_path / "hf")
    for name in REFUSED:
        kind, status, message = out[name]
        assert (kind, status) == ("BadRequestError", 400), (name, out[name])
        reasons = ("Quiver does not implement", "versions are linear", "only model repos")
        assert any(reason in message for reason in reasons), (name, message)
    assert "super_squash_history" in out["super_squash_history"][2] and "linear" in out["super_squash_history"][2]
    assert "model repos" in out["dataset_info"][2]


def test_a_revision_with_a_slash_is_not_found_as_the_hub_says_it(server: LiveServer, tmp_path: Path) -> None:
    """refs/pr/1 or a branch name reaches no route (uvicorn decodes %2F): RevisionNotFoundError, and for a
    repo the caller may not see, RepositoryNotFoundError, as for any other revision."""
    alice, bob = server.token("alice"), server.token("bob")
    script = (
        'repo = "alice/a"\napi.create_repo(repo, exist_ok=True)\n'
        'api.upload_folder(folder_path=ARGS["folder"], repo_id=repo)\n'
        'out["pr"] = outcome(lambda: api.model_info(repo, revision="refs/pr/1"))\n'
        'out["tree"] = outcome(lambda: list(api.list_repo_tree(repo, revision="feature/x")))\n'
    )
    out = hf_python(server, alice, script, folder=str(write_adapter(tmp_path / "a")), home=tmp_path / "hf")
    assert out["pr"][0] == "RevisionNotFoundError" and out["tree"][0] == "RevisionNotFoundError", out
    with server.client(alice) as c:
        assert c.patch("/v1/adapters/alice/a", json={"visibility": "private"}).status_code == 200
    hidden = hf_python(
        server,
        bob,
        'out["pr"] = outcome(lambda: api.model_info("alice/a", revision="refs/pr/1"))',
        home=tmp_path / "hf-bob",
    )
    assert hidden["pr"][0] == "RepositoryNotFoundError", hidden
