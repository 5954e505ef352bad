"""What makes an upload an adapter we accept: validation, safe parsing, and what is computed once per version."""
