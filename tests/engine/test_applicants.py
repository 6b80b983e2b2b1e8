"""Online application, the window's 网上预受理, online 补正 with the clock resuming, and the rate-limited case query."""
from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import func, select

from engine import applicants, runtime, worklist
from engine.applicants import QueryRefused, TooManyAttempts, Upload
from engine.errors import Conflict, FormInvalid, NotFound
from engine.store import Database, applicant_access, attachment, query_attempt
from tests.processes.conftest import at, clock, make_clerks  # noqa: F401  (clock is a fixture)
from tests.processes.harness import deploy_processes, reload

KEY = "enterprise_startup"
PDF = b"%PDF-1.4\n% test material\n"
FIELDS = {"enterprise_name": "杭州云杉科技有限公司", "enterprise_type": "llc", "registered_capital": "100",
          "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": "12"}
ALL_MATERIALS = ["registration_application", "articles_of_association", "shareholder_identity",
                 "officer_appointment", "premises_proof", "legal_rep_id", "seal_specimen_form", "tax_agent_id",
                 "invoice_request", "employee_roster", "housing_fund_form"]


@pytest.fixture
def clerks(db, clock):
    clerks = make_clerks(db, KEY)
    deploy_processes(db)
    return clerks


def uploads(keys) -> list[Upload]:
    return [Upload(key, f"{key}.pdf", PDF) for key in keys]


def intake_values(case_data: dict, **overrides) -> dict:
    """What the window clerk submits: the applicant's fields, the ticked checklist and a decision."""
    values = {k: v for k, v in case_data.items() if k in FIELDS}
    values.update({f"mat_{k}": True for k in ALL_MATERIALS}, intake_decision="accept")
    values.update(overrides)
    return values


def window_task(db, clerks, instance_id: int, bpmn_id: str) -> dict:
    found = [t for t in worklist.list_tasks(db, clerks["window"]) if t["instance_id"] == instance_id
             and t["bpmn_id"] == bpmn_id]
    assert len(found) == 1, found
    return found[0]


def test_the_online_form_is_the_intake_form_up_to_its_materials_checklist(db, clerks):
    form = applicants.application_form(db, KEY)
    assert [f["id"] for f in form["fields"]] == list(FIELDS)
    assert form["intake"]["bpmn_id"] == "intake"
    keys = [m["key"] for m in form["materials"]]
    assert set(ALL_MATERIALS) <= set(keys) and "name_declaration" in keys
    required = {m["key"] for m in form["materials"] if m["required"]}
    assert required == set(ALL_MATERIALS)
    assert form["committed_limit"] == "workdays(2)" and "行政许可法" in form["legal_basis"]
    catalogue = applicants.catalogue(db)
    assert {entry["key"] for entry in catalogue} == {"construction_project", "enterprise_startup"}
    registration = next(i for i in catalogue[1]["items"] if i["task"] == "registration")
    assert registration["department_name"] == "市场监管局" and registration["fees"] == "不收费"


def test_bad_applications_are_refused_with_every_problem_named(db, clerks):
    with pytest.raises(FormInvalid) as refused:
        applicants.apply(db, KEY, {**FIELDS, "registered_capital": "lots", "enterprise_name": "",
                                   "intake_decision": "accept"},
                         [Upload("premises_proof", "lease.pdf", b"MZ\x90 not a pdf"),
                          Upload("no_such_material", "x.pdf", PDF), Upload("legal_rep_id", "id.exe", b"MZ")])
    fields = {p.field for p in refused.value.problems}
    assert fields == {"registered_capital", "enterprise_name", "intake_decision", "material:premises_proof",
                      "material:no_such_material", "material:legal_rep_id"}
    with pytest.raises(NotFound):
        applicants.apply(db, "no_such_flow", FIELDS)
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(applicant_access)).scalar() == 0


