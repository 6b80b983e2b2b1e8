"""The designer in headless Chromium: Chinese modeler, a time limit changed in the panel, deploy, diff, migration."""
from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from werkzeug.serving import make_server

from engine import accounts, deploy, seed, versions
from engine.seed import demo_password
from engine.store import Database
from tests.processes.conftest import at
from tests.processes.harness import Case
from tests.processes.test_enterprise_startup import application
from webui import create_app
from webui.auth import DB_EXTENSION

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-output" / "screenshots"
KEY = "enterprise_startup"


@pytest.fixture
def clock():
    """Monday 2026-03-02 at the service centre, frozen; the server thread reads the same clock."""
    with time_machine.travel(at("2026-03-02 09:00"), tick=False) as traveller:
        yield traveller


@pytest.fixture
def running_case(db_config, clock):
    """Demo organisation, the shipped flows, and one 企业开办 case waiting at registration since 09:10."""
    db = Database(db_config)
    seed.seed_demo(db)
    deploy.deploy(db, deploy.read_paths([REPO / "processes"]), "admin")
    clerks = {"window": accounts.get_user(db, "window1"), "scjgj": accounts.get_user(db, "scjgj1")}
    case = Case.start(db, clerks, KEY, {"enterprise_name": "杭州云杉科技有限公司"})
    clock.move_to(at("2026-03-02 09:10"))
    case.complete("intake", "window", **application())
    assert datetime.fromisoformat(case.task("registration", "scjgj")["due_at"]) == at("2026-03-02 14:40")
    clock.move_to(at("2026-03-02 11:00"))
    yield db, case
    db.dispose()


@pytest.fixture
def server(db_config, running_case):
    # The browser's own clock is real while the server's is frozen in March: keep the session cookie alive.
    app = create_app({"ENGINE_CONFIG": db_config, "PERMANENT_SESSION_LIFETIME": timedelta(days=3650)})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(timeout=10)
    app.extensions[DB_EXTENSION].dispose()


@pytest.fixture
def designer(browser, server):
    """designer1's page, logged in through the login form, in Chinese."""
    context = browser.new_context(locale="zh-CN", viewport={"width": 1500, "height": 950}, accept_downloads=True)
    context.set_default_timeout(20000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server + "/login")
    page.fill("#username", "designer1")
    page.fill("#password", demo_password("designer1"))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))
    page.base = server
    yield page
    context.close()
    assert errors == [], errors


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"designer-{name}.png"), full_page=True)


def open_modeler(page, path: str) -> None:
    page.goto(page.base + path)
    page.wait_for_selector("body[data-modeler-ready=true]")
    page.wait_for_function("() => document.body.dataset.lintErrors !== undefined")


def select(page, element_id: str) -> None:
    """Click the element on the canvas, as a designer would."""
    page.locator(f'.djs-element[data-element-id="{element_id}"] .djs-hit').first.click(force=True)
    page.wait_for_selector(f'.bio-properties-panel-header-label:text-is("{element_name(page, element_id)}")')


def element_name(page, element_id: str) -> str:
    return page.evaluate("(id) => window.approvalsModeler.get('elementRegistry').get(id).businessObject.name || ''",
                         element_id)


def open_group(page, group_id: str) -> None:
    header = page.locator(f'[data-group-id="group-{group_id}"] .bio-properties-panel-group-header')
    if "open" not in (header.get_attribute("class") or ""):
        header.click()


def saved_xml(page) -> str:
    return page.evaluate("async () => (await window.approvalsModeler.saveXML({ format: true })).xml")


