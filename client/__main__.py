"""`python -m client` is the `quiver` command."""

from client.cli import main

main()
