"""The clerk's task pages over HTTP (CSRF on, as in production): lists, the task page, every action, permissions, files."""
from __future__ import annotations

import hashlib
import html
import io
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from sqlalchemy import select

from engine import lights, worklist
from engine.accounts import create_user
from engine.store import attachment, audit_event, human_task
from tests.engine.test_tasklists import KEY, at, deploy_flow, open_ids, start_reviewed
from tests.webui.conftest import PASSWORDS
from webui import create_app
from webui.auth import DB_EXTENSION

WEBUI = Path(__file__).resolve().parents[2] / "webui"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
# The org fixture's users, and those some tests here add.
PASSWORDS = {**PASSWORDS, "gajlead": "gaj-lead-1", "both1": "both-pass-1", "rsj1": "rsj-pass-1"}


@dataclass
class Clerk:
    """One logged-in browser: its own cookies and the CSRF token of its session."""

    client: object
    token: str

    def get(self, url: str, **kwargs):
        return self.client.get(url, **kwargs)

    def post(self, url: str, data: dict | None = None, token: bool = True, **kwargs):
        form = {"csrf_token": self.token} if token else {}
        form.update(data or {})
        return self.client.post(url, data=form, **kwargs)


@pytest.fixture
def clock():
    import time_machine
    with time_machine.travel(at("2026-03-02 09:00"), tick=False) as traveller:
        yield traveller


@pytest.fixture
def login(app, org, clock):
    def as_user(username: str) -> Clerk:
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        response = client.post("/login", data={"username": username, "password": PASSWORDS[username],
                                               "csrf_token": CSRF.search(page).group(1)})
        assert response.status_code == 302, response.get_data(as_text=True)
        # Logging in starts a new session, so the form token comes from a page seen after it (every page's
        # header has one; the home page works for users without a department too).
        return Clerk(client, CSRF.search(client.get("/").get_data(as_text=True)).group(1))

    return as_user


@pytest.fixture
def case(db, org, clock):
    """One case accepted at the window: its 公安局 and 税务局 reviews are open."""
    deploy_flow(db)
    return start_reviewed(db, org, "杭州云杉科技有限公司")


def task_row(db, task_id: int) -> dict:
    with db.read() as conn:
        return dict(conn.execute(select(human_task).where(human_task.c.id == task_id)).mappings().one())


def events(db, **where) -> list[dict]:
    with db.read() as conn:
        query = select(audit_event).order_by(audit_event.c.id)
        for column, value in where.items():
            query = query.where(getattr(audit_event.c, column) == value)
        return [dict(r) for r in conn.execute(query).mappings()]


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def flashes(clerk: Clerk, url: str = "/tasks") -> list[str]:
    page = clerk.get(url).get_data(as_text=True)
    return [html.unescape(m) for m in re.findall(r'<p class="flash [^"]*"[^>]*>([^<]*)</p>', page)]


# ---- lists ------------------------------------------------------------------------------------------

def test_the_list_shows_the_departments_tasks_with_their_light_and_time_left(db, case, login):
    gaj1 = login("gaj1")
    page = text_of(gaj1.get("/tasks"))
    rows = re.findall(r'<tr data-task-id="(\d+)" data-bpmn-id="([^"]+)" data-light="([^"]*)">', page)
    assert rows == [(str(case["review_gaj"]), "review_gaj", "green")]
    assert f'href="/tasks/{case["review_gaj"]}"' in page
    assert case["case"]["case_no"] in page and "杭州云杉科技有限公司" in page and "任务列表测试流程" in page
    assert "公安局审查" in page and "2026-03-04 17:30" in page and "剩余 3.0 个工作日" in page
    assert '<span class="light green">正常</span>' in page and "未签收" in page
    assert '<html lang="zh-CN">' in page and "共 1 件，第 1 / 1 页" in page


