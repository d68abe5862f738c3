"""The two Alembic migration lines: ``api`` (the API database) and ``cell``."""
