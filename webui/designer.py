"""Designer pages: flows, the modeler (new, import, edit, deploy), versions with their visual diff, and case migration."""
from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import yaml
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_wtf.csrf import generate_csrf

from engine import accounts, deploy, migration, versions, worklist
from engine.errors import (
    ApprovalsError,
    InvalidInput,
    NotFound,
    Problem,
)

from .auth import database
from .errors import translated
from .login import login_required_page, page_user

designer = Blueprint("designer", __name__)

DESIGN_ROLES = ("designer", "admin")
TEMPLATES = {"blank": "designer/new_blank.bpmn", "parallel": "designer/new_parallel.bpmn"}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
MIGRATE_BATCH = 50   # cases per request from the migration page; each one is still its own transaction
PREVIEW_ROWS = 500   # a page of 10,000 preview rows helps nobody; the batch still covers every movable case


@designer.get("/designer")
@login_required_page(*DESIGN_ROLES)
def index():
    return render_template("designer/index.html", processes=worklist.list_processes(database()),
                           templates=TEMPLATES)


@designer.get("/designer/new")
@login_required_page(*DESIGN_ROLES)
def new():
    template = request.args.get("template", "blank")
    key = request.args.get("key", "").strip()
    name = request.args.get("name", "").strip() or _("New flow")
    problems = []
    if template not in TEMPLATES:
        problems.append(_("Unknown template %(name)s.", name=template))
    if not _KEY.match(key):
        problems.append(_("The process key must start with a letter and use only letters, digits, _ and - "
                          "(at most 64 characters)."))
    if problems:
        for problem in problems:
            flash(problem, "error")
        return redirect(url_for("designer.index"))
    xml = render_template(TEMPLATES[template], key=key, name=name)
    return _modeler(xml, key=key, version=None, title=_("New flow %(key)s", key=key))


@designer.post("/designer/import")
@login_required_page(*DESIGN_ROLES)
def import_file():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash(_("Choose a .bpmn file to import."), "error")
        return redirect(url_for("designer.index"))
    data = upload.read(database().config.max_upload_bytes + 1)
    if len(data) > database().config.max_upload_bytes:
        flash(_("The file is larger than %(limit)s bytes.", limit=database().config.max_upload_bytes), "error")
        return redirect(url_for("designer.index"))
    try:
        xml = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        flash(_("The file is not UTF-8 text; a .bpmn file is XML."), "error")
        return redirect(url_for("designer.index"))
    return _modeler(xml, key=None, version=None, title=_("Imported %(name)s", name=upload.filename))


@designer.get("/designer/<key>")
@login_required_page(*DESIGN_ROLES)
def versions_page(key: str):
    listing = versions.list_versions(database(), key)
    numbers = [v["version"] for v in listing]
    newest = numbers[0]
    to_version = _version_arg("to", newest, numbers)
    from_version = _version_arg("from", max(n for n in numbers if n <= to_version) - 1 or to_version, numbers)
    diff = old = new_ = None
    if from_version != to_version:
        diff = versions.diff_versions(database(), key, from_version, to_version)
        old = versions.get_version(database(), key, from_version)
        new_ = versions.get_version(database(), key, to_version)
    return render_template("designer/versions.html", key=key, versions=listing, diff=diff,
                           from_version=from_version, to_version=to_version,
                           diff_data={"diff": diff, "old_xml": old and old["xml"], "new_xml": new_ and new_["xml"]},
                           local_time=_local_time, now_local=_now_local())


@designer.get("/designer/<key>/edit")
@login_required_page(*DESIGN_ROLES)
def edit(key: str):
    listing = versions.list_versions(database(), key)
    number = _version_arg("version", listing[0]["version"], [v["version"] for v in listing])
    chosen = versions.get_version(database(), key, number)
    return _modeler(chosen["xml"], key=key, version=number,
                    title=_("%(key)s, version %(version)s", key=key, version=number))


