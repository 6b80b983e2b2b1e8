"""The JSON REST API under /api: each view parses the request, calls one engine function and returns JSON."""
from __future__ import annotations

import json
from pathlib import PurePosixPath

from flask import Blueprint, request, url_for
from werkzeug.exceptions import BadRequest

from engine import accounts, countersign, deploy, runtime, worklist
from engine.deploy import SourceFile
from engine.errors import DeploymentInvalid, InvalidInput, Problem

from . import openapi
from .auth import (
    check_may_view_case, current_user, database, issue_token, login_required, roles_required,
)

api = Blueprint("api", __name__, url_prefix="/api")

GUIDE_SUFFIXES = (".yaml", ".yml", ".toml")
MAX_PAGE = 500


@api.get("/openapi.json")
def openapi_document():
    return openapi.document()


@api.post("/token")
def token():
    body = _body()
    _check(body, username=(str, True), password=(str, True))
    user = accounts.authenticate(database(), body["username"], body["password"])
    return issue_token(user)


@api.get("/me")
@login_required
def me():
    return current_user().to_dict()


@api.get("/departments")
@login_required
def list_departments():
    return {"departments": accounts.list_departments(database())}


@api.post("/departments")
@roles_required("admin")
def create_department():
    body = _body()
    _check(body, key=(str, True), name=(str, True))
    created = accounts.create_department(database(), body["key"], body["name"], current_user().username)
    return created, 201


@api.post("/users")
@roles_required("admin")
def create_user():
    body = _body()
    _check(body, username=(str, True), password=(str, True), name=(str, False),
           departments=(list, False), roles=(list, False))
    user = accounts.create_user(database(), body["username"], body["password"], body.get("name"),
                                body.get("departments"), body.get("roles"), current_user().username)
    return user.to_dict(), 201


@api.post("/deployments")
@roles_required("designer", "admin")
def create_deployment():
    sources = sources_from_upload()
    versions = deploy.deploy(database(), sources, current_user().username)
    status = 201 if any(v.created for v in versions) else 200
    return {"deployments": [v.to_dict() for v in versions]}, status


@api.get("/processes")
@login_required
def list_processes():
    return {"processes": worklist.list_processes(database())}


@api.post("/processes/<key>/instances")
@roles_required("window", "admin")
def start_case(key: str):
    body = _body()
    _check(body, data=(dict, False))
    case = runtime.start_case(database(), key, body.get("data") or {}, current_user().username)
    return case, 201, {"Location": url_for(".get_instance", instance_id=case["id"])}


@api.get("/instances/<int:instance_id>")
@login_required
def get_instance(instance_id: int):
    case = worklist.get_instance(database(), instance_id)
    check_may_view_case(current_user(), case)
    return case


@api.get("/tasks")
@login_required
def list_tasks():
    limit, offset = _page()
    tasks = worklist.list_tasks(database(), current_user(), limit=limit, offset=offset)
    return {"tasks": tasks, "limit": limit, "offset": offset}


@api.get("/tasks/<int:task_id>")
@login_required
def get_task(task_id: int):
    return worklist.get_task(database(), task_id, current_user())


@api.post("/tasks/<int:task_id>/claim")
@login_required
def claim_task(task_id: int):
    return runtime.claim(database(), task_id, current_user())


@api.post("/tasks/<int:task_id>/unclaim")
@login_required
def unclaim_task(task_id: int):
    return runtime.unclaim(database(), task_id, current_user())


@api.post("/tasks/<int:task_id>/complete")
@login_required
def complete_task(task_id: int):
    body = _body()
    _check(body, data=(dict, False), opinion=(str, False))
    return runtime.complete(database(), task_id, current_user(), body.get("data") or {}, body.get("opinion"))


def sources_from_upload() -> list[SourceFile]:
    """The uploaded diagrams, each with the service guide that shares its file-name stem (x.bpmn + x.yaml)."""
    files = [f for f in request.files.getlist("file") if f.filename]
    if not files:
        sent = sorted(set(request.files) | set(request.form))
        hint = f"; the request had {', '.join(repr(n) for n in sent)}" if sent else ""
        raise InvalidInput(Problem("upload one or more BPMN files as multipart/form-data in the field 'file'" + hint,
                                   field="file"))
    uploads = [(PurePosixPath(f.filename.replace("\\", "/")).name, f.read()) for f in files]
    diagrams = [SourceFile(name, data) for name, data in uploads if not name.lower().endswith(GUIDE_SUFFIXES)]
    problems = []
    for name, data in uploads:
        if not name.lower().endswith(GUIDE_SUFFIXES):
            continue
        stem = _stem(name)
        partners = [d for d in diagrams if _stem(d.name) == stem]
        if not partners:
            problems.append(Problem(f"service guide {name!r} has no diagram {stem}.bpmn in this upload; "
                                    "a guide is matched to the diagram with the same file name", file=name))
        for diagram in partners:
            if diagram.guide is not None:
                problems.append(Problem(f"diagram {diagram.name!r} has two service guides: "
                                        f"{diagram.guide.name!r} and {name!r}", file=name))
            else:
                diagram.guide = SourceFile(name, data)
    if not diagrams:
        problems.append(Problem("the upload contains service guides but no BPMN diagram", field="file"))
    if problems:
        raise DeploymentInvalid(problems)
    return diagrams


@api.post("/tasks/<int:task_id>/countersigners")
@login_required
def add_countersigner(task_id: int):
    """加签: another department gets its own copy of the countersign this task belongs to."""
    body = _body()
    _check(body, department=(str, True), reason=(str, True))
    result = countersign.add_countersigner(database(), task_id, current_user(), body["department"], body["reason"])
    return result, 201, {"Location": url_for(".get_task", task_id=result["new_task_id"])}


@api.post("/tasks/<int:task_id>/countersigners/remove")
@login_required
def remove_countersigner(task_id: int):
    """减签: this open copy of a countersign is taken away."""
    body = _body()
    _check(body, reason=(str, True))
    return countersign.remove_countersigner(database(), task_id, current_user(), body["reason"])


def _stem(name: str) -> str:
    return name.split(".", 1)[0]


def _body() -> dict:
    """The request's JSON object; an empty body counts as {} so optional bodies may be left out."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(Problem(f"the request body must be a JSON object, not {_json_type(value)}",
                                   field="body"))
    return value


_TYPE_NAMES = {str: "a string", list: "a list of strings", dict: "a JSON object"}


def _check(body: dict, **spec: tuple[type, bool]) -> None:
    """Check field types before the engine sees them; every bad field is reported at once."""
    problems = []
    for name, (kind, required) in spec.items():
        value = body.get(name)
        if value is None:
            if required:
                problems.append(Problem(f"{name} is required", field=name))
            continue
        wrong = not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value))
        if wrong:
            problems.append(Problem(f"{name} must be {_TYPE_NAMES[kind]}, not {_json_type(value)}", field=name))
    if problems:
        raise InvalidInput(problems)


def _page() -> tuple[int, int]:
    problems = []
    values = {}
    for name, default, low, high in (("limit", 100, 1, MAX_PAGE), ("offset", 0, 0, None)):
        raw = request.args.get(name)
        if raw is None or raw == "":
            values[name] = default
            continue
        try:
            number = int(raw)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            problems.append(Problem(f"{name} must be a whole number {bounds}, got {raw!r}", field=name))
        else:
            values[name] = number
    if problems:
        raise InvalidInput(problems)
    return values["limit"], values["offset"]


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