def test_a_designer_shortens_limits_deploys_version_2_sees_the_diff_and_migrates_the_case(designer, running_case):
    _db, case = running_case
    page = designer
    open_modeler(page, f"/designer/{KEY}/edit")
    labels = page.eval_on_selector_all(".djs-palette .entry", "nodes => nodes.map(n => n.getAttribute('title') || n.getAttribute('aria-label'))")
    for expected in ("启用抓手工具", "创建开始事件", "创建网关", "创建任务", "创建池/参与者"):
        assert expected in labels, labels
    assert page.locator("#deploy").inner_text() == "部署"
    shot(page, "1-modeler-zh")

    # The registration's time limit: 4 → 2 working hours, in our own "审批设置" group of the panel.
    select(page, "registration")
    open_group(page, "approvals")
    amount = page.locator("#bio-properties-panel-approvals-limit-amount")
    assert amount.input_value() == "4"
    assert page.locator("#bio-properties-panel-approvals-limit-unit").input_value() == "workhours"
    assert page.locator("#bio-properties-panel-approvals-limit-kind").input_value() == "escalation"
    assert page.locator("#bio-properties-panel-approvals-department").input_value() == "scjgj"
    assert page.locator('[data-group-id="group-approvals"] .bio-properties-panel-group-header-title').inner_text() == "审批设置"
    # Camunda's own groups stay reachable: the form fields of camunda:formData among them.
    assert page.locator('.bio-properties-panel-group-header-title:text-is("表单字段")').count() == 1
    amount.fill("2")
    amount.press("Tab")
    page.wait_for_function("async () => (await window.approvalsModeler.saveXML()).xml.includes('workhours(2)')")
    shot(page, "2-time-limit-in-panel")

    # The flow's committed limit: 2 → 1 working day, on the pool (its name band, once panned clear of the palette).
    page.evaluate("() => window.approvalsModeler.get('canvas').scroll({ dx: 160, dy: 0 })")
    pool = page.locator('.djs-element[data-element-id="Participant_enterprise_startup"]').bounding_box()
    band = 30 * page.evaluate("() => window.approvalsModeler.get('canvas').zoom()")   # bpmn-js: 30 units wide
    page.mouse.click(pool["x"] + band / 2, pool["y"] + pool["height"] / 2)
    page.wait_for_selector('.bio-properties-panel-header-label:text-is("政务服务中心·企业开办专区")')
    open_group(page, "approvals")
    committed = page.locator("#bio-properties-panel-approvals-committed")
    assert committed.input_value() == "workdays(2)"
    committed.fill("workdays(1)")
    committed.press("Tab")
    page.wait_for_function("async () => (await window.approvalsModeler.saveXML()).xml.includes('\"workdays(1)\"')")
    boundary = re.search(r'<bpmn:boundaryEvent id="registration_limit".*?</bpmn:boundaryEvent>', saved_xml(page), re.DOTALL)
    assert 'cancelActivity="false"' in boundary.group(0)
    assert '<bpmn:timeDuration xsi:type="bpmn:tFormalExpression">workhours(2)</bpmn:timeDuration>' in boundary.group(0)
    assert page.evaluate("() => document.body.dataset.lintErrors") == "0"

    page.click("#deploy")
    page.wait_for_url(re.compile(rf".*/designer/{KEY}\?from=1&to=2$"))
    page.wait_for_selector("body[data-diff-ready=true]")
    assert page.locator('tr[data-version="2"]').get_attribute("data-state") == "current"
    assert page.locator('tr[data-version="1"]').get_attribute("data-running") == "1"
    assert "已部署 enterprise_startup，第 2 版。" in page.locator(".flash").first.inner_text()
    changed = page.locator('#diff-list tr[data-kind="changed"]').evaluate_all("rows => rows.map(r => r.dataset.elementId)")
    assert set(changed) == {"enterprise_startup", "TimerEventDefinition_registration_limit"}
    marked_new = json.loads(page.locator("#diff-new").get_attribute("data-marked"))
    assert marked_new["registration_limit"] == "diff-changed"
    assert page.locator('#diff-new .djs-element.diff-changed[data-element-id="registration_limit"]').count() == 1
    shot(page, "3-version-2-diff")

    page.click(f'a[href="/designer/{KEY}/migrate"]')
    page.select_option("#migrate-from", "1")
    page.select_option("#migrate-to", "2")
    page.click("#migrate-choose button[type=submit]")
    row = page.locator(f'tr[data-case-id="{case.id}"]')
    assert row.get_attribute("data-movable") == "true"
    assert "2026-03-02 14:40 → 2026-03-02 11:10" in row.locator('li[data-bpmn-id="registration"]').inner_text()
    shot(page, "4-migration-preview")
    page.click("#migrate-all")
    page.wait_for_selector("body[data-migration-done=true]")
    assert page.locator("#migrate-progress").get_attribute("value") == "1"
    assert row.get_attribute("data-migrated") == "true"
    assert "2026-03-02 14:40 → 2026-03-02 11:10" in row.locator(".migrated-step").inner_text()
    shot(page, "5-migrated")

    # The engine agrees: the step's deadline counts the 1 h 50 min already worked against the new 2 hours,
    # and the case is due at the close of the first working day after it started.
    instance = case.instance()
    assert instance["version"] == 2
    assert datetime.fromisoformat(case.task("registration", "scjgj")["due_at"]) == at("2026-03-02 11:10")
    assert datetime.fromisoformat(instance["due_at"]) == at("2026-03-03 17:30")


