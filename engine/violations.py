"""Violations (电子监察 红灯): an append-only record of each breach, annotated and closed by supervisors; 红旗窗口 ranking."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import rollup
from .accounts import User, department_names
from .errors import Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .store import (
    Database,
    audit_event,
    department,
    human_task,
    process_definition,
    process_instance,
    rating,
    violation,
    violation_note,
)
from .timekeeping import calendar_for

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
SUPERVISORS = ("supervisor", "admin")
# Audit event type -> violation kind.
KINDS = {"task_red": "step_late", "case_red": "case_late", "statutory_limit_exceeded": "statutory_exceeded",
         "deemed_consent": "deemed_consent"}
KIND_NAMES = ("step_late", "case_late", "statutory_exceeded", "deemed_consent")
MAX_NOTE = 4000


def record_violations(conn, events: list[dict]) -> int:
    """Record a violation for each red event among `events` (audit-event dicts), in the caller's transaction.

    Task events blame the task's departments and holder; case events blame whoever holds the case's open
    steps at that moment. Recording the same breach twice is a no-op, so every path may call this.
    """
    rows = []
    for event in events:
        kind = KINDS.get(event.get("type"))
        if kind is None or event.get("instance_id") is None:
            continue
        data = event.get("data") or {}
        due = _parse(data.get("due_at"))
        if event.get("task_id") is not None:
            task = conn.execute(select(human_task.c.bpmn_id, human_task.c.departments, human_task.c.assignee,
                                       human_task.c.due_at).where(human_task.c.id == event["task_id"])).first()
            departments = data.get("departments") or (task.departments if task else None) or [None]
            clerk = data.get("assignee") or (task.assignee if task else None)
            bpmn_id = data.get("bpmn_id") or (task.bpmn_id if task else None)
            holders = [(d, clerk) for d in departments]
            due = due or (task.due_at if task else None)
        else:
            bpmn_id = None
            holders = [(d, t.assignee) for t in conn.execute(
                select(human_task.c.departments, human_task.c.assignee).where(
                    human_task.c.instance_id == event["instance_id"], human_task.c.status == "open"))
                for d in (t.departments or ["window"])] or [(None, None)]
        for dept, clerk in dict.fromkeys(holders):
            rows.append({"source_key": f"{kind}:{event['instance_id']}:{event.get('task_id') or '-'}:{dept or '-'}",
                         "kind": kind, "instance_id": event["instance_id"], "task_id": event.get("task_id"),
                         "bpmn_id": bpmn_id, "department": dept, "clerk": clerk, "occurred_at": event["at"],
                         "due_at": due})
    if not rows:
        return 0
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    statement = insert(violation).on_conflict_do_nothing(index_elements=["source_key"]).returning(violation.c.id)
    # one statement per row (red events come a few at a time): RETURNING tells which were new
    return sum(len(conn.execute(statement.values(**row)).all()) for row in rows)


def catch_up(db: Database) -> int:
    """Record deemed consents from the audit trail that no caller recorded yet; returns how many were new.

    The light sweep records its red events itself; a deemed consent happens inside a workflow step, so until
    the runtime records it too this reads the trail from a day before the newest one already recorded.
    """
    def run(conn):
        newest = conn.execute(select(func.max(violation.c.occurred_at))
                              .where(violation.c.kind == "deemed_consent")).scalar()
        query = select(audit_event).where(audit_event.c.type == "deemed_consent")
        if newest is not None:
            query = query.where(audit_event.c.at >= newest - timedelta(days=1))
        rows = conn.execute(query.order_by(audit_event.c.id)).mappings().all()
        return record_violations(conn, [dict(r) for r in rows])
    return db.run(run)


def list_violations(db: Database, user: User, status: str | None = None, kind: str | None = None,
                    department_key: str | None = None, start: date | None = None, end: date | None = None,
                    limit: int = 100, offset: int = 0) -> dict:
    _require_supervisor(user)
    problems = []
    if status not in (None, "", "open", "closed"):
        problems.append(Problem("status must be open or closed", field="status"))
    if kind not in (None, "") and kind not in KIND_NAMES:
        problems.append(Problem(f"kind must be one of {', '.join(KIND_NAMES)}", field="kind"))
    if not 1 <= limit <= 1000 or offset < 0:
        problems.append(Problem("limit must be 1..1000 and offset >= 0", field="limit"))
    if problems:
        raise InvalidInput(problems)
    catch_up(db)
    where = []
    if status == "open":
        where.append(violation.c.closed_at.is_(None))
    elif status == "closed":
        where.append(violation.c.closed_at.is_not(None))
    if kind:
        where.append(violation.c.kind == kind)
    if department_key:
        where.append(violation.c.department == department_key)
    if start:
        where.append(violation.c.occurred_at >= _local_midnight(start))
    if end:
        where.append(violation.c.occurred_at < _local_midnight(end + timedelta(days=1)))
    notes = (select(violation_note.c.violation_id, func.count().label("notes"))
             .group_by(violation_note.c.violation_id).subquery())
    query = (select(violation, process_instance.c.case_no, process_definition.c.key.label("process_key"),
                    department.c.name.label("department_name"), func.coalesce(notes.c.notes, 0).label("notes"))
             .join(process_instance, process_instance.c.id == violation.c.instance_id)
             .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
             .outerjoin(department, department.c.key == violation.c.department)
             .outerjoin(notes, notes.c.violation_id == violation.c.id)
             .where(and_(True, *where)))
    with db.read() as conn:
        total = conn.execute(select(func.count()).select_from(violation).where(and_(True, *where))).scalar()
        rows = conn.execute(query.order_by(violation.c.occurred_at.desc(), violation.c.id.desc())
                            .limit(limit).offset(offset)).mappings().all()
    return {"total": total, "items": [_as_dict(r) for r in rows]}


def get_violation(db: Database, violation_id: int, user: User) -> dict:
    _require_supervisor(user)
    with db.read() as conn:
        row = conn.execute(select(violation, process_instance.c.case_no, process_definition.c.key.label("process_key"),
                                  department.c.name.label("department_name"))
                           .join(process_instance, process_instance.c.id == violation.c.instance_id)
                           .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                           .outerjoin(department, department.c.key == violation.c.department)
                           .where(violation.c.id == violation_id)).mappings().first()
        if row is None:
            raise NotFound(f"no violation {violation_id}")
        notes = conn.execute(select(violation_note).where(violation_note.c.violation_id == violation_id)
                             .order_by(violation_note.c.id)).mappings().all()
    return {**_as_dict(row), "notes": [{"id": n["id"], "at": n["at"].isoformat(), "author": n["author"],
                                        "action": n["action"], "text": n["text"]} for n in notes]}


def annotate(db: Database, violation_id: int, user: User, text: str) -> dict:
    """Add a supervisor's note (情况说明, 整改要求); a closed violation still takes notes."""
    return _note(db, violation_id, user, text, close=False)


