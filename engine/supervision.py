"""Electronic supervision read side: the live board of lights and the statistics counted from the audit trail."""
from __future__ import annotations

import csv
import io
import json
import statistics as stats_lib
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Date,
    Integer,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .accounts import User
from .errors import InvalidInput, PermissionDenied, Problem
from .store import (
    Database,
    app_user,
    audit_event,
    case_duration,
    clock_pause,
    department,
    human_task,
    process_definition,
    process_instance,
    rating,
    supervision_day,
)
from .timekeeping import calendar_for

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
LOCAL_OFFSET_HOURS = 8   # China has kept UTC+8 without daylight saving since 1991; months are local months
BOARD_ROLES = ("supervisor", "admin", "lead")
SUPERVISORS = ("supervisor", "admin")
RED_LIST_LIMIT = 200
MAX_PERIOD_DAYS = 3 * 366
REFRESH_BATCH = 5000
ROLL_UP_CHUNK_DAYS = 31
REQUEST_ROLL_UP_DAYS = 62
ROLLED = "_rolled"
TREND_METRICS = ("ev:case_started", "dur_n", "dur_on_time", "ev:case_red")
HISTOGRAM_BUCKET_SECONDS = 2520   # a tenth of a 7-hour working day
LIGHTS = ("green", "yellow", "red")
# Case-level audit event types and the figure each one counts.
CASE_EVENTS = {"case_started": "received", "case_completed": "completed", "case_terminated": "terminated",
               "case_yellow": "case_warnings", "case_red": "cases_overdue",
               "statutory_limit_exceeded": "statutory_exceeded", "clock_paused": "pauses"}
TASK_EVENTS = {"task_yellow": "task_warnings", "task_red": "tasks_overdue", "deemed_consent": "deemed_consents",
               "task_sent_back": "send_backs", "task_completed": "tasks_completed"}


def scope_of(user: User) -> list[str] | None:
    """Supervisors and administrators see everything; a lead (科室负责人) sees only their own departments."""
    if user.has_role(*SUPERVISORS):
        return None
    if user.has_role("lead") and user.departments:
        return list(user.departments)
    raise PermissionDenied("the supervision board is for supervisors, administrators and department leads")


# --- the live board ---------------------------------------------------------------------------------

