"""企业开办 end to end: intake, 一次性告知/补正, 不予受理, registration gate, six parallel items, 退回, 不予许可, 超时默许, 办结."""
from __future__ import annotations

from datetime import datetime

import pytest
from lxml import etree

from engine import runtime
from engine.errors import ApprovalsError, FormInvalid, PermissionDenied
from tests.processes.conftest import at
from tests.processes.harness import PROCESSES, Case, guide_of, materials

KEY = "enterprise_startup"
GUIDE = guide_of(KEY)
# The six items that run in parallel once the business is registered, and who does each.
BRANCHES = {"seal_filing": "gaj", "tax_invoice": "swj", "social_insurance": "rsj",
            "medical_insurance": "ybj", "housing_fund": "gjj", "bank_account": "bank"}
DEPARTMENTS = list(BRANCHES.values())


def application(**overrides) -> dict:
    values = {"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": 100,
              "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": 12,
              **materials(GUIDE), "intake_decision": "accept"}
    values.update(overrides)
    return values


def start(db, clerks) -> Case:
    return Case.start(db, clerks, KEY, {"enterprise_name": "杭州云杉科技有限公司"})


def registered(db, clerks, clock) -> Case:
    """A case accepted at 09:10 and registered at 10:00 on Monday 2026-03-02."""
    case = start(db, clerks)
    clock.at("2026-03-02 09:10")
    case.complete("intake", "window", **application())
    clock.at("2026-03-02 10:00")
    case.complete("registration", "scjgj", scjgj_approved=True, scjgj_opinion="准予设立登记",
                  credit_code="91330106MA2KXXXX0Y")
    return case


def review(case, department, approved=True, opinion="同意", **extra):
    task = next(t for t, d in BRANCHES.items() if d == department)
    case.complete(task, department, **{f"{department}_approved": approved, f"{department}_opinion": opinion}, **extra)


def moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def test_happy_path_registers_then_six_departments_in_parallel_then_hands_over(db, enterprise, clock):
    case = start(db, enterprise)
    instance = case.instance()
    assert instance["status"] == "running" and instance["applicant"] == "杭州云杉科技有限公司"
    # 承诺 2 个工作日: close of business of the second working day after Monday.
    assert moment(instance["due_at"]) == at("2026-03-04 17:30")
    assert case.worklists() == {"window": ["intake"]}

    clock.at("2026-03-02 09:10")
    case.complete("intake", "window", **application())
    assert case.worklists() == {"scjgj": ["registration"]}
    registration = case.task("registration", "scjgj")
    assert registration["departments"] == ["scjgj"]
    assert moment(registration["due_at"]) == at("2026-03-02 14:40")      # 4 office hours from 09:10
    assert case.data_at("gw_intake")["missing_material_keys"] == []

    clock.at("2026-03-02 10:00")
    case.complete("registration", "scjgj", scjgj_approved=True, scjgj_opinion="准予设立登记",
                  credit_code="91330106MA2KXXXX0Y")
    assert case.worklists() == {department: [task] for task, department in BRANCHES.items()}
    for task, department in BRANCHES.items():
        assert moment(case.task(task, department)["due_at"]) == at("2026-03-02 15:30"), task

    clock.at("2026-03-02 11:00")
    review(case, "gaj", seal_filing_no="公章备案-0001")
    review(case, "swj", tax_ukey_issued=True)
    review(case, "rsj")
    review(case, "ybj")
    case.complete("住房公积金缴存登记", "gjj", gjj_approved=True, gjj_opinion="同意")     # by the task's name
    assert case.worklists() == {"bank": ["bank_account"]}           # the join waits for the last branch
    review(case, "bank", bank_appointment_date="2026-03-03")

    joined = case.data_at("join_reviews")
    assert {d: joined[f"{d}_approved"] for d in DEPARTMENTS} == {d: True for d in DEPARTMENTS}
    assert joined["seal_filing_no"] == "公章备案-0001" and joined["tax_ukey_issued"] is True
    assert joined["credit_code"] == "91330106MA2KXXXX0Y"
    assert case.data_at("check_reviews")["review_refusals"] == {}
    assert case.worklists() == {"scjgj": ["consolidate"]}

    case.complete("consolidate", "scjgj", consolidation_decision="approve", consolidation_opinion="各事项办结，统一出件")
    assert case.worklists() == {"window": ["handover"]}
    clock.at("2026-03-02 14:00")
    case.complete("handover", "window", licence_delivered=True, collected_by="李明")

    assert case.worklists() == {}
    instance = case.instance()
    assert instance["status"] == "completed"
    assert moment(instance["ended_at"]) == at("2026-03-02 14:00")
    assert case.events("case_completed")[0]["data"]["outcome"] == "approved"
    assert case.data_at("end_done")["outcome"] == "approved"
    types = [e["type"] for e in instance["events"]]
    assert types[0] == "case_started" and types[-1] == "case_completed"
    assert not {"clock_paused", "deemed_consent", "timer_fired", "task_cancelled"} & set(types)
    completed = [(e["data"]["bpmn_id"], e["actor"]) for e in case.events("task_completed")]
    assert completed == [("intake", "window1"), ("registration", "scjgj1"), ("seal_filing", "gaj1"),
                         ("tax_invoice", "swj1"), ("social_insurance", "rsj1"), ("medical_insurance", "ybj1"),
                         ("housing_fund", "gjj1"), ("bank_account", "bank1"), ("consolidate", "scjgj1"),
                         ("handover", "window1")]


