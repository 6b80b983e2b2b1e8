"""Read side of the clerk's task pages: 待办/已办 lists (filters, search, paging) and everything one task page shows."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import and_, func, literal_column, or_, select, union, union_all

from . import worklist
from .accounts import User, department_names
from .attachments import material_keys
from .errors import InvalidInput, NotFound, Problem
from .handover import URGE_ROLES
from .lights import GREEN, RED, YELLOW, light_of
from .projection import may_work_on, queues_of
from .runtime import send_back_targets
from .snapshot import case_data, decode, load_specs, read_state
from .store import (
    Database, app_user, attachment, audit_event, human_task, process_definition, process_instance, task_queue,
    user_department,
)
from .timekeeping import calendar_for

PAGE_SIZE = 50
MAX_PAGE = 10_000
MAX_DUE_WITHIN = 60
MAX_SEARCH = 64
LIGHTS = (GREEN, YELLOW, RED)
SORTS = ("due", "-due")
SEND_BACK_ROLES = ("lead", "admin")           # as engine.runtime.send_back checks
# The sweep (engine.lights) stores each open task's light; yellow begins at most a working day or so
# before the deadline and no holiday break is longer than this, so a stored yellow further out is stale.
_YELLOW_HORIZON = timedelta(days=14)
_MAX_COLLEAGUES = 200


@dataclass(frozen=True)
class TaskFilter:
    """What a clerk asked a list for; build it from query-string values with parse_filter."""

    department: str = ""
    process: str = ""
    light: str = ""
    overdue: bool = False
    due_within: int | None = None
    search: str = ""
    sort: str = "due"
    page: int = 1

    def as_args(self, **changes) -> dict:
        """The filter as query-string arguments without the defaults, e.g. for the pager's links."""
        chosen = replace(self, **changes)
        args = {"department": chosen.department, "process": chosen.process, "light": chosen.light,
                "overdue": "1" if chosen.overdue else "", "due_within": chosen.due_within,
                "q": chosen.search, "sort": "" if chosen.sort == "due" else chosen.sort,
                "page": chosen.page if chosen.page != 1 else None}
        return {k: v for k, v in args.items() if v not in ("", None)}


def parse_filter(args: Mapping[str, str]) -> TaskFilter:
    """Check a list's query-string arguments; InvalidInput names every bad one."""
    problems = []

    def text(name: str, limit: int = 64) -> str:
        # Control characters never belong in a filter, and PostgreSQL refuses NUL outright.
        value = "".join(ch for ch in str(args.get(name) or "") if ch >= " ").strip()
        if len(value) > limit:
            problems.append(Problem(f"at most {limit} characters", field=name))
            return ""
        return value

    def number(name: str, low: int, high: int, message: str) -> int | None:
        raw = text(name)
        if not raw:
            return None
        if not raw.isdigit() or not low <= int(raw) <= high:
            problems.append(Problem(message, field=name))
            return None
        return int(raw)

    light = text("light")
    if light and light not in LIGHTS:
        problems.append(Problem(f"must be one of {', '.join(LIGHTS)}", field="light"))
    sort = text("sort") or "due"
    if sort not in SORTS:
        problems.append(Problem(f"must be one of {', '.join(SORTS)}", field="sort"))
    overdue = text("overdue")
    if overdue not in ("", "1", "on", "true"):
        problems.append(Problem("must be 1 or left out", field="overdue"))
    due_within = number("due_within", 0, MAX_DUE_WITHIN,
                        f"must be a whole number of working days from 0 to {MAX_DUE_WITHIN}")
    page = number("page", 1, MAX_PAGE, f"must be a whole number from 1 to {MAX_PAGE}") or 1
    result = TaskFilter(department=text("department"), process=text("process", 255), light=light,
                        overdue=bool(overdue), due_within=due_within, search=text("q", MAX_SEARCH), sort=sort,
                        page=page)
    if problems:
        raise InvalidInput(problems, "the list's filters are not valid")
    return result


