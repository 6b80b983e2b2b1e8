"""Electronic supervision read side: the live board of lights and the statistics counted from the audit trail."""
from __future__ import annotations

import csv
import io
import json
import statistics as stats_lib
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Iterator
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ARRAY,
    Date,
    Integer,
    String,
    any_,
    bindparam,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .accounts import User
from .errors import InvalidInput, PermissionDenied, Problem
from .store import (
    SUPERVISION_FIGURES,
    Database,
    app_user,
    audit_event,
    case_duration,
    case_migration,
    clock_pause,
    department,
    human_task,
    process_definition,
    process_instance,
    rating,
    supervision_day,
    supervision_roll,
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
ROLL_MARGIN = timedelta(hours=1)   # how long a transaction may take to commit what it recorded
HISTOGRAM_BUCKET_SECONDS = 2520   # a tenth of a 7-hour working day
MEDIAN_BATCH = 1000                # cases checked for a department's step per query while seeking the median
ALL = ""                           # supervision_day's key for "every clerk", "any department", "any step"
EVERY, STEPS = "every", "steps"    # what a reading wants of a key: every figure, or the per-department ones
FIGURES = SUPERVISION_FIGURES
STEP_FIGURES = ("step_completed", "step_late", "step_closed", "step_seconds")
WINDOW_FIGURES = ("dur_n", "dur_on_time", "dur_net", "ratings", "rating_sum")
PARTS = frozenset({"events", "durations", "lights", "ratings", "steps"})   # the kinds of figures _measure counts
TREND_FIGURES = {"received": "received", "dur_n": "completed", "dur_on_time": "on_time",
                 "cases_overdue": "cases_overdue"}
LIGHTS = ("green", "yellow", "red")
WINDOW = "window"                  # the department of a step that names none (the comprehensive window)
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
    Finished days come from the daily roll-up, whatever the filters; the days after it are counted live by the
    same measuring code, and so are the earlier figures of cases that have gained a department or step since.
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
    # A request rolls up at most two months; a backlog (a new install on old data) is the worker's job,
    # and until then the days not rolled up are counted live, which gives the same figures, only slower.
    roll_up(db, now, max_days=REQUEST_ROLL_UP_DAYS, wait=False)
    reading = _Reading(filters["clerk"] or ALL, filters["department"] or ALL, filters["item"] or ALL)
    with read_snapshot(db) as conn:
        calendar = calendar_for(db, conn)
        per_day = calendar.office_hours.seconds_per_day
        rolled_until = _rolled_until(conn)
        stop = first
        if rolled_until is not None and rolled_until > first:
            stop = min(rolled_until, last + timedelta(days=1))
            _read_rolled(conn, first, stop, filters["flow"], reading)
            if reading.department or reading.item:
                # Cases that gained a step of the department (or the item) after the roll-up filed them
                since = _midnight(rolled_until)
                reading.add(_measure(conn, lo, _midnight(stop), want=reading.want, flow=filters["flow"],
                                     clerk=filters["clerk"], since=since,
                                     instances=_cases_with_tasks_created(conn, since,
                                                                         task_where=_task_filters(filters))))
        if _midnight(stop) < hi:
            reading.add(_measure(conn, max(lo, _midnight(stop)), hi, want=reading.want, flow=filters["flow"],
                                 clerk=filters["clerk"], only=(reading.department, reading.item)))
        totals = reading.totals
        median = _median(conn, lo, hi, filters, reading.histogram)
        names = dict(conn.execute(select(department.c.key, department.c.name)).all())
    counts = {name: totals.get(name, 0) for name in (*CASE_EVENTS.values(), *TASK_EVENTS.values())}
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
        "satisfaction": _satisfaction(totals),
    }
    return {"period": {"start": first.isoformat(), "end": last.isoformat()}, "filters": filters,
            "figures": figures, "trend": _trend(reading.months, lo, hi),
            "departments": _per_department(reading.departments, names),
            "lights": {kind: {light: totals.get(f"{kind}_{light}", 0) for light in LIGHTS}
                       for kind in ("tasks", "cases")}}


def monthly_figures(conn, first: date, stop: date, calendar) -> tuple[dict, dict]:
    """Steps finished per department and cases completed per receiving window clerk in [first, stop).

    For the 红旗窗口 ranking: {department: step figures}, {clerk: case figures}, rolled-up days plus the rest live.
    """
    departments: dict[str, dict] = {}
    windows: dict[str, dict] = {}
    t = supervision_day
    rolled_until = _rolled_until(conn)
    until = first
    if rolled_until is not None and rolled_until > first:
        until = min(rolled_until, stop)
        in_range = [t.c.item == ALL, t.c.day >= first, t.c.day < until]
        for row in conn.execute(select(t.c.department, *_sums(STEP_FIGURES))
                                .where(*in_range, t.c.clerk == ALL, t.c.department != ALL)
                                .group_by(t.c.department)).mappings():
            _add(departments.setdefault(row["department"], {}), row, STEP_FIGURES)
        for row in conn.execute(select(t.c.clerk, *_sums(WINDOW_FIGURES))
                                .where(*in_range, t.c.department == ALL, t.c.clerk != ALL)
                                .group_by(t.c.clerk)).mappings():
            _add(windows.setdefault(row["clerk"], {}), row, WINDOW_FIGURES)
    if until < stop:
        def want(clerk, dept, item):
            if item:
                return None
            if clerk == ALL:
                return STEPS if dept else None
            return EVERY if not dept else None
        measured = _measure(conn, _midnight(until), _midnight(stop), want=want, calendar=calendar, only=(ALL, ALL),
                            parts=frozenset({"durations", "ratings", "steps"}))
        for (_day, _flow, clerk, dept, _item), values in measured.items():
            if clerk == ALL:
                _add(departments.setdefault(dept, {}), values, STEP_FIGURES)
            else:
                _add(windows.setdefault(clerk, {}), values, WINDOW_FIGURES)
    return departments, windows