def test_a_department_cannot_work_another_departments_item_and_forms_are_checked(db, enterprise, clock):
    case = registered(db, enterprise, clock)
    seal = case.task("seal_filing", "gaj")
    with pytest.raises(PermissionDenied):
        runtime.complete(db, seal["id"], enterprise["swj"], {"gaj_approved": True, "gaj_opinion": "越权"})
    with pytest.raises(FormInvalid) as invalid:
        case.complete("seal_filing", "gaj", gaj_approved="maybe")
    fields = {p.field for p in invalid.value.problems}
    assert fields == {"gaj_approved", "gaj_opinion"}
    assert case.worklists()["gaj"] == ["seal_filing"]


def test_missing_materials_are_listed_once_and_the_clock_stops_until_supplied(db, enterprise, clock):
    case = start(db, enterprise)
    clock.at("2026-03-02 09:10")
    # The clerk cannot accept while required materials are missing: the flow issues the notice instead.
    case.complete("intake", "window", **application(**materials(GUIDE, missing=("premises_proof", "employee_roster"))))
    notice = case.data_at("notice_supplement")
    assert notice["missing_material_keys"] == ["premises_proof", "employee_roster"]     # guide order
    assert notice["supplement_notices"] == [{
        "materials": ["premises_proof", "employee_roster"],
        "names": ["住所（经营场所）使用证明", "参保职工花名册"], "note": ""}]
    assert case.worklists() == {"window": ["supplement_intake"]}
    paused = case.events("clock_paused")
    assert [(e["data"]["kind"], e["data"]["automatic"]) for e in paused] == [("补正", True)]
    assert moment(paused[0]["at"]) == at("2026-03-02 09:10")

    # The applicant brings the documents a full working day later: that day does not count.
    clock.at("2026-03-03 09:10")
    case.complete("supplement_intake", "window", supplement_received=True, supplement_note="已补交住所证明、花名册")
    resumed = case.events("clock_resumed")
    assert len(resumed) == 1 and resumed[0]["data"]["paused_working_seconds"] == 7 * 3600
    assert moment(case.instance()["due_at"]) == at("2026-03-05 17:30")
    assert case.worklists() == {"window": ["intake"]}

    case.complete("intake", "window", **application())
    assert case.worklists() == {"scjgj": ["registration"]}
    assert case.data_at("gw_intake")["missing_material_keys"] == []
    assert len(case.data_at("acceptance_notice")["supplement_notices"]) == 1
    assert len(case.events("clock_paused")) == 1


def test_a_notice_must_name_what_is_missing(db, enterprise, clock):
    case = start(db, enterprise)
    with pytest.raises(ApprovalsError) as refused:
        case.complete("intake", "window", **application(intake_decision="supplement"))
    assert "一次性告知" in refused.value.message
    assert case.worklists() == {"window": ["intake"]}          # nothing was saved
    case.complete("intake", "window", **application(intake_decision="supplement", missing_materials="章程未签字，请重新签署"))
    assert case.data_at("notice_supplement")["supplement_notices"][0]["note"] == "章程未签字，请重新签署"
    assert case.worklists() == {"window": ["supplement_intake"]}


