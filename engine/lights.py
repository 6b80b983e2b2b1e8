"""Supervision lights: green, yellow (预警) near the deadline, red (逾期) past it — counted in office time."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from . import audit, violations
from .store import Database, human_task, process_instance
from .timekeeping import calendar_for

GREEN, YELLOW, RED = "green", "yellow", "red"
# Yellow starts at most one working day before the deadline; no holiday break in China is longer
# than this many calendar days, so rows due later cannot change colour yet and are not read.
_LOOKAHEAD = timedelta(days=14)


def light_of(calendar, now: datetime, started_at: datetime | None, due_at: datetime | None,
             yellow_seconds: float | None = None) -> str:
    """Yellow once the office time left is at most min(1 working day, half the limit) unless configured."""
    if due_at is None:
        return GREEN
    if now >= due_at:
        return RED
    left = calendar.working_seconds_between(now, due_at)
    if yellow_seconds is None:
        limit = calendar.working_seconds_between(started_at, due_at) if started_at else left
        yellow_seconds = min(calendar.office_hours.seconds_per_day, limit / 2)
    return YELLOW if left <= yellow_seconds else GREEN


def sweep_lights(db: Database, now: datetime | None = None) -> int:
    """Record each task's and case's change of light (and statutory-limit breaches) as events; returns changes."""
    now = now or db.config.now()

    def sweep(conn):
        calendar = calendar_for(db, conn)
        events = []
        tasks = conn.execute(select(human_task.c.id, human_task.c.instance_id, human_task.c.bpmn_id,
                                    human_task.c.departments, human_task.c.assignee, human_task.c.created_at,
                                    human_task.c.due_at, human_task.c.light, human_task.c.yellow_seconds)
                             .where(human_task.c.status == "open", human_task.c.due_at <= now + _LOOKAHEAD,
                                    or_(human_task.c.light.is_(None), human_task.c.light != RED))).all()
        for row in tasks:
            light = light_of(calendar, now, row.created_at, row.due_at, row.yellow_seconds)
            if light != (row.light or GREEN) and _changed(conn, human_task, row.id, row.light, light=light):
                events.append(_event(now, "task_" + light, row.instance_id, row.id, bpmn_id=row.bpmn_id,
                                     departments=row.departments, assignee=row.assignee, due_at=row.due_at))
        cases = conn.execute(select(process_instance.c.id, process_instance.c.started_at, process_instance.c.due_at,
                                    process_instance.c.light, process_instance.c.statutory_due_at,
                                    process_instance.c.yellow_seconds,
                                    process_instance.c.statutory_exceeded_at)
                             .where(process_instance.c.status == "running", process_instance.c.paused_since.is_(None),
                                    or_(process_instance.c.due_at <= now + _LOOKAHEAD,
                                        process_instance.c.statutory_due_at <= now))).all()
        for row in cases:
            light = light_of(calendar, now, row.started_at, row.due_at, row.yellow_seconds)
            if light != (row.light or GREEN) and _changed(conn, process_instance, row.id, row.light, light=light):
                events.append(_event(now, "case_" + light, row.id, None, due_at=row.due_at))
            if (row.statutory_due_at and row.statutory_due_at <= now and row.statutory_exceeded_at is None
                    and conn.execute(update(process_instance).where(
                        process_instance.c.id == row.id, process_instance.c.statutory_exceeded_at.is_(None))
                        .values(statutory_exceeded_at=now)).rowcount):
                events.append(_event(now, "statutory_limit_exceeded", row.id, None, due_at=row.statutory_due_at))
        violations.record_violations(conn, events)
        audit.record_many(conn, events)
        return len(events)

    return db.run(sweep)


def _changed(conn, table, row_id: int, old: str | None, light: str) -> bool:
    """Compare-and-set, so two sweeping processes never record the same change twice."""
    same_as_read = table.c.light.is_(None) if old is None else table.c.light == old
    return conn.execute(update(table).where(table.c.id == row_id, same_as_read).values(light=light)).rowcount == 1


def _event(now, type_, instance_id, task_id, **data) -> dict:
    data = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}
    return {"at": now, "actor": None, "type": type_, "instance_id": instance_id, "task_id": task_id, "data": data}
