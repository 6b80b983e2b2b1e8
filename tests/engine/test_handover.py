"""Passing tasks between people (转办, 委托, 催办) and sending a case back (退回) to an earlier step."""
from __future__ import annotations

import pytest

from engine import accounts, handover, runtime, worklist
from engine.errors import Conflict, InvalidInput, PermissionDenied
from tests.engine.test_runtime import DEPARTMENTS, PARALLEL, REVIEWERS, start_and_accept, task_named
from tests.conftest import REPO as REPO_ROOT, deploy_text


@pytest.fixture
def flow(db, org):
    org["rsj1"] = accounts.create_user(db, "rsj1", "rsj-pass-1", "人社一", ["rsj"], ["clerk"])
    org["window_lead"] = accounts.create_user(db, "window_lead", "lead-pass-1", "窗口负责人", ["window"],
                                              ["clerk", "window", "lead"])
    deploy_text(db, "parallel_review.bpmn", PARALLEL)
    return org


def review_all(db, users, case_id, opinion="同意"):
    for department in DEPARTMENTS:
        reviewer = users[REVIEWERS[department]]
        task = task_named(db, reviewer, f"review_{department}", case_id)
        runtime.complete(db, task["id"], reviewer, {f"{department}_opinion": opinion})


def test_lead_sends_a_branch_back_and_the_consolidation_waits_for_the_redo(db, flow):
    case = start_and_accept(db, flow)
    review_all(db, flow, case["id"])
    handover_task = task_named(db, flow["window_lead"], "handover", case["id"])
    targets = {t["bpmn_id"]: t["id"] for t in runtime.send_back_targets(db, handover_task["id"])}
    assert set(targets) == {"intake", *(f"review_{d}" for d in DEPARTMENTS)}
    with pytest.raises(PermissionDenied):
        runtime.send_back(db, handover_task["id"], flow["window1"], targets["review_gaj"], "材料不符")
    with pytest.raises(InvalidInput):
        runtime.send_back(db, handover_task["id"], flow["window_lead"], targets["review_gaj"], " ")
    runtime.send_back(db, handover_task["id"], flow["window_lead"], targets["review_gaj"], "公章备案信息有误")
    assert [t for t in worklist.list_tasks(db, flow["window_lead"]) if t["instance_id"] == case["id"]] == []
    redo = task_named(db, flow["gaj1"], "review_gaj", case["id"])
    runtime.complete(db, redo["id"], flow["gaj1"], {"gaj_opinion": "已更正"})
    again = task_named(db, flow["window_lead"], "handover", case["id"])
    assert again["id"] != handover_task["id"]
    runtime.complete(db, again["id"], flow["window_lead"], {})
    instance = worklist.get_instance(db, case["id"])
    assert instance["status"] == "completed"
    sent = [e for e in instance["events"] if e["type"] == "task_sent_back"]
    assert len(sent) == 1 and sent[0]["data"]["to"] == "review_gaj" and sent[0]["actor"] == "window_lead"
    statuses = [(t["bpmn_id"], t["status"]) for t in instance["tasks"] if t["bpmn_id"] in ("review_gaj", "handover")]
    assert statuses == [("review_gaj", "completed"), ("handover", "sent_back"), ("review_gaj", "completed"),
                        ("handover", "completed")]


def test_send_back_only_to_earlier_steps_of_the_same_case(db, flow):
    first = start_and_accept(db, flow)
    second = start_and_accept(db, flow, "另一公司")
    review_all(db, flow, first["id"])
    handover_task = task_named(db, flow["window_lead"], "handover", first["id"])
    other = [t for t in worklist.get_instance(db, second["id"])["tasks"] if t["bpmn_id"] == "intake"][0]
    with pytest.raises(InvalidInput):
        runtime.send_back(db, handover_task["id"], flow["window_lead"], other["id"], "wrong case")


