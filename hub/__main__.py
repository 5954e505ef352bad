"""`python -m hub` is the `quiver` command."""

from hub.cli import app

app()
