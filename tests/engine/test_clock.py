"""Time limits on the case clock: working-day deadlines, lights, deemed consent, escalation, pauses, extensions."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from engine import runtime, timers, worklist
from engine.errors import Conflict, PermissionDenied
from engine.store import clock_pause, timer
from tests.conftest import REPO, deploy_text

CST = ZoneInfo("Asia/Shanghai")
LIMITS = (REPO / "tests" / "fixtures" / "bpmn" / "time_limits.bpmn").read_text(encoding="utf-8")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=CST)


@pytest.fixture
def limits(db, org):
    deploy_text(db, "time_limits.bpmn", LIMITS)
    return org


def only_task(db, user, bpmn_id):
    tasks = [t for t in worklist.list_tasks(db, user) if t["bpmn_id"] == bpmn_id]
    assert len(tasks) == 1, f"{user.username} should see one {bpmn_id}, sees {tasks}"
    return tasks[0]


def accept(db, users, when: str):
    with time_machine.travel(at(when), tick=False):
        case = runtime.start_case(db, "time_limits", {"applicant": "测试公司"}, "window1")
        runtime.complete(db, only_task(db, users["window1"], "intake")["id"], users["window1"], {"decision": "accept"})
    return case


def test_case_and_task_deadlines_skip_national_day(db, limits):
    case = accept(db, limits, "2026-09-30 10:00")
    instance = worklist.get_instance(db, case["id"])
    # 5 working days after Wed 09-30: 10-08, 10-09, Sat 10-10 (调休), 10-12, 10-13 → 10-13 17:30.
    assert datetime.fromisoformat(instance["due_at"]) == at("2026-10-13 17:30")
    gaj = only_task(db, limits["gaj1"], "review_gaj")
    assert datetime.fromisoformat(gaj["due_at"]) == at("2026-10-09 17:30")     # workdays(2)
    with db.read() as conn:
        rows = {r.bpmn_id: r.due_at for r in conn.execute(select(timer.c.bpmn_id, timer.c.due_at))}
    # workhours(4) from 10:00 on 09-30: 10:00-12:00 + 13:30-15:30.
    assert rows == {"gaj_limit": at("2026-10-09 17:30"), "swj_urge": at("2026-09-30 15:30")}


def test_lights_go_yellow_then_red(db, limits):
    case = accept(db, limits, "2026-09-30 10:00")
    gaj1 = limits["gaj1"]
    for moment, light in [("2026-10-08 10:00", "green"), ("2026-10-09 09:00", "yellow"),
                          ("2026-10-09 17:29", "yellow"), ("2026-10-09 17:31", "red")]:
        with time_machine.travel(at(moment), tick=False):
            assert only_task(db, gaj1, "review_gaj")["light"] == light, moment
    with time_machine.travel(at("2026-10-14 09:00"), tick=False):
        assert worklist.get_instance(db, case["id"])["light"] == "red"


def test_interrupting_timer_is_deemed_consent_and_the_join_proceeds(db, limits):
    case = accept(db, limits, "2026-09-30 10:00")
    with time_machine.travel(at("2026-10-08 09:00"), tick=False):
        swj = only_task(db, limits["swj1"], "review_swj")
        runtime.complete(db, swj["id"], limits["swj1"], {"swj_approved": True})
    with time_machine.travel(at("2026-10-09 17:29"), tick=False):
        assert timers.sweep(db) == 0
    with time_machine.travel(at("2026-10-09 17:31"), tick=False):
        assert timers.sweep(db) == 1
        assert worklist.list_tasks(db, limits["gaj1"]) == []
    instance = worklist.get_instance(db, case["id"])
    assert instance["status"] == "completed"
    deemed = [e for e in instance["events"] if e["type"] == "deemed_consent"]
    assert len(deemed) == 1 and deemed[0]["data"]["departments"] == ["gaj"]
    assert deemed[0]["data"]["timer"] == "gaj_limit"
    assert datetime.fromisoformat(deemed[0]["at"]) == at("2026-10-09 17:31")
    assert [t["status"] for t in instance["tasks"] if t["bpmn_id"] == "review_gaj"] == ["cancelled"]


def test_non_interrupting_timer_escalates_and_leaves_the_task_open(db, limits):
    case = accept(db, limits, "2026-09-30 10:00")
    with time_machine.travel(at("2026-09-30 15:31"), tick=False):
        assert timers.sweep(db) == 1
        assert only_task(db, limits["swj1"], "review_swj")["status"] == "open"
    events = [e["type"] for e in worklist.get_instance(db, case["id"])["events"]]
    assert "timer_fired" in events and "deemed_consent" not in events


def test_supplement_pauses_the_clock_and_resume_moves_deadlines(db, limits):
    window1 = limits["window1"]
    with time_machine.travel(at("2026-09-30 10:00"), tick=False):
        case = runtime.start_case(db, "time_limits", {}, "window1")
    with time_machine.travel(at("2026-09-30 11:00"), tick=False):
        runtime.complete(db, only_task(db, window1, "intake")["id"], window1, {"decision": "supplement"})
    with time_machine.travel(at("2026-10-09 10:00"), tick=False):
        runtime.complete(db, only_task(db, window1, "supplement")["id"], window1, {})
    instance = worklist.get_instance(db, case["id"])
    # Paused 09-30 11:00 → 10-09 10:00 = 5 h + 7 h (10-08) + 1 h = 13 working hours; the committed
    # 10-13 17:30 moves by exactly that: 10-14 (7 h) and 6 h of 10-15 → 16:30.
    assert datetime.fromisoformat(instance["due_at"]) == at("2026-10-15 16:30")
    types = [e["type"] for e in instance["events"]]
    assert types.index("clock_paused") < types.index("clock_resumed")
    resumed = next(e for e in instance["events"] if e["type"] == "clock_resumed")
    assert resumed["data"]["paused_working_seconds"] == 13 * 3600
    with db.read() as conn:
        pause = conn.execute(select(clock_pause)).mappings().one()
    assert pause["kind"] == "补正" and pause["automatic"] and pause["working_seconds"] == 13 * 3600


def test_manual_pause_freezes_running_timers_and_shifts_them(db, limits):
    case = accept(db, limits, "2026-09-30 10:00")
    with time_machine.travel(at("2026-10-08 09:00"), tick=False):
        with pytest.raises(PermissionDenied):
            runtime.pause_case(db, case["id"], limits["gaj1"], "特别程序", "检验检测")
        runtime.pause_case(db, case["id"], limits["window1"], "特别程序", "检验检测", expected_workdays=3)
        with pytest.raises(Conflict):
            runtime.pause_case(db, case["id"], limits["window1"], "特别程序", "again")
    with db.read() as conn:
        assert conn.execute(select(timer)).all() == []        # nothing can fire while the clock stands still
    with time_machine.travel(at("2026-10-20 12:00"), tick=False):
        assert timers.sweep(db) == 0
        assert only_task(db, limits["gaj1"], "review_gaj")["status"] == "open"
    with time_machine.travel(at("2026-10-21 09:00"), tick=False):
        runtime.resume_case(db, case["id"], limits["window1"])
    gaj = only_task(db, limits["gaj1"], "review_gaj")
    # At the pause (10-08 09:00) the task had 10-08 and 10-09 left: 14 h → from 10-21 09:00 → 10-22 17:30.
    assert datetime.fromisoformat(gaj["due_at"]) == at("2026-10-22 17:30")
    with time_machine.travel(at("2026-10-22 17:31"), tick=False):
        assert timers.sweep(db) == 2            # the shifted limit and the (already late) escalation
    assert any(e["type"] == "deemed_consent" for e in worklist.get_instance(db, case["id"])["events"])


def test_extension_once_before_expiry(db, limits):
    case = accept(db, limits, "2026-09-30 10:00")
    gaj = only_task(db, limits["gaj1"], "review_gaj")
    lead = limits["scjgj1"]
    with time_machine.travel(at("2026-10-09 10:00"), tick=False):
        with pytest.raises(PermissionDenied):
            runtime.extend(db, limits["gaj1"], 2, "需要补充调查", task_id=gaj["id"])
        runtime.extend(db, lead, 2, "需要补充调查", task_id=gaj["id"])
        with pytest.raises(Conflict):
            runtime.extend(db, lead, 1, "again", task_id=gaj["id"])
        runtime.extend(db, lead, 3, "联合办理", instance_id=case["id"])
    assert datetime.fromisoformat(only_task(db, limits["gaj1"], "review_gaj")["due_at"]) == at("2026-10-12 17:30")
    assert datetime.fromisoformat(worklist.get_instance(db, case["id"])["due_at"]) == at("2026-10-16 17:30")
    with time_machine.travel(at("2026-10-10 17:31"), tick=False):
        assert timers.sweep(db) == 1            # only the escalation; the extended limit is not yet due
    with time_machine.travel(at("2026-10-20 10:00"), tick=False):
        with pytest.raises(Conflict):
            runtime.extend(db, lead, 1, "too late", instance_id=case["id"])


def test_light_changes_are_recorded_once_each(db, limits):
    from engine import lights
    case = accept(db, limits, "2026-09-30 10:00")
    with time_machine.travel(at("2026-10-08 10:00"), tick=False):
        runtime.complete(db, only_task(db, limits["swj1"], "review_swj")["id"], limits["swj1"], {})
        assert lights.sweep_lights(db) == 0
    with time_machine.travel(at("2026-10-09 09:00"), tick=False):
        assert lights.sweep_lights(db) == 1
        assert lights.sweep_lights(db) == 0
    with time_machine.travel(at("2026-10-09 17:31"), tick=False):
        assert lights.sweep_lights(db) == 1
    with time_machine.travel(at("2026-10-13 09:00"), tick=False):
        assert lights.sweep_lights(db) == 1      # the case itself: yellow on its last working day
    with time_machine.travel(at("2026-10-14 10:00"), tick=False):
        assert lights.sweep_lights(db) == 1      # the case is late: red
    with time_machine.travel(at("2026-11-03 17:29"), tick=False):
        assert lights.sweep_lights(db) == 0
    with time_machine.travel(at("2026-11-03 17:31"), tick=False):
        # the 20th working day after 09-30 is 11-03 (10-10 is a 调休 Saturday): statutory limit exceeded
        assert lights.sweep_lights(db) == 1
    events = [(e["type"], e["task_id"] is not None) for e in worklist.get_instance(db, case["id"])["events"]
              if e["type"].startswith(("task_y", "task_r", "case_y", "case_r", "statutory"))]
    assert events == [("task_yellow", True), ("task_red", True), ("case_yellow", False), ("case_red", False),
                      ("statutory_limit_exceeded", False)]


def test_yellow_threshold_is_configurable_per_flow_and_task(db, org):
    configured = LIMITS.replace(
        '<camunda:property name="statutoryLimit" value="workdays(20)" />',
        '<camunda:property name="statutoryLimit" value="workdays(20)" />\n'
        '        <camunda:property name="yellowThreshold" value="workdays(2)" />').replace(
        '''<bpmn:userTask id="review_gaj" name="公安局审查">
      <bpmn:extensionElements>''', '''<bpmn:userTask id="review_gaj" name="公安局审查">
      <bpmn:extensionElements>
        <camunda:properties><camunda:property name="yellowThreshold" value="workhours(2)" /></camunda:properties>''')
    deploy_text(db, "time_limits.bpmn", configured)
    case = accept(db, org, "2026-09-30 10:00")
    with time_machine.travel(at("2026-10-09 09:00"), tick=False):
        assert only_task(db, org["gaj1"], "review_gaj")["light"] == "green"    # 7 h left, threshold 2 h
    with time_machine.travel(at("2026-10-09 15:31"), tick=False):
        assert only_task(db, org["gaj1"], "review_gaj")["light"] == "yellow"
    with time_machine.travel(at("2026-10-12 10:00"), tick=False):
        # the case has 13 working hours left: yellow under the flow's 2-working-day threshold
        assert worklist.get_instance(db, case["id"])["light"] == "yellow"


def test_sending_back_past_the_split_drops_the_branches_timers(db, limits):
    """退回 to intake from a branch with a pending 催办 timer: the branches and their timers go away cleanly."""
    from engine import accounts
    case = accept(db, limits, "2026-09-30 10:00")
    lead = accounts.create_user(db, "swjlead", "swj-lead-pass", "税务负责人", ["swj"], ["clerk", "lead"])
    review = only_task(db, lead, "review_swj")
    targets = {t["bpmn_id"]: t["id"] for t in runtime.send_back_targets(db, review["id"])}
    with time_machine.travel(at("2026-09-30 11:00"), tick=False):
        runtime.send_back(db, review["id"], lead, targets["intake"], "材料需重新受理")
    open_steps = [t["bpmn_id"] for t in worklist.get_instance(db, case["id"])["tasks"] if t["status"] == "open"]
    assert open_steps == ["intake"]
    with db.read() as conn:
        assert conn.execute(select(timer)).all() == []
    with time_machine.travel(at("2026-10-20 11:00"), tick=False):
        assert timers.sweep(db) == 0
