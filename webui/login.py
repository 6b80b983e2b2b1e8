"""Browser sessions: the login and logout pages, and the decorator that guards every page."""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _

from engine import accounts
from engine.errors import AuthenticationFailed, NotFound

from .auth import database

session_pages = Blueprint("session", __name__)


@session_pages.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        try:
            user = accounts.authenticate(database(), username, request.form.get("password", ""))
        except AuthenticationFailed:
            flash(_("Wrong username or password."), "error")
            return render_template("session/login.html", username=username), 401
        session.clear()
        session["username"] = user.username
        session.permanent = True
        return redirect(_safe_next(request.args.get("next")) or url_for("pages.home"))
    return render_template("session/login.html", username="")


@session_pages.post("/logout")
def logout():
    session.clear()
    flash(_("You have logged out."), "info")
    return redirect(url_for("session.login"))


@session_pages.get("/language/<code>")
def language(code: str):
    if code not in ("zh_CN", "en"):
        abort(404)
    session["language"] = code
    return redirect(_safe_next(request.args.get("next")) or url_for("pages.home"))


def page_user():
    """The logged-in user of this request, or None."""
    if "page_user" not in g:
        username = session.get("username")
        try:
            g.page_user = accounts.get_user(database(), username) if username else None
        except NotFound:  # deactivated since logging in
            session.clear()
            g.page_user = None
    return g.page_user


def login_required_page(*roles: str):
    """Guard a page: anonymous visitors go to /login; users without one of `roles` get 403."""
    def decorate(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            user = page_user()
            if user is None:
                return redirect(url_for("session.login", next=request.full_path))
            if roles and not user.has_role(*roles):
                abort(403)
            return view(*args, **kwargs)
        return guarded
    return decorate


def _safe_next(target: str | None) -> str | None:
    # Only local paths: an open redirect would let a phishing link bounce through our login page.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return None
