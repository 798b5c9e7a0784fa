"""Template protections applied before encryption."""
