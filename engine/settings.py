"""Persistent settings that every process of one deployment shares through the `setting` table."""
from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .errors import ApprovalsError
from .store import Database, setting

SECRET_KEY = "secret_key"


def get(db: Database, key: str) -> str | None:
    with db.read() as conn:
        return conn.execute(select(setting.c.value).where(setting.c.key == key)).scalar()


def secret_key(db: Database) -> str:
    """The signing key for tokens: made once, then the same for every web process on this database."""
    try:
        existing = get(db, SECRET_KEY)
    except SQLAlchemyError as exc:
        where = make_url(db.url).render_as_string(hide_password=True)
        raise ApprovalsError(f"cannot read the settings from {where} ({type(exc).__name__}); "
                             "run `approvals init` to create the schema") from None
    if existing:
        return existing

    def create(conn):
        # Two processes starting at once both try; the loser's insert does nothing and it reads the winner's key.
        insert = sqlite_insert if db.is_sqlite else pg_insert
        conn.execute(insert(setting).values(key=SECRET_KEY, value=secrets.token_hex(32))
                     .on_conflict_do_nothing(index_elements=[setting.c.key]))
        return conn.execute(select(setting.c.value).where(setting.c.key == SECRET_KEY)).scalar_one()

    return db.run(create)
