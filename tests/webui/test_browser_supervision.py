"""The supervision board in headless Chromium against a real HTTP server: counts, colours, and a red item arriving live."""
from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from engine import accounts, lights, runtime, seed, worklist
from engine.seed import demo_password
from engine.store import Database
from tests.conftest import deploy_text
from webui import create_app
from webui.auth import DB_EXTENSION

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-output" / "screenshots"
LIMITS = (REPO / "tests" / "fixtures" / "bpmn" / "time_limits.bpmn").read_text(encoding="utf-8")
RED = "rgb(198, 40, 40)"


@pytest.fixture
def setup(db_config):
    db = Database(db_config)
    seed.seed_demo(db)
    deploy_text(db, "time_limits.bpmn", LIMITS)
    app = create_app({"ENGINE_CONFIG": db_config, "SUPERVISION_REFRESH_SECONDS": 1})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield db, f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(timeout=10)
    app.extensions[DB_EXTENSION].dispose()
    db.dispose()


def accepted_case(db) -> dict:
    window1 = accounts.get_user(db, "window1")
    case = runtime.start_case(db, "time_limits", {"applicant": "监察测试公司"}, "window1")
    intake = next(t for t in worklist.list_tasks(db, window1) if t["instance_id"] == case["id"])
    runtime.complete(db, intake["id"], window1, {"decision": "accept"})
    return case


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_board_renders_counts_and_colours_and_shows_a_new_red_item_without_reloading(setup, browser):
    db, base = setup
    first = accepted_case(db)
    context = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
    context.set_default_timeout(15000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base + "/login")
    page.fill("#username", "supervisor1")
    page.fill("#password", demo_password("supervisor1"))
    page.click("form button[type=submit]")
    page.wait_for_load_state()
    page.goto(base + "/supervision")

    green = page.locator('.board-total[data-kind="tasks"] [data-light="green"] .count')
    assert green.inner_text() == "2"          # the case's gaj and swj steps, both in time
    assert page.locator('.board-total[data-kind="cases"] [data-light="green"] .count').inner_text() == "1"
    assert page.locator("#board-red tbody tr.red-item").count() == 0
    assert page.locator('.board-total[data-kind="tasks"] .light.red').evaluate(
        "node => getComputedStyle(node).backgroundColor") != "rgba(0, 0, 0, 0)"
    shot(page, "supervision-board-green.png")
    page.evaluate("window.__sameDocument = true")

    # A second case arrives and the light sweep runs "a month later": everything open turns red.
    second = accepted_case(db)
    assert lights.sweep_lights(db, now=db.config.now() + timedelta(days=30)) > 0

    page.wait_for_selector(f'#board-red tr.red-item[data-kind="case"][data-case-id="{second["id"]}"]')
    assert page.evaluate("window.__sameDocument") is True        # refreshed in place, not reloaded
    assert page.locator('.board-total[data-kind="tasks"] [data-light="red"] .count').inner_text() == "4"
    assert page.locator('.board-total[data-kind="cases"] [data-light="red"] .count').inner_text() == "2"
    assert page.locator('#board-departments tr[data-department="gaj"] td[data-light="red"]').inner_text() == "2"
    row = page.locator(f'#board-red tr.red-item[data-kind="case"][data-case-id="{first["id"]}"]')
    assert int(page.locator("#board").get_attribute("data-refreshed")) >= 1
    shot(page, "supervision-board-red.png")

    row.locator("a").click()
    page.wait_for_load_state()
    assert page.url.endswith(f"/cases/{first['id']}")
    assert errors == []
    context.close()


def test_statistics_page_draws_its_charts(setup, browser):
    db, base = setup
    accepted_case(db)
    context = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base + "/login")
    page.fill("#username", "supervisor1")
    page.fill("#password", demo_password("supervisor1"))
    page.click("form button[type=submit]")
    page.wait_for_load_state()
    page.goto(base + "/supervision/statistics")
    for chart in ("chart-trend", "chart-departments", "chart-lights"):
        page.wait_for_selector(f'#{chart}[data-rendered="true"] canvas')
    assert page.locator('tr[data-figure="received"] td').inner_text() == "1"
    shot(page, "supervision-statistics.png")
    assert errors == []
    context.close()
