"""Reading a safetensors header without loading any tensor, and checking it is sound.

Layout: 8 bytes little-endian header length N, N bytes of JSON, then the data buffer.
Every tensor names a dtype, a shape and [begin, end) offsets into the buffer.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.intake.parsing import parse_json
from quiver_hub.registry.limits import MAX_HEADER_BYTES

# Floating types only: LoRA factors are weights. Anything else is refused by name.
ITEM_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(f: BinaryIO, file_size: int, filename: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check the header of a safetensors file of `file_size` bytes.

    Returns the tensors by name and the `__metadata__` dict. Raises InvalidAdapter with a message
    that names the file and the problem.
    """

    def bad(msg: str) -> InvalidAdapter:
        return InvalidAdapter(f"{filename}: {msg}")

    if file_size < 8:
        raise bad(f"file is truncated ({file_size} bytes; a safetensors file starts with an 8-byte length)")
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        raise bad(f"header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise bad(f"header length {n} runs past the end of the file ({file_size} bytes)")
    header = parse_json(f.read(n), f"{filename}: header")  # duplicate keys refused: parsers would disagree
    if not isinstance(header, dict):
        raise bad("header must be a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ must map strings to strings")

    buffer_size = file_size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, spec in header.items():
        if not isinstance(spec, dict):
            raise bad(f"tensor {name!r} has no dtype/shape/data_offsets entry")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in ITEM_SIZES:
            raise bad(f"tensor {name!r} has dtype {dtype!r}; accepted dtypes are {', '.join(ITEM_SIZES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if begin > end or end > buffer_size:
            raise bad(
                f"tensor {name!r} has data_offsets [{begin}, {end}] outside the "
                f"{buffer_size}-byte data buffer (is the file truncated?)"
            )
        info = TensorInfo(name, dtype, tuple(shape), begin, end)
        if end - begin != info.numel * ITEM_SIZES[dtype]:
            raise bad(
                f"tensor {name!r} spans {end - begin} bytes but shape {shape} of {dtype} needs "
                f"{info.numel * ITEM_SIZES[dtype]}"
            )
        tensors[name] = info

    # The tensors must tile the buffer: no overlap, no gap, nothing after the last one.
    position = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < position:
            raise bad(f"tensor {info.name!r} overlaps the tensor before it (offset {info.begin} < {position})")
        if info.begin > position:
            raise bad(f"there is an unused gap of {info.begin - position} bytes before tensor {info.name!r}")
        position = info.end
    if position != buffer_size:
        raise bad(f"{buffer_size - position} bytes after the last tensor belong to no tensor")
    return tensors, metadata
