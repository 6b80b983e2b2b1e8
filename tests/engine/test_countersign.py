"""加签/减签 on a running countersign: new copies, removed copies, counters, completion condition, reloads."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from engine import accounts, countersign, migration, runtime, snapshot, worklist
from engine.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from engine.store import human_task, task_queue, timer
from tests.conftest import deploy_text
from tests.processes.conftest import make_clerks
from tests.processes.harness import deploy_processes
from tests.processes.test_construction_project import items_seen, project, sign as sign_survey, stage_intake
from tests.processes.test_construction_project import start as start_project, through_stage1

SHANGHAI = ZoneInfo("Asia/Shanghai")
SURVEY_1 = ["ghj", "sthjj", "swuj", "zrzyj"]
SURVEY_2 = ["cgj", "jtj", "swuj"]
SIGNERS = {"gaj": "公安局", "swj": "税务局", "rsj": "人社局"}
CONDITION = ('<bpmn:completionCondition xsi:type="bpmn:tFormalExpression">nrOfCompletedInstances &gt;= 2'
             '</bpmn:completionCondition>')


def countersign_xml(key: str = "countersign_review", condition: str = "", handover: str = "统一出件") -> str:
    """Window intake, a countersign of three departments (optionally N of M) with a 3-working-day limit, hand-over."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" id="Definitions_{key}" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="{key}" name="会签（测试）" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>f_start</bpmn:outgoing></bpmn:startEvent>
    <bpmn:scriptTask id="invite" name="抄告会签部门" scriptFormat="python">
      <bpmn:incoming>f_start</bpmn:incoming><bpmn:outgoing>f_invite</bpmn:outgoing>
      <bpmn:script>signers = {SIGNERS!r}</bpmn:script>
    </bpmn:scriptTask>
    <bpmn:userTask id="sign" name="会签" camunda:candidateGroups="${{department}}">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="sign_opinion" label="会签意见" type="string">
            <camunda:validation><camunda:constraint name="required" /></camunda:validation>
          </camunda:formField>
        </camunda:formData>
      </bpmn:extensionElements>
      <bpmn:incoming>f_invite</bpmn:incoming><bpmn:outgoing>f_sign</bpmn:outgoing>
      <bpmn:multiInstanceLoopCharacteristics camunda:collection="signers" camunda:elementVariable="department">{condition}</bpmn:multiInstanceLoopCharacteristics>
    </bpmn:userTask>
    <bpmn:boundaryEvent id="sign_limit" name="超时催办" cancelActivity="false" attachedToRef="sign">
      <bpmn:outgoing>f_limit</bpmn:outgoing>
      <bpmn:timerEventDefinition id="sign_limit_timer">
        <bpmn:timeDuration xsi:type="bpmn:tFormalExpression">workdays(3)</bpmn:timeDuration>
      </bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="urged" name="催办通知"><bpmn:incoming>f_limit</bpmn:incoming></bpmn:endEvent>
    <bpmn:userTask id="handover" name="{handover}"><bpmn:incoming>f_sign</bpmn:incoming><bpmn:outgoing>f_end</bpmn:outgoing></bpmn:userTask>
    <bpmn:endEvent id="end"><bpmn:incoming>f_end</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f_start" sourceRef="start" targetRef="invite" />
    <bpmn:sequenceFlow id="f_invite" sourceRef="invite" targetRef="sign" />
    <bpmn:sequenceFlow id="f_sign" sourceRef="sign" targetRef="handover" />
    <bpmn:sequenceFlow id="f_limit" sourceRef="sign_limit" targetRef="urged" />
    <bpmn:sequenceFlow id="f_end" sourceRef="handover" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""


@pytest.fixture
def clock():
    """Monday 2026-03-02 10:00 at the service centre, frozen; tests move it."""
    with time_machine.travel(datetime(2026, 3, 2, 10, 0, tzinfo=SHANGHAI), tick=False) as traveller:
        yield traveller


@pytest.fixture
def people(db, org, clock):
    """org's 窗口/市场监管局/公安局/税务局 clerks plus 人社局, 医保局, leads and a supervisor."""
    org["rsj1"] = accounts.create_user(db, "rsj1", "rsj-pass-1", "人社一", ["rsj"], ["clerk"])
    org["ybj1"] = accounts.create_user(db, "ybj1", "ybj-pass-1", "医保一", ["ybj"], ["clerk"])
    org["gaj_lead"] = accounts.create_user(db, "gaj_lead", "lead-pass-1", "公安负责人", ["gaj"], ["clerk", "lead"])
    org["ybj_lead"] = accounts.create_user(db, "ybj_lead", "lead-pass-2", "医保负责人", ["ybj"], ["clerk", "lead"])
    org["supervisor"] = accounts.create_user(db, "supervisor", "super-pass-1", "监察", [], ["supervisor"])
    deploy_text(db, "countersign_review.bpmn", countersign_xml())
    deploy_text(db, "countersign_two_of_three.bpmn", countersign_xml("countersign_two_of_three", CONDITION))
    return org


