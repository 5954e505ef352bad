"""vLLM serves adapters from Quiver by name: a LoRA resolver plugin.

Installed as the `vllm.general_plugins` entry point `quiver` (pyproject.toml); enable it with
`VLLM_PLUGINS=quiver` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, then a request whose `model` is
`ns/name` or `ns/name@rev` loads that adapter. For each name the resolver asks the hub which version it
means (so a version deleted there stops resolving, and a private adapter needs the operator's token),
refuses an adapter of another base model with a logged reason, and pulls the version through the client
cache, every file verified against its sha256. The hub, token and cache are the client's settings:
QUIVER_ENDPOINT, QUIVER_TOKEN, QUIVER_CACHE. QUIVER_VLLM_BASE_MODEL names the hub's base model of the
model vLLM serves, when vLLM knows it by another name (a local path, --served-model-name).

vLLM keeps what a name resolved to until the adapter is unloaded: pin revisions (`ns/name@rev`) where
the version matters.
"""

from __future__ import annotations

import asyncio
import logging
import os

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from quiver_hub.api import HubClient, split_repo
from quiver_hub.errors import HubError

NAME = "quiver"
log = logging.getLogger("quiver.vllm")


def lora_int_id(revision: str) -> int:
    """A stable id for a version, from its revision id (vLLM wants a positive integer)."""
    return int(revision[:8], 16) % (2**31 - 1) + 1


class QuiverResolver(LoRAResolver):
    def __init__(self, hub: HubClient | None = None, base_model: str | None = None) -> None:
        self.hub = hub if hub is not None else HubClient()
        self.base_model = base_model if base_model is not None else os.environ.get("QUIVER_VLLM_BASE_MODEL")

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        return await asyncio.to_thread(self.resolve, base_model_name, lora_name)

    def resolve(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        """The request for `lora_name`, or None (with the reason logged) when Quiver has no such adapter
        that this server may load."""
        try:
            repo, rev = split_repo(lora_name)
        except ValueError:
            log.debug("quiver: %r is not namespace/name[@revision]", lora_name)
            return None
        try:
            version = self.hub.info(f"{repo}@{rev or 'latest'}")
            serves = self.base_model or base_model_name
            if version["base_model"] != serves:
                log.warning(
                    "quiver: %s adapts %s, not %s, which this server runs; refused (QUIVER_VLLM_BASE_MODEL names "
                    "the hub's base model when vLLM knows it by another name)",
                    lora_name,
                    version["base_model"],
                    serves,
                )
                return None
            folder = self.hub.pull(f"{repo}@{version['revision']}")
        except HubError as e:
            log.warning("quiver: %s not resolved: %s", lora_name, e.message)
            return None
        return LoRARequest(
            lora_name=lora_name,
            lora_int_id=lora_int_id(version["revision"]),
            lora_path=str(folder),
            base_model_name=base_model_name,
        )


def register() -> None:
    """The plugin's entry point: vLLM calls it in each of its processes (once or more)."""
    if NAME not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver(NAME, QuiverResolver())
