"""OpenAPI paths of electronic supervision (webui/supervision_api.py): board, statistics, violations, ranking."""
from __future__ import annotations

from .openapi import PATHS, _error, _integer, _json, _json_body, _object, _op, _path_id, _string

_TIME = _string(True, format="date-time")
_LIGHTS = _object({"green": _integer(), "yellow": _integer(), "red": _integer()}, ["green", "yellow", "red"])
_READ_ERRORS = {"403": _error("Forbidden"), "422": _error("Invalid")}
_CHANGE_ERRORS = {"400": _error("BadRequest"), "403": _error("Forbidden"), "404": _error("NotFound"),
                  "409": _error("Conflict"), "422": _error("Invalid")}


def _query(name: str, description: str, **schema) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


_RED_ITEM = _object({
    "kind": _string(enum=["task", "case"]), "task_id": _integer(True), "instance_id": _integer(),
    "case_no": _string(), "applicant": _string(True), "process_key": _string(), "process_name": _string(),
    "step": _string(True), "bpmn_id": _string(True), "due_at": _TIME, "holder": _string(True),
    "departments": {"type": "array", "items": _object({"key": _string(), "name": _string()})},
    "overdue_working_days": {"type": "number"}, "overdue_working_hours": {"type": "number"}})
_BOARD = _object({
    "generated_at": _string(format="date-time"),
    "scope": {"type": "array", "items": _string(), "nullable": True,
              "description": "the lead's departments; null for supervisors and administrators"},
    "totals": _object({"tasks": _LIGHTS, "cases": _LIGHTS}),
    "departments": {"type": "array", "items": _object({"key": _string(), "name": _string(), "green": _integer(),
                                                       "yellow": _integer(), "red": _integer()})},
    "flows": {"type": "array", "items": _object({"key": _string(), "name": _string(), "tasks": _LIGHTS,
                                                 "cases": _LIGHTS})},
    "red": {"type": "array", "items": _RED_ITEM, "description": "most overdue first, at most 200 of each kind"},
    "red_total": _object({"tasks": _integer(), "cases": _integer()}),
}, ["generated_at", "totals", "departments", "flows", "red"])
_STATISTICS = _object({
    "period": _object({"start": _string(format="date"), "end": _string(format="date")}),
    "filters": {"type": "object"},
    "figures": _object({name: {"type": "number", "nullable": True} for name in (
        "received", "completed", "terminated", "completion_rate", "on_time",
        "on_time_rate", "early", "early_rate", "average_working_days", "median_working_days",
        "speed_up_committed", "speed_up_statutory", "warnings", "overdue", "deemed_consents", "pauses",
        "send_backs", "statutory_exceeded")} | {"satisfaction": {"type": "object", "nullable": True}}),
    "trend": {"type": "array", "items": {"type": "object"}, "description": "one entry per local month"},
    "departments": {"type": "array", "items": {"type": "object"}},
    "lights": _object({"tasks": _LIGHTS, "cases": _LIGHTS}),
})
_VIOLATION = _object({
    "id": _integer(), "kind": _string(enum=["step_late", "case_late", "statutory_exceeded", "deemed_consent"]),
    "instance_id": _integer(), "case_no": _string(), "process_key": _string(), "task_id": _integer(True),
    "bpmn_id": _string(True), "department": _string(True), "department_name": _string(True),
    "clerk": _string(True), "occurred_at": _string(format="date-time"), "due_at": _TIME,
    "status": _string(enum=["open", "closed"]), "closed_at": _TIME, "closed_by": _string(True)})
_VIOLATION_DETAIL = {"allOf": [_VIOLATION, _object({"notes": {"type": "array", "items": _object({
    "id": _integer(), "at": _string(format="date-time"), "author": _string(), "action": _string(enum=["note", "close"]),
    "text": _string()})}})]}
_TEXT = _json_body(_object({"text": _string()}, ["text"]))
_ID = _path_id("violation_id", "violation id")
_RANK_ROW = _object({"rank": _integer(), "red_flag": {"type": "boolean"}, "completed": _integer(),
                     "on_time_rate": {"type": "number", "nullable": True},
                     "average_working_days": {"type": "number", "nullable": True},
                     "satisfaction": {"type": "number", "nullable": True}, "ratings": _integer()})

PATHS.update({
    "/api/supervision/board": {"get": _op(
        "getSupervisionBoard", "Live board: open tasks and running cases by light, red items (supervisor, admin, lead)",
        {"200": _json(_BOARD, "the board"), "403": _error("Forbidden")}, tag="supervision",
        description="A lead sees only the departments they belong to. Lights are those of the last sweep.")},
    "/api/supervision/statistics": {"get": _op(
        "getSupervisionStatistics", "Statistics for a period and filters, counted from the audit trail",
        {"200": _json(_STATISTICS, "figures, monthly trend, per-department bars, light distribution"),
         **_READ_ERRORS}, tag="supervision", parameters=[
            _query("start", "first local day (default: 1 January of this year)", format="date"),
            _query("end", "last local day, inclusive (default: today)", format="date"),
            _query("department", "department key"), _query("flow", "process key"),
            _query("item", "item: the BPMN id of a department's step"),
            _query("clerk", "window clerk who received the cases (username)")],
        description="Durations are office time on the working-day calendar, clock pauses excluded.")},
    "/api/supervision/violations": {"get": _op(
        "listViolations", "Violations (red events) with their responsible department and clerk (supervisor, admin)",
        {"200": _json(_object({"total": _integer(), "items": {"type": "array", "items": _VIOLATION}}), "a page"),
         **_READ_ERRORS}, tag="supervision", parameters=[
            _query("status", "open or closed", enum=["open", "closed"]),
            _query("kind", "kind of violation", enum=["step_late", "case_late", "statutory_exceeded", "deemed_consent"]),
            _query("department", "department key"), _query("start", "from this local day", format="date"),
            _query("end", "to this local day, inclusive", format="date"),
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}])},
    "/api/supervision/violations/{violation_id}": {"get": _op(
        "getViolation", "One violation and its notes", {"200": _json(_VIOLATION_DETAIL, "the violation"),
                                                         "403": _error("Forbidden"), "404": _error("NotFound")},
        tag="supervision", parameters=[_ID])},
    "/api/supervision/violations/{violation_id}/notes": {"post": _op(
        "annotateViolation", "Add a note to a violation (it is never deleted)",
        {"201": _json(_VIOLATION_DETAIL, "the violation with the note"), **_CHANGE_ERRORS},
        tag="supervision", parameters=[_ID], body=_TEXT)},
    "/api/supervision/violations/{violation_id}/close": {"post": _op(
        "closeViolation", "Close a violation with a remark; it cannot be reopened",
        {"200": _json(_VIOLATION_DETAIL, "the closed violation"), **_CHANGE_ERRORS},
        tag="supervision", parameters=[_ID], body=_TEXT)},
    "/api/supervision/ranking": {"get": _op(
        "getRanking", "Monthly 红旗窗口 ranking of departments and windows (supervisor, admin)",
        {"200": _json(_object({"month": _string(), "departments": {"type": "array", "items": _RANK_ROW},
                               "windows": {"type": "array", "items": _RANK_ROW}}), "the ranking"),
         **_READ_ERRORS}, tag="supervision", parameters=[_query("month", "YYYY-MM (default: this month)")])},
})
