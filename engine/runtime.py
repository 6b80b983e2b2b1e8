"""Run cases: start, claim, complete, pause, extend and fire timers — the only module that steps workflows."""
from __future__ import annotations

import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime
from typing import Callable
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import MultiInstanceTask
from SpiffWorkflow.exceptions import WorkflowException
from SpiffWorkflow.util.task import TaskState

from . import audit, clock, forms, projection, violations
from .accounts import User
from .errors import ApprovalsError, Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .scripting import using_calendar
from .statements import HotQuery, HotStatement
from .snapshot import Snapshot, find_task, load_specs, new_workflow, snapshots, stored_snapshot, tasks_in
from .store import (
    Database, case_sequence, clock_pause, human_task, process_definition, process_instance, timer,
)
from .timekeeping import calendar_for

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
# Prebuilt statements of the hot path (see statements.py on why).
_TASK_ROW = HotQuery(select(human_task).where(human_task.c.id == bindparam("task_id")))
# (UPDATE parameters may not reuse a column's name: SQLAlchemy reserves those for the SET clause.)
_CLOSE_TASK = HotStatement(update(human_task).where(human_task.c.id == bindparam("task_id")).values(
    status=bindparam("new_status"), completed_at=bindparam("at"), completed_by=bindparam("by"),
    assignee=bindparam("new_assignee")))
# The case columns a save may change. Only those that did change are written: setting an indexed column,
# even to its old value, makes SQLite rewrite that index's pages, and most saves change only the revision.
_CASE_COLUMNS = ("revision", "status", "ended_at", "due_at", "statutory_due_at", "paused_since", "extended_at",
                 "applicant")
PAUSE_ROLES = ("window", "lead", "supervisor", "admin")
EXTEND_ROLES = ("lead", "supervisor", "admin")


class WorkflowFailed(ApprovalsError):
    """A diagram's script, condition or timer failed while the case ran; nothing was saved."""


@dataclass
class _Case:
    """What a mutation sees: the locked case row, its live workflow, the calendar and the events to append."""

    row: dict
    workflow: object
    now: datetime
    actor: str | None
    events: list
    calendar: object = None
    completed_task: int | None = None
    resumed: bool = False
    task_row: dict | None = None
    stored: dict = field(init=False)   # the case row as it is in the database, to write only what changed

    def __post_init__(self):
        self.stored = dict(self.row)

    def event(self, type_: str, task_id: int | None = None, **data) -> None:
        self.events.append({"at": self.now, "actor": self.actor, "type": type_,
                            "instance_id": self.row["id"], "task_id": task_id, "data": data})


def start_case(db: Database, key: str, data: dict | None = None, actor: str | None = None,
               also: Callable | None = None) -> dict:
    """Start a case on the latest active version of `key`; `also(conn, instance_id)` joins its transaction."""
    if data is not None and not isinstance(data, dict):
        raise InvalidInput(Problem("data must be a JSON object", field="data"))
    data = dict(data or {})

    def start(conn):
        now = db.config.now()
        definition = conn.execute(
            select(process_definition.c.id, process_definition.c.version, process_definition.c.spec_json,
                   process_definition.c.properties)
            .where(process_definition.c.key == key, process_definition.c.status == "active",
                   or_(process_definition.c.activates_at.is_(None), process_definition.c.activates_at <= now))
            .order_by(process_definition.c.version.desc()).limit(1)).first()
        if definition is None:
            raise NotFound(f"no active version of process {key!r}")
        calendar = calendar_for(db, conn)
        limits = (definition.properties or {}).get("extensions", {})
        committed = clock.deadline_from(calendar, now, limits.get("committedLimit"))
        statutory = clock.deadline_from(calendar, now, limits.get("statutoryLimit"))
        yellow = clock.threshold_seconds(calendar, limits.get("yellowThreshold"))
        case_no = _next_case_no(db, conn, now)
        verification_code = secrets.token_hex(6).upper()
        instance_id = conn.execute(process_instance.insert().values(
            definition_id=definition.id, case_no=case_no, status="running", revision=0,
            applicant=_applicant(data), started_by=actor, started_at=now, yellow_seconds=yellow,
            verification_code=verification_code,
            due_at=committed.at if committed else None, statutory_due_at=statutory.at if statutory else None,
        )).inserted_primary_key[0]
        row = {"id": instance_id, "definition_id": definition.id, "revision": 0, "status": "running",
               "case_no": case_no, "paused_since": None, "due_at": committed.at if committed else None,
               "statutory_due_at": statutory.at if statutory else None, "applicant": _applicant(data),
               "extended_at": None, "yellow_seconds": yellow}
        workflow = new_workflow(load_specs(definition.id, definition.spec_json))
        workflow.task_tree.data.update(data)
        case = _Case(row, workflow, now, actor, [], calendar)
        case.event("case_started", key=key, version=definition.version, case_no=case_no,
                   due_at=_iso(row["due_at"]), provisional=bool(committed and committed.provisional))
        snapshot = Snapshot(workflow, revision=0)
        _step(case)
        _save(db, conn, case, snapshot, first=True)
        if also is not None:
            also(conn, instance_id)
        return snapshot, {"id": instance_id, "case_no": case_no, "status": case.row["status"],
                          "version": definition.version, "process_key": key,
                          "verification_code": verification_code}

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


