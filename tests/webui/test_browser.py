"""A whole 企业开办 case in headless Chromium against a real HTTP server: window, lead, six departments, 退回, notices."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from engine import deploy, seed
from engine.seed import demo_password
from engine.store import Database
from webui import create_app
from webui.auth import DB_EXTENSION

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-output" / "screenshots"
KEY = "enterprise_startup"
# Each parallel item of the flow and the demo clerk of its department.
BRANCHES = {"seal_filing": "gaj", "tax_invoice": "swj", "social_insurance": "rsj",
            "medical_insurance": "ybj", "housing_fund": "gjj", "bank_account": "bank"}
MATERIALS = ["registration_application", "articles_of_association", "shareholder_identity", "officer_appointment",
             "premises_proof", "name_declaration", "legal_rep_id", "seal_specimen_form", "tax_agent_id",
             "invoice_request", "employee_roster", "housing_fund_form", "account_appointment"]
LIGHT_LABELS = {"green": "正常", "yellow": "预警", "red": "逾期"}
FINISHED_STEPS = ["intake", "registration", *BRANCHES, "consolidate", "handover"]



@pytest.fixture
def server(db_config):
    """The app on a free port of 127.0.0.1, serving the test database with the shipped flows and demo users."""
    db = Database(db_config)
    seed.seed_demo(db)
    deploy.deploy(db, deploy.read_paths([REPO / "processes"]), "admin")
    db.dispose()
    app = create_app({"ENGINE_CONFIG": db_config})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(timeout=10)
    app.extensions[DB_EXTENSION].dispose()


class Clerk:
    """One user's own browser context (cookies), logged in through the login form, speaking Chinese."""

    def __init__(self, browser, base: str, username: str, shots: list):
        self.base, self.username, self.shots = base, username, shots
        self.context = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
        self.context.set_default_timeout(15000)
        self.page = self.context.new_page()
        self.errors = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def login(self, screenshot: str | None = None) -> "Clerk":
        page = self.page
        page.goto(self.base + "/login")
        page.fill("#username", self.username)
        page.fill("#password", demo_password(self.username))
        self.shot(screenshot)
        page.click("form button[type=submit]")
        page.wait_for_load_state()
        assert "/login" not in page.url, f"{self.username} could not log in"
        return self

    def shot(self, name: str | None) -> None:
        if name:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
            self.shots.append(name)

    def open_task(self, bpmn_id: str, screenshot: str | None = None, on_list=None) -> None:
        """From the 待办 list to the task page of this step, claiming it when the page asks to."""
        page = self.page
        page.goto(self.base + "/tasks")
        row = page.locator(f"tr[data-task-id][data-bpmn-id='{bpmn_id}']")
        assert row.count() == 1, f"{self.username} sees {row.count()} open {bpmn_id} tasks"
        if on_list:
            on_list(page)
        self.shot(screenshot)
        row.locator("a[href^='/tasks/']").first.click()
        page.wait_for_url(re.compile(r"/tasks/\d+$"))
        if page.locator("button#claim").count():
            page.click("button#claim")
            page.wait_for_load_state()
        page.wait_for_selector("form#task-form")

    def complete(self, fields: dict, opinion: str = "", screenshot: str | None = None) -> None:
        """Fill the generated form (checkboxes, selects, text) and press 办理; the page must accept it."""
        page = self.page
        form = page.locator("form#task-form")
        for name, value in fields.items():
            field = form.locator(f"[name='{name}']").first
            kind = field.evaluate("e => e.tagName.toLowerCase() + ':' + (e.type || '')")
            if kind == "input:checkbox":
                field.set_checked(bool(value))
            elif kind.startswith("select"):
                field.select_option(str(value))
            else:
                field.fill(str(value))
        if opinion:
            form.locator("textarea[name='opinion']").fill(opinion)
        self.shot(screenshot)
        task_url = page.url
        assert page.locator("button#complete").inner_text().strip() == "办理"
        page.click("button#complete")
        page.wait_for_load_state()
        errors = page.locator(".field-error").all_inner_texts()
        assert page.url != task_url or not errors, f"{self.username} could not complete: {errors}"
        assert errors == [], f"{self.username} got form errors: {errors}"

    def close(self) -> None:
        assert self.errors == [], f"JavaScript errors for {self.username}: {self.errors}"
        self.context.close()


