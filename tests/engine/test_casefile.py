"""The case file read model on the shipped 企业开办 flow: progress, timeline, pauses, permissions, notices, case list."""
from __future__ import annotations

from datetime import datetime

import pytest
import time_machine
from sqlalchemy import select, update

from engine import accounts, casefile, runtime, seed
from engine.errors import InvalidInput, NotFound, PermissionDenied
from engine.snapshot import read_state
from engine.store import attachment, human_task, process_instance
from tests.processes.conftest import at
from tests.processes.harness import Case, deploy_processes, guide_of, materials

KEY = "enterprise_startup"
GUIDE = guide_of(KEY)
BRANCHES = {"seal_filing": "gaj", "tax_invoice": "swj", "social_insurance": "rsj",
            "medical_insurance": "ybj", "housing_fund": "gjj", "bank_account": "bank"}


class Clock:
    def __init__(self, traveller):
        self._traveller = traveller

    def at(self, moment: str) -> datetime:
        self._traveller.move_to(at(moment))
        return at(moment)


@pytest.fixture
def clock():
    with time_machine.travel(at("2026-03-02 09:00"), tick=False) as traveller:
        yield Clock(traveller)


@pytest.fixture
def demo(db, clock):
    """The demo organisation (seed_demo) and the shipped flows; returns department key -> its clerk."""
    seed.seed_demo(db)
    deploy_processes(db)
    return {d: accounts.get_user(db, f"{d}1") for d in [*GUIDE["departments"], "fgw", "supervisor"]}


def user(db, name: str):
    return accounts.get_user(db, name)


def application(**overrides) -> dict:
    return {"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": 100,
            "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": 12,
            **materials(GUIDE), "intake_decision": "accept", **overrides}


def accepted(db, clerks, clock) -> Case:
    case = Case.start(db, clerks, KEY, {})
    clock.at("2026-03-02 09:10")
    case.complete("intake", "window", **application())
    return case


def registered(db, clerks, clock) -> Case:
    case = accepted(db, clerks, clock)
    clock.at("2026-03-02 10:00")
    case.complete("registration", "scjgj", scjgj_approved=True, scjgj_opinion="准予设立登记")
    return case


def review(case, department, opinion="同意"):
    task = next(t for t, d in BRANCHES.items() if d == department)
    case.complete(task, department, **{f"{department}_approved": True, f"{department}_opinion": opinion})


def finished(db, clerks, clock) -> Case:
    case = registered(db, clerks, clock)
    clock.at("2026-03-02 11:00")
    for department in BRANCHES.values():
        review(case, department)
    case.complete("consolidate", "scjgj", consolidation_decision="approve", consolidation_opinion="同意")
    clock.at("2026-03-02 14:00")
    case.complete("handover", "window", licence_delivered=True, collected_by="李明")
    return case


def test_header_and_progress_after_registration(db, demo, clock):
    case = registered(db, demo, clock)
    clock.at("2026-03-02 11:00")
    file = casefile.case_file(db, case.id, demo["window"])
    assert (file["case_no"], file["applicant"], file["status"], file["version"]) == (
        case.case_no, "杭州云杉科技有限公司", "running", 1)
    assert file["process_name"] == "企业开办（无前置审批）"
    assert file["due_at"] == at("2026-03-04 17:30") and file["statutory_due_at"] is not None
    assert file["light"] == "green" and file["verification_code"]
    progress = file["progress"]
    assert {"start", "intake", "check_materials", "acceptance_notice", "registration", "split_reviews"} <= set(
        progress["completed"])
    assert sorted(progress["active"]) == sorted(BRANCHES)
    assert not set(progress["completed"]) & set(progress["active"])
    assert progress["departments"]["seal_filing"] == ["公安局"] and progress["departments"]["bank_account"] == ["开户银行"]
    assert progress["overdue"] == []
    assert "<bpmn:process id=\"enterprise_startup\"" in file["bpmn_xml"]
    assert [s["bpmn_id"] for s in file["steps"]][:2] == ["intake", "registration"]
    types = [e["type"] for e in file["events"]]
    assert types[0] == "case_started" and types.count("task_completed") == 2
    completed = [e for e in file["events"] if e["type"] == "task_completed"]
    assert [e["task_name"] for e in completed] == ["窗口受理（一表申请）", "企业设立登记（核发营业执照）"]
    assert completed[1]["actor_name"] == "市场监管局·scjgj1"


def test_reading_a_case_file_never_changes_the_stored_workflow(db, demo, clock):
    case = registered(db, demo, clock)
    def stored():
        with db.read() as conn:
            return (read_state(conn, case.id),
                    conn.execute(select(process_instance.c.revision)).scalar())
    before = stored()
    casefile.case_file(db, case.id, demo["window"])
    casefile.notice(db, case.id, demo["window"], "acceptance")
    assert stored() == before