CLERKS = {"gaj": "gaj1", "swj": "swj1", "rsj": "rsj1", "ybj": "ybj1", "scjgj": "scjgj1"}


def cold() -> None:
    """Forget every live workflow and parsed spec, as a fresh process would: the next step decodes from the database."""
    snapshot.snapshots.clear()
    snapshot.forget_specs()


def start(db, key="countersign_review") -> int:
    return runtime.start_case(db, key, {"applicant": "某某建设有限公司"}, "window1")["id"]


def copies(db, case_id) -> dict:
    """department -> status of every copy of the countersign the case has had."""
    rows = [t for t in worklist.get_instance(db, case_id)["tasks"] if t["bpmn_id"] == "sign"]
    return {t["departments"][0]: t["status"] for t in rows}


def open_copy(db, people, case_id, department) -> dict:
    found = [t for t in worklist.list_tasks(db, people[CLERKS[department]], limit=500)
             if t["instance_id"] == case_id and t["bpmn_id"] == "sign"]
    assert len(found) == 1, f"{department} sees {len(found)} copies"
    return found[0]


def sign(db, people, case_id, department, opinion="同意"):
    task = open_copy(db, people, case_id, department)
    cold()
    return runtime.complete(db, task["id"], people[CLERKS[department]], {"sign_opinion": opinion})


def stored_workflow(db, case_id):
    """The case's workflow as decoded from the database (read through the runtime, which changes nothing)."""
    cold()
    case = runtime.mutate_case(db, case_id, None, lambda conn, case: False)
    cold()
    return case.workflow


def data_at(db, case_id, bpmn_id) -> dict:
    tasks = [t for t in stored_workflow(db, case_id).get_tasks() if t.task_spec.bpmn_id == bpmn_id]
    assert tasks, f"case {case_id} has not reached {bpmn_id}"
    return dict(tasks[-1].data)


def events(db, case_id, type_):
    return [e for e in worklist.get_instance(db, case_id)["events"] if e["type"] == type_]


def window_sees_handover(db, people, case_id) -> bool:
    return any(t["bpmn_id"] == "handover" and t["instance_id"] == case_id
               for t in worklist.list_tasks(db, people["window1"], limit=500))


# ---- 加签 --------------------------------------------------------------------------------------------

def test_added_department_gets_its_own_ready_copy_with_the_siblings_deadline(db, people):
    case_id = start(db)
    gaj_copy = open_copy(db, people, case_id, "gaj")
    cold()
    result = countersign.add_countersigner(db, gaj_copy["id"], people["gaj_lead"], "ybj", "涉及医保定点")
    new = open_copy(db, people, case_id, "ybj")
    assert result["new_task_id"] == new["id"] and result["department"] == "ybj"
    assert copies(db, case_id) == {"gaj": "open", "swj": "open", "rsj": "open", "ybj": "open"}
    assert new["due_at"] == gaj_copy["due_at"] is not None
    with db.read() as conn:
        queued = set(conn.execute(select(task_queue.c.department_key)
                                  .where(task_queue.c.human_task_id == new["id"])).scalars())
    assert queued == {"ybj"}
    added = events(db, case_id, "countersigner_added")
    assert [(e["actor"], e["task_id"], e["data"]["department"], e["data"]["reason"]) for e in added] == [
        ("gaj_lead", gaj_copy["id"], "ybj", "涉及医保定点")]
    # The department map of the step carries the new department, read back from the database.
    assert stored_workflow(db, case_id).get_tasks(spec_name="sign")[0].data["signers"] == {**SIGNERS, "ybj": "医保局"}


