"""Migrating running cases of the shipped flows to revised versions: what moves, what is refused, deadlines, rollback."""
from __future__ import annotations

from datetime import datetime

import pytest
import yaml
from lxml import etree
from sqlalchemy import select

from engine import deploy, migration, runtime
from engine.errors import Conflict, PermissionDenied
from engine.snapshot import read_state
from engine.store import human_task, process_instance, task_queue, timer
from tests.processes import test_construction_project as construction_flow
from tests.processes import test_enterprise_startup as enterprise_flow
from tests.processes.conftest import at, clock, construction, enterprise  # noqa: F401  (fixtures)
from tests.processes.harness import PROCESSES, Case, reload

B = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"
C = "{http://camunda.org/schema/1.0/bpmn}"
ENTERPRISE = "enterprise_startup"
CONSTRUCTION = "construction_project"


# ---- revised versions of the shipped diagrams ---------------------------------------------------

def _tree(key: str):
    return etree.parse(str(PROCESSES / key / f"{key}.bpmn"))


def _by_id(tree, element_id: str):
    found = tree.getroot().xpath("//*[@id=$id]", id=element_id)
    assert found, element_id
    return found[0]


def _set_limit(tree, boundary_id: str, expression: str) -> None:
    _by_id(tree, boundary_id).find(f"{B}timerEventDefinition/{B}timeDuration").text = expression


def _set_property(tree, name: str, value: str) -> None:
    prop = tree.getroot().xpath("//camunda:property[@name=$n]", n=name, namespaces={"camunda": C[1:-1]})[0]
    prop.set("value", value)


def _remove(tree, *element_ids: str) -> None:
    for element_id in element_ids:
        element = _by_id(tree, element_id)
        element.getparent().remove(element)
    # Flows and lane references to removed elements go too, and DI shapes for them.
    gone = set(element_ids)
    for flow in list(tree.getroot().iter(f"{B}sequenceFlow")):
        if flow.get("sourceRef") in gone or flow.get("targetRef") in gone:
            gone.add(flow.get("id"))
            flow.getparent().remove(flow)
    for ref in list(tree.getroot().iter(f"{B}incoming", f"{B}outgoing", f"{B}flowNodeRef")):
        if ref.text in gone:
            ref.getparent().remove(ref)
    for shape in list(tree.getroot().xpath("//*[@bpmnElement]")):
        if shape.get("bpmnElement") in gone:
            shape.getparent().remove(shape)


def _add_branch(tree, split_id: str, join_id: str, task_id: str, name: str, department: str) -> None:
    """A new department's parallel step between a split and its join (no time limit needed for the test)."""
    split, join = _by_id(tree, split_id), _by_id(tree, join_id)
    container = split.getparent()
    task = etree.SubElement(container, f"{B}userTask", id=task_id, name=name)
    task.set(f"{C}candidateGroups", department)
    etree.SubElement(task, f"{B}incoming").text = f"Flow_{split_id}__{task_id}"
    etree.SubElement(task, f"{B}outgoing").text = f"Flow_{task_id}__{join_id}"
    etree.SubElement(split, f"{B}outgoing").text = f"Flow_{split_id}__{task_id}"
    # Keep the join's incoming list in document order (SpiffWorkflow reads inputs from the flows).
    incoming = etree.Element(f"{B}incoming")
    incoming.text = f"Flow_{task_id}__{join_id}"
    join.insert(len(join.findall(f"{B}incoming")), incoming)
    to_task = etree.SubElement(container, f"{B}sequenceFlow", id=f"Flow_{split_id}__{task_id}",
                               sourceRef=split_id, targetRef=task_id)
    if split.tag == f"{B}inclusiveGateway":
        condition = etree.SubElement(to_task, f"{B}conditionExpression")
        condition.text = "True"
    etree.SubElement(container, f"{B}sequenceFlow", id=f"Flow_{task_id}__{join_id}", sourceRef=task_id,
                     targetRef=join_id)


