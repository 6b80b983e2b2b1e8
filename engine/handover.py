"""Passing a task between people without touching the workflow: 转办 reassign, 委托 delegate and take back, 催办 urge."""
from __future__ import annotations

from sqlalchemy import select, update

from . import audit
from .accounts import User
from .errors import Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .store import Database, app_user, human_task, user_department

URGE_ROLES = ("lead", "supervisor", "admin")


def reassign(db: Database, task_id: int, user: User, to_username: str, reason: str = "") -> dict:
    """转办: hand a task to a colleague of the task's departments (its holder, or a lead of those departments)."""
    def change(conn, task):
        holder = task["assignee"]
        lead_here = user.has_role("lead") and set(user.departments) & set(task["departments"])
        if holder != user.username and not lead_here:
            raise PermissionDenied("only the task's holder or a lead of its department may reassign it")
        target = _active_user(conn, to_username)
        if task["departments"] and not set(_departments_of(conn, target)) & set(task["departments"]):
            raise InvalidInput(Problem(f"{to_username} is not in {', '.join(task['departments'])}", field="to"))
        _set(conn, task_id, assignee=to_username, delegated_from=None)
        return "task_reassigned", {"from": holder, "to": to_username, "reason": reason}

    return _change(db, task_id, user, change)


def delegate(db: Database, task_id: int, user: User, to_username: str, reason: str = "") -> dict:
    """委托: the holder lets someone else act for them, and may take the task back at any time."""
    def change(conn, task):
        if task["assignee"] != user.username:
            raise PermissionDenied("claim the task before delegating it")
        if to_username == user.username:
            raise InvalidInput(Problem("delegate to someone else", field="to"))
        _active_user(conn, to_username)
        _set(conn, task_id, assignee=to_username, delegated_from=user.username)
        return "task_delegated", {"from": user.username, "to": to_username, "reason": reason}

    return _change(db, task_id, user, change, as_holder_or_delegator=True)


def take_back(db: Database, task_id: int, user: User) -> dict:
    def change(conn, task):
        if task["delegated_from"] != user.username:
            raise Conflict("you did not delegate this task")
        _set(conn, task_id, assignee=user.username, delegated_from=None)
        return "task_taken_back", {"from": task["assignee"], "to": user.username}

    return _change(db, task_id, user, change, as_holder_or_delegator=True)


def urge(db: Database, task_id: int, user: User, message: str) -> dict:
    """催办: a lead or supervisor pushes a reminder onto someone else's task."""
    if not user.has_role(*URGE_ROLES):
        raise PermissionDenied("only leads and supervisors may urge a task")
    if not (message or "").strip():
        raise InvalidInput(Problem("say what is urgent", field="message"))

    def change(conn, task):
        _set(conn, task_id, urge_count=task["urge_count"] + 1, urged_at=db.config.now())
        return "task_urged", {"message": message.strip(), "assignee": task["assignee"]}

    return _change(db, task_id, user, change, anyone=True)


def _change(db: Database, task_id: int, user: User, change, anyone: bool = False,
            as_holder_or_delegator: bool = False) -> dict:
    def run(conn):
        task = conn.execute(select(human_task).where(human_task.c.id == task_id)).mappings().first()
        if task is None:
            raise NotFound(f"no task {task_id}")
        db.lock_instance(conn, task["instance_id"])  # serialise with the runtime's work on this case
        task = conn.execute(select(human_task).where(human_task.c.id == task_id)).mappings().first()
        if task["status"] != "open":
            raise Conflict(f"task {task_id} is {task['status']}")
        if not anyone and not as_holder_or_delegator and not (
                set(user.departments) & set(task["departments"]) or task["assignee"] == user.username):
            raise PermissionDenied(f"task {task_id} is not one of your departments' tasks")
        if as_holder_or_delegator and user.username not in (task["assignee"], task["delegated_from"]):
            raise PermissionDenied(f"task {task_id} is not held by you")
        event_type, data = change(conn, task)
        audit.record(conn, db.config.now(), user.username, event_type, task["instance_id"], task_id,
                     {"bpmn_id": task["bpmn_id"], **data})
        return {"task_id": task_id, "instance_id": task["instance_id"], "event": event_type}

    return db.run(run)


def _active_user(conn, username: str) -> int:
    row = conn.execute(select(app_user.c.id).where(app_user.c.username == username, app_user.c.active)).first()
    if row is None:
        raise InvalidInput(Problem(f"no active user {username!r}", field="to"))
    return row.id


def _departments_of(conn, user_id: int) -> list[str]:
    return list(conn.execute(select(user_department.c.department_key)
                             .where(user_department.c.user_id == user_id)).scalars())


def _set(conn, task_id: int, **values) -> None:
    conn.execute(update(human_task).where(human_task.c.id == task_id).values(**values))
