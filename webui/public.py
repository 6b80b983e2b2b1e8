"""Public pages without a login: service guides, online application, case query and progress, 补正, rating, complaints."""
from __future__ import annotations

from io import BytesIO
from zoneinfo import ZoneInfo

import segno
from flask import Blueprint, abort, make_response, redirect, render_template, request, send_file, session, url_for
from flask_babel import force_locale, gettext as _

from engine import accounts, applicants, ratings
from engine.applicants import QueryRefused, TooManyAttempts, Upload
from engine.errors import Conflict, InvalidInput, NotFound

from .auth import database
from .cases import NOTICE_TEMPLATES

public = Blueprint("public", __name__, url_prefix="/public")

# Cases this browser has proven it may see (password or notice code); kept in the signed session cookie.
SESSION_KEY = "public_cases"
MAX_REMEMBERED = 10


@public.get("/")
def catalogue():
    return render_template("public/catalogue.html", flows=applicants.catalogue(database()))


@public.get("/guides/<key>")
def guide(key: str):
    return render_template("public/guide.html", flow=applicants.service_guide(database(), key))


@public.route("/apply/<key>", methods=["GET", "POST"])
def apply(key: str):
    db = database()
    if request.method == "GET":
        return render_template("public/apply.html", form=applicants.application_form(db, key), values={}, errors={})
    values = {k: v for k, v in request.form.items() if k not in ("csrf_token", "contact")}
    try:
        applied = applicants.apply(db, key, values, _uploads(), contact=request.form.get("contact"))
    except InvalidInput as invalid:
        form = applicants.application_form(db, key)
        return render_template("public/apply.html", form=form, values=request.form, errors=_errors(invalid)), 422
    _remember(applied["case_no"])
    # The password is shown on this response only: never cached, never put in a URL.
    response = make_response(render_template("public/applied.html", applied=applied))
    response.headers["Cache-Control"] = "no-store"
    return response


@public.route("/cases/query", methods=["GET", "POST"])
def query():
    db = database()
    code = request.args.get("code", "").strip()
    if request.method == "GET" and not code:
        return render_template("public/query.html", case_no="", message=None)
    case_no = request.form.get("case_no", "").strip()
    try:
        if request.method == "POST":
            found = applicants.query_case(db, case_no, request.form.get("password", ""), _client())
        else:
            found = applicants.query_by_code(db, code, _client())
    except TooManyAttempts:
        return render_template("public/query.html", case_no=case_no,
                               message=_("Too many failed queries. Please try again in 15 minutes.")), 429
    except QueryRefused:
        message = (_("The case number or the query password is wrong.") if request.method == "POST"
                   else _("No notice carries this verification code."))
        return render_template("public/query.html", case_no=case_no, message=message), 401
    _remember(found["case_no"])
    return redirect(url_for("public.case", case_no=found["case_no"]))


@public.get("/cases/<case_no>")
def case(case_no: str):
    if not _may_see(case_no):
        return redirect(url_for("public.query"))
    db = database()
    return _case_page(db, applicants.progress(db, case_no))


@public.post("/cases/<case_no>/supplement")
def supplement(case_no: str):
    if not _may_see(case_no):
        return redirect(url_for("public.query"))
    db = database()
    progress = applicants.progress(db, case_no)
    try:
        applicants.supply_materials(db, progress["id"], _uploads(), request.form.get("note"))
    except (InvalidInput, Conflict) as refused:
        return _case_page(db, progress, refused)
    return redirect(url_for("public.case", case_no=case_no, supplied=1))


@public.post("/cases/<case_no>/rating")
def rate(case_no: str):
    if not _may_see(case_no):
        return redirect(url_for("public.query"))
    db = database()
    progress = applicants.progress(db, case_no)
    try:
        ratings.rate(db, progress["id"], request.form.get("score", ""), request.form.get("comment"),
                     request.form.get("department"))
    except (InvalidInput, Conflict) as refused:
        return _case_page(db, progress, refused)
    return redirect(url_for("public.case", case_no=case_no, rated=1))