@designer.get("/designer/<key>/versions/<int:version>.bpmn")
@login_required_page(*DESIGN_ROLES)
def download(key: str, version: int):
    chosen = versions.get_version(database(), key, version)
    return Response(chosen["xml"], mimetype="application/xml", headers={
        "Content-Disposition": f'attachment; filename="{key}-v{version}.bpmn"'})


@designer.post("/designer/deploy")
@login_required_page(*DESIGN_ROLES)
def deploy_xml():
    """The modeler posts its XML here; problems come back per element, in the page's language."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("xml"), str) or not body["xml"].strip():
        return jsonify({"error": _("Send the diagram as JSON: {\"xml\": \"<bpmn:definitions ...>\"}."),
                        "errors": []}), 422
    base_key = body.get("base_key") if isinstance(body.get("base_key"), str) else None
    base_version = body.get("base_version") if isinstance(body.get("base_version"), int) else None
    guide = _guide_of(base_key, base_version)
    name = f"{base_key or 'diagram'}.bpmn"
    try:
        deployed = deploy.deploy(database(), [deploy.SourceFile(name, body["xml"].encode("utf-8"), guide)],
                                 page_user().username)
    except InvalidInput as error:
        problems = [_problem_dict(p) for p in error.problems]
        return jsonify({"error": _("The diagram was not deployed: %(count)s problem(s). Fix them on the "
                                   "marked elements and deploy again.", count=len(problems)),
                        "errors": problems}), 422
    main = next((d for d in deployed if d.key == base_key), deployed[0])
    previous = main.version - 1 if main.created and main.version > 1 else main.version
    message = (_("Deployed %(key)s as version %(version)s.", key=main.key, version=main.version) if main.created
               else _("Nothing changed: %(key)s stays at version %(version)s.", key=main.key, version=main.version))
    if main.created:
        flash(message, "info")
    warnings = [_("Step %(element)s: no department is called %(department)s, so no clerk will see it until one "
                  "is created.", element=w["element_id"], department=w["department"]) for w in main.warnings]
    for warning in warnings:
        flash(warning, "warning")
    return jsonify({"key": main.key, "version": main.version, "created": main.created, "message": message,
                    "warnings": warnings,
                    "url": url_for("designer.versions_page", key=main.key, **{"from": previous, "to": main.version})
                    }), 201 if main.created else 200


@designer.post("/designer/<key>/versions/<int:version>/suspend")
@login_required_page(*DESIGN_ROLES)
def suspend(key: str, version: int):
    versions.suspend_version(database(), key, version, page_user())
    flash(_("Version %(version)s is suspended: no new cases start on it.", version=version), "info")
    return redirect(url_for("designer.versions_page", key=key))


@designer.post("/designer/<key>/versions/<int:version>/activate")
@login_required_page(*DESIGN_ROLES)
def activate(key: str, version: int):
    when = request.form.get("activates_at", "").strip()
    moment = None
    if when:
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            flash(_("The activation moment %(value)s is not a date and time.", value=when), "error")
            return redirect(url_for("designer.versions_page", key=key))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(database().config.timezone))
    versions.activate_version(database(), key, version, page_user(), moment)
    flash(_("Version %(version)s is active from %(when)s.", version=version,
            when=_local_time(moment.isoformat()) if moment else _("now")), "info")
    return redirect(url_for("designer.versions_page", key=key))


@designer.post("/designer/<key>/versions/<int:version>/redeploy")
@login_required_page(*DESIGN_ROLES)
def redeploy(key: str, version: int):
    try:
        result = versions.redeploy_version(database(), key, version, page_user())
    except ApprovalsError as error:
        flash(error.message, "error")
        return redirect(url_for("designer.versions_page", key=key))
    flash(_("Version %(old)s was deployed again as version %(new)s.", old=version, new=result["version"]), "info")
    return redirect(url_for("designer.versions_page", key=key))


@designer.get("/designer/<key>/migrate")
@login_required_page(*DESIGN_ROLES)
def migrate_page(key: str):
    listing = versions.list_versions(database(), key)
    numbers = [v["version"] for v in listing]
    with_cases = [v["version"] for v in listing if v["running_cases"]]
    to_version = _version_arg("to", numbers[0], numbers)
    from_version = _version_arg("from", next((n for n in with_cases if n != to_version), to_version), numbers)
    preview = None
    if from_version != to_version:
        preview = migration.preview_migration(database(), key, from_version, to_version)
    return render_template("designer/migrate.html", key=key, versions=listing, preview=preview,
                           from_version=from_version, to_version=to_version, local_time=_local_time,
                           preview_rows=PREVIEW_ROWS, page_data={"run_url": url_for("designer.migrate_run", key=key),
                                      "csrf_token": generate_csrf(), "batch": MIGRATE_BATCH,
                                      "to_version": to_version,
                                      "ids": [c["id"] for c in (preview or {}).get("cases", []) if c["movable"]],
                                      "texts": _migrate_texts()})


@designer.post("/designer/<key>/migrate/run")
@login_required_page(*DESIGN_ROLES)
def migrate_run(key: str):
    """One batch of the page's migration: each case moves on its own (all or nothing) and reports back."""
    body = request.get_json(silent=True)
    ids = body.get("ids") if isinstance(body, dict) else None
    to_version = body.get("to_version") if isinstance(body, dict) else None
    if (not isinstance(ids, list) or not ids or len(ids) > MIGRATE_BATCH
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            or not isinstance(to_version, int) or isinstance(to_version, bool)):
        return jsonify({"error": _("Send {\"ids\": [case ids, at most %(batch)s], \"to_version\": N}.",
                                   batch=MIGRATE_BATCH)}), 422
    results = []
    for instance_id in ids:
        try:
            moved = migration.migrate_case(database(), instance_id, to_version, page_user())
            results.append({"id": instance_id, "migrated": True, "case_no": moved.get("case_no"),
                            "steps": _local_steps(moved.get("steps", [])),
                            "new_case_due_at": _local_time(moved.get("new_case_due_at")),
                            "rollback_url": url_for("designer.rollback", key=key, instance_id=instance_id)})
        except ApprovalsError as error:
            results.append({"id": instance_id, "migrated": False, "error": error.message})
    return jsonify({"results": results})