def close(db: Database, violation_id: int, user: User, text: str) -> dict:
    """Close a violation with a remark; it stays on record and cannot be reopened or deleted."""
    return _note(db, violation_id, user, text, close=True)


def _note(db: Database, violation_id: int, user: User, text: str, close: bool) -> dict:
    _require_supervisor(user)
    text = (text or "").strip() if isinstance(text, str) else ""
    if not text:
        raise InvalidInput(Problem("write a note" if not close else "give the reason for closing", field="text"))
    if len(text) > MAX_NOTE:
        raise InvalidInput(Problem(f"at most {MAX_NOTE} characters", field="text"))

    def run(conn):
        row = conn.execute(select(violation.c.closed_at).where(violation.c.id == violation_id)).first()
        if row is None:
            raise NotFound(f"no violation {violation_id}")
        now = db.config.now()
        if close:
            if row.closed_at is not None:
                raise Conflict(f"violation {violation_id} is already closed")
            conn.execute(update(violation).where(violation.c.id == violation_id, violation.c.closed_at.is_(None))
                         .values(closed_at=now, closed_by=user.username))
        conn.execute(violation_note.insert().values(violation_id=violation_id, at=now, author=user.username,
                                                    action="close" if close else "note", text=text))
    db.run(run)
    return get_violation(db, violation_id, user)