# --- counting and rolling up ---------------------------------------------------------------------------

class _Reading:
    """The keys one statistics query reads and the sums it gathers from rolled-up days and live counts."""

    def __init__(self, clerk: str, department_key: str, item: str):
        self.clerk, self.department, self.item = clerk, department_key, item
        self.totals: dict[str, int] = {}
        self.histogram: dict[int, int] = {}
        self.months: dict[str, dict[str, int]] = {}
        self.departments: dict[str, dict[str, int]] = {}

    def want(self, clerk: str, dept: str, item: str):
        """EVERY figure for the filter's own key, STEPS for the per-department table, None for the rest."""
        if clerk != self.clerk or item != self.item:
            return None
        if dept == self.department:
            return EVERY
        return STEPS if dept and not self.department else None

    def add(self, measured: dict) -> None:
        for (day, _flow, _clerk, dept, _item), values in measured.items():
            if dept == self.department:
                self.add_month(str(day)[:7], values)
            if dept and (not self.department or dept == self.department):
                _add(self.departments.setdefault(dept, {}), values, STEP_FIGURES)

    def add_month(self, month: str, values) -> None:
        for name, value in values.items():
            if isinstance(name, int):
                self.histogram[name] = self.histogram.get(name, 0) + value
            elif value:
                self.totals[name] = self.totals.get(name, 0) + int(value)
        entry = self.months.setdefault(month, dict.fromkeys(TREND_FIGURES, 0))
        for name in TREND_FIGURES:
            entry[name] += int(values.get(name) or 0)


def _read_rolled(conn, first: date, stop: date, flow: str | None, reading: _Reading) -> None:
    """Add the rolled-up figures of [first, stop) under the reading's key: a few hundred rows for a year."""
    t = supervision_day
    where = [t.c.clerk == reading.clerk, t.c.item == reading.item, t.c.day >= first, t.c.day < stop]
    if flow:
        where.append(t.c.flow == flow)
    own = [*where, t.c.department == reading.department]
    month = _month_expr(conn, t.c.day).label("month")
    for row in conn.execute(select(month, *_sums(FIGURES)).where(*own).group_by(month)).mappings():
        reading.add_month(row["month"], {name: row[name] for name in FIGURES})
    for (histogram,) in conn.execute(select(t.c.histogram).where(*own, t.c.histogram.is_not(None))):
        for bucket, count in histogram.items():
            reading.histogram[int(bucket)] = reading.histogram.get(int(bucket), 0) + count
    which = t.c.department == reading.department if reading.department else t.c.department != ALL
    for row in conn.execute(select(t.c.department, *_sums(STEP_FIGURES)).where(*where, which)
                            .group_by(t.c.department)).mappings():
        _add(reading.departments.setdefault(row["department"], {}), row, STEP_FIGURES)


def _sums(names) -> list:
    return [func.coalesce(func.sum(supervision_day.c[name]), 0).label(name) for name in names]


def _add(target: dict, values, names) -> None:
    for name in names:
        value = values.get(name)
        if value:
            target[name] = target.get(name, 0) + int(value)


def _measure(conn, lo: datetime | None, hi: datetime, want=None, flow: str | None = None, clerk: str | None = None,
             as_of: datetime | None = None, instances: list[int] | None = None, since: datetime | None = None,
             calendar=None, only: tuple[str, str] | None = None, parts: frozenset = PARTS) -> dict[tuple, dict]:
    """Every summable figure of [lo, hi) as {(local day, flow, clerk, department, item): {figure: value}}.

    The one place figures are counted: statistics read it live for the days not rolled up, and roll_up stores
    it for finished days. Keys: clerk "" sums every receiving clerk, department and item "" mean any. A case's
    figures are filed under every department and step (bpmn id) of the steps it had before `as_of` (now when
    None); a step's figures under its own. Histogram buckets of the office time taken are int names.
    With `instances` and `since`, only those cases' figures are counted, and only under the keys that their
    steps created from `since` on added. `want(clerk, department, item)` picks the keys: EVERY figure, only the
    STEPS figures, or None; a `calendar` adds step_seconds, the office time each completed step took.
    With `only` = (department, item) ("" for any), case figures are counted only for the cases that have such
    a step now, summed in SQL and filed under that key alone: a live reading of one filter needs no more, and
    a second way of counting that the tests hold against the roll-up's. `parts` names the kinds of figures to
    count (audit events, durations, lights, ratings, steps finished).
    """
    groups = _Groups()
    case_where = []
    if flow:
        case_where.append(process_definition.c.key == flow)
    if clerk:
        case_where.append(process_instance.c.started_by == clerk)
    if instances is None and only is not None:
        dept, item = only
        where = list(case_where)
        task_where = _task_filters({"department": dept or None, "item": item or None})
        if task_where:
            where.append(exists().where(human_task.c.instance_id == process_instance.c.id, *task_where))
        facts = _case_facts(conn, lo, hi, where, parts, summed=True)
        groups.add_cases(facts, {None: groups.keyset(frozenset({(dept, item)}))})
        _task_facts(conn, lo, hi, case_where, groups, calendar, parts)
    elif instances is None:
        facts = _case_facts(conn, lo, hi, case_where, parts)
        groups.add_cases(facts, _case_keysets(conn, groups, {fact[3] for fact in facts}, as_of, None))
        _task_facts(conn, lo, hi, case_where, groups, calendar, parts)
    else:
        for chunk in _chunks(conn, sorted(set(instances))):
            keysets = _case_keysets(conn, groups, chunk, as_of, since)
            gained = [instance for instance, keys in keysets.items() if groups.keysets[keys]]
            if gained:
                where = [*case_where, _among(conn, process_instance.c.id, gained)]
                groups.add_cases(_case_facts(conn, lo, hi, where, parts), keysets)
    return groups.expand(want)