def test_a_whole_enterprise_startup_case_through_the_browser(server, browser):
    shots: list[str] = []
    clerks: dict[str, Clerk] = {}

    def clerk(username: str) -> Clerk:
        if username not in clerks:
            clerks[username] = Clerk(browser, server, username, shots).login(
                screenshot="clerk-01-login.png" if not shots else None)
        return clerks[username]

    # 收件: the window starts the case and lands on its intake form.
    window = clerk("window1")
    window.page.goto(server + f"/cases/new?process={KEY}")
    window.page.click("button#start-case")
    window.page.wait_for_url(re.compile(r"/tasks/\d+$"))
    window.page.wait_for_selector("form#task-form")
    window.page.goto(server + "/cases")
    case_row = window.page.locator("tr[data-case-id]")
    assert case_row.count() == 1
    case_id = case_row.get_attribute("data-case-id")
    case_no = case_row.locator("a").inner_text().strip()
    assert re.fullmatch(r"\d{13}", case_no)

    # 受理: one form, every material ticked, accepted.
    window.open_task("intake")
    window.complete({"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": 100,
                     "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": 12,
                     **{f"mat_{key}": True for key in MATERIALS}, "intake_decision": "accept"},
                    opinion="材料齐全，予以受理", screenshot="clerk-03-task-page.png")

    # 设立登记 by the lead department, the gate before the parallel items.
    scjgj = clerk("scjgj1")
    scjgj.open_task("registration")
    scjgj.complete({"scjgj_approved": True, "scjgj_opinion": "准予设立登记", "credit_code": "91330106MA2KXXXX0Y"})

    # Three departments, three clerks; the task list shows each task's light as a labelled badge.
    for position, task in enumerate(("seal_filing", "tax_invoice", "social_insurance")):
        department = BRANCHES[task]
        reviewer = clerk(f"{department}1")
        reviewer.open_task(task, screenshot="clerk-02-task-list.png" if position == 0 else None,
                           on_list=check_light_badges)
        reviewer.complete({f"{department}_approved": True, f"{department}_opinion": f"{department}：同意"})
    for task in ("medical_insurance", "housing_fund", "bank_account"):
        department = BRANCHES[task]
        reviewer = clerk(f"{department}1")
        reviewer.open_task(task)
        reviewer.complete({f"{department}_approved": True, f"{department}_opinion": f"{department}：同意"})

    # 退回: at consolidation the lead sends 申领发票和税务UKey back to 税务局 with the send-back form.
    scjgj.open_task("consolidate")
    form = scjgj.page.locator("form#send-back-form")
    target = form.locator("select[name='target'] option", has_text="申领发票和税务UKey").first.get_attribute("value")
    form.locator("select[name='target']").select_option(target)
    form.locator("textarea[name='reason']").fill("发票票种核定有误，请重新核定")
    scjgj.page.click("button#send-back")
    scjgj.page.wait_for_load_state()
    swj = clerk("swj1")
    swj.open_task("tax_invoice")
    swj.complete({"swj_approved": True, "swj_opinion": "已重新核定票种", "tax_ukey_issued": True})

    # 办结: consolidation approves, the window hands everything over.
    scjgj.open_task("consolidate")
    scjgj.complete({"consolidation_decision": "approve", "consolidation_opinion": "各事项办结，统一出件"})
    window.open_task("handover")
    window.complete({"licence_delivered": True, "collected_by": "李明"})

    # The case page: header, the diagram drawn with every finished step marked, the 退回 in the timeline.
    page = window.page
    page.goto(server + f"/cases/{case_id}")
    page.wait_for_selector("#case-diagram[data-rendered='true'] svg")
    assert page.locator("#case-no").inner_text().strip() == case_no
    assert page.locator("#case-applicant").inner_text().strip() == "杭州云杉科技有限公司"
    assert page.locator("#case-status").inner_text().startswith("已办结")
    for step in FINISHED_STEPS:
        assert page.locator(f".djs-element.step-completed[data-element-id='{step}']").count() == 1, step
    assert page.locator(".djs-element.step-active").count() == 0
    assert page.locator(".timeline li[data-event='task_sent_back']").count() == 1
    assert "发票票种核定有误" in page.locator(".timeline li[data-event='task_sent_back']").inner_text()
    assert page.locator("tr[data-step='tax_invoice']").count() == 2
    window.shot("clerk-04-case-page.png")

    # The printed notices: number, applicant and the QR code that leads to the public query.
    for kind, title, name in (("acceptance", "受理通知书", "clerk-05-notice-acceptance.png"),
                              ("completion", "办结通知书", "clerk-06-notice-completion.png")):
        page.click(f"a[data-notice='{kind}']")
        page.wait_for_selector("article.notice")
        assert page.locator("h1").inner_text().replace(" ", "") == title
        assert page.locator(".notice-case-no").inner_text().strip() == case_no
        assert page.locator(".notice-applicant").inner_text().strip() == "杭州云杉科技有限公司"
        assert page.locator(".verify svg.qr path").count() >= 1
        assert "/public/cases/query?code=" in page.locator(".verify .url").inner_text()
        window.shot(name)
        page.goto(server + f"/cases/{case_id}")

    for opened in clerks.values():
        opened.close()
    assert {"clerk-01-login.png", "clerk-02-task-list.png", "clerk-03-task-page.png", "clerk-04-case-page.png",
            "clerk-05-notice-acceptance.png", "clerk-06-notice-completion.png"} <= set(shots)


