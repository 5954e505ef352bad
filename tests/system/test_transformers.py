"""transformers' own `model.load_adapter("ns/name", revision=...)` against a live hub, with the versions
the `transformers` extra pins (pyproject.toml): public and private adapters, a pinned revision, and the
same model as PEFT loading the same folder from disk."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
from safetensors.torch import load_file, save_file

from examples.make_adapter import tiny_llama
from tests.api.test_hf_compat import hf
from tests.support.adapters import upload_parts
from tests.support.servers import LiveServer

LOAD = """
import torch, peft
from transformers import AutoModelForCausalLM
from huggingface_hub.errors import HfHubHTTPError
x = torch.tensor([[1, 5, 9, 2, 7]])

def logits(model):
    with torch.no_grad():
        return model(x).logits.flatten().tolist()

out = {}
for name, repo, revision, token in ARGS["cases"]:
    model = AutoModelForCausalLM.from_pretrained(ARGS["base"])
    try:
        # transformers 5 takes the revision and token in adapter_kwargs (revision= itself is refused)
        model.load_adapter(repo, adapter_kwargs={"revision": revision, "token": token or None})
        out[name] = logits(model)
    except (HfHubHTTPError, OSError, ValueError) as e:
        out[name] = type(e).__name__ + ": " + str(e)[:300]
for name, folder in ARGS["local"].items():
    out[name] = logits(peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ARGS["base"]), folder))
print(json.dumps(out))
"""


def lora_folder(tmp_path: Path, name: str, seed: int) -> Path:
    folder = tmp_path / name
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(tiny_llama(seed=seed), lora).save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"  # a delta large enough to move the logits
    save_file({k: v * 4 for k, v in load_file(str(weights)).items()}, str(weights))
    return folder


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_transformers_load_adapter_from_the_hub(server: LiveServer, tmp_path: Path) -> None:
    alice = server.token("alice")
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    v1, v2, private = lora_folder(tmp_path, "v1", 1), lora_folder(tmp_path, "v2", 2), lora_folder(tmp_path, "p", 3)
    revisions = []
    with server.client(alice) as c:
        for repo, folder, form in (("alice/pub", v1, {}), ("alice/pub", v2, {}), ("alice/priv", private, {})):
            if repo == "alice/priv":
                form = {"visibility": "private"}
            r = c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data=form)
            assert r.status_code == 201, r.text
            revisions.append(r.json()["revision"])
    cases = [  # (the one without a token first: nothing of it in the local cache yet)
        ("private without a token", "alice/priv", None, None),
        ("latest", "alice/pub", None, None),
        ("pinned", "alice/pub", revisions[0], None),
        ("private", "alice/priv", None, alice),
    ]
    out = hf(
        server,
        tmp_path,
        LOAD,
        base=str(base),
        cases=cases,
        local={"local v1": str(v1), "local v2": str(v2), "local private": str(private)},
    )
    assert out["latest"] == pytest.approx(out["local v2"], abs=1e-5)
    assert out["pinned"] == pytest.approx(out["local v1"], abs=1e-5)
    assert out["private"] == pytest.approx(out["local private"], abs=1e-5)
    assert out["local v1"] != pytest.approx(out["local v2"], abs=1e-3)  # the versions differ
    assert isinstance(out["private without a token"], str), out["private without a token"]
