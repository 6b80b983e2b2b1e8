"""Run cases: start, claim, unclaim, complete and fire timers — the only module that steps workflows."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.exceptions import WorkflowException
from SpiffWorkflow.util.task import TaskState

from . import audit, forms
from .accounts import User, resolve_departments
from .bpmn import task_departments
from .errors import ApprovalsError, Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .scripting import using_calendar
from .snapshot import Snapshot, decode, load_specs, new_workflow, snapshots
from .store import (
    Database, case_sequence, human_task, process_definition, process_instance, task_queue, timer,
    workflow_state,
)
from .timekeeping import calendar_for

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
# Steps drawn outside any department lane are queued for the comprehensive window (综合窗口).
WINDOW_QUEUE = "__window__"


class WorkflowFailed(ApprovalsError):
    """A diagram's script, condition or timer failed while the case ran; nothing was saved."""


@dataclass
class _Case:
    """What a mutation sees: the locked case row, its live workflow, and the events to append."""

    row: dict
    workflow: object
    now: datetime
    actor: str | None
    events: list

    def event(self, type_: str, task_id: int | None = None, **data) -> None:
        self.events.append({"at": self.now, "actor": self.actor, "type": type_,
                            "instance_id": self.row["id"], "task_id": task_id, "data": data})


def start_case(db: Database, key: str, data: dict | None = None, actor: str | None = None) -> dict:
    """Start a case on the latest active version of `key`."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise InvalidInput(Problem("data must be a JSON object", field="data"))

    def start(conn):
        definition = conn.execute(
            select(process_definition.c.id, process_definition.c.version, process_definition.c.spec_json)
            .where(process_definition.c.key == key, process_definition.c.status == "active")
            .order_by(process_definition.c.version.desc()).limit(1)).first()
        if definition is None:
            raise NotFound(f"no deployed process {key!r}")
        now = db.config.now()
        case_no = _next_case_no(db, conn, now)
        instance_id = conn.execute(process_instance.insert().values(
            definition_id=definition.id, case_no=case_no, status="running", revision=0,
            applicant=_applicant(data), started_by=actor, started_at=now)).inserted_primary_key[0]
        row = {"id": instance_id, "definition_id": definition.id, "revision": 0, "status": "running",
               "case_no": case_no}
        workflow = new_workflow(load_specs(definition.id, definition.spec_json))
        workflow.task_tree.data.update(data)
        case = _Case(row, workflow, now, actor, [])
        case.event("case_started", key=key, version=definition.version, case_no=case_no)
        snapshot = Snapshot(workflow, revision=0)
        with using_calendar(calendar_for(db, conn)):
            _step(case)
        _save(db, conn, case, snapshot, first=True)
        return snapshot, {"id": instance_id, "case_no": case_no, "status": case.row["status"],
                          "version": definition.version, "process_key": key}

    snapshot, result = db.run(start)
    snapshots.put(result["id"], snapshot)
    return result


def claim(db: Database, task_id: int, user: User) -> dict:
    def do(conn, case, task_row, spiff_task):
        if task_row["assignee"] == user.username:
            return
        if task_row["assignee"]:
            raise Conflict(f"task {task_id} is already claimed by {task_row['assignee']}")
        conn.execute(update(human_task).where(human_task.c.id == task_id)
                     .values(assignee=user.username, claimed_at=case.now))
        case.event("task_claimed", task_id, bpmn_id=task_row["bpmn_id"])
    return _task_action(db, task_id, user, do, steps=False)


def unclaim(db: Database, task_id: int, user: User) -> dict:
    def do(conn, case, task_row, spiff_task):
        if task_row["assignee"] is None:
            return
        if task_row["assignee"] != user.username and not user.has_role("lead", "admin"):
            raise Conflict(f"task {task_id} is claimed by {task_row['assignee']}, not by you")
        conn.execute(update(human_task).where(human_task.c.id == task_id).values(assignee=None, claimed_at=None))
        case.event("task_unclaimed", task_id, bpmn_id=task_row["bpmn_id"], previous=task_row["assignee"])
    return _task_action(db, task_id, user, do, steps=False)


def complete(db: Database, task_id: int, user: User, data: dict | None = None) -> dict:
    """Complete a task with form data; an unclaimed task is claimed by whoever completes it."""
    def do(conn, case, task_row, spiff_task):
        if task_row["assignee"] and task_row["assignee"] != user.username:
            raise Conflict(f"task {task_id} is claimed by {task_row['assignee']}")
        values = forms.validate(getattr(spiff_task.task_spec, "form", None), data or {})
        spiff_task.set_data(**values)
        spiff_task.run()
        conn.execute(update(human_task).where(human_task.c.id == task_id).values(
            status="completed", completed_at=case.now, completed_by=user.username, assignee=user.username))
        case.event("task_completed", task_id, bpmn_id=task_row["bpmn_id"], values=values)
    return _task_action(db, task_id, user, do, steps=True)


def fire_due_timers(db: Database, instance_id: int) -> int:
    """Wake one case whose timers are due and let them fire; returns how many fired (0 if another worker has it)."""
    def mutate(conn):
        row = db.lock_instance(conn, instance_id, skip_locked=True)
        if row is None or row["status"] != "running":
            return None, 0
        now = db.config.now()
        due = conn.execute(select(timer.c.task_guid, timer.c.bpmn_id).where(
            timer.c.instance_id == instance_id, timer.c.due_at <= now)).all()
        if not due:
            return None, 0  # another worker fired them after we listed them
        case = _Case(dict(row), None, now, None, [])
        snapshot = _snapshot_for(conn, case.row)
        case.workflow = snapshot.workflow
        with using_calendar(calendar_for(db, conn)):
            case.workflow.refresh_waiting_tasks()
            _step(case)
        fired = 0
        for entry in due:
            task = case.workflow.get_task_from_id(UUID(entry.task_guid))
            if task is not None and task.state & (TaskState.COMPLETED | TaskState.READY):
                fired += 1
                case.event("timer_fired", bpmn_id=entry.bpmn_id, task_guid=entry.task_guid)
        _save(db, conn, case, snapshot)
        return snapshot, fired

    snapshot, fired = db.run(mutate)
    if snapshot is not None:
        snapshots.put(instance_id, snapshot)
    return fired


def _task_action(db: Database, task_id: int, user: User,
                 action: Callable, steps: bool) -> dict:
    instance_id = _instance_of_task(db, task_id)

    def mutate(conn):
        row = db.lock_instance(conn, instance_id)
        task_row = conn.execute(select(human_task).where(human_task.c.id == task_id)).mappings().first()
        if task_row is None or row is None:
            raise NotFound(f"no task {task_id}")
        if not may_work_on(user, task_row):
            raise PermissionDenied(f"task {task_id} belongs to {', '.join(task_row['departments']) or 'nobody'}; "
                                   f"you are in {', '.join(user.departments) or 'no department'}")
        if task_row["status"] != "open":
            raise Conflict(f"task {task_id} is already {task_row['status']}")
        case = _Case(dict(row), None, db.config.now(), user.username, [])
        if not steps:  # claim and unclaim touch only the projection, never the workflow
            action(conn, case, task_row, None)
            audit.record_many(conn, case.events)
            return None, _task_result(task_id, instance_id, case)
        snapshot = _snapshot_for(conn, case.row)
        case.workflow = snapshot.workflow
        spiff_task = case.workflow.get_task_from_id(UUID(task_row["task_guid"]))
        if spiff_task is None or spiff_task.state != TaskState.READY:
            raise Conflict(f"task {task_id} is no longer ready")
        action(conn, case, task_row, spiff_task)
        with using_calendar(calendar_for(db, conn)):
            _step(case)
        _save(db, conn, case, snapshot)
        return snapshot, _task_result(task_id, instance_id, case)

    snapshot, result = db.run(mutate)
    if snapshot is not None:
        snapshots.put(instance_id, snapshot)
    return result


def _task_result(task_id: int, instance_id: int, case: _Case) -> dict:
    return {"task_id": task_id, "instance_id": instance_id, "case_status": case.row["status"]}


def may_work_on(user: User, task_row) -> bool:
    if task_row["assignee"] == user.username:
        return True
    return bool(set(task_row["departments"] or [WINDOW_QUEUE]) & set(queues_of(user)))


def queues_of(user: User) -> list[str]:
    """The department queues whose unclaimed tasks a user sees."""
    return [*user.departments, WINDOW_QUEUE] if user.has_role("window") else list(user.departments)


def _instance_of_task(db: Database, task_id: int) -> int:
    with db.read() as conn:
        instance_id = conn.execute(select(human_task.c.instance_id).where(human_task.c.id == task_id)).scalar()
    if instance_id is None:
        raise NotFound(f"no task {task_id}")
    return instance_id


def _snapshot_for(conn, row: dict) -> Snapshot:
    snapshot = snapshots.take(row["id"], row["revision"])
    if snapshot is not None:
        return snapshot
    body = conn.execute(select(workflow_state.c.body).where(workflow_state.c.instance_id == row["id"])).scalar()
    spec_json = conn.execute(select(process_definition.c.spec_json).where(
        process_definition.c.id == row["definition_id"])).scalar()
    return Snapshot(decode(body, load_specs(row["definition_id"], spec_json)), row["revision"])


def _step(case: _Case) -> None:
    try:
        case.workflow.do_engine_steps()
    except WorkflowException as exc:
        task = getattr(exc, "task_spec", None) or getattr(getattr(exc, "task", None), "task_spec", None)
        element = getattr(task, "bpmn_id", None) or getattr(task, "name", None)
        raise WorkflowFailed(f"step {element!r} failed: {exc}") from None


def _save(db: Database, conn, case: _Case, snapshot: Snapshot, first: bool = False) -> None:
    """Persist the workflow and everything projected from it, in the caller's transaction."""
    workflow, row = case.workflow, case.row
    revision = row["revision"] + 1
    body = snapshot.encode()
    if first:
        conn.execute(workflow_state.insert().values(instance_id=row["id"], body=body))
    else:
        conn.execute(update(workflow_state).where(workflow_state.c.instance_id == row["id"]).values(body=body))
    _sync_human_tasks(conn, case)
    _sync_timers(conn, case)
    status = row["status"]
    values = {"revision": revision}
    if workflow.completed and status == "running":
        status = "completed" if workflow.success else "terminated"
        values.update(status=status, ended_at=case.now)
        case.event("case_" + status)
    conn.execute(update(process_instance).where(process_instance.c.id == row["id"]).values(**values))
    row.update(revision=revision, status=status)
    snapshot.revision = revision
    audit.record_many(conn, case.events)


