"""A real headless Chromium (Debian's, driven by Playwright: browsers cannot be downloaded here) for the
tests that look at pages. Outside CI, the tests skip when there is no Chromium; in CI it must be there
(`make services` installs it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.servers import require_program

CHROMIUM = os.environ.get("QUIVER_TEST_CHROMIUM", "/usr/bin/chromium")
# As the machine's own probe starts it: no sandbox (root), and nothing that reaches for Google's hosts.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def browser() -> Iterator:
    """A Playwright Browser on the system Chromium."""
    require_program(CHROMIUM, "browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def offline_page(browser, allowed_origin: str, blocked: list[str]):  # noqa: ANN001, ANN201
    """A page whose requests to anything but `allowed_origin` fail, as with the network cut; the URLs
    it tried are appended to `blocked`."""
    context = browser.new_context()

    def gate(route) -> None:  # noqa: ANN001
        if route.request.url.startswith(allowed_origin):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", gate)
    return context.new_page()
