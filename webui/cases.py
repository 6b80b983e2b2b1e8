"""Case pages: 全部办件 list, starting a case at the window, the case page with its diagram, and printed notices."""
from __future__ import annotations

from urllib.parse import urlencode

import segno
from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_babel import force_locale, format_date, pgettext

from engine import casefile, runtime, worklist

from .auth import database
from .login import login_required_page, page_user

# Every string of these pages carries the msgctxt "cases": the screen families' catalogs are merged into
# one, and others translate the same English differently (On time: 按时 on the supervision board).
cases = Blueprint("cases", __name__)

PAGE_SIZE = 50
NOTICE_TEMPLATES = {
    "acceptance": "cases/notices/acceptance.html",
    "rejection": "cases/notices/rejection.html",
    "supplement": "cases/notices/supplement.html",
    "special-procedure": "cases/notices/special_procedure.html",
    "completion": "cases/notices/completion.html",
}
# Notices are official documents: Chinese unless an English courtesy copy is asked for.
NOTICE_LANGUAGES = {"zh": "zh_CN", "en": "en"}
PUBLIC_QUERY_PATH = "/public/cases/query"


@cases.get("/cases")
@login_required_page(*casefile.OVERSEERS)
def case_list():
    search = request.args.get("q", "").strip()
    status = request.args.get("status", "")
    page = _page_number()
    listing = casefile.list_cases(database(), page_user(), search=search, status=status,
                                  limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return render_template("cases/list.html", listing=listing, search=search, status=status, page=page)


@cases.route("/cases/new", methods=["GET", "POST"])
@login_required_page("window")
def new_case():
    key = (request.values.get("process") or "").strip()
    if request.method == "POST":
        started = runtime.start_case(database(), key, {}, page_user().username)
        task_id = casefile.first_open_task(database(), started["id"], page_user())
        if task_id is None:
            return redirect(url_for("cases.case_page", instance_id=started["id"]))
        return redirect(f"/tasks/{task_id}")   # the task page (tasks blueprint), by the shared page contract
    processes = [p for p in worklist.list_processes(database())
                 if p["status"] == "active" and (not key or p["key"] == key)]
    if key and not processes:
        abort(404, description=pgettext("cases", "No deployed flow is called %(key)s.", key=key))
    return render_template("cases/new.html", processes=processes, chosen=key)


@cases.get("/cases/<int:instance_id>")
@login_required_page()
def case_page(instance_id: int):
    case = casefile.case_file(database(), instance_id, page_user())
    diagram = {"xml": case["bpmn_xml"], **case["progress"]}
    return render_template("cases/case.html", case=case, diagram=diagram)


@cases.get("/cases/<int:instance_id>/documents/<kind>")
@login_required_page()
def notice(instance_id: int, kind: str):
    number = request.args.get("n", type=int)
    language = NOTICE_LANGUAGES.get(request.args.get("lang", "zh"))
    if language is None:
        abort(404)
    document = casefile.notice(database(), instance_id, page_user(), kind, number)
    code = document["case"]["verification_code"]
    query_url = request.url_root.rstrip("/") + PUBLIC_QUERY_PATH + "?" + urlencode({"code": code}) if code else None
    with force_locale(language):
        return render_template(NOTICE_TEMPLATES[kind], notice=document, case=document["case"], query_url=query_url,
                               qr_svg=_qr_svg(query_url) if query_url else None, language=language)


@cases.app_template_filter("case_time")
def case_time(moment) -> str:
    """A local moment as clerks read it: 2026-03-02 09:10."""
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "—"


@cases.app_template_filter("notice_date")
def notice_date(moment) -> str:
    """The date on a notice in the notice's language (2026年3月2日 / March 2, 2026)."""
    return format_date(moment.date(), "long") if moment else ""


def _qr_svg(url: str) -> str:
    # Inline SVG: prints sharp at any size and needs no second request.
    title = pgettext("cases", "Verification QR code")
    return segno.make(url, error="m").svg_inline(scale=3, title=title, svgclass="qr")


def _page_number() -> int:
    page = request.args.get("page", "1")
    if not page.isdigit() or not 1 <= int(page) <= 10000:
        abort(400, description=pgettext("cases", "The page number must be a whole number from 1 to 10000."))
    return int(page)
