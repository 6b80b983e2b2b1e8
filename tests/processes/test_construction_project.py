"""工程建设项目 end to end: four led stages, 联合踏勘 (all sign / two of three), 联合审图, 联合验收, 退回, 不予许可, 超时默许."""
from __future__ import annotations

import re
from datetime import datetime

import pytest
from lxml import etree

from engine.errors import ApprovalsError
from tests.processes.conftest import at
from tests.processes.harness import PROCESSES, Case, guide_of, materials

KEY = "construction_project"
GUIDE = guide_of(KEY)
# Stage -> its parallel items as (BPMN task, department, data prefix).
ITEMS = {
    1: [("review_project_approval", "fgw", "project_approval"), ("review_land_siting", "zrzyj", "land_siting"),
        ("review_land_use_permit", "ghj", "land_use_permit"), ("review_eia", "sthjj", "eia"),
        ("review_soil_water", "swuj", "soil_water")],
    2: [("review_works_permit", "ghj", "works_permit"), ("review_road_occupation", "cgj", "road_occupation"),
        ("review_traffic_impact", "jtj", "traffic_impact"), ("review_drainage", "swuj", "drainage")],
    3: [("review_drawing_review", "zjj", "drawing_review"), ("review_fire_design", "xfjg", "fire_design"),
        ("review_civil_defence_design", "rfb", "civil_defence_design"),
        ("review_lightning_design", "qxj", "lightning_design")],
    4: [("review_planning_verification", "ghj", "planning_verification"),
        ("review_land_verification", "zrzyj", "land_verification"),
        ("review_fire_acceptance", "xfjg", "fire_acceptance"),
        ("review_civil_defence_acceptance", "rfb", "civil_defence_acceptance"),
        ("review_archives_acceptance", "daj", "archives_acceptance"),
        ("review_lightning_acceptance", "qxj", "lightning_acceptance")],
}
LEADS = {1: "fgw", 2: "ghj", 3: "zjj", 4: "zjj"}
SURVEY_1 = ["ghj", "sthjj", "swuj", "zrzyj"]
SURVEY_2 = ["cgj", "jtj", "swuj"]


def moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def scope(stage: int) -> set[str]:
    tasks = {task for task, _department, _prefix in ITEMS[stage]}
    return tasks if stage == 1 else tasks | {f"s{stage}_consolidate"}


def project(**overrides) -> dict:
    values = {"project_name": "滨江科创园二期", "project_code": "2026-330108-47-01-000123", "applicant": "杭州滨江科创置业有限公司",
              "project_kind": "enterprise", "investment": 58000, "land_area": 42000, "building_area": 126000,
              "major_project": False, "road_impact": False, **materials(GUIDE, scope(1)), "intake_decision": "accept"}
    values.update(overrides)
    return values


def start(db, clerks) -> Case:
    return Case.start(db, clerks, KEY, {"applicant": "杭州滨江科创置业有限公司", "project_name": "滨江科创园二期"})


def review(case, stage, department, approved=True, opinion="同意", **extra):
    task, _department, prefix = next(i for i in ITEMS[stage] if i[1] == department)
    case.complete(task, department, **{f"{prefix}_approved": approved, f"{prefix}_opinion": opinion}, **extra)


def review_all(case, stage, skip=()):
    for _task, department, _prefix in ITEMS[stage]:
        if department not in skip:
            review(case, stage, department)


def sign(case, survey, department, opinion="同意选址"):
    case.complete(survey, department, survey_signed=True, survey_opinion=opinion)


def consolidate(case, stage, decision="approve", **extra):
    case.complete(f"s{stage}_consolidate", LEADS[stage], **{f"s{stage}_decision": decision,
                                                           f"s{stage}_opinion": "同意"}, **extra)


def stage_intake(case, stage, missing=(), **extra):
    case.complete(f"s{stage}_intake", "window", **materials(GUIDE, scope(stage), missing),
                  **{f"s{stage}_intake_decision": "accept"}, **extra)


