"""The cluster fixtures, for every test under ``tests/ha`` (see README.md there).

The ``xdist_group`` marks here (one worker per cluster within a run) work
through the suite-wide hook of tests/xdist_groups.py; the fixtures' file
locks keep two runs (two worktrees) apart.
"""

from tests.ha.postgres import _postgres_ports, pg_cluster, solo_postgres

__all__ = ["_postgres_ports", "pg_cluster", "solo_postgres"]