def test_overdue_steps_open_or_finished_late_are_marked(db, demo, clock):
    case = registered(db, demo, clock)          # the six branches are due at 15:30
    clock.at("2026-03-02 15:00")
    review(case, "rsj")
    clock.at("2026-03-02 15:45")                 # nothing has stepped the case since its deadlines passed
    file = casefile.case_file(db, case.id, demo["window"])
    late = sorted(set(BRANCHES) - {"social_insurance"})
    assert sorted(file["progress"]["overdue"]) == late
    assert sorted(file["progress"]["active"]) == late and "social_insurance" in file["progress"]["completed"]
    steps = {s["bpmn_id"]: s for s in file["steps"]}
    assert steps["seal_filing"]["light"] == "red" and steps["seal_filing"]["late"]
    assert not steps["social_insurance"]["late"]

    # Completing 税务局's item late steps the case: the 超时默许 branches close themselves, late all the same.
    clock.at("2026-03-02 16:00")
    review(case, "swj", opinion="逾期后办结")
    file = casefile.case_file(db, case.id, demo["window"])
    assert sorted(file["progress"]["overdue"]) == late
    assert file["progress"]["active"] == ["bank_account"]
    steps = {s["bpmn_id"]: s for s in file["steps"]}
    assert steps["tax_invoice"]["late"] and steps["tax_invoice"]["status"] == "completed"
    assert steps["seal_filing"]["status"] == "cancelled" and steps["seal_filing"]["late"]
    assert "deemed_consent" in [e["type"] for e in file["events"]]


def test_a_step_sent_back_is_active_again_not_completed(db, demo, clock):
    case = registered(db, demo, clock)
    for department in BRANCHES.values():
        review(case, department)
    consolidate = case.task("consolidate", "scjgj")
    target = next(t for t in runtime.send_back_targets(db, consolidate["id"]) if t["bpmn_id"] == "tax_invoice")
    runtime.send_back(db, consolidate["id"], demo["scjgj"], target["id"], "票种核定有误")
    progress = casefile.case_file(db, case.id, demo["scjgj"])["progress"]
    assert progress["active"] == ["tax_invoice"] and progress["departments"] == {"tax_invoice": ["税务局"]}
    assert "tax_invoice" not in progress["completed"] and "consolidate" not in progress["completed"]
    events = casefile.case_file(db, case.id, demo["scjgj"])["events"]
    sent = [e for e in events if e["type"] == "task_sent_back"]
    assert sent[0]["data"]["reason"] == "票种核定有误" and sent[0]["task_name"] == "汇总审核（牵头部门）"


def test_who_may_see_a_case(db, demo, clock):
    case = Case.start(db, demo, KEY, {})
    for name in ("window1", "supervisor1"):
        assert casefile.case_file(db, case.id, user(db, name))["id"] == case.id
    for name in ("gaj1", "fgw1"):
        with pytest.raises(PermissionDenied):
            casefile.case_file(db, case.id, user(db, name))
    case.complete("intake", "window", **application())
    case.complete("registration", "scjgj", scjgj_approved=True, scjgj_opinion="准予")
    assert casefile.case_file(db, case.id, demo["gaj"])["case_no"] == case.case_no     # 公章刻制备案 is theirs
    with pytest.raises(PermissionDenied) as denied:
        casefile.case_file(db, case.id, demo["fgw"])
    assert case.case_no in denied.value.message
    # A clerk who handled a step keeps seeing the case after leaving the department (completed_by).
    outsider = accounts.create_user(db, "moved1", "moved-pass-1", "调岗人员", ["fgw"], ["clerk"])
    with db.write() as conn:
        conn.execute(update(human_task).where(human_task.c.bpmn_id == "registration").values(completed_by="moved1"))
    assert casefile.case_file(db, case.id, outsider)["id"] == case.id
    with pytest.raises(NotFound):
        casefile.case_file(db, 999999, demo["window"])


def test_pauses_and_attachments_are_listed(db, demo, clock):
    case = Case.start(db, demo, KEY, {})
    clock.at("2026-03-02 09:10")
    case.complete("intake", "window", **application(**materials(GUIDE, missing=("premises_proof",))))
    clock.at("2026-03-03 09:10")
    case.complete("supplement_intake", "window", supplement_received=True)
    with db.write() as conn:
        conn.execute(attachment.insert().values(
            instance_id=case.id, material_key="premises_proof", filename="住所证明.pdf", content_type="application/pdf",
            size=2048, sha256="0" * 64, content=b"%PDF-", uploaded_by="window1", uploaded_at=at("2026-03-03 09:05")))
    file = casefile.case_file(db, case.id, demo["window"])
    [pause] = file["pauses"]
    assert (pause["kind"], pause["automatic"], pause["special"]) == ("补正", True, False)
    assert pause["started_at"] == at("2026-03-02 09:10") and pause["ended_at"] == at("2026-03-03 09:10")
    assert pause["workdays"] == 1.0
    [attached] = file["attachments"]
    assert (attached["filename"], attached["size"], attached["material_key"]) == ("住所证明.pdf", 2048, "premises_proof")
    assert "content" not in attached


