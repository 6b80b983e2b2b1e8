"""好差评: one rating per finished case, poor ratings open a 15-working-day follow-up, complaints due in 10 working days."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from engine import accounts, applicants, ratings, runtime, worklist
from engine.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from engine.store import audit_event, rating
from tests.processes.conftest import at, clock, make_clerks  # noqa: F401  (clock is a fixture)
from tests.processes.harness import deploy_processes, reload

KEY = "enterprise_startup"
FIELDS = {"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": 100,
          "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": 12}


@pytest.fixture
def clerks(db, clock):
    clerks = make_clerks(db, KEY)
    deploy_processes(db)
    clerks["supervisor"] = accounts.create_user(db, "supervisor1", "supervisor-pass", "监察", [], ["supervisor"])
    return clerks


def finished_case(db, clerks) -> dict:
    """An online application the window does not accept (不予受理): the quickest way to a finished case."""
    applied = applicants.apply(db, KEY, FIELDS)
    task = next(t for t in worklist.list_tasks(db, clerks["window"]) if t["instance_id"] == applied["id"])
    reload()
    runtime.complete(db, task["id"], clerks["window"], {**FIELDS, "intake_decision": "reject",
                                                        "rejection_reason": "经营范围属于前置审批事项"})
    assert worklist.get_instance(db, applied["id"])["status"] == "completed"
    return applied


def test_only_a_finished_case_can_be_rated_and_only_once(db, clerks):
    running = applicants.apply(db, KEY, FIELDS)
    with pytest.raises(Conflict):
        ratings.rate(db, running["id"], 5, "很好")
    case = finished_case(db, clerks)
    with pytest.raises(InvalidInput) as bad:
        ratings.rate(db, case["id"], 6)
    assert [p.field for p in bad.value.problems] == ["score"]
    with pytest.raises(InvalidInput) as foreign:
        ratings.rate(db, case["id"], 4, department_key="gaj")     # gaj never touched this case
    assert [p.field for p in foreign.value.problems] == ["department"]
    with pytest.raises(NotFound):
        ratings.rate(db, 999999, 5)

    result = ratings.rate(db, case["id"], "5", "一次办好，非常方便", department_key="window")
    assert result["level"] == "非常满意" and result["follow_up"] is None
    with pytest.raises(Conflict):
        ratings.rate(db, case["id"], 1, "改主意了")
    with db.read() as conn:
        stored = conn.execute(select(rating)).mappings().all()
        events = conn.execute(select(audit_event.c.type).where(audit_event.c.type == "case_rated")).scalars().all()
    assert [(r["instance_id"], r["score"], r["department"]) for r in stored] == [(case["id"], 5, "window")]
    assert events == ["case_rated"]
    assert ratings.rating_of(db, case["id"])["comment"] == "一次办好，非常方便"


def test_a_poor_rating_opens_a_follow_up_due_in_15_working_days_with_a_light(db, clerks, clock):
    case = finished_case(db, clerks)
    with pytest.raises(InvalidInput):
        ratings.rate(db, case["id"], 2)                           # a poor rating must say why
    result = ratings.rate(db, case["id"], 2, "窗口人员态度不好")
    # Monday 2026-03-02 + 15 working days = close of business on Monday 2026-03-23.
    assert result["follow_up"]["due_at"] == at("2026-03-23 17:30")
    with pytest.raises(PermissionDenied):
        ratings.list_follow_ups(db, clerks["gaj"])
    [item] = ratings.list_follow_ups(db, clerks["supervisor"])
    assert (item["case_no"], item["score"], item["level"], item["light"]) == (case["case_no"], 2, "不满意", "green")
    clock.at("2026-03-23 09:00")
    assert ratings.list_follow_ups(db, clerks["supervisor"])[0]["light"] == "yellow"
    clock.at("2026-03-24 09:00")
    assert ratings.list_follow_ups(db, clerks["supervisor"])[0]["light"] == "red"
    with pytest.raises(InvalidInput):
        ratings.close_follow_up(db, item["id"], clerks["window"], "  ")
    closed = ratings.close_follow_up(db, item["id"], clerks["window"], "已回访申请人并致歉，窗口人员已培训")
    assert closed == {"id": item["id"], "status": "closed", "late": True}
    with pytest.raises(Conflict):
        ratings.close_follow_up(db, item["id"], clerks["window"], "again")
    assert ratings.list_follow_ups(db, clerks["supervisor"]) == []
    [done] = ratings.list_follow_ups(db, clerks["supervisor"], status="closed")
    assert done["closed_by"] == "window1" and done["light"] == "red"     # closed late stays red


def test_complaints_are_due_in_10_working_days_and_answered_once(db, clerks, clock):
    case = finished_case(db, clerks)
    with pytest.raises(InvalidInput) as empty:
        ratings.file_complaint(db, "", "")
    assert {p.field for p in empty.value.problems} == {"subject", "body", "department"}
    with pytest.raises(InvalidInput):
        ratings.file_complaint(db, "办事慢", "等了很久", department_key="nowhere")
    about_case = ratings.file_complaint(db, "不予受理理由不清", "请说明依据", instance_id=case["id"], contact="13800000000")
    about_department = ratings.file_complaint(db, "窗口排队太久", "上午排队两小时", department_key="swj")
    assert about_case["due_at"] == at("2026-03-16 17:30") and about_case["reference"].startswith("TS")
    listed = ratings.list_complaints(db, clerks["supervisor"])
    assert [(c["case_no"], c["department_name"], c["light"]) for c in listed] == [
        (case["case_no"], None, "green"), (None, "税务局", "green")]
    clock.at("2026-03-10 10:00")
    answered = ratings.answer_complaint(db, about_department["id"], clerks["supervisor"], "已增开窗口，分时段预约")
    assert answered["late"] is False
    with pytest.raises(Conflict):
        ratings.answer_complaint(db, about_department["id"], clerks["supervisor"], "again")
    public = ratings.complaint_by_reference(db, about_department["reference"].lower())
    assert public["status"] == "answered" and public["answer"] == "已增开窗口，分时段预约"
    with pytest.raises(NotFound):
        ratings.complaint_by_reference(db, "TSNOTHING")
    assert [c["reference"] for c in ratings.list_complaints(db, clerks["supervisor"])] == [about_case["reference"]]
    with pytest.raises(PermissionDenied):
        ratings.answer_complaint(db, about_case["id"], clerks["gaj"], "越权")