def complete(db: Database, task_id: int, user: User, data: dict | None = None, opinion: str | None = None) -> dict:
    """Complete a task with form data and an optional opinion (审查意见); an unclaimed task is claimed by the completer."""
    opinion = (opinion or "").strip()[:4000] or None
    def do(conn, case, task_row, spiff_task):
        if task_row["assignee"] and task_row["assignee"] != user.username:
            raise Conflict(f"task {task_id} is claimed by {task_row['assignee']}")
        values = forms.validate(getattr(spiff_task.task_spec, "form", None), data or {})
        spiff_task.set_data(**values, **_instance_counters(spiff_task))
        with _diagram_errors():
            spiff_task.run()
        _CLOSE_TASK.execute(conn, {"task_id": task_id, "new_status": "completed", "at": case.now,
                                    "by": user.username, "new_assignee": user.username})
        if not case.row.get("applicant") and _applicant(values):
            # The applicant is usually typed at the window's intake form, not known at start.
            case.row["applicant"] = _applicant(values)
        case.completed_task = task_id
        case.event("task_completed", task_id, bpmn_id=task_row["bpmn_id"], values=values,
                   **({"opinion": opinion} if opinion else {}))
    return _task_action(db, task_id, user, do, steps=True)


def send_back_targets(db: Database, task_id: int) -> list[dict]:
    """Earlier steps of the case a task may be sent back to: completed human tasks, latest first, one per step."""
    with db.read() as conn:
        current = conn.execute(select(human_task).where(human_task.c.id == task_id)).mappings().first()
        if current is None:
            raise NotFound(f"no task {task_id}")
        rows = conn.execute(select(human_task.c.id, human_task.c.bpmn_id, human_task.c.name,
                                   human_task.c.completed_by, human_task.c.completed_at)
                            .where(human_task.c.instance_id == current["instance_id"],
                                   human_task.c.status == "completed", human_task.c.id < task_id)
                            .order_by(human_task.c.id.desc())).mappings().all()
    seen, targets = set(), []
    for row in rows:
        if row["bpmn_id"] not in seen and row["bpmn_id"] != current["bpmn_id"]:
            seen.add(row["bpmn_id"])
            targets.append({**row, "completed_at": _iso(row["completed_at"])})
    return targets


