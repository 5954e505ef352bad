"""Quiver's HTTP face: the FastAPI app, its routes, auth, settings and the `quiver` operator CLI."""
