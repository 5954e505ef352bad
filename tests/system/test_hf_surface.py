"""The whole Hugging Face surface a user calls on a model repo, driven through the real huggingface_hub
client and the real `hf` command line (in subprocesses, HF_ENDPOINT set) against a real hub: each call
works with the Hub's semantics or fails with the Hub's error class and a clear message, and another user's
private repo stays invisible and untouchable on every one of them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.adapters import write_adapter
from tests.support.servers import LiveServer


def trainer_output(folder: Path) -> Path:
    """A folder laid out like a transformers Trainer's output_dir with a PEFT model."""
    write_adapter(folder, extra_files={"README.md": b"---\nbase_model: quiver-test/tiny-llama\n---\n# trained\n"})
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (folder / "training_args.bin").write_bytes(b"\x80\x04\x95\x00")  # a pickle, as Trainer writes it
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    return folder


def hf_python(server: LiveServer, token: str | None, script: str, **args: object) -> dict:
    """Run `script` with huggingface_hub pointed at the hub; it fills the dict `out`, returned here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(args.pop("home")))
    if token:
        env["HF_TOKEN"] = token
    prelude = textwrap.dedent(
        """
        import json, sys
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import (
            BadRequestError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError
        )
        ARGS = json.loads(sys.argv[1]); out = {}; api = HfApi()

        def outcome(fn, *a, **kw):
            try:
                value = fn(*a, **kw)
                return ["ok", value if isinstance(value, (str, int, bool, list, dict, type(None))) else str(value)]
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else None
                return [type(e).__name__, status, str(e)]
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script) + "\nprint(json.dumps(out))", json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_repo_methods_answer_as_the_hub_does(server: LiveServer, tmp_path: Path) -> None:
    alice = server.token("alice")
    folder = trainer_output(tmp_path / "run")
    out = hf_python(
        server,
        alice,
        """
        repo = "alice/trained"
        api.create_repo(repo)
        out["refused"] = outcome(api.upload_folder, folder_path=ARGS["folder"], repo_id=repo)
        first = api.upload_folder(
            folder_path=ARGS["folder"], repo_id=repo, commit_message="first run",
            ignore_patterns=["*.bin", "*.pt", "*.pth"],
        )
        sha = api.model_info(repo).sha
        out["first"] = [first.oid, sha]
        out["files"] = sorted(api.list_repo_files(repo))
        local = snapshot_download(repo)
        out["downloaded"] = {p: open(f"{local}/{p}", "rb").read().hex() for p in out["files"]}
        api.upload_file(path_or_fileobj=b"# card v2\\n", path_in_repo="README.md", repo_id=repo,
                        commit_message="second", commit_description="a new card")
        out["commits"] = [[c.commit_id, c.title, c.message, c.authors] for c in api.list_repo_commits(repo)]
        refs = api.list_repo_refs(repo)
        out["refs"] = [[b.name, b.target_commit] for b in refs.branches], [t.name for t in refs.tags]
        api.create_tag(repo, tag="v1.0", revision=sha, tag_message="the first run")
        out["tagged"] = [[t.name, t.target_commit] for t in api.list_repo_refs(repo).tags]
        out["tag_info"] = api.model_info(repo, revision="v1.0").sha
        out["tag_file"] = open(hf_hub_download(repo, "README.md", revision="v1.0")).read()
        out["tag_twice"] = outcome(api.create_tag, repo, tag="v1.0")
        api.delete_tag(repo, tag="v1.0")
        out["untagged"] = [t.name for t in api.list_repo_refs(repo).tags]
        out["paths"] = [
            [type(p).__name__, p.path] for p in api.get_paths_info(repo, ["tokenizer.json", "checkpoint-10", "nope"])
        ]
        out["branch"] = outcome(api.create_branch, repo, branch="dev")
        out["pull_request"] = outcome(api.create_pull_request, repo, title="x")
        out["bad_revision"] = outcome(api.model_info, repo, revision="no-such-tag")
        api.update_repo_settings(repo, private=True)
        out["private"] = api.model_info(repo).private
        api.move_repo(repo, "alice/renamed")
        out["moved"] = [api.model_info("alice/renamed").id, api.model_info(repo).id]
        out["moved_download"] = open(hf_hub_download(repo, "README.md")).read()
        api.delete_repo("alice/renamed")
        out["deleted"] = outcome(api.model_info, "alice/renamed")
        out["deleted_again"] = outcome(api.delete_repo, "alice/renamed", missing_ok=True)
        """,
        folder=str(folder),
        home=tmp_path / "hf",
    )
    status, code, message = out["refused"]
    assert (status, code) == ("BadRequestError", 400), out["refused"]
    assert "training_args.bin" in message and "ignore_patterns" in message
    first, sha = out["first"]
    assert first == sha
    assert out["files"] == sorted(
        [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "chat_template.jinja",
            "checkpoint-10/trainer_state.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    for path, data in out["downloaded"].items():
        assert bytes.fromhex(data) == (folder / path).read_bytes(), path
    (second, title2, message2, authors2), (first_again, title1, _, _) = out["commits"]
    assert first_again == sha and (title1, title2, message2) == ("first run", "second", "a new card")
    assert authors2 == ["alice"]
    assert out["refs"] == [[["main", second]], []]
    assert out["tagged"] == [["v1.0", sha]] and out["tag_info"] == sha
    assert out["tag_file"].startswith("---\nbase_model")  # the first version's card
    assert out["tag_twice"][1] == 409
    assert out["untagged"] == []
    assert out["paths"] == [["RepoFile", "tokenizer.json"], ["RepoFolder", "checkpoint-10"]]
    for refused in (out["branch"], out["pull_request"]):
        assert refused[0] == "BadRequestError" and "versions are linear" in refused[2], refused
    assert out["bad_revision"][0] == "RevisionNotFoundError"
    assert out["private"] is True
    assert out["moved"] == ["alice/renamed", "alice/renamed"]
    assert out["moved_download"] == "# card v2\n"
    assert out["deleted"][0] == "RepositoryNotFoundError"
    assert out["deleted_again"][0] == "ok"


def test_another_users_private_repo_cannot_be_seen_or_touched(server: LiveServer, tmp_path: Path) -> None:
    alice, bob = server.token("alice"), server.token("bob")
    folder = write_adapter(tmp_path / "a")
    hf_python(
        server,
        alice,
        """
        api.create_repo("alice/secret", private=True)
        api.upload_folder(folder_path=ARGS["folder"], repo_id="alice/secret")
        """,
        folder=str(folder),
        home=tmp_path / "hf-a",
    )
    script = """
        out = {}
        for repo in ("alice/secret", "alice/never-existed"):
            out[repo] = {
                "info": outcome(api.model_info, repo),
                "download": outcome(hf_hub_download, repo, "adapter_config.json"),
                "refs": outcome(api.list_repo_refs, repo),
                "commits": outcome(api.list_repo_commits, repo),
                "paths": outcome(api.get_paths_info, repo, ["adapter_config.json"]),
                "tag": outcome(api.create_tag, repo, tag="mine"),
                "settings": outcome(api.update_repo_settings, repo, private=False),
                "move": outcome(api.move_repo, repo, "bob/stolen"),
                "delete": outcome(api.delete_repo, repo),
                "commit": outcome(api.upload_file, path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo),
            }
        """
    for who, token in (("bob", bob), ("anonymous", None)):
        out = hf_python(server, token, script, home=tmp_path / f"hf-{who}")
        secret, missing = out["alice/secret"], out["alice/never-existed"]
        for op in secret:
            assert secret[op][0] != "ok", (who, op, secret[op])
            assert secret[op][:2] == missing[op][:2], (who, op, secret[op], missing[op])  # indistinguishable
    with server.client(alice) as c:
        versions = c.get("/v1/adapters/alice/secret/versions").json()["versions"]
        assert [v["version"] for v in versions] == [1] and versions[0]["tags"] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_hf_command_line(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = trainer_output(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=token, HF_HOME=str(tmp_path / "hf"))
    hf = str(Path(sys.executable).with_name("hf"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([hf, *args], env=env, capture_output=True, text=True, timeout=300)

    assert run("repos", "create", "alice/cli").returncode == 0
    refused = run("upload", "alice/cli", str(folder), ".")
    assert refused.returncode != 0 and "training_args.bin" in refused.stderr + refused.stdout
    uploaded = run("upload", "alice/cli", str(folder), ".", "--exclude", "*.bin")
    assert uploaded.returncode == 0, uploaded.stderr
    assert run("repos", "tag", "create", "alice/cli", "v1").returncode == 0
    listed = run("repos", "tag", "list", "alice/cli")
    assert listed.returncode == 0 and "v1" in listed.stdout
    downloaded = run("download", "alice/cli", "tokenizer.json", "--revision", "v1", "--local-dir", str(tmp_path / "d"))
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / "d" / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert run("repos", "tag", "delete", "alice/cli", "v1", "--yes").returncode == 0
    assert run("repos", "settings", "alice/cli", "--private").returncode == 0
    assert run("repos", "move", "alice/cli", "alice/cli2").returncode == 0
    assert run("repos", "delete", "alice/cli2", "--yes").returncode == 0
    with server.client(token) as c:
        assert c.get("/v1/adapters/alice/cli2").status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_hf_cache_tools_agree_with_the_tree(server: LiveServer, tmp_path: Path) -> None:
    """`hf cache verify` checks each small file against the tree's `oid` (the git blob SHA-1, as on the
    Hub) and weights against `lfs.oid`; `hf cache ls` and scan_cache_dir list the download."""
    token = server.token("alice")
    folder = trainer_output(tmp_path / "run")
    out = hf_python(
        server,
        token,
        """
        api.create_repo("alice/cached")
        api.upload_folder(folder_path=ARGS["folder"], repo_id="alice/cached", ignore_patterns=["*.bin"])
        snapshot_download("alice/cached")
        out["tree"] = {f.path: [f.blob_id, f.lfs.sha256 if f.lfs else None]
                       for f in api.list_repo_tree("alice/cached", recursive=True) if hasattr(f, "blob_id")}
        from huggingface_hub import scan_cache_dir
        out["scanned"] = [[r.repo_id, r.nb_files] for r in scan_cache_dir().repos]
        """,
        folder=str(folder),
        home=tmp_path / "hf",
    )
    for path, (oid, lfs) in out["tree"].items():
        data = (folder / path).read_bytes()
        if path.endswith(".safetensors"):
            assert lfs == hashlib.sha256(data).hexdigest(), path
        else:
            assert oid == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() and lfs is None, path
    assert out["scanned"] == [["alice/cached", len(out["tree"])]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=token, HF_HOME=str(tmp_path / "hf"))
    hf = str(Path(sys.executable).with_name("hf"))
    verified = subprocess.run([hf, "cache", "verify", "alice/cached"], env=env, capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "mismatch" not in (verified.stdout + verified.stderr).lower()
    listed = subprocess.run([hf, "cache", "ls"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "alice/cached" in listed.stdout, listed.stdout + listed.stderr
