"""`python -m quiver_hub` is the `quiver` command."""

from quiver_hub.cli import main

main()