def through_stage1(case, **intake):
    case.complete("intake", "window", **project(**intake))
    for department in SURVEY_1:
        sign(case, "s1_survey", department)
    review_all(case, 1)
    consolidate(case, 1, s1_approval_no="杭发改审批〔2026〕18号")


def items_seen(stage) -> dict:
    return {department: [task] for task, department, _prefix in ITEMS[stage]}


def test_happy_path_runs_four_led_stages_with_a_joint_survey_and_hands_over(db, construction, clock):
    case = start(db, construction)
    assert moment(case.instance()["due_at"]) == at("2026-06-26 17:30")    # 承诺 80 个工作日
    assert case.worklists() == {"window": ["intake"]}
    case.complete("intake", "window", **project())

    # 联合踏勘: every invited department gets its own copy of the survey; the stage waits for all four.
    assert case.worklists() == {department: ["s1_survey"] for department in SURVEY_1}
    assert sorted(t["departments"][0] for t in case.tasks("s1_survey")) == SURVEY_1
    for department in SURVEY_1[:3]:
        sign(case, "s1_survey", department)
    assert case.worklists() == {"zrzyj": ["s1_survey"]}
    sign(case, "s1_survey", "zrzyj")

    assert case.worklists() == items_seen(1)
    # Every instance signed and the survey's department map comes back intact after each reload.
    assert case.data_at("s1_merge")["s1_survey_departments"] == {
        "zrzyj": "自然资源局", "ghj": "规划局", "sthjj": "生态环境局", "swuj": "水务局"}
    assert moment(case.task("review_eia", "sthjj")["due_at"]) == at("2026-03-16 17:30")        # workdays(10)
    assert moment(case.task("review_soil_water", "swuj")["due_at"]) == at("2026-03-09 17:30")  # workdays(5)
    clock.at("2026-03-05 10:00")
    review_all(case, 1)
    joined = case.data_at("s1_join")
    assert all(joined[f"{prefix}_approved"] for _t, _d, prefix in ITEMS[1])
    assert case.worklists() == {"fgw": ["s1_consolidate"]}
    consolidate(case, 1, s1_approval_no="杭发改审批〔2026〕18号")

    # Between stages the applicant prepares the next stage's materials: the clock waits (待申报).
    assert case.worklists() == {"window": ["s2_intake"]}
    assert case.data_at("s2_intake")["stage1_result"] == "approved"
    clock.at("2026-03-09 10:00")
    stage_intake(case, 2)
    assert case.worklists() == items_seen(2)
    review_all(case, 2)
    consolidate(case, 2, s2_approval_no="杭规建许〔2026〕0042号")

    assert case.worklists() == {"window": ["s3_intake"]}
    clock.at("2026-03-16 10:00")
    stage_intake(case, 3)
    assert case.worklists() == items_seen(3)                    # 联合审图
    review_all(case, 3)
    consolidate(case, 3, building_permit_no="330108202603160101")

    assert case.worklists() == {"window": ["s4_intake"]}
    clock.at("2026-03-23 10:00")
    stage_intake(case, 4)
    assert case.worklists() == items_seen(4)                    # 联合验收
    review_all(case, 4)
    consolidate(case, 4, completion_filing_no="杭建竣备〔2026〕0315号")

    assert case.worklists() == {"window": ["handover"]}
    case.complete("handover", "window", certificates_delivered=True, collected_by="王工")
    assert case.status == "completed" and case.worklists() == {}
    assert case.events("case_completed")[0]["data"]["outcome"] == "approved"
    final = case.data_at("end_done")
    assert [final[f"stage{n}_result"] for n in (1, 2, 3, 4)] == ["approved"] * 4
    assert final["building_permit_no"] == "330108202603160101"
    assert final["completion_filing_no"] == "杭建竣备〔2026〕0315号"

    workers = {t["departments"][0] for t in case.instance()["tasks"] if t["status"] == "completed"}
    assert len(workers - {"window"}) >= 12
    pauses = case.events("clock_paused")
    assert [e["data"]["kind"] for e in pauses] == ["待申报"] * 3
    assert len(case.events("clock_resumed")) == 3
    assert not case.events("deemed_consent")


