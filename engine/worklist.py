"""Read side for clerks and clients: task lists, one task, one case, deployed processes — plain indexed queries."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, or_, select

from . import audit, forms, guides
from .accounts import User
from .errors import NotFound, PermissionDenied
from .lights import light_of
from .projection import may_work_on, queues_of
from .snapshot import load_specs, task_spec_of
from .store import Database, human_task, process_definition, process_instance, task_queue
from .timekeeping import calendar_for

_TASK_COLUMNS = (
    human_task.c.id, human_task.c.name, human_task.c.bpmn_id, human_task.c.instance_id,
    human_task.c.departments, human_task.c.assignee, human_task.c.status, human_task.c.created_at,
    human_task.c.due_at, human_task.c.completed_at, human_task.c.completed_by, human_task.c.yellow_seconds,
    human_task.c.delegated_from, human_task.c.urge_count, human_task.c.urged_at,
    process_instance.c.case_no, process_instance.c.applicant, process_definition.c.key.label("process_key"),
    process_definition.c.version,
)


def list_tasks(db: Database, user: User, limit: int = 100, offset: int = 0) -> list[dict]:
    """A clerk's open work: unclaimed tasks of their departments plus tasks they hold, soonest due first."""
    mine = select(human_task.c.id).where(human_task.c.assignee == user.username, human_task.c.status == "open")
    queued = (select(task_queue.c.human_task_id).join(human_task, human_task.c.id == task_queue.c.human_task_id)
              .where(task_queue.c.department_key.in_(queues_of(user) or [""]), human_task.c.assignee.is_(None),
                     human_task.c.status == "open"))
    conditions = [human_task.c.id.in_(mine), human_task.c.id.in_(queued)]
    query = (select(*_TASK_COLUMNS)
             .join(process_instance, process_instance.c.id == human_task.c.instance_id)
             .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
             .where(or_(*conditions))
             .order_by(human_task.c.due_at.is_(None), human_task.c.due_at, human_task.c.id)
             .limit(max(1, min(limit, 500))).offset(max(0, offset)))
    with db.read() as conn:
        rows = conn.execute(query).mappings().all()
        calendar = calendar_for(db, conn)
    now = db.config.now()
    return [_task_dict(row, calendar, now) for row in rows]


def get_task(db: Database, task_id: int, user: User) -> dict:
    """One task with its form and service-guide entry; only for those who may work on it."""
    with db.read() as conn:
        row = conn.execute(
            select(*_TASK_COLUMNS, process_instance.c.definition_id, process_definition.c.spec_json,
                   process_definition.c.guide)
            .join(process_instance, process_instance.c.id == human_task.c.instance_id)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(human_task.c.id == task_id)).mappings().first()
        if row is None:
            raise NotFound(f"no task {task_id}")
        calendar = calendar_for(db, conn)
    if not (may_work_on(user, row) or user.has_role("supervisor", "admin")):
        raise PermissionDenied(f"task {task_id} is not one of your departments' tasks")
    result = _task_dict(row, calendar, db.config.now())
    spec = task_spec_of(load_specs(row["definition_id"], row["spec_json"]), row["bpmn_id"])
    result["form"] = forms.describe(getattr(spec, "form", None))
    result["guide_item"] = guides.item_for(row["guide"], row["bpmn_id"])
    return result


def get_instance(db: Database, instance_id: int) -> dict:
    with db.read() as conn:
        row = conn.execute(
            select(process_instance, process_definition.c.key.label("process_key"), process_definition.c.version)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(process_instance.c.id == instance_id)).mappings().first()
        if row is None:
            raise NotFound(f"no case {instance_id}")
        tasks = conn.execute(
            select(*_TASK_COLUMNS)
            .join(process_instance, process_instance.c.id == human_task.c.instance_id)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(human_task.c.instance_id == instance_id).order_by(human_task.c.id)).mappings().all()
        events = audit.for_instance(conn, instance_id)
        calendar = calendar_for(db, conn)
    now = db.config.now()
    return {
        "id": row["id"], "case_no": row["case_no"], "status": row["status"], "process_key": row["process_key"],
        "version": row["version"], "applicant": row["applicant"], "started_by": row["started_by"],
        "started_at": _iso(row["started_at"]), "ended_at": _iso(row["ended_at"]), "due_at": _iso(row["due_at"]),
        "light": (light_of(calendar, now, row["started_at"], row["due_at"], row["yellow_seconds"])
                  if row["status"] == "running" else None),
        "statutory_due_at": _iso(row["statutory_due_at"]), "paused_since": _iso(row["paused_since"]),
        "tasks": [_task_dict(t, calendar, now) for t in tasks],
        "events": events,
    }


def list_processes(db: Database) -> list[dict]:
    """Every deployed process key with its latest version and how many versions exist."""
    latest = (select(process_definition.c.key, func.max(process_definition.c.version).label("version"),
                     func.count().label("versions"))
              .group_by(process_definition.c.key).subquery())
    query = (select(process_definition.c.id, process_definition.c.key, process_definition.c.name,
                    process_definition.c.version, process_definition.c.deployed_at,
                    process_definition.c.deployed_by, process_definition.c.status, latest.c.versions)
             .join(latest, and_(latest.c.key == process_definition.c.key,
                                latest.c.version == process_definition.c.version))
             .order_by(process_definition.c.key))
    with db.read() as conn:
        return [{**dict(r), "deployed_at": _iso(r["deployed_at"])} for r in conn.execute(query).mappings()]


def _task_dict(row, calendar, now: datetime) -> dict:
    return {
        "id": row["id"], "name": row["name"], "bpmn_id": row["bpmn_id"], "instance_id": row["instance_id"],
        "case_no": row["case_no"], "applicant": row["applicant"], "process_key": row["process_key"],
        "version": row["version"], "departments": row["departments"], "assignee": row["assignee"],
        "status": row["status"], "created_at": _iso(row["created_at"]), "due_at": _iso(row["due_at"]),
        "completed_at": _iso(row["completed_at"]), "completed_by": row["completed_by"],
        "delegated_from": row["delegated_from"], "urge_count": row["urge_count"], "urged_at": _iso(row["urged_at"]),
        "light": (light_of(calendar, now, row["created_at"], row["due_at"], row["yellow_seconds"])
                  if row["status"] == "open" else None),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
