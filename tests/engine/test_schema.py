"""The Alembic migrations build exactly the tables engine/store.py declares, on SQLite and PostgreSQL."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from engine.store import metadata


def test_migrations_match_the_declared_tables(db):
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert differences == []