def _sync_human_tasks(conn, case: _Case) -> None:
    ready = {str(t.id): t for t in case.workflow.get_tasks(state=TaskState.READY, manual=True)}
    open_rows = {r.task_guid: r.id for r in conn.execute(
        select(human_task.c.task_guid, human_task.c.id).where(
            human_task.c.instance_id == case.row["id"], human_task.c.status == "open"))}
    gone = [task_id for guid, task_id in open_rows.items() if guid not in ready]
    if gone:
        conn.execute(delete(task_queue).where(task_queue.c.human_task_id.in_(gone)))
        # Tasks completed through runtime.complete are already closed; the rest were cancelled
        # by the diagram (an interrupting timer, a terminate end, another branch winning).
        conn.execute(update(human_task).where(human_task.c.id.in_(gone), human_task.c.status == "open")
                     .values(status="cancelled", completed_at=case.now))
        for task_id in gone:
            case.event("task_cancelled", task_id)
    for guid, task in ready.items():
        if guid in open_rows:
            continue
        spec = task.task_spec
        departments = resolve_departments(conn, task_departments(spec))
        extensions = getattr(spec, "extensions", None) or {}
        task_id = conn.execute(human_task.insert().values(
            instance_id=case.row["id"], task_guid=guid, bpmn_id=spec.bpmn_id or spec.name,
            name=spec.bpmn_name or spec.bpmn_id, lane=spec.lane, departments=departments,
            assignee=extensions.get("camunda:assignee"), status="open", created_at=case.now,
            due_at=_boundary_due(task))).inserted_primary_key[0]
        conn.execute(task_queue.insert(), [{"department_key": d, "human_task_id": task_id}
                                           for d in departments or [WINDOW_QUEUE]])
        case.event("task_created", task_id, bpmn_id=spec.bpmn_id, departments=departments)


