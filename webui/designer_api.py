"""JSON endpoints for process versions, migration of running cases, and organisation admin."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint, request

from engine import migration, organisation, versions
from engine.errors import InvalidInput, Problem

from .api import _body, _check
from .auth import current_user, database, login_required, roles_required

designer_api = Blueprint("designer_api", __name__, url_prefix="/api")


@designer_api.get("/processes/<key>/versions")
@login_required
def list_versions(key: str):
    return {"key": key, "versions": versions.list_versions(database(), key)}


@designer_api.get("/processes/<key>/versions/<int:version>")
@login_required
def get_version(key: str, version: int):
    return versions.get_version(database(), key, version)


@designer_api.get("/processes/<key>/diff")
@login_required
def diff_versions(key: str):
    return versions.diff_versions(database(), key, _int_arg("from"), _int_arg("to"))


@designer_api.post("/processes/<key>/versions/<int:version>/suspend")
@roles_required("designer", "admin")
def suspend_version(key: str, version: int):
    return versions.suspend_version(database(), key, version, current_user())


@designer_api.post("/processes/<key>/versions/<int:version>/activate")
@roles_required("designer", "admin")
def activate_version(key: str, version: int):
    body = _body()
    _check(body, activates_at=(str, False))
    return versions.activate_version(database(), key, version, current_user(), _moment(body.get("activates_at")))


@designer_api.post("/processes/<key>/versions/<int:version>/redeploy")
@roles_required("designer", "admin")
def redeploy_version(key: str, version: int):
    return versions.redeploy_version(database(), key, version, current_user()), 201


@designer_api.post("/processes/<key>/migrations")
@roles_required("designer", "admin")
def migrate_cases(key: str):
    body = _body()
    source, target = _version_field(body, "from"), _version_field(body, "to")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput(Problem("dry_run must be true or false", field="dry_run"))
    return migration.migrate_cases(database(), key, source, target, current_user(), dry_run=dry_run)


@designer_api.post("/instances/<int:instance_id>/migrate")
@roles_required("designer", "admin")
def migrate_case(instance_id: int):
    body = _body()
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput(Problem("dry_run must be true or false", field="dry_run"))
    return migration.migrate_case(database(), instance_id, _version_field(body, "to"), current_user(), dry_run)


@designer_api.post("/instances/<int:instance_id>/migration/rollback")
@roles_required("designer", "admin")
def rollback_migration(instance_id: int):
    return migration.rollback_migration(database(), instance_id, current_user())


@designer_api.get("/users")
@roles_required("admin")
def list_users():
    return {"users": organisation.list_users(database())}


@designer_api.get("/users/<username>")
@roles_required("admin")
def get_user(username: str):
    return organisation.get_user(database(), username)


@designer_api.patch("/users/<username>")
@roles_required("admin")
def update_user(username: str):
    body = _body()
    _check(body, name=(str, False), roles=(list, False), departments=(list, False))
    return organisation.update_user(database(), username, current_user(), name=body.get("name"),
                                    roles=body.get("roles"), departments=body.get("departments"))


@designer_api.post("/users/<username>/password")
@roles_required("admin")
def reset_password(username: str):
    body = _body()
    _check(body, password=(str, True))
    return organisation.reset_password(database(), username, body["password"], current_user())


@designer_api.post("/users/<username>/deactivate")
@roles_required("admin")
def deactivate_user(username: str):
    return organisation.deactivate_user(database(), username, current_user())


@designer_api.post("/users/<username>/reactivate")
@roles_required("admin")
def reactivate_user(username: str):
    return organisation.reactivate_user(database(), username, current_user())


@designer_api.patch("/departments/<key>")
@roles_required("admin")
def rename_department(key: str):
    body = _body()
    _check(body, name=(str, True))
    return organisation.rename_department(database(), key, body["name"], current_user())


def _int_arg(name: str) -> int:
    raw = request.args.get(name, "")
    if not raw.strip().isdigit():
        raise InvalidInput(Problem(f"give ?{name}= as a version number", field=name))
    return int(raw)


def _version_field(body: dict, name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(Problem(f"{name} must be a version number", field=name))
    return value


def _moment(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(Problem("activates_at must be an ISO date-time such as 2027-01-01T00:00:00+08:00",
                                   field="activates_at")) from None
    if moment.tzinfo is None:
        raise InvalidInput(Problem("activates_at needs a time zone, e.g. +08:00", field="activates_at"))
    return moment
