"""Quiver's thin client (issue 5): Hub, Adapter, merge/unmerge, Arrow routing. Not built yet."""