def test_two_of_three_sign_the_road_survey_and_expert_review_stops_the_clock(db, construction, clock):
    case = start(db, construction)
    through_stage1(case, road_impact=True, major_project=True)
    clock.at("2026-03-09 09:00")
    stage_intake(case, 2)
    assert case.worklists() == {department: ["s2_survey"] for department in SURVEY_2}

    sign(case, "s2_survey", "jtj", "不影响通行")
    assert case.worklists() == {"cgj": ["s2_survey"], "swuj": ["s2_survey"]}
    sign(case, "s2_survey", "cgj", "同意占道方案")
    # Two of three signed: the third copy is withdrawn and the stage moves on to the expert review.
    assert case.worklists() == {"ghj": ["s2_expert"]}
    survey = {t["departments"][0]: t["status"] for t in case.tasks("s2_survey")}
    assert survey == {"jtj": "completed", "cgj": "completed", "swuj": "cancelled"}
    assert not case.events("deemed_consent")

    paused = case.events("clock_paused")[-1]
    assert (paused["data"]["kind"], paused["data"]["reason"]) == ("特别程序", "设计方案专家评审（特别程序）")
    clock.at("2026-03-16 09:00")                                  # five working days of expert review
    case.complete("s2_expert", "ghj", expert_review_passed=True, expert_review_opinion="方案可行")
    resumed = case.events("clock_resumed")[-1]
    assert resumed["data"]["kind"] == "特别程序" and resumed["data"]["paused_working_seconds"] == 5 * 7 * 3600
    assert case.worklists() == items_seen(2)
    assert case.data_at("s2_split")["expert_review_passed"] is True


def test_missing_materials_at_project_intake_and_at_a_stage_intake(db, construction, clock):
    case = start(db, construction)
    case.complete("intake", "window", **project(**materials(GUIDE, scope(1), missing=("eia_report",))))
    assert case.data_at("notice_supplement")["missing_material_keys"] == ["eia_report"]
    assert case.worklists() == {"window": ["supplement_intake"]}
    assert [e["data"]["kind"] for e in case.events("clock_paused")] == ["补正"]
    clock.at("2026-03-03 09:00")
    case.complete("supplement_intake", "window", supplement_received=True)
    case.complete("intake", "window", **project())
    assert case.worklists() == {department: ["s1_survey"] for department in SURVEY_1}
    for department in SURVEY_1:
        sign(case, "s1_survey", department)
    review_all(case, 1)
    consolidate(case, 1)

    # Stage 3 asks for the construction contract too; without it the window issues the notice and waits.
    for stage in (2,):
        stage_intake(case, stage)
        review_all(case, stage)
        consolidate(case, stage)
    stage_intake(case, 3, missing=("construction_contract", "fire_design_documents"))
    notice = case.data_at("s3_notice_supplement")
    assert notice["s3_missing_material_keys"] == ["fire_design_documents", "construction_contract"]
    assert notice["s3_supplement_notices"][0]["names"] == ["消防设计文件", "施工合同及中标通知书"]
    assert case.worklists() == {"window": ["s3_intake"]}
    stage_intake(case, 3)
    assert case.worklists() == items_seen(3)
    kinds = [e["data"]["kind"] for e in case.events("clock_paused")]
    assert kinds == ["补正", "待申报", "待申报"]               # the stage-3 wait is one pause, notice or not


def test_rejection_at_intake_ends_the_case_with_reasons(db, construction, clock):
    case = start(db, construction)
    case.complete("intake", "window", **project(intake_decision="reject", rejection_reason="项目未纳入年度建设计划"))
    assert case.status == "completed" and case.worklists() == {}
    assert case.events("case_completed")[0]["data"]["outcome"] == "not_accepted"
    assert case.data_at("end_not_accepted")["outcome_reasons"] == {"window": "项目未纳入年度建设计划"}


