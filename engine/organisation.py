"""Organisation administration: users' names, roles, departments, passwords and (de)activation; departments."""
from __future__ import annotations

from sqlalchemy import delete, select, update

from . import accounts, audit
from .accounts import ROLES, User
from .errors import Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .store import Database, app_user, department, human_task, user_department

ADMIN_ROLES = ("admin",)


def list_users(db: Database, include_inactive: bool = True) -> list[dict]:
    """Every user with roles, departments, active flag and how many open tasks each holds."""
    with db.read() as conn:
        query = select(app_user).order_by(app_user.c.username)
        if not include_inactive:
            query = query.where(app_user.c.active.is_(True))
        rows = conn.execute(query).mappings().all()
        memberships: dict[int, list[str]] = {}
        for row in conn.execute(select(user_department).order_by(user_department.c.department_key)):
            memberships.setdefault(row.user_id, []).append(row.department_key)
        held: dict[str, int] = {}
        for row in conn.execute(select(human_task.c.assignee).where(
                human_task.c.status == "open", human_task.c.assignee.is_not(None))):
            held[row.assignee] = held.get(row.assignee, 0) + 1
    return [_as_dict(row, memberships.get(row["id"], []), held.get(row["username"], 0)) for row in rows]


def get_user(db: Database, username: str) -> dict:
    """One user (active or not) as the admin pages show it."""
    with db.read() as conn:
        row = _user_row(conn, username)
        departments = [r.department_key for r in conn.execute(
            select(user_department.c.department_key).where(user_department.c.user_id == row["id"])
            .order_by(user_department.c.department_key))]
        held = conn.execute(select(human_task.c.id).where(
            human_task.c.status == "open", human_task.c.assignee == username)).all()
    return _as_dict(row, departments, len(held))


def update_user(db: Database, username: str, actor: User, name: str | None = None, roles: list[str] | None = None,
                departments: list[str] | None = None) -> dict:
    """Change a user's display name, roles and/or department membership (None leaves a field as it is)."""
    _require_admin(actor)
    problems = []
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        problems.append(Problem("name must be 1-200 characters", field="name"))
    if roles is not None:
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            problems.append(Problem("roles must be a list of role names", field="roles"))
        elif [r for r in roles if r not in ROLES]:
            problems.append(Problem(f"unknown roles {[r for r in roles if r not in ROLES]}; roles are "
                                    f"{', '.join(ROLES)}", field="roles"))
    if departments is not None and (not isinstance(departments, list)
                                    or not all(isinstance(d, str) for d in departments)):
        problems.append(Problem("departments must be a list of department keys", field="departments"))
    if problems:
        raise InvalidInput(problems)
    if actor.username == username and roles is not None and "admin" not in roles:
        raise Conflict("you cannot take the admin role from yourself")

    def store(conn):
        row = _user_row(conn, username)
        changes = {}
        if name is not None and name.strip() != row["name"]:
            conn.execute(update(app_user).where(app_user.c.id == row["id"]).values(name=name.strip()))
            changes["name"] = name.strip()
        if roles is not None:
            ordered = [r for r in ROLES if r in roles]
            conn.execute(update(app_user).where(app_user.c.id == row["id"]).values(roles=",".join(ordered)))
            changes["roles"] = ordered
        if departments is not None:
            wanted = list(dict.fromkeys(departments))
            known = {r.key for r in conn.execute(select(department.c.key).where(department.c.key.in_(wanted)))}
            missing = [d for d in wanted if d not in known]
            if missing:
                raise InvalidInput(Problem(f"unknown departments {missing}", field="departments"))
            conn.execute(delete(user_department).where(user_department.c.user_id == row["id"]))
            if wanted:
                conn.execute(user_department.insert(), [{"user_id": row["id"], "department_key": d} for d in wanted])
            changes["departments"] = wanted
        audit.record(conn, db.config.now(), actor.username, "user_updated", data={"username": username, **changes})

    db.run(store)
    return get_user(db, username)


def reset_password(db: Database, username: str, password: str, actor: User) -> dict:
    _require_admin(actor)
    accounts.set_password(db, username, password, actor.username)
    return {"username": username, "password_reset": True}


