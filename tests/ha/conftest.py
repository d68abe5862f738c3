"""The cluster fixtures, for every test under ``tests/ha`` (see README.md there)."""

from tests.ha.postgres import _postgres_ports, pg_cluster, solo_postgres

__all__ = ["_postgres_ports", "pg_cluster", "solo_postgres"]