class _Groups:
    """Figures grouped by (day, flow, clerk, keyset, steps-only), expanded to supervision_day keys at the end."""

    def __init__(self):
        self.keysets: list[frozenset] = []      # interned sets of (department, item) keys
        self.ids: dict[frozenset, int] = {}
        self.groups: dict[tuple, dict] = {}

    def keyset(self, keys: frozenset) -> int:
        found = self.ids.get(keys)
        if found is None:
            found = self.ids[keys] = len(self.keysets)
            self.keysets.append(keys)
        return found

    def add(self, day, flow, clerk, keyset: int, steps: bool, name, value) -> None:
        values = self.groups.setdefault((day, flow, clerk or ALL, keyset, steps), {})
        values[name] = values.get(name, 0) + value

    def add_cases(self, facts: list[tuple], keysets: dict[int, int]) -> None:
        everything = self.keyset(frozenset({(ALL, ALL)}))
        for day, flow, clerk, instance, name, value in facts:
            keys = keysets.get(instance, everything)
            if self.keysets[keys]:
                self.add(day, flow, clerk, keys, False, name, value)

    def expand(self, want) -> dict[tuple, dict]:
        out: dict[tuple, dict] = {}
        chosen: dict[tuple, list] = {}
        for (day, flow, clerk, keyset, steps), values in self.groups.items():
            for level in (ALL, clerk) if clerk else (ALL,):
                keys = chosen.get((keyset, steps, level))
                if keys is None:
                    keys = chosen[(keyset, steps, level)] = [
                        key for key in self.keysets[keyset]
                        if want is None or want(level, *key) is EVERY or (steps and want(level, *key) is STEPS)]
                for dept, item in keys:
                    target = out.setdefault((day, flow, level, dept, item), {})
                    for name, value in values.items():
                        target[name] = target.get(name, 0) + value
        return out