def test_all_must_sign_waits_for_the_added_copy_and_merges_it(db, people):
    case_id = start(db)
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "ybj",
                                  "涉及医保")
    for department in ("gaj", "swj", "rsj"):
        sign(db, people, case_id, department)
    assert not window_sees_handover(db, people, case_id)
    counters = sign(db, people, case_id, "ybj")
    assert counters["case_status"] == "running"
    assert window_sees_handover(db, people, case_id)
    last = data_at(db, case_id, "handover")
    assert last["signers"] == {**SIGNERS, "ybj": "医保局"}
    signed = [t for t in stored_workflow(db, case_id).get_tasks() if t.task_spec.name == "sign [child]"
              and t.data.get("department") == "医保局"][0]
    assert (signed.data["nrOfInstances"], signed.data["nrOfCompletedInstances"]) == (4, 4)


def test_added_copy_counts_in_the_completion_condition(db, people):
    case_id = start(db, "countersign_two_of_three")
    countersign.add_countersigner(db, open_copy(db, people, case_id, "swj")["id"], people["supervisor"], "ybj", "加签")
    sign(db, people, case_id, "ybj")
    assert not window_sees_handover(db, people, case_id)
    sign(db, people, case_id, "gaj")
    assert window_sees_handover(db, people, case_id)
    assert copies(db, case_id) == {"gaj": "completed", "swj": "cancelled", "rsj": "cancelled", "ybj": "completed"}


def test_add_refuses_bad_input_and_a_department_that_already_signs(db, people):
    case_id = start(db)
    task = open_copy(db, people, case_id, "gaj")
    for department in ("nope", "", None):
        with pytest.raises(InvalidInput) as bad:
            countersign.add_countersigner(db, task["id"], people["gaj_lead"], department, "理由")
        assert bad.value.problems[0].field == "department"
    with pytest.raises(InvalidInput) as both:
        countersign.add_countersigner(db, task["id"], people["gaj_lead"], "nope", "")
    assert {p.field for p in both.value.problems} == {"department", "reason"}
    with pytest.raises(InvalidInput) as twice:
        countersign.add_countersigner(db, task["id"], people["gaj_lead"], "swj", "理由")
    assert twice.value.problems[0].field == "department" and "税务局" in twice.value.message
    sign(db, people, case_id, "gaj")
    swj_copy = open_copy(db, people, case_id, "swj")
    with pytest.raises(InvalidInput) as signed:
        countersign.add_countersigner(db, swj_copy["id"], people["supervisor"], "gaj", "再签")
    assert signed.value.problems[0].field == "department"
    with pytest.raises(InvalidInput) as empty:
        countersign.add_countersigner(db, swj_copy["id"], people["supervisor"], "ybj", "  ")
    assert empty.value.problems[0].field == "reason"
    assert copies(db, case_id) == {"gaj": "completed", "swj": "open", "rsj": "open"}
    assert events(db, case_id, "countersigner_added") == []


def test_who_may_add_or_remove(db, people):
    case_id = start(db)
    task = open_copy(db, people, case_id, "gaj")
    for user in ("gaj1", "window1", "ybj_lead", "scjgj1"):     # a clerk; the window; leads of departments outside
        with pytest.raises(PermissionDenied):
            countersign.add_countersigner(db, task["id"], people[user], "ybj", "理由")
        with pytest.raises(PermissionDenied):
            countersign.remove_countersigner(db, task["id"], people[user], "理由")
    countersign.add_countersigner(db, task["id"], people["admin"], "scjgj", "管理员加签")
    # Once 医保局 holds a copy, its lead may change the countersign too.
    countersign.add_countersigner(db, task["id"], people["gaj_lead"], "ybj", "加签")
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "scjgj")["id"], people["ybj_lead"], "不涉及")
    assert copies(db, case_id) == {"gaj": "open", "swj": "open", "rsj": "open", "scjgj": "removed", "ybj": "open"}


def test_a_task_that_is_not_a_countersign_is_refused_by_name(db, people):
    case_id = start(db)
    for department in SIGNERS:
        sign(db, people, case_id, department)
    handover = [t for t in worklist.list_tasks(db, people["window1"]) if t["instance_id"] == case_id][0]
    with pytest.raises(Conflict) as refused:
        countersign.add_countersigner(db, handover["id"], people["supervisor"], "ybj", "理由")
    assert "统一出件" in refused.value.message and str(handover["id"]) in refused.value.message
    with pytest.raises(Conflict):
        countersign.remove_countersigner(db, handover["id"], people["supervisor"], "理由")
    with pytest.raises(NotFound):
        countersign.add_countersigner(db, 999999, people["supervisor"], "ybj", "理由")


# ---- 减签 --------------------------------------------------------------------------------------------