def _deploy(db, key: str, tree) -> int:
    guide = yaml.safe_load((PROCESSES / key / f"{key}.guide.yaml").read_text(encoding="utf-8"))
    ids = {e.get("id") for e in tree.getroot().iter() if isinstance(e.tag, str)}
    guide["items"] = [item for item in guide.get("items", []) if item.get("task") in ids]
    source = deploy.SourceFile(f"{key}.bpmn", etree.tostring(tree, xml_declaration=True, encoding="UTF-8"),
                               deploy.SourceFile(f"{key}.guide.yaml", yaml.safe_dump(guide, allow_unicode=True).encode()))
    [deployed] = [d for d in deploy.deploy(db, [source], "admin") if d.key == key]
    assert deployed.created
    return deployed.version


def enterprise_limits(db) -> int:
    """承诺时限 2 → 1 working day, every department's workhours(4) → workhours(2), one step renamed."""
    tree = _tree(ENTERPRISE)
    _set_property(tree, "committedLimit", "workdays(1)")
    for boundary in tree.getroot().iter(f"{B}boundaryEvent"):
        duration = boundary.find(f"{B}timerEventDefinition/{B}timeDuration")
        if duration is not None and duration.text == "workhours(4)":
            duration.text = "workhours(2)"
    _by_id(tree, "consolidate").set("name", "汇总审核（市场监管局）")
    return _deploy(db, ENTERPRISE, tree)


def enterprise_added_branch(db) -> int:
    tree = _tree(ENTERPRISE)
    _add_branch(tree, "split_reviews", "join_reviews", "fire_check", "消防安全检查", "gaj")
    return _deploy(db, ENTERPRISE, tree)


def enterprise_removed_step(db) -> int:
    tree = _tree(ENTERPRISE)
    _remove(tree, "bank_account", "bank_account_limit", "bank_account_urged")
    return _deploy(db, ENTERPRISE, tree)


# ---- driving cases ---------------------------------------------------------------------------------

def snapshot_of(db, instance_id: int) -> dict:
    """Everything stored about a case that a migration may touch."""
    with db.read() as conn:
        return {
            "body": read_state(conn, instance_id),
            "row": dict(conn.execute(select(process_instance).where(process_instance.c.id == instance_id)).mappings().one()),
            "tasks": [dict(r) for r in conn.execute(select(human_task).where(human_task.c.instance_id == instance_id)
                                                    .order_by(human_task.c.id)).mappings()],
            "queue": sorted(tuple(r) for r in conn.execute(select(task_queue).join(
                human_task, human_task.c.id == task_queue.c.human_task_id).where(human_task.c.instance_id == instance_id))),
            "timers": sorted(tuple(r) for r in conn.execute(select(timer.c.task_guid, timer.c.bpmn_id, timer.c.due_at)
                                                            .where(timer.c.instance_id == instance_id))),
        }


def open_task(case: Case, bpmn_id: str) -> dict:
    [task] = [t for t in case.instance()["tasks"] if t["bpmn_id"] == bpmn_id and t["status"] == "open"]
    return task


def due(case: Case, bpmn_id: str) -> datetime:
    return datetime.fromisoformat(open_task(case, bpmn_id)["due_at"])


def timer_due(db, case: Case, bpmn_id: str) -> datetime:
    with db.read() as conn:
        return conn.execute(select(timer.c.due_at).where(timer.c.instance_id == case.id,
                                                         timer.c.bpmn_id == bpmn_id)).scalar_one()


def result_for(result: dict, case: Case) -> dict:
    [found] = [c for c in result["cases"] if c["id"] == case.id]
    return found


@pytest.fixture
def admin(db, enterprise):
    from engine import accounts
    return accounts.create_user(db, "designer9", "designer-pass-9", "设计员", [], ["designer"], "admin")


