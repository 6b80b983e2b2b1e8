"""OpenAPI paths for process versions, migration of running cases and organisation admin (webui/designer_api.py)."""
from __future__ import annotations

from engine.accounts import ROLES

from .openapi import PATHS, _error, _integer, _json, _json_body, _object, _op, _path_id, _string

_KEY = {"name": "key", "in": "path", "required": True, "description": "process key (the BPMN process id)",
        "schema": {"type": "string"}}
_VERSION = _path_id("version", "version number")
_INSTANCE = _path_id("instance_id", "case id")
_USERNAME = {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
_DEPARTMENT = {"name": "key", "in": "path", "required": True, "description": "department key",
               "schema": {"type": "string"}}
_TIME = _string(True, format="date-time")
_CHANGE_ERRORS = {"403": _error("Forbidden"), "404": _error("NotFound"), "409": _error("Conflict"),
                  "422": _error("Invalid")}
_BODY_ERRORS = {"400": _error("BadRequest"), **_CHANGE_ERRORS}

_ELEMENT = _object({"id": _string(), "name": _string(True), "type": _string(description="BPMN element type")},
                   ["id", "name", "type"])
_CHANGED = _object({
    "id": _string(), "name": _string(True), "type": _string(), "previous_name": _string(True),
    "details": {"type": "array", "items": _object({"field": _string(), "before": _string(True),
                                                    "after": _string(True)})},
})
_DIFF = _object({"added": {"type": "array", "items": _ELEMENT}, "removed": {"type": "array", "items": _ELEMENT},
                 "changed": {"type": "array", "items": _CHANGED}}, ["added", "removed", "changed"])
_VERSION_SUMMARY = _object({
    "id": _integer(), "key": _string(), "version": _integer(), "name": _string(True),
    "status": _string(enum=["active", "suspended"]),
    "state": _string(enum=["current", "superseded", "scheduled", "suspended"],
                     description="current = the version new cases start on"),
    "deployed_by": _string(True), "deployed_at": _string(format="date-time"), "activates_at": _TIME,
    "running_cases": _integer(), "cases": _integer(),
    "changes": {**_DIFF, "nullable": True, "description": "element ids added/removed/changed since the version before"},
})
_STEP = _object({
    "task_id": _integer(), "bpmn_id": _string(), "name": _string(True), "departments": {"type": "array", "items": _string()},
    "due_at": _TIME, "to_bpmn_id": _string(), "to_name": _string(True),
    "to_departments": {"type": "array", "items": _string()}, "new_due_at": _TIME,
    "unclaimed": {"type": "boolean", "description": "the step moved to other departments and left its clerk"},
})
_CASE_MIGRATION = _object({
    "id": _integer(), "case_no": _string(), "movable": {"type": "boolean"}, "migrated": {"type": "boolean"},
    "reasons": {"type": "array", "items": _string(), "description": "why the case cannot move"},
    "steps": {"type": "array", "items": _STEP, "description": "the case's active steps and where each maps"},
    "timers": {"type": "array", "items": _object({"bpmn_id": _string(), "due_at": _TIME, "new_due_at": _TIME,
                                                  "restarted": {"type": "boolean"}})},
    "case_due_at": _TIME, "new_case_due_at": _TIME,
})
_BATCH = _object({"key": _string(), "from": _integer(), "to": _integer(), "total": _integer(),
                  "movable": _integer(), "migrated": _integer(), "refused": _integer(),
                  "cases": {"type": "array", "items": _CASE_MIGRATION}})
_ADMIN_USER = _object({
    "id": _integer(), "username": _string(), "name": _string(), "roles": {"type": "array", "items": _string(enum=list(ROLES))},
    "departments": {"type": "array", "items": _string()}, "active": {"type": "boolean"},
    "created_at": _string(format="date-time"), "open_tasks": _integer(description="open tasks the user holds"),
})

PATHS.update({
    "/api/processes/{key}/versions": {"get": _op(
        "listVersions", "All versions of a process: who deployed what when, what changed, cases on each", {
            "200": _json(_object({"key": _string(), "versions": {"type": "array", "items": _VERSION_SUMMARY}}),
                         "versions, newest first"), "404": _error("NotFound")},
        tag="processes", parameters=[_KEY])},
    "/api/processes/{key}/versions/{version}": {"get": _op(
        "getVersion", "One version with its BPMN XML and service guide", {
            "200": _json(_object({"xml": _string(), "guide": {"type": "object", "nullable": True}}), "the version"),
            "404": _error("NotFound")}, tag="processes", parameters=[_KEY, _VERSION])},
    "/api/processes/{key}/diff": {"get": _op(
        "diffVersions", "Elements added, removed and changed between two versions", {
            "200": _json(_DIFF, "the element-level diff (diagram layout ignored)"), "404": _error("NotFound"),
            "422": _error("Invalid")}, tag="processes", parameters=[
            _KEY, {"name": "from", "in": "query", "required": True, "schema": {"type": "integer"}},
            {"name": "to", "in": "query", "required": True, "schema": {"type": "integer"}}])},
    "/api/processes/{key}/versions/{version}/suspend": {"post": _op(
        "suspendVersion", "Suspend a version: no new cases on it; running cases carry on (designer, admin)", {
            "200": _json(_object({"status": _string()}), "suspended"), **_CHANGE_ERRORS},
        tag="processes", parameters=[_KEY, _VERSION])},
    "/api/processes/{key}/versions/{version}/activate": {"post": _op(
        "activateVersion", "Reactivate a version, now or from a future moment (designer, admin)", {
            "200": _json(_object({"status": _string(), "activates_at": _TIME}), "active"), **_BODY_ERRORS},
        tag="processes", parameters=[_KEY, _VERSION], body=_json_body(_object({"activates_at": _TIME}), required=False))},
    "/api/processes/{key}/versions/{version}/redeploy": {"post": _op(
        "redeployVersion", "Roll back: deploy an older version again as the newest (designer, admin)", {
            "201": _json(_object({"version": _integer(), "redeployed_from": _integer()}), "the new version"),
            **_CHANGE_ERRORS}, tag="processes", parameters=[_KEY, _VERSION])},
    "/api/processes/{key}/migrations": {"post": _op(
        "migrateCases", "Preview (dry_run) or migrate every running case from one version to another", {
            "200": _json(_BATCH, "per case: movable or not and why, the step mapping and the new deadlines"),
            **_BODY_ERRORS}, tag="processes", parameters=[_KEY], description=(
            "Each case moves in its own transaction under its lock, all or nothing, and is audited "
            "(event case_migrated). Deadlines of changed limits are recomputed from when each step started, "
            "so working time already spent counts; clock stops and 延期 are kept. A case cannot move when a "
            "step it is at or has done no longer exists, when the active steps would change, or when a new "
            "step lies behind it."),
        body=_json_body(_object({"from": _integer(), "to": _integer(), "dry_run": {"type": "boolean", "default": False}},
                                ["from", "to"])))},
    "/api/instances/{instance_id}/migrate": {"post": _op(
        "migrateCase", "Move one running case to another version of its process (designer, admin)", {
            "200": _json(_CASE_MIGRATION, "migrated (or, with dry_run, what would happen)"), **_BODY_ERRORS},
        tag="cases", parameters=[_INSTANCE], description="409 with the reasons when the case cannot move.",
        body=_json_body(_object({"to": _integer(), "dry_run": {"type": "boolean", "default": False}}, ["to"])))},
    "/api/instances/{instance_id}/migration/rollback": {"post": _op(
        "rollbackMigration", "Put a migrated case back exactly as before its last migration (designer, admin)", {
            "200": _json(_object({"version": _integer(), "rolled_back_from": _integer()}), "rolled back"),
            **_CHANGE_ERRORS}, tag="cases", parameters=[_INSTANCE],
        description="409 once the case has moved on since the migration.")},
    "/api/users/{username}": {
        "get": _op("getUser", "One user, active or not (admin)", {
            "200": _json(_ADMIN_USER, "the user"), "403": _error("Forbidden"), "404": _error("NotFound")},
            tag="admin", parameters=[_USERNAME]),
        "patch": _op("updateUser", "Change a user's name, roles or departments (admin)", {
            "200": _json(_ADMIN_USER, "the user as now stored"), **_BODY_ERRORS}, tag="admin",
            parameters=[_USERNAME], body=_json_body(_object({
                "name": _string(), "roles": {"type": "array", "items": _string(enum=list(ROLES))},
                "departments": {"type": "array", "items": _string()}}))),
    },
    "/api/users/{username}/password": {"post": _op(
        "resetPassword", "Set a new password for a user (admin)", {
            "200": _json(_object({"username": _string()}), "reset"), **_BODY_ERRORS}, tag="admin",
        parameters=[_USERNAME], body=_json_body(_object({"password": _string(minLength=8)}, ["password"])))},
    "/api/users/{username}/deactivate": {"post": _op(
        "deactivateUser", "Deactivate a user; the open tasks they claimed go back to their departments' queues", {
            "200": _json(_object({"active": {"type": "boolean"}, "returned_tasks": {"type": "array",
                                                                                     "items": _integer()}}),
                         "deactivated"), **_CHANGE_ERRORS}, tag="admin", parameters=[_USERNAME])},
    "/api/users/{username}/reactivate": {"post": _op(
        "reactivateUser", "Let a deactivated user sign in again (admin)", {
            "200": _json(_object({"active": {"type": "boolean"}}), "reactivated"), **_CHANGE_ERRORS},
        tag="admin", parameters=[_USERNAME])},
    "/api/departments/{key}": {"patch": _op(
        "renameDepartment", "Rename a department; its key stays (admin)", {
            "200": _json(_object({"key": _string(), "name": _string()}), "renamed"), **_BODY_ERRORS},
        tag="admin", parameters=[_DEPARTMENT], body=_json_body(_object({"name": _string()}, ["name"])))},
})

# GET beside the existing POST /api/users.
PATHS["/api/users"]["get"] = _op("listUsers", "Every user with roles, departments and open tasks held (admin)", {
    "200": _json(_object({"users": {"type": "array", "items": _ADMIN_USER}}), "users by username"),
    "403": _error("Forbidden")}, tag="admin")
