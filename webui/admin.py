"""Administration pages: departments, users (roles, membership, passwords, deactivation) and the working-day calendar."""
from __future__ import annotations

import calendar as month_calendar
import re
from datetime import date

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from engine import accounts, organisation, timekeeping
from engine.accounts import ROLES
from engine.errors import ApprovalsError, InvalidInput

from .auth import database
from .errors import translated
from .login import login_required_page, page_user

admin = Blueprint("admin", __name__)

SCHEDULE_MAX_BYTES = 64 * 1024   # a year's schedule is a few dozen lines of YAML


@admin.get("/admin")
@login_required_page("admin")
def index():
    return render_template("admin/index.html", departments=organisation.list_departments(database()),
                           users=organisation.list_users(database()), roles=ROLES)


@admin.post("/admin/departments")
@login_required_page("admin")
def add_department():
    key, name = request.form.get("key", "").strip(), request.form.get("name", "").strip()
    if _attempt(organisation.add_department, database(), key, name, page_user()):
        flash(_("Department %(name)s (%(key)s) was added.", name=name, key=key), "info")
    return redirect(url_for("admin.index") + "#departments")


@admin.post("/admin/departments/<key>/rename")
@login_required_page("admin")
def rename_department(key: str):
    name = request.form.get("name", "").strip()
    if _attempt(organisation.rename_department, database(), key, name, page_user()):
        flash(_("Department %(key)s is now called %(name)s.", key=key, name=name), "info")
    return redirect(url_for("admin.index") + "#departments")


@admin.post("/admin/users")
@login_required_page("admin")
def create_user():
    username = request.form.get("username", "").strip()
    created = _attempt(accounts.create_user, database(), username, request.form.get("password", ""),
                       request.form.get("name", "").strip() or None, request.form.getlist("departments"),
                       request.form.getlist("roles") or ["clerk"], page_user().username)
    if created:
        flash(_("User %(username)s was created.", username=username), "info")
        return redirect(url_for("admin.user_page", username=username))
    return redirect(url_for("admin.index") + "#new-user")


@admin.get("/admin/users/<username>")
@login_required_page("admin")
def user_page(username: str):
    return render_template("admin/user.html", user=organisation.get_user(database(), username), roles=ROLES,
                           departments=organisation.list_departments(database()))


@admin.post("/admin/users/<username>")
@login_required_page("admin")
def update_user(username: str):
    if _attempt(organisation.update_user, database(), username, page_user(),
                name=request.form.get("name", ""), roles=request.form.getlist("roles"),
                departments=request.form.getlist("departments")):
        flash(_("The changes to %(username)s were saved.", username=username), "info")
    return redirect(url_for("admin.user_page", username=username))


@admin.post("/admin/users/<username>/password")
@login_required_page("admin")
def reset_password(username: str):
    password = request.form.get("password", "")
    if password != request.form.get("confirm", ""):
        flash(_("The two passwords differ."), "error")
    elif _attempt(organisation.reset_password, database(), username, password, page_user()):
        flash(_("The password of %(username)s was reset.", username=username), "info")
    return redirect(url_for("admin.user_page", username=username))


@admin.post("/admin/users/<username>/deactivate")
@login_required_page("admin")
def deactivate_user(username: str):
    result = _attempt(organisation.deactivate_user, database(), username, page_user())
    if result:
        flash(_("%(username)s can no longer sign in; %(count)s claimed task(s) went back to the department.",
                username=username, count=len(result["returned_tasks"])), "info")
    return redirect(url_for("admin.user_page", username=username))


@admin.post("/admin/users/<username>/reactivate")
@login_required_page("admin")
def reactivate_user(username: str):
    if _attempt(organisation.reactivate_user, database(), username, page_user()):
        flash(_("%(username)s can sign in again.", username=username), "info")
    return redirect(url_for("admin.user_page", username=username))


@admin.get("/admin/calendar")
@login_required_page("admin")
def calendar_page():
    today = database().config.now().date()
    try:
        year = int(request.args.get("year", today.year))
    except ValueError:
        abort(400, description=_("The year must be a number such as %(year)s.", year=today.year))
    if not 1900 <= year <= 2999:
        abort(400, description=_("The year must be a number such as %(year)s.", year=today.year))
    work_calendar = timekeeping.calendar_for(database())
    months = []
    for month in range(1, 13):
        weeks = [[work_calendar.day(d) if d.month == month else None for d in week]
                 for week in month_calendar.Calendar().monthdatescalendar(year, month)]
        months.append({"month": month, "weeks": weeks})
    return render_template("admin/calendar.html", year=year, months=months, today=today,
                           coverage=timekeeping.coverage(database()))