def send_back(db: Database, task_id: int, user: User, target_task_id: int, reason: str) -> dict:
    """退回: a lead returns the case to an earlier step; that step is redone and the flow comes back here."""
    if not user.has_role("lead", "admin"):
        raise PermissionDenied("only a lead (科室负责人) may send a case back")
    if not (reason or "").strip():
        raise InvalidInput(Problem("give the reason for sending back", field="reason"))
    if target_task_id not in {t["id"] for t in send_back_targets(db, task_id)}:
        raise InvalidInput(Problem("choose an earlier completed step of this case", field="target"))

    def do(conn, case, task_row, spiff_task):
        target = conn.execute(select(human_task.c.task_guid, human_task.c.bpmn_id)
                              .where(human_task.c.id == target_task_id)).first()
        earlier = find_task(case.workflow, target.task_guid)
        if earlier is None or earlier.state != TaskState.COMPLETED:
            raise Conflict("that step can no longer be returned to")
        case.workflow.reset_from_task_id(earlier.id)
        _forget_removed_catchers(case.workflow)
        if spiff_task.state == TaskState.READY:
            # A step after a parallel join is not below the reset branch; it must wait for the redo. Cancel it
            # with its boundary events, or their timers stay waiting and are orphaned when the join runs again.
            group = spiff_task.parent
            on_boundary = group is not None and group.task_spec.name.endswith(".BoundaryEventSplit")
            (group if on_boundary else spiff_task).cancel()
        conn.execute(update(human_task).where(human_task.c.id == task_id).values(
            status="sent_back", completed_at=case.now, completed_by=user.username))
        case.completed_task = task_id
        case.event("task_sent_back", task_id, bpmn_id=task_row["bpmn_id"], to=target.bpmn_id,
                   to_task_id=target_task_id, reason=reason.strip())
    return _task_action(db, task_id, user, do, steps=True)


def _forget_removed_catchers(workflow) -> None:
    """SpiffWorkflow's reset drops tasks but leaves their timers registered for catching; unregister them."""
    manager = workflow.event_manager
    live = {task.id for task in tasks_in(workflow, TaskState.ANY_MASK)}
    for task in list(manager.tasks.values()):
        if task.id not in live:
            manager.remove_task(task)


def fire_due_timers(db: Database, instance_id: int) -> int:
    """Wake one case whose timers are due; returns how many fired (0 when another worker holds the case)."""
    def do(conn, case):
        due = conn.execute(select(timer.c.task_guid).where(
            timer.c.instance_id == instance_id, timer.c.due_at <= case.now)).all()
        if not due:
            return False  # another worker fired them after we listed them
        _step(case)
        return True

    case = mutate_case(db, instance_id, None, do, skip_locked=True)
    return sum(1 for e in case.events if e["type"] == "timer_fired") if case is not None else 0


def pause_case(db: Database, instance_id: int, user: User, kind: str, reason: str,
               expected_workdays: int | None = None) -> dict:
    """Stop the clock for 补正 or a 特别程序 (hearing, inspection, expert review, site survey...)."""
    if not user.has_role(*PAUSE_ROLES):
        raise PermissionDenied("only window staff, leads and supervisors may stop a case's clock")
    if not kind or not reason:
        raise InvalidInput([Problem("required", field=f) for f, v in (("kind", kind), ("reason", reason)) if not v])

    def do(conn, case):
        if case.row["paused_since"] is not None:
            raise Conflict(f"case {case.row['case_no']} is already paused")
        _start_pause(conn, case, kind, reason, automatic=False, expected_workdays=expected_workdays)
        return True

    mutate_case(db, instance_id, user.username, do)
    return {"instance_id": instance_id, "paused": True}


def resume_case(db: Database, instance_id: int, user: User) -> dict:
    if not user.has_role(*PAUSE_ROLES):
        raise PermissionDenied("only window staff, leads and supervisors may restart a case's clock")

    def do(conn, case):
        pause = _open_pause(conn, instance_id)
        if pause is None:
            raise Conflict(f"case {case.row['case_no']} is not paused")
        if pause.automatic:
            raise Conflict("this pause ends when its task (e.g. 补正) is completed")
        _end_pause(conn, case, pause)
        return True

    mutate_case(db, instance_id, user.username, do)
    return {"instance_id": instance_id, "paused": False}


