"""Projection of a live workflow into indexed tables after each save: human tasks, department queues, timers."""
from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import and_, bindparam, delete, select, update
from SpiffWorkflow.util.task import TaskState

from . import clock
from .snapshot import find_task
from .accounts import User, resolve_departments
from .bpmn import task_departments
from .statements import HotStatement
from .store import human_task, task_queue, timer

# Steps drawn outside any department lane are queued for the comprehensive window (综合窗口).
WINDOW_QUEUE = "__window__"
# Prebuilt statements of the hot path (see statements.py on why).
_DEQUEUE = HotStatement(delete(task_queue).where(task_queue.c.human_task_id == bindparam("task_id")))
_NEW_TASK = human_task.insert()
_ENQUEUE = task_queue.insert()
_NEW_TIMER = timer.insert()
_GROUP_EXPRESSION = re.compile(r"^\$\{\s*([A-Za-z_]\w*)\s*\}$")


def may_work_on(user: User, task_row) -> bool:
    if task_row["assignee"] == user.username:
        return True
    return bool(set(task_row["departments"] or [WINDOW_QUEUE]) & set(queues_of(user)))


def queues_of(user: User) -> list[str]:
    """The department queues whose unclaimed tasks a user sees."""
    return [*user.departments, WINDOW_QUEUE] if user.has_role("window") else list(user.departments)


def sync_human_tasks(conn, case, ready: dict, snapshot, refresh_due: bool) -> None:
    """Open a human task for each new READY user task, close the ones that are no longer ready."""
    open_rows = snapshot.open_tasks
    if open_rows is None:
        open_rows = {r.task_guid: r.id for r in conn.execute(
            select(human_task.c.task_guid, human_task.c.id).where(
                human_task.c.instance_id == case.row["id"], human_task.c.status == "open"))}
    still_open = {guid: task_id for guid, task_id in open_rows.items() if guid in ready}
    gone = {guid: task_id for guid, task_id in open_rows.items() if guid not in ready}
    dequeue = list(gone.values()) + ([case.completed_task] if case.completed_task else [])
    if dequeue:
        _DEQUEUE.execute(conn, [{"task_id": task_id} for task_id in dequeue])
    if gone:
        # Tasks completed through complete() are already closed; the rest were cancelled by the
        # diagram: an interrupting timer (超时默许), a terminate end, or another branch winning.
        cancelled = [task_id for task_id in gone.values() if task_id != case.completed_task]
        if cancelled:
            conn.execute(update(human_task).where(human_task.c.id.in_(cancelled))
                         .values(status="cancelled", completed_at=case.now))
        for guid, task_id in gone.items():
            if task_id != case.completed_task:
                _record_cancellation(case, conn, guid, task_id)
    for guid, task in ready.items():
        if guid in open_rows:
            if refresh_due:
                conn.execute(update(human_task).where(human_task.c.id == open_rows[guid])
                             .values(due_at=boundary_due(task)))
            continue
        spec = task.task_spec
        settings = extensions(spec)
        departments = resolve_departments(conn, _groups(task))
        yellow = clock.threshold_seconds(case.calendar, settings.get("yellowThreshold"))
        task_id = conn.execute(_NEW_TASK, {
            "instance_id": case.row["id"], "task_guid": guid, "bpmn_id": spec.bpmn_id or spec.name,
            "name": spec.bpmn_name or spec.bpmn_id, "lane": spec.lane, "departments": departments,
            "assignee": settings.get("camunda:assignee"), "status": "open", "created_at": case.now,
            "due_at": boundary_due(task), "yellow_seconds": yellow or case.row.get("yellow_seconds"),
            "urge_count": 0}).inserted_primary_key[0]
        conn.execute(_ENQUEUE, [{"department_key": d, "human_task_id": task_id} for d in departments or [WINDOW_QUEUE]])
        still_open[guid] = task_id
        case.event("task_created", task_id, bpmn_id=spec.bpmn_id, departments=departments)
    snapshot.open_tasks = still_open


def _record_cancellation(case, conn, guid: str, task_id: int) -> None:
    task = find_task(case.workflow, guid)
    deemed = None
    if task is not None and task.parent is not None:
        for sibling in task.parent.children:
            definition = getattr(sibling.task_spec, "event_definition", None)
            if (sibling is not task and sibling.state == TaskState.COMPLETED and definition is not None
                    and getattr(sibling.task_spec, "cancel_activity", False) and clock.is_timer(definition)):
                deemed = sibling
    if deemed is None:
        case.event("task_cancelled", task_id)
        return
    row = conn.execute(select(human_task.c.bpmn_id, human_task.c.departments, human_task.c.assignee)
                       .where(human_task.c.id == task_id)).first()
    case.event("deemed_consent", task_id, bpmn_id=row.bpmn_id, departments=row.departments,
               assignee=row.assignee, timer=deemed.task_spec.bpmn_id)


def _groups(task) -> list[str]:
    """Candidate groups, resolving `${variable}` entries (e.g. a countersign's department) from task data."""
    groups = []
    for group in task_departments(task.task_spec):
        match = _GROUP_EXPRESSION.match(group)
        if not match:
            groups.append(group)
            continue
        value = task.data.get(match.group(1))
        groups.extend([str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)] if value else [])
    return groups


def boundary_due(task) -> datetime | None:
    """A task's deadline is the earliest timer on its boundary (a countersign copy: on its countersign's)."""
    dues = [due for due in map(clock.timer_due, clock.limit_timers(task)) if due is not None]
    return min(dues) if dues else None


def sync_timers(conn, case, snapshot) -> None:
    """Keep one timer row per waiting timer, with its due moment, for the sweep to find."""
    wanted = {}
    for task in clock.waiting_timers(case.workflow):
        due = clock.timer_due(task)
        if due is not None:
            wanted[str(task.id)] = (due, task.task_spec.bpmn_id or task.task_spec.name)
    stored = snapshot.timers
    if stored is None:
        stored = {r.task_guid: (r.due_at, r.bpmn_id) for r in conn.execute(
            select(timer.c.task_guid, timer.c.due_at, timer.c.bpmn_id).where(timer.c.instance_id == case.row["id"]))}
    stale = [guid for guid in stored if guid not in wanted]
    if stale:
        conn.execute(delete(timer).where(timer.c.instance_id == case.row["id"], timer.c.task_guid.in_(stale)))
        for guid in stale:
            task = find_task(case.workflow, guid)
            if task is not None and task.state & (TaskState.COMPLETED | TaskState.READY):
                case.event("timer_fired", bpmn_id=stored[guid][1], task_guid=guid, due_at=_iso(stored[guid][0]))
    for guid, (due, bpmn_id) in wanted.items():
        if guid not in stored:
            conn.execute(_NEW_TIMER, {"instance_id": case.row["id"], "task_guid": guid, "bpmn_id": bpmn_id,
                                      "due_at": due})
        elif abs((stored[guid][0] - due).total_seconds()) > 0.001:
            conn.execute(update(timer).where(and_(timer.c.instance_id == case.row["id"], timer.c.task_guid == guid))
                         .values(due_at=due))
    snapshot.timers = wanted


def extensions(spec) -> dict:
    return getattr(spec, "extensions", None) or {}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
