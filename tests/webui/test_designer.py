"""Designer pages: flows, modeler data, templates, deploy with problems per element, versions and diff, migration."""
from __future__ import annotations

import json
import re

import pytest
from babel.messages.pofile import read_po
from lxml import etree

from engine import accounts, migration, versions
from tests.processes.conftest import at, clock, enterprise  # noqa: F401  (fixtures)
from tests.processes.harness import PROCESSES
from tests.processes.test_enterprise_startup import registered

KEY = "enterprise_startup"
SOURCE = (PROCESSES / KEY / f"{KEY}.bpmn").read_text(encoding="utf-8")
CATALOG = "webui/translations_designer/zh/LC_MESSAGES/messages.po"


def csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


def login(client, username: str, password: str) -> None:
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": csrf(client.get("/login").data)})
    assert response.status_code == 302, response.get_data(as_text=True)


@pytest.fixture
def designer_client(client, db, enterprise):
    """The shipped 企业开办 flow (version 1) and a designer logged in through the login form."""
    accounts.create_user(db, "designer1", "designer-pass-1", "流程设计员", [], ["designer"])
    login(client, "designer1", "designer-pass-1")
    return client


def page_data(response, element_id: str) -> dict:
    text = response.get_data(as_text=True)
    found = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', text, re.DOTALL)
    assert found, f"no #{element_id} on the page"
    return json.loads(found.group(1))


def revised(xml: str = SOURCE) -> str:
    """企业开办 with the registration limit cut from 4 to 2 working hours."""
    before = 'workhours(4)</bpmn:timeDuration>'
    assert before in xml
    return xml.replace(before, 'workhours(2)</bpmn:timeDuration>', 1)


def deploy_from_modeler(client, xml: str, version: int | None = 1, language: str = "zh-CN"):
    token = page_data(client.get(f"/designer/{KEY}/edit"), "designer-data")["csrf_token"]
    return client.post("/designer/deploy", json={"xml": xml, "base_key": KEY, "base_version": version},
                       headers={"X-CSRFToken": token, "Accept-Language": language})


def test_designer_pages_need_the_designer_or_admin_role(client, db, enterprise):
    assert client.get("/designer").status_code == 302          # to the login page
    login(client, "gaj1", "gaj-pass-1")
    assert client.get("/designer").status_code == 403
    assert client.get(f"/designer/{KEY}").status_code == 403
    token = csrf(client.get("/login").data)
    assert client.post("/designer/deploy", json={"xml": SOURCE}, headers={"X-CSRFToken": token}).status_code == 403


