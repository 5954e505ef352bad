"""An adapter made with PEFT on a small random transformers model goes up over HTTP, comes back
byte for byte, and PEFT loads the downloaded folder to the same outputs."""

from __future__ import annotations

from pathlib import Path

import peft
import torch

from examples.make_adapter import tiny_llama
from tests.support.adapters import upload_parts
from tests.support.servers import LiveServer


def test_peft_adapter_round_trip(server: LiveServer, tmp_path: Path) -> None:
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2},
        init_lora_weights=False,
    )
    trained = peft.get_peft_model(tiny_llama(), config).eval()
    saved = tmp_path / "saved"
    trained.save_pretrained(saved)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = trained(ids).logits

    token = server.token("alice")
    with server.client(token) as c:
        r = c.post("/v1/adapters/alice/tiny-lora", files=upload_parts(saved), data={"task": "test"})
        assert r.status_code == 201, r.text
        version = r.json()
        assert version["rank"] == 4 and version["base_model"] == "quiver-demo/tiny-llama"
        assert len(version["target_modules"]) == 2 * 3
        assert {m: r for m, r in version["ranks"].items()} == {
            m: 2 if m.endswith("down_proj") else 4 for m in version["target_modules"]
        }

    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    with server.client() as c:  # anonymous: the adapter is public
        for f in c.get("/v1/adapters/alice/tiny-lora/versions/latest").json()["files"]:
            body = c.get(f"/v1/adapters/alice/tiny-lora/versions/{version['revision']}/files/{f['path']}")
            assert body.status_code == 200
            (downloaded / f["path"]).write_bytes(body.content)
    for original in saved.iterdir():
        assert (downloaded / original.name).read_bytes() == original.read_bytes(), original.name

    loaded = peft.PeftModel.from_pretrained(tiny_llama(), downloaded).eval()
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with torch.no_grad():
        base = tiny_llama()(ids).logits
    assert not torch.allclose(base, expected)  # the adapter really changes the model