def _boundary_due(task) -> datetime | None:
    """A task's deadline is the earliest timer on its boundary."""
    parent = task.parent
    if parent is None or not parent.task_spec.name.endswith(".BoundaryEventSplit"):
        return None
    dues = [_timer_due(sibling) for sibling in parent.children
            if sibling is not task and sibling.state == TaskState.WAITING]
    dues = [d for d in dues if d is not None]
    return min(dues) if dues else None


def _timer_due(task) -> datetime | None:
    definition = getattr(task.task_spec, "event_definition", None)
    if not isinstance(definition, TimerEventDefinition):
        return None
    value = task.internal_data.get("event_value")
    if value is None:
        definition.has_fired(task)  # evaluates the expression and records the due moment
        value = task.internal_data.get("event_value")
    if isinstance(value, dict):  # cycle timers keep their next firing under "next"
        value = value.get("next") if value.get("cycles") != 0 else None
    if value is None:
        return None
    due = TimerEventDefinition.get_datetime(value) if isinstance(value, str) else value
    return due.astimezone(timezone.utc)


def _sync_timers(conn, case: _Case) -> None:
    wanted = {}
    for task in case.workflow.get_tasks(state=TaskState.WAITING):
        due = _timer_due(task)
        if due is not None:
            wanted[str(task.id)] = (task.task_spec.bpmn_id or task.task_spec.name, due)
    stored = {r.task_guid: r.due_at for r in conn.execute(
        select(timer.c.task_guid, timer.c.due_at).where(timer.c.instance_id == case.row["id"]))}
    stale = [guid for guid in stored if guid not in wanted]
    if stale:
        conn.execute(delete(timer).where(timer.c.instance_id == case.row["id"], timer.c.task_guid.in_(stale)))
    for guid, (bpmn_id, due) in wanted.items():
        if guid not in stored:
            conn.execute(timer.insert().values(instance_id=case.row["id"], task_guid=guid, bpmn_id=bpmn_id, due_at=due))
        elif abs((stored[guid] - due).total_seconds()) > 0.0005:
            conn.execute(update(timer).where(and_(timer.c.instance_id == case.row["id"], timer.c.task_guid == guid))
                         .values(due_at=due))


def _next_case_no(db: Database, conn, now: datetime) -> str:
    day = now.astimezone(LOCAL_TZ).strftime("%Y%m%d")
    insert = sqlite_insert if db.is_sqlite else pg_insert
    statement = insert(case_sequence).values(day=day, last=1)
    statement = statement.on_conflict_do_update(
        index_elements=[case_sequence.c.day], set_={"last": case_sequence.c.last + 1}
    ).returning(case_sequence.c.last)
    sequence = conn.execute(statement).scalar_one()
    return f"{day}{sequence:05d}"


def _applicant(data: dict) -> str | None:
    for key in ("applicant", "applicant_name", "enterprise_name", "company_name"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:255]
    return None
