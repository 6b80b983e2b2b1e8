"""The task lists' read side: who sees what, every filter against a brute-force reading, paging, the task page."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from engine import handover, lights, runtime, tasklists, worklist
from engine.accounts import create_user, get_user
from engine.deploy import SourceFile, deploy
from engine.errors import InvalidInput, NotFound, PermissionDenied
from engine.lights import light_of
from engine.store import human_task, process_instance
from engine.tasklists import TaskFilter, parse_filter
from engine.timekeeping import calendar_for

SHANGHAI = ZoneInfo("Asia/Shanghai")
KEY = "tasklist_flow"
# Window intake (a form with every field type) -> 公安局 and 税务局 review in parallel, each with a
# time limit (a non-interrupting timer) -> hand-over at the window, which has no limit.
FLOW_XML = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    id="Definitions_tasklist" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="tasklist_flow" name="任务列表测试流程" isExecutable="true">
    <bpmn:laneSet id="lanes">
      <bpmn:lane id="lane_window" name="综合窗口"><bpmn:flowNodeRef>start</bpmn:flowNodeRef><bpmn:flowNodeRef>intake</bpmn:flowNodeRef><bpmn:flowNodeRef>split</bpmn:flowNodeRef><bpmn:flowNodeRef>join</bpmn:flowNodeRef><bpmn:flowNodeRef>handover</bpmn:flowNodeRef><bpmn:flowNodeRef>end</bpmn:flowNodeRef></bpmn:lane>
      <bpmn:lane id="lane_gaj" name="公安局"><bpmn:flowNodeRef>review_gaj</bpmn:flowNodeRef><bpmn:flowNodeRef>gaj_limit</bpmn:flowNodeRef><bpmn:flowNodeRef>gaj_urged</bpmn:flowNodeRef></bpmn:lane>
      <bpmn:lane id="lane_swj" name="税务局"><bpmn:flowNodeRef>review_swj</bpmn:flowNodeRef><bpmn:flowNodeRef>swj_limit</bpmn:flowNodeRef><bpmn:flowNodeRef>swj_urged</bpmn:flowNodeRef></bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="start" name="收件" />
    <bpmn:userTask id="intake" name="窗口受理">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="applicant" label="申请人" type="string">
            <camunda:validation><camunda:constraint name="required" /><camunda:constraint name="minlength" config="2" /><camunda:constraint name="maxlength" config="100" /></camunda:validation>
          </camunda:formField>
          <camunda:formField id="capital" label="注册资本（万元）" type="long">
            <camunda:validation><camunda:constraint name="min" config="1" /><camunda:constraint name="max" config="1000" /></camunda:validation>
          </camunda:formField>
          <camunda:formField id="kind" label="企业类型" type="enum">
            <camunda:value id="llc" name="有限责任公司" />
            <camunda:value id="sole" name="个人独资企业" />
            <camunda:validation><camunda:constraint name="required" /></camunda:validation>
          </camunda:formField>
          <camunda:formField id="founded" label="成立日期" type="date" />
          <camunda:formField id="urgent" label="加急办理" type="boolean" />
          <camunda:formField id="note" label="备注" type="string">
            <camunda:validation><camunda:constraint name="maxlength" config="500" /></camunda:validation>
          </camunda:formField>
        </camunda:formData>
      </bpmn:extensionElements>
    </bpmn:userTask>
    <bpmn:parallelGateway id="split" />
    <bpmn:userTask id="review_gaj" name="公安局审查">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="gaj_opinion" label="公安审查意见" type="string">
            <camunda:validation><camunda:constraint name="required" /><camunda:constraint name="maxlength" config="500" /></camunda:validation>
          </camunda:formField>
          <camunda:formField id="gaj_approved" label="同意" type="boolean" />
        </camunda:formData>
      </bpmn:extensionElements>
    </bpmn:userTask>
    <bpmn:boundaryEvent id="gaj_limit" name="超时催办" cancelActivity="false" attachedToRef="review_gaj">
      <bpmn:timerEventDefinition><bpmn:timeDuration xsi:type="bpmn:tFormalExpression">workdays(2)</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="gaj_urged" name="催办通知" />
    <bpmn:userTask id="review_swj" name="税务局审查">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="swj_opinion" label="税务审查意见" type="string">
            <camunda:validation><camunda:constraint name="required" /><camunda:constraint name="maxlength" config="500" /></camunda:validation>
          </camunda:formField>
          <camunda:formField id="swj_approved" label="同意" type="boolean" />
        </camunda:formData>
      </bpmn:extensionElements>
    </bpmn:userTask>
    <bpmn:boundaryEvent id="swj_limit" name="超时催办" cancelActivity="false" attachedToRef="review_swj">
      <bpmn:timerEventDefinition><bpmn:timeDuration xsi:type="bpmn:tFormalExpression">workhours(4)</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="swj_urged" name="催办通知" />
    <bpmn:parallelGateway id="join" />
    <bpmn:userTask id="handover" name="统一出件" />
    <bpmn:endEvent id="end" name="办结" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="intake" />
    <bpmn:sequenceFlow id="f2" sourceRef="intake" targetRef="split" />
    <bpmn:sequenceFlow id="f3" sourceRef="split" targetRef="review_gaj" />
    <bpmn:sequenceFlow id="f4" sourceRef="split" targetRef="review_swj" />
    <bpmn:sequenceFlow id="f5" sourceRef="review_gaj" targetRef="join" />
    <bpmn:sequenceFlow id="f6" sourceRef="review_swj" targetRef="join" />
    <bpmn:sequenceFlow id="f7" sourceRef="gaj_limit" targetRef="gaj_urged" />
    <bpmn:sequenceFlow id="f8" sourceRef="swj_limit" targetRef="swj_urged" />
    <bpmn:sequenceFlow id="f9" sourceRef="join" targetRef="handover" />
    <bpmn:sequenceFlow id="f10" sourceRef="handover" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""
GUIDE = """\
name: 任务列表测试流程
committed_limit: workdays(3)
statutory_limit: workdays(20)
items:
  - task: review_gaj
    name: 公章刻制备案
    department: gaj
    legal_basis: 《印铸刻字业治安管理办法》
    statutory_limit: workdays(5)
    committed_limit: workdays(2)
    type: 承诺件
    fees: 不收费
    materials:
      - {key: licence, name: 营业执照副本, required: true}
      - {key: seal_form, name: 印章刻制申请表}