def test_filters_search_and_pages_return_the_right_rows(db, org, case, login, clock, monkeypatch):
    from engine import tasklists
    more = []
    for moment, name in [("2026-03-02 14:00", "宁波星河贸易有限公司"), ("2026-03-03 09:30", "杭州青禾餐饮有限公司")]:
        clock.move_to(at(moment))
        more.append(start_reviewed(db, org, name))
    clock.move_to(at("2026-03-04 16:00"))
    lights.sweep_lights(db)
    create_user(db, "both1", "both-pass-1", "两部门", ["gaj", "swj"], ["clerk"])
    clerk = login("both1")

    def ids(url: str) -> list[int]:
        response = clerk.get(url)
        assert response.status_code == 200, url
        return [int(i) for i in re.findall(r'<tr data-task-id="(\d+)"', response.get_data(as_text=True))]

    gaj = [case["review_gaj"], more[0]["review_gaj"], more[1]["review_gaj"]]
    swj = [case["review_swj"], more[0]["review_swj"], more[1]["review_swj"]]
    # swj reviews have 4 working hours: all three are past due; gaj reviews have 2 working days.
    assert ids("/tasks") == swj + gaj
    assert ids("/tasks?department=gaj") == gaj
    assert ids("/tasks?overdue=1") == swj == ids("/tasks?light=red")
    assert ids("/tasks?light=yellow") == gaj[:2]            # due at 17:30 today: less than a working day left
    assert ids("/tasks?light=green") == gaj[2:]
    assert ids("/tasks?due_within=0") == swj + gaj[:2]
    assert ids("/tasks?q=杭州") == [case["review_swj"], more[1]["review_swj"], case["review_gaj"], more[1]["review_gaj"]]
    assert ids(f"/tasks?q={more[0]['case']['case_no']}") == [more[0]["review_swj"], more[0]["review_gaj"]]
    assert ids(f"/tasks?process={KEY}&department=swj&sort=-due") == swj[::-1]
    assert ids("/tasks?process=other_flow") == []
    monkeypatch.setattr(tasklists, "PAGE_SIZE", 4)
    first, second = clerk.get("/tasks").get_data(as_text=True), clerk.get("/tasks?page=2").get_data(as_text=True)
    assert "共 6 件，第 1 / 2 页" in first and 'href="/tasks?page=2"' in first
    assert ids("/tasks") + ids("/tasks?page=2") == swj + gaj
    assert "上一页" in second and "下一页" not in second


def test_bad_filters_come_back_next_to_their_fields_with_what_was_typed(db, case, login):
    gaj1 = login("gaj1")
    response = gaj1.get("/tasks?due_within=abc&light=blue&department=swj&q=杭州")
    page = text_of(response)
    assert response.status_code == 400
    assert '<p class="field-error" id="error-due_within">请填写 0 至 60 之间的整数工作日。</p>' in page
    assert '<p class="field-error" id="error-light">请选择一种亮灯状态。</p>' in page
    assert 'value="abc"' in page and 'value="杭州"' in page and "data-task-id" not in page
    response = gaj1.get("/tasks?department=swj")
    assert response.status_code == 400 and "这不是您所在的部门。" in text_of(response)


def test_the_done_list_shows_what_the_clerk_handled(db, case, login):
    gaj1 = login("gaj1")
    assert "您还没有办理过任务。" in text_of(gaj1.get("/tasks/done"))
    gaj1.post(f"/tasks/{case['review_gaj']}/complete", {"gaj_opinion": "同意", "_booleans": "gaj_approved",
                                                        "gaj_approved": "true"})
    page = text_of(gaj1.get("/tasks/done"))
    assert f'data-task-id="{case["review_gaj"]}"' in page and "已办理" in page and case["case"]["case_no"] in page


def test_english_is_available(db, case, login):
    gaj1 = login("gaj1")
    gaj1.get("/language/en")
    page = text_of(gaj1.get("/tasks"))
    assert "To do" in page and "Unclaimed" in page and "3.0 working days left" in page
    assert "Complete" in text_of(gaj1.get(f"/tasks/{case['review_gaj']}"))


# ---- the task page ----------------------------------------------------------------------------------

def test_the_task_page_shows_case_data_guide_form_and_the_page_contract(db, case, login):
    gaj1 = login("gaj1")
    page = text_of(gaj1.get(f"/tasks/{case['review_gaj']}"))
    assert "<h1>公安局审查</h1>" in page and case["case"]["case_no"] in page
    for label, value in [("申请人", "杭州云杉科技有限公司"), ("企业类型", "有限责任公司"), ("注册资本（万元）", "100"),
                         ("加急办理", "是"), ("成立日期", "2026-01-05"), ("备注", "材料齐全")]:
        assert f"<dt>{label}</dt><dd>{value}</dd>" in page, label
    for text in ("公章刻制备案", "《印铸刻字业治安管理办法》", "2个工作日", "5个工作日", "承诺件", "不收费",
                 "营业执照副本", "印章刻制申请表"):
        assert text in page, text
    assert f'<form id="task-form" method="post" action="/tasks/{case["review_gaj"]}/complete" novalidate>' in page
    assert re.search(r'<label for="field-gaj_opinion" class="required">公安审查意见</label>\s*'
                     r'<textarea id="field-gaj_opinion" name="gaj_opinion" rows="3" maxlength="500" required', page)
    assert '<input type="checkbox" id="field-gaj_approved" name="gaj_approved" value="true"' in page
    assert '<textarea id="opinion" name="opinion"' in page and '<label for="opinion">' in page
    assert '<button type="submit" id="complete">办理</button>' in page
    assert '<button type="submit" id="claim">签收</button>' in page
    assert 'id="send-back-form"' not in page and 'id="urge-form"' not in page   # a clerk, not a lead
    assert '<span class="light green">正常</span>' in page