def enterprise_cases(db, clerks, clock) -> dict:
    """Running enterprise cases in every state, set up on Monday 2026-03-02 (started at 09:00)."""
    cases = {}
    cases["intake"] = enterprise_flow.start(db, clerks)
    cases["registration"] = enterprise_flow.start(db, clerks)
    clock.at("2026-03-02 09:10")
    cases["registration"].complete("intake", "window", **enterprise_flow.application())
    cases["reviews"] = enterprise_flow.registered(db, clerks, clock)              # reviews started 10:00
    clock.at("2026-03-02 10:30")
    enterprise_flow.review(cases["reviews"], "gaj", seal_filing_no="公章备案-0001")
    runtime.claim(db, open_task(cases["reviews"], "tax_invoice")["id"], clerks["swj"])
    cases["bank_done"] = enterprise_flow.registered(db, clerks, clock)
    clock.at("2026-03-02 10:40")
    enterprise_flow.review(cases["bank_done"], "bank")
    cases["paused"] = enterprise_flow.registered(db, clerks, clock)               # reviews started 10:00
    clock.at("2026-03-02 11:00")
    runtime.pause_case(db, cases["paused"].id, clerks["window"], "特别程序", "现场核查")
    cases["resumed"] = enterprise_flow.registered(db, clerks, clock)
    clock.at("2026-03-02 11:00")
    runtime.pause_case(db, cases["resumed"].id, clerks["window"], "特别程序", "现场核查")
    clock.at("2026-03-02 14:00")
    runtime.resume_case(db, cases["resumed"].id, clerks["window"])
    cases["consolidate"] = enterprise_flow.registered(db, clerks, clock)
    for department in enterprise_flow.DEPARTMENTS:
        enterprise_flow.review(cases["consolidate"], department)
    cases["done"] = enterprise_flow.registered(db, clerks, clock)
    clock.at("2026-03-02 14:10")
    for department in enterprise_flow.DEPARTMENTS:
        enterprise_flow.review(cases["done"], department)
    cases["done"].complete("consolidate", "scjgj", consolidation_decision="approve", consolidation_opinion="同意")
    cases["done"].complete("handover", "window", licence_delivered=True, collected_by="李明")
    reload()
    return cases


# ---- tests -----------------------------------------------------------------------------------------

def test_changed_limits_move_every_running_case_and_count_the_working_time_already_spent(db, enterprise, clock, admin):
    cases = enterprise_cases(db, enterprise, clock)
    assert cases["done"].status == "completed"
    version = enterprise_limits(db)
    clock.at("2026-03-02 14:30")
    preview = migration.migrate_cases(db, ENTERPRISE, 1, version, admin, dry_run=True)
    assert preview["total"] == 7 and preview["movable"] == 7 and preview["migrated"] == 0
    untouched = snapshot_of(db, cases["reviews"].id)
    assert snapshot_of(db, cases["reviews"].id) == untouched        # a preview stores nothing
    steps = {s["bpmn_id"]: s for s in result_for(preview, cases["reviews"])["steps"]}
    assert datetime.fromisoformat(steps["tax_invoice"]["new_due_at"]) == at("2026-03-02 12:00")
    assert datetime.fromisoformat(steps["tax_invoice"]["due_at"]) == at("2026-03-02 15:30")

    reload()
    progress = []
    result = migration.migrate_cases(db, ENTERPRISE, 1, version, admin, progress=lambda done, total: progress.append(done))
    reload()
    assert result["migrated"] == 7 and result["refused"] == 0
    assert progress == list(range(1, 8))

    # 承诺 1 working day from Monday 09:00 instead of 2: the case is due Tuesday evening, not restarted.
    for name, case in cases.items():
        if name not in ("done", "resumed"):
            assert datetime.fromisoformat(case.instance()["due_at"]) == at("2026-03-03 17:30"), name
    # ...and the clock stop 11:00-14:00 (1.5 office hours) still counts: Wednesday 10:30.
    assert datetime.fromisoformat(cases["resumed"].instance()["due_at"]) == at("2026-03-04 10:30")
    assert cases["done"].instance()["version"] == 1
    # Registration started at 09:10: workhours(2) ends at 11:10 — already past at 14:30, so it is overdue.
    assert due(cases["registration"], "registration") == at("2026-03-02 11:10")
    assert timer_due(db, cases["registration"], "registration_limit") == at("2026-03-02 11:10")
    # Reviews started at 10:00: two office hours end at 12:00 (the claimed step keeps its clerk).
    assert due(cases["reviews"], "tax_invoice") == at("2026-03-02 12:00")
    assert open_task(cases["reviews"], "tax_invoice")["assignee"] == "swj1"
    assert [t["bpmn_id"] for t in cases["reviews"].instance()["tasks"] if t["status"] == "open"] == [
        "tax_invoice", "social_insurance", "medical_insurance", "housing_fund", "bank_account"]
    # Stopped 11:00-14:00 (1.5 office hours): 1 hour was spent before, 1 hour is left from 14:00.
    assert due(cases["resumed"], "seal_filing") == at("2026-03-02 15:00")
    # Still stopped since 11:00 with 1 hour spent: the timers stay frozen and carry the hour left.
    assert timer_due_or_none(db, cases["paused"], "seal_filing_limit") is None
    clock.at("2026-03-03 09:00")
    runtime.resume_case(db, cases["paused"].id, enterprise["window"])
    reload()
    assert due(cases["paused"], "seal_filing") == at("2026-03-03 10:00")
    assert timer_due(db, cases["paused"], "seal_filing_limit") == at("2026-03-03 10:00")
    # The renamed step shows its new name; the audit trail records the move with its mapping.
    assert open_task(cases["consolidate"], "consolidate")["name"] == "汇总审核（市场监管局）"
    [event] = cases["reviews"].events("case_migrated")
    assert (event["data"]["from_version"], event["data"]["to_version"]) == (1, version)
    assert {s["bpmn_id"] for s in event["data"]["steps"]} == {"tax_invoice", "social_insurance", "medical_insurance",
                                                               "housing_fund", "bank_account"}

    # The migrated cases run on: the overdue deemed-consent limits fire at the next sweep.
    cases["reviews"].fire_timers()
    assert {e["data"]["bpmn_id"] for e in cases["reviews"].events("deemed_consent")} == {
        "social_insurance", "medical_insurance", "housing_fund"}