def test_the_flow_list_links_versions_modeler_and_migration(designer_client):
    page = designer_client.get("/designer", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert f'data-key="{KEY}"' in page
    for link in (f"/designer/{KEY}", f"/designer/{KEY}/edit", f"/designer/{KEY}/migrate"):
        assert f'href="{link}"' in page
    assert "从模板新建流程" in page and "导入 .bpmn 文件" in page


def test_the_modeler_page_carries_the_diagram_and_the_real_department_list(designer_client, db):
    accounts.create_department(db, "test_dept", "测试部门")
    data = page_data(designer_client.get(f"/designer/{KEY}/edit?version=1"), "designer-data")
    assert data["xml"] == versions.get_version(db, KEY, 1)["xml"]
    assert data["key"] == KEY and data["version"] == 1
    assert {"key": "test_dept", "name": "测试部门"} in data["departments"]
    assert data["deploy_url"] == "/designer/deploy" and data["csrf_token"]
    assert data["locale"] == "zh_CN"
    english = page_data(designer_client.get(f"/designer/{KEY}/edit", headers={"Accept-Language": "en"}), "designer-data")
    assert english["locale"] == "en" and english["texts"]["lint_ok"] == "Nothing blocks deploying"
    assert designer_client.get(f"/designer/{KEY}/edit?version=9").status_code == 404
    assert designer_client.get(f"/designer/{KEY}/edit?version=x").status_code == 400


def test_a_new_flow_from_a_template_is_a_valid_diagram_with_the_chosen_key(designer_client):
    response = designer_client.get("/designer/new?template=parallel&key=food_licence&name=食品<经营>许可")
    xml = page_data(response, "designer-data")["xml"]
    process = etree.fromstring(xml.encode()).find("{http://www.omg.org/spec/BPMN/20100524/MODEL}process")
    assert process.get("id") == "food_licence" and process.get("name") == "食品<经营>许可"
    refused = designer_client.get("/designer/new?template=parallel&key=1 bad", follow_redirects=True)
    assert "流程键须以字母开头" in refused.get_data(as_text=True)


def test_importing_a_file_opens_it_in_the_modeler_without_deploying(designer_client, db):
    token = csrf(designer_client.get("/designer").data)
    response = designer_client.post("/designer/import", data={
        "csrf_token": token, "file": (__import__("io").BytesIO(revised().encode()), "mine.bpmn")},
        content_type="multipart/form-data")
    assert page_data(response, "designer-data")["xml"] == revised()
    assert [v["version"] for v in versions.list_versions(db, KEY)] == [1]
    empty = designer_client.post("/designer/import", data={"csrf_token": token}, follow_redirects=True)
    assert "请选择要导入的 .bpmn 文件" in empty.get_data(as_text=True)


def test_a_deployed_version_downloads_as_its_bpmn(designer_client, db):
    response = designer_client.get(f"/designer/{KEY}/versions/1.bpmn")
    assert response.headers["Content-Disposition"] == f'attachment; filename="{KEY}-v1.bpmn"'
    assert response.get_data(as_text=True) == versions.get_version(db, KEY, 1)["xml"]


def test_deploying_from_the_modeler_makes_version_2_and_keeps_the_service_guide(designer_client, db):
    response = deploy_from_modeler(designer_client, revised())
    assert response.status_code == 201, response.json
    assert response.json["version"] == 2 and response.json["url"] == f"/designer/{KEY}?from=1&to=2"
    assert response.json["message"] == f"已部署 {KEY}，第 2 版。"
    second = versions.get_version(db, KEY, 2)
    assert second["deployed_by"] == "designer1"
    assert second["guide"] == versions.get_version(db, KEY, 1)["guide"]
    again = deploy_from_modeler(designer_client, revised(), version=2)
    assert again.status_code == 200 and again.json["created"] is False and again.json["version"] == 2


def test_a_step_naming_no_department_is_deployed_with_a_warning_in_chinese(designer_client, db):
    response = deploy_from_modeler(designer_client, revised().replace('candidateGroups="gaj"', 'candidateGroups="公按局"', 1))
    assert response.status_code == 201, response.json
    assert response.json["warnings"] and all("没有名为“公按局”的部门" in w for w in response.json["warnings"])
    page = designer_client.get(response.json["url"]).get_data(as_text=True)
    assert "没有名为“公按局”的部门" in page


def test_deploy_problems_name_their_elements_in_chinese_and_nothing_is_stored(designer_client, db):
    broken = SOURCE.replace('<bpmn:userTask id="registration"', '<bpmn:serviceTask id="registration_service" />'
                            '<bpmn:userTask id="registration"', 1)
    broken = re.sub(r'(<bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">)', r"\1${", broken, count=1)
    response = deploy_from_modeler(designer_client, broken)
    assert response.status_code == 422
    problems = {p["element_id"]: p["message"] for p in response.json["errors"]}
    assert problems["registration_service"] == "不支持服务任务；请改为用户任务或 Python 脚本任务。"
    [flow_problem] = [m for e, m in problems.items() if e.startswith("Flow_")]
    assert "是 JUEL 表达式；请改用 Python 书写" in flow_problem
    assert response.json["error"].startswith("流程图未部署：有 2 个问题")
    assert [v["version"] for v in versions.list_versions(db, KEY)] == [1]
    english = deploy_from_modeler(designer_client, broken, language="en")
    assert "Service tasks are not supported" in " ".join(p["message"] for p in english.json["errors"])


def test_a_guide_item_without_its_task_is_reported_against_the_guide(designer_client):
    without_bank = SOURCE.replace('id="bank_account" name="银行预约开户"', 'id="bank_account_new" name="银行预约开户"')
    without_bank = without_bank.replace('attachedToRef="bank_account"', 'attachedToRef="bank_account_new"')
    without_bank = without_bank.replace('bpmnElement="bank_account"', 'bpmnElement="bank_account_new"')
    without_bank = re.sub(r'(sourceRef|targetRef)="bank_account"', r'\1="bank_account_new"', without_bank)
    without_bank = without_bank.replace("<bpmn:flowNodeRef>bank_account</bpmn:flowNodeRef>",
                                        "<bpmn:flowNodeRef>bank_account_new</bpmn:flowNodeRef>")
    response = deploy_from_modeler(designer_client, without_bank)
    assert response.status_code == 422, response.json
    messages = [p["message"] for p in response.json["errors"]]
    assert any("服务指南事项" in m and "bank_account" in m for m in messages), messages


def test_a_deploy_request_without_xml_is_refused_with_a_clear_message(designer_client):
    token = page_data(designer_client.get(f"/designer/{KEY}/edit"), "designer-data")["csrf_token"]
    response = designer_client.post("/designer/deploy", json={"diagram": "x"},
                                    headers={"X-CSRFToken": token, "Accept-Language": "zh-CN"})
    assert response.status_code == 422 and "请以 JSON 提交流程图" in response.json["error"]


def test_the_versions_page_lists_changes_and_case_counts_and_shows_the_diff(designer_client, db, enterprise, clock):
    registered(db, enterprise, clock)
    assert deploy_from_modeler(designer_client, revised()).status_code == 201
    page = designer_client.get(f"/designer/{KEY}")
    text = page.get_data(as_text=True)
    rows = dict(re.findall(r'<tr data-version="(\d+)" data-state="(\w+)" data-running="\d+"', text))
    assert rows == {"2": "current", "1": "superseded"}
    assert re.search(r'<tr data-version="1" data-state="superseded" data-running="1"', text)
    assert "修改 1" in text
    data = page_data(page, "diff-data")
    assert [c["id"] for c in data["diff"]["changed"]] == ["TimerEventDefinition_registration_limit"]
    assert data["old_xml"] == versions.get_version(db, KEY, 1)["xml"]
    assert data["new_xml"] == versions.get_version(db, KEY, 2)["xml"]
    assert "<del>workhours(4)</del> → <ins>workhours(2)</ins>" in text


def test_suspend_activate_later_and_roll_back_a_version(designer_client, db, clock):
    assert deploy_from_modeler(designer_client, revised()).status_code == 201
    token = csrf(designer_client.get(f"/designer/{KEY}").data)
    designer_client.post(f"/designer/{KEY}/versions/2/suspend", data={"csrf_token": token})
    states = {v["version"]: v["state"] for v in versions.list_versions(db, KEY)}
    assert states == {2: "suspended", 1: "current"}
    response = designer_client.post(f"/designer/{KEY}/versions/2/activate",
                                    data={"csrf_token": token, "activates_at": "2026-03-09T09:00"},
                                    follow_redirects=True)
    assert "第 2 版自2026-03-09 09:00起启用" in response.get_data(as_text=True)
    assert {v["version"]: v["state"] for v in versions.list_versions(db, KEY)}[2] == "scheduled"
    bad = designer_client.post(f"/designer/{KEY}/versions/2/activate",
                               data={"csrf_token": token, "activates_at": "next monday"}, follow_redirects=True)
    assert "不是有效的日期时间" in bad.get_data(as_text=True)
    designer_client.post(f"/designer/{KEY}/versions/1/redeploy", data={"csrf_token": token})
    third = versions.get_version(db, KEY, 3)
    assert third["xml"] == versions.get_version(db, KEY, 1)["xml"]


def test_the_migration_page_previews_then_migrates_in_batches_and_rolls_back(designer_client, db, enterprise, clock):
    case = registered(db, enterprise, clock)
    clock.at("2026-03-02 11:00")
    assert deploy_from_modeler(designer_client, revised()).status_code == 201
    page = designer_client.get(f"/designer/{KEY}/migrate?from=1&to=2")
    text = page.get_data(as_text=True)
    assert f'<tr data-case-id="{case.id}" data-movable="true">' in text
    data = page_data(page, "migrate-data")
    assert data["ids"] == [case.id] and data["to_version"] == 2
    preview = migration.preview_migration(db, KEY, 1, 2)
    assert preview["movable"] == 1

    response = designer_client.post(data["run_url"], json={"ids": data["ids"], "to_version": 2},
                                    headers={"X-CSRFToken": data["csrf_token"]})
    [result] = response.json["results"]
    assert result["migrated"] is True
    assert case.instance()["version"] == 2
    again = designer_client.post(data["run_url"], json={"ids": data["ids"], "to_version": 2},
                                 headers={"X-CSRFToken": data["csrf_token"]})
    assert again.json["results"][0]["migrated"] is False and again.json["results"][0]["error"]

    rolled = designer_client.post(result["rollback_url"], data={"csrf_token": data["csrf_token"]}, follow_redirects=True)
    assert f"办件 {case.case_no} 已回退到第 1 版" in rolled.get_data(as_text=True)
    assert case.instance()["version"] == 1


@pytest.mark.parametrize("body", [None, {"ids": [], "to_version": 2}, {"ids": [1], "to_version": "2"},
                                  {"ids": ["1"], "to_version": 2}, {"ids": list(range(51)), "to_version": 2}])
def test_a_bad_migration_batch_is_refused_with_a_clear_message(designer_client, body):
    token = csrf(designer_client.get(f"/designer/{KEY}").data)
    response = designer_client.post(f"/designer/{KEY}/migrate/run", json=body, headers={"X-CSRFToken": token})
    assert response.status_code == 422 and "to_version" in response.json["error"]


def test_every_designer_message_is_translated_and_every_page_string_is_in_the_catalog():
    from babel.messages.extract import extract_from_dir
    with open(CATALOG, "rb") as handle:
        catalog = read_po(handle)
    untranslated = [m.id for m in catalog if m.id and not m.string]
    assert untranslated == []
    method_map = [("webui/designer.py", "python"), ("webui/templates/designer/**.html", "jinja2")]
    used = {message for _f, _l, message, _c, *_ in extract_from_dir(".", method_map=method_map, keywords={"_": None})}
    missing = sorted(m for m in used if isinstance(m, str) and m not in catalog)
    assert missing == []