def test_intake_form_has_every_field_type_with_its_constraints(db, org, login, clock):
    deploy_flow(db)
    from engine import runtime
    started = runtime.start_case(db, KEY, {}, "window1")
    window1 = login("window1")
    page = text_of(window1.get(f"/tasks/{open_ids(db, started['id'])['intake']}"))
    assert re.search(r'name="applicant" type="text" value="" maxlength="100" minlength="2" required', page)
    assert re.search(r'name="capital" type="number" step="1" inputmode="numeric"\s*value="" min="1" max="1000"', page)
    assert re.search(r'<select id="field-kind" name="kind" required aria-required="true">\s*<option value="">— 请选择 —'
                     r'</option>\s*<option value="llc">有限责任公司</option>', page)
    assert 'name="founded" type="date"' in page and '<input type="hidden" name="_booleans" value="urgent">' in page
    assert '<textarea id="field-note" name="note" rows="3" maxlength="500"' in page


def test_a_failed_submit_shows_messages_next_to_the_fields_and_keeps_what_was_typed(db, org, login, clock):
    deploy_flow(db)
    from engine import runtime
    started = runtime.start_case(db, KEY, {}, "window1")
    intake = open_ids(db, started["id"])["intake"]
    window1 = login("window1")
    before = len(events(db, instance_id=started["id"]))
    response = window1.post(f"/tasks/{intake}/complete", {
        "applicant": "杭", "capital": "abc", "kind": "", "founded": "2026-02-30", "note": "备注原文",
        "_booleans": "urgent", "urgent": "true", "opinion": "材料待核"})
    page = text_of(response)
    assert response.status_code == 422
    assert '<p class="field-error" id="error-applicant">至少填写 2 个字符。</p>' in page
    assert '<p class="field-error" id="error-capital">请填写整数。</p>' in page
    assert '<p class="field-error" id="error-kind">此项为必填项。</p>' in page
    assert '<p class="field-error" id="error-founded">请填写日期，例如 2026-12-01。</p>' in page
    assert 'aria-invalid="true" aria-describedby="error-applicant"' in page
    assert 'name="applicant" type="text" value="杭"' in page and 'value="abc"' in page
    assert 'value="2026-02-30"' in page and ">备注原文</textarea>" in page and ">材料待核</textarea>" in page
    assert re.search(r'name="urgent" value="true"\s*checked', page)
    assert "请更正下方标出的栏目。" in page and 'class="error-summary"' in page
    assert task_row(db, intake)["status"] == "open" and len(events(db, instance_id=started["id"])) == before
    # Numbers out of range are refused with their bounds.
    page = text_of(window1.post(f"/tasks/{intake}/complete", {"applicant": "杭州", "capital": "5000", "kind": "llc"}))
    assert '<p class="field-error" id="error-capital">请填写不大于 1000 的数。</p>' in page


def test_completing_stores_the_opinion_flashes_and_returns_to_the_list(db, case, login):
    gaj1 = login("gaj1")
    task = case["review_gaj"]
    response = gaj1.post(f"/tasks/{task}/complete", {"gaj_opinion": "准予备案", "_booleans": "gaj_approved",
                                                     "opinion": "经核查材料真实有效"})
    assert response.status_code == 302 and response.headers["Location"] == "/tasks"
    assert flashes(gaj1) == ["办理完成，办件已转入下一环节。"]
    done = [e for e in events(db, task_id=task) if e["type"] == "task_completed"]
    assert done[0]["data"]["values"] == {"gaj_opinion": "准予备案", "gaj_approved": False}
    assert done[0]["data"]["opinion"] == "经核查材料真实有效" and done[0]["actor"] == "gaj1"
    assert task_row(db, task)["status"] == "completed"