def timer_due_or_none(db, case: Case, bpmn_id: str):
    with db.read() as conn:
        return conn.execute(select(timer.c.due_at).where(timer.c.instance_id == case.id,
                                                         timer.c.bpmn_id == bpmn_id)).scalar()


def test_deemed_consent_fires_at_the_recomputed_moment(db, enterprise, clock, admin):
    case = enterprise_flow.registered(db, enterprise, clock)                     # reviews started Mon 10:00
    version = enterprise_limits(db)
    clock.at("2026-03-02 11:00")
    migration.migrate_case(db, case.id, version, admin)
    reload()
    clock.at("2026-03-02 11:59")
    case.fire_timers()
    assert case.events("deemed_consent") == []
    clock.at("2026-03-02 12:01")
    case.fire_timers()
    assert {e["data"]["bpmn_id"] for e in case.events("deemed_consent")} == {
        "seal_filing", "social_insurance", "medical_insurance", "housing_fund"}


def test_a_case_a_working_day_into_its_limit_is_due_by_the_new_limit_counted_from_its_start(db, enterprise, clock, admin):
    case = enterprise_flow.start(db, enterprise)                                  # Monday 09:00
    clock.at("2026-03-02 16:00")
    case.complete("intake", "window", **enterprise_flow.application())          # registration from 16:00
    version = enterprise_limits(db)
    clock.at("2026-03-03 09:10")
    migration.migrate_case(db, case.id, version, admin)
    reload()
    # workhours(2) from Monday 16:00: 1.5 hours on Monday, half an hour on Tuesday morning.
    assert due(case, "registration") == at("2026-03-03 09:30")
    # workdays(1) from Monday 09:00 (restarting now would give Wednesday).
    assert datetime.fromisoformat(case.instance()["due_at"]) == at("2026-03-03 17:30")


def test_an_added_department_branch_takes_cases_that_have_not_split_yet_and_refuses_the_others(db, enterprise, clock, admin):
    early = enterprise_flow.start(db, enterprise)
    clock.at("2026-03-02 09:10")
    early.complete("intake", "window", **enterprise_flow.application())
    late = enterprise_flow.registered(db, enterprise, clock)
    before = snapshot_of(db, late.id)
    version = enterprise_added_branch(db)
    result = migration.migrate_cases(db, ENTERPRISE, 1, version, admin)
    reload()
    assert result["migrated"] == 1 and result["refused"] == 1
    refused = result_for(result, late)
    assert not refused["movable"] and "fire_check" in refused["reasons"][0]
    assert snapshot_of(db, late.id) == before                                   # byte for byte as it was
    early.complete("registration", "scjgj", scjgj_approved=True, scjgj_opinion="准予", credit_code="91330106MA2KXXXX0Y")
    assert early.seen_by("gaj") == ["fire_check", "seal_filing"]