@designer.post("/designer/<key>/cases/<int:instance_id>/rollback")
@login_required_page(*DESIGN_ROLES)
def rollback(key: str, instance_id: int):
    try:
        result = migration.rollback_migration(database(), instance_id, page_user())
    except ApprovalsError as error:
        flash(error.message, "error")
    else:
        flash(_("Case %(case_no)s is back on version %(version)s.", case_no=result["case_no"],
                version=result["version"]), "info")
    return redirect(url_for("designer.migrate_page", key=key))


# ---- helpers ---------------------------------------------------------------------------------------

def _modeler(xml: str, key: str | None, version: int | None, title: str):
    departments = accounts.list_departments(database())
    data = {"xml": xml, "key": key, "version": version, "departments": departments,
            "deploy_url": url_for("designer.deploy_xml"), "csrf_token": generate_csrf(),
            "locale": "zh_CN" if get_locale().language == "zh" else "en", "texts": _modeler_texts()}
    return render_template("designer/modeler.html", data=data, key=key, version=version, title=title)


def _modeler_texts() -> dict:
    # Without arguments gettext leaves %(count)s in place for the script to fill in.
    return {"lint_blocks": _("%(count)s problem(s) to fix before deploying"),
            "lint_ok": _("Nothing blocks deploying"),
            "deploying": _("Deploying…"),
            "import_warnings": _("Opened with %(count)s warning(s)"),
            "import_failed": _("The diagram could not be opened:")}