def test_every_action_appends_an_audit_event_and_flashes_chinese(db, org, case, login):
    create_user(db, "gajlead", "gaj-lead-1", "公安科长", ["gaj"], ["clerk", "lead"])
    gaj1, gaj2, lead = login("gaj1"), login("gaj2"), login("gajlead")
    task = case["review_gaj"]
    steps = [
        (gaj1, "claim", {}, "task_claimed", "已签收，此任务现由您办理。"),
        (gaj1, "unclaim", {}, "task_unclaimed", "已退签，此任务已退回本部门待办队列。"),
        (gaj1, "claim", {}, "task_claimed", "已签收，此任务现由您办理。"),
        (gaj1, "delegate", {"to": "gaj2", "reason": "外出"}, "task_delegated", "已委托 gaj2 代为办理，您可随时收回。"),
        (gaj1, "take-back", {}, "task_taken_back", "已收回委托，此任务由您办理。"),
        (lead, "urge", {"message": "今天下班前办结"}, "task_urged", "已催办，提醒已推送给当前经办人。"),
        (gaj1, "reassign", {"to": "gaj2", "reason": "分工调整"}, "task_reassigned", "已转办给 gaj2。"),
    ]
    for clerk, action, data, event, message in steps:
        before = len(events(db, task_id=task))
        response = clerk.post(f"/tasks/{task}/{action}", data)
        assert response.status_code == 302, (action, text_of(response))
        after = events(db, task_id=task)
        assert len(after) == before + 1 and after[-1]["type"] == event, action
        assert flashes(clerk) == [message], action
    assert task_row(db, task)["assignee"] == "gaj2" and task_row(db, task)["urge_count"] == 1
    page = text_of(gaj2.get(f"/tasks/{task}"))
    assert "已被催办 1 次" in page and '<button type="submit" id="unclaim" class="secondary">退签</button>' in page
    response = gaj2.post(f"/tasks/{task}/attachments",
                         {"file": (io.BytesIO(PDF), "营业执照副本.pdf"), "material_key": "licence"},
                         content_type="multipart/form-data")
    assert response.status_code == 302 and events(db, task_id=task)[-1]["type"] == "attachment_added"


def test_a_clerk_of_another_department_can_neither_see_nor_act(db, case, login):
    swj1 = login("swj1")
    task = case["review_gaj"]
    before_events, before_row = events(db), task_row(db, task)
    response = swj1.get(f"/tasks/{task}")
    assert response.status_code == 403 and "此任务属于其他部门。" in text_of(response)
    assert f'data-task-id="{task}"' not in swj1.get("/tasks").get_data(as_text=True)
    for action, data in [("claim", {}), ("unclaim", {}), ("complete", {"gaj_opinion": "越权"}),
                         ("delegate", {"to": "swj1"}), ("reassign", {"to": "swj1"}), ("take-back", {}),
                         ("send-back", {"target": str(open_ids(db, case["case"]["id"]).get("intake", 1)),
                                        "reason": "越权"}),
                         ("urge", {"message": "越权"})]:
        response = swj1.post(f"/tasks/{task}/{action}", data)
        assert response.status_code in (403, 404), (action, response.status_code)
    upload = swj1.post(f"/tasks/{task}/attachments", {"file": (io.BytesIO(PDF), "x.pdf")},
                       content_type="multipart/form-data")
    assert upload.status_code == 403
    assert events(db) == before_events and task_row(db, task) == before_row


def test_a_clerk_who_is_not_a_lead_cannot_send_back(db, case, login):
    gaj1 = login("gaj1")
    task = case["review_gaj"]
    intake = worklist.get_instance(db, case["case"]["id"])["tasks"][0]["id"]
    assert 'id="send-back-form"' not in gaj1.get(f"/tasks/{task}").get_data(as_text=True)
    before = events(db)
    response = gaj1.post(f"/tasks/{task}/send-back", {"target": str(intake), "reason": "想退回"})
    assert response.status_code == 403 and "只有科室负责人可以退回办件。" in text_of(response)
    assert events(db) == before and task_row(db, task)["status"] == "open"


def test_a_lead_sends_back_to_a_chosen_step_and_a_missing_reason_is_shown_at_the_field(db, case, login):
    create_user(db, "gajlead", "gaj-lead-1", "公安科长", ["gaj"], ["clerk", "lead"])
    lead = login("gajlead")
    task = case["review_gaj"]
    intake = worklist.get_instance(db, case["case"]["id"])["tasks"][0]["id"]
    page = text_of(lead.get(f"/tasks/{task}"))
    assert f'<form id="send-back-form" method="post" action="/tasks/{task}/send-back">' in page
    assert re.search(rf'<select id="send-back-target" name="target" required>\s*<option value="">— 请选择 —</option>\s*'
                     rf'<option value="{intake}">窗口受理', page)
    assert '<button type="submit" id="send-back" class="secondary">退回</button>' in page
    response = lead.post(f"/tasks/{task}/send-back", {"target": str(intake), "reason": "  "})
    page = text_of(response)
    assert response.status_code == 422 and '<p class="field-error" id="error-reason">请填写退回理由。</p>' in page
    assert f'<option value="{intake}" selected>' in page and task_row(db, task)["status"] == "open"
    response = lead.post(f"/tasks/{task}/send-back", {"target": str(intake), "reason": "申请人名称有误"})
    assert response.status_code == 302 and flashes(lead) == ["已退回至所选环节。"]
    assert task_row(db, task)["status"] == "sent_back"
    sent = [e for e in events(db, task_id=task) if e["type"] == "task_sent_back"]
    assert sent[0]["data"]["reason"] == "申请人名称有误" and sent[0]["actor"] == "gajlead"
    assert "intake" in open_ids(db, case["case"]["id"])