def test_notices_exist_only_once_the_case_has_reached_them(db, demo, clock):
    case = Case.start(db, demo, KEY, {})
    assert casefile.case_file(db, case.id, demo["window"])["notices"] == []
    for kind in casefile.NOTICE_KINDS:
        with pytest.raises(NotFound):
            casefile.notice(db, case.id, demo["window"], kind)
    with pytest.raises(NotFound):
        casefile.notice(db, case.id, demo["window"], "licence")
    clock.at("2026-03-02 09:10")
    case.complete("intake", "window", **application())
    kinds = [n["kind"] for n in casefile.case_file(db, case.id, demo["window"])["notices"]]
    assert kinds == ["acceptance"]
    notice = casefile.notice(db, case.id, demo["window"], "acceptance")
    assert notice["issued_at"] == at("2026-03-02 09:10")
    assert notice["case"]["case_no"] == case.case_no and notice["case"]["applicant"] == "杭州云杉科技有限公司"
    assert notice["centre_name"] == "XX市政务服务中心"
    assert "第三十二条" in notice["statute"] and notice["legal_basis"] == GUIDE["legal_basis"]
    assert [i["name"] for i in notice["service_items"]] == [i["name"] for i in GUIDE["items"]]
    assert notice["legal_representative"] == "李明"
    with pytest.raises(NotFound):
        casefile.notice(db, case.id, demo["window"], "completion")
    with pytest.raises(NotFound):
        casefile.notice(db, case.id, demo["window"], "acceptance", number=2)


def test_the_one_time_notice_lists_every_missing_material_of_the_guide(db, demo, clock):
    missing = ("shareholder_identity", "premises_proof", "seal_specimen_form", "employee_roster")
    case = Case.start(db, demo, KEY, {})
    clock.at("2026-03-02 09:10")
    case.complete("intake", "window", **application(**materials(GUIDE, missing=missing), missing_materials="章程须全体股东签字"))
    clock.at("2026-03-03 09:10")
    case.complete("supplement_intake", "window", supplement_received=True)
    clock.at("2026-03-03 09:30")
    case.complete("intake", "window", **application(**materials(GUIDE, missing=("housing_fund_form",))))
    notices = [n for n in casefile.case_file(db, case.id, demo["window"])["notices"] if n["kind"] == "supplement"]
    assert [(n["number"], n["issued_at"]) for n in notices] == [
        (1, at("2026-03-02 09:10")), (2, at("2026-03-03 09:30"))]

    first = casefile.notice(db, case.id, demo["window"], "supplement", number=1)
    assert [m["key"] for m in first["materials"]] == list(missing)
    names = {m["key"]: m["name"] for item in GUIDE["items"] for m in item["materials"]}
    assert [m["name"] for m in first["materials"]] == [names[k] for k in missing]
    roster = next(m for m in first["materials"] if m["key"] == "employee_roster")
    assert roster["needed_for"] == ["社会保险登记", "医疗保险参保登记"] and roster["required"]
    assert first["note"] == "章程须全体股东签字"
    latest = casefile.notice(db, case.id, demo["window"], "supplement")
    assert latest["number"] == 2 and [m["key"] for m in latest["materials"]] == ["housing_fund_form"]


def test_a_lead_sending_an_item_back_to_the_applicant_gives_a_supplement_notice(db, demo, clock):
    case = registered(db, demo, clock)
    for department in BRANCHES.values():
        review(case, department)
    clock.at("2026-03-02 13:30")
    case.complete("consolidate", "scjgj", consolidation_decision="supplement", consolidation_return_item="gjj",
                  consolidation_opinion="缴存登记表缺单位公章，请申请人补正")
    [notice] = [n for n in casefile.case_file(db, case.id, demo["window"])["notices"] if n["kind"] == "supplement"]
    assert notice["issued_at"] == at("2026-03-02 13:30")
    printed = casefile.notice(db, case.id, demo["window"], "supplement")
    assert printed["note"] == "缴存登记表缺单位公章，请申请人补正" and printed["materials"] == []
    assert printed["department"] == "公积金中心" and printed["for_items"] == ["住房公积金缴存登记"]