"""


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=SHANGHAI)


def deploy_flow(db) -> None:
    deploy(db, [SourceFile("tasklist_flow.bpmn", FLOW_XML.encode(),
                           SourceFile("tasklist_flow.guide.yaml", GUIDE.encode()))], "admin")


def intake_values(applicant: str, **overrides) -> dict:
    return {"applicant": applicant, "capital": 100, "kind": "llc", "founded": "2026-01-05", "urgent": True,
            "note": "材料齐全", **overrides}


def open_ids(db, instance_id: int) -> dict[str, int]:
    with db.read() as conn:
        return {r.bpmn_id: r.id for r in conn.execute(select(human_task.c.bpmn_id, human_task.c.id).where(
            human_task.c.instance_id == instance_id, human_task.c.status == "open"))}


def start_reviewed(db, org, applicant: str) -> dict:
    """A case accepted at the window (now), so its two reviews are open: returns their task ids."""
    case = runtime.start_case(db, KEY, {}, "window1")
    runtime.complete(db, open_ids(db, case["id"])["intake"], org["window1"], intake_values(applicant))
    return {"case": case, **open_ids(db, case["id"])}


@pytest.fixture
def clock():
    with time_machine.travel(at("2026-03-02 09:00"), tick=False) as traveller:
        yield traveller


@pytest.fixture
def flow(db, org, clock):
    deploy_flow(db)
    return org


@pytest.fixture
def many(db, flow, clock):
    """Nine cases accepted on different days and hours, some reviews claimed: lights of every colour on 03-04 10:00."""
    cases = []
    moments = ["2026-03-02 09:10", "2026-03-02 14:00", "2026-03-02 16:30", "2026-03-03 09:30", "2026-03-03 15:00",
               "2026-03-04 09:05", "2026-03-04 09:30", "2026-03-04 09:40", "2026-03-04 09:50"]
    names = ["杭州云杉科技有限公司", "宁波星河贸易有限公司", "杭州青禾餐饮有限公司", "温州远航物流有限公司",
             "嘉兴启明电子有限公司", "湖州东方建材有限公司", "绍兴华辰纺织有限公司", "金华银杏农业有限公司",
             "衢州长风机械有限公司"]
    for moment, name in zip(moments, names, strict=True):
        clock.move_to(at(moment))
        cases.append(start_reviewed(db, flow, name))
    clock.move_to(at("2026-03-04 09:55"))
    intake_only = runtime.start_case(db, KEY, {}, "window1")        # an intake with no time limit
    runtime.claim(db, cases[0]["review_gaj"], flow["gaj1"])
    runtime.claim(db, cases[1]["review_gaj"], flow["gaj2"])
    clock.move_to(at("2026-03-04 10:00"))
    lights.sweep_lights(db)
    return {"cases": cases, "intake_only": intake_only}


def all_open(db) -> list[dict]:
    with db.read() as conn:
        rows = conn.execute(select(human_task, process_instance.c.case_no, process_instance.c.applicant)
                            .join(process_instance, process_instance.c.id == human_task.c.instance_id)
                            .where(human_task.c.status == "open")).mappings().all()
    return [dict(r) for r in rows]


def expected(db, user, keep=lambda row: True) -> list[int]:
    """What the 待办 list should hold, worked out row by row in Python, in the list's order."""
    queues = set(user.departments) | ({"__window__"} if user.has_role("window") else set())
    visible = [r for r in all_open(db)
               if r["assignee"] == user.username or r["delegated_from"] == user.username
               or (r["assignee"] is None and set(r["departments"] or ["__window__"]) & queues)]
    chosen = [r for r in visible if keep(r)]
    dated = sorted((r for r in chosen if r["due_at"] is not None), key=lambda r: (r["due_at"], r["id"]))
    undated = sorted((r for r in chosen if r["due_at"] is None), key=lambda r: r["id"])
    return [r["id"] for r in dated + undated]