def test_a_removed_step_refuses_cases_that_are_at_it_or_past_it(db, enterprise, clock, admin):
    early = enterprise_flow.start(db, enterprise)
    at_step = enterprise_flow.registered(db, enterprise, clock)
    clock.at("2026-03-02 10:30")
    past = enterprise_flow.registered(db, enterprise, clock)
    enterprise_flow.review(past, "bank")
    untouched = {c.id: snapshot_of(db, c.id) for c in (at_step, past)}
    version = enterprise_removed_step(db)
    result = migration.migrate_cases(db, ENTERPRISE, 1, version, admin)
    reload()
    assert result_for(result, early)["migrated"]
    assert "active step 银行预约开户（bank_account）" in result_for(result, at_step)["reasons"][0]
    assert "completed step 银行预约开户（bank_account）" in result_for(result, past)["reasons"][0]
    assert {c.id: snapshot_of(db, c.id) for c in (at_step, past)} == untouched
    clock.at("2026-03-02 11:00")
    early.complete("intake", "window", **enterprise_flow.application())
    early.complete("registration", "scjgj", scjgj_approved=True, scjgj_opinion="准予", credit_code="91330106MA2KXXXX0Y")
    assert "bank" not in early.worklists()
    assert set(early.worklists()) == {"gaj", "swj", "rsj", "ybj", "gjj"}


def test_rollback_restores_the_case_exactly_and_is_refused_once_it_moved_on(db, enterprise, clock, admin):
    case = enterprise_flow.registered(db, enterprise, clock)
    other = enterprise_flow.registered(db, enterprise, clock)
    before = snapshot_of(db, case.id)
    version = enterprise_limits(db)
    clock.at("2026-03-02 11:00")
    migration.migrate_cases(db, ENTERPRISE, 1, version, admin)
    reload()
    assert case.instance()["version"] == version
    rolled = migration.rollback_migration(db, case.id, admin)
    reload()
    assert rolled["version"] == 1
    after = snapshot_of(db, case.id)
    assert after["body"] == before["body"]
    assert after["tasks"] == before["tasks"] and after["timers"] == before["timers"] and after["queue"] == before["queue"]
    assert {k: v for k, v in after["row"].items() if k != "revision"} == \
        {k: v for k, v in before["row"].items() if k != "revision"}
    assert [e["type"] for e in case.events() if e["type"].startswith("case_migrat")] == [
        "case_migrated", "case_migration_rolled_back"]
    # The rolled-back case runs on version 1 again: its old deadline still holds and work continues.
    assert due(case, "seal_filing") == at("2026-03-02 15:30")
    enterprise_flow.review(case, "gaj")
    with pytest.raises(Conflict) as nothing_left:
        migration.rollback_migration(db, case.id, admin)
    assert "no migration" in nothing_left.value.message

    enterprise_flow.review(other, "gaj")                                        # moved on after migrating
    with pytest.raises(Conflict) as moved_on:
        migration.rollback_migration(db, other.id, admin)
    assert "moved on" in moved_on.value.message
    assert other.instance()["version"] == version


def test_only_designers_and_admins_migrate(db, enterprise, clock):
    case = enterprise_flow.start(db, enterprise)
    version = enterprise_limits(db)
    with pytest.raises(PermissionDenied):
        migration.migrate_case(db, case.id, version, enterprise["window"])
    assert case.instance()["version"] == 1


# ---- the construction flow: sub-processes and countersigns ------------------------------------------

