"""JSON from untrusted bytes: every file, header and line a user sends goes through parse_json.

Python's json module accepts what a registry must not: NaN and Infinity (which then poison sums and
database rows), duplicate keys (two parsers of one file read different values: safetensors' Rust reader
takes the first, Python's json the last), and nesting deep enough to exhaust the stack.
"""

from __future__ import annotations

import json
from typing import Any

from quiver_hub.registry.errors import InvalidAdapter, RegistryError
from quiver_hub.registry.limits import MAX_JSON_DEPTH


def parse_json(
    data: bytes | str, what: str, error: type[RegistryError] = InvalidAdapter, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """The JSON value in `data`, or `error` naming `what` and the problem."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise error(f"{what}: the key {key!r} appears twice")
            out[key] = value
        return out

    def no_constant(name: str) -> None:
        raise error(f"{what}: {name} is not a JSON number; use a finite number")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except UnicodeDecodeError:
        raise error(f"{what}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise error(f"{what}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{what}: nested more than {max_depth} levels deep") from None
    if depth(value) > max_depth:
        raise error(f"{what}: nested more than {max_depth} levels deep")
    return value


def depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest
