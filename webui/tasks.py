"""The clerk's task pages: 待办 and 已办 lists, the task page with its form, the task actions, and case materials."""
from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError

from engine import attachments, countersign, handover, runtime, tasklists
from engine.errors import ApprovalsError, Conflict, InvalidInput, NotFound, PermissionDenied, Problem

from .auth import database
from .errors import status_of, translated
from .login import login_required_page, page_user

tasks = Blueprint("tasks", __name__)

# Inputs of the task form that are not form fields: the CSRF token, the opinion, and the markers below.
BOOLEANS = "_booleans"          # one hidden input per checkbox: an unticked box is sent as false, not left out
OPINION_FIELD = "_opinion_field"  # set when the diagram's form has its own field called "opinion"
_RESERVED = {"csrf_token", "opinion", BOOLEANS, OPINION_FIELD}
_TRUE = ("true", "on", "1")


# ---- lists ------------------------------------------------------------------------------------------

@tasks.get("/tasks")
@login_required_page()
def task_list():
    return _list("tasks/list.html", tasklists.open_tasks)


@tasks.get("/tasks/done")
@login_required_page()
def done_list():
    return _list("tasks/done.html", tasklists.done_tasks)


def _list(template: str, query):
    try:
        wanted = tasklists.parse_filter(request.args)
        listing = query(database(), page_user(), wanted)
    except InvalidInput as error:
        # Bad filters come back next to their fields, as typed; the list itself is left out.
        return render_template(template, listing=None, wanted=None, args=request.args,
                               errors=_field_errors(error)), 400
    return render_template(template, listing=listing, wanted=wanted, args=request.args, errors={})


# ---- the task page ----------------------------------------------------------------------------------

@tasks.get("/tasks/<int:task_id>")
@login_required_page()
def task_page(task_id: int):
    return _render_task(task_id)


def _render_task(task_id: int, status: int = 200, errors: dict | None = None, values: dict | None = None,
                 section: str | None = None):
    """The task page; after a refused action, with the messages next to the fields and what was typed."""
    page = tasklists.task_page(database(), task_id, page_user())
    signing = countersign.countersign_panel(database(), task_id, page_user())   # 会签: its copies, 加签/减签
    return render_template("tasks/task.html", page=page, countersign=signing, errors=errors or {},
                           values=values or {}, section=section,
                           max_upload=database().config.max_upload_bytes), status


# ---- actions ----------------------------------------------------------------------------------------

@tasks.post("/tasks/<int:task_id>/claim")
@login_required_page()
def claim(task_id: int):
    return _act(task_id, lambda: runtime.claim(database(), task_id, page_user()),
                _("You have claimed this task; it is now in your hands."), to_list=False)


@tasks.post("/tasks/<int:task_id>/unclaim")
@login_required_page()
def unclaim(task_id: int):
    return _act(task_id, lambda: runtime.unclaim(database(), task_id, page_user()),
                _("You have released this task; it is back in the department's queue."), to_list=True)


@tasks.post("/tasks/<int:task_id>/complete")
@login_required_page()
def complete(task_id: int):
    data, opinion = _form_data(request.form)
    values = {**data, "opinion": request.form.get("opinion", "")}
    return _act(task_id, lambda: runtime.complete(database(), task_id, page_user(), data, opinion),
                lambda result: _("Done. The case is finished (%(status)s).", status=_case_status(result))
                if result["case_status"] != "running" else _("Done. The case has moved on to its next step."),
                to_list=True, values=values, section="task-form")


@tasks.post("/tasks/<int:task_id>/send-back")
@login_required_page()
def send_back(task_id: int):
    target, reason = request.form.get("target", "").strip(), request.form.get("reason", "")
    values = {"target": target, "reason": reason}
    if not target.isdigit():
        return _refused(task_id, InvalidInput(Problem("choose an earlier completed step of this case",
                                                      field="target")), values, "send-back-form")
    return _act(task_id, lambda: runtime.send_back(database(), task_id, page_user(), int(target), reason),
                _("The case has been sent back to the chosen step."), to_list=True, values=values,
                section="send-back-form")


@tasks.post("/tasks/<int:task_id>/reassign")
@login_required_page()
def reassign(task_id: int):
    to, reason = request.form.get("to", "").strip(), request.form.get("reason", "").strip()
    if not to:
        return _refused(task_id, InvalidInput(Problem("choose a colleague", field="to")),
                        {"to": to, "reason": reason}, "reassign-form")
    return _act(task_id, lambda: handover.reassign(database(), task_id, page_user(), to, reason),
                _("The task has been handed to %(name)s.", name=to), to_list=True,
                values={"to": to, "reason": reason}, section="reassign-form")


@tasks.post("/tasks/<int:task_id>/delegate")
@login_required_page()
def delegate(task_id: int):
    to, reason = request.form.get("to", "").strip(), request.form.get("reason", "").strip()
    if not to:
        return _refused(task_id, InvalidInput(Problem("choose a colleague", field="to")),
                        {"to": to, "reason": reason}, "delegate-form")
    return _act(task_id, lambda: handover.delegate(database(), task_id, page_user(), to, reason),
                _("%(name)s now acts on this task for you; you can take it back at any time.", name=to),
                to_list=False, values={"to": to, "reason": reason}, section="delegate-form")


@tasks.post("/tasks/<int:task_id>/take-back")
@login_required_page()
def take_back(task_id: int):
    return _act(task_id, lambda: handover.take_back(database(), task_id, page_user()),
                _("You have taken the task back."), to_list=False)


@tasks.post("/tasks/<int:task_id>/urge")
@login_required_page()
def urge(task_id: int):
    message = request.form.get("message", "")
    return _act(task_id, lambda: handover.urge(database(), task_id, page_user(), message),
                _("The reminder has been sent to whoever holds the task."), to_list=False,
                values={"message": message}, section="urge-form")


@tasks.post("/tasks/<int:task_id>/countersigners")
@login_required_page()
def add_countersigner(task_id: int):
    department, reason = request.form.get("department", "").strip(), request.form.get("reason", "")
    return _act(task_id, lambda: countersign.add_countersigner(database(), task_id, page_user(), department, reason),
                _("The department has been added to the countersign; its copy is waiting in its queue."),
                to_list=False, values={"department": department, "reason": reason}, section="countersign-add-form")


@tasks.post("/tasks/<int:task_id>/countersigners/remove")
@login_required_page()
def remove_countersigner(task_id: int):
    """减签 of the open copy of this task's countersign chosen in `copy` (this task's own, or another's)."""
    copy, reason = request.form.get("copy", "").strip(), request.form.get("reason", "")
    values = {"copy": copy, "reason": reason}
    if not copy.isdigit():
        return _refused(task_id, InvalidInput(Problem("choose a copy of this countersign", field="copy")),
                        values, "countersign-remove-form")
    return _act(task_id, lambda: countersign.remove_countersigner(database(), int(copy), page_user(), reason),
                _("The copy has been removed from the countersign."), to_list=int(copy) == task_id, values=values,
                section="countersign-remove-form")


@tasks.post("/tasks/<int:task_id>/attachments")
@login_required_page()
def upload(task_id: int):
    upload_file = request.files.get("file")
    material_key = request.form.get("material_key", "")
    values = {"material_key": material_key}
    if upload_file is None or not upload_file.filename:
        return _refused(task_id, InvalidInput(Problem("choose a file", field="file")), values, "upload-form")
    data = upload_file.read()   # the request as a whole is bounded by MAX_CONTENT_LENGTH
    return _act(task_id, lambda: attachments.store(database(), task_id, page_user(), upload_file.filename, data,
                                                   material_key),
                _("The file %(name)s has been added to the case.", name=attachments.safe_filename(upload_file.filename)),
                to_list=False, values=values, section="upload-form")


@tasks.get("/attachments/<int:attachment_id>")
@login_required_page()
def download(attachment_id: int):
    found = attachments.fetch(database(), attachment_id, page_user())
    # Images open in the browser; everything else downloads (Chromium will not show a PDF in a sandbox).
    inline = found["content_type"] in ("image/png", "image/jpeg")
    ascii_name = found["filename"].encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    disposition = (f'{"inline" if inline else "attachment"}; filename="{ascii_name}"; '
                   f"filename*=UTF-8''{quote(found['filename'])}")
    response = Response(found["content"], mimetype=found["content_type"])
    response.headers["Content-Disposition"] = disposition
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Shown in the browser at most, never run: no scripts, no plugins, no forms from an uploaded file.
    response.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _case_status(result: dict) -> str:
    return _("completed") if result["case_status"] == "completed" else _("terminated")