@public.get("/cases/<case_no>/notices/<kind>")
def notice(case_no: str, kind: str):
    if not _may_see(case_no) or kind not in NOTICE_TEMPLATES:
        abort(404)
    document = applicants.notice(database(), case_no, kind, request.args.get("n", type=int))
    code = document["case"]["verification_code"]
    query_url = url_for("public.query", code=code, _external=True) if code else None
    qr_svg = segno.make(query_url, error="m").svg_inline(scale=3, title=_("Verification QR code"), svgclass="qr")
    with force_locale("zh_CN"):   # official documents are Chinese
        return render_template(NOTICE_TEMPLATES[kind], notice=document, case=document["case"], query_url=query_url,
                               qr_svg=qr_svg if query_url else None, language="zh_CN")


@public.get("/cases/<case_no>/materials/<int:attachment_id>")
def material(case_no: str, attachment_id: int):
    if not _may_see(case_no):
        abort(404)
    db = database()
    stored = applicants.material_file(db, applicants.progress(db, case_no)["id"], attachment_id)
    return send_file(BytesIO(stored["content"]), mimetype=stored["content_type"], as_attachment=True,
                     download_name=stored["filename"])


@public.route("/complaints", methods=["GET", "POST"])
def complaint():
    remembered = session.get(SESSION_KEY, [])
    departments = accounts.list_departments(database())
    if request.method == "GET":
        return render_template("public/complaint.html", cases=remembered, departments=departments,
                               values={}, errors={})
    case_no = request.form.get("case_no", "").strip()
    instance_id = None
    if case_no:
        # Only a case this browser has opened, so the form cannot be used to probe case numbers.
        if case_no not in remembered:
            abort(403)
        instance_id = applicants.progress(database(), case_no)["id"]
    try:
        filed = ratings.file_complaint(database(), request.form.get("subject", ""), request.form.get("body", ""),
                                       instance_id=instance_id, department_key=request.form.get("department"),
                                       contact=request.form.get("contact"))
    except InvalidInput as invalid:
        return render_template("public/complaint.html", cases=remembered, departments=departments,
                               values=request.form, errors=_errors(invalid)), 422
    return redirect(url_for("public.complaint_status", reference=filed["reference"]))


@public.get("/complaints/<reference>")
def complaint_status(reference: str):
    try:
        found = ratings.complaint_by_reference(database(), reference)
    except NotFound:
        abort(404)
    return render_template("public/complaint_status.html", complaint=found)


@public.app_template_filter("public_time")
def public_time(moment) -> str:
    return moment.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M") if moment else "—"


def _case_page(db, progress: dict, refused=None):
    page = render_template("public/case.html", case=progress, rating=ratings.rating_of(db, progress["id"]),
                           scores=ratings.SCORES, errors=_errors(refused) if refused else {},
                           printable=NOTICE_TEMPLATES)
    if refused is None:
        return page
    return page, 422 if isinstance(refused, InvalidInput) else 409


def _uploads() -> list[Upload]:
    limit = database().config.max_upload_bytes
    found = []
    for name, files in request.files.lists():
        if not name.startswith("material:"):
            continue
        for storage in files:
            if storage and storage.filename:
                # One byte past the limit is enough to refuse the file without reading all of it.
                found.append(Upload(name.split(":", 1)[1], storage.filename, storage.stream.read(limit + 1)))
    return found


def _errors(error) -> dict:
    problems = getattr(error, "problems", None)
    if not problems:
        return {"": error.message}
    found: dict = {}
    for problem in problems:
        found.setdefault(problem.field or "", problem.message)
    return found


def _client() -> str:
    # The proxy in front (if any) is configured with ProxyFix by the deployment; never trust raw headers here.
    return request.remote_addr or "unknown"


def _remember(case_no: str) -> None:
    remembered = [c for c in session.get(SESSION_KEY, []) if c != case_no]
    session[SESSION_KEY] = (remembered + [case_no])[-MAX_REMEMBERED:]


def _may_see(case_no: str) -> bool:
    return case_no in session.get(SESSION_KEY, [])