def extend(db: Database, user: User, workdays: int, reason: str, task_id: int | None = None,
           instance_id: int | None = None) -> dict:
    """延期: once, before it expires, push a task's or a case's committed limit back by N working days."""
    if not user.has_role(*EXTEND_ROLES):
        raise PermissionDenied("only leads and supervisors may extend a time limit")
    if not isinstance(workdays, int) or isinstance(workdays, bool) or not 1 <= workdays <= 60:
        raise InvalidInput(Problem("must be a whole number of working days between 1 and 60", field="workdays"))
    if not reason:
        raise InvalidInput(Problem("a reason is required", field="reason"))
    if task_id is not None:
        instance_id = _instance_of_task(db, task_id)
    if instance_id is None:
        raise InvalidInput(Problem("name a task or a case", field="task_id"))

    def do(conn, case):
        calendar = case.calendar
        if task_id is None:
            due = case.row["due_at"]
            if case.row["extended_at"] is not None:
                raise Conflict("this case's limit has already been extended once")
            if due is None or due <= case.now:
                raise Conflict("only a running limit can be extended, before it expires")
            new_due = calendar.add_working_seconds(due, workdays * calendar.office_hours.seconds_per_day).at
            case.row.update(due_at=new_due, extended_at=case.now)
            case.event("limit_extended", None, scope="case", workdays=workdays, reason=reason,
                       previous_due=_iso(due), due_at=_iso(new_due))
            return True
        task_row = conn.execute(select(human_task).where(human_task.c.id == task_id)).mappings().first()
        if task_row["status"] != "open":
            raise Conflict(f"task {task_id} is {task_row['status']}")
        if task_row["extended_at"] is not None:
            raise Conflict("this task's limit has already been extended once")
        if task_row["due_at"] is None or task_row["due_at"] <= case.now:
            raise Conflict("only a running limit can be extended, before it expires")
        spiff_task = find_task(case.workflow, task_row["task_guid"])
        # A countersign copy shares its countersign's limit: moving its timers moves every copy's deadline.
        holder = clock.limit_holder(spiff_task)
        clock.extend_timers(case.workflow, calendar, {str(t.id) for t in clock.limit_timers(spiff_task)}, workdays)
        new_due = projection.boundary_due(spiff_task)
        copies = [str(t.id) for t in holder.children] if holder is not spiff_task else [task_row["task_guid"]]
        conn.execute(update(human_task).where(human_task.c.instance_id == case.row["id"], human_task.c.status == "open",
                                              human_task.c.task_guid.in_(copies))
                     .values(extended_at=case.now, due_at=new_due))
        case.event("limit_extended", task_id, scope="task", workdays=workdays, reason=reason,
                   previous_due=_iso(task_row["due_at"]), due_at=_iso(new_due))
        return True

    mutate_case(db, instance_id, user.username, do)
    return {"instance_id": instance_id, "task_id": task_id}


def mutate_case(db: Database, instance_id: int | None, actor: str | None, action: Callable,
                skip_locked: bool = False, task_id: int | None = None, then_step: bool = False) -> _Case | None:
    """Lock the case (found from `task_id` when given), run `action(conn, case)` on its live workflow,
    and, if it returns True, run the engine on (with `then_step`) and save."""
    def run(conn):
        case_id = instance_id
        task_row = None
        if task_id is not None:
            task_row = _task_row(conn, task_id)
            case_id = task_row["instance_id"]
        row = db.lock_instance(conn, case_id, skip_locked=skip_locked)
        if row is None:
            if skip_locked:
                return None
            raise NotFound(f"no case {case_id}")
        if row["status"] != "running":
            if skip_locked:
                return None
            raise Conflict(f"case {row['case_no']} is {row['status']}")
        if task_row is not None and not db.is_sqlite:
            task_row = _task_row(conn, task_id)  # PostgreSQL: read again now that the case is locked
        case = _Case(dict(row), None, db.config.now(), actor, [], calendar_for(db, conn), task_row=task_row)
        snapshot = _snapshot_for(conn, case.row)
        case.workflow = snapshot.workflow
        if action(conn, case):
            if then_step:
                _step(case)
            _save(db, conn, case, snapshot)
        # else nothing changed, so the live workflow is still exactly what is stored
        return snapshot, case

    outcome = db.run(run)
    if outcome is None:
        return None
    snapshots.put(outcome[1].row["id"], outcome[0])
    return outcome[1]