def listed(db, user, **wanted) -> list[int]:
    return [r["id"] for r in tasklists.open_tasks(db, user, TaskFilter(**wanted))["rows"]]


def test_a_clerk_sees_unclaimed_tasks_of_their_department_and_the_tasks_they_hold(db, many):
    cases = many["cases"]
    gaj1, gaj2, swj1 = get_user(db, "gaj1"), get_user(db, "gaj2"), get_user(db, "swj1")
    seen = listed(db, gaj1)
    assert seen == expected(db, gaj1)
    assert cases[0]["review_gaj"] in seen and cases[1]["review_gaj"] not in seen   # gaj2 holds that one
    assert cases[1]["review_gaj"] in listed(db, gaj2)
    assert not set(seen) & {c["review_swj"] for c in cases}                         # 税务局's work stays there
    assert listed(db, swj1) == expected(db, swj1)
    assert listed(db, get_user(db, "window1")) == [open_ids(db, many["intake_only"]["id"])["intake"]]


def test_someone_in_no_department_sees_only_what_they_hold(db, many):
    supervisor = create_user(db, "watcher1", "watcher-pass-1", "督查员", [], ["supervisor"], "admin")
    assert listed(db, supervisor) == []
    assert worklist.list_tasks(db, supervisor) == []


def test_rows_carry_what_the_list_shows(db, many):
    gaj1 = get_user(db, "gaj1")
    now = at("2026-03-04 10:00")
    result = tasklists.open_tasks(db, gaj1)
    row = next(r for r in result["rows"] if r["id"] == many["cases"][8]["review_gaj"])
    assert (row["case_no"], row["applicant"], row["process_name"], row["name"]) == (
        many["cases"][8]["case"]["case_no"], "衢州长风机械有限公司", "任务列表测试流程", "公安局审查")
    assert row["created_at"] == at("2026-03-04 09:50") and row["due_at"] == at("2026-03-06 17:30")
    calendar = calendar_for(db)
    assert row["workdays_left"] == round(calendar.workdays_left(now, row["due_at"]), 2)
    assert row["workhours_left"] == round(row["workdays_left"] * 7, 1)
    assert row["light"] == light_of(calendar, now, row["created_at"], row["due_at"]) == "green"
    assert result["total"] == len(expected(db, gaj1)) and result["pages"] == 1
    assert [d["key"] for d in result["choices"]["departments"]] == ["gaj"]
    assert {"key": KEY, "name": "任务列表测试流程"} in result["choices"]["processes"]


@pytest.mark.parametrize("wanted, keep", [
    ({"overdue": True}, lambda r, now: r["due_at"] is not None and r["due_at"] <= now),
    ({"light": "red"}, lambda r, now: r["due_at"] is not None and r["due_at"] <= now),
    ({"due_within": 0}, lambda r, now: r["due_at"] is not None and r["due_at"] <= at("2026-03-04 17:30")),
    ({"due_within": 1}, lambda r, now: r["due_at"] is not None and r["due_at"] <= at("2026-03-05 17:30")),
    ({"search": "杭州"}, lambda r, now: (r["applicant"] or "").startswith("杭州")),
    ({"search": "宁波星河"}, lambda r, now: (r["applicant"] or "").startswith("宁波星河")),
    ({"department": "swj"}, lambda r, now: "swj" in (r["departments"] or [])),
    ({"process": KEY}, lambda r, now: True),
    ({"process": "no_such_flow"}, lambda r, now: False),
])
def test_each_filter_returns_exactly_the_matching_tasks(db, many, wanted, keep):
    clerk = create_user(db, "both1", "both-pass-1", "两部门", ["gaj", "swj", "window"], ["clerk", "window"])
    now = at("2026-03-04 10:00")
    want = expected(db, clerk, lambda r: keep(r, now))
    assert listed(db, clerk, **wanted) == want
    assert tasklists.open_tasks(db, clerk, TaskFilter(**wanted))["total"] == len(want)