def test_rejection_notice_carries_the_reasons(db, demo, clock):
    case = Case.start(db, demo, KEY, {})
    case.complete("intake", "window", **application(intake_decision="reject", rejection_reason="经营范围需前置审批"))
    kinds = [n["kind"] for n in casefile.case_file(db, case.id, demo["window"])["notices"]]
    assert kinds == ["rejection"]
    assert casefile.notice(db, case.id, demo["window"], "rejection")["reasons"] == ["经营范围需前置审批"]


def test_special_procedure_notice_follows_a_pause_that_is_not_supplement(db, demo, clock):
    case = registered(db, demo, clock)
    clock.at("2026-03-02 11:00")
    runtime.pause_case(db, case.id, demo["scjgj"], "专家评审", "经营范围涉及新业态，组织专家评审", expected_workdays=5)
    notice = casefile.notice(db, case.id, demo["window"], "special-procedure")
    assert notice["pause"]["kind"] == "专家评审" and notice["pause"]["expected_workdays"] == 5
    assert notice["issued_at"] == at("2026-03-02 11:00") and "第四十五条" in notice["statute"]
    assert casefile.case_file(db, case.id, demo["window"])["paused_since"] == at("2026-03-02 11:00")


def test_completion_notice_lists_each_item_and_who_collected(db, demo, clock, monkeypatch):
    monkeypatch.setenv(casefile.CENTRE_NAME_ENV, "杭州市上城区政务服务中心")
    case = finished(db, demo, clock)
    file = casefile.case_file(db, case.id, demo["window"])
    assert file["status"] == "completed" and file["outcome"] == "approved" and file["light"] is None
    assert [n["kind"] for n in file["notices"]] == ["acceptance", "completion"]
    assert file["progress"]["active"] == [] and {"handover", "finish", "end_done"} <= set(file["progress"]["completed"])
    notice = casefile.notice(db, case.id, demo["window"], "completion")
    assert notice["approved"] and notice["collected_by"] == "李明" and notice["issued_at"] == at("2026-03-02 14:00")
    assert notice["centre_name"] == "杭州市上城区政务服务中心"
    assert {i["status"] for i in notice["service_items"]} == {"completed"}


def test_case_list_searches_pages_and_is_for_overseers_only(db, demo, clock):
    started = [Case.start(db, demo, KEY, {"applicant": name}) for name in ("甲公司", "乙公司", "甲乙合伙", "100%公司")]
    listing = casefile.list_cases(db, demo["window"])
    assert [c["case_no"] for c in listing["cases"]] == [c.case_no for c in reversed(started)]
    assert not listing["more"] and listing["cases"][0]["current"] == ["窗口受理（一表申请）（综合窗口）"]
    assert [c["applicant"] for c in casefile.list_cases(db, demo["window"], search="甲")["cases"]] == ["甲乙合伙", "甲公司"]
    assert [c["applicant"] for c in casefile.list_cases(db, demo["window"], search="%")["cases"]] == ["100%公司"]
    by_number = casefile.list_cases(db, demo["window"], search=started[1].case_no)["cases"]
    assert [c["applicant"] for c in by_number] == ["乙公司"]
    assert len(casefile.list_cases(db, demo["window"], search="20260302")["cases"]) == 4      # a day's cases
    assert casefile.list_cases(db, demo["window"], search="20260303")["cases"] == []
    code = casefile.case_file(db, started[2].id, demo["window"])["verification_code"]
    assert [c["id"] for c in casefile.list_cases(db, demo["window"], search=code.lower())["cases"]] == [started[2].id]
    page = casefile.list_cases(db, user(db, "supervisor1"), limit=3)
    assert len(page["cases"]) == 3 and page["more"]
    assert [c["id"] for c in casefile.list_cases(db, demo["window"], limit=3, offset=3)["cases"]] == [started[0].id]
    assert casefile.list_cases(db, demo["window"], status="completed")["cases"] == []
    with pytest.raises(InvalidInput):
        casefile.list_cases(db, demo["window"], status="finished")
    with pytest.raises(PermissionDenied):
        casefile.list_cases(db, demo["gaj"])


def test_first_open_task_is_the_one_the_user_may_work_on(db, demo, clock):
    case = Case.start(db, demo, KEY, {})
    intake = case.task("intake", "window")
    assert casefile.first_open_task(db, case.id, demo["window"]) == intake["id"]
    assert casefile.first_open_task(db, case.id, demo["gaj"]) is None


def test_a_verification_code_of_digits_only_is_found_too(db, demo, clock):
    started = [Case.start(db, demo, KEY, {"applicant": name}) for name in ("甲公司", "乙公司")]
    with db.write() as conn:   # a random code is all digits about once in 280 cases
        conn.execute(update(process_instance).where(process_instance.c.id == started[1].id)
                     .values(verification_code="202603021234"))
    found = casefile.list_cases(db, demo["window"], search="202603021234")["cases"]
    assert [c["id"] for c in found] == [started[1].id]
