"""The `quiver` command, a package of command modules as huggingface_hub's CLI is: `base` (the app, its
options, `main`), `adapters`, `account` and `machine`. Importing this package registers every command."""

from quiver_hub.cli import account, adapters, machine
from quiver_hub.cli.base import app, main

__all__ = ["account", "adapters", "app", "machine", "main"]