def _task_action(db: Database, task_id: int, user: User, action: Callable, steps: bool) -> dict:
    def do(conn, case):
        task_row = case.task_row
        if not projection.may_work_on(user, task_row):
            raise PermissionDenied(f"task {task_id} belongs to {', '.join(task_row['departments']) or '综合窗口'}; "
                                   f"you are in {', '.join(user.departments) or 'no department'}")
        if task_row["status"] != "open":
            raise Conflict(f"task {task_id} is already {task_row['status']}")
        if not steps:  # claim and unclaim touch only the projection, never the workflow
            action(conn, case, task_row, None)
            audit.record_many(conn, case.events)
        else:
            spiff_task = find_task(case.workflow, task_row["task_guid"])
            if spiff_task is None or spiff_task.state != TaskState.READY:
                raise Conflict(f"task {task_id} is no longer ready")
            action(conn, case, task_row, spiff_task)
            _step(case)
        return steps

    case = mutate_case(db, None, user.username, do, task_id=task_id)
    return {"task_id": task_id, "instance_id": case.row["id"], "case_status": case.row["status"]}


def _task_row(conn, task_id: int):
    row = _TASK_ROW.first(conn, {"task_id": task_id})
    if row is None:
        raise NotFound(f"no task {task_id}")
    return row


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
    spec_json = conn.execute(select(process_definition.c.spec_json).where(
        process_definition.c.id == row["definition_id"])).scalar()
    return stored_snapshot(conn, row["id"], row["revision"], load_specs(row["definition_id"], spec_json))


def _step(case: _Case) -> None:
    with _diagram_errors(), using_calendar(case.calendar):
        workflow = case.workflow
        workflow.do_engine_steps()
        # do_engine_steps checks timers only at its very end; a timer that fired there (a limit
        # reached, 超时默许) has left READY engine tasks behind, so run until nothing is ready.
        while any(not t.task_spec.manual for t in tasks_in(workflow, TaskState.READY)):
            workflow.do_engine_steps()


@contextmanager
def _diagram_errors():
    """A diagram's failing script, condition or timer becomes WorkflowFailed naming the element."""
    try:
        yield
    except WorkflowException as exc:
        task = getattr(exc, "task_spec", None) or getattr(getattr(exc, "task", None), "task_spec", None)
        element = getattr(task, "bpmn_id", None) or getattr(task, "name", None)
        raise WorkflowFailed(f"step {element!r} failed: {exc}") from None


def _instance_counters(spiff_task) -> dict:
    """Camunda's nrOf* variables for a countersign's completion condition, counting this signature as done."""
    parent = spiff_task.parent
    if parent is None or not isinstance(parent.task_spec, MultiInstanceTask):
        return {}
    instances = [c for c in parent.children if c.task_spec.name == parent.task_spec.task_spec]
    done = 1 + sum(1 for c in instances if c is not spiff_task and c.state == TaskState.COMPLETED)
    return {"nrOfInstances": len(instances), "nrOfCompletedInstances": done,
            "nrOfActiveInstances": len(instances) - done}


def _save(db: Database, conn, case: _Case, snapshot: Snapshot, first: bool = False) -> None:
    """Persist the workflow and everything projected from it, in the caller's transaction."""
    workflow, row = case.workflow, case.row
    ready = {str(t.id): t for t in tasks_in(workflow, TaskState.READY) if t.task_spec.manual}
    _apply_clock(conn, case, ready)
    snapshot.save(conn, row["id"], first=first)
    projection.sync_human_tasks(conn, case, ready, snapshot, refresh_due=case.resumed)
    projection.sync_timers(conn, case, snapshot)
    if workflow.completed and row["status"] == "running":
        row["status"] = "completed" if workflow.success else "terminated"
        row["ended_at"] = case.now
        case.event("case_" + row["status"], outcome=workflow.data.get("outcome") or _last_data(workflow, "outcome"))
    row["revision"] = snapshot.revision = row["revision"] + 1
    changed = tuple(column for column in _CASE_COLUMNS if row.get(column) != case.stored.get(column))
    _case_update(changed).execute(conn, {"case_id": row["id"], **{"new_" + c: row.get(c) for c in changed}})
    violations.record_violations(conn, case.events)   # a deemed consent is a violation of its department
    audit.record_many(conn, case.events)


