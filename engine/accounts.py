"""Departments and users: creation, membership, roles and password checks (argon2 hashes only)."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from . import audit
from .errors import AuthenticationFailed, Conflict, InvalidInput, NotFound, Problem
from .store import Database, app_user, department, user_department

ROLES = ("clerk", "window", "lead", "supervisor", "designer", "admin")
# Actors the system itself records in the audit trail; no person may log in under these names.
RESERVED_USERNAMES = {"online", "system", "cli", "seed", "init"}
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_hashers: dict[tuple[int, int, int], tuple[PasswordHasher, str]] = {}


def password_hasher(db: Database) -> tuple[PasswordHasher, str]:
    """The configured argon2id hasher, and a hash to verify against when a user does not exist."""
    key = (db.config.password_time_cost, db.config.password_memory_kib, db.config.password_parallelism)
    if key not in _hashers:
        hasher = PasswordHasher(time_cost=key[0], memory_cost=key[1], parallelism=key[2])
        _hashers[key] = (hasher, hasher.hash("no such user"))
    return _hashers[key]


@dataclass(frozen=True)
class User:
    id: int
    username: str
    name: str
    roles: tuple[str, ...] = ()
    departments: tuple[str, ...] = field(default=())

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    def to_dict(self) -> dict:
        return {"id": self.id, "username": self.username, "name": self.name,
                "roles": list(self.roles), "departments": list(self.departments)}


def create_department(db: Database, key: str, name: str, actor: str | None = None) -> dict:
    problems = []
    if not isinstance(key, str) or not _KEY.match(key):
        problems.append(Problem("key must be 1-64 letters, digits, '_', '-' or '.'", field="key"))
    if not isinstance(name, str) or not name.strip():
        problems.append(Problem("name is required", field="name"))
    if problems:
        raise InvalidInput(problems)

    def insert(conn):
        clash = conn.execute(select(department.c.key).where(
            or_(department.c.key == key, department.c.name == name.strip()))).first()
        if clash:
            raise Conflict(f"department {key!r} or a department named {name!r} already exists")
        conn.execute(department.insert().values(key=key, name=name.strip(), created_at=db.config.now()))
        audit.record(conn, db.config.now(), actor, "department_created", data={"key": key, "name": name})
        return {"key": key, "name": name.strip()}

    result = db.run(insert)
    resolve_departments.cache_clear()
    return result


def department_names(conn) -> dict[str, str]:
    """Every department's name by its key, in the caller's transaction."""
    return dict(conn.execute(select(department.c.key, department.c.name)).all())


def list_departments(db: Database) -> list[dict]:
    with db.read() as conn:
        return [dict(r) for r in conn.execute(select(department.c.key, department.c.name)
                                              .order_by(department.c.key)).mappings()]


def create_user(db: Database, username: str, password: str, name: str | None = None,
                departments: list[str] | None = None, roles: list[str] | None = None,
                actor: str | None = None) -> User:
    departments = list(departments or [])
    roles = list(roles or ["clerk"])
    problems = []
    if not isinstance(username, str) or not _KEY.match(username):
        problems.append(Problem("username must be 1-64 letters, digits, '_', '-' or '.'", field="username"))
    elif username in RESERVED_USERNAMES:
        problems.append(Problem(f"{username!r} is reserved for the system", field="username"))
    if not isinstance(password, str) or len(password) < 8:
        problems.append(Problem("password must be at least 8 characters", field="password"))
    bad_roles = [r for r in roles if r not in ROLES]
    if bad_roles:
        problems.append(Problem(f"unknown roles {bad_roles}; roles are {', '.join(ROLES)}", field="roles"))
    if problems:
        raise InvalidInput(problems)

    def insert(conn):
        known = {r.key for r in conn.execute(select(department.c.key).where(department.c.key.in_(departments)))}
        missing = [d for d in departments if d not in known]
        if missing:
            raise InvalidInput(Problem(f"unknown departments {missing}", field="departments"))
        if conn.execute(select(app_user.c.id).where(app_user.c.username == username)).first():
            raise Conflict(f"user {username!r} already exists")
        user_id = conn.execute(app_user.insert().values(
            username=username, name=name or username, password_hash=password_hasher(db)[0].hash(password),
            roles=",".join(roles), active=True, created_at=db.config.now())).inserted_primary_key[0]
        if departments:
            conn.execute(user_department.insert(), [{"user_id": user_id, "department_key": d} for d in departments])
        audit.record(conn, db.config.now(), actor, "user_created",
                     data={"username": username, "roles": roles, "departments": departments})
        return User(user_id, username, name or username, tuple(roles), tuple(departments))

    try:
        return db.run(insert)
    except IntegrityError:
        raise Conflict(f"user {username!r} already exists") from None


def set_password(db: Database, username: str, password: str, actor: str | None = None) -> None:
    if not isinstance(password, str) or len(password) < 8:
        raise InvalidInput(Problem("password must be at least 8 characters", field="password"))

    def update(conn):
        changed = conn.execute(app_user.update().where(app_user.c.username == username)
                               .values(password_hash=password_hasher(db)[0].hash(password))).rowcount
        if not changed:
            raise NotFound(f"no user {username!r}")
        audit.record(conn, db.config.now(), actor, "password_set", data={"username": username})

    db.run(update)


def authenticate(db: Database, username: str, password: str) -> User:
    """The same error, after the same work, whether the user is unknown or the password wrong."""
    with db.read() as conn:
        row = conn.execute(select(app_user).where(app_user.c.username == str(username or ""))).mappings().first()
    hasher, dummy_hash = password_hasher(db)
    # Unknown users are checked against a dummy hash so both failures cost the same time.
    stored = row["password_hash"] if row is not None and row["active"] else dummy_hash
    try:
        hasher.verify(stored, str(password or ""))
    except (VerificationError, InvalidHashError):
        raise AuthenticationFailed("wrong username or password") from None
    if row is None or not row["active"]:
        raise AuthenticationFailed("wrong username or password")
    return get_user(db, row["username"])


def get_user(db: Database, username: str) -> User:
    with db.read() as conn:
        row = conn.execute(select(app_user).where(app_user.c.username == username)).mappings().first()
        if row is None or not row["active"]:
            raise NotFound(f"no active user {username!r}")
        departments = tuple(r.department_key for r in conn.execute(
            select(user_department.c.department_key).where(user_department.c.user_id == row["id"])
            .order_by(user_department.c.department_key)))
    roles = tuple(r for r in row["roles"].split(",") if r)
    return User(row["id"], row["username"], row["name"], roles, departments)


class _DepartmentResolver:
    """Maps lane names and candidate groups to department keys; names never change often, so cache."""

    def __init__(self):
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, conn, names: list[str]) -> list[str]:
        keys = []
        for name in names:
            with self._lock:
                key = self._cache.get(name)
            if key is None:
                row = conn.execute(select(department.c.key).where(
                    or_(department.c.key == name, department.c.name == name))).first()
                if row is None:
                    keys.append(name)  # not (yet) a known department: keep the name so nothing is lost
                    continue
                key = row.key
                with self._lock:
                    self._cache[name] = key
            keys.append(key)
        return list(dict.fromkeys(keys))

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()


resolve_departments = _DepartmentResolver()