def _act(task_id: int, action, done_message, to_list: bool, values: dict | None = None,
         section: str | None = None):
    """Run one engine action; flash and redirect when it worked, explain why when it did not (never a 500).

    done_message is the text to flash, or a function of the action's result giving it.
    """
    try:
        result = action()
    except (InvalidInput, PermissionDenied, NotFound, Conflict) as error:
        if isinstance(error, InvalidInput):
            return _refused(task_id, error, values or {}, section)
        if isinstance(error, Conflict):
            flash(engine_message(error), "error")
            return redirect(url_for("tasks.task_page", task_id=task_id))
        raise   # 403 / 404: the blueprint's error page
    except ApprovalsError as error:   # e.g. a diagram's script failed: nothing was saved
        flash(_("The flow could not continue, nothing was saved: %(detail)s", detail=error.message), "error")
        return redirect(url_for("tasks.task_page", task_id=task_id))
    flash(done_message(result) if callable(done_message) else done_message, "info")
    return redirect(url_for("tasks.task_list") if to_list else url_for("tasks.task_page", task_id=task_id))


def _refused(task_id: int, error: InvalidInput, values: dict, section: str | None):
    errors = _field_errors(error)
    flash(_("Please correct the fields marked below.") if errors.keys() - {"_"} else engine_message(error), "error")
    return _render_task(task_id, status=422, errors=errors, values=values, section=section)


def _form_data(form) -> tuple[dict, str | None]:
    """The submitted form fields as the engine expects them, and the opinion when it is not a form field."""
    booleans = set(form.getlist(BOOLEANS))
    data = {key: form.get(key) for key in form if key not in _RESERVED and key not in booleans}
    data.update({key: "true" if form.get(key) in _TRUE else "false" for key in booleans})
    opinion = form.get("opinion")
    if form.get(OPINION_FIELD):
        data["opinion"] = opinion
        opinion = None
    return data, opinion


# ---- errors in the clerk's language -----------------------------------------------------------------

def _field_errors(error: InvalidInput) -> dict:
    """Messages by field ("_" for those that name none), translated."""
    found: dict[str, str] = {}
    for problem in error.problems:
        key = problem.field or "_"
        found[key] = (found[key] + " " if key in found else "") + problem_message(problem)
    return found


