"""Every HfApi call Quiver does not implement, through the real huggingface_hub client against a real hub:
each fails at once with BadRequestError and a message that names the call and why, in the Hub's error
shape, never a bare 404 that reads as a missing repo (hub/routes/hf_unsupported.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapters import write_adapter
from tests.conftest import LiveServer
from tests.test_hf_surface import hf_python

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