def test_removed_copy_leaves_every_list_and_the_department_map(db, people):
    case_id = start(db)
    rsj_copy = open_copy(db, people, case_id, "rsj")
    cold()
    result = countersign.remove_countersigner(db, rsj_copy["id"], people["gaj_lead"], "与人社无关")
    assert result["case_status"] == "running"
    assert [t for t in worklist.list_tasks(db, people["rsj1"]) if t["instance_id"] == case_id] == []
    with db.read() as conn:
        row = conn.execute(select(human_task).where(human_task.c.id == rsj_copy["id"])).mappings().first()
        queued = conn.execute(select(task_queue).where(task_queue.c.human_task_id == rsj_copy["id"])).all()
    assert (row["status"], row["completed_by"], queued) == ("removed", None, [])
    assert row["completed_at"] is not None
    removed = events(db, case_id, "countersigner_removed")
    assert [(e["actor"], e["task_id"], e["data"]["departments"], e["data"]["reason"]) for e in removed] == [
        ("gaj_lead", rsj_copy["id"], ["rsj"], "与人社无关")]
    assert events(db, case_id, "task_cancelled") == []
    assert stored_workflow(db, case_id).get_tasks(spec_name="sign")[0].data["signers"] == {
        "gaj": "公安局", "swj": "税务局"}
    sign(db, people, case_id, "gaj")
    last = sign(db, people, case_id, "swj")
    assert window_sees_handover(db, people, case_id) and last["case_status"] == "running"
    assert data_at(db, case_id, "handover")["signers"] == {"gaj": "公安局", "swj": "税务局"}
    signed = [t for t in stored_workflow(db, case_id).get_tasks() if t.task_spec.name == "sign [child]"
              and t.data.get("department") == "税务局"][0]
    assert (signed.data["nrOfInstances"], signed.data["nrOfCompletedInstances"]) == (2, 2)


def test_removing_the_last_unsigned_copy_finishes_the_countersign(db, people):
    case_id = start(db)
    sign(db, people, case_id, "gaj")
    sign(db, people, case_id, "swj")
    cold()
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "rsj")["id"], people["supervisor"], "不需要")
    assert window_sees_handover(db, people, case_id)
    assert copies(db, case_id) == {"gaj": "completed", "swj": "completed", "rsj": "removed"}
    assert data_at(db, case_id, "handover")["signers"] == {"gaj": "公安局", "swj": "税务局"}
    # The countersign's time limit went with it: only the hand-over is left, without a timer.
    with db.read() as conn:
        assert conn.execute(select(timer).where(timer.c.instance_id == case_id)).all() == []


def test_removal_that_meets_the_completion_condition_withdraws_the_rest(db, people):
    case_id = start(db, "countersign_two_of_three")
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "ybj", "加签")
    sign(db, people, case_id, "gaj")
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "swj")["id"], people["supervisor"], "不涉及")
    assert not window_sees_handover(db, people, case_id)       # one signed of three left: not two yet
    sign(db, people, case_id, "ybj")
    assert window_sees_handover(db, people, case_id)
    assert copies(db, case_id) == {"gaj": "completed", "swj": "removed", "rsj": "cancelled", "ybj": "completed"}


def test_condition_counting_instances_is_met_by_a_removal(db, people):
    deploy_text(db, "countersign_half.bpmn", countersign_xml(
        "countersign_half", '<bpmn:completionCondition xsi:type="bpmn:tFormalExpression">'
        'nrOfCompletedInstances * 2 &gt;= nrOfInstances + 1</bpmn:completionCondition>'))
    case_id = start(db, "countersign_half")
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "ybj", "加签")
    sign(db, people, case_id, "gaj")
    sign(db, people, case_id, "swj")                       # 2 of 4: 4 < 5, not yet
    assert not window_sees_handover(db, people, case_id)
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "ybj")["id"], people["supervisor"], "不涉及")
    assert window_sees_handover(db, people, case_id)       # 2 of 3: 4 >= 4
    assert copies(db, case_id) == {"gaj": "completed", "swj": "completed", "rsj": "cancelled", "ybj": "removed"}


