"""Counting supervision figures from the audit trail and the case and step rows, keyed by day, flow and step."""
from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import (ARRAY, Date, Integer, String, and_, any_, bindparam, case, cast, exists, func,
                        literal_column, or_, select)

from .store import (
    SUPERVISION_FIGURES,
    audit_event,
    case_duration,
    human_task,
    process_definition,
    process_instance,
    rating,
)

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
LOCAL_OFFSET_HOURS = 8   # China has kept UTC+8 without daylight saving since 1991; months are local months
HISTOGRAM_BUCKET_SECONDS = 2520   # a tenth of a 7-hour working day
ALL = ""                           # supervision_day's key for "every clerk", "any department", "any step"
EVERY, STEPS = "every", "steps"    # what a reading wants of a key: every figure, or the per-department ones
FIGURES = SUPERVISION_FIGURES
STEP_FIGURES = ("step_completed", "step_late", "step_closed", "step_seconds")
PARTS = frozenset({"events", "durations", "lights", "ratings", "steps"})   # the kinds of figures measure counts
LIGHTS = ("green", "yellow", "red")
WINDOW = "window"                  # the department of a step that names none (the comprehensive window)
# Case-level audit event types and the figure each one counts.
CASE_EVENTS = {"case_started": "received", "case_completed": "completed", "case_terminated": "terminated",
               "case_yellow": "case_warnings", "case_red": "cases_overdue",
               "statutory_limit_exceeded": "statutory_exceeded", "clock_paused": "pauses"}
TASK_EVENTS = {"task_yellow": "task_warnings", "task_red": "tasks_overdue", "deemed_consent": "deemed_consents",
               "task_sent_back": "send_backs", "task_completed": "tasks_completed"}


def measure(conn, lo: datetime | None, hi: datetime, want=None, flow: str | None = None, clerk: str | None = None,
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
        task_where = task_filters({"department": dept or None, "item": item or None})
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
        for chunk in chunks(conn, sorted(set(instances))):
            keysets = _case_keysets(conn, groups, chunk, as_of, since)
            gained = [instance for instance, keys in keysets.items() if groups.keysets[keys]]
            if gained:
                where = [*case_where, among(conn, process_instance.c.id, gained)]
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
    for chunk in chunks(conn, list(instances)):
        query = (select(human_task.c.instance_id, text, human_task.c.bpmn_id, earlier)
                 .where(among(conn, human_task.c.instance_id, chunk)).distinct())
        if as_of is not None:
            query = query.where(human_task.c.created_at < as_of)
        for instance, departments, bpmn_id, is_earlier in conn.execute(query).all():
            found = parsed.get(departments)
            if found is None:
                found = parsed[departments] = step_departments(json.loads(departments))
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
                keys = _keys({(d, bpmn_id) for d in step_departments(json.loads(departments_text))})
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


def cases_with_tasks_created(conn, since: datetime, until: datetime | None = None, task_where=()) -> list[int]:
    """Cases that got a step (one `task_where` takes) in [since, until): each is recorded as a task_created event."""
    query = select(audit_event.c.instance_id).distinct().where(
        audit_event.c.type == "task_created", audit_event.c.at >= since, audit_event.c.instance_id.is_not(None))
    if until is not None:
        query = query.where(audit_event.c.at < until)
    if task_where:
        query = query.join(human_task, human_task.c.id == audit_event.c.task_id).where(*task_where)
    return list(conn.execute(query).scalars())


def task_filters(filters: dict) -> list:
    where = []
    if filters["department"]:
        where.append(has_department(filters["department"]))
    if filters["item"]:
        where.append(human_task.c.bpmn_id == filters["item"])
    return where


def has_department(key: str):
    # departments is a JSON list of keys; its text contains the key as JSON writes it exactly when the list
    # does. A step without departments is the window's (as step_departments reads it).
    text = cast(human_task.c.departments, String)
    found = text.like(f"%{_escape_like(json.dumps(key))}%", escape="\\")
    return or_(found, text.in_(["[]", "null"])) if key == WINDOW else found


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def chunks(conn, items: list, size: int = 50000) -> list[list]:
    size = min(size, 900) if conn.dialect.name == "sqlite" else size   # SQLite: bound parameters per statement
    return [items[i:i + size] for i in range(0, len(items), size)]


def among(conn, column, ids: list[int]):
    """column IN ids; on PostgreSQL as one array parameter, which costs nothing to send however long."""
    if conn.dialect.name == "sqlite":
        return column.in_(ids)
    return column == any_(bindparam("ids", ids, type_=ARRAY(Integer), unique=True))


def _day_expr(conn, column):
    if conn.dialect.name == "sqlite":
        return func.date(column, literal_column(f"'+{LOCAL_OFFSET_HOURS} hours'"))
    return cast(column + literal_column(f"interval '{LOCAL_OFFSET_HOURS} hours'"), Date)


def add_figures(target: dict, values, names) -> None:
    for name in names:
        value = values.get(name)
        if value:
            target[name] = target.get(name, 0) + int(value)


def _light_name(value: str | None) -> str:
    return value if value in LIGHTS else "green"


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ)


def step_departments(value) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value) if value else [WINDOW]
