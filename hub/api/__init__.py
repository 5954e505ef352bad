"""Quiver's own API under /v1: adapters, discovery (search and routing), clusters, accounts, health."""
