"""The REST API over real HTTP semantics (Flask test client) on a real database: auth, deploy, cases, tasks, errors."""
from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from sqlalchemy import func, select

from engine import settings
from engine.errors import ApprovalsError
from engine.store import Database, process_definition
from webui import create_app
from webui.auth import DB_EXTENSION

GUIDE = """\
name: 并联审查（测试）
committed_limit: workdays(3)
statutory_limit: workdays(20)
items:
  - task: review_gaj
    name: 公章刻制备案
    department: 公安局
    legal_basis: 《印铸刻字业治安管理办法》
    statutory_limit: workdays(5)
    committed_limit: workdays(1)
    type: 承诺件
    materials:
      - {key: license, name: 营业执照副本}
"""

XXE_IN_TEXT = b"""<?xml version="1.0"?>
<!DOCTYPE definitions [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">
  <bpmn:process id="p" isExecutable="true"><bpmn:documentation>&xxe;</bpmn:documentation>
  <bpmn:startEvent id="s"/></bpmn:process>
</bpmn:definitions>"""

XXE_IN_ATTRIBUTE = XXE_IN_TEXT.replace(b"<bpmn:documentation>&xxe;</bpmn:documentation>", b"").replace(
    b'id="p"', b'id="p" name="&xxe;"')

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">
  <bpmn:process id="p" name="&lol9;" isExecutable="true"><bpmn:startEvent id="s"/></bpmn:process>
</bpmn:definitions>"""

BROKEN = b"""<?xml version="1.0"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">
  <bpmn:process id="p" isExecutable="true"><bpmn:startEvent id="s">