def test_reassign_within_the_department(db, flow):
    start_and_accept(db, flow)
    task = task_named(db, flow["gaj1"], "review_gaj")
    runtime.claim(db, task["id"], flow["gaj1"])
    with pytest.raises(PermissionDenied):
        handover.reassign(db, task["id"], flow["gaj2"], "gaj2")
    with pytest.raises(InvalidInput):
        handover.reassign(db, task["id"], flow["gaj1"], "swj1")        # not in 公安局
    handover.reassign(db, task["id"], flow["gaj1"], "gaj2", "休假")
    assert [t["id"] for t in worklist.list_tasks(db, flow["gaj2"])] == [task["id"]]
    assert worklist.list_tasks(db, flow["gaj1"]) == []
    runtime.complete(db, task["id"], flow["gaj2"], {"gaj_opinion": "同意"})


def test_delegate_and_take_back(db, flow):
    start_and_accept(db, flow)
    task = task_named(db, flow["gaj1"], "review_gaj")
    with pytest.raises(PermissionDenied):
        handover.delegate(db, task["id"], flow["gaj1"], "gaj2")       # must hold it first
    runtime.claim(db, task["id"], flow["gaj1"])
    handover.delegate(db, task["id"], flow["gaj1"], "gaj2", "出差")
    assert task_named(db, flow["gaj2"], "review_gaj")["assignee"] == "gaj2"
    with pytest.raises(Conflict):
        runtime.complete(db, task["id"], flow["gaj1"], {"gaj_opinion": "x"})
    handover.take_back(db, task["id"], flow["gaj1"])
    runtime.complete(db, task["id"], flow["gaj1"], {"gaj_opinion": "同意"})
    types = [e["type"] for e in worklist.get_instance(db, task["instance_id"])["events"]]
    assert types.count("task_delegated") == 1 and types.count("task_taken_back") == 1


def test_urge_by_a_lead(db, flow):
    start_and_accept(db, flow)
    task = task_named(db, flow["gaj1"], "review_gaj")
    with pytest.raises(PermissionDenied):
        handover.urge(db, task["id"], flow["gaj2"], "快点")
    handover.urge(db, task["id"], flow["window_lead"], "申请人今日来取件，请尽快办理")
    handover.urge(db, task["id"], flow["window_lead"], "再次催办")
    events = [e for e in worklist.get_instance(db, task["instance_id"])["events"] if e["type"] == "task_urged"]
    assert [e["data"]["message"] for e in events] == ["申请人今日来取件，请尽快办理", "再次催办"]
    assert worklist.get_task(db, task["id"], flow["gaj1"])["urge_count"] == 2


def test_sending_back_from_a_step_with_its_own_time_limit(db, org):
    """The consolidation's own limit must not survive a 退回 as a stray timer."""
    from engine.store import timer
    from sqlalchemy import select
    xml = (REPO_ROOT / "tests" / "fixtures" / "bpmn" / "time_limits.bpmn").read_text(encoding="utf-8")
    deploy_text(db, "time_limits.bpmn", xml)
    lead = accounts.create_user(db, "gajlead", "gaj-lead-pass", "公安负责人", ["gaj"], ["clerk", "lead"])
    case = runtime.start_case(db, "time_limits", {}, "window1")
    runtime.complete(db, task_named(db, org["window1"], "intake", case["id"])["id"], org["window1"],
                     {"decision": "accept"})
    review = task_named(db, lead, "review_gaj", case["id"])
    targets = {t["bpmn_id"]: t["id"] for t in runtime.send_back_targets(db, review["id"])}
    runtime.send_back(db, review["id"], lead, targets["intake"], "重新受理")
    runtime.complete(db, task_named(db, org["window1"], "intake", case["id"])["id"], org["window1"],
                     {"decision": "accept"})
    redo = task_named(db, lead, "review_gaj", case["id"])
    runtime.complete(db, redo["id"], lead, {"gaj_approved": True})
    with db.read() as conn:
        bpmn_ids = sorted(r.bpmn_id for r in conn.execute(select(timer.c.bpmn_id)))
    assert bpmn_ids == ["swj_urge"]          # only the live branch's escalation is still waiting
