"""The versions, migration and organisation-admin endpoints: status codes, permissions, bodies, errors."""
from __future__ import annotations

from datetime import datetime

import pytest
import time_machine

from engine import runtime
from tests.conftest import deploy_text
from tests.engine.test_versions import flow

MONDAY = datetime.fromisoformat("2026-03-02T09:00:00+08:00")


@pytest.fixture
def two_versions(db, org):
    with time_machine.travel(MONDAY, tick=False):
        deploy_text(db, "permit.bpmn", flow())
        started = runtime.start_case(db, "permit", {}, "window1")
        deploy_text(db, "permit.bpmn", flow(limit="workdays(1)", review="审查（新）", hours="workhours(2)"))
    return started["id"]


def test_versions_are_listed_with_changes_and_read_with_their_xml(client, auth, two_versions):
    listed = client.get("/api/processes/permit/versions", headers=auth("gaj1"))
    assert listed.status_code == 200
    assert [(v["version"], v["running_cases"], v["state"]) for v in listed.json["versions"]] == [
        (2, 0, "current"), (1, 1, "superseded")]
    assert {e["id"] for e in listed.json["versions"][0]["changes"]["changed"]} == {"permit", "review", "review_limit"}
    one = client.get("/api/processes/permit/versions/1", headers=auth("gaj1"))
    assert one.status_code == 200 and "workhours(4)" in one.json["xml"]
    assert client.get("/api/processes/permit/versions/7", headers=auth("gaj1")).status_code == 404
    assert client.get("/api/processes/nothing/versions", headers=auth("gaj1")).status_code == 404


def test_diff_needs_both_versions(client, auth, two_versions):
    diff = client.get("/api/processes/permit/diff?from=1&to=2", headers=auth("gaj1"))
    assert diff.status_code == 200
    assert [e["id"] for e in diff.json["changed"]] == ["permit", "review", "review_limit"]
    bad = client.get("/api/processes/permit/diff?from=one&to=2", headers=auth("gaj1"))
    assert bad.status_code == 422 and bad.json["errors"][0]["field"] == "from"