</bpmn:definitions>"""

NOT_BPMN = b"""<?xml version="1.0"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion></project>"""


@pytest.fixture
def parallel_xml(fixtures_dir) -> bytes:
    return (fixtures_dir / "bpmn" / "parallel_review.bpmn").read_bytes()


def upload(client, headers, *files: tuple[str, bytes], field: str = "file"):
    data = {field: [(io.BytesIO(content), name) for name, content in files]}
    return client.post("/api/deployments", data=data, headers=headers, content_type="multipart/form-data")


def definitions_stored(db) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(process_definition)).scalar()


def fields_of(response) -> set[str]:
    return {problem["field"] for problem in response.json["errors"]}


# --- tokens -----------------------------------------------------------------------------------------

def test_token_is_issued_and_identifies_the_user(client, org):
    response = client.post("/api/token", json={"username": "gaj1", "password": "gaj-pass-1"})
    assert response.status_code == 200
    assert response.json["token_type"] == "Bearer"
    assert response.json["expires_in"] == 8 * 3600
    me = client.get("/api/me", headers={"Authorization": f"Bearer {response.json['token']}"})
    assert me.status_code == 200
    assert me.json == {"id": org["gaj1"].id, "username": "gaj1", "name": "公安一", "roles": ["clerk"],
                       "departments": ["gaj"]}


def test_unknown_user_and_wrong_password_get_the_same_answer(client, org):
    wrong_password = client.post("/api/token", json={"username": "gaj1", "password": "not-the-password"})
    unknown_user = client.post("/api/token", json={"username": "nobody", "password": "not-the-password"})
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.get_data() == unknown_user.get_data()
    assert "token" not in wrong_password.json


def test_token_request_must_name_username_and_password(client, org):
    missing = client.post("/api/token", json={"username": "gaj1"})
    wrong_type = client.post("/api/token", json={"username": ["gaj1"], "password": 12345678})
    assert missing.status_code == 422
    assert missing.json["errors"] == [{"field": "password", "message": "password is required"}]
    assert wrong_type.status_code == 422
    assert fields_of(wrong_type) == {"username", "password"}


def test_requests_without_a_valid_token_get_401(client, auth):
    token = auth("gaj1")["Authorization"].split()[1]
    missing = client.get("/api/tasks")
    wrong_scheme = client.get("/api/tasks", headers={"Authorization": f"Basic {token}"})
    tampered = client.get("/api/tasks", headers={"Authorization": f"Bearer {token[:-3]}abc"})
    for response in (missing, wrong_scheme, tampered):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json["error"]
    assert "Authorization: Bearer" in missing.json["error"]
    assert "not valid" in tampered.json["error"]


def test_token_expires_after_the_configured_age(client, app, auth):
    headers = auth("gaj1")
    max_age = app.extensions[DB_EXTENSION].config.token_max_age_seconds
    issued = datetime.now(timezone.utc)
    with time_machine.travel(issued + timedelta(seconds=max_age - 60), tick=False):
        still_valid = client.get("/api/me", headers=headers)
    with time_machine.travel(issued + timedelta(seconds=max_age + 2), tick=False):
        expired = client.get("/api/me", headers=headers)
    assert still_valid.status_code == 200
    assert expired.status_code == 401
    assert "expired" in expired.json["error"]


def test_processes_without_a_configured_key_share_one_from_the_database(db_config, org, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", db_config.database_url)
    monkeypatch.delenv("APPROVALS_SECRET_KEY", raising=False)
    first = create_app({"TESTING": True})
    second = create_app({"TESTING": True, "ENGINE_CONFIG": replace(db_config, secret_key="")})
    try:
        key = first.extensions[DB_EXTENSION].config.secret_key
        token = first.test_client().post("/api/token", json={"username": "gaj1", "password": "gaj-pass-1"}).json
        me = second.test_client().get("/api/me", headers={"Authorization": f"Bearer {token['token']}"})
    finally:
        first.extensions[DB_EXTENSION].dispose()
        second.extensions[DB_EXTENSION].dispose()
    assert key == second.extensions[DB_EXTENSION].config.secret_key
    assert key != db_config.secret_key and len(key) >= 32
    assert me.status_code == 200 and me.json["username"] == "gaj1"


def test_concurrent_first_start_creates_one_secret_key(db_config):
    barrier = threading.Barrier(6)
    keys, failures = [], []

    def start():
        database = Database(db_config)
        try:
            barrier.wait()
            keys.append(settings.secret_key(database))
        except Exception as exc:  # collected so the assertion below reports it
            failures.append(exc)
        finally:
            database.dispose()

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(keys) == 6 and len(set(keys)) == 1


def test_app_on_an_uninitialised_database_says_to_run_init(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    monkeypatch.delenv("APPROVALS_SECRET_KEY", raising=False)
    with pytest.raises(ApprovalsError) as raised:
        create_app()
    assert "approvals init" in raised.value.message


# --- administration -----------------------------------------------------------------------------------

def test_clerks_may_not_use_admin_endpoints(client, auth):
    department = client.post("/api/departments", json={"key": "gjj", "name": "公积金中心"}, headers=auth("gaj1"))
    user = client.post("/api/users", json={"username": "x1", "password": "long-enough"}, headers=auth("gaj1"))
    assert department.status_code == user.status_code == 403
    assert "admin" in department.json["error"]
    listed = client.get("/api/departments", headers=auth("admin")).json["departments"]
    assert "gjj" not in {d["key"] for d in listed}


def test_admin_creates_departments_and_users(client, auth):
    created = client.post("/api/departments", json={"key": "gjj", "name": "公积金中心"}, headers=auth("admin"))
    again = client.post("/api/departments", json={"key": "gjj", "name": "公积金中心"}, headers=auth("admin"))
    listed = client.get("/api/departments", headers=auth("gaj1"))
    assert created.status_code == 201 and created.json == {"key": "gjj", "name": "公积金中心"}
    assert again.status_code == 409
    assert {"key": "gjj", "name": "公积金中心"} in listed.json["departments"]
    assert "公积金中心".encode() in listed.get_data()  # readable UTF-8, not \\u escapes

    user = client.post("/api/users", headers=auth("admin"), json={
        "username": "gjj1", "password": "gjj-pass-1", "name": "公积金一", "departments": ["gjj"], "roles": ["clerk"]})
    assert user.status_code == 201
    assert set(user.json) == {"id", "username", "name", "roles", "departments"}
    assert "gjj-pass-1" not in user.get_data(as_text=True) and "argon2" not in user.get_data(as_text=True)
    token = client.post("/api/token", json={"username": "gjj1", "password": "gjj-pass-1"})
    assert token.status_code == 200


def test_invalid_users_are_refused_per_field(client, auth):
    shapes = client.post("/api/users", headers=auth("admin"), json={
        "username": "ok1", "password": "long-enough", "departments": "gaj", "roles": [1]})
    engine_checks = client.post("/api/users", headers=auth("admin"), json={
        "username": "bad name", "password": "short", "roles": ["emperor"]})
    unknown_department = client.post("/api/users", headers=auth("admin"), json={
        "username": "ok2", "password": "long-enough", "departments": ["nowhere"]})
    duplicate = client.post("/api/users", headers=auth("admin"), json={"username": "gaj1", "password": "long-enough"})
    assert shapes.status_code == 422 and fields_of(shapes) == {"departments", "roles"}
    assert engine_checks.status_code == 422 and fields_of(engine_checks) == {"username", "password", "roles"}
    assert unknown_department.status_code == 422 and fields_of(unknown_department) == {"departments"}
    assert duplicate.status_code == 409


# --- deployments --------------------------------------------------------------------------------------

def test_deploy_creates_versions_and_recognises_identical_uploads(client, auth, db, parallel_xml):
    first = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml))
    identical = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml))
    changed_xml = parallel_xml.replace("并联审查（测试）".encode(), "并联审查（第二版）".encode())
    changed = upload(client, auth("admin"), ("parallel_review.bpmn", changed_xml))
    processes = client.get("/api/processes", headers=auth("gaj1"))

    assert first.status_code == 201
    assert [(d["key"], d["version"], d["created"]) for d in first.json["deployments"]] == [("parallel_review", 1, True)]
    assert identical.status_code == 200
    assert [(d["version"], d["created"]) for d in identical.json["deployments"]] == [(1, False)]
    assert changed.status_code == 201
    assert [(d["version"], d["created"]) for d in changed.json["deployments"]] == [(2, True)]
    assert definitions_stored(db) == 2
    [process] = processes.json["processes"]
    assert (process["key"], process["version"], process["versions"], process["name"]) == (
        "parallel_review", 2, 2, "并联审查（第二版）")
    assert process["deployed_by"] == "admin"


def test_deploy_needs_designer_or_admin(client, auth, db, parallel_xml):
    client.post("/api/users", headers=auth("admin"),
                json={"username": "designer1", "password": "designer-pass", "roles": ["designer"]})
    clerk = upload(client, auth("gaj1"), ("parallel_review.bpmn", parallel_xml))
    designer = upload(client, auth("designer1", "designer-pass"), ("parallel_review.bpmn", parallel_xml))
    assert clerk.status_code == 403
    assert designer.status_code == 201
    assert designer.json["deployments"][0]["version"] == 1


@pytest.mark.parametrize("name, content, says", [
    ("broken.bpmn", BROKEN, "not well-formed"),
    ("xxe.bpmn", XXE_IN_TEXT, "DOCTYPE"),
    ("xxe-attribute.bpmn", XXE_IN_ATTRIBUTE, "DOCTYPE"),
    ("laughs.bpmn", BILLION_LAUGHS, "DOCTYPE"),
    ("pom.xml", NOT_BPMN, "not a BPMN"),
    ("binary.bpmn", bytes(range(256)) * 4, "XML"),
])
def test_deploy_refuses_bad_files_and_stores_nothing(client, auth, db, name, content, says):
    response = upload(client, auth("admin"), (name, content))
    assert response.status_code == 422
    [problem] = response.json["errors"]
    assert set(problem) == {"file", "element_id", "line", "message"}
    assert problem["file"] == name
    assert says in problem["message"]
    assert "root:" not in response.get_data(as_text=True)  # nothing of /etc/passwd leaks back
    assert definitions_stored(db) == 0


def test_no_upload_from_the_fixture_collections_gets_a_500(client, auth, db, fixtures_dir):
    """Files from many modelers deploy or are refused with located problems; the invalid ones store nothing."""
    headers = auth("admin")
    for folder in ("invalid", "modelers"):
        for path in sorted((fixtures_dir / "bpmn" / folder).iterdir()):
            if not path.is_file() or path.name.startswith("__"):
                continue
            stored_before = definitions_stored(db)
            response = upload(client, headers, (path.name, path.read_bytes()))
            assert response.status_code in (200, 201, 422), (path.name, response.status_code, response.json)
            if response.status_code == 422:
                assert response.json["errors"], path.name
                assert all(p.get("file") or p.get("field") for p in response.json["errors"]), path.name
                assert definitions_stored(db) == stored_before, path.name
            else:
                assert response.json["deployments"], path.name
            if folder == "invalid":
                assert response.status_code == 422, (path.name, response.json)


def test_one_bad_file_stops_the_whole_upload(client, auth, db, parallel_xml):
    response = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml), ("broken.bpmn", BROKEN))
    assert response.status_code == 422
    assert [p["file"] for p in response.json["errors"]] == ["broken.bpmn"]
    assert definitions_stored(db) == 0


def test_deploy_without_the_file_field_names_the_field(client, auth, parallel_xml):
    nothing = client.post("/api/deployments", headers=auth("admin"), data={}, content_type="multipart/form-data")
    wrong_field = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml), field="files")
    as_json = client.post("/api/deployments", headers=auth("admin"), json={"file": "parallel_review.bpmn"})
    for response in (nothing, wrong_field, as_json):
        assert response.status_code == 422
        assert response.json["errors"][0]["field"] == "file"
    assert "'files'" in wrong_field.json["errors"][0]["message"]


@pytest.mark.parametrize("guide_name", ["parallel_review.yaml", "parallel_review.guide.yaml"])
def test_a_guide_travels_with_the_diagram_of_the_same_name(client, auth, parallel_xml, guide_name):
    deployed = upload(client, auth("admin"), (guide_name, GUIDE.encode()), ("parallel_review.bpmn", parallel_xml))
    orphan = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml), ("other.guide.yaml", GUIDE.encode()))
    assert deployed.status_code == 201
    two_guides = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml),
                        ("parallel_review.yaml", GUIDE.encode()), ("parallel_review.guide.yaml", GUIDE.encode()))
    assert orphan.status_code == 422
    assert orphan.json["errors"][0]["file"] == "other.guide.yaml"
    assert two_guides.status_code == 422 and "two service guides" in two_guides.json["errors"][0]["message"]

    case = client.post("/api/processes/parallel_review/instances", json={}, headers=auth("window1")).json
    [intake] = client.get("/api/tasks", headers=auth("window1")).json["tasks"]
    client.post(f"/api/tasks/{intake['id']}/complete", headers=auth("window1"),
                json={"data": {"applicant": "星火科技有限公司"}})
    [review] = [t for t in client.get(f"/api/instances/{case['id']}", headers=auth("window1")).json["tasks"]
                if t["bpmn_id"] == "review_gaj"]
    detail = client.get(f"/api/tasks/{review['id']}", headers=auth("gaj1"))
    assert detail.status_code == 200
    assert detail.json["guide_item"]["name"] == "公章刻制备案"
    assert detail.json["guide_item"]["materials"] == [{"key": "license", "name": "营业执照副本"}]


def test_a_broken_guide_is_refused_naming_the_guide(client, auth, db, parallel_xml):
    response = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml),
                      ("parallel_review.yaml", b"items:\n  - task: review_gaj\n    type: wrong\n"))
    assert response.status_code == 422
    assert {p["file"] for p in response.json["errors"]} == {"parallel_review.yaml"}
    assert definitions_stored(db) == 0


def test_oversized_uploads_get_json_413(db_config, org):
    app = create_app({"TESTING": True, "ENGINE_CONFIG": replace(db_config, max_upload_bytes=1024)})
    client = app.test_client()
    try:
        token = client.post("/api/token", json={"username": "admin", "password": "admin-pass-1"}).json["token"]
        headers = {"Authorization": f"Bearer {token}"}
        limit = app.config["MAX_CONTENT_LENGTH"]
        huge = upload(client, headers, ("huge.bpmn", b"<a>" + b" " * (limit + 10) + b"</a>"))
        over_file_limit = upload(client, headers, ("big.bpmn", b"<a>" + b" " * 2000 + b"</a>"))
    finally:
        app.extensions[DB_EXTENSION].dispose()
    assert huge.status_code == 413
    assert str(limit) in huge.json["error"]
    assert over_file_limit.status_code == 422
    assert "1024" in over_file_limit.json["errors"][0]["message"]


# --- cases and tasks ----------------------------------------------------------------------------------

@pytest.fixture
def deployed(client, auth, parallel_xml):
    response = upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml))
    assert response.status_code == 201
    # No rsj user in the shared org; create one the way an administrator would.
    for username, department in (("rsj1", "rsj"), ("ybj1", "ybj")):
        created = client.post("/api/users", headers=auth("admin"), json={
            "username": username, "password": f"{username}-pass", "departments": [department], "roles": ["clerk"]})
        assert created.status_code == 201
    return response.json["deployments"][0]


def my_tasks(client, headers, **params) -> list[dict]:
    response = client.get("/api/tasks", headers=headers, query_string=params)
    assert response.status_code == 200, response.json
    return response.json["tasks"]


def test_starting_a_case(client, auth, deployed):
    started = client.post("/api/processes/parallel_review/instances", headers=auth("window1"),
                          json={"data": {"applicant": "星火科技有限公司"}})
    by_clerk = client.post("/api/processes/parallel_review/instances", headers=auth("gaj1"), json={"data": {}})
    unknown = client.post("/api/processes/no_such_flow/instances", headers=auth("window1"), json={})
    bad_data = client.post("/api/processes/parallel_review/instances", headers=auth("window1"), json={"data": "x"})
    no_body = client.post("/api/processes/parallel_review/instances", headers=auth("window1"))

    assert started.status_code == 201
    assert set(started.json) >= {"id", "case_no", "status", "version"}
    assert started.json["status"] == "running" and started.json["version"] == 1
    assert re.fullmatch(r"\d{8}\d+", started.json["case_no"])
    assert started.headers["Location"].endswith(f"/api/instances/{started.json['id']}")
    assert by_clerk.status_code == 403
    assert unknown.status_code == 404 and "no_such_flow" in unknown.json["error"]
    assert bad_data.status_code == 422 and fields_of(bad_data) == {"data"}
    assert no_body.status_code == 201 and no_body.json["case_no"] != started.json["case_no"]


def test_a_case_worked_through_the_api_from_intake_to_completion(client, auth, deployed):
    case = client.post("/api/processes/parallel_review/instances", headers=auth("window1"), json={}).json
    [intake] = my_tasks(client, auth("window1"))
    assert {"id", "name", "bpmn_id", "instance_id", "case_no", "departments", "assignee", "status", "due_at",
            "light"} <= set(intake)
    assert (intake["bpmn_id"], intake["case_no"], intake["departments"], intake["light"]) == (
        "intake", case["case_no"], ["window"], "green")
    assert my_tasks(client, auth("gaj1")) == []

    form = client.get(f"/api/tasks/{intake['id']}", headers=auth("window1")).json["form"]
    assert [f["id"] for f in form] == ["applicant", "capital", "kind", "founded"]
    invalid = client.post(f"/api/tasks/{intake['id']}/complete", headers=auth("window1"), json={"data": {
        "capital": "many", "kind": "corp", "founded": "yesterday", "extra": 1}})
    assert invalid.status_code == 422
    assert fields_of(invalid) == {"applicant", "capital", "kind", "founded", "extra"}
    done = client.post(f"/api/tasks/{intake['id']}/complete", headers=auth("window1"), json={"data": {
        "applicant": "星火科技有限公司", "capital": 100, "kind": "llc", "founded": "2026-01-05"}})
    assert done.status_code == 200 and done.json["case_status"] == "running"

    # Department isolation: each clerk sees their own department's branch only.
    [gaj_task] = my_tasks(client, auth("gaj1"))
    assert (gaj_task["bpmn_id"], gaj_task["departments"]) == ("review_gaj", ["gaj"])
    assert [t["bpmn_id"] for t in my_tasks(client, auth("scjgj1"))] == ["review_scjgj"]
    assert [t["bpmn_id"] for t in my_tasks(client, auth("swj1"))] == ["review_swj"]
    assert my_tasks(client, auth("window1")) == []

    claimed = client.post(f"/api/tasks/{gaj_task['id']}/claim", headers=auth("gaj1"))
    colleague_claims = client.post(f"/api/tasks/{gaj_task['id']}/claim", headers=auth("gaj2"))
    colleague_completes = client.post(f"/api/tasks/{gaj_task['id']}/complete", headers=auth("gaj2"),
                                      json={"data": {"gaj_opinion": "同意"}})
    colleague_unclaims = client.post(f"/api/tasks/{gaj_task['id']}/unclaim", headers=auth("gaj2"))
    assert claimed.status_code == 200
    assert colleague_claims.status_code == colleague_completes.status_code == colleague_unclaims.status_code == 409
    assert "gaj1" in colleague_claims.json["error"]
    assert my_tasks(client, auth("gaj2")) == []
    assert [t["assignee"] for t in my_tasks(client, auth("gaj1"))] == ["gaj1"]

    for response in (client.post(f"/api/tasks/{gaj_task['id']}/claim", headers=auth("swj1")),
                     client.post(f"/api/tasks/{gaj_task['id']}/complete", headers=auth("swj1"), json={}),
                     client.get(f"/api/tasks/{gaj_task['id']}", headers=auth("swj1"))):
        assert response.status_code == 403

    assert client.post(f"/api/tasks/{gaj_task['id']}/unclaim", headers=auth("gaj1")).status_code == 200
    assert client.post(f"/api/tasks/{gaj_task['id']}/claim", headers=auth("gaj2")).status_code == 200
    missing_opinion = client.post(f"/api/tasks/{gaj_task['id']}/complete", headers=auth("gaj2"),
                                  json={"data": {"gaj_approved": True}})
    assert missing_opinion.status_code == 422
    assert fields_of(missing_opinion) == {"gaj_opinion"}
    completed = client.post(f"/api/tasks/{gaj_task['id']}/complete", headers=auth("gaj2"),
                            json={"data": {"gaj_opinion": "同意刻制", "gaj_approved": True}})
    assert completed.status_code == 200
    again = client.post(f"/api/tasks/{gaj_task['id']}/claim", headers=auth("gaj2"))
    assert again.status_code == 409 and "completed" in again.json["error"]

    for username, prefix in (("scjgj1", "scjgj"), ("swj1", "swj"), (("rsj1", "rsj1-pass"), "rsj")):
        headers = auth(*username) if isinstance(username, tuple) else auth(username)
        [task] = my_tasks(client, headers)
        response = client.post(f"/api/tasks/{task['id']}/complete", headers=headers,
                               json={"data": {f"{prefix}_opinion": "同意", f"{prefix}_approved": True}})
        assert response.status_code == 200 and response.json["case_status"] == "running"

    [handover] = my_tasks(client, auth("window1"))
    assert handover["bpmn_id"] == "handover"
    finished = client.post(f"/api/tasks/{handover['id']}/complete", headers=auth("window1"))
    assert finished.status_code == 200 and finished.json["case_status"] == "completed"

    instance = client.get(f"/api/instances/{case['id']}", headers=auth("window1"))
    assert instance.status_code == 200
    body = instance.json
    assert (body["id"], body["case_no"], body["status"], body["process_key"], body["version"]) == (
        case["id"], case["case_no"], "completed", "parallel_review", 1)
    assert len(body["tasks"]) == 6 and {t["status"] for t in body["tasks"]} == {"completed"}
    types = [e["type"] for e in body["events"]]
    assert types[0] == "case_started" and types[-1] == "case_completed"
    assert {"task_created", "task_claimed", "task_unclaimed", "task_completed"} <= set(types)
    gaj_completion = [e for e in body["events"] if e["type"] == "task_completed" and e["task_id"] == gaj_task["id"]]
    assert [e["actor"] for e in gaj_completion] == ["gaj2"]
    assert gaj_completion[0]["data"]["values"] == {"gaj_opinion": "同意刻制", "gaj_approved": True}


def test_who_may_see_a_case(client, auth, deployed):
    case = client.post("/api/processes/parallel_review/instances", headers=auth("window1"), json={}).json
    [intake] = my_tasks(client, auth("window1"))
    client.post(f"/api/tasks/{intake['id']}/complete", headers=auth("window1"), json={"data": {"applicant": "张三"}})

    def status(headers) -> int:
        return client.get(f"/api/instances/{case['id']}", headers=headers).status_code

    assert status(auth("window1")) == 200  # window role: every case
    assert status(auth("admin")) == 200  # supervisor and admin: every case
    assert status(auth("gaj1")) == 200  # the case has a task for the gaj department
    assert status(auth("ybj1", "ybj1-pass")) == 403  # no task for ybj in this flow
    assert client.get("/api/instances/999999", headers=auth("admin")).status_code == 404


def test_task_list_pages(client, auth, deployed):
    for _ in range(3):
        client.post("/api/processes/parallel_review/instances", headers=auth("window1"), json={})
    first_page = my_tasks(client, auth("window1"), limit=2)
    second_page = my_tasks(client, auth("window1"), limit=2, offset=2)
    assert len(first_page) == 2 and len(second_page) == 1
    assert {t["id"] for t in first_page}.isdisjoint(t["id"] for t in second_page)
    bad = client.get("/api/tasks", headers=auth("window1"), query_string={"limit": "abc", "offset": -1})
    too_big = client.get("/api/tasks", headers=auth("window1"), query_string={"limit": 10_000})
    assert bad.status_code == 422 and fields_of(bad) == {"limit", "offset"}
    assert too_big.status_code == 422 and fields_of(too_big) == {"limit"}


def test_unknown_tasks_are_404(client, auth, deployed):
    for response in (client.get("/api/tasks/999999", headers=auth("gaj1")),
                     client.post("/api/tasks/999999/claim", headers=auth("gaj1")),
                     client.post("/api/tasks/999999/complete", headers=auth("gaj1"), json={"data": {}})):
        assert response.status_code == 404
        assert "999999" in response.json["error"]


# --- request hygiene ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00{", b"[" * 100_000, b'{"username": "a"'])
def test_malformed_json_is_a_400_with_a_message(client, org, body):
    response = client.post("/api/token", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json["error"]


def test_a_json_body_that_is_not_an_object_is_422(client, auth):
    for body in (b"[1, 2]", b'"text"', b"5", b"null"):
        response = client.post("/api/departments", data=body, content_type="application/json", headers=auth("admin"))
        assert response.status_code == 422
        assert fields_of(response) == {"body"}
    empty = client.post("/api/departments", headers=auth("admin"))
    assert empty.status_code == 422 and fields_of(empty) == {"key", "name"}


def test_every_api_endpoint_but_token_and_openapi_needs_a_token(app, client):
    public = {"/api/token", "/api/openapi.json"}
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.rule in public:
            continue
        url = rule.build({name: 1 for name in rule.arguments})[1]  # 1 suits int and string converters
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(url, method=method, json={})
            assert response.status_code == 401, (method, url, response.status_code)
            checked += 1
    assert checked >= 13


def test_http_errors_are_json_under_api_and_pages_elsewhere(client):
    unknown = client.get("/api/no/such/thing")
    wrong_method = client.delete("/api/token")
    page = client.get("/no/such/page")
    assert unknown.status_code == 404 and unknown.json["error"].startswith("no such resource")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    assert wrong_method.json["error"] == "DELETE is not allowed on /api/token"
    assert page.status_code == 404 and page.mimetype == "text/html"


def test_an_unexpected_error_is_a_logged_500_without_a_traceback(db_config, caplog):
    app = create_app({"TESTING": True, "ENGINE_CONFIG": db_config})

    def explode():
        raise RuntimeError("internal detail that must stay on the server")

    app.add_url_rule("/api/explode", view_func=explode)
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/api/explode")
    app.extensions[DB_EXTENSION].dispose()
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    assert "internal detail" not in text and "Traceback" not in text
    reference = response.json["reference"]
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert logged and logged[0].exc_info[0] is RuntimeError


# --- home page and OpenAPI ----------------------------------------------------------------------------

def test_home_page_lists_deployed_processes_in_chinese(client, auth, parallel_xml):
    before = client.get("/")
    upload(client, auth("admin"), ("parallel_review.bpmn", parallel_xml))
    after = client.get("/")
    assert before.status_code == after.status_code == 200
    assert "尚未部署任何流程" in before.get_data(as_text=True)
    page = after.get_data(as_text=True)
    assert 'lang="zh-CN"' in page and "已部署的流程" in page
    assert "parallel_review" in page and "并联审查（测试）" in page and "v1" in page


def test_countersigners_are_added_and_removed_through_the_api(client, auth):
    from tests.engine.test_countersign import countersign_xml
    assert upload(client, auth("admin"), ("countersign_review.bpmn", countersign_xml().encode())).status_code == 201
    for username, department, roles in (("rsj1", "rsj", ["clerk"]), ("gajlead", "gaj", ["clerk", "lead"])):
        created = client.post("/api/users", headers=auth("admin"), json={
            "username": username, "password": f"{username}-pass", "departments": [department], "roles": roles})
        assert created.status_code == 201
    lead = auth("gajlead", "gajlead-pass")
    case = client.post("/api/processes/countersign_review/instances", headers=auth("window1"), json={}).json
    [copy] = my_tasks(client, auth("gaj1"))
    assert copy["bpmn_id"] == "sign"
    url = f"/api/tasks/{copy['id']}/countersigners"

    forbidden = client.post(url, headers=auth("gaj1"), json={"department": "ybj", "reason": "加签"})
    missing = client.post(url, headers=lead, json={})
    wrong_types = client.post(url, headers=lead, json={"department": ["ybj"], "reason": 3})
    unknown = client.post(url, headers=lead, json={"department": "nope", "reason": "加签"})
    twice = client.post(url, headers=lead, json={"department": "swj", "reason": "加签"})
    added = client.post(url, headers=lead, json={"department": "ybj", "reason": "涉及医保"})
    assert forbidden.status_code == 403
    assert missing.status_code == 422 and fields_of(missing) == {"department", "reason"}
    assert wrong_types.status_code == 422 and fields_of(wrong_types) == {"department", "reason"}
    assert unknown.status_code == 422 and fields_of(unknown) == {"department"}
    assert twice.status_code == 422 and fields_of(twice) == {"department"}
    assert added.status_code == 201, added.json
    assert added.json["department"] == "ybj" and added.headers["Location"].endswith(f"/api/tasks/{added.json['new_task_id']}")

    [swj_copy] = my_tasks(client, auth("swj1"))
    removal = f"/api/tasks/{swj_copy['id']}/countersigners/remove"
    no_reason = client.post(removal, headers=lead, json={"reason": ""})
    removed = client.post(removal, headers=lead, json={"reason": "不涉及税务"})
    again = client.post(removal, headers=lead, json={"reason": "不涉及税务"})
    assert no_reason.status_code == 422 and fields_of(no_reason) == {"reason"}
    assert removed.status_code == 200 and removed.json["case_status"] == "running"
    assert again.status_code == 409
    assert my_tasks(client, auth("swj1")) == []
    window = client.post(url, headers=lead, json={"department": "window", "reason": "窗口会签"})
    assert window.status_code == 201 and [t["id"] for t in my_tasks(client, auth("window1"))] == [
        window.json["new_task_id"]]
    instance = client.get(f"/api/instances/{case['id']}", headers=auth("admin")).json
    statuses = sorted((t["departments"][0], t["status"]) for t in instance["tasks"] if t["bpmn_id"] == "sign")
    assert statuses == [("gaj", "open"), ("rsj", "open"), ("swj", "removed"), ("window", "open"), ("ybj", "open")]
    assert [e["type"] for e in instance["events"] if e["type"].startswith("countersigner")] == [
        "countersigner_added", "countersigner_removed", "countersigner_added"]


def _openapi_path(rule) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def test_openapi_describes_exactly_the_implemented_endpoints(app, client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document["openapi"].startswith("3.0")
    implemented = {(_openapi_path(rule), method.lower()) for rule in app.url_map.iter_rules()
                   if rule.rule.startswith("/api/") for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert implemented == documented


def test_openapi_operations_are_complete_and_references_resolve(client):
    document = client.get("/api/openapi.json").json

    def resolve(ref: str):
        node = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(node["$ref"])  # a KeyError here names the dangling reference
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    for path, operations in document["paths"].items():
        path_params = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            assert operation["responses"], (method, path)
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == path_params, (method, path)
            if operation.get("security") != []:
                assert "401" in operation["responses"], (method, path)
            if "requestBody" in operation:
                assert "422" in operation["responses"], (method, path)
    problem_shapes = document["components"]["schemas"]["ValidationError"]["properties"]["errors"]["items"]["oneOf"]
    shapes = [set(resolve(s["$ref"])["required"]) for s in problem_shapes]
    assert {"file", "element_id", "line", "message"} in shapes and {"field", "message"} in shapes