def test_lint_blocks_deploying_and_server_problems_show_on_the_diagram(designer, running_case, tmp_path):
    page = designer
    # Both shipped flows pass every rule as they are (warnings only).
    open_modeler(page, "/designer/construction_project/edit")
    assert page.evaluate("() => document.body.dataset.lintErrors") == "0"
    open_modeler(page, f"/designer/{KEY}/edit")

    # A department review without a time limit is a project lint error: deploy is refused.
    select(page, "seal_filing")
    open_group(page, "approvals")
    page.select_option("#bio-properties-panel-approvals-limit-kind", "none")
    # (Removing the timer also strands its 超时默许 script: bpmnlint's own rules count that too.)
    page.wait_for_function("() => Number(document.body.dataset.lintErrors) > 0")
    assert page.locator("#deploy").is_disabled()
    errors = page.evaluate("() => document.body.dataset.lintErrors")
    assert page.locator("#lint-count").inner_text() == f"部署前须修正 {errors} 个问题"
    issue = page.locator('li.error[data-rule$="review-time-limit"] .message').first
    assert issue.text_content() == "部门审查缺少办理时限：请在“审批设置”中填写时限"
    shot(page, "6-lint-blocks-deploy")

    # Giving it a limit again draws a new boundary timer on the task and clears that rule.
    page.select_option("#bio-properties-panel-approvals-limit-kind", "escalation")
    page.wait_for_function("() => !document.querySelector('li.error[data-rule$=\"review-time-limit\"]')")
    attached = page.evaluate("""() => window.approvalsModeler.get('elementRegistry').get('seal_filing').attachers
        .map((b) => [b.businessObject.cancelActivity, b.businessObject.eventDefinitions[0].timeDuration.body])""")
    assert attached == [[False, "workdays(1)"]]

    # A file with a service task passes bpmnlint but not the server: the problem lands on that element.
    source = versions.get_version(running_case[0], KEY, 1)["xml"]
    start = source.index('<bpmn:userTask id="handover"')
    end = source.index("</bpmn:userTask>", start)
    broken = (source[:start] + source[start:end].replace("<bpmn:userTask", "<bpmn:serviceTask", 1)
              + "</bpmn:serviceTask>" + source[end + len("</bpmn:userTask>"):])
    upload = tmp_path / "broken.bpmn"
    upload.write_text(broken, encoding="utf-8")
    page.set_input_files("#import-file", str(upload))
    page.wait_for_function("async () => (await window.approvalsModeler.saveXML()).xml.includes('serviceTask')")
    page.wait_for_function("() => document.body.dataset.lintErrors === '0'")
    page.click("#deploy")
    badge = page.locator('.server-problem-badge[data-element-id="handover"]')
    badge.wait_for()
    assert badge.get_attribute("title") == "不支持服务任务；请改为用户任务或 Python 脚本任务。"
    assert "流程图未部署：有 1 个问题" in page.locator("#designer-status").inner_text()
    assert "handover: 不支持服务任务" in page.locator("#problems").inner_text()
    shot(page, "7-server-problem-on-element")
    assert [v["version"] for v in versions.list_versions(running_case[0], KEY)] == [1]

    with page.expect_download() as download:
        page.click("#export")
    assert download.value.suggested_filename == f"{KEY}.bpmn"
    assert "serviceTask" in Path(download.value.path()).read_text(encoding="utf-8")