def construction_revised(db) -> int:
    """EIA review 10 → 5 working days, a renamed survey, and a new department in stage 3's parallel reviews."""
    tree = _tree(CONSTRUCTION)
    _set_limit(tree, "review_eia_limit", "workdays(5)")
    _by_id(tree, "s1_survey").set("name", "联合踏勘（选址）")
    stage3 = _by_id(tree, "stage3")
    split = [g for g in stage3.iter(f"{B}parallelGateway", f"{B}inclusiveGateway") if len(g.findall(f"{B}outgoing")) > 1][0]
    join = [g for g in stage3.iter(f"{B}parallelGateway", f"{B}inclusiveGateway") if len(g.findall(f"{B}incoming")) > 1][0]
    _add_branch(tree, split.get("id"), join.get("id"), "review_seismic_design", "抗震设防审查", "zjj")
    return _deploy(db, CONSTRUCTION, tree)


def test_construction_cases_move_inside_sub_processes_and_countersigns(db, construction, clock):
    from engine import accounts
    designer = accounts.create_user(db, "designer9", "designer-pass-9", "设计员", [], ["designer"], "admin")
    at_intake = construction_flow.start(db, construction)
    surveying = construction_flow.start(db, construction)
    surveying.complete("intake", "window", **construction_flow.project())
    construction_flow.sign(surveying, "s1_survey", "ghj")
    reviewing = construction_flow.start(db, construction)
    reviewing.complete("intake", "window", **construction_flow.project())
    for department in construction_flow.SURVEY_1:
        construction_flow.sign(reviewing, "s1_survey", department)             # reviews start Mon 09:00
    assert due(reviewing, "review_eia") == at("2026-03-16 17:30")
    in_stage3 = construction_flow.start(db, construction)
    construction_flow.through_stage1(in_stage3)
    construction_flow.stage_intake(in_stage3, 2)
    construction_flow.review_all(in_stage3, 2)
    construction_flow.consolidate(in_stage3, 2, s2_approval_no="杭规建许〔2026〕0042号")
    construction_flow.stage_intake(in_stage3, 3)
    assert "review_drawing_review" in in_stage3.seen_by("zjj")
    untouched = snapshot_of(db, in_stage3.id)

    version = construction_revised(db)
    clock.at("2026-03-05 10:00")
    result = migration.migrate_cases(db, CONSTRUCTION, 1, version, designer)
    reload()
    assert [result_for(result, c)["migrated"] for c in (at_intake, surveying, reviewing, in_stage3)] == [
        True, True, True, False]
    assert "review_seismic_design" in result_for(result, in_stage3)["reasons"][0]
    assert snapshot_of(db, in_stage3.id) == untouched

    # EIA review started Monday 03-02: five working days after it end Monday 03-09 (restarting on
    # Thursday 03-05 would give 03-12; the old limit gave 03-16).
    assert due(reviewing, "review_eia") == at("2026-03-09 17:30")
    assert due(reviewing, "review_soil_water") == at("2026-03-09 17:30")      # unchanged limit, unchanged due
    assert sorted(t["name"] for t in surveying.instance()["tasks"] if t["bpmn_id"] == "s1_survey" and t["status"] == "open") == \
        ["联合踏勘（选址）"] * 3
    for department in construction_flow.SURVEY_1[1:]:
        construction_flow.sign(surveying, "s1_survey", department)
    assert surveying.worklists() == construction_flow.items_seen(1)


def test_extensions_granted_before_the_migration_still_count(db, enterprise, clock, admin):
    case = enterprise_flow.start(db, enterprise)                                  # Monday 09:00
    clock.at("2026-03-02 09:10")
    case.complete("intake", "window", **enterprise_flow.application())          # registration from 09:10
    clock.at("2026-03-02 10:00")
    lead = enterprise["scjgj"]
    runtime.extend(db, lead, 1, "材料需核实", task_id=open_task(case, "registration")["id"])
    runtime.extend(db, lead, 1, "材料需核实", instance_id=case.id)
    version = enterprise_limits(db)
    migration.migrate_case(db, case.id, version, admin)
    reload()
    # workhours(2) from 09:10 is 11:10; one working day (7 office hours) more is Tuesday 11:10.
    assert due(case, "registration") == at("2026-03-03 11:10")
    # workdays(1) from Monday is Tuesday 17:30; extended by a working day: Wednesday 17:30.
    assert datetime.fromisoformat(case.instance()["due_at"]) == at("2026-03-04 17:30")