def check_light_badges(page) -> None:
    rows = page.locator("tr[data-task-id]")
    assert rows.count() >= 1
    for index in range(rows.count()):
        row = rows.nth(index)
        light = row.get_attribute("data-light")
        assert light in LIGHT_LABELS, light
        assert row.locator(".light").first.inner_text().strip() == LIGHT_LABELS[light]


def test_a_lead_adds_and_removes_a_countersigner_on_the_joint_survey(server, browser, db_config):
    """加签/减签 through the task page of 联合踏勘 (工程建设项目), then the case page's timeline."""
    from engine import accounts, runtime
    from tests.processes.harness import guide_of, materials
    db = Database(db_config)
    case = runtime.start_case(db, "construction_project", {"applicant": "杭州滨江科创置业有限公司"}, "window1")
    intake = [t for t in worklist_of(db, "window1") if t["instance_id"] == case["id"]][0]
    runtime.complete(db, intake["id"], accounts.get_user(db, "window1"), {
        "project_name": "滨江科创园二期", "project_code": "2026-330108-47-01-000123",
        "applicant": "杭州滨江科创置业有限公司", "project_kind": "enterprise", "investment": 58000, "land_area": 42000,
        "building_area": 126000, "major_project": False, "road_impact": False, "intake_decision": "accept",
        **materials(guide_of("construction_project"), {"review_project_approval", "review_land_siting",
                                                        "review_land_use_permit", "review_eia", "review_soil_water"})})
    db.dispose()

    shots: list[str] = []
    lead = Clerk(browser, server, "ghj1", shots).login()      # 规划局's lead holds one copy of the survey
    lead.open_task("s1_survey")
    page = lead.page
    panel = page.locator("section#countersign")
    assert panel.locator("tr[data-copy]").count() == 4
    form = page.locator("form#countersign-add-form")
    form.locator("select[name='department']").select_option(label="发展改革委")
    form.locator("textarea[name='reason']").fill("选址涉及立项，请发改委一同踏勘")
    page.click("button#add-countersigner")
    page.wait_for_load_state()
    assert "已加签" in page.locator(".flash").first.inner_text()
    assert panel.locator("tr[data-copy]").count() == 5 and "发展改革委" in panel.locator("table").inner_text()
    lead.shot("countersign-01-added.png")

    form = page.locator("form#countersign-remove-form")
    form.locator("select[name='copy']").select_option(label="水务局")
    form.locator("textarea[name='reason']").fill("本项目不涉及水土保持")
    page.click("button#remove-countersigner")
    page.wait_for_load_state()
    assert "已减签" in page.locator(".flash").first.inner_text()
    assert panel.locator("tr[data-copy]").count() == 4 and "水务局" not in panel.locator("table").inner_text()
    lead.shot("countersign-02-removed.png")

    fgw = Clerk(browser, server, "fgw1", shots).login()
    fgw.open_task("s1_survey")                               # the new copy waits in 发展改革委's list
    swuj = Clerk(browser, server, "swuj1", shots).login()
    swuj.page.goto(server + "/tasks")
    assert swuj.page.locator("tr[data-bpmn-id='s1_survey']").count() == 0

    page.goto(server + f"/cases/{case['id']}")
    added = page.locator(".timeline li[data-event='countersigner_added']")
    removed = page.locator(".timeline li[data-event='countersigner_removed']")
    assert "加签：发展改革委" in added.inner_text() and "选址涉及立项" in added.inner_text()
    assert "减签：水务局" in removed.inner_text() and "不涉及水土保持" in removed.inner_text()
    lead.shot("countersign-03-timeline.png")
    for opened in (lead, fgw, swuj):
        opened.close()


def worklist_of(db, username: str) -> list[dict]:
    from engine import accounts, worklist
    return worklist.list_tasks(db, accounts.get_user(db, username), limit=500)
