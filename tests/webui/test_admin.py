"""Administration pages: departments, users, roles, membership, passwords, deactivation, the working-day calendar."""
from __future__ import annotations

import io
import re
from datetime import date

import pytest
from babel.messages.pofile import read_po

from engine import accounts, organisation, runtime, timekeeping, worklist
from engine.errors import NotFound
from tests.conftest import deploy_text

CATALOG = "webui/translations_admin/zh/LC_MESSAGES/messages.po"
ZH = {"Accept-Language": "zh-CN"}


def csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


def login(client, username: str, password: str) -> None:
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": csrf(client.get("/login").data)})
    assert response.status_code == 302, response.get_data(as_text=True)


@pytest.fixture
def admin_client(client, org):
    login(client, "admin", "admin-pass-1")
    return client


def post(client, path: str, data: dict | None = None, **kwargs):
    token = csrf(client.get("/admin").data)
    return client.post(path, data={"csrf_token": token, **(data or {})}, headers=ZH, follow_redirects=True, **kwargs)


def test_only_administrators_reach_the_admin_pages(client, org):
    assert client.get("/admin").status_code == 302
    login(client, "gaj1", "gaj-pass-1")
    for path in ("/admin", "/admin/users/gaj1", "/admin/calendar"):
        assert client.get(path).status_code == 403, path


def test_the_admin_page_lists_users_and_departments(admin_client):
    page = admin_client.get("/admin", headers=ZH).get_data(as_text=True)
    assert re.search(r'<tr data-username="gaj1" data-active="true">', page)
    assert re.search(r'<tr data-key="scjgj">\s*<td><code>scjgj</code></td><td>市场监管局</td><td>1</td>', page)
    assert "经办人" in page and "牵头部门" in page


def test_departments_are_added_and_renamed_and_clashes_are_explained(admin_client, db):
    response = post(admin_client, "/admin/departments", {"key": "gjj", "name": "公积金中心"})
    assert "已添加部门 公积金中心（gjj）" in response.get_data(as_text=True)
    post(admin_client, "/admin/departments/gjj/rename", {"name": "住房公积金管理中心"})
    assert {"key": "gjj", "name": "住房公积金管理中心"} in accounts.list_departments(db)
    clash = post(admin_client, "/admin/departments", {"key": "gjj2", "name": "住房公积金管理中心"})
    assert "部门 gjj2 或名为 住房公积金管理中心 的部门已存在。" in clash.get_data(as_text=True)
    assert [d["key"] for d in accounts.list_departments(db)].count("gjj2") == 0


def test_a_user_is_created_with_roles_and_departments_and_bad_input_names_the_field(admin_client, db):
    response = post(admin_client, "/admin/users", {"username": "rsj1", "name": "人社一", "password": "rsj-pass-1",
                                                   "roles": ["clerk", "lead"], "departments": ["rsj"]})
    assert "已创建用户 rsj1" in response.get_data(as_text=True)
    user = accounts.authenticate(db, "rsj1", "rsj-pass-1")
    assert user.roles == ("clerk", "lead") and user.departments == ("rsj",)
    refused = post(admin_client, "/admin/users", {"username": "x y", "password": "short"}).get_data(as_text=True)
    assert "用户名：请使用 1 到 64 个字母" in refused and "密码：至少 8 个字符" in refused
    with pytest.raises(NotFound):
        accounts.get_user(db, "x y")


def test_roles_and_membership_are_changed_on_the_user_page(admin_client, db):
    post(admin_client, "/admin/users/gaj2", {"name": "公安二（调岗）", "roles": ["clerk", "supervisor"],
                                             "departments": ["gaj", "swj"]})
    user = accounts.get_user(db, "gaj2")
    assert user.name == "公安二（调岗）" and user.roles == ("clerk", "supervisor")
    assert user.departments == ("gaj", "swj")
    page = admin_client.get("/admin/users/gaj2", headers=ZH).get_data(as_text=True)
    assert re.search(r'value="swj" checked', page) and re.search(r'value="supervisor" checked', page)


def test_a_password_is_reset_only_when_both_entries_match(admin_client, db):
    differ = post(admin_client, "/admin/users/swj1/password", {"password": "new-pass-123", "confirm": "other-pass"})
    assert "两次输入的密码不一致" in differ.get_data(as_text=True)
    post(admin_client, "/admin/users/swj1/password", {"password": "new-pass-123", "confirm": "new-pass-123"})
    assert accounts.authenticate(db, "swj1", "new-pass-123").username == "swj1"


