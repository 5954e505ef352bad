"""Reads tried again: a lost connection or a 502/503/504 (a hub restarting, a proxy between) is retried with
exponential backoff; any other error, and the last one, is raised."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from quiver_hub.errors import HubError

RETRIES = 4  # after the first try: 0.5, 1, 2 and 4 s apart
RETRIES_REFUSED = 2  # a hub that refuses connections is down more often than restarting: 0.5 and 1 s
TRANSIENT = (502, 503, 504)
T = TypeVar("T")


def retrying(action: Callable[[], T]) -> T:
    """`action`, tried again after a lost connection or a 502/503/504 (a hub restarting, a proxy between),
    with exponential backoff; any other error, and the last one, is raised."""
    for attempt in range(RETRIES + 1):
        try:
            return action()
        except httpx.TransportError as e:  # lost in the middle of a download
            if attempt == RETRIES:
                raise HubError(0, "unreachable", f"the connection to the hub was lost: {e}") from None
        except HubError as e:
            refused = e.status == 0 and e.code == "unreachable"
            if not (refused or e.status in TRANSIENT) or attempt == (RETRIES_REFUSED if refused else RETRIES):
                raise
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")