def _case_facts(conn, lo: datetime | None, hi: datetime, where: list, parts: frozenset = PARTS,
                summed: bool = False) -> list[tuple]:
    """Per case: (day, flow, clerk, case id, figure or histogram bucket, value) of its figures in [lo, hi).

    `summed`: the same figures summed in SQL per day, flow and clerk, with None for the case.
    """
    if summed:
        return _summed_case_facts(conn, lo, hi, where, parts)
    def period(column):
        return [column < hi] if lo is None else [column >= lo, column < hi]

    def of_case(*columns):
        return (select(*columns).select_from(
            process_instance.join(process_definition, process_definition.c.id == process_instance.c.definition_id)))

    key, clerk, instance = process_definition.c.key, process_instance.c.started_by, process_instance.c.id
    facts: list[tuple] = []
    # 1. case-level audit events by type
    if "events" in parts:
        day = _day_expr(conn, audit_event.c.at)
        query = (of_case(day, key, clerk, instance, audit_event.c.type, func.count())
                 .join(audit_event, audit_event.c.instance_id == process_instance.c.id)
                 .where(audit_event.c.type.in_(list(CASE_EVENTS)), *period(audit_event.c.at), *where)
                 .group_by(day, key, clerk, instance, audit_event.c.type))
        facts += [(d, f, c, i, CASE_EVENTS[t], n) for d, f, c, i, t, n in conn.execute(query).all()]
    # 2. office time of the cases completed, from case_duration, with a histogram to find the median from
    if "durations" in parts:
        d = case_duration.c
        day = _day_expr(conn, d.ended_at)
        query = (of_case(day, key, clerk, instance, d.net_seconds, d.on_time, d.early, d.committed_seconds,
                         d.statutory_seconds)
                 .join(case_duration, d.instance_id == process_instance.c.id)
                 .where(*period(d.ended_at), *where))
        for day_, flow, clerk_, case_id, net, on_time, early, committed, statutory in conn.execute(query).all():
            facts += [(day_, flow, clerk_, case_id, "dur_n", 1), (day_, flow, clerk_, case_id, "dur_net", net),
                      (day_, flow, clerk_, case_id, net // HISTOGRAM_BUCKET_SECONDS, 1)]
            if on_time:
                facts.append((day_, flow, clerk_, case_id, "dur_on_time", 1))
            if early:
                facts.append((day_, flow, clerk_, case_id, "dur_early", 1))
            if committed is not None:
                facts += [(day_, flow, clerk_, case_id, "dur_net_c", net),
                          (day_, flow, clerk_, case_id, "dur_committed", committed)]
            if statutory is not None:
                facts += [(day_, flow, clerk_, case_id, "dur_net_s", net),
                          (day_, flow, clerk_, case_id, "dur_statutory", statutory)]
    # 3. the light each completed case ended with
    if "lights" in parts:
        day = _day_expr(conn, process_instance.c.ended_at)
        query = (of_case(day, key, clerk, instance, process_instance.c.light)
                 .where(process_instance.c.status == "completed", *period(process_instance.c.ended_at), *where))
        facts += [(d_, f, c, i, "cases_" + _light_name(light), 1) for d_, f, c, i, light in conn.execute(query).all()]
    # 4. 好差评 ratings, on the day given
    if "ratings" in parts:
        day = _day_expr(conn, rating.c.rated_at)
        query = (of_case(day, key, clerk, instance, rating.c.score)
                 .join(rating, rating.c.instance_id == process_instance.c.id)
                 .where(*period(rating.c.rated_at), *where))
        for d_, f, c, i, score in conn.execute(query).all():
            facts += [(d_, f, c, i, "ratings", 1), (d_, f, c, i, "rating_sum", score)]
            if score >= 4:
                facts.append((d_, f, c, i, "rating_satisfied", 1))
    return facts


def _summed_case_facts(conn, lo: datetime | None, hi: datetime, where: list, parts: frozenset) -> list[tuple]:
    def period(column):
        return [column < hi] if lo is None else [column >= lo, column < hi]

    def of_case(*columns):
        return (select(*columns).select_from(
            process_instance.join(process_definition, process_definition.c.id == process_instance.c.definition_id)))

    def count_if(condition):
        return func.sum(case((condition, 1), else_=0))

    key, clerk = process_definition.c.key, process_instance.c.started_by
    facts: list[tuple] = []
    if "events" in parts:
        day = _day_expr(conn, audit_event.c.at)
        query = (of_case(day, key, clerk, audit_event.c.type, func.count())
                 .join(audit_event, audit_event.c.instance_id == process_instance.c.id)
                 .where(audit_event.c.type.in_(list(CASE_EVENTS)), *period(audit_event.c.at), *where)
                 .group_by(day, key, clerk, audit_event.c.type))
        facts += [(d, f, c, None, CASE_EVENTS[t], n) for d, f, c, t, n in conn.execute(query).all()]
    if "durations" in parts:
        d = case_duration.c
        day = _day_expr(conn, d.ended_at)
        summed = {"dur_n": func.count(), "dur_on_time": count_if(d.on_time.is_(True)),
                  "dur_early": count_if(d.early.is_(True)), "dur_net": func.sum(d.net_seconds),
                  "dur_net_c": func.sum(case((d.committed_seconds.is_not(None), d.net_seconds), else_=0)),
                  "dur_committed": func.sum(d.committed_seconds),
                  "dur_net_s": func.sum(case((d.statutory_seconds.is_not(None), d.net_seconds), else_=0)),
                  "dur_statutory": func.sum(d.statutory_seconds)}
        query = (of_case(day, key, clerk, *summed.values()).join(case_duration, d.instance_id == process_instance.c.id)
                 .where(*period(d.ended_at), *where).group_by(day, key, clerk))
        for day_, flow, clerk_, *values in conn.execute(query).all():
            facts += [(day_, flow, clerk_, None, name, int(value or 0)) for name, value in zip(summed, values)]
        bucket = d.net_seconds // HISTOGRAM_BUCKET_SECONDS
        query = (of_case(day, key, clerk, bucket, func.count())
                 .join(case_duration, d.instance_id == process_instance.c.id)
                 .where(*period(d.ended_at), *where).group_by(day, key, clerk, bucket))
        facts += [(d_, f, c, None, int(b), n) for d_, f, c, b, n in conn.execute(query).all()]
    if "lights" in parts:
        day = _day_expr(conn, process_instance.c.ended_at)
        light = func.coalesce(process_instance.c.light, "green")
        query = (of_case(day, key, clerk, light, func.count())
                 .where(process_instance.c.status == "completed", *period(process_instance.c.ended_at), *where)
                 .group_by(day, key, clerk, light))
        facts += [(d_, f, c, None, "cases_" + _light_name(lt), n) for d_, f, c, lt, n in conn.execute(query).all()]
    if "ratings" in parts:
        day = _day_expr(conn, rating.c.rated_at)
        query = (of_case(day, key, clerk, func.count(), func.sum(rating.c.score), count_if(rating.c.score >= 4))
                 .join(rating, rating.c.instance_id == process_instance.c.id)
                 .where(*period(rating.c.rated_at), *where).group_by(day, key, clerk))
        for d_, f, c, n, total, satisfied in conn.execute(query).all():
            facts += [(d_, f, c, None, "ratings", n), (d_, f, c, None, "rating_sum", int(total)),
                      (d_, f, c, None, "rating_satisfied", int(satisfied))]
    return [fact for fact in facts if fact[5]]


def _case_keysets(conn, groups: _Groups, instances, as_of: datetime | None, since: datetime | None) -> dict:
    """{case: interned keyset}: the (department, item) keys of the steps each case had before `as_of`.

    With `since`, only the keys that its steps created from `since` on added (often none).
    """
    pairs: dict[int, set] = {}
    before: dict[int, set] = {}
    text = cast(human_task.c.departments, String)
    # Steps created before `since` are told apart in SQL: reading their moments costs more than the rest.
    earlier = case((human_task.c.created_at < since, 1), else_=0) if since is not None else literal_column("0")
    parsed: dict[str, list] = {}
    for chunk in _chunks(conn, list(instances)):
        query = (select(human_task.c.instance_id, text, human_task.c.bpmn_id, earlier)
                 .where(_among(conn, human_task.c.instance_id, chunk)).distinct())
        if as_of is not None:
            query = query.where(human_task.c.created_at < as_of)
        for instance, departments, bpmn_id, is_earlier in conn.execute(query).all():
            found = parsed.get(departments)
            if found is None:
                found = parsed[departments] = _departments(json.loads(departments))
            pairs.setdefault(instance, set()).update((dept, bpmn_id) for dept in found)
            if is_earlier:
                before.setdefault(instance, set()).update((dept, bpmn_id) for dept in found)
    keysets = {}
    for instance in instances:
        keys = _keys(pairs.get(instance, ()))
        if since is not None:
            keys -= _keys(before.get(instance, ()))
        keysets[instance] = groups.keyset(frozenset(keys))
    return keysets


def _keys(pairs) -> set:
    keys = {(ALL, ALL)}
    for dept, item in pairs:
        keys.update(((dept, ALL), (ALL, item), (dept, item)))
    return keys


def _task_facts(conn, lo: datetime | None, hi: datetime, case_where: list, groups: _Groups, calendar,
                parts: frozenset = PARTS) -> None:
    """Step figures of [lo, hi): events of steps, steps finished, under each step's own department and item."""
    key, clerk = process_definition.c.key, process_instance.c.started_by
    text = cast(human_task.c.departments, String)
    cache: dict[tuple, tuple[int, int]] = {}

    def keysets(departments_text, bpmn_id) -> tuple[int, int]:
        """The keysets of a step: every figure, and (with a department) the per-department step figures."""
        found = cache.get((departments_text, bpmn_id))
        if found is None:
            if departments_text is None:           # an event without a projected step: only the totals
                found = (groups.keyset(frozenset({(ALL, ALL)})), groups.keyset(frozenset()))
            else:
                keys = _keys({(d, bpmn_id) for d in _departments(json.loads(departments_text))})
                found = (groups.keyset(frozenset(keys)), groups.keyset(frozenset(k for k in keys if k[0])))
            cache[(departments_text, bpmn_id)] = found
        return found

    def period(column):
        return [column < hi] if lo is None else [column >= lo, column < hi]

    # 1. step-level audit events by type
    if "events" in parts:
        day = _day_expr(conn, audit_event.c.at)
        query = (select(day, key, clerk, text, human_task.c.bpmn_id, audit_event.c.type, func.count())
                 .select_from(audit_event.join(process_instance, process_instance.c.id == audit_event.c.instance_id)
                              .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                              .outerjoin(human_task, human_task.c.id == audit_event.c.task_id))
                 .where(audit_event.c.type.in_(list(TASK_EVENTS)), *period(audit_event.c.at), *case_where)
                 .group_by(day, key, clerk, text, human_task.c.bpmn_id, audit_event.c.type))
        for day_, flow, clerk_, departments, bpmn_id, type_, n in conn.execute(query).all():
            groups.add(day_, flow, clerk_, keysets(departments, bpmn_id)[0], False, TASK_EVENTS[type_], n)
    # 2. steps finished: by light, and per department completed, late, closed without a decision, and (with a
    # calendar) the office time each completed step took, for the ranking's speed per department
    if "steps" not in parts:
        return
    day = _day_expr(conn, human_task.c.completed_at)
    light = func.coalesce(human_task.c.light, "green")
    late = case((and_(human_task.c.due_at.is_not(None), human_task.c.completed_at > human_task.c.due_at), 1), else_=0)
    columns = [day, key, clerk, text, human_task.c.bpmn_id, human_task.c.status, light]
    if calendar is None:
        columns += [func.count(), func.sum(late)]
    else:
        columns += [literal_column("1"), late, human_task.c.created_at, human_task.c.completed_at]
    query = (select(*columns)
             .select_from(human_task.join(process_instance, process_instance.c.id == human_task.c.instance_id)
                          .join(process_definition, process_definition.c.id == process_instance.c.definition_id))
             .where(*period(human_task.c.completed_at), human_task.c.status.in_(["completed", "cancelled"]),
                    *case_where))
    if calendar is None:
        query = query.group_by(*columns[:7])
    for day_, flow, clerk_, departments, bpmn_id, status, light_, n, late_n, *moments in conn.execute(query).all():
        every, steps = keysets(departments, bpmn_id)
        if status == "completed":
            groups.add(day_, flow, clerk_, every, False, "tasks_" + _light_name(light_), n)
            groups.add(day_, flow, clerk_, steps, True, "step_completed", n)
            if late_n:
                groups.add(day_, flow, clerk_, steps, True, "step_late", int(late_n))
            if moments:
                seconds = round(calendar.working_seconds_between(*moments))
                groups.add(day_, flow, clerk_, steps, True, "step_seconds", seconds)
        else:
            groups.add(day_, flow, clerk_, steps, True, "step_closed", n)


def _chunks(conn, items: list, size: int = 50000) -> list[list]:
    size = min(size, 900) if conn.dialect.name == "sqlite" else size   # SQLite: bound parameters per statement
    return [items[i:i + size] for i in range(0, len(items), size)]


def _among(conn, column, ids: list[int]):
    """column IN ids; on PostgreSQL as one array parameter, which costs nothing to send however long."""
    if conn.dialect.name == "sqlite":
        return column.in_(ids)
    return column == any_(bindparam("ids", ids, type_=ARRAY(Integer), unique=True))


def _cases_with_tasks_created(conn, since: datetime, until: datetime | None = None, task_where=()) -> list[int]:
    """Cases that got a step (one `task_where` takes) in [since, until): each is recorded as a task_created event."""
    query = select(audit_event.c.instance_id).distinct().where(
        audit_event.c.type == "task_created", audit_event.c.at >= since, audit_event.c.instance_id.is_not(None))
    if until is not None:
        query = query.where(audit_event.c.at < until)
    if task_where:
        query = query.join(human_task, human_task.c.id == audit_event.c.task_id).where(*task_where)
    return list(conn.execute(query).scalars())


def roll_up(db: Database, now: datetime | None = None, max_days: int | None = None, wait: bool = True) -> int:
    """Store the figures of every finished local day not yet rolled up; returns the number of days added.

    A day is finished an hour after its local midnight has passed, so every transaction that could still
    record something dated that day has committed; nothing is recorded later with an earlier date. Cases
    that gain a department or step later move their earlier figures along as the following days are rolled;
    a case migration to another version makes the days since the migrated case started count again.
    Without `wait` (a request), nothing is rolled while another process is rolling up.
    """
    now = now or db.config.now()
    refresh_durations(db)
    last = (now - ROLL_MARGIN).astimezone(LOCAL_TZ).date() - timedelta(days=1)
    added = 0
    while max_days is None or added < max_days:
        with db.read() as conn:
            if not _roll_due(conn, last):
                break
        budget = None if max_days is None else max_days - added
        days = db.run(lambda conn: _roll_chunk(db, conn, now, last, budget, wait))
        if not days:
            break
        added += days
    return added


def _roll_due(conn, last: date) -> bool:
    """Whether a finished day is not rolled up yet or a migration asks for days to be counted again."""
    state = _roll_state(conn)
    rolled_until = state["rolled_until"]
    if rolled_until is None:
        started = conn.execute(select(func.min(process_instance.c.started_at))).scalar()
        return started is not None and started.astimezone(LOCAL_TZ).date() <= last
    earliest, _seen = _pending_migrations(conn, state, None)
    return rolled_until <= last or (earliest is not None and earliest < rolled_until)


def _roll_chunk(db: Database, conn, now: datetime, last: date, budget: int | None, wait: bool = True) -> int:
    """Roll up to a month of days in one transaction, holding the roll-up row so one process rolls at a time."""
    state = _roll_state(conn, lock=True, wait=wait)
    if state is None:
        return 0          # another process is rolling up
    rolled_until = state["rolled_until"]
    earliest, seen = _pending_migrations(conn, state, now)
    if rolled_until is not None and earliest is not None and earliest < rolled_until:
        conn.execute(delete(supervision_day).where(supervision_day.c.day >= earliest))
        rolled_until = earliest
    first = rolled_until
    if first is None:
        started = conn.execute(select(func.min(process_instance.c.started_at))).scalar()
        first = started.astimezone(LOCAL_TZ).date() if started is not None else last + timedelta(days=1)
    stop = min(first + timedelta(days=ROLL_UP_CHUNK_DAYS), last + timedelta(days=1))
    if budget is not None:
        stop = min(stop, first + timedelta(days=budget))
    if stop <= first:
        _save_roll_state(conn, rolled_until, now, seen)
        return 0
    lo, hi = _midnight(first), _midnight(stop)
    _insert_days(conn, _measure(conn, lo, hi, as_of=hi, calendar=calendar_for(db, conn)))
    if rolled_until is not None:
        # Cases that got steps in these days carry their earlier figures to the keys those steps add.
        gained = _cases_with_tasks_created(conn, lo, hi)
        if gained:
            _merge_days(conn, _measure(conn, None, lo, as_of=hi, instances=gained, since=lo))
    _save_roll_state(conn, stop, now, seen)
    return (stop - first).days


def _roll_state(conn, lock: bool = False, wait: bool = True) -> dict | None:
    """The roll-up's row; with `lock`, held for the transaction (None when another holds it and not `wait`)."""
    query = select(supervision_roll).where(supervision_roll.c.id == 1)
    if not lock:
        row = conn.execute(query).mappings().first()
        return dict(row) if row is not None else {"rolled_until": None, "checked_at": None, "seen": []}
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    conn.execute(insert(supervision_roll).on_conflict_do_nothing(),
                 {"id": 1, "rolled_until": None, "checked_at": None, "seen": []})
    row = conn.execute(query.with_for_update(skip_locked=not wait)).mappings().first()
    return dict(row) if row is not None else None


def _save_roll_state(conn, rolled_until: date | None, now: datetime, seen: list[str]) -> None:
    conn.execute(update(supervision_roll).where(supervision_roll.c.id == 1)
                 .values(rolled_until=rolled_until, checked_at=now, seen=seen))


def _pending_migrations(conn, state: dict, now: datetime | None) -> tuple[date | None, list[str]]:
    """The first local day of the cases migrated (or rolled back) since the last roll-up looked, and what it saw.

    Migration rewrites open steps' departments and bpmn ids, so those cases' days must be counted again.
    Looking back one margin catches migrations that committed late; `seen` keeps them from counting twice.
    """
    checked_at = state["checked_at"]
    if checked_at is None:
        return None, []
    since = checked_at - ROLL_MARGIN
    m = case_migration.c
    rows = conn.execute(select(m.id, m.migrated_at, m.rolled_back_at, process_instance.c.started_at)
                        .join(process_instance, process_instance.c.id == m.instance_id)
                        .where(or_(m.migrated_at >= since, m.rolled_back_at >= since))).all()
    seen = set(state["seen"] or [])
    events = [(f"{kind}{row.id}", at, row.started_at) for row in rows
              for kind, at in (("m", row.migrated_at), ("r", row.rolled_back_at)) if at is not None and at >= since]
    new = [started for name, _at, started in events if name not in seen]
    earliest = min(new).astimezone(LOCAL_TZ).date() if new else None
    keep = [name for name, at, _started in events if now is not None and at >= now - ROLL_MARGIN]
    return earliest, keep


def _rolled_until(conn) -> date | None:
    """The first local day whose figures are not rolled up (None before the first roll-up).

    Days from the start of a case migrated since the last roll-up count as not rolled up until the next one.
    """
    state = _roll_state(conn)
    rolled_until = state["rolled_until"]
    if rolled_until is None:
        return None
    earliest, _seen = _pending_migrations(conn, state, None)
    return min(rolled_until, earliest) if earliest is not None else _as_date(rolled_until)


def _insert_days(conn, measured: dict) -> None:
    rows = [_day_row(key, values) for key, values in measured.items()]
    for start in range(0, len(rows), 2000):
        conn.execute(supervision_day.insert(), rows[start:start + 2000])


def _merge_days(conn, measured: dict) -> None:
    """Add figures to days already rolled up (read, add, write back: the roll-up row lock is held)."""
    t = supervision_day
    columns = (t.c.day, t.c.flow, t.c.clerk, t.c.department, t.c.item)
    wanted = {(_as_date(day), flow, clerk, dept, item): values
              for (day, flow, clerk, dept, item), values in measured.items()}
    keys = list(wanted)
    for chunk in _chunks(conn, keys, 150):
        for row in conn.execute(select(t).where(tuple_(*columns).in_(chunk))).mappings():
            values = wanted[(_as_date(row["day"]), row["flow"], row["clerk"], row["department"], row["item"])]
            for name in FIGURES:
                if row[name]:
                    values[name] = values.get(name, 0) + row[name]
            for bucket, count in (row["histogram"] or {}).items():
                values[int(bucket)] = values.get(int(bucket), 0) + count
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    statement = insert(t)
    statement = statement.on_conflict_do_update(
        index_elements=[c.name for c in t.primary_key.columns],
        set_={name: statement.excluded[name] for name in (*FIGURES, "histogram")})
    rows = [_day_row(key, values) for key, values in wanted.items()]
    for start in range(0, len(rows), 2000):
        conn.execute(statement, rows[start:start + 2000])


def _day_row(key: tuple, values: dict) -> dict:
    day, flow, clerk, dept, item = key
    row = {"day": _as_date(day), "flow": flow, "clerk": clerk, "department": dept, "item": item,
           **dict.fromkeys(FIGURES, 0)}
    histogram = {}
    for name, value in values.items():
        if isinstance(name, int):
            histogram[str(name)] = value
        else:
            row[name] = value
    row["histogram"] = histogram or None
    return row


@contextmanager
def read_snapshot(db: Database) -> Iterator:
    """A read transaction that sees one snapshot throughout, so a roll-up committing meanwhile is seen whole."""
    if db.is_sqlite:
        with db.read() as conn:     # WAL: a read transaction keeps the snapshot of its first read
            yield conn
        return
    with db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        with conn.begin():
            yield conn


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
    # departments is a JSON list of keys; its text contains the key as JSON writes it exactly when the list
    # does. A step without departments is the window's (as _departments reads it).
    text = cast(human_task.c.departments, String)
    found = text.like(f"%{_escape_like(json.dumps(key))}%", escape="\\")
    return or_(found, text.in_(["[]", "null"])) if key == WINDOW else found


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


def _median(conn, lo, hi, filters: dict, histogram: dict[int, int]) -> float | None:
    """The exact median office time: the histogram names the bucket and the rank in it; only that bucket is read.

    Under a department or item filter the bucket's cases are checked for such a step a batch at a time, from
    the end of the bucket nearer to the rank, until the rank is reached.
    """
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
    rank, count = first_rank - seen, histogram[bucket]      # 1-based rank among the bucket's `count` cases
    rows = _bucket_rows(conn, lo, hi, filters, bucket)
    if rank - 1 <= count - rank:
        values = _taking(conn, filters, rows, rank + wanted - 1)[rank - 1:]
    else:
        from_top = _taking(conn, filters, rows[::-1], count - rank + 1)
        values = from_top[::-1][:wanted]
    if len(values) < wanted:               # the next rank is the smallest value of the next bucket
        following = min((b for b in histogram if b > bucket), default=None)
        if following is not None:
            values += _taking(conn, filters, _bucket_rows(conn, lo, hi, filters, following), 1)
    return float(stats_lib.fmean(values)) if values else None


def _bucket_rows(conn, lo, hi, filters: dict, bucket: int) -> list[tuple[int, int]]:
    """(case, office time) in one histogram bucket of the cases completed in [lo, hi) of the flow and clerk, sorted."""
    d = case_duration.c
    # The bucket is the narrow condition. OFFSET 0 keeps it a subquery that PostgreSQL reads by the net_seconds
    # index, also in a generic plan of the (auto-prepared) statement, which would rather use ended_at's.
    in_bucket = (select(d.instance_id, d.net_seconds, d.ended_at)
                 .where(d.net_seconds >= bucket * HISTOGRAM_BUCKET_SECONDS,
                        d.net_seconds < (bucket + 1) * HISTOGRAM_BUCKET_SECONDS).offset(0).subquery())
    query = select(in_bucket.c.instance_id, in_bucket.c.net_seconds).where(
        in_bucket.c.ended_at >= lo, in_bucket.c.ended_at < hi)
    if filters["flow"] or filters["clerk"]:
        query = query.join(process_instance, process_instance.c.id == in_bucket.c.instance_id).where(
            *_case_filters({**filters, "department": None, "item": None}, None))
        if filters["flow"]:
            query = query.join(process_definition, process_definition.c.id == process_instance.c.definition_id)
    return sorted(conn.execute(query).all(), key=lambda row: (row[1], row[0]))


def _taking(conn, filters: dict, rows: list, needed: int) -> list[int]:
    """The office times of the first `needed` of `rows` whose cases the department and item filters take."""
    task_where = _task_filters(filters)
    if not task_where:
        return [row[1] for row in rows[:needed]]
    taken: list[int] = []
    for start in range(0, len(rows), MEDIAN_BATCH):
        batch = rows[start:start + MEDIAN_BATCH]
        having = set(conn.execute(select(human_task.c.instance_id).distinct().where(
            _among(conn, human_task.c.instance_id, [row[0] for row in batch]), *task_where)).scalars())
        taken += [row[1] for row in batch if row[0] in having]
        if len(taken) >= needed:
            return taken[:needed]
    return taken


def _day_expr(conn, column):
    if conn.dialect.name == "sqlite":
        return func.date(column, literal_column(f"'+{LOCAL_OFFSET_HOURS} hours'"))
    return cast(column + literal_column(f"interval '{LOCAL_OFFSET_HOURS} hours'"), Date)


def _month_expr(conn, day_column):
    if conn.dialect.name == "sqlite":
        return func.strftime(literal_column("'%Y-%m'"), day_column)
    return func.to_char(day_column, literal_column("'YYYY-MM'"))


def _trend(sums: dict[str, dict], lo: datetime, hi: datetime) -> list[dict]:
    months = {name: {"month": name, "received": 0, "completed": 0, "on_time": 0, "cases_overdue": 0}
              for name in _months(lo, hi)}
    for month, values in sums.items():
        if month in months:
            for figure, name in TREND_FIGURES.items():
                months[month][name] += values[figure]
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


def _per_department(sums: dict[str, dict], names: dict) -> list[dict]:
    """Steps finished in the period per department: completed, on time, late, closed without a decision."""
    found = []
    for dept in sorted(sums):
        values = sums[dept]
        completed, late = values.get("step_completed", 0), values.get("step_late", 0)
        if not (completed or values.get("step_closed")):
            continue
        found.append({"department": dept, "name": names.get(dept, dept), "completed": completed,
                      "on_time": completed - late, "late": late,
                      "closed_without_decision": values.get("step_closed", 0),
                      "on_time_rate": _ratio(completed - late, completed)})
    return found


def _light_name(value: str | None) -> str:
    return value if value in LIGHTS else "green"


def _as_date(value) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _satisfaction(totals: dict) -> dict | None:
    count = totals.get("ratings", 0)
    if not count:
        return None
    return {"ratings": count, "average_score": round(totals.get("rating_sum", 0) / count, 2),
            "satisfied_rate": _ratio(totals.get("rating_satisfied", 0), count)}


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
    return list(value) if value else [WINDOW]


def _speed_up(net, limit) -> float | None:
    return round(1 - float(net) / float(limit), 4) if limit else None


def _ratio(part, whole) -> float | None:
    return round(part / whole, 4) if whole else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None

