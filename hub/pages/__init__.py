"""The pages people browse: server-side templates over the same registry functions as the API."""