def test_an_online_application_reaches_the_window_and_the_password_opens_only_its_case(db, clerks):
    applied = applicants.apply(db, KEY, FIELDS, uploads(ALL_MATERIALS[:5]), contact="13800000000")
    assert applied["case_no"].startswith("20260302") and len(applied["password"]) == 10
    instance = worklist.get_instance(db, applied["id"])
    assert instance["started_by"] == "online" and instance["applicant"] == "杭州云杉科技有限公司"
    assert [t["bpmn_id"] for t in instance["tasks"]] == ["intake"]
    assert "online_application" in [e["type"] for e in instance["events"]]
    task = window_task(db, clerks, applied["id"], "intake")
    assert task["departments"] == ["window"]
    with db.read() as conn:
        stored = conn.execute(select(applicant_access.c.password_hash)).scalar()
        files = conn.execute(select(attachment.c.material_key, attachment.c.content_type, attachment.c.size)
                             .where(attachment.c.instance_id == applied["id"])).all()
    assert applied["password"] not in stored and stored.startswith("$argon2id$")
    assert sorted(f.material_key for f in files) == sorted(ALL_MATERIALS[:5])
    assert {f.content_type for f in files} == {"application/pdf"} and {f.size for f in files} == {len(PDF)}

    other = applicants.apply(db, KEY, {**FIELDS, "enterprise_name": "另一家公司"})
    found = applicants.query_case(db, applied["case_no"], applied["password"], "10.0.0.1")
    assert found == {"instance_id": applied["id"], "case_no": applied["case_no"]}
    with pytest.raises(QueryRefused):
        applicants.query_case(db, other["case_no"], applied["password"], "10.0.0.1")
    by_code = applicants.query_by_code(db, applied["verification_code"].lower(), "10.0.0.2")
    assert by_code["instance_id"] == applied["id"]

    seen = applicants.progress(db, applied["case_no"])
    assert seen["channel"] == "online" and seen["status"] == "running" and seen["light"] == "green"
    assert [s["name"] for s in seen["current"]] == ["窗口受理（一表申请）"]
    assert seen["current"][0]["departments"] == ["综合窗口"]
    assert seen["due_at"] == at("2026-03-04 17:30") and seen["supplement"] is None
    assert [n["kind"] for n in seen["notices"]] == ["receipt"]
    assert len(seen["materials"]) == 5 and seen["materials"][0]["name"] == "公司登记（备案）申请书"
    assert "password_hash" not in seen


def test_a_wrong_password_says_nothing_about_whether_the_case_exists(db, clerks):
    applied = applicants.apply(db, KEY, FIELDS)
    refusals = []
    for case_no in (applied["case_no"], "2026030299999"):
        with pytest.raises(QueryRefused) as refused:
            applicants.query_case(db, case_no, "WRONGPASS1", "10.0.0.9")
        refusals.append(refused.value.message)
    assert refusals[0] == refusals[1] == applicants.REFUSED
    with db.read() as conn:
        attempts = conn.execute(select(query_attempt.c.case_no, query_attempt.c.success)
                                .order_by(query_attempt.c.id)).all()
    assert [tuple(a) for a in attempts] == [(applied["case_no"], False), ("2026030299999", False)]


def test_failed_queries_are_limited_per_case_number_and_per_address_across_processes(db, db_config, clerks, clock):
    applied = applicants.apply(db, KEY, FIELDS)
    second_process = Database(db_config)     # another web process: it must see the same attempts
    try:
        for n in range(applicants.MAX_FAILURES_PER_CASE):
            process = db if n % 2 else second_process
            with pytest.raises(QueryRefused):
                applicants.query_case(process, applied["case_no"], "WRONG", f"10.1.0.{n}")
        # Now even the right password from a fresh address is refused for this case number...
        with pytest.raises(TooManyAttempts):
            applicants.query_case(second_process, applied["case_no"], applied["password"], "10.2.0.1")
        # ...and a case number that does not exist is limited in exactly the same way.
        for n in range(applicants.MAX_FAILURES_PER_CASE):
            with pytest.raises(QueryRefused):
                applicants.query_case(db, "20260302099999", "WRONG", f"10.3.0.{n}")
        with pytest.raises(TooManyAttempts):
            applicants.query_case(db, "20260302099999", "WRONG", "10.4.0.1")

        # One address guessing many case numbers is stopped by the per-address limit.
        for n in range(applicants.MAX_FAILURES_PER_IP):
            with pytest.raises(QueryRefused):
                applicants.query_by_code(second_process, f"FFFF0000{n:04d}", "10.9.9.9")
        with pytest.raises(TooManyAttempts):
            applicants.query_by_code(db, "ABCDEF", "10.9.9.9")

        clock.at("2026-03-02 09:20")              # the window has passed
        assert applicants.query_case(db, applied["case_no"], applied["password"], "10.9.9.9")["instance_id"] \
            == applied["id"]
    finally:
        second_process.dispose()