def test_csrf_rejects_forged_posts_and_nothing_changes(app, db, case, login):
    assert app.config.get("WTF_CSRF_ENABLED", True) is True     # the production setting, not switched off
    gaj1 = login("gaj1")
    task = case["review_gaj"]
    before_events, before_row = events(db), task_row(db, task)
    for data, token in [({}, False), ({"csrf_token": "forged"}, False)]:
        for action in ("claim", "complete"):
            response = gaj1.post(f"/tasks/{task}/{action}", {**data, "gaj_opinion": "伪造"}, token=token)
            assert response.status_code == 400 and "页面已过期" in text_of(response), action
    other = login("gaj2")   # a real token, but of another session
    response = gaj1.post(f"/tasks/{task}/claim", {"csrf_token": other.token}, token=False)
    assert response.status_code == 400
    assert events(db) == before_events and task_row(db, task) == before_row


def test_engine_refusals_become_messages_never_errors(db, case, login):
    gaj1, gaj2 = login("gaj1"), login("gaj2")
    task = case["review_gaj"]
    assert gaj2.post(f"/tasks/{task}/claim").status_code == 302
    response = gaj1.post(f"/tasks/{task}/claim")
    assert response.status_code == 302 and response.headers["Location"] == f"/tasks/{task}"
    assert flashes(gaj1) == ["此任务已被 gaj2 签收。"]
    page = text_of(gaj1.get(f"/tasks/{task}"))
    assert 'id="task-form"' not in page and "此任务由 公安二 签收，目前只能由其办理。" in page
    gaj2.post(f"/tasks/{task}/complete", {"gaj_opinion": "同意"})
    response = gaj1.post(f"/tasks/{task}/complete", {"gaj_opinion": "同意"})
    assert response.status_code == 302 and flashes(gaj1) == ["此任务已办结，办件已转入后续环节。"]
    response = gaj1.get("/tasks/999999")
    assert response.status_code == 404 and "它不存在，或者您无权查看。" in text_of(response)
    response = gaj1.post(f"/tasks/{task}/delegate", {"to": ""})
    assert response.status_code in (403, 422)


def test_delegate_to_nobody_is_refused_at_the_field(db, case, login):
    gaj1 = login("gaj1")
    task = case["review_gaj"]
    gaj1.post(f"/tasks/{task}/claim")
    response = gaj1.post(f"/tasks/{task}/delegate", {"to": "", "reason": "外出"})
    page = text_of(response)
    assert response.status_code == 422 and '<p class="field-error" id="error-to">请选择同事。</p>' in page
    assert 'id="delegate-reason" name="reason" maxlength="500" value="外出"' in page
    response = gaj1.post(f"/tasks/{task}/delegate", {"to": "nobody", "reason": ""})
    assert response.status_code == 422 and "没有在用的用户 nobody。" in text_of(response)


# ---- materials --------------------------------------------------------------------------------------

def upload(clerk: Clerk, task: int, name: str, content: bytes, material: str = ""):
    return clerk.post(f"/tasks/{task}/attachments", {"file": (io.BytesIO(content), name), "material_key": material},
                      content_type="multipart/form-data")


def stored(db) -> list[dict]:
    with db.read() as conn:
        return [dict(r) for r in conn.execute(select(attachment).order_by(attachment.c.id)).mappings()]


def docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", '<Types><Override ContentType="application/vnd.openxmlformats-'
                                                'officedocument.wordprocessingml.document.main+xml"/></Types>')
        archive.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