def ranking(db: Database, user: User, month: str | None = None, now: datetime | None = None) -> dict:
    """Monthly 红旗窗口 ranking: departments by their steps, windows (clerks who received cases) by their cases.

    Read from the statistics roll-up (steps finished per department, cases completed per receiving clerk)
    plus a live count of the days not rolled up yet; ratings of departments and violations are counted live.
    """
    _require_supervisor(user)
    now = now or db.config.now()
    first = _month(month) if month else now.astimezone(LOCAL_TZ).date().replace(day=1)
    following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    start, end = _local_midnight(first), _local_midnight(following)
    rollup.roll_up(db, now, max_days=rollup.REQUEST_ROLL_UP_DAYS, wait=False)
    with rollup.read_snapshot(db) as conn:
        calendar = calendar_for(db, conn)
        per_day = calendar.office_hours.seconds_per_day
        names = department_names(conn)
        by_dept, by_window = rollup.monthly_figures(conn, first, following, calendar)
        dept_ratings = {r.department: (r.n, r.total) for r in conn.execute(
            select(rating.c.department, func.count().label("n"), func.sum(rating.c.score).label("total"))
            .where(rating.c.rated_at >= start, rating.c.rated_at < end, rating.c.department.is_not(None))
            .group_by(rating.c.department))}
        late = dict(conn.execute(select(violation.c.department, func.count()).where(
            violation.c.occurred_at >= start, violation.c.occurred_at < end).group_by(violation.c.department)).all())
    departments = []
    for key in sorted({k for k, v in by_dept.items() if v.get("step_completed")} | {k for k in dept_ratings if k}):
        entry = by_dept.get(key, {})
        completed = entry.get("step_completed", 0)
        count, total = dept_ratings.get(key, (0, None))
        departments.append({
            "department": key, "name": names.get(key, key), "completed": completed,
            "on_time_rate": _ratio(completed - entry.get("step_late", 0), completed),
            "average_working_days": round(entry.get("step_seconds", 0) / completed / per_day, 2) if completed else None,
            "violations": late.get(key, 0), "ratings": count,
            "satisfaction": round(int(total) / count, 2) if count else None})
    window_rows = []
    for clerk in sorted(by_window):
        entry = by_window[clerk]
        completed = entry.get("dur_n", 0)
        if not completed:
            continue
        count = entry.get("ratings", 0)
        window_rows.append({
            "clerk": clerk, "completed": completed, "on_time_rate": _ratio(entry.get("dur_on_time", 0), completed),
            "average_working_days": round(entry.get("dur_net", 0) / completed / per_day, 2),
            "ratings": count, "satisfaction": round(entry.get("rating_sum", 0) / count, 2) if count else None})
    return {"month": first.strftime("%Y-%m"), "departments": _rank(departments), "windows": _rank(window_rows)}


def _rank(rows: list[dict]) -> list[dict]:
    """Best first: on-time rate, then speed (fewer working days), then satisfaction; 红旗 for the top third."""
    def key(row):
        return (-(row["on_time_rate"] if row["on_time_rate"] is not None else -1),
                row["average_working_days"] if row["average_working_days"] is not None else float("inf"),
                -(row["satisfaction"] or 0))
    ordered = sorted(rows, key=key)
    flags = max(1, len(ordered) // 3) if ordered else 0
    for position, row in enumerate(ordered, 1):
        row["rank"] = position
        row["red_flag"] = position <= flags and row["completed"] > 0
    return ordered


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def parse_day(text: str | None, field: str) -> date | None:
    """A filter date from a query string, or None when left empty."""
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(Problem("must be a date like 2026-10-31", field=field)) from None


def _month(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except (TypeError, ValueError):
        raise InvalidInput(Problem("month must look like 2026-10", field="month")) from None


def _local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ)


def _parse(value):
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _require_supervisor(user: User) -> None:
    if not user.has_role(*SUPERVISORS):
        raise PermissionDenied("violations are for supervisors (电子监察) and administrators")


def _as_dict(row) -> dict:
    result = {k: row[k] for k in ("id", "kind", "instance_id", "task_id", "bpmn_id", "department", "clerk",
                                  "closed_by", "case_no", "process_key")}
    result["department_name"] = row.get("department_name") or row["department"]
    for k in ("occurred_at", "due_at", "closed_at"):
        result[k] = row[k].isoformat() if row[k] is not None else None
    result["status"] = "closed" if row["closed_at"] is not None else "open"
    if "notes" in row:
        result["note_count"] = row["notes"]
    return result
