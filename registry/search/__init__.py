"""Finding adapters: text embeddings, the search and prototype indexes, their snapshots, and ranking."""