def test_suspend_activate_and_redeploy_need_a_designer(client, auth, two_versions):
    assert client.post("/api/processes/permit/versions/2/suspend", headers=auth("gaj1")).status_code == 403
    suspended = client.post("/api/processes/permit/versions/2/suspend", headers=auth("admin"))
    assert suspended.status_code == 200 and suspended.json["status"] == "suspended"
    started = client.post("/api/processes/permit/instances", json={}, headers=auth("window1"))
    assert started.json["version"] == 1
    scheduled = client.post("/api/processes/permit/versions/2/activate", headers=auth("admin"),
                            json={"activates_at": "2099-01-01T00:00:00+08:00"})
    assert scheduled.status_code == 200 and \
        datetime.fromisoformat(scheduled.json["activates_at"]) == datetime.fromisoformat("2099-01-01T00:00:00+08:00")
    naive = client.post("/api/processes/permit/versions/2/activate", headers=auth("admin"),
                        json={"activates_at": "2099-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json["errors"][0]["field"] == "activates_at"
    assert client.post("/api/processes/permit/versions/2/activate", headers=auth("admin")).status_code == 200
    redeployed = client.post("/api/processes/permit/versions/1/redeploy", headers=auth("admin"))
    assert redeployed.status_code == 201 and redeployed.json["version"] == 3
    again = client.post("/api/processes/permit/versions/3/redeploy", headers=auth("admin"))
    assert again.status_code == 409


def test_migration_preview_then_batch_then_rollback(client, auth, two_versions):
    case_id = two_versions
    with time_machine.travel(datetime.fromisoformat("2026-03-02T10:00:00+08:00"), tick=False):
        preview = client.post("/api/processes/permit/migrations", json={"from": 1, "to": 2, "dry_run": True},
                              headers=auth("admin"))
        assert preview.status_code == 200
        assert (preview.json["total"], preview.json["movable"], preview.json["migrated"]) == (1, 1, 0)
        [case] = preview.json["cases"]
        [step] = case["steps"]
        assert (step["bpmn_id"], step["to_name"]) == ("review", "审查（新）")
        # Started Monday 09:00: workhours(2) ends at 11:00; the committed limit shrinks to Tuesday evening.
        assert datetime.fromisoformat(step["new_due_at"]) == datetime.fromisoformat("2026-03-02T11:00:00+08:00")
        assert datetime.fromisoformat(case["new_case_due_at"]) == datetime.fromisoformat("2026-03-03T17:30:00+08:00")
        assert client.get(f"/api/instances/{case_id}", headers=auth("admin")).json["version"] == 1

        assert client.post("/api/processes/permit/migrations", json={"from": 1, "to": 2},
                           headers=auth("gaj1")).status_code == 403
        done = client.post("/api/processes/permit/migrations", json={"from": 1, "to": 2}, headers=auth("admin"))
        assert done.status_code == 200 and done.json["migrated"] == 1
        instance = client.get(f"/api/instances/{case_id}", headers=auth("admin")).json
        assert instance["version"] == 2
        assert "case_migrated" in [e["type"] for e in instance["events"]]

        rolled = client.post(f"/api/instances/{case_id}/migration/rollback", headers=auth("admin"))
        assert rolled.status_code == 200 and rolled.json["version"] == 1
        again = client.post(f"/api/instances/{case_id}/migration/rollback", headers=auth("admin"))
        assert again.status_code == 409

        single = client.post(f"/api/instances/{case_id}/migrate", json={"to": 2}, headers=auth("admin"))
        assert single.status_code == 200 and single.json["migrated"] is True
        same = client.post(f"/api/instances/{case_id}/migrate", json={"to": 2}, headers=auth("admin"))
        assert same.status_code == 409


@pytest.mark.parametrize("body, field", [
    ({"to": 2}, "from"), ({"from": 1}, "to"), ({"from": "1", "to": 2}, "from"),
    ({"from": 1, "to": 2, "dry_run": "yes"}, "dry_run"), ({"from": 1, "to": 1}, "to"),
])
def test_bad_migration_requests_name_the_field(client, auth, two_versions, body, field):
    response = client.post("/api/processes/permit/migrations", json=body, headers=auth("admin"))
    assert response.status_code == 422
    assert response.json["errors"][0]["field"] == field


def test_admin_manages_users_and_departments(client, auth, org):
    assert client.get("/api/users/gaj1", headers=auth("gaj2")).status_code == 403
    listed = client.get("/api/users", headers=auth("admin"))
    assert listed.status_code == 200 and "gaj1" in [u["username"] for u in listed.json["users"]]
    patched = client.patch("/api/users/gaj2", json={"name": "公安二", "roles": ["clerk", "lead"],
                                                     "departments": ["gaj", "swj"]}, headers=auth("admin"))
    assert patched.status_code == 200 and patched.json["departments"] == ["gaj", "swj"]
    bad = client.patch("/api/users/gaj2", json={"roles": "lead"}, headers=auth("admin"))
    assert bad.status_code == 422 and bad.json["errors"][0]["field"] == "roles"
    assert client.get("/api/users/ghost", headers=auth("admin")).status_code == 404

    short = client.post("/api/users/gaj1/password", json={"password": "short"}, headers=auth("admin"))
    assert short.status_code == 422
    assert client.post("/api/users/gaj1/password", json={"password": "brand-new-pass"},
                       headers=auth("admin")).status_code == 200
    assert client.post("/api/token", json={"username": "gaj1", "password": "brand-new-pass"}).status_code == 200

    deactivated = client.post("/api/users/gaj1/deactivate", headers=auth("admin"))
    assert deactivated.status_code == 200 and deactivated.json["active"] is False
    assert client.post("/api/token", json={"username": "gaj1", "password": "brand-new-pass"}).status_code == 401
    assert client.post("/api/users/gaj1/deactivate", headers=auth("admin")).status_code == 409
    assert client.post("/api/users/gaj1/reactivate", headers=auth("admin")).status_code == 200

    renamed = client.patch("/api/departments/gaj", json={"name": "公安分局"}, headers=auth("admin"))
    assert renamed.status_code == 200 and renamed.json == {"key": "gaj", "name": "公安分局"}
    assert client.patch("/api/departments/gaj", json={}, headers=auth("admin")).status_code == 422
    assert client.patch("/api/departments/nowhere", json={"name": "某局"}, headers=auth("admin")).status_code == 404


def test_every_designer_endpoint_is_documented(client):
    paths = client.get("/api/openapi.json").json["paths"]
    for path, method in [("/api/processes/{key}/versions", "get"), ("/api/processes/{key}/migrations", "post"),
                         ("/api/instances/{instance_id}/migrate", "post"), ("/api/users", "get"),
                         ("/api/users", "post"), ("/api/users/{username}", "patch"),
                         ("/api/departments/{key}", "patch")]:
        assert method in paths[path], (path, method)
