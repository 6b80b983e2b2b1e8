"""Case pages through the Flask client on a real database: 全部办件, starting a case, the case page, printed notices."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import time_machine
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from lxml import html

from engine import accounts, casefile, seed
from engine.seed import demo_password
from tests.processes.conftest import at
from tests.processes.harness import Case, deploy_processes, guide_of, materials

KEY = "enterprise_startup"
GUIDE = guide_of(KEY)
WEBUI = Path(__file__).resolve().parents[2] / "webui"
CATALOG = WEBUI / "translations_cases" / "zh" / "LC_MESSAGES" / "messages.po"


@pytest.fixture
def demo(db, app):
    """Demo organisation and shipped flows, the clock frozen on Monday 2026-03-02 09:00 at the centre."""
    with time_machine.travel(at("2026-03-02 09:00"), tick=False) as traveller:
        seed.seed_demo(db)
        deploy_processes(db)
        yield traveller


def clerks(db) -> dict:
    return {d: accounts.get_user(db, f"{d}1") for d in GUIDE["departments"]}


def application(**overrides) -> dict:
    return {"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": 100,
            "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": 12,
            **materials(GUIDE), "intake_decision": "accept", **overrides}


def csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


def login(client, username: str):
    token = csrf(client.get("/login").data)
    response = client.post("/login", data={"username": username, "password": demo_password(username),
                                           "csrf_token": token})
    assert response.status_code == 302, response.data


def page(client, url: str, status: int = 200):
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code, response.data[:500])
    return html.fromstring(response.data)


_SIMPLE = re.compile(r"([a-z0-9]*)((?:[#.][\w-]+|\[[\w-]+(?:='[^']*')?\])*)")


def select(tree, css: str) -> list:
    """A small CSS subset (tag, #id, .class, [attr], [attr='v'], descendant) as XPath; lxml's needs cssselect."""
    steps = []
    for part in css.split():
        tag, rest = _SIMPLE.fullmatch(part).groups()
        tests = []
        for kind, name, value in re.findall(r"([#.]|\[)([\w-]+)(?:='([^']*)')?\]?", rest):
            if kind == "#":
                tests.append(f"@id='{name}'")
            elif kind == ".":
                tests.append(f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')")
            else:
                tests.append(f"@{name}='{value}'" if value else f"@{name}")
        steps.append((tag or "*") + "".join(f"[{t}]" for t in tests))
    return tree.xpath(".//" + "//".join(steps))


def text(tree, selector: str) -> str:
    return " ".join(" ".join(e.text_content().split()) for e in select(tree, selector))


def test_case_list_is_for_overseers_and_searches(client, db, demo):
    people = clerks(db)
    first = Case.start(db, people, KEY, {"applicant": "甲科技有限公司"})
    Case.start(db, people, KEY, {"applicant": "乙贸易有限公司"})
    assert client.get("/cases").status_code == 302                      # anonymous: to the login page
    login(client, "gaj1")
    assert client.get("/cases").status_code == 403
    login(client, "supervisor1")
    tree = page(client, "/cases")
    assert [r.get("data-case-id") for r in select(tree, "tr[data-case-id]")] == [str(first.id + 1), str(first.id)]
    assert "全部办件" in text(tree, "h1") and "新建办件" not in text(tree, "main")   # only the window receives
    tree = page(client, "/cases?q=甲科技")
    assert [r.get("data-case-id") for r in select(tree, "tr[data-case-id]")] == [str(first.id)]
    assert first.case_no in text(tree, "tr[data-case-id]") and "窗口受理" in text(tree, "tr[data-case-id]")
    assert page(client, "/cases?page=0", status=400) is not None
    assert client.get("/cases?status=finished").status_code == 422
    tree = page(client, "/cases?status=completed")
    assert select(tree, "tr[data-case-id]") == [] and "没有符合条件的办件" in text(tree, "main")


def test_the_window_starts_a_case_and_lands_on_its_intake_task(client, db, demo):
    login(client, "gaj1")
    assert client.get(f"/cases/new?process={KEY}").status_code == 403
    login(client, "window1")
    tree = page(client, f"/cases/new?process={KEY}")
    assert select(tree, "button#start-case") and "企业开办（无前置审批）" in text(tree, "main")
    assert client.get("/cases/new?process=no_such_flow").status_code == 404
    assert client.post("/cases/new", data={"process": KEY}).status_code == 400     # no CSRF token: refused
    response = client.post("/cases/new", data={"process": KEY, "csrf_token": csrf(client.get("/cases/new").data)})
    assert response.status_code == 302
    [listed] = casefile.list_cases(db, clerks(db)["window"])["cases"]
    intake = casefile.first_open_task(db, listed["id"], clerks(db)["window"])
    assert response.headers["Location"] == f"/tasks/{intake}"
    assert listed["started_at"] == at("2026-03-02 09:00")


def test_case_page_shows_header_diagram_progress_timeline_and_documents(client, db, demo):
    people = clerks(db)
    case = Case.start(db, people, KEY, {})
    demo.move_to(at("2026-03-02 09:10"))
    case.complete("intake", "window", **application())
    login(client, "window1")
    tree = page(client, f"/cases/{case.id}")
    assert text(tree, "#case-no") == case.case_no
    assert text(tree, "#case-applicant") == "杭州云杉科技有限公司"
    assert "企业开办（无前置审批）" in text(tree, ".case-header") and "v1" in text(tree, ".case-header")
    assert text(tree, "#case-status") == "办理中" and text(tree, "#case-light .light") == "正常"
    assert "2026-03-04 17:30" in text(tree, ".case-header")                   # committed: 2 working days
    diagram = json.loads(select(tree, "#case-diagram-data")[0].text)
    assert diagram["xml"].startswith("<?xml") and "intake" in diagram["completed"]
    assert diagram["active"] == ["registration"] and diagram["departments"] == {"registration": ["市场监管局"]}
    assert select(tree, "#case-diagram[data-case-diagram]")
    assert [s.get("src") for s in select(tree, "script[src]")] == ["/static/dist/case-diagram.js"]
    assert "completed" in text(tree, ".diagram-legend").lower() or "已完成环节" in text(tree, ".diagram-legend")
    assert [r.get("data-step") for r in select(tree, "tr[data-step]")] == ["intake", "registration"]
    assert [li.get("data-event") for li in select(tree, ".timeline li")][:2] == ["case_started", "task_created"]
    assert "收件" in text(tree, ".timeline") and "综合窗口·window1" in text(tree, ".timeline")
    assert [a.get("data-notice") for a in select(tree, "a[data-notice]")] == ["acceptance"]
    # The diagram JSON is inert inside its script element, whatever an applicant typed.
    assert "</script>" not in select(tree, "#case-diagram-data")[0].text


def test_case_page_permissions(client, db, demo):
    case = Case.start(db, clerks(db), KEY, {})
    login(client, "scjgj1")
    assert client.get(f"/cases/{case.id}").status_code == 403                  # nothing of theirs yet
    case.complete("intake", "window", **application())
    assert client.get(f"/cases/{case.id}").status_code == 200                  # 设立登记 is theirs now
    assert client.get(f"/cases/{case.id}/documents/acceptance").status_code == 200
    login(client, "fgw1")
    assert client.get(f"/cases/{case.id}").status_code == 403
    assert client.get(f"/cases/{case.id}/documents/acceptance").status_code == 403
    login(client, "supervisor1")
    assert client.get(f"/cases/{case.id}").status_code == 200
    assert client.get("/cases/999999").status_code == 404


def test_acceptance_notice_has_centre_number_applicant_basis_seal_and_qr(client, db, demo, monkeypatch):
    monkeypatch.setenv(casefile.CENTRE_NAME_ENV, "杭州市政务服务中心")
    case = Case.start(db, clerks(db), KEY, {})
    demo.move_to(at("2026-03-02 09:10"))
    case.complete("intake", "window", **application())
    code = casefile.case_file(db, case.id, clerks(db)["window"])["verification_code"]
    login(client, "window1")
    tree = page(client, f"/cases/{case.id}/documents/acceptance")
    assert text(tree, "h1") == "受理通知书"
    assert text(tree, ".notice-centre") == "杭州市政务服务中心"
    assert text(tree, ".notice-case-no") == case.case_no and text(tree, ".notice-applicant") == "杭州云杉科技有限公司"
    assert text(tree, ".notice-date") == "2026年3月2日"
    assert "决定予以受理" in text(tree, ".body") and "2026-03-04 17:30" in text(tree, ".body")
    assert "《中华人民共和国行政许可法》第三十二条" in text(tree, ".basis") and GUIDE["legal_basis"] in text(tree, ".basis")
    assert text(tree, ".seal-area") == "（盖章）" and text(tree, ".notice-code") == code
    [qr] = select(tree, ".verify svg.qr")
    assert select(qr, "path") and text(tree, ".verify .url") == f"http://localhost/public/cases/query?code={code}"
    items = [r.xpath("td[2]")[0].text_content() for r in select(tree, "table.items tbody tr")]
    assert items == [i["name"] for i in GUIDE["items"]]
    assert b"@page" in client.get(f"/cases/{case.id}/documents/acceptance").data          # print CSS for A4


def test_notices_that_do_not_apply_are_not_found(client, db, demo):
    case = Case.start(db, clerks(db), KEY, {})
    login(client, "window1")
    for kind in ("acceptance", "rejection", "supplement", "special-procedure", "completion", "licence"):
        assert client.get(f"/cases/{case.id}/documents/{kind}").status_code == 404, kind
    case.complete("intake", "window", **application())
    assert client.get(f"/cases/{case.id}/documents/acceptance").status_code == 200
    assert client.get(f"/cases/{case.id}/documents/completion").status_code == 404
    assert client.get(f"/cases/{case.id}/documents/acceptance?n=2").status_code == 404
    assert client.get(f"/cases/{case.id}/documents/acceptance?lang=fr").status_code == 404


def test_supplement_notice_lists_every_missing_material_at_once(client, db, demo):
    missing = ("registration_application", "premises_proof", "tax_agent_id", "employee_roster", "housing_fund_form")
    case = Case.start(db, clerks(db), KEY, {})
    case.complete("intake", "window", **application(**materials(GUIDE, missing=missing), missing_materials="章程须签字"))
    login(client, "window1")
    tree = page(client, f"/cases/{case.id}")
    assert [a.get("data-notice") for a in select(tree, "a[data-notice]")] == ["supplement"]
    tree = page(client, f"/cases/{case.id}/documents/supplement")
    assert text(tree, "h1") == "补正材料通知书" and "一次性告知" in text(tree, ".body")
    names = {m["key"]: m["name"] for item in GUIDE["items"] for m in item["materials"]}
    rows = select(tree, "tr[data-material]")
    assert [r.get("data-material") for r in rows] == list(missing)
    assert [text(r, ".material-name") for r in rows] == [names[k] for k in missing]
    assert "社会保险登记、医疗保险参保登记" in text(tree, "tr[data-material='employee_roster']")
    assert "章程须签字" in text(tree, ".note") and "政务服务中心企业开办专区综合窗口" in text(tree, ".body")
    assert select(tree, ".verify svg.qr")
    assert client.get(f"/cases/{case.id}/documents/acceptance").status_code == 404   # not accepted (yet)


def test_completion_and_rejection_notices(client, db, demo):
    people = clerks(db)
    rejected = Case.start(db, people, KEY, {})
    rejected.complete("intake", "window", **application(intake_decision="reject", rejection_reason="经营范围需前置审批"))
    done = Case.start(db, people, KEY, {})
    done.complete("intake", "window", **application())
    done.complete("registration", "scjgj", scjgj_approved=True, scjgj_opinion="准予")
    for task, department in (("seal_filing", "gaj"), ("tax_invoice", "swj"), ("social_insurance", "rsj"),
                             ("medical_insurance", "ybj"), ("housing_fund", "gjj"), ("bank_account", "bank")):
        done.complete(task, department, **{f"{department}_approved": True, f"{department}_opinion": "同意"})
    done.complete("consolidate", "scjgj", consolidation_decision="approve", consolidation_opinion="同意")
    demo.move_to(at("2026-03-03 10:00"))
    done.complete("handover", "window", licence_delivered=True, collected_by="李明")
    login(client, "window1")
    tree = page(client, f"/cases/{rejected.id}/documents/rejection")
    assert text(tree, "h1") == "不予受理告知书" and "经营范围需前置审批" in text(tree, ".reasons")
    assert "行政复议" in text(tree, ".body")
    assert client.get(f"/cases/{rejected.id}/documents/completion").status_code == 404
    tree = page(client, f"/cases/{done.id}/documents/completion")
    assert text(tree, "h1") == "办结通知书" and "准予办理" in text(tree, ".body")
    assert text(tree, ".notice-date") == "2026年3月3日" and "领取人： 李明" in text(tree, ".body")
    assert len(select(tree, "table.items tbody tr")) == len(GUIDE["items"])
    assert text(tree, ".notice-case-no") == done.case_no and select(tree, ".verify svg.qr")


def test_notices_print_in_chinese_even_for_an_english_ui_and_offer_an_english_copy(client, db, demo):
    case = Case.start(db, clerks(db), KEY, {})
    case.complete("intake", "window", **application())
    login(client, "window1")
    client.get("/language/en")
    assert "Progress" in text(page(client, f"/cases/{case.id}"), "#diagram-heading")
    assert text(page(client, f"/cases/{case.id}/documents/acceptance"), "h1") == "受理通知书"
    tree = page(client, f"/cases/{case.id}/documents/acceptance?lang=en")
    assert text(tree, "h1") == "Acceptance notice" and "is accepted" in text(tree, ".body")
    assert text(tree, ".notice-date") == "March 2, 2026"


def test_every_case_page_string_is_in_the_catalog_translated_and_in_its_own_context():
    catalog = read_po(CATALOG.open("rb"))
    assert [m.id for m in catalog if m.id and not m.string] == []
    assert {m.context for m in catalog if m.id} == {"cases"}
    used = set()
    templates = (WEBUI / "templates" / "cases").rglob("*.html")
    sources = [(WEBUI / "cases.py", "python")] + [(p, "jinja2") for p in templates]
    for path, method in sources:
        options = {"extensions": "jinja2.ext.i18n"} if method == "jinja2" else {}
        method = "jinja2.ext:babel_extract" if method == "jinja2" else method
        for _, message, _, context in extract_from_file(method, str(path), options=options):
            used.add((context, message))
    # A bare _() would take whatever another screen family's catalog says for the same English.
    assert sorted(message for context, message in used if context != "cases") == []
    assert sorted(message for context, message in used if catalog.get(message, context="cases") is None) == []