def board(db: Database, user: User, now: datetime | None = None, red_limit: int = RED_LIST_LIMIT) -> dict:
    """Open tasks and running cases by light, per department and flow, and the red items, most overdue first."""
    scope = scope_of(user)
    now = now or db.config.now()
    with db.read() as conn:
        calendar = calendar_for(db, conn)
        per_day = calendar.office_hours.seconds_per_day
        names = dict(conn.execute(select(department.c.key, department.c.name)).all())
        flows = dict(conn.execute(select(process_definition.c.key, process_definition.c.name)
                                  .order_by(process_definition.c.version)).all())
        light = func.coalesce(human_task.c.light, "green")
        # json has no equality in PostgreSQL: group by its text and read the list back from the text
        open_tasks = (select(cast(human_task.c.departments, String).label("departments"),
                             process_definition.c.key, light.label("light"), func.count().label("n"))
                      .join(process_instance, process_instance.c.id == human_task.c.instance_id)
                      .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                      # open steps belong to running cases: saying so lets the join read only those
                      .where(human_task.c.status == "open", process_instance.c.status == "running",
                             *_task_scope(scope))
                      .group_by(cast(human_task.c.departments, String), process_definition.c.key, light))
        task_rows = conn.execute(open_tasks).all()
        case_light = func.coalesce(process_instance.c.light, "green")
        case_rows = conn.execute(
            select(process_definition.c.key, case_light.label("light"), func.count().label("n"))
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(process_instance.c.status == "running", *_case_scope(scope))
            .group_by(process_definition.c.key, case_light)).all()
        red_tasks = conn.execute(
            select(human_task.c.id, human_task.c.instance_id, human_task.c.bpmn_id, human_task.c.name,
                   human_task.c.departments, human_task.c.assignee, human_task.c.due_at, process_instance.c.case_no,
                   process_instance.c.applicant, process_definition.c.key)
            .join(process_instance, process_instance.c.id == human_task.c.instance_id)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(human_task.c.status == "open", human_task.c.light == "red", process_instance.c.status == "running",
                   *_task_scope(scope))
            .order_by(human_task.c.due_at, human_task.c.id).limit(red_limit)).mappings().all()
        red_cases = conn.execute(
            select(process_instance.c.id, process_instance.c.case_no, process_instance.c.applicant,
                   process_instance.c.due_at, process_instance.c.paused_since, process_definition.c.key)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(process_instance.c.status == "running", process_instance.c.light == "red", *_case_scope(scope))
            .order_by(process_instance.c.due_at, process_instance.c.id).limit(red_limit)).mappings().all()
        holders: dict[int, list] = {}
        if red_cases:
            for row in conn.execute(select(human_task.c.instance_id, human_task.c.departments, human_task.c.assignee)
                                    .where(human_task.c.instance_id.in_([c["id"] for c in red_cases]),
                                           human_task.c.status == "open")):
                holders.setdefault(row.instance_id, []).append(
                    {"departments": row.departments, "assignee": row.assignee})

    by_department: dict[str, dict] = {}
    by_flow: dict[str, dict] = {}
    totals = {"tasks": dict.fromkeys(LIGHTS, 0), "cases": dict.fromkeys(LIGHTS, 0)}
    for row in task_rows:
        light_name = row.light if row.light in LIGHTS else "green"
        for key in _departments(row.departments):
            if scope is None or key in scope:
                by_department.setdefault(key, dict.fromkeys(LIGHTS, 0))[light_name] += row.n
        by_flow.setdefault(row.key, {"tasks": dict.fromkeys(LIGHTS, 0), "cases": dict.fromkeys(LIGHTS, 0)})
        by_flow[row.key]["tasks"][light_name] += row.n
        totals["tasks"][light_name] += row.n
    for row in case_rows:
        light_name = row.light if row.light in LIGHTS else "green"
        by_flow.setdefault(row.key, {"tasks": dict.fromkeys(LIGHTS, 0), "cases": dict.fromkeys(LIGHTS, 0)})
        by_flow[row.key]["cases"][light_name] += row.n
        totals["cases"][light_name] += row.n

    def overdue(due):
        seconds = calendar.working_seconds_between(due, now) if due and due < now else 0
        return {"overdue_working_days": round(seconds / per_day, 2), "overdue_working_hours": round(seconds / 3600, 1)}

    red = [{"kind": "task", "task_id": r["id"], "instance_id": r["instance_id"], "case_no": r["case_no"],
            "applicant": r["applicant"], "process_key": r["key"], "process_name": flows.get(r["key"]) or r["key"],
            "step": r["name"] or r["bpmn_id"], "bpmn_id": r["bpmn_id"], "due_at": _iso(r["due_at"]),
            "holder": r["assignee"], "departments": [{"key": d, "name": names.get(d, d)} for d in _departments(r["departments"])],
            **overdue(r["due_at"])} for r in red_tasks]
    red += [{"kind": "case", "task_id": None, "instance_id": r["id"], "case_no": r["case_no"],
             "applicant": r["applicant"], "process_key": r["key"], "process_name": flows.get(r["key"]) or r["key"],
             "step": None, "bpmn_id": None, "due_at": _iso(r["due_at"]), "paused": r["paused_since"] is not None,
             "holder": ", ".join(sorted({h["assignee"] for h in holders.get(r["id"], []) if h["assignee"]})) or None,
             "departments": [{"key": d, "name": names.get(d, d)} for d in sorted(
                 {d for h in holders.get(r["id"], []) for d in _departments(h["departments"])})],
             **overdue(r["due_at"])} for r in red_cases]
    red.sort(key=lambda item: -item["overdue_working_days"])
    return {
        "generated_at": now.isoformat(),
        "scope": scope,
        "totals": totals,
        "departments": [{"key": k, "name": names.get(k, k), **v} for k, v in sorted(by_department.items())],
        "flows": [{"key": k, "name": flows.get(k) or k, **v} for k, v in sorted(by_flow.items())],
        "red": red,
        "red_total": {"tasks": totals["tasks"]["red"], "cases": totals["cases"]["red"]},
    }


