"""What tests and benchmarks share: servers, adapters written to disk, nginx in front of a hub, the browser."""