# ---- the lists ------------------------------------------------------------------------------------
# Both lists run as: one count, one page of ids walked in index order, one join for the ≤ 50 rows shown.
# The indexes they are written for (bench/bench_pages.py REQUESTED_INDEXES): human_task (status, assignee,
# due_at, id, instance_id, light) so the unclaimed-queue walk never reads a table row, (delegated_from,
# status), (completed_by, completed_at, instance_id); process_instance (applicant), (definition_id, status).

_ROW_COLUMNS = (
    human_task.c.id, human_task.c.instance_id, human_task.c.bpmn_id, human_task.c.name, human_task.c.departments,
    human_task.c.assignee, human_task.c.status, human_task.c.created_at, human_task.c.due_at,
    human_task.c.completed_at, human_task.c.completed_by, human_task.c.yellow_seconds, human_task.c.delegated_from,
    human_task.c.urge_count, process_instance.c.case_no, process_instance.c.applicant,
    process_definition.c.key.label("process_key"), process_definition.c.name.label("process_name"),
    process_definition.c.version,
)


def open_tasks(db: Database, user: User, wanted: TaskFilter = TaskFilter()) -> dict:
    """待办: unclaimed tasks of the user's queues, tasks they hold and tasks they delegated; soonest due first."""
    queues = queues_of(user)
    if wanted.department and wanted.department not in queues:
        raise InvalidInput(Problem("not one of your departments", field="department"))
    now = db.config.now()
    with db.read() as conn:
        calendar = calendar_for(db, conn)
        in_queues = select(task_queue.c.human_task_id).where(
            task_queue.c.department_key.in_([wanted.department] if wanted.department else queues or [""]))
        shared = _instance_conditions(wanted, running_only=True)
        if wanted.overdue:
            shared.append(human_task.c.due_at <= now)
        if wanted.due_within is not None:
            shared.append(human_task.c.due_at <= calendar.add_workdays(now, wanted.due_within).at)
        if wanted.light:
            shared.append(_light_condition(wanted.light, now))
        # `id + 0`: the queue is a set to test against, never a list of ids to drive from. SQLite, with no
        # statistics, would otherwise cross it with the flow/search set on (instance_id, status, rowid).
        queued = (human_task.c.id + 0).in_(in_queues)
        arms = [[human_task.c.status == "open", human_task.c.assignee.is_(None), queued, *shared]]
        # The few tasks the user holds or delegated are listed first and then matched by id alone: with
        # `status` in that arm as well, SQLite would walk every open task by due time instead.
        held = list(conn.execute(select(human_task.c.id).where(
            human_task.c.status == "open", human_task.c.assignee == user.username)).scalars())
        held += conn.execute(select(human_task.c.id).where(
            human_task.c.status == "open", human_task.c.delegated_from == user.username)).scalars()
        if held:
            arms.append([human_task.c.id.in_(held), *shared, *([queued] if wanted.department else [])])
        page = _due_ordered_page(conn, arms, wanted)
        rows = _rows(conn, page["ids"])
        page["choices"] = _choices(conn, queues)
    page["rows"] = [_row(r, calendar, now, db.config.local) for r in rows]
    return page


def done_tasks(db: Database, user: User, wanted: TaskFilter = TaskFilter()) -> dict:
    """已办: the tasks this user completed or sent back (only those set completed_by), most recent first."""
    now = db.config.now()
    with db.read() as conn:
        calendar = calendar_for(db, conn)
        mine = [human_task.c.completed_by == user.username, *_instance_conditions(wanted, running_only=False)]
        total = conn.execute(select(func.count()).select_from(human_task).where(*mine)).scalar_one()
        ids = list(conn.execute(select(human_task.c.id).where(*mine)
                                .order_by(human_task.c.completed_at.desc(), human_task.c.id.desc())
                                .limit(PAGE_SIZE).offset((wanted.page - 1) * PAGE_SIZE)).scalars())
        rows = _rows(conn, ids)
        choices = _choices(conn, [])
    return {"rows": [_row(r, calendar, now, db.config.local) for r in rows], "total": total,
            "page": wanted.page, "pages": _pages(total), "per_page": PAGE_SIZE, "choices": choices}