def test_uploads_are_checked_for_size_type_and_content(db, case, login):
    gaj1 = login("gaj1")
    task = case["review_gaj"]
    refused = [
        ("empty.pdf", b"", "文件为空。"),
        ("程序.exe", b"MZ\x90\x00", "不接受 .exe 类型的文件。"),
        ("伪装.pdf", b"MZ\x90\x00" + b"\x00" * 32, "文件内容与扩展名不符，不是真正的 .pdf 文件。"),
        ("图片.pdf", PNG, "文件内容与扩展名不符，不是真正的 .pdf 文件。"),
        ("archive.zip", b"PK\x03\x04" + b"\x00" * 40, "不接受 .zip 类型的文件。"),
        ("large.pdf", PDF + b"0" * (5 * 1024 * 1024), "文件过大（5.0 MB），最大允许 5.0 MB。"),
    ]
    for name, content, message in refused:
        response = upload(gaj1, task, name, content)
        page = text_of(response)
        assert response.status_code == 422, name
        assert f'<p class="field-error" id="error-file">{message}' in page, (name, re.findall(r'error-file">[^<]*', page))
    assert stored(db) == []
    response = upload(gaj1, task, "../../etc/营业执照副本.pdf", PDF, "licence")
    assert response.status_code == 302 and flashes(gaj1) == ["文件 营业执照副本.pdf 已上传至本办件。"]
    assert upload(gaj1, task, "申请表.docx", docx(), "seal_form").status_code == 302
    assert upload(gaj1, task, "照片.PNG", PNG).status_code == 302
    assert upload(gaj1, task, "x.pdf", PDF, "no_such_material").status_code == 422
    files = stored(db)
    assert [(f["filename"], f["content_type"], f["material_key"], f["uploaded_by"]) for f in files] == [
        ("营业执照副本.pdf", "application/pdf", "licence", "gaj1"),
        ("申请表.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "seal_form", "gaj1"),
        ("照片.PNG", "image/png", None, "gaj1")]
    assert files[0]["sha256"] == hashlib.sha256(PDF).hexdigest() and files[0]["size"] == len(PDF)
    page = text_of(gaj1.get(f"/tasks/{task}"))
    assert f'<a href="/attachments/{files[0]["id"]}">营业执照副本.pdf</a>' in page and "营业执照副本 ✓" in page


def test_a_macro_enabled_office_file_is_refused(db, case, login):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types>application/vnd.ms-word.document.macroEnabled.main+xml"
                                                "</Types>")
        archive.writestr("word/vbaProject.bin", b"\x00")
    response = upload(login("gaj1"), case["review_gaj"], "宏.docx", buffer.getvalue())
    assert response.status_code == 422 and stored(db) == []


def test_files_are_served_only_to_those_who_may_see_the_case(db, case, login, app):
    gaj1, swj1 = login("gaj1"), login("swj1")
    upload(gaj1, case["review_gaj"], "营业执照副本.pdf", PDF, "licence")
    file_id = stored(db)[0]["id"]
    response = gaj1.get(f"/attachments/{file_id}")
    assert response.status_code == 200 and response.data == PDF
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''%E8%90%A5%E4%B8%9A" in response.headers["Content-Disposition"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert swj1.get(f"/attachments/{file_id}").status_code == 200        # 税务局 works on this case too
    create_user(db, "rsj1", "rsj-pass-1", "人社一", ["rsj"], ["clerk"])
    assert login("rsj1").get(f"/attachments/{file_id}").status_code == 404
    assert app.test_client().get(f"/attachments/{file_id}").status_code == 302   # to the login page


def test_the_upload_limit_follows_the_configuration(db_config, db, case, login):
    small = create_app({"TESTING": True, "ENGINE_CONFIG": replace(db_config, max_upload_bytes=100)})
    try:
        client = small.test_client()
        page = client.get("/login").get_data(as_text=True)
        client.post("/login", data={"username": "gaj1", "password": PASSWORDS["gaj1"],
                                    "csrf_token": CSRF.search(page).group(1)})
        clerk = Clerk(client, CSRF.search(client.get("/tasks").get_data(as_text=True)).group(1))
        response = upload(clerk, case["review_gaj"], "a.pdf", PDF + b"0" * 100)
        assert response.status_code == 422 and "最大允许 0.1 KB" in text_of(response)
        assert upload(clerk, case["review_gaj"], "a.pdf", PDF).status_code == 302
    finally:
        small.extensions[DB_EXTENSION].dispose()


# ---- language ---------------------------------------------------------------------------------------

def test_every_text_of_the_task_pages_has_a_chinese_translation():
    with (WEBUI / "translations_tasks/zh/LC_MESSAGES/messages.po").open("rb") as handle:
        catalog = {m.id: m.string for m in read_po(handle) if m.id}
    used = set()
    sources = [("python", WEBUI / "tasks.py")] + [("jinja2", p) for p in (WEBUI / "templates/tasks").glob("*.html")]
    for method, path in sources:
        options = {"extensions": "jinja2.ext.i18n"} if method == "jinja2" else {}
        used |= {m if isinstance(m, str) else m[0] for _, m, _, _ in extract_from_file(method, str(path), options=options)}
    assert sorted(used - set(catalog)) == []
    assert sorted(m for m in used if not catalog.get(m)) == []