def deactivate_user(db: Database, username: str, actor: User) -> dict:
    """The user can no longer sign in; the open tasks they had claimed go back to their department's queue."""
    _require_admin(actor)
    if actor.username == username:
        raise Conflict("you cannot deactivate yourself")

    def store(conn):
        row = _user_row(conn, username)
        if not row["active"]:
            raise Conflict(f"user {username!r} is already inactive")
        conn.execute(update(app_user).where(app_user.c.id == row["id"]).values(active=False))
        now = db.config.now()
        returned = conn.execute(select(human_task.c.id, human_task.c.instance_id, human_task.c.bpmn_id).where(
            human_task.c.status == "open", human_task.c.assignee == username).order_by(human_task.c.id)).all()
        for task in returned:
            # Same lock as claim/complete, so a clerk finishing the task right now does not race the return.
            db.lock_instance(conn, task.instance_id)
            changed = conn.execute(update(human_task).where(
                human_task.c.id == task.id, human_task.c.status == "open", human_task.c.assignee == username)
                .values(assignee=None, claimed_at=None)).rowcount
            if changed:
                audit.record(conn, now, actor.username, "task_returned", task.instance_id, task.id,
                             data={"bpmn_id": task.bpmn_id, "previous": username, "reason": "user deactivated"})
        audit.record(conn, now, actor.username, "user_deactivated",
                     data={"username": username, "returned_tasks": [t.id for t in returned]})
        return {"username": username, "active": False, "returned_tasks": [t.id for t in returned]}

    return db.run(store)


def reactivate_user(db: Database, username: str, actor: User) -> dict:
    _require_admin(actor)

    def store(conn):
        row = _user_row(conn, username)
        if row["active"]:
            raise Conflict(f"user {username!r} is already active")
        conn.execute(update(app_user).where(app_user.c.id == row["id"]).values(active=True))
        audit.record(conn, db.config.now(), actor.username, "user_reactivated", data={"username": username})
        return {"username": username, "active": True}

    return db.run(store)


def add_department(db: Database, key: str, name: str, actor: User) -> dict:
    _require_admin(actor)
    return accounts.create_department(db, key, name, actor.username)


def rename_department(db: Database, key: str, name: str, actor: User) -> dict:
    """Rename a department; its key (used in diagrams' candidate groups and in queues) stays."""
    _require_admin(actor)
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
        raise InvalidInput(Problem("name must be 1-200 characters", field="name"))
    name = name.strip()

    def store(conn):
        row = conn.execute(select(department).where(department.c.key == key)).mappings().first()
        if row is None:
            raise NotFound(f"no department {key!r}")
        clash = conn.execute(select(department.c.key).where(department.c.name == name, department.c.key != key)).first()
        if clash:
            raise Conflict(f"department {clash.key!r} is already named {name!r}")
        conn.execute(update(department).where(department.c.key == key).values(name=name))
        audit.record(conn, db.config.now(), actor.username, "department_renamed",
                     data={"key": key, "name": name, "previous": row["name"]})
        return {"key": key, "name": name}

    result = db.run(store)
    # Lanes name departments: the old name must stop resolving (and the new one start) at once.
    accounts.resolve_departments.cache_clear()
    return result


def list_departments(db: Database) -> list[dict]:
    """Departments with how many active members each has."""
    with db.read() as conn:
        rows = conn.execute(select(department.c.key, department.c.name).order_by(department.c.key)).all()
        members: dict[str, int] = {}
        for row in conn.execute(select(user_department.c.department_key).join(
                app_user, app_user.c.id == user_department.c.user_id).where(app_user.c.active.is_(True))):
            members[row.department_key] = members.get(row.department_key, 0) + 1
    return [{"key": r.key, "name": r.name, "members": members.get(r.key, 0)} for r in rows]


def _require_admin(actor: User) -> None:
    if not actor.has_role(*ADMIN_ROLES):
        raise PermissionDenied("only administrators may change users and departments")


def _user_row(conn, username: str):
    row = conn.execute(select(app_user).where(app_user.c.username == username)).mappings().first()
    if row is None:
        raise NotFound(f"no user {username!r}")
    return row


def _as_dict(row, departments: list[str], held: int) -> dict:
    return {"id": row["id"], "username": row["username"], "name": row["name"],
            "roles": [r for r in row["roles"].split(",") if r], "departments": departments,
            "active": bool(row["active"]), "created_at": row["created_at"].isoformat(), "open_tasks": held}