def test_deactivating_a_user_returns_their_claimed_tasks_to_the_department(admin_client, db, org, fixtures_dir):
    deploy_text(db, "parallel_review.bpmn", (fixtures_dir / "bpmn" / "parallel_review.bpmn").read_bytes())
    key = worklist.list_processes(db)[0]["key"]
    runtime.start_case(db, key, {}, "window1")
    intake = worklist.list_tasks(db, org["window1"])[0]
    runtime.claim(db, intake["id"], org["window1"])
    response = post(admin_client, "/admin/users/window1/deactivate")
    assert "window1 已停用，不能再登录；其签收的 1 个任务已退回部门" in response.get_data(as_text=True)
    assert organisation.get_user(db, "window1")["active"] is False
    assert worklist.list_tasks(db, org["window1"])[0]["assignee"] is None
    post(admin_client, "/admin/users/window1/reactivate")
    assert accounts.get_user(db, "window1").username == "window1"
    myself = post(admin_client, "/admin/users/admin/deactivate")
    assert "不能停用自己。" in myself.get_data(as_text=True)
    assert organisation.get_user(db, "admin")["active"] is True


def test_the_calendar_shows_a_year_with_holidays_and_make_up_days(admin_client):
    page = admin_client.get("/admin/calendar?year=2026", headers=ZH).get_data(as_text=True)
    # 2026-10-01 National Day off; Saturday 2026-10-10 is a 调休 working day (see the domain brief).
    assert re.search(r'class="cal-holiday[^"]*"\s+data-date="2026-10-01" data-workday="false"', page)
    assert re.search(r'class="cal-makeup[^"]*"\s+data-date="2026-10-10" data-workday="true"', page)
    assert re.search(r'class="cal-workday[^"]*"\s+data-date="2026-10-09" data-workday="true"', page)
    assert admin_client.get("/admin/calendar?year=abc").status_code == 400


def test_next_years_schedule_is_loaded_from_a_file_and_the_year_becomes_covered(admin_client, db):
    before = admin_client.get("/admin/calendar?year=2027").get_data(as_text=True)
    assert re.search(r'data-date="2027-10-01" data-workday="true"', before)    # not loaded: a provisional weekday
    schedule = (b"year: 2027\nholidays:\n  - {from: 2027-10-01, to: 2027-10-07, name: \xe5\x9b\xbd\xe5\xba\x86\xe8\x8a\x82}\n"
                b"workdays: [2027-09-26, 2027-10-09]\n")
    response = post(admin_client, "/admin/calendar/schedule", {"schedule": (io.BytesIO(schedule), "2027.yaml")},
                    content_type="multipart/form-data")
    text = response.get_data(as_text=True)
    assert "已载入 2027 年：7 个节假日，2 个调休上班日" in text
    assert re.search(r'class="cal-holiday[^"]*"\s+data-date="2027-10-01" data-workday="false"', text)
    assert re.search(r'class="cal-makeup[^"]*"\s+data-date="2027-09-26" data-workday="true"', text)
    assert 2027 in [y["year"] for y in timekeeping.coverage(db)["loaded_years"]]
    broken = post(admin_client, "/admin/calendar/schedule", {"schedule": (io.BytesIO(b"holidays: []"), "x.yaml")},
                  content_type="multipart/form-data")
    assert "x.yaml：文件需要一行 `year: YYYY`" in broken.get_data(as_text=True)


def test_a_local_adjustment_closes_one_day(admin_client, db):
    response = post(admin_client, "/admin/calendar/day", {"date": "2026-06-15", "workday": "0",
                                                           "holiday_name": "本地停电", "note": "大楼检修"})
    assert "2026-06-15 现为休息日" in response.get_data(as_text=True)
    assert timekeeping.calendar_for(db).day(date(2026, 6, 15)).workday is False
    bad = post(admin_client, "/admin/calendar/day", {"date": "15/06/2026", "workday": "0"})
    assert "日期：&#39;15/06/2026&#39; 不是形如 2026-10-01 的日期" in bad.get_data(as_text=True)


def test_every_admin_message_is_translated_and_every_page_string_is_in_the_catalog():
    from babel.messages.extract import extract_from_dir
    with open(CATALOG, "rb") as handle:
        catalog = read_po(handle)
    assert [m.id for m in catalog if m.id and not m.string] == []
    method_map = [("webui/admin.py", "python"), ("webui/templates/admin/**.html", "jinja2")]
    used = {message for _f, _l, message, _c, *_ in extract_from_dir(".", method_map=method_map, keywords={"_": None})}
    assert sorted(m for m in used if isinstance(m, str) and m not in catalog) == []
