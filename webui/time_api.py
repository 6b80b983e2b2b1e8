"""JSON endpoints for time limits: the working-day calendar, clock pauses and extensions (延期)."""
from __future__ import annotations

from flask import Blueprint, request

from engine import runtime, timekeeping
from engine.errors import InvalidInput, Problem

from .api import _body, _check
from .auth import current_user, database, login_required, roles_required

time_api = Blueprint("time_api", __name__, url_prefix="/api")


@time_api.get("/calendar")
@login_required
def calendar_coverage():
    return timekeeping.coverage(database())


@time_api.get("/calendar/deadline")
@login_required
def calendar_deadline():
    args = request.args
    return timekeeping.deadline(database(), args.get("start", ""), args.get("workdays"), args.get("workhours"))


@time_api.get("/calendar/days/<day>")
@login_required
def calendar_day(day: str):
    return timekeeping.day(database(), day)


@time_api.put("/calendar/days/<day>")
@roles_required("admin")
def set_calendar_day(day: str):
    body = _body()
    _check(body, holiday_name=(str, False), note=(str, False))
    if not isinstance(body.get("workday"), bool):
        raise InvalidInput(Problem("workday must be true or false", field="workday"))
    timekeeping.set_day(database(), day, body["workday"], body.get("holiday_name"), body.get("note"),
                        current_user().username)
    return timekeeping.day(database(), day)


@time_api.post("/calendar/schedules")
@roles_required("admin")
def load_schedule():
    upload = request.files.get("file")
    if upload is not None:
        text, source = upload.read().decode("utf-8", "replace"), upload.filename or "schedule"
    else:
        body = _body()
        _check(body, schedule=(str, True))
        text, source = body["schedule"], "schedule"
    return timekeeping.load_schedule(database(), text, source, current_user().username), 201


@time_api.post("/instances/<int:instance_id>/pause")
@login_required
def pause_case(instance_id: int):
    body = _body()
    _check(body, kind=(str, True), reason=(str, True))
    expected = body.get("expected_workdays")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or expected < 0):
        raise InvalidInput(Problem("expected_workdays must be a whole number of working days", field="expected_workdays"))
    return runtime.pause_case(database(), instance_id, current_user(), body["kind"], body["reason"], expected)


@time_api.post("/instances/<int:instance_id>/resume")
@login_required
def resume_case(instance_id: int):
    return runtime.resume_case(database(), instance_id, current_user())


@time_api.post("/instances/<int:instance_id>/extend")
@login_required
def extend_case(instance_id: int):
    body = _extension()
    return runtime.extend(database(), current_user(), body["workdays"], body["reason"], instance_id=instance_id)


@time_api.post("/tasks/<int:task_id>/extend")
@login_required
def extend_task(task_id: int):
    body = _extension()
    return runtime.extend(database(), current_user(), body["workdays"], body["reason"], task_id=task_id)


def _extension() -> dict:
    body = _body()
    _check(body, reason=(str, True))
    if not isinstance(body.get("workdays"), int) or isinstance(body.get("workdays"), bool):
        raise InvalidInput(Problem("workdays must be a whole number", field="workdays"))
    return body
