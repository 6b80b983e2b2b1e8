"""Organisation admin: users' roles and departments, passwords, deactivation returning claimed tasks, departments."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from engine import accounts, organisation, runtime, worklist
from engine.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound, PermissionDenied
from engine.store import task_queue
from tests.conftest import deploy_text

REVIEW = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="defs" targetNamespace="http://example.org">
  <bpmn:process id="review" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="split" />
    <bpmn:parallelGateway id="split" />
    <bpmn:sequenceFlow id="f2" sourceRef="split" targetRef="check_a" />
    <bpmn:sequenceFlow id="f3" sourceRef="split" targetRef="check_b" />
    <bpmn:userTask id="check_a" name="核查甲" camunda:candidateGroups="gaj" />
    <bpmn:userTask id="check_b" name="核查乙" camunda:candidateGroups="gaj" />
    <bpmn:sequenceFlow id="f4" sourceRef="check_a" targetRef="join" />
    <bpmn:sequenceFlow id="f5" sourceRef="check_b" targetRef="join" />
    <bpmn:parallelGateway id="join" />
    <bpmn:sequenceFlow id="f6" sourceRef="join" targetRef="end" />
    <bpmn:endEvent id="end" />
  </bpmn:process>
</bpmn:definitions>
"""


def test_users_are_listed_with_roles_departments_and_the_tasks_they_hold(db, org):
    listed = {u["username"]: u for u in organisation.list_users(db)}
    assert listed["scjgj1"]["roles"] == ["clerk", "lead"] and listed["scjgj1"]["departments"] == ["scjgj"]
    assert listed["admin"]["active"] is True and listed["gaj1"]["open_tasks"] == 0


def test_update_user_changes_name_roles_and_departments(db, org):
    updated = organisation.update_user(db, "gaj2", org["admin"], name="公安二（借调）", roles=["clerk", "lead"],
                                       departments=["gaj", "swj"])
    assert updated["name"] == "公安二（借调）" and updated["roles"] == ["clerk", "lead"]
    assert accounts.get_user(db, "gaj2").departments == ("gaj", "swj")
    with pytest.raises(InvalidInput) as bad:
        organisation.update_user(db, "gaj2", org["admin"], roles=["emperor"], departments=["nowhere"])
    assert [p.field for p in bad.value.problems] == ["roles"]
    with pytest.raises(InvalidInput) as unknown:
        organisation.update_user(db, "gaj2", org["admin"], departments=["nowhere"])
    assert "nowhere" in unknown.value.problems[0].message
    assert accounts.get_user(db, "gaj2").departments == ("gaj", "swj")
    with pytest.raises(PermissionDenied):
        organisation.update_user(db, "gaj2", org["gaj1"], name="x")
    with pytest.raises(Conflict):
        organisation.update_user(db, "admin", org["admin"], roles=["clerk"])
    with pytest.raises(NotFound):
        organisation.update_user(db, "ghost", org["admin"], name="x")


def test_reset_password(db, org):
    organisation.reset_password(db, "gaj1", "a-new-password", org["admin"])
    assert accounts.authenticate(db, "gaj1", "a-new-password").username == "gaj1"
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(db, "gaj1", "gaj-pass-1")
    with pytest.raises(InvalidInput):
        organisation.reset_password(db, "gaj1", "short", org["admin"])


def test_deactivating_a_user_returns_their_claimed_tasks_to_the_department_queue(db, org):
    deploy_text(db, "review.bpmn", REVIEW)
    case = runtime.start_case(db, "review", {}, "window1")
    tasks = {t["bpmn_id"]: t["id"] for t in worklist.list_tasks(db, org["gaj1"])}
    runtime.claim(db, tasks["check_a"], org["gaj1"])
    runtime.claim(db, tasks["check_b"], org["gaj1"])
    assert worklist.list_tasks(db, org["gaj2"]) == []                           # claimed: out of the queue

    result = organisation.deactivate_user(db, "gaj1", org["admin"])
    assert result["returned_tasks"] == sorted(tasks.values())
    assert [(t["bpmn_id"], t["assignee"]) for t in worklist.list_tasks(db, org["gaj2"])] == [
        ("check_a", None), ("check_b", None)]
    with db.read() as conn:
        assert sorted(r.department_key for r in conn.execute(select(task_queue))) == ["gaj", "gaj"]
    returned = [e for e in worklist.get_instance(db, case["id"])["events"] if e["type"] == "task_returned"]
    assert [(e["task_id"], e["data"]["previous"]) for e in returned] == [(tasks["check_a"], "gaj1"),
                                                                          (tasks["check_b"], "gaj1")]
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(db, "gaj1", "gaj-pass-1")
    runtime.complete(db, tasks["check_a"], org["gaj2"], {})                    # a colleague carries on
    assert organisation.get_user(db, "gaj1")["active"] is False
    with pytest.raises(Conflict):
        organisation.deactivate_user(db, "gaj1", org["admin"])

    organisation.reactivate_user(db, "gaj1", org["admin"])
    assert accounts.authenticate(db, "gaj1", "gaj-pass-1").username == "gaj1"
    with pytest.raises(Conflict):
        organisation.deactivate_user(db, "admin", org["admin"])


def test_departments_are_added_and_renamed_and_lanes_follow_the_new_name(db, org):
    organisation.add_department(db, "xfjg", "消防救援支队", org["admin"])
    with db.read() as conn:
        assert accounts.resolve_departments(conn, ["消防救援支队"]) == ["xfjg"]
    organisation.rename_department(db, "xfjg", "消防救援大队", org["admin"])
    with db.read() as conn:
        assert accounts.resolve_departments(conn, ["消防救援大队"]) == ["xfjg"]
    assert {"key": "xfjg", "name": "消防救援大队", "members": 0} in organisation.list_departments(db)
    with pytest.raises(Conflict):
        organisation.rename_department(db, "gaj", "税务局", org["admin"])
    with pytest.raises(NotFound):
        organisation.rename_department(db, "nowhere", "某局", org["admin"])
    with pytest.raises(PermissionDenied):
        organisation.add_department(db, "abc", "某局", org["gaj1"])
