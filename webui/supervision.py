"""Supervision pages (电子监察): the self-refreshing board, statistics with charts and CSV, violations, ranking."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _

from engine import statistics as engine_statistics, supervision as engine_supervision, violations
from engine.errors import InvalidInput

from .auth import database
from .login import login_required_page, page_user

supervision = Blueprint("supervision", __name__)

BOARD_ROLES = engine_supervision.BOARD_ROLES
SUPERVISORS = engine_supervision.SUPERVISORS
DEFAULT_REFRESH_SECONDS = 30
PAGE_SIZE = 50
FILTERS = ("start", "end", "department", "flow", "item", "clerk")
LOCAL_TZ = ZoneInfo("Asia/Shanghai")


@supervision.app_template_filter("supervision_time")
def supervision_time(value) -> str:
    """Local wall-clock time to the minute, as the board's script shows it too."""
    if not value:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")


@supervision.get("/supervision")
@login_required_page(*BOARD_ROLES)
def board():
    data = engine_supervision.board(database(), page_user())
    refresh = current_app.config.get("SUPERVISION_REFRESH_SECONDS", DEFAULT_REFRESH_SECONDS)
    return render_template("supervision/board.html", board=data, refresh=refresh)


@supervision.get("/supervision/board.json")
@login_required_page(*BOARD_ROLES)
def board_json():
    # The board page polls this with its session cookie; the bearer-token twin is /api/supervision/board.
    return jsonify(engine_supervision.board(database(), page_user()))


@supervision.get("/supervision/statistics")
@login_required_page(*BOARD_ROLES)
def statistics():
    chosen = {name: request.args.get(name, "").strip() for name in FILTERS}
    options = engine_supervision.filter_options(database(), page_user())
    try:
        result = _statistics(chosen)
    except InvalidInput as error:
        return render_template("supervision/statistics.html", result=None, chosen=chosen, options=options,
                               problems=error.problems), 422
    return render_template("supervision/statistics.html", result=result, chosen=chosen, options=options,
                           problems=[])


@supervision.get("/supervision/statistics.csv")
@login_required_page(*BOARD_ROLES)
def statistics_csv():
    chosen = {name: request.args.get(name, "").strip() for name in FILTERS}
    result = _statistics(chosen)
    body = engine_statistics.statistics_csv(result)
    name = f"statistics-{result['period']['start']}-{result['period']['end']}.csv"
    return Response(body.encode("utf-8"), mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@supervision.get("/supervision/violations")
@login_required_page(*SUPERVISORS)
def violation_list():
    args = request.args
    raw_page = args.get("page", "1")
    page = int(raw_page) if raw_page.isdigit() and int(raw_page) > 0 else 1
    chosen = {"status": args.get("status", "open"), "kind": args.get("kind", ""),
              "department": args.get("department", "")}
    listing = violations.list_violations(database(), page_user(), status=chosen["status"] or None,
                                         kind=chosen["kind"] or None, department_key=chosen["department"] or None,
                                         limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return render_template("supervision/violations.html", listing=listing, chosen=chosen, page=page,
                           pages=max(1, -(-listing["total"] // PAGE_SIZE)), kinds=violations.KIND_NAMES,
                           options=engine_supervision.filter_options(database(), page_user()))


@supervision.get("/supervision/violations/<int:violation_id>")
@login_required_page(*SUPERVISORS)
def violation_detail(violation_id: int):
    return render_template("supervision/violation.html",
                           item=violations.get_violation(database(), violation_id, page_user()), problems=[])


@supervision.post("/supervision/violations/<int:violation_id>/notes")
@login_required_page(*SUPERVISORS)
def annotate(violation_id: int):
    return _note(violation_id, violations.annotate, _("Note added."))


@supervision.post("/supervision/violations/<int:violation_id>/close")
@login_required_page(*SUPERVISORS)
def close(violation_id: int):
    return _note(violation_id, violations.close, _("Violation closed."))


@supervision.get("/supervision/ranking")
@login_required_page(*SUPERVISORS)
def ranking():
    return render_template("supervision/ranking.html",
                           ranking=violations.ranking(database(), page_user(), request.args.get("month") or None))


def _note(violation_id: int, action, message: str):
    try:
        action(database(), violation_id, page_user(), request.form.get("text", ""))
    except InvalidInput as error:
        item = violations.get_violation(database(), violation_id, page_user())
        return render_template("supervision/violation.html", item=item, problems=error.problems,
                               text=request.form.get("text", "")), 422
    flash(message, "info")
    return redirect(url_for("supervision.violation_detail", violation_id=violation_id))


def _statistics(chosen: dict) -> dict:
    return engine_statistics.statistics(
        database(), page_user(), chosen["start"] or None, chosen["end"] or None,
        department_key=chosen["department"] or None, flow=chosen["flow"] or None, item=chosen["item"] or None,
        clerk=chosen["clerk"] or None)
