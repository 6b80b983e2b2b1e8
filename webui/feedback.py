"""Staff pages for 好差评 follow-ups and complaints: lists with lights, closing a follow-up, answering a complaint."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from engine import ratings
from engine.errors import Conflict, InvalidInput

from .auth import database
from .login import login_required_page, page_user

feedback = Blueprint("feedback", __name__, url_prefix="/feedback")


@feedback.get("/")
@login_required_page(*ratings.HANDLER_ROLES)
def index():
    status = request.args.get("status", "open")
    if status not in ("open", "done"):
        status = "open"
    db, user = database(), page_user()
    follow_ups = ratings.list_follow_ups(db, user, status="open" if status == "open" else "closed")
    complaints = ratings.list_complaints(db, user, status="open" if status == "open" else "answered")
    return render_template("feedback/index.html", follow_ups=follow_ups, complaints=complaints, status=status)


@feedback.post("/follow-ups/<int:follow_up_id>/close")
@login_required_page(*ratings.HANDLER_ROLES)
def close_follow_up(follow_up_id: int):
    try:
        ratings.close_follow_up(database(), follow_up_id, page_user(), request.form.get("resolution", ""))
    except (InvalidInput, Conflict) as refused:
        flash(refused.message, "error")
    else:
        flash(_("The follow-up is closed."), "info")
    return redirect(url_for("feedback.index"))


@feedback.post("/complaints/<int:complaint_id>/answer")
@login_required_page(*ratings.HANDLER_ROLES)
def answer_complaint(complaint_id: int):
    try:
        ratings.answer_complaint(database(), complaint_id, page_user(), request.form.get("answer", ""))
    except (InvalidInput, Conflict) as refused:
        flash(refused.message, "error")
    else:
        flash(_("The answer has been sent."), "info")
    return redirect(url_for("feedback.index"))
