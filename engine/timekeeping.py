"""The calendar in force: the package's schedule plus the administrators' days and years from the database."""
from __future__ import annotations

import threading
import time
from datetime import date, datetime
from pathlib import Path

import yaml
from sqlalchemy import delete, select

from . import audit
from .calendar import OfficeHours, WorkCalendar
from .errors import InvalidInput, Problem
from .store import Database, calendar_day, calendar_year

_CACHE_SECONDS = 5.0  # admin edits reach every process within this long, without a query per step
_cache: dict[str, tuple[float, WorkCalendar]] = {}
_lock = threading.Lock()


def calendar_for(db: Database, conn=None) -> WorkCalendar:
    with _lock:
        cached = _cache.get(db.url)
    if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
        return cached[1]
    if conn is None:
        with db.read() as own:
            calendar = _build(db, own)
    else:
        calendar = _build(db, conn)
    with _lock:
        _cache[db.url] = (time.monotonic(), calendar)
    return calendar


def forget_cached_calendar() -> None:
    with _lock:
        _cache.clear()


def _build(db: Database, conn) -> WorkCalendar:
    overrides = {r.day: (r.workday, r.holiday_name) for r in conn.execute(select(calendar_day))}
    years = [r.year for r in conn.execute(select(calendar_year.c.year))]
    hours = OfficeHours.parse(db.config.office_hours, db.config.timezone)
    return WorkCalendar(overrides, hours, years)


def parse_schedule(text: str, source: str = "schedule") -> tuple[int, dict[date, tuple[bool, str | None]]]:
    """A year's schedule: `year`, `holidays` (dates or from/to ranges with a name), `workdays` (调休 days)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(Problem(f"{source}: not valid YAML: {exc}", file=source)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("year"), int):
        raise InvalidInput(Problem(f"{source}: needs `year: YYYY`", file=source, field="year"))
    year = raw["year"]
    days: dict[date, tuple[bool, str | None]] = {}
    problems = []
    for index, entry in enumerate(raw.get("holidays") or []):
        try:
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(entry, dict) and "from" in entry:
                first, last = _as_date(entry["from"]), _as_date(entry["to"])
            else:
                first = last = _as_date(entry["date"] if isinstance(entry, dict) else entry)
            if first > last:
                raise ValueError("`from` is after `to`")
            for ordinal in range(first.toordinal(), last.toordinal() + 1):
                days[date.fromordinal(ordinal)] = (False, name)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(Problem(f"{source}: holidays[{index}]: {exc}", file=source, field=f"holidays[{index}]"))
    for index, entry in enumerate(raw.get("workdays") or []):
        try:
            days[_as_date(entry)] = (True, None)
        except (TypeError, ValueError) as exc:
            problems.append(Problem(f"{source}: workdays[{index}]: {exc}", file=source, field=f"workdays[{index}]"))
    outside = sorted(d for d in days if d.year != year)
    if outside:
        problems.append(Problem(f"{source}: {outside[0]} is not in {year}", file=source))
    if problems:
        raise InvalidInput(problems)
    return year, days


def load_schedule(db: Database, text: str, source: str = "schedule", actor: str | None = None) -> dict:
    """Replace a year's schedule in one transaction; the year then counts as loaded (not provisional)."""
    year, days = parse_schedule(text, source)

    def store(conn):
        conn.execute(delete(calendar_day).where(calendar_day.c.day >= date(year, 1, 1),
                                                calendar_day.c.day <= date(year, 12, 31)))
        if days:
            conn.execute(calendar_day.insert(), [
                {"day": d, "workday": w, "holiday_name": n, "note": source} for d, (w, n) in sorted(days.items())])
        conn.execute(delete(calendar_year).where(calendar_year.c.year == year))
        conn.execute(calendar_year.insert().values(year=year, loaded_at=db.config.now(), source=Path(source).name))
        audit.record(conn, db.config.now(), actor, "calendar_loaded", data={"year": year, "days": len(days)})

    db.run(store)
    forget_cached_calendar()
    return {"year": year, "holidays": sum(1 for w, _ in days.values() if not w),
            "workdays": sum(1 for w, _ in days.values() if w)}


def set_day(db: Database, day: date | str, workday: bool, holiday_name: str | None = None,
            note: str | None = None, actor: str | None = None) -> None:
    """A local adjustment of one day (e.g. a city's extra closure)."""
    try:
        day = _as_date(day)
    except ValueError:
        raise InvalidInput(Problem(f"not a date like 2026-10-01: {day!r}", field="date")) from None

    def store(conn):
        conn.execute(delete(calendar_day).where(calendar_day.c.day == day))
        conn.execute(calendar_day.insert().values(day=day, workday=workday, holiday_name=holiday_name, note=note))
        audit.record(conn, db.config.now(), actor, "calendar_day_set",
                     data={"day": day.isoformat(), "workday": workday, "holiday_name": holiday_name})

    db.run(store)
    forget_cached_calendar()


def deadline(db: Database, start: str, workdays: str | None = None, workhours: str | None = None) -> dict:
    """A deadline on the calendar in force, from request-style text; bad input names the field."""
    problems = []
    try:
        moment = datetime.fromisoformat(start or "")
        if moment.tzinfo is None:
            problems.append(Problem("start needs a UTC offset, e.g. 2026-09-30T10:00:00+08:00", field="start"))
    except ValueError:
        problems.append(Problem(f"start must be an ISO-8601 date-time, got {start!r}", field="start"))
    if (workdays is None) == (workhours is None):
        problems.append(Problem("give exactly one of workdays or workhours", field="workdays"))
    amount = None
    try:
        amount = int(workdays) if workdays is not None else float(workhours) if workhours is not None else None
        if amount is not None and not 0 <= amount <= 100000:
            raise ValueError
    except ValueError:
        field = "workdays" if workdays is not None else "workhours"
        problems.append(Problem(f"{field} must be a non-negative {'whole ' if field == 'workdays' else ''}number",
                                field=field))
    if problems:
        raise InvalidInput(problems)
    calendar = calendar_for(db)
    result = calendar.add_workdays(moment, amount) if workdays is not None else calendar.add_workhours(moment, amount)
    return {"deadline": result.at.isoformat(), "provisional": result.provisional}


def day(db: Database, text: str) -> dict:
    try:
        info = calendar_for(db).day(date.fromisoformat(text))
    except ValueError:
        raise InvalidInput(Problem(f"not a date like 2026-10-01: {text!r}", field="date")) from None
    return {"date": info.date.isoformat(), "workday": info.workday, "holiday_name": info.holiday_name,
            "provisional": info.provisional}


def coverage(db: Database) -> dict:
    """Which years the calendar knows for certain; deadlines beyond them are provisional."""
    calendar = calendar_for(db)
    with db.read() as conn:
        loaded = [{"year": r.year, "loaded_at": r.loaded_at.isoformat(), "source": r.source}
                  for r in conn.execute(select(calendar_year).order_by(calendar_year.c.year))]
    return {"covered_years": calendar.covered_years(), "loaded_years": loaded,
            "office_hours": db.config.office_hours, "timezone": db.config.timezone}


def _as_date(value) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))