def _instance_conditions(wanted: TaskFilter, running_only: bool) -> list:
    """Flow and search pick cases through their own indexes; tasks are then matched by instance_id.

    Written as IN (subquery) on purpose: SQLite (which the application never ANALYZEs) then walks the task
    index and probes the small set, where a join lets it pick a nested loop over every case.
    """
    conditions = []
    if wanted.process:
        flow = [process_instance.c.definition_id.in_(
            select(process_definition.c.id).where(process_definition.c.key == wanted.process))]
        if running_only:
            flow.append(process_instance.c.status == "running")
        conditions.append(human_task.c.instance_id.in_(select(process_instance.c.id).where(*flow)))
    if wanted.search:
        # Prefix ranges rather than LIKE: they use the case-number and applicant indexes on both databases.
        low, high = wanted.search, _prefix_end(wanted.search)
        conditions.append(human_task.c.instance_id.in_(union(
            select(process_instance.c.id).where(process_instance.c.case_no >= low, process_instance.c.case_no < high),
            select(process_instance.c.id).where(process_instance.c.applicant >= low,
                                                process_instance.c.applicant < high))))
    return conditions


def _prefix_end(prefix: str) -> str:
    """The smallest string above every string that starts with prefix (code-point order, as UTF-8 bytes sort)."""
    following = ord(prefix[-1]) + 1
    if following > 0x10FFFF:
        return prefix + "\U0010ffff"
    if 0xD800 <= following <= 0xDFFF:   # surrogates cannot be stored; the next storable character is U+E000
        following = 0xE000
    return prefix[:-1] + chr(following)


def _light_condition(light: str, now: datetime):
    """Red is exact (the deadline has passed); yellow is the sweep's stored state, trusted within its horizon."""
    overdue = human_task.c.due_at <= now
    yellow = and_(human_task.c.due_at > now, human_task.c.due_at <= now + _YELLOW_HORIZON,
                  human_task.c.light == YELLOW)
    if light == RED:
        return overdue
    if light == YELLOW:
        return yellow
    return or_(human_task.c.due_at.is_(None), and_(human_task.c.due_at > now, or_(
        human_task.c.due_at > now + _YELLOW_HORIZON, human_task.c.light.is_(None), human_task.c.light != YELLOW)))


def _due_ordered_page(conn, arms: list[list], wanted: TaskFilter) -> dict:
    """Tasks with a deadline by due time (then id), those without one after them; counted, then paged.

    The page is one ORDER BY on the compound of the arms, deadlines only, so both databases read each arm
    in index order, merge and stop after the page; an ORDER BY with NULLS LAST would sort every visible task.
    """
    counted = union_all(*(select(human_task.c.due_at).where(*arm) for arm in arms)).subquery()
    total, dated_total = conn.execute(select(func.count(), func.count(counted.c.due_at))).one()
    offset = (wanted.page - 1) * PAGE_SIZE
    ids: list[int] = []
    if offset < dated_total:
        dated = union_all(*(select(human_task.c.id.label("task_id"), human_task.c.due_at.label("due"))
                            .where(*arm, human_task.c.due_at.is_not(None)) for arm in arms))
        order = ("due", "task_id") if wanted.sort == "due" else (literal_column("due").desc(),
                                                                  literal_column("task_id").desc())
        ids += [r.task_id for r in conn.execute(dated.order_by(*order).limit(PAGE_SIZE).offset(offset))]
    if len(ids) < PAGE_SIZE and total > dated_total:
        undated = union_all(*(select(human_task.c.id.label("task_id")).where(*arm, human_task.c.due_at.is_(None))
                              for arm in arms))
        ids += [r.task_id for r in conn.execute(undated.order_by("task_id").limit(PAGE_SIZE - len(ids))
                                                .offset(max(0, offset - dated_total)))]
    return {"ids": ids, "total": total, "page": wanted.page, "pages": _pages(total), "per_page": PAGE_SIZE}


