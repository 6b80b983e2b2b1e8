"""Online application end to end in headless Chromium: apply with files → the window accepts → departments finish → the applicant queries and rates."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from engine import accounts, applicants, deploy, runtime, seed, worklist
from engine.seed import demo_password
from engine.store import Database
from webui import create_app
from webui.auth import DB_EXTENSION

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-output" / "screenshots"
KEY = "enterprise_startup"
PDF = b"%PDF-1.4\n% scanned material\n"
FIELDS = {"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": "100",
          "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": "12"}
MATERIALS = ["registration_application", "articles_of_association", "shareholder_identity", "officer_appointment",
             "premises_proof", "legal_rep_id", "seal_specimen_form", "tax_agent_id", "invoice_request",
             "employee_roster", "housing_fund_form"]
BRANCHES = {"seal_filing": "gaj", "tax_invoice": "swj", "social_insurance": "rsj",
            "medical_insurance": "ybj", "housing_fund": "gjj", "bank_account": "bank"}


@pytest.fixture
def site(db_config):
    """The app on a free port of 127.0.0.1 with the shipped flows and demo users; yields (url, app, db)."""
    db = Database(db_config)
    seed.seed_demo(db)
    deploy.deploy(db, deploy.read_paths([REPO / "processes"]), "admin")
    app = create_app({"ENGINE_CONFIG": db_config})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}", app, db
    http.shutdown()
    thread.join(timeout=10)
    app.extensions[DB_EXTENSION].dispose()
    db.dispose()


def new_page(browser):
    context = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
    context.set_default_timeout(15000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def accept_at_the_window(browser, base: str, app, db, instance_id: int) -> str:
    """The window clerk accepts the online application: through the task page when it exists, else the engine."""
    if not any(rule.rule.startswith("/tasks/<") for rule in app.url_map.iter_rules()):
        # The task page (webui/tasks.py) is another engineer's and not there yet: the same step via the engine.
        window = accounts.get_user(db, "window1")
        task = next(t for t in worklist.list_tasks(db, window) if t["instance_id"] == instance_id)
        runtime.complete(db, task["id"], window, {**FIELDS, **{f"mat_{k}": True for k in MATERIALS},
                                                  "intake_decision": "accept"}, opinion="网上预受理：材料齐全，予以受理")
        return "engine"
    context, page, errors = new_page(browser)
    page.goto(base + "/login")
    page.fill("#username", "window1")
    page.fill("#password", demo_password("window1"))
    page.click("form button[type=submit]")
    page.wait_for_load_state()
    page.goto(base + "/tasks")
    row = page.locator("tr[data-task-id][data-bpmn-id='intake']")
    assert row.count() == 1
    shot(page, "public-03-window-task-list.png")
    row.locator("a[href^='/tasks/']").first.click()
    page.wait_for_url(re.compile(r"/tasks/\d+$"))
    if page.locator("button#claim").count():
        page.click("button#claim")
        page.wait_for_load_state()
    form = page.locator("form#task-form")
    for name, value in {**FIELDS, **{f"mat_{k}": True for k in MATERIALS}, "intake_decision": "accept"}.items():
        field = form.locator(f"[name='{name}']").first
        kind = field.evaluate("e => e.tagName.toLowerCase() + ':' + (e.type || '')")
        if kind == "input:checkbox":
            field.set_checked(bool(value))
        elif kind.startswith("select"):
            field.select_option(str(value))
        else:
            field.fill(str(value))
    form.locator("textarea[name='opinion']").fill("网上预受理：材料齐全，予以受理")
    shot(page, "public-04-window-accepts.png")
    page.click("button#complete")
    page.wait_for_load_state()
    assert page.locator(".field-error").all_inner_texts() == []
    assert errors == []
    context.close()
    return "browser"


def finish_in_the_departments(db, instance_id: int) -> None:
    """The middle of the case (registration, six parallel items, consolidation, hand-over) through the engine."""
    def do(bpmn_id: str, username: str, values: dict) -> None:
        user = accounts.get_user(db, username)
        task = next(t for t in worklist.list_tasks(db, user) if t["instance_id"] == instance_id
                    and t["bpmn_id"] == bpmn_id)
        runtime.complete(db, task["id"], user, values)

    do("registration", "scjgj1", {"scjgj_approved": True, "scjgj_opinion": "准予设立登记"})
    for task, department in BRANCHES.items():
        do(task, f"{department}1", {f"{department}_approved": True, f"{department}_opinion": "同意"})
    do("consolidate", "scjgj1", {"consolidation_decision": "approve", "consolidation_opinion": "统一出件"})
    do("handover", "window1", {"licence_delivered": True, "collected_by": "李明"})


def test_apply_online_then_follow_and_rate_the_case(site, browser):
    base, app, db = site
    context, page, errors = new_page(browser)

    # 服务指南 → 网上申报, no login.
    page.goto(base + "/public/")
    assert page.locator("#flow-enterprise_startup h2").inner_text().strip() == "企业开办（无前置审批）"
    shot(page, "public-01-catalogue.png")
    page.click("#flow-enterprise_startup a.button")
    page.wait_for_url(re.compile(r"/public/apply/enterprise_startup$"))
    for name, value in FIELDS.items():
        field = page.locator(f"#apply-form [name='{name}']")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    for key in MATERIALS:
        page.set_input_files(f"#m-{key}", files=[{"name": f"{key}.pdf", "mimeType": "application/pdf", "buffer": PDF}])
    shot(page, "public-02-apply.png")
    page.click("#submit-application")
    page.wait_for_selector("#query-password")
    case_no = page.locator("#case-no").inner_text().strip()
    password = page.locator("#query-password").inner_text().strip()
    assert re.fullmatch(r"\d{13}", case_no) and len(password) == 10
    shot(page, "public-02b-applied.png")
    assert errors == []
    context.close()

    instance_id = applicants.progress(db, case_no)["id"]
    assert worklist.get_instance(db, instance_id)["started_by"] == "online"
    accept_at_the_window(browser, base, app, db, instance_id)
    assert "registration" in [t["bpmn_id"] for t in worklist.get_instance(db, instance_id)["tasks"]]
    finish_in_the_departments(db, instance_id)
    assert worklist.get_instance(db, instance_id)["status"] == "completed"

    # Days later, from another browser: a wrong password first, then the right one.
    context, page, errors = new_page(browser)
    page.goto(base + f"/public/cases/{case_no}")
    page.wait_for_url(re.compile(r"/public/cases/query$"))
    page.fill("#case_no", case_no)
    page.fill("#password", "WRONGPASS9")
    page.click("#query")
    assert page.locator("#query-message").inner_text().strip() == "办件编号或查询密码不正确。"
    page.fill("#case_no", case_no)
    page.fill("#password", password)
    page.click("#query")
    page.wait_for_url(re.compile(rf"/public/cases/{case_no}$"))
    assert "已办结" in page.locator("#case-status").inner_text()
    steps = page.locator("#history").inner_text()
    assert "窗口受理（一表申请）" in steps and "公章刻制备案" in steps and "统一出件" in steps
    kinds = page.locator("#notices li").evaluate_all("items => items.map(i => i.dataset.kind)")
    assert kinds == ["receipt", "acceptance", "completion"]
    assert page.locator("#materials li").count() == len(MATERIALS)
    shot(page, "public-05-progress.png")

    # The 办结通知书 as printed at the window, downloadable by the applicant with its QR code.
    page.click("#notices li[data-kind='completion'] a")
    page.wait_for_selector("article.notice[data-notice='completion']")
    assert page.locator(".notice-case-no").inner_text().strip() == case_no
    assert page.locator(".verify svg").count() == 1
    shot(page, "public-05b-completion-notice.png")
    page.go_back()
    page.wait_for_selector("#rating-form")

    # 好差评.
    page.check("#score-5")
    page.fill("#comment", "网上申报，一次没跑就办好了")
    shot(page, "public-06-rating.png")
    page.click("#rate")
    page.wait_for_selector("#rated")
    assert "非常满意" in page.locator("#rated").inner_text()
    shot(page, "public-07-rated.png")
    assert errors == []
    context.close()