def test_a_refused_environmental_review_ends_the_case_after_stage_one(db, construction, clock):
    case = start(db, construction)
    case.complete("intake", "window", **project())
    for department in SURVEY_1:
        sign(case, "s1_survey", department)
    review_all(case, 1, skip=("sthjj",))
    review(case, 1, "sthjj", approved=False, opinion="选址位于饮用水水源二级保护区，不予批准")
    assert case.status == "completed" and case.worklists() == {}
    assert case.events("case_completed")[0]["data"]["outcome"] == "refused"
    ended = case.data_at("end_refused_1")
    assert ended["refused_stage"] == "stage1"
    assert ended["refusal_reasons"] == {"eia": "选址位于饮用水水源二级保护区，不予批准"}
    assert case.tasks("s1_consolidate") == [] and case.tasks("s2_intake") == []


def test_the_lead_sends_drawings_back_to_a_department_and_to_the_applicant(db, construction, clock):
    case = start(db, construction)
    through_stage1(case)
    stage_intake(case, 2)
    review_all(case, 2)
    consolidate(case, 2)
    stage_intake(case, 3)
    review_all(case, 3)

    with pytest.raises(ApprovalsError) as refused:
        consolidate(case, 3, decision="return")
    assert "s3_return_item" in refused.value.message
    consolidate(case, 3, decision="return", s3_return_item="fire_design")
    assert case.worklists() == {"xfjg": ["review_fire_design"]}
    assert case.data_at("s3_send_back")["s3_pending"] == ["fire_design"]
    review(case, 3, "xfjg", opinion="复核后同意")
    assert case.data_at("s3_join")["fire_design_opinion"] == "复核后同意"

    clock.at("2026-03-02 14:00")
    consolidate(case, 3, decision="supplement", s3_return_item="lightning_design")
    assert case.worklists() == {"window": ["s3_supplement"]}
    assert case.events("clock_paused")[-1]["data"]["kind"] == "补正"
    clock.at("2026-03-03 14:00")
    case.complete("s3_supplement", "window", supplement_received=True, supplement_note="补交防雷装置设计文件")
    assert case.events("clock_resumed")[-1]["data"]["paused_working_seconds"] == 7 * 3600
    assert case.worklists() == {"qxj": ["review_lightning_design"]}
    review(case, 3, "qxj")
    consolidate(case, 3, building_permit_no="330108202603030101")
    assert case.worklists() == {"window": ["s4_intake"]}
    assert [b["item"] for b in case.data_at("s4_intake")["s3_send_backs"]] == ["fire_design", "lightning_design"]


def test_silent_co_organisers_are_deemed_to_consent_in_the_joint_drawing_review(db, construction, clock):
    case = start(db, construction)
    through_stage1(case)
    stage_intake(case, 2)
    review_all(case, 2)
    consolidate(case, 2)
    clock.at("2026-03-02 10:00")
    stage_intake(case, 3)                                   # 联合审图 starts: five working days each
    assert moment(case.task("review_civil_defence_design", "rfb")["due_at"]) == at("2026-03-09 17:30")
    review(case, 3, "zjj")

    clock.at("2026-03-09 17:29")
    case.fire_timers()
    assert case.worklists() == {"xfjg": ["review_fire_design"], "rfb": ["review_civil_defence_design"],
                                "qxj": ["review_lightning_design"]}
    clock.at("2026-03-09 17:31")
    case.fire_timers()
    # 人防 and 气象 are designated 超时默许; 消防 is only urged and still has to answer.
    assert case.worklists() == {"xfjg": ["review_fire_design"]}
    deemed = sorted((e["data"]["bpmn_id"], e["data"]["departments"][0]) for e in case.events("deemed_consent"))
    assert deemed == [("review_civil_defence_design", "rfb"), ("review_lightning_design", "qxj")]
    fired = {e["data"]["bpmn_id"] for e in case.events("timer_fired")}
    assert {"review_civil_defence_design_limit", "review_lightning_design_limit",
            "review_fire_design_limit"} <= fired

    review(case, 3, "xfjg", opinion="逾期后审查合格")
    joined = case.data_at("s3_join")
    assert (joined["civil_defence_design_approved"], joined["civil_defence_design_opinion"]) == (True, "超时默许")
    assert joined["lightning_design_deemed"] is True and "fire_design_deemed" not in joined
    assert case.worklists() == {"zjj": ["s3_consolidate"]}