def filter_options(db: Database, user: User) -> dict:
    """Choices for the statistics filters: departments (a lead's own only), flows, their items, window clerks."""
    scope = scope_of(user)
    with db.read() as conn:
        departments = [{"key": k, "name": n} for k, n in conn.execute(
            select(department.c.key, department.c.name).order_by(department.c.key))
            if scope is None or k in scope]
        flows, items = {}, {}
        for row in conn.execute(select(process_definition.c.key, process_definition.c.name, process_definition.c.guide)
                                .order_by(process_definition.c.key, process_definition.c.version)):
            flows[row.key] = row.name or row.key
            for item in ((row.guide or {}).get("items") or []) if isinstance(row.guide, dict) else []:
                if isinstance(item, dict) and item.get("task"):
                    items[item["task"]] = item.get("name") or item["task"]
        clerks = sorted(u for u, roles in conn.execute(select(app_user.c.username, app_user.c.roles))
                        if "window" in (roles or "").split(","))
    return {"departments": departments, "flows": [{"key": k, "name": v} for k, v in flows.items()],
            "items": [{"key": k, "name": v} for k, v in sorted(items.items())], "clerks": clerks}


# --- statistics -----------------------------------------------------------------------------------

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


def statistics(db: Database, user: User, start: date | str | None = None, end: date | str | None = None,
               department_key: str | None = None, flow: str | None = None, item: str | None = None,
               clerk: str | None = None, now: datetime | None = None) -> dict:
    """Figures for cases and steps in [start, end] (local dates, inclusive), optionally narrowed by filters.

    Counts of happenings (received, completed, warnings, overdue, pauses, send-backs, deemed consents) are
    counts of audit events in the period; durations come from case_duration (office time, pauses excluded).
    Finished days come from the daily roll-up when only the flow is filtered; the rest is counted live, by
    the same measuring code.
    """
    scope = scope_of(user)
    now = now or db.config.now()
    first, last = _period(start, end, now)
    if scope is not None:
        if department_key and department_key not in scope:
            raise PermissionDenied(f"you may see statistics of {', '.join(scope)} only")
        department_key = department_key or scope[0]
    lo, hi = _midnight(first), _midnight(last + timedelta(days=1))
    filters = {"department": department_key or None, "flow": flow or None, "item": item or None,
               "clerk": clerk or None}
    refresh_durations(db)
    rollable = not (filters["department"] or filters["item"] or filters["clerk"])
    if rollable:
        # A request rolls up at most two months; a backlog (a new install on old data) is the worker's job,
        # and until then the days not rolled up are counted live, which gives the same figures, only slower.
        roll_up(db, now, max_days=REQUEST_ROLL_UP_DAYS)
    case_where = _case_filters(filters, scope)
    with db.read() as conn:
        calendar = calendar_for(db, conn)
        per_day = calendar.office_hours.seconds_per_day
        live_from = lo
        rows: list[tuple] = []
        if rollable:
            rolled_until = _rolled_until(conn)
            if rolled_until is not None and rolled_until > first:
                rows += _rolled_rows(conn, first, min(rolled_until, last + timedelta(days=1)), filters["flow"])
                live_from = max(lo, _midnight(rolled_until))
        if live_from < hi:
            rows += [(d.strftime("%Y-%m"), dept, metric, value)
                     for d, _flow, dept, metric, value in _measure(conn, live_from, hi, filters, case_where)]
        totals: dict[str, int] = {}
        for _month, dept, metric, value in rows:
            if dept == "":    # None marks the roll-up's per-month trend rows, already in the totals
                totals[metric] = totals.get(metric, 0) + value
        histogram = {int(metric[2:]): value for metric, value in totals.items() if metric.startswith("h:")}
        median = _median(conn, lo, hi, case_where, histogram)
        satisfaction = _satisfaction(conn, lo, hi, case_where)
        names = dict(conn.execute(select(department.c.key, department.c.name)).all())
    counts = {name: totals.get("ev:" + type_, 0) for type_, name in {**CASE_EVENTS, **TASK_EVENTS}.items()}
    completed = totals.get("dur_n", 0)
    on_time, early = totals.get("dur_on_time", 0), totals.get("dur_early", 0)
    figures = {
        **counts,
        # 办结率 as the centre reports it: cases completed over cases received in the same period.
        "completion_rate": _ratio(counts["completed"], counts["received"]),
        "on_time": on_time,
        "on_time_rate": _ratio(on_time, completed),
        "early": early,
        "early_rate": _ratio(early, completed),
        "average_working_days": round(totals.get("dur_net", 0) / completed / per_day, 2) if completed else None,
        "median_working_days": round(median / per_day, 2) if median is not None else None,
        "speed_up_committed": _speed_up(totals.get("dur_net_c", 0), totals.get("dur_committed", 0)),
        "speed_up_statutory": _speed_up(totals.get("dur_net_s", 0), totals.get("dur_statutory", 0)),
        "warnings": counts["case_warnings"] + counts["task_warnings"],
        "overdue": counts["cases_overdue"] + counts["tasks_overdue"],
        "satisfaction": satisfaction,
    }
    return {"period": {"start": first.isoformat(), "end": last.isoformat()}, "filters": filters,
            "figures": figures, "trend": _trend(rows, lo, hi), "departments": _per_department(rows, names),
            "lights": {kind: {light: totals.get(f"{kind}_light:{light}", 0) for light in LIGHTS}
                       for kind in ("tasks", "cases")}}