# Engine messages are English and stable; each pattern gives the clerk's wording (the engine's text otherwise).
_PROBLEMS = [   # first match wins: specific patterns before general ones
    (r"^must be one of green, yellow, red$", lambda m: _("Choose one of the lights.")),
    (r".* is required$", lambda m: _("This field is required.")),
    (r"^required$", lambda m: _("This field is required.")),
    (r"^must be at least (\d+) characters$", lambda m: _("Enter at least %(n)s characters.", n=m[1])),
    (r"^must be at most (\d+) characters$", lambda m: _("Enter at most %(n)s characters.", n=m[1])),
    (r"^must be a whole number of working days.*", lambda m: _("Enter a whole number of working days (0-60).")),
    (r"^must be a whole number.*", lambda m: _("Enter a whole number.")),
    (r"^must be at least (\S+)$", lambda m: _("Enter a number of at least %(n)s.", n=m[1])),
    (r"^must be at most (\S+)$", lambda m: _("Enter a number of at most %(n)s.", n=m[1])),
    (r"^must be a date like.*", lambda m: _("Enter a date such as 2026-12-01.")),
    (r"^must be one of .*", lambda m: _("Choose one of the options.")),
    (r"^must be true or false.*", lambda m: _("Tick the box or leave it empty.")),
    (r"^must be text$", lambda m: _("Enter text.")),
    (r"^this field is read-only$", lambda m: _("This field cannot be changed here.")),
    (r"^unknown field '(.*)'$", lambda m: _("The form sent a field it does not have (%(field)s).", field=m[1])),
    (r"^give the reason for sending back$", lambda m: _("Give the reason for sending the case back.")),
    (r"^choose an earlier completed step of this case$",
     lambda m: _("Choose an earlier step of this case that has been completed.")),
    (r"^choose a colleague$", lambda m: _("Choose a colleague.")),
    (r"^choose a file$", lambda m: _("Choose a file to upload.")),
    (r"^(.+) is not in (.+)$", lambda m: _("%(user)s does not work in this task's department.", user=m[1])),
    (r"^no active user '(.*)'$", lambda m: _("There is no active user %(user)s.", user=m[1])),
    (r"^delegate to someone else$", lambda m: _("Delegate to someone other than yourself.")),
    (r"^say what is urgent$", lambda m: _("Say what is urgent.")),
    (r"^the file is empty$", lambda m: _("The file is empty.")),
    (r"^the file is (\d+) bytes; the limit is (\d+) bytes$",
     lambda m: _("The file is too large (%(size)s); at most %(limit)s are accepted.",
                 size=_megabytes(int(m[1])), limit=_megabytes(int(m[2])))),
    (r"^files of type \.(\S+) are not accepted.*",
     lambda m: _("Files of type .%(ext)s are not accepted. Upload PDF, OFD, PNG, JPG, Word or Excel files.",
                 ext=m[1])),
    (r"^the file is named \.(\S+) but its content is .*",
     lambda m: _("The file's content is not a real .%(ext)s file.", ext=m[1])),
    (r"^choose one of the materials the service guide lists$",
     lambda m: _("Choose one of the materials the service guide lists.")),
    (r"^not one of your departments$", lambda m: _("This is not one of your departments.")),
    (r"^at most (\d+) characters$", lambda m: _("Enter at most %(n)s characters.", n=m[1])),
    (r"^give the reason$", lambda m: _("Give the reason.")),
    (r"^choose a department$", lambda m: _("Choose a department.")),
    (r"^no department '(.*)'$", lambda m: _("There is no department %(key)s.", key=m[1])),
    (r"^(.+) already has a copy of this countersign$",
     lambda m: _("%(department)s already has a copy of this countersign.", department=m[1])),
    (r"^choose a copy of this countersign$", lambda m: _("Choose a copy of this countersign.")),
]
_ERRORS = [
    (r"^task \d+ is already claimed by (\S+)$", lambda m: _("This task has already been claimed by %(user)s.", user=m[1])),
    (r"^task \d+ is claimed by (\S+?)(, not by you)?$", lambda m: _("This task is claimed by %(user)s.", user=m[1])),
    (r"^task \d+ is (?:already )?(completed|sent_back|cancelled|removed)$",
     lambda m: _("This task has already been closed; the case has moved on.")),
    (r"^task \d+ is already signed; a signed copy cannot be removed$",
     lambda m: _("That copy has already been signed; a signed copy cannot be removed.")),
    (r"^the last copy of a countersign cannot be removed$",
     lambda m: _("The last copy of a countersign cannot be removed.")),
    (r"^task \d+ \((.*)\) is not a countersign.*",
     lambda m: _("%(step)s is not a countersign: departments cannot be added or removed.", step=m[1])),
    (r"^only a lead .* may add or remove countersigners$",
     lambda m: _("Only a lead of a department in this countersign, or a supervisor, may add or remove departments.")),
    (r"^task \d+ is no longer ready$", lambda m: _("This task is no longer waiting to be done.")),
    (r"^case \S+ is (completed|terminated)$", lambda m: _("This case has already ended.")),
    (r"^that step can no longer be returned to$", lambda m: _("That step can no longer be returned to.")),
    (r"^only a lead .* may send a case back$", lambda m: _("Only a lead may send a case back.")),
    (r"^only the task's holder or a lead .*", lambda m: _("Only the task's holder or a lead of its department may reassign it.")),
    (r"^claim the task before delegating it$", lambda m: _("Claim the task before delegating it.")),
    (r"^you did not delegate this task$", lambda m: _("You did not delegate this task.")),
    (r"^only leads and supervisors may urge a task$", lambda m: _("Only leads and supervisors may urge a task.")),
    (r"^task \d+ is not held by you$", lambda m: _("You do not hold this task.")),
    (r"^task \d+ (belongs to|is not one of).*", lambda m: _("This task belongs to another department.")),
]


def problem_message(problem: Problem) -> str:
    return translated(problem.message, _PROBLEMS)


def engine_message(error: ApprovalsError) -> str:
    if isinstance(error, InvalidInput) and error.problems:
        return " ".join(problem_message(p) for p in error.problems)
    return translated(error.message, _ERRORS)


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.1f} KB"


@tasks.errorhandler(ApprovalsError)
def _engine_error(error: ApprovalsError):
    status = status_of(error)
    titles = {403: _("Not your task"), 404: _("No such task or file"), 409: _("The task has changed")}
    return render_template("tasks/error.html", title=titles.get(status, _("The request could not be carried out")),
                           message=engine_message(error) if status != 404 else
                           _("It does not exist, or it is not one you may see."), status=status), status


@tasks.errorhandler(CSRFError)
def _forged(error: CSRFError):
    return render_template("tasks/error.html", title=_("The page had expired"),
                           message=_("Nothing was changed. Reload the page and try again."), status=400), 400