def test_the_chain_is_four_led_stages_within_120_working_days_across_twelve_departments():
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL", "camunda": "http://camunda.org/schema/1.0/bpmn"}
    root = etree.parse(str(PROCESSES / KEY / f"{KEY}.bpmn")).getroot()
    days = lambda limit: int(re.fullmatch(r"workdays\((\d+)\)", limit).group(1))
    committed = root.xpath("//camunda:property[@name='committedLimit']/@value", namespaces=ns)[0]
    stage_days = 0
    for n, stage in enumerate(GUIDE["stages"], start=1):
        sub = root.xpath(f"//bpmn:subProcess[@id='stage{n}']", namespaces=ns)[0]
        assert sub.get("name").startswith(stage["name"])
        [limit] = root.xpath(f"//bpmn:boundaryEvent[@attachedToRef='stage{n}']", namespaces=ns)
        assert limit.get("cancelActivity") == "false"
        assert limit.findtext(".//bpmn:timeDuration", namespaces=ns) == stage["committed_limit"]
        stage_days += days(stage["committed_limit"])
        consolidation = sub.xpath(f".//bpmn:userTask[@id='s{n}_consolidate']", namespaces=ns)[0]
        assert consolidation.get("{%s}candidateGroups" % ns["camunda"]) == stage["lead"] == LEADS[n]
        items = sub.xpath(".//bpmn:userTask[starts-with(@id, 'review_')]", namespaces=ns)
        assert sorted(t.get("id") for t in items) == sorted(task for task, _d, _p in ITEMS[n])
    assert stage_days <= days(committed) <= 120
    groups = {g for g in root.xpath("//bpmn:userTask/@camunda:candidateGroups", namespaces=ns) if not g.startswith("${")}
    assert len(groups - {"window"}) >= 12
    surveys = root.xpath("//bpmn:multiInstanceLoopCharacteristics", namespaces=ns)
    conditions = sorted(bool(s.findtext("bpmn:completionCondition", namespaces=ns)) for s in surveys)
    assert conditions == [False, True]          # one all-must-sign countersign, one N-of-M


def test_extending_one_survey_copy_moves_the_surveys_shared_limit(db, construction, clock):
    from engine import runtime
    case = start(db, construction)
    case.complete("intake", "window", **project())
    due = {t["departments"][0]: moment(t["due_at"]) for t in case.tasks("s1_survey")}
    assert set(due.values()) == {at("2026-03-05 17:30")}                     # workdays(3), shared by the copies
    runtime.extend(db, construction["ghj"], 2, "踏勘需补充", task_id=case.task("s1_survey", "ghj")["id"])
    due = {t["departments"][0]: moment(t["due_at"]) for t in case.tasks("s1_survey")}
    assert due == {department: at("2026-03-09 17:30") for department in SURVEY_1}   # +2 working days, over a weekend
    clock.at("2026-03-06 10:00")                                              # past the old limit: nothing fires
    assert case.fire_timers() == 0 and not case.events("timer_fired")
    clock.at("2026-03-09 18:00")
    assert case.fire_timers() == 1


def test_a_survey_copy_shows_the_surveys_form(db, construction, clock):
    from engine import worklist
    case = start(db, construction)
    case.complete("intake", "window", **project())
    copy = worklist.get_task(db, case.task("s1_survey", "ghj")["id"], construction["ghj"])
    assert [field["id"] for field in copy["form"]] == ["survey_signed", "survey_opinion"]