def _migrate_texts() -> dict:
    return {"done": _("Migration finished"), "migrated": _("Migrated"), "failed": _("Not migrated"),
            "rollback": _("Roll back"), "progress": _("Migrating…")}


def _guide_of(key: str | None, version: int | None) -> deploy.SourceFile | None:
    """The service guide of the version being edited travels with the redeployed diagram."""
    if not key or version is None:
        return None
    try:
        guide = versions.get_version(database(), key, version)["guide"]
    except (NotFound, InvalidInput):
        return None
    if guide is None:
        return None
    return deploy.SourceFile(f"{key}.guide.yaml", yaml.safe_dump(guide, allow_unicode=True).encode("utf-8"))


def _version_arg(name: str, default: int, allowed: list[int]) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        number = int(raw)
    except ValueError:
        abort(400, description=_("%(name)s must be a version number.", name=name))
    if number not in allowed:
        abort(404, description=_("There is no version %(version)s.", version=number))
    return number


def _now_local() -> str:
    return database().config.now().astimezone(ZoneInfo(database().config.timezone)).strftime("%Y-%m-%dT%H:%M")


def _local_time(iso: str | None) -> str:
    if not iso:
        return "—"
    moment = datetime.fromisoformat(iso)
    return moment.astimezone(ZoneInfo(database().config.timezone)).strftime("%Y-%m-%d %H:%M")


def _local_steps(steps: list[dict]) -> list[dict]:
    return [{"name": s.get("to_name") or s.get("name"), "bpmn_id": s.get("to_bpmn_id") or s.get("bpmn_id"),
             "due_at": _local_time(s.get("due_at")), "new_due_at": _local_time(s.get("new_due_at"))} for s in steps]


def _problem_dict(problem: Problem) -> dict:
    return {"element_id": problem.element_id, "line": problem.line, "file": problem.file,
            "message": problem_text(problem.message)}


