"""The append-only audit trail: who did what, when, on which case and task."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from .statements import HotStatement
from .store import audit_event


def record(conn, at: datetime, actor: str | None, type_: str, instance_id: int | None = None,
           task_id: int | None = None, data: dict | None = None) -> None:
    conn.execute(audit_event.insert().values(
        at=at, actor=actor, type=type_, instance_id=instance_id, task_id=task_id, data=data or {}))


_INSERT = HotStatement(audit_event.insert(), columns=("at", "actor", "type", "instance_id", "task_id", "data"))


def record_many(conn, rows: list[dict]) -> None:
    if rows:
        _INSERT.execute(conn, rows)


def for_instance(conn, instance_id: int) -> list[dict]:
    rows = conn.execute(
        select(audit_event).where(audit_event.c.instance_id == instance_id).order_by(audit_event.c.id)
    ).mappings()
    return [_as_dict(row) for row in rows]


def _as_dict(row) -> dict:
    return {"id": row["id"], "at": row["at"].isoformat(), "actor": row["actor"], "type": row["type"],
            "instance_id": row["instance_id"], "task_id": row["task_id"], "data": row["data"]}
