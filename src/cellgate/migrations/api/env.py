"""Alembic environment for this migration line; see cellgate.migrations.env_common."""

from alembic import context

from cellgate.migrations.env_common import run_migrations

run_migrations(context)
