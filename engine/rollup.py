"""The daily roll-up of supervision figures into supervision_day, and reading rolled-up days back."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Iterator

from sqlalchemy import delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .durations import refresh_durations
from .figures import (
    ALL,
    EVERY,
    FIGURES,
    LOCAL_TZ,
    STEP_FIGURES,
    STEPS,
    add_figures,
    cases_with_tasks_created,
    chunks,
    measure,
    midnight,
)
from .store import Database, case_migration, process_instance, supervision_day, supervision_roll
from .timekeeping import calendar_for

ROLL_UP_CHUNK_DAYS = 31
REQUEST_ROLL_UP_DAYS = 62
ROLL_MARGIN = timedelta(hours=1)   # how long a transaction may take to commit what it recorded
WINDOW_FIGURES = ("dur_n", "dur_on_time", "dur_net", "ratings", "rating_sum")


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
    lo, hi = midnight(first), midnight(stop)
    _insert_days(conn, measure(conn, lo, hi, as_of=hi, calendar=calendar_for(db, conn)))
    if rolled_until is not None:
        # Cases that got steps in these days carry their earlier figures to the keys those steps add.
        gained = cases_with_tasks_created(conn, lo, hi)
        if gained:
            _merge_days(conn, measure(conn, None, lo, as_of=hi, instances=gained, since=lo))
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


def rolled_until(conn) -> date | None:
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
    for chunk in chunks(conn, keys, 150):
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


def monthly_figures(conn, first: date, stop: date, calendar) -> tuple[dict, dict]:
    """Steps finished per department and cases completed per receiving window clerk in [first, stop).

    For the 红旗窗口 ranking: {department: step figures}, {clerk: case figures}, rolled-up days plus the rest live.
    """
    departments: dict[str, dict] = {}
    windows: dict[str, dict] = {}
    t = supervision_day
    rolled = rolled_until(conn)
    until = first
    if rolled is not None and rolled > first:
        until = min(rolled, stop)
        in_range = [t.c.item == ALL, t.c.day >= first, t.c.day < until]
        for row in conn.execute(select(t.c.department, *rolled_sums(STEP_FIGURES))
                                .where(*in_range, t.c.clerk == ALL, t.c.department != ALL)
                                .group_by(t.c.department)).mappings():
            add_figures(departments.setdefault(row["department"], {}), row, STEP_FIGURES)
        for row in conn.execute(select(t.c.clerk, *rolled_sums(WINDOW_FIGURES))
                                .where(*in_range, t.c.department == ALL, t.c.clerk != ALL)
                                .group_by(t.c.clerk)).mappings():
            add_figures(windows.setdefault(row["clerk"], {}), row, WINDOW_FIGURES)
    if until < stop:
        def want(clerk, dept, item):
            if item:
                return None
            if clerk == ALL:
                return STEPS if dept else None
            return EVERY if not dept else None
        measured = measure(conn, midnight(until), midnight(stop), want=want, calendar=calendar, only=(ALL, ALL),
                           parts=frozenset({"durations", "ratings", "steps"}))
        for (_day, _flow, clerk, dept, _item), values in measured.items():
            if clerk == ALL:
                add_figures(departments.setdefault(dept, {}), values, STEP_FIGURES)
            else:
                add_figures(windows.setdefault(clerk, {}), values, WINDOW_FIGURES)
    return departments, windows


def rolled_sums(names) -> list:
    return [func.coalesce(func.sum(supervision_day.c[name]), 0).label(name) for name in names]


def _as_date(value) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
