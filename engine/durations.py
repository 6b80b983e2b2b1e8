"""Case durations: the office time each completed case took on the working-day calendar, kept in case_duration."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .store import Database, case_duration, clock_pause, process_instance
from .timekeeping import calendar_for

REFRESH_BATCH = 5000


def refresh_durations(db: Database, now: datetime | None = None) -> int:
    """Work out, on the calendar, the office time each newly completed case took; returns how many were added."""
    added = 0
    while True:
        count = db.run(lambda conn: _refresh_batch(db, conn))
        added += count
        if count < REFRESH_BATCH:
            return added


def _refresh_batch(db: Database, conn) -> int:
    last = conn.execute(select(func.max(case_duration.c.ended_at))).scalar()
    query = (select(process_instance.c.id, process_instance.c.started_at, process_instance.c.ended_at,
                    process_instance.c.due_at, process_instance.c.statutory_due_at)
             .outerjoin(case_duration, case_duration.c.instance_id == process_instance.c.id)
             .where(process_instance.c.status == "completed", process_instance.c.ended_at.is_not(None),
                    case_duration.c.instance_id.is_(None)))
    if last is not None:
        # Only recent ends can be missing: each batch records every case ended before its newest one.
        query = query.where(process_instance.c.ended_at >= last - timedelta(days=1))
    rows = conn.execute(query.order_by(process_instance.c.ended_at).limit(REFRESH_BATCH)).all()
    if not rows:
        return 0
    calendar = calendar_for(db, conn)
    pauses: dict[int, list] = {}
    for p in conn.execute(select(clock_pause.c.instance_id, clock_pause.c.started_at, clock_pause.c.working_seconds)
                          .where(clock_pause.c.instance_id.in_([r.id for r in rows]))):
        pauses.setdefault(p.instance_id, []).append(p)
    per_day = calendar.office_hours.seconds_per_day
    values = []
    for r in rows:
        paused = sum(p.working_seconds if p.working_seconds is not None
                     else calendar.working_seconds_between(p.started_at, r.ended_at) for p in pauses.get(r.id, []))
        taken = calendar.working_seconds_between(r.started_at, r.ended_at)
        committed = calendar.working_seconds_between(r.started_at, r.due_at) - paused if r.due_at else None
        statutory = (calendar.working_seconds_between(r.started_at, r.statutory_due_at) - paused
                     if r.statutory_due_at else None)
        on_time = r.due_at is None or r.ended_at <= r.due_at
        early = r.due_at is not None and r.ended_at < r.due_at and \
            calendar.working_seconds_between(r.ended_at, r.due_at) >= per_day
        values.append({"instance_id": r.id, "ended_at": r.ended_at, "taken_seconds": round(taken),
                       "paused_seconds": round(paused), "net_seconds": round(taken) - round(paused),
                       "committed_seconds": round(committed) if committed is not None else None,
                       "statutory_seconds": round(statutory) if statutory is not None else None,
                       "on_time": on_time, "early": early})
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    conn.execute(insert(case_duration).on_conflict_do_nothing(index_elements=["instance_id"]), values)
    return len(values)