def test_every_control_on_the_task_pages_has_a_label(db, case, login):
    from html.parser import HTMLParser

    class Controls(HTMLParser):
        def __init__(self):
            super().__init__()
            self.labels, self.controls, self.open_labels = set(), [], 0

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "label":
                self.open_labels += 1
                self.labels.add(attrs.get("for"))
            elif tag in ("input", "select", "textarea") and attrs.get("type") not in ("hidden", "submit"):
                self.controls.append((attrs.get("id"), attrs.get("name"), self.open_labels > 0))

        def handle_endtag(self, tag):
            if tag == "label":
                self.open_labels -= 1

    create_user(db, "gajlead", "gaj-lead-1", "公安科长", ["gaj"], ["clerk", "lead"])
    lead = login("gajlead")
    lead.post(f"/tasks/{case['review_gaj']}/claim")
    for url in ("/tasks", "/tasks/done", f"/tasks/{case['review_gaj']}"):
        parser = Controls()
        parser.feed(lead.get(url).get_data(as_text=True))
        assert parser.controls, url
        unlabelled = [(i, n) for i, n, wrapped in parser.controls if not wrapped and i not in parser.labels]
        assert unlabelled == [], url


# ---- 加签 / 减签 --------------------------------------------------------------------------------------

@pytest.fixture
def countersign_case(db, org, clock):
    """A countersign of 公安局, 税务局 and 人社局 (tests/engine/test_countersign.py's flow), just started."""
    from engine import runtime
    from tests.conftest import deploy_text
    from tests.engine.test_countersign import countersign_xml
    create_user(db, "gajlead", "gaj-lead-1", "公安科长", ["gaj"], ["clerk", "lead"])
    create_user(db, "rsj1", "rsj-pass-1", "人社一", ["rsj"], ["clerk"])
    deploy_text(db, "countersign_review.bpmn", countersign_xml())
    case_id = runtime.start_case(db, "countersign_review", {"applicant": "杭州云杉科技有限公司"}, "window1")["id"]
    return {"id": case_id, **copies_of(db, case_id)}


def copies_of(db, case_id: int) -> dict:
    """department -> id of its latest copy of the countersign."""
    return {t["departments"][0]: t["id"] for t in worklist.get_instance(db, case_id)["tasks"] if t["bpmn_id"] == "sign"}


def test_a_lead_adds_and_removes_countersigners_on_the_task_page(db, countersign_case, login):
    lead, copy = login("gajlead"), countersign_case["gaj"]
    page = text_of(lead.get(f"/tasks/{copy}"))
    assert '<h2 id="countersign-heading">会签</h2>' in page
    assert re.findall(r'<tr data-copy="(\d+)"', page) == [str(countersign_case[d]) for d in ("gaj", "swj", "rsj")]
    assert f'<form id="countersign-add-form" method="post" action="/tasks/{copy}/countersigners">' in page
    choices = re.search(r'<select id="countersign-department" name="department" required>(.*?)</select>', page, re.S)[1]
    assert re.findall(r'<option value="(\w+)"', choices) == ["scjgj", "window", "ybj"]   # not those signing already
    assert re.search(rf'<option value="">— 请选择 —</option>\s*<option value="{copy}">公安局（本件）</option>', page)
    for control in ("countersign-department", "countersign-add-reason", "countersign-copy", "countersign-remove-reason"):
        assert f'<label for="{control}" class="required">' in page, control

    response = lead.post(f"/tasks/{copy}/countersigners", {"department": "", "reason": " "})
    page = text_of(response)
    assert response.status_code == 422
    assert '<p class="field-error" id="error-department">请选择部门。</p>' in page
    assert '<p class="field-error" id="error-reason">请填写原因。</p>' in page
    response = lead.post(f"/tasks/{copy}/countersigners", {"department": "swj", "reason": "再请税务"})
    assert response.status_code == 422 and "税务局 已在本次会签中。" in text_of(response)
    assert events(db, type="countersigner_added") == []

    response = lead.post(f"/tasks/{copy}/countersigners", {"department": "ybj", "reason": "涉及医保定点"})
    assert response.status_code == 302 and response.headers["Location"] == f"/tasks/{copy}"
    assert flashes(lead) == ["已加签，该部门的会签件已进入其待办。"]
    ybj = copies_of(db, countersign_case["id"])["ybj"]
    assert task_row(db, ybj)["status"] == "open"
    added = events(db, type="countersigner_added")
    assert [(e["actor"], e["task_id"], e["data"]["department"], e["data"]["reason"]) for e in added] == [
        ("gajlead", copy, "ybj", "涉及医保定点")]

    response = lead.post(f"/tasks/{copy}/countersigners/remove", {"copy": str(countersign_case["rsj"]), "reason": ""})
    assert response.status_code == 422 and '<p class="field-error" id="error-reason">请填写原因。</p>' in text_of(response)
    for chosen in ("x", ""):
        response = lead.post(f"/tasks/{copy}/countersigners/remove", {"copy": chosen, "reason": "不涉及"})
        page = text_of(response)
        assert response.status_code == 422 and '<p class="field-error" id="error-copy">请选择本次会签中的一个部门。</p>' in page
        assert "不涉及" in page     # what was typed stays
    response = lead.post(f"/tasks/{copy}/countersigners/remove", {"copy": str(countersign_case["rsj"]),
                                                                  "reason": "不涉及人社"})
    assert response.status_code == 302 and response.headers["Location"] == f"/tasks/{copy}"
    assert flashes(lead) == ["已减签，该部门的会签件已撤下。"]
    assert task_row(db, countersign_case["rsj"])["status"] == "removed"
    page = text_of(lead.get(f"/tasks/{copy}"))
    assert re.findall(r'<tr data-copy="(\d+)"', page) == [str(countersign_case[d]) for d in ("gaj", "swj")] + [str(ybj)]

    # Removing one's own copy leaves the page for the list; the case page tells the story.
    response = lead.post(f"/tasks/{copy}/countersigners/remove", {"copy": str(copy), "reason": "公安不再参加"})
    assert response.status_code == 302 and response.headers["Location"] == "/tasks"
    assert task_row(db, copy)["status"] == "removed"
    timeline = text_of(login("admin").get(f"/cases/{countersign_case['id']}"))
    assert "加签：医保局" in timeline and "减签：人社局" in timeline and "减签：公安局" in timeline
    assert "涉及医保定点" in timeline and "不涉及人社" in timeline