def test_remove_refuses_signed_copies_the_last_copy_and_an_empty_reason(db, people):
    case_id = start(db)
    gaj_copy = open_copy(db, people, case_id, "gaj")
    with pytest.raises(InvalidInput) as empty:
        countersign.remove_countersigner(db, gaj_copy["id"], people["supervisor"], "")
    assert empty.value.problems[0].field == "reason"
    sign(db, people, case_id, "gaj")
    with pytest.raises(Conflict) as signed:
        countersign.remove_countersigner(db, gaj_copy["id"], people["supervisor"], "撤回")
    assert "signed" in signed.value.message
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "swj")["id"], people["supervisor"], "不涉及")
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "rsj")["id"], people["supervisor"], "不涉及")
    assert window_sees_handover(db, people, case_id)      # the one signed copy is all that is left
    # A countersign with nothing signed keeps its last open copy.
    other = start(db)
    for department in ("gaj", "swj"):
        countersign.remove_countersigner(db, open_copy(db, people, other, department)["id"], people["supervisor"], "x")
    with pytest.raises(Conflict) as last:
        countersign.remove_countersigner(db, open_copy(db, people, other, "rsj")["id"], people["supervisor"], "x")
    assert "last copy" in last.value.message
    assert copies(db, other) == {"gaj": "removed", "swj": "removed", "rsj": "open"}


def test_a_removed_department_may_be_added_again(db, people):
    case_id = start(db)
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "rsj")["id"], people["supervisor"], "误邀")
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "rsj", "补邀")
    assert [t["status"] for t in worklist.get_instance(db, case_id)["tasks"]
            if t["bpmn_id"] == "sign" and t["departments"] == ["rsj"]] == ["removed", "open"]
    for department in SIGNERS:
        sign(db, people, case_id, department)
    assert data_at(db, case_id, "handover")["signers"] == SIGNERS


# ---- what the task page shows ------------------------------------------------------------------------

def test_panel_lists_this_rounds_copies_and_what_may_still_be_added(db, people):
    case_id = start(db)
    gaj_copy = open_copy(db, people, case_id, "gaj")
    countersign.add_countersigner(db, gaj_copy["id"], people["supervisor"], "ybj", "加签")
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "rsj")["id"], people["supervisor"], "减签")
    sign(db, people, case_id, "swj")
    panel = countersign.countersign_panel(db, gaj_copy["id"], people["gaj_lead"])
    assert [(c["departments"], c["status"]) for c in panel["copies"]] == [
        (["gaj"], "open"), (["swj"], "completed"), (["ybj"], "open")]
    assert panel["copies"][0]["department_names"] == ["公安局"]
    assert panel["may_change"] is True
    assert [c["key"] for c in panel["choices"]] == ["rsj", "scjgj", "window"]
    clerk = countersign.countersign_panel(db, gaj_copy["id"], people["gaj1"])
    assert (clerk["may_change"], clerk["choices"]) == (False, [])
    assert len(clerk["copies"]) == 3
    assert countersign.countersign_panel(db, gaj_copy["id"], people["ybj_lead"])["may_change"] is True
    assert countersign.countersign_panel(db, gaj_copy["id"], people["scjgj1"])["may_change"] is False


def test_panel_is_none_for_other_and_closed_tasks(db, people):
    case_id = start(db)
    gaj_copy = open_copy(db, people, case_id, "gaj")
    for department in SIGNERS:
        sign(db, people, case_id, department)
    handover = [t for t in worklist.list_tasks(db, people["window1"]) if t["instance_id"] == case_id][0]
    assert countersign.countersign_panel(db, handover["id"], people["supervisor"]) is None
    assert countersign.countersign_panel(db, gaj_copy["id"], people["supervisor"]) is None   # signed
    assert countersign.countersign_panel(db, 999999, people["supervisor"]) is None


# ---- with the rest of the engine ---------------------------------------------------------------------

def test_changes_survive_a_cold_reload_and_match_a_full_encode(db, people):
    case_id = start(db)
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "ybj", "加签")
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "swj")["id"], people["supervisor"], "减签")
    cold()
    workflow = stored_workflow(db, case_id)
    copies_left = sorted(t.data["department"] for t in workflow.get_tasks(spec_name="sign [child]"))
    assert copies_left == ["人社局", "公安局", "医保局"]
    assert snapshot.Snapshot(workflow, 0).encode() == snapshot.Snapshot(stored_workflow(db, case_id), 0).encode()
    for department in ("gaj", "rsj", "ybj"):
        sign(db, people, case_id, department)
    assert window_sees_handover(db, people, case_id)


def test_added_copy_waits_out_a_pause_and_gets_the_siblings_moved_deadline(db, people, clock):
    case_id = start(db)
    runtime.pause_case(db, case_id, people["window1"], "特别程序", "专家评审")
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "ybj", "加签")
    clock.move_to(datetime(2026, 3, 4, 10, 0, tzinfo=SHANGHAI))
    runtime.resume_case(db, case_id, people["window1"])
    dues = {department: open_copy(db, people, case_id, department)["due_at"] for department in (*SIGNERS, "ybj")}
    assert len(set(dues.values())) == 1 and None not in dues.values()
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "ybj")["id"], people["supervisor"], "减签")
    for department in SIGNERS:
        sign(db, people, case_id, department)
    assert window_sees_handover(db, people, case_id)