def test_rejection_needs_reasons_and_ends_the_case(db, enterprise, clock):
    case = start(db, enterprise)
    with pytest.raises(ApprovalsError) as refused:
        case.complete("intake", "window", **application(intake_decision="reject"))
    assert "rejection_reason" in refused.value.message
    assert case.status == "running" and case.worklists() == {"window": ["intake"]}

    clock.at("2026-03-02 09:20")
    case.complete("intake", "window", **application(intake_decision="reject",
                                                    rejection_reason="经营范围含需前置审批的项目，不属本流程受理范围"))
    instance = case.instance()
    assert instance["status"] == "completed" and case.worklists() == {}
    assert case.events("case_completed")[0]["data"]["outcome"] == "not_accepted"
    assert case.data_at("end_not_accepted")["outcome_reasons"] == {
        "window": "经营范围含需前置审批的项目，不属本流程受理范围"}
    assert [t["bpmn_id"] for t in instance["tasks"]] == ["intake"]     # no department ever saw it


def test_registration_refused_ends_the_case_before_any_parallel_item(db, enterprise, clock):
    case = start(db, enterprise)
    case.complete("intake", "window", **application())
    case.complete("registration", "scjgj", scjgj_approved=False, scjgj_opinion="企业名称与在先登记的名称近似，不予登记")
    assert case.status == "completed" and case.worklists() == {}
    assert case.events("case_completed")[0]["data"]["outcome"] == "refused"
    assert case.data_at("end_refused_registration")["refusal_reasons"] == {
        "scjgj": "企业名称与在先登记的名称近似，不予登记"}
    assert not any(case.tasks(task) for task in BRANCHES)


def test_a_department_refusing_its_item_ends_the_case_refused_with_its_reasons(db, enterprise, clock):
    case = registered(db, enterprise, clock)
    review(case, "gaj", approved=False, opinion="印章样式不符合规定，不予备案")
    for department in ("swj", "rsj", "ybj", "gjj", "bank"):
        review(case, department)
    joined = case.data_at("check_reviews")
    assert joined["review_refusals"] == {"gaj": "印章样式不符合规定，不予备案"}
    assert case.status == "completed" and case.worklists() == {}
    assert case.events("case_completed")[0]["data"]["outcome"] == "refused"
    assert case.data_at("end_refused")["refusal_reasons"] == {"gaj": "印章样式不符合规定，不予备案"}
    assert case.tasks("consolidate") == []


def test_the_lead_sends_an_item_back_to_its_department_and_then_to_the_applicant(db, enterprise, clock):
    case = registered(db, enterprise, clock)
    for department in DEPARTMENTS:
        review(case, department, opinion=f"{department}同意")
    clock.at("2026-03-02 11:00")

    # 退回 without saying to whom is refused with a clear message, and changes nothing.
    with pytest.raises(ApprovalsError) as refused:
        case.complete("consolidate", "scjgj", consolidation_decision="return", consolidation_opinion="税务信息有误")
    assert "return_item" in refused.value.message
    assert case.worklists() == {"scjgj": ["consolidate"]}

    case.complete("consolidate", "scjgj", consolidation_decision="return", consolidation_return_item="swj",
                  consolidation_opinion="发票票种核定有误，请重新核定")
    assert case.worklists() == {"swj": ["tax_invoice"]}              # only the department sent back
    assert case.data_at("send_back")["pending_reviews"] == ["swj"]
    review(case, "swj", opinion="已重新核定票种", tax_ukey_issued=True)
    joined = case.data_at("join_reviews")
    assert joined["swj_opinion"] == "已重新核定票种"
    assert {d: joined[f"{d}_opinion"] for d in DEPARTMENTS if d != "swj"} == {
        d: f"{d}同意" for d in DEPARTMENTS if d != "swj"}               # the others' work is kept
    assert case.worklists() == {"scjgj": ["consolidate"]}

    # 退回申请人补正: the clock stops while the applicant brings the paper, then 公积金中心 redoes its item.
    clock.at("2026-03-02 13:30")
    case.complete("consolidate", "scjgj", consolidation_decision="supplement", consolidation_return_item="gjj",
                  consolidation_opinion="缴存登记表缺单位公章，请申请人补正")
    assert case.worklists() == {"window": ["supplement_review"]}
    assert [e["data"]["kind"] for e in case.events("clock_paused")] == ["补正"]
    clock.at("2026-03-02 15:30")
    case.complete("supplement_review", "window", supplement_received=True)
    assert case.events("clock_resumed")[0]["data"]["paused_working_seconds"] == 2 * 3600
    assert case.worklists() == {"gjj": ["housing_fund"]}
    review(case, "gjj", opinion="补正后准予登记")
    assert case.data_at("send_back")["consolidation_send_backs"] == [
        {"item": "swj", "kind": "return", "reason": "发票票种核定有误，请重新核定"},
        {"item": "gjj", "kind": "supplement", "reason": "缴存登记表缺单位公章，请申请人补正"}]

    case.complete("consolidate", "scjgj", consolidation_decision="approve", consolidation_opinion="同意")
    case.complete("handover", "window", licence_delivered=True, collected_by="李明")
    assert case.status == "completed"
    assert case.events("case_completed")[0]["data"]["outcome"] == "approved"
    assert [len(case.tasks(t)) for t in ("tax_invoice", "housing_fund", "seal_filing", "consolidate")] == [2, 2, 1, 3]


