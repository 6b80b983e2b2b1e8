"""Public pages: guides, online application with uploads, query (only with the password; no existence oracle; rate limit), 补正, rating, complaints, staff feedback pages."""
from __future__ import annotations

import io
import re

import pytest

from engine import accounts, applicants, runtime, worklist
from tests.processes.conftest import clock, make_clerks  # noqa: F401  (clock is a fixture)
from tests.processes.harness import deploy_processes, reload

KEY = "enterprise_startup"
PDF = b"%PDF-1.4\n% material\n"
FIELDS = {"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": "100",
          "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": "12"}


@pytest.fixture
def clerks(db, clock):
    clerks = make_clerks(db, KEY)
    deploy_processes(db)
    clerks["supervisor"] = accounts.create_user(db, "supervisor1", "supervisor-pass", "监察", [], ["supervisor"])
    return clerks


def csrf(client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def apply_online(client, **extra) -> dict:
    token = csrf(client, f"/public/apply/{KEY}")
    data = {"csrf_token": token, **FIELDS, **extra}
    response = client.post(f"/public/apply/{KEY}", data=data, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    html = response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    return {"case_no": re.search(r'id="case-no">([^<]+)<', html).group(1),
            "password": re.search(r'id="query-password">([^<]+)<', html).group(1)}


def query(client, case_no: str, password: str, ip: str = "127.0.0.1"):
    token = csrf(client, "/public/cases/query")
    return client.post("/public/cases/query", data={"csrf_token": token, "case_no": case_no, "password": password},
                       environ_base={"REMOTE_ADDR": ip})


def test_the_catalogue_and_guides_need_no_login_and_show_limits_fees_and_basis(client, clerks):
    page = client.get("/public/").get_data(as_text=True)
    assert "企业开办（无前置审批）" in page and "工程建设项目审批" in page and "/public/apply/enterprise_startup" in page
    guide = client.get(f"/public/guides/{KEY}").get_data(as_text=True)
    for text in ("公章刻制备案", "首套印章免费刻制", "《中华人民共和国社会保险法》第五十七条", "住所（经营场所）使用证明",
                 "2个工作日", "4个工作小时"):
        assert text in guide, text
    assert client.get("/public/guides/nothing").status_code == 404
    assert client.get("/public/apply/nothing").status_code == 404


def test_apply_online_with_files_then_only_that_password_opens_the_case(app, client, clerks):
    token = csrf(client, f"/public/apply/{KEY}")
    form = client.get(f"/public/apply/{KEY}").get_data(as_text=True)
    assert 'name="enterprise_name"' in form and 'name="material:premises_proof"' in form
    assert 'name="intake_decision"' not in form          # the window's decision is not the applicant's
    bad = client.post(f"/public/apply/{KEY}", content_type="multipart/form-data", data={
        "csrf_token": token, **FIELDS, "registered_capital": "很多",
        "material:premises_proof": (io.BytesIO(b"not a pdf"), "lease.pdf")})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert html.count('class="field-error"') == 2 and 'value="杭州云杉科技有限公司"' in html

    token = csrf(client, f"/public/apply/{KEY}")
    applied = client.post(f"/public/apply/{KEY}", content_type="multipart/form-data", data={
        "csrf_token": token, **FIELDS,
        "material:premises_proof": (io.BytesIO(PDF), "租赁合同.pdf"),
        "material:articles_of_association": [(io.BytesIO(PDF), "章程.pdf"), (io.BytesIO(PDF), "章程附件.pdf")]})
    assert applied.status_code == 200
    html = applied.get_data(as_text=True)
    case_no = re.search(r'id="case-no">([^<]+)<', html).group(1)
    password = re.search(r'id="query-password">([^<]+)<', html).group(1)
    # The applicant's own browser may follow the case straight away...
    page = client.get(f"/public/cases/{case_no}").get_data(as_text=True)
    assert "窗口受理（一表申请）" in page and "租赁合同.pdf" in page and "章程附件.pdf" in page
    link = re.search(r'href="(/public/cases/[^"]+/materials/\d+)"', page).group(1)
    assert client.get(link).data == PDF

    # ...another browser sees nothing until it gives the password, and then only this case.
    other = app.test_client()
    assert other.get(f"/public/cases/{case_no}").headers["Location"].endswith("/public/cases/query")
    assert other.get(link).status_code == 404
    second = apply_online(app.test_client(), enterprise_name="另一家公司")
    assert query(other, case_no, password).headers["Location"].endswith(f"/public/cases/{case_no}")
    assert other.get(f"/public/cases/{case_no}").status_code == 200
    assert other.get(f"/public/cases/{second['case_no']}").status_code == 302
    assert query(other, second["case_no"], password).status_code == 401


def test_a_wrong_password_gives_the_same_answer_for_real_and_unknown_case_numbers(app, client, clerks):
    applied = apply_online(client)
    answers = []
    for case_no in (applied["case_no"], "20260302099999"):
        response = query(app.test_client(), case_no, "WRONGPASS")
        body = response.get_data(as_text=True)
        # Only the echoed case number and the browser's own CSRF token may differ.
        body = re.sub(r'name="csrf_token" value="[^"]+"', "", body.replace(case_no, "#"))
        answers.append((response.status_code, body, dict(response.headers).get("Location")))
    assert answers[0][0] == 401 and answers[0] == answers[1]


def test_the_rate_limit_stops_guessing_whether_or_not_the_case_exists(app, client, clerks):
    applied = apply_online(client)
    for case_no in (applied["case_no"], "20260302099999"):      # every guess from a different address
        statuses = [query(app.test_client(), case_no, f"GUESS{n}", ip=f"10.0.{len(case_no)}.{n}").status_code
                    for n in range(applicants.MAX_FAILURES_PER_CASE + 1)]
        assert statuses == [401] * applicants.MAX_FAILURES_PER_CASE + [429]
    # Even the right password waits until the window has passed.
    assert query(app.test_client(), applied["case_no"], applied["password"], ip="10.9.0.1").status_code == 429
    # One address guessing across case numbers hits the per-address limit.
    statuses = [query(app.test_client(), f"2026030200{n:04d}", "GUESS", ip="10.8.0.1").status_code
                for n in range(applicants.MAX_FAILURES_PER_IP + 1)]
    assert statuses == [401] * applicants.MAX_FAILURES_PER_IP + [429]


def test_the_code_on_a_notice_opens_the_case(app, client, clerks, db):
    applied = apply_online(client)
    code = worklist.get_instance(db, applicants.progress(db, applied["case_no"])["id"])
    instance = applicants.progress(db, applied["case_no"])
    other = app.test_client()
    response = other.get(f"/public/cases/query?code={instance['verification_code']}")
    assert response.headers["Location"].endswith(f"/public/cases/{applied['case_no']}")
    assert other.get("/public/cases/query?code=000000000000").status_code == 401
    assert code["case_no"] == applied["case_no"]


def test_forged_posts_without_the_csrf_token_are_refused(client, clerks):
    response = client.post(f"/public/apply/{KEY}", data=FIELDS)
    assert response.status_code == 400
    assert client.post("/public/cases/query", data={"case_no": "x", "password": "y"}).status_code == 400
    assert client.post("/public/complaints", data={"subject": "x", "body": "y", "department": "swj"}).status_code == 400


def test_supply_missing_materials_online_then_rate_and_complain(app, client, clerks, db, clock):
    applied = apply_online(client)
    instance_id = applicants.progress(db, applied["case_no"])["id"]
    task = next(t for t in worklist.list_tasks(db, clerks["window"]) if t["instance_id"] == instance_id)
    values = {**FIELDS, "registered_capital": 100, "employees": 12, "intake_decision": "supplement",
              "missing_materials": "请上传住所使用证明"}
    reload()
    runtime.complete(db, task["id"], clerks["window"], values)
    page = client.get(f"/public/cases/{applied['case_no']}").get_data(as_text=True)
    assert 'id="supplement-form"' in page and "请上传住所使用证明" in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    empty = client.post(f"/public/cases/{applied['case_no']}/supplement", data={"csrf_token": token},
                        content_type="multipart/form-data")
    assert empty.status_code == 422
    supplied = client.post(f"/public/cases/{applied['case_no']}/supplement", content_type="multipart/form-data",
                           data={"csrf_token": token, "note": "已补",
                                 "material:premises_proof": (io.BytesIO(PDF), "住所证明.pdf")})
    assert supplied.status_code == 302
    page = client.get(supplied.headers["Location"]).get_data(as_text=True)
    assert 'id="supplement-form"' not in page and "住所证明.pdf" in page
    # The 一次性告知 notice, printed as the window prints it; only for a browser that opened the case.
    link = re.search(r'href="(/public/cases/[^"]+/notices/supplement\?n=1)"', page).group(1)
    printed = client.get(link)
    assert printed.status_code == 200
    assert applied["case_no"] in printed.get_data(as_text=True) and "住所（经营场所）使用证明" in printed.get_data(as_text=True)
    assert app.test_client().get(link).status_code == 404
    assert client.get(f"/public/cases/{applied['case_no']}/notices/nonsense").status_code == 404

    # The window now refuses it (不予受理): the case is finished and can be rated.
    task = next(t for t in worklist.list_tasks(db, clerks["window"]) if t["instance_id"] == instance_id)
    reload()
    runtime.complete(db, task["id"], clerks["window"], {**values, "intake_decision": "reject",
                                                         "missing_materials": None, "rejection_reason": "名称不合规"})
    page = client.get(f"/public/cases/{applied['case_no']}").get_data(as_text=True)
    assert 'id="rating-form"' in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post(f"/public/cases/{applied['case_no']}/rating",
                       data={"csrf_token": token, "score": "1"}).status_code == 422   # a poor rating needs a comment
    rated = client.post(f"/public/cases/{applied['case_no']}/rating",
                        data={"csrf_token": token, "score": "1", "comment": "补正两次才说清楚"})
    assert rated.status_code == 302
    page = client.get(rated.headers["Location"]).get_data(as_text=True)
    assert 'id="rated"' in page and "非常不满意" in page
    assert client.post(f"/public/cases/{applied['case_no']}/rating",
                       data={"csrf_token": token, "score": "5"}).status_code == 409

    # A complaint may name only a case this browser opened.
    token = csrf(client, "/public/complaints")
    assert client.post("/public/complaints", data={"csrf_token": token, "case_no": "20260302000001x",
                                                   "subject": "s", "body": "b"}).status_code == 403
    filed = client.post("/public/complaints", data={"csrf_token": token, "case_no": applied["case_no"],
                                                    "subject": "补正告知不清", "body": "第一次告知没有列全"})
    assert filed.status_code == 302
    status_page = client.get(filed.headers["Location"]).get_data(as_text=True)
    assert "补正告知不清" in status_page and "2026-03-16 17:30" in status_page

    # Staff: the follow-up and the complaint are listed with lights and are closed/answered there.
    staff = app.test_client()
    token = csrf(staff, "/login")
    staff.post("/login", data={"csrf_token": token, "username": "window1", "password": "window-pass-1"})
    board = staff.get("/feedback/").get_data(as_text=True)
    follow_up_id = re.search(r'data-follow-up-id="(\d+)" data-light="green"', board).group(1)
    complaint_id = re.search(r'data-complaint-id="(\d+)" data-light="green"', board).group(1)
    token = re.search(r'name="csrf_token" value="([^"]+)"', board).group(1)
    staff.post(f"/feedback/follow-ups/{follow_up_id}/close", data={"csrf_token": token, "resolution": "已回访致歉"})
    staff.post(f"/feedback/complaints/{complaint_id}/answer", data={"csrf_token": token, "answer": "已改进告知书"})
    board = staff.get("/feedback/").get_data(as_text=True)
    assert "data-follow-up-id" not in board and "data-complaint-id" not in board
    done = staff.get("/feedback/?status=done").get_data(as_text=True)
    assert "已回访致歉" in done and "已改进告知书" in done
    assert "已改进告知书" in client.get(filed.headers["Location"]).get_data(as_text=True)

    clerk = app.test_client()
    token = csrf(clerk, "/login")
    clerk.post("/login", data={"csrf_token": token, "username": "gaj1", "password": "gaj-pass-1"})
    assert clerk.get("/feedback/").status_code == 403
    assert app.test_client().get("/feedback/").status_code == 302


def test_the_public_pages_speak_chinese_by_default_and_english_on_request(client, clerks):
    assert "服务指南" in client.get("/public/").get_data(as_text=True)
    assert "查询密码" in client.get("/public/cases/query").get_data(as_text=True)
    client.get("/language/en")
    page = client.get("/public/cases/query").get_data(as_text=True)
    assert "Query password" in page and "查询密码" not in page


def test_every_message_of_the_public_pages_is_translated():
    from pathlib import Path

    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    webui = Path(__file__).resolve().parents[2] / "webui"
    with open(webui / "translations_public/zh/LC_MESSAGES/messages.po", "rb") as po:
        catalog = read_po(po)
    untranslated = [m.id for m in catalog if m.id and not m.string]
    assert untranslated == []
    method_map = [("public.py", "python"), ("feedback.py", "python"),
                  ("templates/public/**.html", "jinja2"), ("templates/feedback/**.html", "jinja2")]
    used = {message for _file, _line, message, _comments, _context in extract_from_dir(
        str(webui), method_map, options_map={"templates/**.html": {}},
        directory_filter=lambda d: not Path(d).name.startswith(("node_modules", "static", "assets")))}
    assert used and {m for m in used if m not in catalog} == set()
