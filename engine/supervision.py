"""Electronic supervision's live board: open tasks and running cases by light, the filter choices, who sees what."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, cast, exists, func, or_, select

from .accounts import User, department_names
from .errors import PermissionDenied
from .figures import LIGHTS, has_department, step_departments
from .store import Database, app_user, department, human_task, process_definition, process_instance
from .timekeeping import calendar_for

BOARD_ROLES = ("supervisor", "admin", "lead")
SUPERVISORS = ("supervisor", "admin")
RED_LIST_LIMIT = 200


def scope_of(user: User) -> list[str] | None:
    """Supervisors and administrators see everything; a lead (科室负责人) sees only their own departments."""
    if user.has_role(*SUPERVISORS):
        return None
    if user.has_role("lead") and user.departments:
        return list(user.departments)
    raise PermissionDenied("the supervision board is for supervisors, administrators and department leads")


def board(db: Database, user: User, now: datetime | None = None, red_limit: int = RED_LIST_LIMIT) -> dict:
    """Open tasks and running cases by light, per department and flow, and the red items, most overdue first."""
    scope = scope_of(user)
    now = now or db.config.now()
    with db.read() as conn:
        calendar = calendar_for(db, conn)
        per_day = calendar.office_hours.seconds_per_day
        names = department_names(conn)
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
        for key in step_departments(row.departments):
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
            "holder": r["assignee"],
            "departments": [{"key": d, "name": names.get(d, d)} for d in step_departments(r["departments"])],
            **overdue(r["due_at"])} for r in red_tasks]
    red += [{"kind": "case", "task_id": None, "instance_id": r["id"], "case_no": r["case_no"],
             "applicant": r["applicant"], "process_key": r["key"], "process_name": flows.get(r["key"]) or r["key"],
             "step": None, "bpmn_id": None, "due_at": _iso(r["due_at"]), "paused": r["paused_since"] is not None,
             "holder": ", ".join(sorted({h["assignee"] for h in holders.get(r["id"], []) if h["assignee"]})) or None,
             "departments": [{"key": d, "name": names.get(d, d)} for d in sorted(
                 {d for h in holders.get(r["id"], []) for d in step_departments(h["departments"])})],
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


def _task_scope(scope) -> list:
    if scope is None:
        return []
    return [or_(*[has_department(d) for d in scope])]


def _case_scope(scope) -> list:
    if scope is None:
        return []
    return [exists().where(human_task.c.instance_id == process_instance.c.id, human_task.c.status == "open",
                           *_task_scope(scope))]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
