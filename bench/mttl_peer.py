"""The paper authors' MBC (MTTL 1.0.2's `MBCWithCosSimTransform`) on bench/libraries.py's libraries, run
whole beside the hub's, in its own environment (`make .venv/mttl/.installed`).

MTTL's import reaches much that its MBC never runs (Azure storage, wandb, triton kernels, plots,
`datasets`, and a metric module that downloads a model at import); those are stood in for by empty
modules here. Its virtual library reads each expert's weights back from disk, so `InMemory` keeps them
in memory; the transform itself (its SVD embedding at sparsity 0.8 and k-means on the cosine matrix,
its defaults and random state) is MTTL's own code.

Each adapter is given to it as MTTL's experts hold theirs: the adapter's own state dict (PEFT's
lora_A / lora_B tensors). MTTL flattens and stacks these, which needs every adapter to have the same
tensors; on a library of mixed forms it fails, and that is reported. It is then tried again on each
adapter's tensors laid out over the union of the library's (zeros where an adapter has no entry, as the
hub's `params` method aligns them), where its check that exactly 80% of each row is zeroed can fail in
turn (an adapter absent from most of the union is zeros past 80% already).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = ROOT / ".venv" / "mttl"
STAND_INS = (
    "azure", "wandb", "google.protobuf", "matplotlib", "bitsandbytes", "datasets", "pyarrow",
    "mttl.models.modifiers.sparse_utils", "mttl.models.modifiers.sparse_mask", "mttl.models.modifiers.sm_updater",
    "mttl.dataloader.ni_metrics",
)  # fmt: skip


def partitions(libraries: dict[str, list[Path]], k: int = 3) -> dict[str, dict]:
    """Per library (adapter folders in order), for "as they are" and "union layout": {"labels": [...]}
    from MTTL, or {"error": "..."}, what it raised and where."""
    if not (ENVIRONMENT / ".installed").exists():
        raise SystemExit(f"MTTL's environment is missing: make {ENVIRONMENT.relative_to(ROOT)}/.installed")
    env = {**os.environ, "PYTHONPATH": str(ENVIRONMENT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    request = {"k": k, "libraries": {name: [str(f) for f in folders] for name, folders in libraries.items()}}
    done = subprocess.run(
        [sys.executable, __file__], input=json.dumps(request), capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"MTTL's MBC failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class _Blank:
    """Whatever a stood-in module is asked for: a class that accepts anything."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Blank:
        return _Blank()

    def __getattr__(self, name: str) -> type:
        return _blank(name)


def _blank(name: str) -> type:
    """A stood-in attribute: a class that accepts anything (dunders stay missing, so that inspection and
    version checks see a plain module)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return _Meta(name, (_Blank,), {})


class _Meta(type):
    def __getattr__(cls, name: str) -> type:
        return _blank(name)


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if any(name == s or name.startswith(s + ".") for s in STAND_INS):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001, ANN201
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__version__ = "0.0"
        module.__getattr__ = _blank  # type: ignore[method-assign]
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001
        pass


def _run(request: dict) -> dict:
    sys.meta_path.insert(0, _StandIns())
    import torch
    from mttl.models.library.expert import Expert, ExpertInfo
    from mttl.models.library.expert_library import VirtualLocalLibrary
    from mttl.models.library.library_transforms import MBClusteringTransformConfig, MBCWithCosSimTransform
    from mttl.models.modifiers.lora import LoRAConfig
    from safetensors.torch import load_file

    class InMemory(VirtualLocalLibrary):
        """MTTL's virtual library, its experts' weights kept in memory instead of read back from disk."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            self.weights: dict[str, dict] = {}
            super().__init__(*args, **kwargs)

        def _upload_weights(self, expert_name, expert_dump) -> None:  # noqa: ANN001
            self.weights[expert_name] = expert_dump.expert_weights

        def __getitem__(self, expert_name):  # noqa: ANN001, ANN204
            return Expert(expert_info=self.data[expert_name], expert_weights=self.weights[expert_name])

    def labels(states: list[dict]) -> list[int]:
        library = InMemory(repo_id="virtual://bench", create=True)
        for i, state in enumerate(states):
            info = ExpertInfo(expert_name=f"e{i:03d}", expert_config=LoRAConfig(), expert_model="base")
            library.add_expert(Expert(info, state), expert_name=f"e{i:03d}")
        clusters = MBCWithCosSimTransform(MBClusteringTransformConfig(k=request["k"])).transform(
            library, persist=False, recompute=True
        )
        where = {name: int(c) for c, names in clusters.items() for name in names}
        return [where[f"e{i:03d}"] for i in range(len(states))]

    def attempt(run, states: list[dict]) -> dict:  # noqa: ANN001
        try:
            return {"labels": run(states)}
        except Exception as e:  # noqa: BLE001 - what MTTL says is the result
            where = traceback.extract_tb(e.__traceback__)[-1]
            said = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
            return {"error": f"{said} ({Path(where.filename).name}:{where.lineno})"}

    out = {}
    for name, folders in request["libraries"].items():
        states = [load_file(str(Path(f) / "adapter_model.safetensors")) for f in folders]
        result = {"as they are": attempt(labels, states)}
        sizes: dict[str, int] = {}
        for state in states:
            for key, t in state.items():
                sizes[key] = max(sizes.get(key, 0), t.numel())
        aligned = []
        for state in states:
            row = {}
            for key in sorted(sizes):
                flat = torch.zeros(sizes[key])
                if key in state:
                    flat[: state[key].numel()] = state[key].float().reshape(-1)
                row[key] = flat
            aligned.append(row)
        result["union layout"] = attempt(labels, aligned)
        out[name] = result
    return out


if __name__ == "__main__":
    print(json.dumps(_run(json.loads(sys.stdin.read()))))