def test_light_filters_follow_each_tasks_light(db, many):
    clerk = create_user(db, "both1", "both-pass-1", "两部门", ["gaj", "swj"], ["clerk"])
    now, calendar = at("2026-03-04 10:00"), calendar_for(db)
    rows = {r["id"]: r for r in all_open(db)}
    colour = {i: light_of(calendar, now, rows[i]["created_at"], rows[i]["due_at"], rows[i]["yellow_seconds"])
              for i in expected(db, clerk)}
    assert set(colour.values()) == {"green", "yellow", "red"}       # the fixture has every colour
    for light in ("green", "yellow", "red"):
        assert listed(db, clerk, light=light) == [i for i in expected(db, clerk) if colour[i] == light], light


def test_case_number_prefix_search(db, many):
    gaj1 = get_user(db, "gaj1")
    case_no = many["cases"][4]["case"]["case_no"]
    assert listed(db, gaj1, search=case_no) == [many["cases"][4]["review_gaj"]]
    day = case_no[:8]   # every case of that day
    assert listed(db, gaj1, search=day) == expected(db, gaj1, lambda r: r["case_no"].startswith(day))
    assert listed(db, gaj1, search="9" + case_no) == []
    # Prefixes ending in the last code point or just below the surrogates still give a valid upper bound.
    assert listed(db, gaj1, search="杭州\U0010ffff") == listed(db, gaj1, search="\ud7ff") == []