def test_the_limit_timer_still_fires_for_every_copy(db, people, clock):
    case_id = start(db)
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "ybj", "加签")
    clock.move_to(datetime(2026, 3, 6, 18, 0, tzinfo=SHANGHAI))     # past three working days
    cold()
    from engine import timers
    timers.sweep(db)
    assert len(events(db, case_id, "timer_fired")) == 1
    assert copies(db, case_id) == {"gaj": "open", "swj": "open", "rsj": "open", "ybj": "open"}
    for department in (*SIGNERS, "ybj"):
        sign(db, people, case_id, department)
    assert window_sees_handover(db, people, case_id)


def test_a_case_with_an_added_copy_migrates_to_a_new_version(db, people):
    case_id = start(db)
    countersign.add_countersigner(db, open_copy(db, people, case_id, "gaj")["id"], people["supervisor"], "ybj", "加签")
    countersign.remove_countersigner(db, open_copy(db, people, case_id, "rsj")["id"], people["supervisor"], "减签")
    deploy_text(db, "countersign_review.bpmn", countersign_xml(handover="统一出件（新版）"))
    result = migration.migrate_case(db, case_id, 2, people["admin"])
    assert result["migrated"] is True
    assert copies(db, case_id) == {"gaj": "open", "swj": "open", "rsj": "removed", "ybj": "open"}
    cold()
    for department in ("gaj", "swj", "ybj"):
        sign(db, people, case_id, department)
    handover = [t for t in worklist.list_tasks(db, people["window1"]) if t["instance_id"] == case_id]
    assert [t["name"] for t in handover] == ["统一出件（新版）"]


# ---- on the shipped 工程建设项目 flow -------------------------------------------------------------------

@pytest.fixture
def construction(db, clock):
    clerks = make_clerks(db, "construction_project")
    deploy_processes(db)
    return clerks


@pytest.fixture
def supervisor(db):
    return accounts.create_user(db, "supervisor", "super-pass-1", "监察", [], ["supervisor"])


def test_joint_survey_with_an_added_department_waits_for_all_five(db, construction):
    case = start_project(db, construction)
    case.complete("intake", "window", **project())
    assert case.worklists() == {department: ["s1_survey"] for department in SURVEY_1}
    # 规划局's lead invites 发展改革委 to the site survey.
    countersign.add_countersigner(db, case.task("s1_survey", "ghj")["id"], construction["ghj"], "fgw", "涉及立项选址")
    assert case.worklists() == {department: ["s1_survey"] for department in (*SURVEY_1, "fgw")}
    for department in SURVEY_1:
        sign_survey(case, "s1_survey", department)
    assert case.worklists() == {"fgw": ["s1_survey"]}
    sign_survey(case, "s1_survey", "fgw")
    assert case.worklists() == items_seen(1)
    merged = stored_workflow(db, case.id).get_tasks(spec_name="s1_survey")[0].data["s1_survey_departments"]
    assert merged == {"zrzyj": "自然资源局", "ghj": "规划局", "sthjj": "生态环境局", "swuj": "水务局", "fgw": "发展改革委"}


def test_road_survey_two_of_three_after_a_removal_and_an_addition(db, construction, supervisor):
    case = start_project(db, construction)
    through_stage1(case, road_impact=True, major_project=True)
    stage_intake(case, 2)
    assert case.worklists() == {department: ["s2_survey"] for department in SURVEY_2}
    sign_survey(case, "s2_survey", "jtj", "不影响通行")
    countersign.remove_countersigner(db, case.task("s2_survey", "cgj")["id"], supervisor, "不占道")
    assert case.worklists() == {"swuj": ["s2_survey"]}                        # one of two signed: waits
    countersign.add_countersigner(db, case.task("s2_survey", "swuj")["id"], supervisor, "ghj",
                                  "规划局到场")
    sign_survey(case, "s2_survey", "ghj", "同意")
    # Two signed: the 水务局 copy is withdrawn and the stage moves on to the expert review.
    assert case.worklists() == {"ghj": ["s2_expert"]}
    survey = {t["departments"][0]: t["status"] for t in case.tasks("s2_survey")}
    assert survey == {"jtj": "completed", "cgj": "removed", "swuj": "cancelled", "ghj": "completed"}
