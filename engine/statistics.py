"""Supervision statistics: the figures of a period under filters, read rolled up and live, the exact median, the CSV."""
from __future__ import annotations

import csv
import io
import statistics as stats_lib
from datetime import date, datetime, timedelta

from sqlalchemy import exists, func, literal_column, select

from . import rollup
from .accounts import User, department_names
from .errors import InvalidInput, PermissionDenied, Problem
from .figures import (
    ALL,
    CASE_EVENTS,
    EVERY,
    FIGURES,
    HISTOGRAM_BUCKET_SECONDS,
    LIGHTS,
    LOCAL_TZ,
    STEP_FIGURES,
    STEPS,
    TASK_EVENTS,
    add_figures,
    among,
    cases_with_tasks_created,
    measure,
    midnight,
    task_filters,
)
from .rollup import REQUEST_ROLL_UP_DAYS, read_snapshot, roll_up, rolled_sums
from .store import (
    Database,
    case_duration,
    human_task,
    process_definition,
    process_instance,
    supervision_day,
)
from .supervision import scope_of
from .timekeeping import calendar_for

MAX_PERIOD_DAYS = 3 * 366
MEDIAN_BATCH = 1000                # cases checked for a department's step per query while seeking the median
TREND_FIGURES = {"received": "received", "dur_n": "completed", "dur_on_time": "on_time",
                 "cases_overdue": "cases_overdue"}


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
    lo, hi = midnight(first), midnight(last + timedelta(days=1))
    filters = {"department": department_key or None, "flow": flow or None, "item": item or None,
               "clerk": clerk or None}
    # A request rolls up at most two months; a backlog (a new install on old data) is the worker's job,
    # and until then the days not rolled up are counted live, which gives the same figures, only slower.
    roll_up(db, now, max_days=REQUEST_ROLL_UP_DAYS, wait=False)
    reading = _Reading(filters["clerk"] or ALL, filters["department"] or ALL, filters["item"] or ALL)
    with read_snapshot(db) as conn:
        calendar = calendar_for(db, conn)
        per_day = calendar.office_hours.seconds_per_day
        rolled_until = rollup.rolled_until(conn)
        stop = first
        if rolled_until is not None and rolled_until > first:
            stop = min(rolled_until, last + timedelta(days=1))
            _read_rolled(conn, first, stop, filters["flow"], reading)
            if reading.department or reading.item:
                # Cases that gained a step of the department (or the item) after the roll-up filed them
                since = midnight(rolled_until)
                reading.add(measure(conn, lo, midnight(stop), want=reading.want, flow=filters["flow"],
                                    clerk=filters["clerk"], since=since,
                                    instances=cases_with_tasks_created(conn, since,
                                                                       task_where=task_filters(filters))))
        if midnight(stop) < hi:
            reading.add(measure(conn, max(lo, midnight(stop)), hi, want=reading.want, flow=filters["flow"],
                                clerk=filters["clerk"], only=(reading.department, reading.item)))
        totals = reading.totals
        median = _median(conn, lo, hi, filters, reading.histogram)
        names = department_names(conn)
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
                add_figures(self.departments.setdefault(dept, {}), values, STEP_FIGURES)

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
    for row in conn.execute(select(month, *rolled_sums(FIGURES)).where(*own).group_by(month)).mappings():
        reading.add_month(row["month"], {name: row[name] for name in FIGURES})
    for (histogram,) in conn.execute(select(t.c.histogram).where(*own, t.c.histogram.is_not(None))):
        for bucket, count in histogram.items():
            reading.histogram[int(bucket)] = reading.histogram.get(int(bucket), 0) + count
    which = t.c.department == reading.department if reading.department else t.c.department != ALL
    for row in conn.execute(select(t.c.department, *rolled_sums(STEP_FIGURES)).where(*where, which)
                            .group_by(t.c.department)).mappings():
        add_figures(reading.departments.setdefault(row["department"], {}), row, STEP_FIGURES)


def _case_filters(filters: dict, scope) -> list:
    where = []
    if filters["flow"]:
        where.append(process_definition.c.key == filters["flow"])
    if filters["clerk"]:
        where.append(process_instance.c.started_by == filters["clerk"])
    task_where = task_filters(filters)
    if task_where:
        where.append(exists().where(human_task.c.instance_id == process_instance.c.id, *task_where))
    return where


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
    task_where = task_filters(filters)
    if not task_where:
        return [row[1] for row in rows[:needed]]
    taken: list[int] = []
    for start in range(0, len(rows), MEDIAN_BATCH):
        batch = rows[start:start + MEDIAN_BATCH]
        having = set(conn.execute(select(human_task.c.instance_id).distinct().where(
            among(conn, human_task.c.instance_id, [row[0] for row in batch]), *task_where)).scalars())
        taken += [row[1] for row in batch if row[0] in having]
        if len(taken) >= needed:
            return taken[:needed]
    return taken


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


def _speed_up(net, limit) -> float | None:
    return round(1 - float(net) / float(limit), 4) if limit else None


def _ratio(part, whole) -> float | None:
    return round(part / whole, 4) if whole else None