def _measure(conn, lo: datetime, hi: datetime, filters: dict, case_where: list) -> list[tuple]:
    """Every summable figure of [lo, hi) as (local day, flow, department or "", metric, value) rows.

    The one place figures are counted: statistics read it live, and roll_up stores it for finished days.
    """
    out: list[tuple] = []
    def with_case(query, id_column):
        return (query.join(process_instance, process_instance.c.id == id_column)
                .join(process_definition, process_definition.c.id == process_instance.c.definition_id))

    key = process_definition.c.key
    # 1. audit events by type: case-level ones for the cases in scope, step-level ones for the steps in scope.
    for types, task_level in ((CASE_EVENTS, False), (TASK_EVENTS, True)):
        day = _day_expr(conn, audit_event.c.at)
        query = (select(day.label("day"), key.label("flow"), audit_event.c.type, func.count().label("n"))
                 .where(audit_event.c.type.in_(list(types)), audit_event.c.at >= lo, audit_event.c.at < hi))
        query = with_case(query, audit_event.c.instance_id)
        where = case_where
        if task_level and (filters["department"] or filters["item"]):
            # a step-level event counts when its own step is the department's or the item, not merely its case
            query = query.join(human_task, human_task.c.id == audit_event.c.task_id).where(*_task_filters(filters))
            where = _case_filters({**filters, "department": None, "item": None}, None)
        for row in conn.execute(query.where(*where).group_by(day, key, audit_event.c.type)):
            out.append((row.day, row.flow, "", "ev:" + row.type, row.n))
    # 2. office time of the cases completed, from case_duration.
    net = case_duration.c.net_seconds
    day = _day_expr(conn, case_duration.c.ended_at)
    query = with_case(select(
        day.label("day"), key.label("flow"), func.count().label("dur_n"),
        func.sum(cast(case_duration.c.on_time, Integer)).label("dur_on_time"),
        func.sum(cast(case_duration.c.early, Integer)).label("dur_early"), func.sum(net).label("dur_net"),
        func.sum(case((case_duration.c.committed_seconds.is_not(None), net), else_=0)).label("dur_net_c"),
        func.sum(case_duration.c.committed_seconds).label("dur_committed"),
        func.sum(case((case_duration.c.statutory_seconds.is_not(None), net), else_=0)).label("dur_net_s"),
        func.sum(case_duration.c.statutory_seconds).label("dur_statutory"),
    ).where(case_duration.c.ended_at >= lo, case_duration.c.ended_at < hi), case_duration.c.instance_id)
    for row in conn.execute(query.where(*case_where).group_by(day, key)).mappings():
        for metric in ("dur_n", "dur_on_time", "dur_early", "dur_net", "dur_net_c", "dur_committed", "dur_net_s",
                       "dur_statutory"):
            out.append((row["day"], row["flow"], "", metric, int(row[metric] or 0)))
    # A histogram of the office time taken, in tenths of a working day, to find the median from.
    bucket = (case_duration.c.net_seconds // HISTOGRAM_BUCKET_SECONDS).label("bucket")
    query = with_case(select(day.label("day"), key.label("flow"), bucket, func.count().label("n"))
                      .where(case_duration.c.ended_at >= lo, case_duration.c.ended_at < hi),
                      case_duration.c.instance_id)
    for row in conn.execute(query.where(*case_where).group_by(day, key, bucket)):
        out.append((row.day, row.flow, "", f"h:{int(row.bucket)}", row.n))
    # 3. the light each completed case ended with.
    day = _day_expr(conn, process_instance.c.ended_at)
    light = func.coalesce(process_instance.c.light, "green")
    query = (select(day.label("day"), key.label("flow"), light.label("light"), func.count().label("n"))
             .select_from(process_instance.join(process_definition,
                                                process_definition.c.id == process_instance.c.definition_id))
             .where(process_instance.c.status == "completed", process_instance.c.ended_at >= lo,
                    process_instance.c.ended_at < hi, *case_where).group_by(day, key, light))
    for row in conn.execute(query):
        out.append((row.day, row.flow, "", "cases_light:" + _light_name(row.light), row.n))
    # 4. steps finished, per department (completed, late, closed without a decision) and by light.
    day = _day_expr(conn, human_task.c.completed_at)
    text = cast(human_task.c.departments, String)
    light = func.coalesce(human_task.c.light, "green")
    late = and_(human_task.c.due_at.is_not(None), human_task.c.completed_at > human_task.c.due_at)
    query = with_case(select(day.label("day"), key.label("flow"), text.label("departments"), human_task.c.status,
                             light.label("light"), func.count().label("n"),
                             func.sum(case((late, 1), else_=0)).label("late"))
                      .where(human_task.c.completed_at >= lo, human_task.c.completed_at < hi,
                             human_task.c.status.in_(["completed", "cancelled"]), *_task_filters(filters)),
                      human_task.c.instance_id)
    query = query.where(*_case_filters({**filters, "department": None, "item": None}, None))
    for row in conn.execute(query.group_by(day, key, text, human_task.c.status, light)):
        if row.status == "completed":
            out.append((row.day, row.flow, "", "tasks_light:" + _light_name(row.light), row.n))
        for dept in _departments(row.departments):
            if filters["department"] and dept != filters["department"]:
                continue
            if row.status == "completed":
                out += [(row.day, row.flow, dept, "step_completed", row.n),
                        (row.day, row.flow, dept, "step_late", int(row.late or 0))]
            else:
                out.append((row.day, row.flow, dept, "step_closed", row.n))
    return [(_as_date(d), flow, dept, metric, value) for d, flow, dept, metric, value in out if value]


def roll_up(db: Database, now: datetime | None = None, max_days: int | None = None) -> int:
    """Store the figures of every finished local day not yet rolled up; returns the number of days added.

    A day is finished an hour after its local midnight has passed, so every transaction that could still
    record something dated that day has committed; nothing is recorded later with an earlier date.
    """
    now = now or db.config.now()
    last = (now - timedelta(hours=1)).astimezone(LOCAL_TZ).date() - timedelta(days=1)
    with db.read() as conn:
        first = _rolled_until(conn)
        if first is None:
            earliest = conn.execute(select(func.min(process_instance.c.started_at))).scalar()
            if earliest is None:
                return 0
            first = earliest.astimezone(LOCAL_TZ).date()
    if max_days is not None:
        last = min(last, first + timedelta(days=max_days - 1))
    added = 0
    while first <= last:
        chunk_end = min(first + timedelta(days=ROLL_UP_CHUNK_DAYS), last + timedelta(days=1))
        db.run(lambda conn, a=first, b=chunk_end: _store_days(conn, a, b))
        added += (chunk_end - first).days
        first = chunk_end
    return added


def _store_days(conn, first: date, stop: date) -> None:
    no_filters = {"department": None, "flow": None, "item": None, "clerk": None}
    sums: dict[tuple, int] = {}
    for day_, flow_, dept, metric, value in _measure(conn, _midnight(first), _midnight(stop), no_filters, []):
        sums[(day_, flow_, dept, metric)] = sums.get((day_, flow_, dept, metric), 0) + value
    rows = [{"day": d, "flow": f, "department": dept, "metric": m, "value": v} for (d, f, dept, m), v in sums.items()]
    rows += [{"day": first + timedelta(days=i), "flow": "", "department": "", "metric": ROLLED, "value": 1}
             for i in range((stop - first).days)]
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    # Two processes may roll the same days at once; both count the same, so the second insert is a no-op.
    conn.execute(insert(supervision_day).on_conflict_do_nothing(), rows)


def _rolled_until(conn) -> date | None:
    """The first local day not rolled up yet (days are rolled in order), or None before the first roll-up."""
    last = conn.execute(select(func.max(supervision_day.c.day)).where(supervision_day.c.metric == ROLLED)).scalar()
    return _as_date(last) + timedelta(days=1) if last is not None else None


def _rolled_rows(conn, first: date, stop: date, flow: str | None) -> list[tuple]:
    """Rolled-up figures as (None, department, metric, total) rows, plus (month, None, metric, total) for the trend."""
    in_range = [supervision_day.c.day >= first, supervision_day.c.day < stop]
    if flow:
        in_range.append(supervision_day.c.flow == flow)
    totals = (select(supervision_day.c.department, supervision_day.c.metric, func.sum(supervision_day.c.value))
              .where(*in_range, supervision_day.c.metric != ROLLED)
              .group_by(supervision_day.c.department, supervision_day.c.metric))
    rows = [(None, dept, metric, int(value)) for dept, metric, value in conn.execute(totals)]
    month = _month_expr(conn, supervision_day.c.day)
    trend = (select(month, supervision_day.c.metric, func.sum(supervision_day.c.value))
             .where(*in_range, supervision_day.c.department == "", supervision_day.c.metric.in_(TREND_METRICS))
             .group_by(month, supervision_day.c.metric))
    return rows + [(name, None, metric, int(value)) for name, metric, value in conn.execute(trend)]


def _case_filters(filters: dict, scope) -> list:
    where = []
    if filters["flow"]:
        where.append(process_definition.c.key == filters["flow"])
    if filters["clerk"]:
        where.append(process_instance.c.started_by == filters["clerk"])
    task_where = _task_filters(filters)
    if task_where:
        where.append(exists().where(human_task.c.instance_id == process_instance.c.id, *task_where))
    return where


def _task_filters(filters: dict) -> list:
    where = []
    if filters["department"]:
        where.append(_has_department(filters["department"]))
    if filters["item"]:
        where.append(human_task.c.bpmn_id == filters["item"])
    return where


def _has_department(key: str):
    # departments is a JSON list of keys; its text contains the quoted key exactly when the list does.
    return cast(human_task.c.departments, String).like(f'%"{_escape_like(key)}"%', escape="\\")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _task_scope(scope) -> list:
    if scope is None:
        return []
    return [or_(*[_has_department(d) for d in scope])]


def _case_scope(scope) -> list:
    if scope is None:
        return []
    return [exists().where(human_task.c.instance_id == process_instance.c.id, human_task.c.status == "open",
                           *_task_scope(scope))]


def _median(conn, lo, hi, case_where, histogram: dict[int, int]) -> float | None:
    """The exact median office time: the histogram names the bucket, an index range scan reads only that bucket."""
    total = sum(histogram.values())
    if not total:
        return None
    first_rank = (total + 1) // 2          # 1-based; an even count averages it with the next one
    wanted = 1 if total % 2 else 2
    seen = 0
    for bucket in sorted(histogram):
        if seen + histogram[bucket] >= first_rank:
            break
        seen += histogram[bucket]
    source = case_duration
    if case_where:
        source = (case_duration.join(process_instance, process_instance.c.id == case_duration.c.instance_id)
                  .join(process_definition, process_definition.c.id == process_instance.c.definition_id))
    # from the bucket on, so a second rank that falls into the next bucket is read too
    query = (select(case_duration.c.net_seconds).select_from(source)
             .where(case_duration.c.net_seconds >= bucket * HISTOGRAM_BUCKET_SECONDS,
                    case_duration.c.ended_at >= lo, case_duration.c.ended_at < hi, *case_where)
             .order_by(case_duration.c.net_seconds).offset(first_rank - seen - 1).limit(wanted))
    values = list(conn.execute(query).scalars())
    return float(stats_lib.fmean(values))


def _day_expr(conn, column):
    if conn.dialect.name == "sqlite":
        return func.date(column, literal_column(f"'+{LOCAL_OFFSET_HOURS} hours'"))
    return cast(column + literal_column(f"interval '{LOCAL_OFFSET_HOURS} hours'"), Date)


def _month_expr(conn, day_column):
    if conn.dialect.name == "sqlite":
        return func.strftime(literal_column("'%Y-%m'"), day_column)
    return func.to_char(day_column, literal_column("'YYYY-MM'"))


def _trend(rows: list[tuple], lo: datetime, hi: datetime) -> list[dict]:
    months = {name: {"month": name, "received": 0, "completed": 0, "on_time": 0, "cases_overdue": 0}
              for name in _months(lo, hi)}
    wanted = dict(zip(TREND_METRICS, ("received", "completed", "on_time", "cases_overdue")))
    for month, dept, metric, value in rows:
        if not dept and metric in wanted and month in months:
            months[month][wanted[metric]] += value
    for entry in months.values():
        entry["on_time_rate"] = _ratio(entry["on_time"], entry["completed"])
    return list(months.values())


def _months(lo: datetime, hi: datetime) -> list[str]:
    first = lo.astimezone(LOCAL_TZ).date().replace(day=1)
    last = (hi - timedelta(microseconds=1)).astimezone(LOCAL_TZ).date()
    names = []
    while first <= last:
        names.append(first.strftime("%Y-%m"))
        first = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return names


def _per_department(rows: list[tuple], names: dict) -> list[dict]:
    """Steps finished in the period per department: completed, on time, late, closed without a decision."""
    found: dict[str, dict] = {}
    for _month, dept, metric, value in rows:
        if dept:
            entry = found.setdefault(dept, {"department": dept, "name": names.get(dept, dept), "completed": 0,
                                            "on_time": 0, "late": 0, "closed_without_decision": 0})
            if metric == "step_completed":
                entry["completed"] += value
            elif metric == "step_late":
                entry["late"] += value
            elif metric == "step_closed":
                entry["closed_without_decision"] += value
    for entry in found.values():
        entry["on_time"] = entry["completed"] - entry["late"]
        entry["on_time_rate"] = _ratio(entry["on_time"], entry["completed"])
    return [found[k] for k in sorted(found)]


def _light_name(value: str | None) -> str:
    return value if value in LIGHTS else "green"


def _as_date(value) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _satisfaction(conn, lo, hi, case_where) -> dict | None:
    query = (select(func.count().label("n"), func.avg(rating.c.score).label("avg"),
                    func.sum(case((rating.c.score >= 4, 1), else_=0)).label("satisfied"))
             .select_from(rating.join(process_instance, process_instance.c.id == rating.c.instance_id)
                          .join(process_definition, process_definition.c.id == process_instance.c.definition_id))
             .where(rating.c.rated_at >= lo, rating.c.rated_at < hi, *case_where))
    row = conn.execute(query).one()
    if not row.n:
        return None
    return {"ratings": row.n, "average_score": round(float(row.avg), 2), "satisfied_rate": _ratio(row.satisfied, row.n)}


def statistics_csv(result: dict) -> str:
    """The statistics as CSV for Excel: a BOM so Chinese opens correctly, one section per table."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out)
    period = result["period"]
    writer.writerow(["统计期间 period", period["start"], period["end"]])
    for name, value in result["filters"].items():
        if value:
            writer.writerow([f"筛选 {name}", value])
    writer.writerow([])
    writer.writerow(["指标 figure", "数值 value"])
    for name, value in result["figures"].items():
        if isinstance(value, dict):
            for sub, v in value.items():
                writer.writerow([f"{name}.{sub}", v])
        else:
            writer.writerow([name, "" if value is None else value])
    writer.writerow([])
    writer.writerow(["月份 month", "received", "completed", "on_time", "on_time_rate", "cases_overdue"])
    for row in result["trend"]:
        writer.writerow([row["month"], row["received"], row["completed"], row["on_time"],
                         "" if row["on_time_rate"] is None else row["on_time_rate"], row["cases_overdue"]])
    writer.writerow([])
    writer.writerow(["部门 department", "名称 name", "completed", "on_time", "late", "on_time_rate",
                     "closed_without_decision"])
    for row in result["departments"]:
        writer.writerow([row["department"], row.get("name", ""), row["completed"], row["on_time"], row["late"],
                         "" if row["on_time_rate"] is None else row["on_time_rate"], row["closed_without_decision"]])
    writer.writerow([])
    writer.writerow(["灯 light", "tasks", "cases"])
    for light in LIGHTS:
        writer.writerow([light, result["lights"]["tasks"][light], result["lights"]["cases"][light]])
    return out.getvalue()


def _period(start, end, now: datetime) -> tuple[date, date]:
    problems = []
    today = now.astimezone(LOCAL_TZ).date()
    first = _date(start, "start", problems) if start else today.replace(month=1, day=1)
    last = _date(end, "end", problems) if end else today
    if problems:
        raise InvalidInput(problems)
    if last < first:
        raise InvalidInput(Problem("end must not be before start", field="end"))
    if (last - first).days > MAX_PERIOD_DAYS:
        raise InvalidInput(Problem("the period may span at most three years", field="end"))
    return first, last


def _date(value, field: str, problems: list):
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        problems.append(Problem("must be a date like 2026-10-31", field=field))
        return None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ)


def _departments(value) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value) if value else ["window"]


def _speed_up(net, limit) -> float | None:
    return round(1 - float(net) / float(limit), 4) if limit else None


def _ratio(part, whole) -> float | None:
    return round(part / whole, 4) if whole else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None