def test_one_time_notice_then_online_supplement_resumes_the_clock(db, clerks, clock):
    applied = applicants.apply(db, KEY, FIELDS, uploads(ALL_MATERIALS[:-2]))
    clock.at("2026-03-02 10:00")
    intake = window_task(db, clerks, applied["id"], "intake")
    with pytest.raises(Conflict):
        applicants.supply_materials(db, applied["id"], uploads(["employee_roster"]))
    reload()
    runtime.complete(db, intake["id"], clerks["window"], intake_values(
        FIELDS, mat_employee_roster=False, mat_housing_fund_form=False, intake_decision="supplement",
        missing_materials="请补交参保职工花名册和住房公积金缴存登记表", registered_capital=100, employees=12))
    seen = applicants.progress(db, applied["case_no"])
    assert seen["paused_since"] == at("2026-03-02 10:00") and seen["light"] is None
    assert seen["supplement"]["materials"] == [{"key": "employee_roster", "name": "参保职工花名册"},
                                               {"key": "housing_fund_form", "name": "住房公积金缴存登记表"}]
    assert seen["supplement"]["note"] == "请补交参保职工花名册和住房公积金缴存登记表"
    assert [n["kind"] for n in seen["notices"]] == ["receipt", "supplement"]

    with pytest.raises(FormInvalid):
        applicants.supply_materials(db, applied["id"], [])
    clock.at("2026-03-03 10:00")                   # one working day later
    reload()
    result = applicants.supply_materials(db, applied["id"], uploads(["employee_roster", "housing_fund_form"]),
                                         note="已补齐")
    assert result["case_status"] == "running"
    instance = worklist.get_instance(db, applied["id"])
    supplement = next(t for t in instance["tasks"] if t["bpmn_id"] == "supplement_intake")
    assert supplement["status"] == "completed" and supplement["completed_by"] == "online"
    resumed = [e for e in instance["events"] if e["type"] == "clock_resumed"]
    assert len(resumed) == 1 and resumed[0]["actor"] == "online"
    # The committed limit moved by the paused working day.
    assert datetime.fromisoformat(instance["due_at"]) == at("2026-03-05 17:30")
    assert instance["paused_since"] is None
    window_task(db, clerks, applied["id"], "intake")      # back at the window to check again
    seen = applicants.progress(db, applied["case_no"])
    assert seen["supplement"] is None and len(seen["materials"]) == 11
    assert applicants.material_file(db, applied["id"], seen["materials"][-1]["id"])["content"] == PDF
    with pytest.raises(NotFound):
        applicants.material_file(db, applied["id"] + 1, seen["materials"][-1]["id"])


def test_old_query_attempts_are_pruned_but_recent_ones_kept(db, clerks, clock):
    for n in range(3):
        with pytest.raises(QueryRefused):
            applicants.query_case(db, "2026030200001", "WRONG", "10.5.0.1")
    clock.at("2026-03-02 09:30")
    with pytest.raises(QueryRefused):
        applicants.query_case(db, "2026030200001", "WRONG", "10.5.0.1")
    clock.at("2026-03-03 09:10")
    assert applicants.prune_attempts(db) == 3
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(query_attempt)).scalar() == 1