def test_pages_cover_every_task_once_in_order_and_tasks_without_a_deadline_come_last(db, many, monkeypatch):
    clerk = create_user(db, "all1", "all-pass-1", "全部", ["gaj", "swj", "window"], ["clerk", "window"])
    monkeypatch.setattr(tasklists, "PAGE_SIZE", 4)
    want = expected(db, clerk)
    assert len(want) > 8
    first = tasklists.open_tasks(db, clerk, TaskFilter(page=1))
    assert first["total"] == len(want) and first["pages"] == -(-len(want) // 4)
    pages = [listed(db, clerk, page=n) for n in range(1, first["pages"] + 1)]
    assert [i for page in pages for i in page] == want
    undated = open_ids(db, many["intake_only"]["id"])["intake"]
    assert pages[-1][-1] == undated
    backwards = [i for n in range(1, first["pages"] + 1) for i in listed(db, clerk, page=n, sort="-due")]
    dated = [i for i in want if i != undated]
    assert backwards == dated[::-1] + [undated]
    beyond = tasklists.open_tasks(db, clerk, TaskFilter(page=first["pages"] + 1))
    assert beyond["rows"] == [] and beyond["total"] == len(want)


def test_delegated_tasks_stay_in_the_delegators_list(db, many):
    gaj1, gaj2 = get_user(db, "gaj1"), get_user(db, "gaj2")
    task = many["cases"][0]["review_gaj"]                     # gaj1 claimed it
    handover.delegate(db, task, gaj1, "gaj2", "休假")
    assert task in listed(db, gaj1) and task in listed(db, gaj2)
    row = next(r for r in tasklists.open_tasks(db, gaj1)["rows"] if r["id"] == task)
    assert (row["assignee"], row["delegated_from"]) == ("gaj2", "gaj1")
    assert listed(db, gaj1) == expected(db, gaj1)


def test_department_filter_only_for_the_users_own_queues(db, many):
    with pytest.raises(InvalidInput) as refused:
        tasklists.open_tasks(db, get_user(db, "gaj1"), TaskFilter(department="swj"))
    assert [p.field for p in refused.value.problems] == ["department"]


def test_parse_filter_names_every_bad_argument():
    with pytest.raises(InvalidInput) as refused:
        parse_filter({"light": "blue", "due_within": "-1", "page": "0", "sort": "name", "overdue": "yes",
                      "q": "x" * 65})
    assert sorted(p.field for p in refused.value.problems) == ["due_within", "light", "overdue", "page", "q", "sort"]
    wanted = parse_filter({"light": "red", "due_within": "3", "page": "2", "sort": "-due", "overdue": "1",
                           "q": " 杭州 ", "department": "gaj", "process": KEY})
    assert wanted == TaskFilter(department="gaj", process=KEY, light="red", overdue=True, due_within=3,
                                search="杭州", sort="-due", page=2)
    assert parse_filter({}) == TaskFilter()
    assert parse_filter({"q": "杭州\x00云杉", "process": "\x00"}) == TaskFilter(search="杭州云杉")
    assert wanted.as_args(page=3) == {"department": "gaj", "process": KEY, "light": "red", "overdue": "1",
                                      "due_within": 3, "q": "杭州", "sort": "-due", "page": 3}


def test_the_done_list_holds_what_the_user_completed_or_sent_back_newest_first(db, many, clock):
    gaj1, window1 = get_user(db, "gaj1"), get_user(db, "window1")
    first, second = many["cases"][0]["review_gaj"], many["cases"][2]["review_gaj"]   # both due 03-04 17:30
    clock.move_to(at("2026-03-04 10:10"))
    runtime.complete(db, first, gaj1, {"gaj_opinion": "同意", "gaj_approved": True})
    clock.move_to(at("2026-03-05 09:20"))
    runtime.complete(db, second, gaj1, {"gaj_opinion": "同意"})
    done = tasklists.done_tasks(db, gaj1)
    assert [r["id"] for r in done["rows"]] == [second, first] and done["total"] == 2
    assert [r["status"] for r in done["rows"]] == ["completed", "completed"]
    assert [r["late"] for r in done["rows"]] == [True, False]
    assert done["rows"][0]["completed_at"] == at("2026-03-05 09:20")
    window_done = tasklists.done_tasks(db, window1, TaskFilter(search="杭州"))
    assert {r["applicant"] for r in window_done["rows"]} == {"杭州云杉科技有限公司", "杭州青禾餐饮有限公司"}
    assert tasklists.done_tasks(db, window1, TaskFilter(process="no_such_flow"))["rows"] == []
    assert tasklists.done_tasks(db, get_user(db, "swj1"))["total"] == 0


def test_the_task_page_shows_the_case_data_labelled_the_guide_item_and_the_allowed_actions(db, many):
    gaj1 = get_user(db, "gaj1")
    page = tasklists.task_page(db, many["cases"][8]["review_gaj"], gaj1)
    data = {d["label"]: d["value"] for d in page["data"]}
    assert data["申请人"] == "衢州长风机械有限公司" and data["企业类型"] == "有限责任公司"
    assert data["注册资本（万元）"] == 100 and data["加急办理"] is True and data["成立日期"] == "2026-01-05"
    assert [f["id"] for f in page["form"]] == ["gaj_opinion", "gaj_approved"]
    assert page["guide_item"]["name"] == "公章刻制备案" and page["guide_item"]["department_name"] == "公安局"
    assert [m["key"] for m in page["materials"]] == ["licence", "seal_form"]
    assert page["actions"] == {"claim": True, "unclaim": False, "complete": True, "upload": True, "send_back": False,
                               "reassign": False, "delegate": False, "take_back": False, "urge": False}
    assert page["task"]["light"] == "green" and page["case"]["case_no"] == many["cases"][8]["case"]["case_no"]
    assert {c["username"] for c in page["colleagues"]} == {"gaj2"}


def test_a_lead_gets_send_back_targets_and_a_redo_starts_from_what_was_entered(db, many):
    window1, gaj1 = get_user(db, "window1"), get_user(db, "gaj1")
    lead = create_user(db, "gajlead", "gaj-lead-1", "公安科长", ["gaj"], ["clerk", "lead"])
    case = many["cases"][8]
    page = tasklists.task_page(db, case["review_gaj"], lead)
    assert page["actions"]["send_back"] and page["actions"]["reassign"] and page["actions"]["urge"]
    assert [t["bpmn_id"] for t in page["send_back_targets"]] == ["intake"]
    runtime.send_back(db, case["review_gaj"], lead, page["send_back_targets"][0]["id"], "申请人名称有误")
    redo = open_ids(db, case["case"]["id"])["intake"]
    again = tasklists.task_page(db, redo, window1)
    assert again["previous_values"]["applicant"] == "衢州长风机械有限公司"
    assert again["previous_values"]["urgent"] is True
    with pytest.raises(PermissionDenied):
        tasklists.task_page(db, redo, gaj1)
    with pytest.raises(NotFound):
        tasklists.task_page(db, 999_999, gaj1)
