"""JSON endpoints of electronic supervision: the board, statistics, violations and the monthly ranking."""
from __future__ import annotations

from flask import Blueprint, request

from engine import statistics as engine_statistics, supervision, violations

from .api import _body, _check, _page
from .auth import current_user, database, roles_required

supervision_api = Blueprint("supervision_api", __name__, url_prefix="/api")

BOARD_ROLES = supervision.BOARD_ROLES
SUPERVISORS = supervision.SUPERVISORS


@supervision_api.get("/supervision/board")
@roles_required(*BOARD_ROLES)
def board():
    return supervision.board(database(), current_user())


@supervision_api.get("/supervision/statistics")
@roles_required(*BOARD_ROLES)
def statistics():
    args = request.args
    return engine_statistics.statistics(database(), current_user(), args.get("start") or None,
                                        args.get("end") or None, department_key=args.get("department") or None,
                                        flow=args.get("flow") or None, item=args.get("item") or None,
                                        clerk=args.get("clerk") or None)


@supervision_api.get("/supervision/violations")
@roles_required(*SUPERVISORS)
def list_violations():
    args = request.args
    limit, offset = _page()
    return violations.list_violations(database(), current_user(), status=args.get("status") or None,
                                      kind=args.get("kind") or None, department_key=args.get("department") or None,
                                      start=_day(args.get("start"), "start"), end=_day(args.get("end"), "end"),
                                      limit=limit, offset=offset)


@supervision_api.get("/supervision/violations/<int:violation_id>")
@roles_required(*SUPERVISORS)
def get_violation(violation_id: int):
    return violations.get_violation(database(), violation_id, current_user())


@supervision_api.post("/supervision/violations/<int:violation_id>/notes")
@roles_required(*SUPERVISORS)
def annotate_violation(violation_id: int):
    body = _body()
    _check(body, text=(str, True))
    return violations.annotate(database(), violation_id, current_user(), body["text"]), 201


@supervision_api.post("/supervision/violations/<int:violation_id>/close")
@roles_required(*SUPERVISORS)
def close_violation(violation_id: int):
    body = _body()
    _check(body, text=(str, True))
    return violations.close(database(), violation_id, current_user(), body["text"])


@supervision_api.get("/supervision/ranking")
@roles_required(*SUPERVISORS)
def ranking():
    return violations.ranking(database(), current_user(), request.args.get("month") or None)


def _day(value: str | None, field: str):
    return violations.parse_day(value, field)