# Deploy messages (engine/deploy.py, engine/forms.py, engine/guides.py) in the page's language.
_PATTERNS = [
    (re.compile(r"^the condition (?P<text>.+) is not valid Python: (?P<detail>.+)$"),
     lambda m: _("The condition %(text)s is not valid Python: %(detail)s", **m.groupdict(""))),
    (re.compile(r"^the script (?P<text>.+) is not valid Python: (?P<detail>.+)$"),
     lambda m: _("The script %(text)s is not valid Python: %(detail)s", **m.groupdict(""))),
    (re.compile(r"^the (?:condition|script) (?P<text>.+) is a JUEL expression; write it in Python, e.g. (?P<example>.+)$"),
     lambda m: _("%(text)s is a JUEL expression; write it in Python, e.g. %(example)s", **m.groupdict(""))),
    (re.compile(r"^the (?:condition|script) (?P<text>.+) is a FEEL expression \(Camunda 8\); write it in Python, e.g. (?P<example>.+)$"),
     lambda m: _("%(text)s is a FEEL expression; write it in Python, e.g. %(example)s", **m.groupdict(""))),
    (re.compile(r"^the (?:condition|script) is empty$"), lambda m: _("The condition or script is empty.")),
    (re.compile(r"^the condition is written in (?P<language>.+); conditions are Python expressions, e\.g\. amount > 100$"),
     lambda m: _("The condition is written in %(language)s; conditions are Python expressions, e.g. amount > 100",
                 **m.groupdict(""))),
    (re.compile(r"^script format (?P<format>.+) is not supported; scripts are Python$"),
     lambda m: _("Script format %(format)s is not supported; scripts are Python.", **m.groupdict(""))),
    (re.compile(r"^id (?P<id>.+) is used twice \(first on line (?P<line>\d+)\); ids must be unique$"),
     lambda m: _("The id %(id)s is used twice (first on line %(line)s); ids must be unique.", **m.groupdict(""))),
    (re.compile(r"^complex gateways are not supported"),
     lambda m: _("Complex gateways are not supported; use parallel, exclusive or inclusive gateways.")),
    (re.compile(r"^service tasks are not supported"),
     lambda m: _("Service tasks are not supported; model the work as a user task or a Python script task.")),
    (re.compile(r"^business rule \(DMN\) tasks are not supported"), lambda m: _("Business rule (DMN) tasks are not supported.")),
    (re.compile(r"^ad-hoc sub-processes are not supported"), lambda m: _("Ad-hoc sub-processes are not supported.")),
    (re.compile(r"^form field (?P<field>.+) has type (?P<type>.+); supported types are (?P<types>.+)$"),
     lambda m: _("Form field %(field)s has type %(type)s; supported types are %(types)s.", **m.groupdict(""))),
    (re.compile(r"^form field (?P<field>.+) is defined twice$"),
     lambda m: _("Form field %(field)s is defined twice.", **m.groupdict(""))),
    (re.compile(r"^a form field has no id$"), lambda m: _("A form field has no id.")),
    (re.compile(r"^form field (?P<field>.+) is an enum without any camunda:value$"),
     lambda m: _("Form field %(field)s is an enum without any value.", **m.groupdict(""))),
    (re.compile(r"^(?:form field (?P<field>.+)|a form field) has constraint (?P<name>.+); supported are (?P<names>.+)$"),
     lambda m: _("A form field has constraint %(name)s; supported are %(names)s.", **m.groupdict(""))),
    (re.compile(r"^(?:form field (?P<field>.+)|a form field): constraint (?P<name>\S+) needs a number, got (?P<value>.+)$"),
     lambda m: _("Constraint %(name)s needs a number, got %(value)s.", **m.groupdict(""))),
    (re.compile(r"^service item (?P<item>.+) names task (?P<task>.+), which is not in the diagram$"),
     lambda m: _("Service guide item %(item)s names task %(task)s, which is not in the diagram.", **m.groupdict(""))),
    (re.compile(r"^process (?P<id>.+) is not executable; set isExecutable=\"true\" to deploy it$"),
     lambda m: _("Process %(id)s is not executable; tick “Executable” to deploy it.", **m.groupdict(""))),
    (re.compile(r"^the file contains no bpmn:process$"), lambda m: _("The file contains no process.")),
    (re.compile(r"^not a BPMN 2\.0 file"), lambda m: _("This is not a BPMN 2.0 file.")),
    (re.compile(r"^boundary event (?P<id>.+) is attached to (?P<target>.+), which is not an activity of the same \(sub-\)process$"),
     lambda m: _("Boundary event %(id)s is attached to %(target)s, which is not an activity of the same process.",
                 **m.groupdict(""))),
    (re.compile(r"^sequence flow (?P<id>.+) has no (?P<attribute>sourceRef|targetRef)$"),
     lambda m: _("Sequence flow %(id)s is not connected at one end.", **m.groupdict(""))),
    (re.compile(r"^sequence flow (?P<id>.+) has (?:sourceRef|targetRef)=(?P<ref>.+), which is not an element of the same \(sub-\)process$"),
     lambda m: _("Sequence flow %(id)s connects to %(ref)s, which is not in the same process.", **m.groupdict(""))),
    (re.compile(r"^the call activity does not name the process it calls"),
     lambda m: _("The call activity does not name the process it calls.")),
    (re.compile(r"^the call activity calls process (?P<called>.+), which is not in this deployment"),
     lambda m: _("The call activity calls process %(called)s, which is not in this deployment.", **m.groupdict(""))),
    (re.compile(r"^(?P<field>[\w.\[\]]+): must be workdays\(N\) or workhours\(H\), got (?P<value>.+)$"),
     lambda m: _("%(field)s must be workdays(N) or workhours(H), got %(value)s.", **m.groupdict(""))),
]


def problem_text(message: str) -> str:
    """A deploy problem in the page's language; unknown ones keep the engine's words after a translated lead."""
    return translated(message, _PATTERNS, lambda unknown: _("Check failed: %(message)s", message=unknown))
