"""The content-addressed blob store (a local directory or an S3-compatible bucket) and its garbage collection."""