def test_a_clerk_sees_the_copies_but_cannot_add_or_remove(db, countersign_case, login):
    gaj1, copy = login("gaj1"), countersign_case["gaj"]
    page = text_of(gaj1.get(f"/tasks/{copy}"))
    assert 'id="countersign-heading"' in page and len(re.findall(r'<tr data-copy=', page)) == 3
    assert 'id="countersign-add-form"' not in page and 'id="countersign-remove-form"' not in page
    before = events(db)
    response = gaj1.post(f"/tasks/{copy}/countersigners", {"department": "ybj", "reason": "想加"})
    assert response.status_code == 403 and "只有参加本次会签的部门负责人或监察人员可以加签、减签。" in text_of(response)
    response = gaj1.post(f"/tasks/{copy}/countersigners/remove", {"copy": str(countersign_case["rsj"]), "reason": "x"})
    assert response.status_code == 403
    swj1 = login("swj1")   # another department's clerk cannot even open this copy
    assert swj1.post(f"/tasks/{copy}/countersigners", {"department": "ybj", "reason": "x"}).status_code == 403
    assert events(db) == before and set(copies_of(db, countersign_case["id"])) == {"gaj", "swj", "rsj"}


def test_countersign_refusals_become_messages(db, org, countersign_case, case, login):
    lead, admin = login("gajlead"), login("admin")
    swj1 = login("swj1")
    assert swj1.post(f"/tasks/{countersign_case['swj']}/complete", {"sign_opinion": "同意"}).status_code == 302
    # A signed copy stays.
    response = admin.post(f"/tasks/{countersign_case['gaj']}/countersigners/remove",
                          {"copy": str(countersign_case["swj"]), "reason": "撤回"})
    assert response.status_code == 302 and flashes(admin, "/cases") == ["该部门已会签，已签的会签件不能减签。"]
    # A step that is not a countersign has no 会签 panel, and the routes say so.
    review = case["review_gaj"]
    assert 'id="countersign-heading"' not in text_of(lead.get(f"/tasks/{review}"))
    response = admin.post(f"/tasks/{review}/countersigners", {"department": "ybj", "reason": "加签"})
    assert response.status_code == 302 and flashes(admin, "/cases") == ["“公安局审查”不是会签环节，不能加签或减签。"]
    # Removing the last unsigned copies finishes the countersign: the hand-over reaches the window.
    for department in ("rsj", "gaj"):
        response = admin.post(f"/tasks/{countersign_case['gaj']}/countersigners/remove",
                              {"copy": str(countersign_case[department]), "reason": "不涉及"})
        assert response.status_code == 302
    assert [t["bpmn_id"] for t in worklist.list_tasks(db, org["window1"])
            if t["instance_id"] == countersign_case["id"]] == ["handover"]
    # With nothing signed, the last copy stays.
    from engine import runtime
    other = runtime.start_case(db, "countersign_review", {}, "window1")["id"]
    copies = copies_of(db, other)
    for department in ("swj", "rsj"):
        admin.post(f"/tasks/{copies['gaj']}/countersigners/remove", {"copy": str(copies[department]), "reason": "x"})
        flashes(admin, "/cases")
    response = admin.post(f"/tasks/{copies['gaj']}/countersigners/remove", {"copy": str(copies["gaj"]), "reason": "最后一个"})
    assert response.status_code == 302 and response.headers["Location"] == f"/tasks/{copies['gaj']}"
    assert flashes(admin, "/cases") == ["会签至少要保留一个部门，最后一份会签件不能减签。"]
    assert task_row(db, copies["gaj"])["status"] == "open"