@lru_cache(maxsize=None)
def _case_update(columns: tuple[str, ...]) -> HotStatement:
    return HotStatement(update(process_instance).where(process_instance.c.id == bindparam("case_id"))
                        .values({column: bindparam("new_" + column) for column in columns}))


def _apply_clock(conn, case: _Case, ready: dict) -> None:
    """Start or end automatic pauses (tasks marked clock=pause) and keep timers frozen while paused."""
    pausing = [t for t in ready.values() if projection.extensions(t.task_spec).get("clock") == "pause"]
    paused_since = case.row["paused_since"]
    if paused_since is None and pausing:
        spec = pausing[0].task_spec
        _start_pause(conn, case, projection.extensions(spec).get("pauseKind") or "补正",
                     spec.bpmn_name or spec.bpmn_id, automatic=True)
    elif paused_since is not None:
        pause = _open_pause(conn, case.row["id"])
        if pause is not None and pause.automatic and not pausing:
            _end_pause(conn, case, pause)
        else:
            clock.freeze_timers(case.workflow, case.calendar, paused_since)  # timers born during the pause


def _start_pause(conn, case: _Case, kind: str, reason: str, automatic: bool, expected_workdays=None) -> None:
    conn.execute(clock_pause.insert().values(
        instance_id=case.row["id"], kind=kind, automatic=automatic, reason=reason,
        expected_workdays=expected_workdays, started_at=case.now, started_by=case.actor))
    case.row["paused_since"] = case.now
    clock.freeze_timers(case.workflow, case.calendar, case.now)
    case.event("clock_paused", kind=kind, reason=reason, automatic=automatic, expected_workdays=expected_workdays)


def _open_pause(conn, instance_id: int):
    return conn.execute(select(clock_pause).where(
        clock_pause.c.instance_id == instance_id, clock_pause.c.ended_at.is_(None))
        .order_by(clock_pause.c.id.desc()).limit(1)).first()


def _end_pause(conn, case: _Case, pause) -> None:
    calendar, since = case.calendar, case.row["paused_since"]
    seconds = int(calendar.working_seconds_between(since, case.now))
    conn.execute(update(clock_pause).where(clock_pause.c.id == pause.id).values(
        ended_at=case.now, ended_by=case.actor, working_seconds=seconds))
    clock.thaw_timers(case.workflow, calendar, case.now)
    case.row["due_at"] = clock.shift(calendar, case.row["due_at"], since, case.now)
    case.row["statutory_due_at"] = clock.shift(calendar, case.row["statutory_due_at"], since, case.now)
    case.row["paused_since"] = None
    case.resumed = True
    case.event("clock_resumed", kind=pause.kind, paused_working_seconds=seconds, due_at=_iso(case.row["due_at"]))


def _next_case_no(db: Database, conn, now: datetime) -> str:
    day = now.astimezone(LOCAL_TZ).strftime("%Y%m%d")
    insert = sqlite_insert if db.is_sqlite else pg_insert
    statement = insert(case_sequence).values(day=day, last=1)
    statement = statement.on_conflict_do_update(
        index_elements=[case_sequence.c.day], set_={"last": case_sequence.c.last + 1}
    ).returning(case_sequence.c.last)
    return f"{day}{conn.execute(statement).scalar_one():05d}"


def _last_data(workflow, key: str):
    last = workflow.last_task
    return last.data.get(key) if last is not None else None


def _applicant(data: dict) -> str | None:
    for key in ("applicant", "applicant_name", "enterprise_name", "company_name"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:255]
    return None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
