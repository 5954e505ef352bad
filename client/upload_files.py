"""What a push sends: the files of a folder (minus what is skipped or excluded), checked before anything is sent,
pickled weights converted to safetensors, and the bytes counted as they go."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SKIPPED_DIRS = (".git", ".cache", "__pycache__", ".ipynb_checkpoints")


def upload_paths(folder: Path, exclude: Sequence[str] = ()) -> dict[str, Path]:
    """{path in the upload: file} for every file under `folder` but version-control and cache folders and
    those matching an `exclude` pattern (fnmatch, on the path or the file name)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part in SKIPPED_DIRS for part in path.relative_to(folder).parts[:-1]):
            continue
        if any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(path.name, p) for p in exclude):
            continue
        out[rel] = path
    return out


PICKLED_WEIGHTS = "adapter_model.bin"


# What transformers' save_pretrained writes for a whole model: its weights, sharded or not, and their index.
MODEL_WEIGHTS = re.compile(
    r"(model|pytorch_model|tf_model|flax_model)(-\d+-of-\d+)?\.(safetensors|bin|h5|msgpack)(\.index\.json)?"
)


def preflight(folder: Path, paths: dict[str, Path]) -> None:
    """Refuse, before a byte is sent, a folder that is not an adapter: a full model checkpoint (its
    weights are gigabytes the hub would refuse after receiving them), or a folder without PEFT's config."""
    weights = sorted(p for p in paths if MODEL_WEIGHTS.fullmatch(p.rsplit("/", 1)[-1]))
    size = sum(paths[p].stat().st_size for p in weights)
    if "adapter_config.json" not in paths:
        if weights or "config.json" in paths:
            raise ValueError(
                f"{folder} is a full model checkpoint ({', '.join(weights[:3]) or 'config.json'}), not a PEFT "
                "adapter: push the folder PEFT's save_pretrained wrote for the adapter (adapter_config.json and "
                "adapter_model.safetensors)"
            )
        raise ValueError(f"{folder} has no adapter_config.json: it is not a PEFT adapter folder")
    if weights:
        raise ValueError(
            f"{folder} holds a full model's weights beside the adapter ({', '.join(weights[:3])}, "
            f"{size / 1e6:.0f} MB): leave them out with --exclude 'model*' (exclude=['model*']) or push the "
            "adapter's own folder"
        )


def convert_pickled_weights(paths: dict[str, Path], into: Path) -> str | None:
    """An adapter saved as a pickle (adapter_model.bin, safe_serialization=False) with no safetensors
    beside it: its tensors read with torch.load(weights_only=True), which runs no code from the file,
    and written as adapter_model.safetensors in `into`, which the upload sends instead (the hub never
    unpickles anything). What was done, for the user; None when there was nothing to convert."""
    if PICKLED_WEIGHTS not in paths or "adapter_model.safetensors" in paths:
        return None
    import torch
    from safetensors.torch import save_file

    try:
        tensors = torch.load(paths[PICKLED_WEIGHTS], map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise ValueError(
            f"{paths[PICKLED_WEIGHTS]} cannot be read as plain tensors ({e}); save it with PEFT's "
            "save_pretrained (safetensors) instead"
        ) from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ValueError(f"{paths[PICKLED_WEIGHTS]} is not a dict of tensors, as PEFT saves an adapter")
    target = into / "adapter_model.safetensors"
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(target))
    del paths[PICKLED_WEIGHTS]
    paths["adapter_model.safetensors"] = target
    return f"converted {PICKLED_WEIGHTS} to adapter_model.safetensors here (torch.load with weights_only=True)"


class Sent:
    """Bytes of an upload read so far, told to a progress callback."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def reading(self, f: Any) -> Any:
        if self.progress is None:
            return f
        counter = self

        class Counted:  # the file, its reads counted
            name = getattr(f, "name", "")

            def read(self, n: int = -1) -> bytes:
                data = f.read(n)
                counter.done += len(data)
                counter.progress(counter.done, counter.total)
                return data

            def __getattr__(self, attr: str) -> Any:
                return getattr(f, attr)

        return Counted()