def _pages(total: int) -> int:
    return max(1, -(-total // PAGE_SIZE))


def _rows(conn, ids: list[int]) -> list:
    if not ids:
        return []
    rows = conn.execute(select(*_ROW_COLUMNS)
                        .join(process_instance, process_instance.c.id == human_task.c.instance_id)
                        .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                        .where(human_task.c.id.in_(ids))).mappings().all()
    by_id = {r["id"]: r for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def _choices(conn, queues: list[str]) -> dict:
    names = department_names(conn)
    latest = (select(process_definition.c.key, func.max(process_definition.c.version).label("version"))
              .group_by(process_definition.c.key).subquery())
    processes = conn.execute(select(process_definition.c.key, process_definition.c.name)
                             .join(latest, and_(latest.c.key == process_definition.c.key,
                                                latest.c.version == process_definition.c.version))
                             .order_by(process_definition.c.key)).all()
    return {"departments": [{"key": q, "name": names.get(q)} for q in queues],
            "processes": [{"key": p.key, "name": p.name or p.key} for p in processes]}


def _time_left(calendar, now: datetime, due: datetime | None) -> dict:
    """Office time to the deadline in working days and hours; negative once it has passed."""
    if due is None:
        return {"workdays_left": None, "workhours_left": None}
    days = calendar.workdays_left(now, due)
    hours = days * calendar.office_hours.seconds_per_day / 3600
    return {"workdays_left": round(days, 2), "workhours_left": round(hours, 1)}


def _row(row, calendar, now: datetime, local) -> dict:
    due, is_open = row["due_at"], row["status"] == "open"
    return {
        "id": row["id"], "instance_id": row["instance_id"], "bpmn_id": row["bpmn_id"],
        "name": row["name"] or row["bpmn_id"], "departments": list(row["departments"] or []),
        "assignee": row["assignee"], "status": row["status"], "delegated_from": row["delegated_from"],
        "case_no": row["case_no"], "applicant": row["applicant"], "process_key": row["process_key"],
        "process_name": row["process_name"] or row["process_key"], "version": row["version"],
        "created_at": local(row["created_at"]), "due_at": local(due), "completed_at": local(row["completed_at"]),
        "completed_by": row["completed_by"], "urge_count": row["urge_count"],
        "light": light_of(calendar, now, row["created_at"], due, row["yellow_seconds"]) if is_open else None,
        **(_time_left(calendar, now, due) if is_open else {"workdays_left": None, "workhours_left": None}),
        "late": bool(due is not None and row["completed_at"] is not None and row["completed_at"] > due),
    }


# ---- one task page ---------------------------------------------------------------------------------

def task_page(db: Database, task_id: int, user: User) -> dict:
    """The task, its form and service-guide item, the case's data and materials, and what the user may do."""
    task = worklist.get_task(db, task_id, user)   # NotFound / PermissionDenied come from here
    now = db.config.now()
    with db.read() as conn:
        case = conn.execute(
            select(process_instance.c.id, process_instance.c.case_no, process_instance.c.applicant,
                   process_instance.c.status, process_instance.c.started_at, process_instance.c.due_at,
                   process_instance.c.statutory_due_at, process_instance.c.paused_since,
                   process_instance.c.yellow_seconds, process_instance.c.definition_id,
                   process_definition.c.name.label("process_name"), process_definition.c.key.label("process_key"),
                   process_definition.c.version, process_definition.c.spec_json, process_definition.c.guide)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(process_instance.c.id == task["instance_id"])).mappings().first()
        if case is None:
            raise NotFound(f"no case {task['instance_id']}")
        row = conn.execute(select(human_task.c.created_at, human_task.c.claimed_at, human_task.c.yellow_seconds,
                                  human_task.c.extended_at).where(human_task.c.id == task_id)).mappings().one()
        completions = conn.execute(select(audit_event.c.task_id, audit_event.c.data, audit_event.c.actor,
                                          audit_event.c.at).where(
            audit_event.c.instance_id == case["id"], audit_event.c.type == "task_completed")
            .order_by(audit_event.c.id)).all()
        files = conn.execute(select(attachment.c.id, attachment.c.task_id, attachment.c.material_key,
                                    attachment.c.filename, attachment.c.content_type, attachment.c.size,
                                    attachment.c.uploaded_by, attachment.c.uploaded_at)
                             .where(attachment.c.instance_id == case["id"]).order_by(attachment.c.id)).mappings().all()
        names = department_names(conn)
        colleagues = _colleagues(conn, task["departments"], user)
        people = dict(conn.execute(select(app_user.c.username, app_user.c.name).where(app_user.c.username.in_(
            {task["assignee"], task["delegated_from"], task["completed_by"],
             *(f["uploaded_by"] for f in files), *(c.actor for c in completions)} - {None}))).all())
        calendar = calendar_for(db, conn)
        state = read_state(conn, case["id"])
    local = db.config.local
    specs = load_specs(case["definition_id"], case["spec_json"])
    workflow = decode(state, specs)
    fields = _form_catalogue(specs)
    steps = {s.bpmn_id: s.bpmn_name or s.bpmn_id for spec in (specs.spec, *specs.subprocess_specs.values())
             for s in spec.task_specs.values() if s.bpmn_id}
    own_fields = {f["id"] for f in task["form"]}
    data = case_data(workflow)
    materials = material_keys(case["guide"])
    uploaded = {f["material_key"] for f in files}
    is_open = task["status"] == "open"
    actions = _actions(user, task, is_open)
    if actions["send_back"]:
        targets = [{**t, "completed_at": local(datetime.fromisoformat(t["completed_at"]))
                    if t["completed_at"] else None} for t in send_back_targets(db, task_id)]
        actions["send_back"] = bool(targets)
    else:
        targets = []
    due = datetime.fromisoformat(task["due_at"]) if task["due_at"] else None
    return {
        "task": {**task, "created_at": local(row["created_at"]), "claimed_at": local(row["claimed_at"]),
                 "due_at": local(due), "extended_at": local(row["extended_at"]),
                 "completed_at": local(datetime.fromisoformat(task["completed_at"])) if task["completed_at"] else None,
                 "department_names": [names.get(d, d) for d in task["departments"]],
                 "assignee_name": people.get(task["assignee"], task["assignee"]),
                 "delegated_from_name": people.get(task["delegated_from"], task["delegated_from"]),
                 "completed_by_name": people.get(task["completed_by"], task["completed_by"]),
                 **(_time_left(calendar, now, due) if is_open else {"workdays_left": None, "workhours_left": None})},
        "case": {"id": case["id"], "case_no": case["case_no"], "applicant": case["applicant"],
                 "status": case["status"], "process_key": case["process_key"],
                 "process_name": case["process_name"] or case["process_key"], "version": case["version"],
                 "started_at": local(case["started_at"]), "due_at": local(case["due_at"]),
                 "statutory_due_at": local(case["statutory_due_at"]), "paused_since": local(case["paused_since"]),
                 "light": (light_of(calendar, now, case["started_at"], case["due_at"], case["yellow_seconds"])
                           if case["status"] == "running" else None),
                 **(_time_left(calendar, now, case["due_at"]) if case["status"] == "running"
                    else {"workdays_left": None, "workhours_left": None})},
        "data": _labelled(data, fields, exclude=own_fields),
        "other_data": _unlabelled(data, fields),
        "form": task["form"],
        "previous_values": _previous_values(completions, task, own_fields),
        "opinions": [{"step": steps.get(c.data.get("bpmn_id"), c.data.get("bpmn_id")), "at": local(c.at),
                      "by": people.get(c.actor, c.actor), "opinion": c.data["opinion"]}
                     for c in completions if (c.data or {}).get("opinion")],
        "guide_item": _guide_item(task["guide_item"], names),
        "attachments": [{**f, "uploaded_at": local(f["uploaded_at"]), "material_name": materials.get(f["material_key"]),
                         "uploaded_by_name": people.get(f["uploaded_by"], f["uploaded_by"])} for f in files],
        "materials": [{"key": key, "name": name, "uploaded": key in uploaded} for key, name in materials.items()],
        "send_back_targets": targets,
        "colleagues": colleagues,
        "actions": actions,
    }


def _actions(user: User, task: dict, is_open: bool) -> dict:
    """Which buttons to offer; the engine checks the same rules again when one is pressed."""
    mine = task["assignee"] == user.username
    works_here = may_work_on(user, task)
    lead_here = user.has_role("lead") and bool(set(user.departments) & set(task["departments"]))
    free_or_mine = task["assignee"] is None or mine
    return {
        "claim": is_open and works_here and task["assignee"] is None,
        "unclaim": is_open and task["assignee"] is not None and (mine or (user.has_role("lead", "admin") and works_here)),
        "complete": is_open and works_here and free_or_mine,
        "upload": is_open and works_here and free_or_mine,
        "send_back": is_open and works_here and free_or_mine and user.has_role(*SEND_BACK_ROLES),
        "reassign": is_open and (mine or lead_here),
        "delegate": is_open and mine,
        "take_back": is_open and task["delegated_from"] == user.username,
        "urge": is_open and not mine and user.has_role(*URGE_ROLES),
    }


def _colleagues(conn, departments: list[str], user: User) -> list[dict]:
    """Active users of the task's departments (the people a task can be reassigned or delegated to)."""
    if not departments:
        return []
    rows = conn.execute(select(app_user.c.username, app_user.c.name).distinct()
                        .join(user_department, user_department.c.user_id == app_user.c.id)
                        .where(user_department.c.department_key.in_(departments), app_user.c.active,
                               app_user.c.username != user.username)
                        .order_by(app_user.c.username).limit(_MAX_COLLEAGUES)).all()
    return [{"username": r.username, "name": r.name} for r in rows]


def _form_catalogue(specs) -> dict:
    """Every form field of the flow by id: label, type and enum choices, in diagram order."""
    fields: dict = {}
    for spec in (specs.spec, *specs.subprocess_specs.values()):
        for task_spec in spec.task_specs.values():
            for field in getattr(getattr(task_spec, "form", None), "fields", None) or []:
                fields.setdefault(field.id, {"label": field.label or field.id, "type": field.type,
                                             "options": {o.id: o.name for o in getattr(field, "options", [])}})
    return fields


def _labelled(data: dict, fields: dict, exclude: set) -> list[dict]:
    shown = []
    for field_id, field in fields.items():
        value = data.get(field_id)
        if field_id in exclude or value is None or value == "":
            continue
        if field["type"] == "enum":
            value = field["options"].get(value, value)
        shown.append({"id": field_id, "label": field["label"], "type": field["type"], "value": value})
    return shown


def _unlabelled(data: dict, fields: dict) -> list[dict]:
    """Other simple variables (set at start or by scripts) under their own names; structures stay out."""
    return [{"id": key, "value": value} for key, value in sorted(data.items())
            if key not in fields and not key.startswith("nrOf") and value not in (None, "")
            and isinstance(value, (str, int, float, bool))]


def _previous_values(completions, task: dict, own_fields: set) -> dict:
    """What was entered (and the opinion) the last time this step was done: a step sent back comes round again."""
    earlier = [c.data for c in completions
               if c.task_id != task["id"] and (c.data or {}).get("bpmn_id") == task["bpmn_id"]]
    if not earlier:
        return {}
    values = {k: v for k, v in (earlier[-1].get("values") or {}).items() if k in own_fields}
    if earlier[-1].get("opinion") and "opinion" not in own_fields:
        values["opinion"] = earlier[-1]["opinion"]
    return values


def _guide_item(item: dict | None, names: dict) -> dict | None:
    if not item:
        return None
    return {**item, "department_name": names.get(item.get("department"), item.get("department"))}
