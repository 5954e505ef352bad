"""The catalogue: adapters and their versions as stored, read, published, edited, tagged and committed."""