def test_silent_filing_departments_are_deemed_to_consent_and_others_are_urged(db, enterprise, clock):
    case = registered(db, enterprise, clock)       # the six items started at 10:00, due 15:30
    for department in ("rsj", "ybj", "gjj", "bank"):
        review(case, department)
    clock.at("2026-03-02 15:29")
    case.fire_timers()
    assert case.worklists() == {"gaj": ["seal_filing"], "swj": ["tax_invoice"]}
    assert case.events("timer_fired") == []

    clock.at("2026-03-02 15:31")
    case.fire_timers()
    # 公安局's filing is 超时默许 (interrupting): its task is withdrawn and the branch completes itself.
    # 税务局's item is only urged (催办, non-interrupting): the task stays with the department.
    assert case.worklists() == {"swj": ["tax_invoice"]}
    deemed = case.events("deemed_consent")
    assert len(deemed) == 1
    assert deemed[0]["data"]["bpmn_id"] == "seal_filing" and deemed[0]["data"]["departments"] == ["gaj"]
    assert deemed[0]["data"]["timer"] == "seal_filing_limit"
    assert sorted(e["data"]["bpmn_id"] for e in case.events("timer_fired")) == ["seal_filing_limit", "tax_invoice_limit"]
    assert [t["status"] for t in case.tasks("seal_filing")] == ["cancelled"]

    clock.at("2026-03-02 16:00")
    review(case, "swj", opinion="逾期后办结")
    joined = case.data_at("join_reviews")
    assert (joined["gaj_approved"], joined["gaj_opinion"], joined["gaj_deemed"]) == (True, "超时默许", True)
    assert joined["swj_opinion"] == "逾期后办结" and "swj_deemed" not in joined
    assert case.worklists() == {"scjgj": ["consolidate"]}


def test_the_flow_is_one_gate_then_six_parallel_items_in_working_hours():
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL", "camunda": "http://camunda.org/schema/1.0/bpmn"}
    root = etree.parse(str(PROCESSES / KEY / f"{KEY}.bpmn")).getroot()
    assert root.xpath("//camunda:property[@name='committedLimit']/@value", namespaces=ns) == ["workdays(2)"]
    split = root.xpath("//bpmn:inclusiveGateway[@id='split_reviews']", namespaces=ns)[0]
    targets = root.xpath("//bpmn:sequenceFlow[@sourceRef='split_reviews']/@targetRef", namespaces=ns)
    assert split is not None and sorted(targets) == sorted(BRANCHES)
    for task, department in BRANCHES.items():
        node = root.xpath(f"//bpmn:userTask[@id='{task}']", namespaces=ns)[0]
        assert node.get("{%s}candidateGroups" % ns["camunda"]) == department
        [limit] = root.xpath(f"//bpmn:boundaryEvent[@attachedToRef='{task}']//bpmn:timeDuration/text()", namespaces=ns)
        assert limit.startswith("workhours(")
    gate = root.xpath("//bpmn:sequenceFlow[@targetRef='init_reviews']/@sourceRef", namespaces=ns)
    assert gate == ["gw_registration"]          # nothing starts before 设立登记 is granted