@admin.post("/admin/calendar/schedule")
@login_required_page("admin")
def load_schedule():
    upload = request.files.get("schedule")
    if upload is None or not upload.filename:
        flash(_("Choose the schedule file (YAML) to load."), "error")
        return redirect(url_for("admin.calendar_page"))
    data = upload.read(SCHEDULE_MAX_BYTES + 1)
    if len(data) > SCHEDULE_MAX_BYTES:
        flash(_("The schedule file is larger than %(limit)s bytes.", limit=SCHEDULE_MAX_BYTES), "error")
        return redirect(url_for("admin.calendar_page"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        flash(_("The schedule file is not UTF-8 text."), "error")
        return redirect(url_for("admin.calendar_page"))
    result = _attempt(timekeeping.load_schedule, database(), text, upload.filename, page_user().username)
    if not result:
        return redirect(url_for("admin.calendar_page"))
    flash(_("Loaded %(year)s: %(holidays)s holiday(s) and %(workdays)s make-up working day(s).", **result), "info")
    return redirect(url_for("admin.calendar_page", year=result["year"]))


@admin.post("/admin/calendar/day")
@login_required_page("admin")
def set_day():
    day = request.form.get("date", "").strip()
    workday = request.form.get("workday") == "1"
    holiday_name = request.form.get("holiday_name", "").strip() or None
    note = request.form.get("note", "").strip() or None
    if _attempt(timekeeping.set_day, database(), day, workday, holiday_name, note, page_user().username):
        flash(_("%(day)s is now a %(kind)s.", day=day, kind=_("working day") if workday else _("day off")), "info")
    try:
        year = date.fromisoformat(day).year
    except ValueError:
        year = None
    return redirect(url_for("admin.calendar_page", **({"year": year} if year else {})))


def _attempt(function, *args, **kwargs):
    """Run one engine call; on a refusal flash what is wrong (each field) and return None."""
    try:
        result = function(*args, **kwargs)
    except InvalidInput as error:
        for problem in error.problems:
            message = message_text(problem.message)
            flash(_("%(field)s: %(message)s", field=_field_label(problem.field), message=message)
                  if problem.field else message, "error")
        return None
    except ApprovalsError as error:
        flash(message_text(error.message), "error")
        return None
    return True if result is None else result


def _field_label(field: str) -> str:
    labels = {"key": _("Department key"), "name": _("Name"), "username": _("Username"), "password": _("Password"),
              "roles": _("Roles"), "departments": _("Member of departments"), "date": _("Date"), "year": _("Year")}
    return labels.get(field, field)


# The engine's refusals (engine/accounts.py, engine/organisation.py, engine/timekeeping.py) in the page's language.
_PATTERNS = [
    (re.compile(r"^(?:key|username) must be 1-64 letters, digits, '_', '-' or '\.'$"),
     lambda m: _("use 1-64 letters, digits, '_', '-' or '.'")),
    (re.compile(r"^name is required$"), lambda m: _("this is required")),
    (re.compile(r"^name must be 1-200 characters$"), lambda m: _("use 1-200 characters")),
    (re.compile(r"^password must be at least 8 characters$"), lambda m: _("at least 8 characters")),
    (re.compile(r"^unknown roles (?P<roles>.+); roles are (?P<known>.+)$"),
     lambda m: _("unknown roles %(roles)s; the roles are %(known)s", **m.groupdict(""))),
    (re.compile(r"^unknown departments (?P<departments>.+)$"),
     lambda m: _("unknown departments %(departments)s", **m.groupdict(""))),
    (re.compile(r"^user '(?P<username>.+)' already exists$"),
     lambda m: _("User %(username)s already exists.", **m.groupdict(""))),
    (re.compile(r"^department '(?P<key>.+)' or a department named '(?P<name>.+)' already exists$"),
     lambda m: _("A department %(key)s or a department named %(name)s already exists.", **m.groupdict(""))),
    (re.compile(r"^department '(?P<key>.+)' is already named '(?P<name>.+)'$"),
     lambda m: _("Department %(key)s is already called %(name)s.", **m.groupdict(""))),
    (re.compile(r"^you cannot take the admin role from yourself$"),
     lambda m: _("You cannot take the administrator role from yourself.")),
    (re.compile(r"^you cannot deactivate yourself$"), lambda m: _("You cannot deactivate yourself.")),
    (re.compile(r"^user '(?P<username>.+)' is already inactive$"),
     lambda m: _("User %(username)s is already deactivated.", **m.groupdict(""))),
    (re.compile(r"^user '(?P<username>.+)' is already active$"),
     lambda m: _("User %(username)s is already active.", **m.groupdict(""))),
    (re.compile(r"^not a date like 2026-10-01: (?P<value>.+)$"),
     lambda m: _("%(value)s is not a date like 2026-10-01", **m.groupdict(""))),
    (re.compile(r"^(?P<file>.+): needs `year: YYYY`$"),
     lambda m: _("%(file)s: the file needs a line `year: YYYY`", **m.groupdict(""))),
    (re.compile(r"^(?P<file>.+): not valid YAML: (?P<detail>.+)$"),
     lambda m: _("%(file)s is not valid YAML: %(detail)s", **m.groupdict(""))),
    (re.compile(r"^(?P<file>.+): (?P<day>\d{4}-\d{2}-\d{2}) is not in (?P<year>\d{4})$"),
     lambda m: _("%(file)s: %(day)s is not in %(year)s", **m.groupdict(""))),
]


def message_text(message: str) -> str:
    """An engine refusal in the page's language; one we do not know keeps the engine's words."""
    return translated(message, _PATTERNS)
