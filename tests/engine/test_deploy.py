"""Tests for engine.deploy against real-world input: modeler corpus, hostile uploads, version races and a fuzz."""
from __future__ import annotations

import copy
import random
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import time_machine
from lxml import etree
from sqlalchemy import func, select

from engine import accounts, deploy, runtime, worklist
from engine.deploy import SourceFile
from engine.errors import DeploymentInvalid
from engine.store import process_definition, timer
from tests.conftest import REPO

BPMN = REPO / "tests" / "fixtures" / "bpmn"
MODELERS = BPMN / "modelers"
INVALID = BPMN / "invalid"
SH_OFFSET = timedelta(hours=8)
# Tuesday 24 Nov 2026, 10:00 in Shanghai: an ordinary working morning.
T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


# --- helpers -------------------------------------------------------------------------------------

def _sources(*names: str) -> list[SourceFile]:
    return [SourceFile(str(MODELERS / n), (MODELERS / n).read_bytes()) for n in names]


def _stored(db) -> list[tuple[str, int]]:
    with db.read() as conn:
        return [tuple(r) for r in conn.execute(
            select(process_definition.c.key, process_definition.c.version)
            .order_by(process_definition.c.key, process_definition.c.version))]


def _refuse(db, sources: list[SourceFile]) -> list:
    """Deploy what must be refused; return the problems after checking nothing was stored."""
    with pytest.raises(DeploymentInvalid) as info:
        deploy.deploy(db, sources, "admin")
    assert _stored(db) == []
    problems = info.value.problems
    assert problems and all(p.message for p in problems)
    return problems


def _located(problems) -> list[tuple[str | None, int | None]]:
    return [(p.element_id, p.line) for p in problems]


DEPARTMENTS = [("window", "综合窗口"), ("scjgj", "市场监管局"), ("gaj", "公安局"), ("swj", "税务局"),
               ("rsj", "人社局"), ("ybj", "医保局")]


@pytest.fixture
def clerks(db):
    """The departments lanes name, and one clerk per department. The task list and task actions take a
    User value; storing argon2-hashed accounts (0.4 s each) would add nothing to what is tested here."""
    for key, name in DEPARTMENTS:
        accounts.create_department(db, key, name)
    users = {f"{key}1": accounts.User(0, f"{key}1", name, ("clerk",), (key,)) for key, name in DEPARTMENTS}
    users["window1"] = accounts.User(0, "window1", "窗口一", ("clerk", "window"), ("window",))
    return users


# --- 1. the corpus: what each modeler writes -------------------------------------------------------

# (files deployed together, key to start, start data, the user tasks that open first with their
# departments, a clerk who must see the first of them in their task list).
DEPLOYABLE = {
    # Camunda Modeler 4: pool + lanes, camunda:formData on the first task, candidateGroups overriding
    # the lane further on, a process-level camunda:properties block — the dialect we are built for.
    "camunda_modeler_4_pool": (["camunda_modeler_4_pool.bpmn"], "cm4_enterprise_opening", {},
                               {"Activity_0intake": ["window"]}, "window1"),
    # Camunda Modeler 5 (Platform 7): a black-box applicant pool with message flows, historyTimeToLive,
    # asyncBefore, formData without formKey, an inclusive gateway and a workdays() time limit.
    "camunda_modeler_5_platform7": (["camunda_modeler_5_platform7.bpmn"], "cm5_social_security", {},
                                    {"Activity_0rsj": ["rsj"]}, "rsj1"),
    # demo.bpmn.io with the "executable" box ticked: bpmn2: prefix, no vendor namespace at all; the
    # lane alone names the department.
    "bpmn_io_demo_executable": (["bpmn_io_demo_executable.bpmn"], "bpmnio_tax_registration", {},
                                {"Activity_0ch6ck3": ["swj"]}, "swj1"),
    # Camunda 8 diagrams run when they only use user tasks: zeebe:assignmentDefinition candidateGroups
    # routes the task like camunda:candidateGroups; other zeebe: extensions are ignored.
    "camunda_8_zeebe_user_tasks": (["camunda_8_zeebe_user_tasks.bpmn"], "c8_medical_insurance", {},
                                   {"Activity_0ybj": ["ybj"]}, "ybj1"),
    # Flowable Modeler: default namespace, explicit close tags, flowable:candidateGroups honoured.
    "flowable_modeler": (["flowable_modeler.bpmn20.xml"], "flowable_housing_fund", {},
                         {"sid-6B2A3C91-4D8E-4F61-9A57-0C6E1D2B8F10": ["swj"]}, "swj1"),
    # Eclipse BPMN2 Modeler for Activiti: bpmn2: prefix, activiti: attributes, a leading comment.
    "activiti_eclipse_bpmn2": (["activiti_eclipse_bpmn2.bpmn"], "activiti_business_license", {},
                               {"UserTask_1": ["scjgj"]}, "scjgj1"),
    # Signavio: sid- ids, signavio:signavioMetaData everywhere, text annotations; the condition is plain
    # text that happens to be Python, so the designer only had to tick "executable".
    "signavio": (["signavio.bpmn"], "sid-PROC0001-AAAA-4BBB-8CCC-DDDDEEEE0001", {"site_visit": True},
                 {"sid-TASK0001-AAAA-4BBB-8CCC-DDDDEEEE0001": ["window"]}, "window1"),
    # Yaoqiang: default namespace, standalone="yes", implementation="##unspecified", CDATA timer PT15S.
    "yaoqiang": (["yaoqiang.bpmn"], "yaoqiang_tax_clearance", {}, {"_5": ["swj"]}, "swj1"),
    # Trisotech: the unusual semantic: prefix, FEEL as the *document* expression language but the
    # condition itself declares language="python".
    "trisotech": (["trisotech.bpmn"], "trisotech_real_estate", {"household_check": True},
                  {"_task_tax": ["swj"]}, "swj1"),
    # A call activity into a process that lives in a second file deployed in the same upload: the
    # first human task of a new case is the called process's task.
    "call_activity_two_files": (["call_activity_parent.bpmn", "call_activity_child.bpmn"], "ca_parent_opening", {},
                                {"Activity_food_review": ["scjgj"]}, "scjgj1"),
    # Embedded sub-process, a sub-process nested in it, a timer on the whole sub-process.
    "subprocesses": (["subprocesses.bpmn"], "sub_construction_permit", {},
                     {"Activity_fire": ["gaj"], "Activity_tax": ["swj"]}, "gaj1"),
    # Python script and conditions on exclusive and inclusive gateways, decided by start data.
    "gateways_python_large": (["gateways_python.bpmn"], "gw_food_permit", {"area": 200, "chain": True},
                              {"Activity_site": ["scjgj"]}, "scjgj1"),
    "gateways_python_small": (["gateways_python.bpmn"], "gw_food_permit", {"area": 50, "chain": False},
                              {"Activity_paper": ["window"]}, "window1"),
    # Message and signal boundary events, an event-based gateway, a terminate end.
    "messages_signals": (["messages_signals.bpmn"], "msg_supplement", {}, {"Activity_check": ["window"]}, "window1"),
    "timers_every_form": (["timers_every_form.bpmn"], "timers_every_form", {},
                          {"Activity_review": ["scjgj"]}, "scjgj1"),
    # Hand-edited in Windows Notepad: UTF-8 BOM, CRLF, XML comments, CDATA with < and &.
    "windows_notepad_bom_crlf": (["windows_notepad_bom_crlf.bpmn"], "notepad_residence_permit", {},
                                 {"Activity_review": ["gaj"]}, "gaj1"),
    # A domestic tool that writes GBK and says so in the declaration: legal XML, must work.
    "gbk_declared": (["gbk_declared.bpmn"], "gbk_residence_permit", {}, {"Activity_review": ["gaj"]}, "gaj1"),
    # UTF-16 LE with BOM, as .NET/Visio exporters write it.
    "utf16_visio_export": (["utf16_visio_export.bpmn"], "utf16_residence_permit", {},
                           {"Activity_review": ["gaj"]}, "gaj1"),
}


@pytest.mark.parametrize("case", sorted(DEPLOYABLE))
def test_modeler_file_deploys_and_a_case_starts(db, clerks, case):
    files, key, data, first_tasks, clerk = DEPLOYABLE[case]
    versions = deploy.deploy(db, _sources(*files), "admin")

    executable = sorted(p.get("id") for f in files for p in etree.parse(str(MODELERS / f)).getroot().iter(
        "{http://www.omg.org/spec/BPMN/20100524/MODEL}process") if p.get("isExecutable") == "true")
    assert sorted(v.key for v in versions) == executable
    assert all(v.version == 1 and v.created for v in versions)
    assert _stored(db) == sorted((k, 1) for k in executable)

    started = runtime.start_case(db, key, {"applicant": "张三", **data}, "window1")
    assert started["status"] == "running" and started["version"] == 1
    opened = {t["bpmn_id"]: t["departments"] for t in worklist.get_instance(db, started["id"])["tasks"]}
    assert opened == first_tasks
    visible = {t["bpmn_id"] for t in worklist.list_tasks(db, clerks[clerk]) if t["instance_id"] == started["id"]}
    assert next(iter(first_tasks)) in visible


def test_the_stored_xml_is_the_document_text_whatever_its_encoding(db):
    deploy.deploy(db, _sources("gbk_declared.bpmn", "utf16_visio_export.bpmn", "windows_notepad_bom_crlf.bpmn"))
    with db.read() as conn:
        stored = dict(conn.execute(select(process_definition.c.key, process_definition.c.bpmn_xml)).all())
    assert "居住证办理（GBK）" in stored["gbk_residence_permit"]
    assert "居住证办理（UTF-16）" in stored["utf16_residence_permit"]
    assert "\x00" not in stored["utf16_residence_permit"] and "\ufffd" not in stored["gbk_residence_permit"]
    assert stored["notepad_residence_permit"].startswith("<?xml")  # BOM gone, CRLF kept as written
    assert "\r\n" in stored["notepad_residence_permit"]


def test_camunda_form_data_is_enforced_on_the_deployed_version(db, clerks):
    deploy.deploy(db, _sources("camunda_modeler_4_pool.bpmn"))
    started = runtime.start_case(db, "cm4_enterprise_opening", {}, "window1")
    task = worklist.list_tasks(db, clerks["window1"])[0]
    form = {f["id"]: f for f in worklist.get_task(db, task["id"], clerks["window1"])["form"]}
    assert set(form) == {"applicant", "capital", "kind", "materials_complete", "founded"}
    assert form["applicant"]["required"] and form["capital"]["constraints"] == {"min": "1", "max": "100000"}
    assert [o["id"] for o in form["kind"]["options"]] == ["llc", "sole"]

    runtime.complete(db, task["id"], clerks["window1"], {"applicant": "张三", "capital": 50, "kind": "llc",
                                                          "materials_complete": True, "founded": "2026-12-01"})
    opened = {t["bpmn_id"]: t["departments"] for t in worklist.get_instance(db, started["id"])["tasks"]
              if t["status"] == "open"}
    # The lane says 公安局 for the seal task too; camunda:candidateGroups="gaj" must win for it.
    assert opened == {"Activity_0scjgj": ["scjgj"], "Activity_1seal": ["gaj"]}


def test_timers_in_every_form_get_their_due_moments(db, clerks):
    deploy.deploy(db, _sources("timers_every_form.bpmn"))
    with time_machine.travel(T0, tick=False):
        started = runtime.start_case(db, "timers_every_form", {}, "window1")
    with db.read() as conn:
        due = dict(conn.execute(select(timer.c.bpmn_id, timer.c.due_at).where(timer.c.instance_id == started["id"])).all())
    expected = {
        "Timer_pt15s": T0 + timedelta(seconds=15),
        "Timer_p2d": T0 + timedelta(days=2),
        "Timer_cycle": T0 + timedelta(minutes=10),
        "Timer_date": datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc) - SH_OFFSET,
        # Tuesday 10:00 + 2 working days = Thursday close of business (17:30 in Shanghai).
        "Timer_workdays": datetime(2026, 11, 26, 17, 30, tzinfo=timezone.utc) - SH_OFFSET,
        # 10:00-12:00 and 13:30-15:30 make four office hours.
        "Timer_workhours": datetime(2026, 11, 24, 15, 30, tzinfo=timezone.utc) - SH_OFFSET,
    }
    assert set(due) == set(expected)
    for bpmn_id, moment in expected.items():
        assert abs((due[bpmn_id] - moment).total_seconds()) < 1, bpmn_id
    task = worklist.get_instance(db, started["id"])["tasks"][0]
    assert datetime.fromisoformat(task["due_at"]) == due["Timer_pt15s"]


def test_a_date_time_without_offset_means_shanghai_office_time(db, clerks):
    xml = (MODELERS / "timers_every_form.bpmn").read_text(encoding="utf-8").replace(
        "2026-12-01T09:00:00+08:00", "2026-12-01T09:00:00")
    deploy.deploy(db, [SourceFile("naive.bpmn", xml.encode())])
    with time_machine.travel(T0, tick=False):
        started = runtime.start_case(db, "timers_every_form", {}, "window1")
    with db.read() as conn:
        due = conn.execute(select(timer.c.due_at).where(timer.c.instance_id == started["id"],
                                                         timer.c.bpmn_id == "Timer_date")).scalar_one()
    assert due == datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc)


# What a mature product refuses from real modelers: (file, [(element_id, line, words in the message)]).
REFUSED_MODELER_FILES = {
    # demo.bpmn.io saves sketches with isExecutable="false"; deploying a sketch is a mistake to report,
    # not a silent no-op (Camunda 7 skips such processes without a word, which confuses designers).
    "bpmn_io_demo_sketch.bpmn": [("Process_1", 3, "not executable")],
    # Bizagi writes documentation diagrams: one pool with isExecutable missing, one with "false". Its
    # plain bpmn:task elements would complete instantly, so guessing "executable" would start empty cases.
    "bizagi_modeler.bpmn": [("Id_5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", 16, "not executable"),
                            ("Id_1a2b3c4d-5e6f-4708-9a1b-2c3d4e5f6a7b", 38, "not executable")],
    # Camunda 8 with a job worker and FEEL: neither can run here; say which element and what to write.
    "camunda_8_zeebe_feel.bpmn": [("Activity_score", 7, "service tasks are not supported"),
                                  ("Flow_big", 33, "FEEL expression (Camunda 8); write it in Python, "
                                                   "e.g. amount > 100000")],
    # Flowable's JUEL conditions must be rewritten in Python; the message gives the rewrite.
    "flowable_juel_conditions.bpmn20.xml": [("flowBig", 10, "JUEL expression; write it in Python, e.g. amount > 100"),
                                            ("flowSmall", 13, "e.g. amount <= 100")],
    # jBPM: Java/MVEL conditions and TaskName/GroupId data assignments (which would make the first task
    # fail with "Missing data input" the moment a case started).
    "jbpm_drools.bpmn2": [("_3B4C5D6E-7F8A-4B9C-8D0E-2F3A4B5C6D7E", 24, "written in 'http://www.java.com/java'"),
                          ("_6E7F8A9B-0C1D-4E2F-8A3B-4C5D6E7F8A9B", 32, "written in 'http://www.mvel.org/2.0'"),
                          ("_5B1C2D3E-4F5A-4B6C-8D7E-9F0A1B2C3D4E", 43, "data assignments")],
}


@pytest.mark.parametrize("name", sorted(REFUSED_MODELER_FILES))
def test_modeler_file_is_refused_where_it_cannot_run(db, name):
    problems = _refuse(db, _sources(name))

    expected = REFUSED_MODELER_FILES[name]
    assert _located(problems) == [(element_id, line) for element_id, line, _words in expected]
    for problem, (_id, _line, words) in zip(problems, expected):
        assert words in problem.message
        assert problem.file == str(MODELERS / name)


def test_a_zeebe_candidate_group_expression_is_refused_not_misrouted(db):
    xml = (MODELERS / "camunda_8_zeebe_feel.bpmn").read_text(encoding="utf-8")
    xml = xml.replace("=amount &gt; 100000", "amount &gt; 100000").replace("bpmn:serviceTask", "bpmn:task")
    problems = _refuse(db, [SourceFile("feel_groups.bpmn", xml.encode())])

    assert _located(problems) == [("Activity_big", 19)]
    assert "contains the expression '=[\"rsj\"]'; list department keys" in problems[0].message


def test_a_candidate_group_variable_is_resolved_from_case_data(db, clerks):
    xml = (MODELERS / "flowable_modeler.bpmn20.xml").read_text(encoding="utf-8").replace(
        'flowable:candidateGroups="swj"', 'flowable:candidateGroups="${department}"')
    deploy.deploy(db, [SourceFile("flowable_variable.bpmn20.xml", xml.encode())])
    started = runtime.start_case(db, "flowable_housing_fund", {"department": "ybj"}, "window1")

    assert [t["departments"] for t in worklist.get_instance(db, started["id"])["tasks"]] == [["ybj"]]


def test_the_whole_modelers_folder_at_once_is_refused_with_every_problem_and_stores_nothing(db):
    problems = _refuse(db, deploy.read_paths([MODELERS]))

    assert {Path(p.file).name for p in problems} == set(REFUSED_MODELER_FILES)


def test_every_deployable_modeler_file_in_one_upload(db):
    names = sorted({f for files, *_rest in DEPLOYABLE.values() for f in files})
    versions = deploy.deploy(db, _sources(*names), "admin")

    assert len(versions) == len(_stored(db)) == 18
    assert all(v.created and v.version == 1 for v in versions)


# --- 2. hostile and invalid input --------------------------------------------------------------------

def _invalid(name: str) -> SourceFile:
    return SourceFile(name, (INVALID / name).read_bytes())


def _timer_diagram(value: str, kind: str = "timeDuration") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" id="D" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="bad_timer" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:userTask id="review" name="审查" />
    <bpmn:boundaryEvent id="limit" attachedToRef="review">
      <bpmn:timerEventDefinition id="limit_def">
        <bpmn:{kind} xsi:type="bpmn:tFormalExpression">{value}</bpmn:{kind}>
      </bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="end" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review" />
    <bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="end" />
    <bpmn:sequenceFlow id="f3" sourceRef="limit" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
""".encode()


# (source, [(element_id, line, words in the message)]); line None where no line exists (a size check).
HOSTILE = {
    "empty file": (lambda: SourceFile("empty.bpmn", b""), [(None, 1, "Document is empty")]),
    "binary garbage": (lambda: SourceFile("garbage.bpmn", random.Random(7).randbytes(4096)),
                       [(None, 1, "not well-formed XML")]),
    "png renamed .bpmn": (lambda: SourceFile("diagram.bpmn", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64)),
                          [(None, 1, "not well-formed XML")]),
    "truncated": (lambda: _invalid("truncated.bpmn"), [(None, 9, "not well-formed XML")]),
    "xxe file entity": (lambda: _invalid("xxe_file.bpmn"), [(None, 6, "DOCTYPE and ENTITY declarations")]),
    "xxe parameter entities": (lambda: _invalid("xxe_parameter_entity.bpmn"),
                               [(None, 1, "DOCTYPE and ENTITY declarations")]),
    "external DTD": (lambda: _invalid("external_dtd.bpmn"), [(None, 1, "DOCTYPE and ENTITY declarations")]),
    "billion laughs": (lambda: _invalid("billion_laughs.bpmn"), [(None, 15, "DOCTYPE and ENTITY declarations")]),
    "svg": (lambda: _invalid("drawing.svg"), [(None, 2, "not a BPMN 2.0 file: the root element is "
                                                       "{http://www.w3.org/2000/svg}svg")]),
    "dmn": (lambda: _invalid("decision.dmn"), [(None, 2, "not a BPMN 2.0 file")]),
    "no process": (lambda: _invalid("no_process.bpmn"), [(None, 2, "contains no bpmn:process")]),
    "not executable": (lambda: _invalid("not_executable.bpmn"), [("draft_only", 3, 'set isExecutable="true"')]),
    "complex gateway": (lambda: _invalid("complex_gateway.bpmn"),
                        [("Gateway_complex", 5, "complex gateways are not supported")]),
    "service task": (lambda: _invalid("service_task.bpmn"), [("Activity_push", 5, "service tasks are not supported")]),
    "timer PT": (lambda: SourceFile("t.bpmn", _timer_diagram("PT")), [("limit", 6, "Invalid ISO-8601 timer value 'PT'")]),
    "timer P1Y2X": (lambda: SourceFile("t.bpmn", _timer_diagram("P1Y2X")), [("limit", 6, "'P1Y2X'")]),
    "timer 2026-13-45": (lambda: SourceFile("t.bpmn", _timer_diagram("2026-13-45", "timeDate")),
                         [("limit", 6, "Invalid ISO-8601 timer value '2026-13-45'")]),
    "timer 2026-1-5": (lambda: SourceFile("t.bpmn", _timer_diagram("2026-1-5", "timeDate")),
                       [("limit", 6, "Invalid ISO-8601 timer value '2026-1-5'")]),
    "timer workdays(": (lambda: SourceFile("t.bpmn", _timer_diagram("workdays(")),
                        [("limit", 6, "neither an ISO-8601 literal nor a valid expression")]),
    "timer R3/PT": (lambda: SourceFile("t.bpmn", _timer_diagram("R3/PT", "timeCycle")), [("limit", 6, "'R3/PT'")]),
    "timer empty": (lambda: SourceFile("t.bpmn", _timer_diagram("  ")), [("limit", 6, "no value")]),
    "JUEL condition": (lambda: SourceFile("juel.bpmn", (MODELERS / "gateways_python.bpmn").read_bytes().replace(
        b"large and area &gt;= 150", b"${amount &gt; 100}")),
        [("Flow_large", 61, "JUEL expression; write it in Python, e.g. amount > 100")]),
    "python syntax errors": (lambda: _invalid("python_errors.bpmn"),
                             [("Activity_script", 5, "script 'if amount > 100\\n    big = True' is not valid Python"),
                              ("Flow_big", 14, "condition 'amount >>= 100' is not valid Python"),
                              ("Flow_small", 17, "condition 'amount < 100 and' is not valid Python")]),
    "javascript script": (lambda: _invalid("javascript_script.bpmn"),
                          [("Activity_js", 5, "script format 'javascript' is not supported")]),
    "bad form fields": (lambda: _invalid("bad_forms.bpmn"),
                        [("Activity_form", 8, "'photo' has type 'file'"),
                         ("Activity_form", 9, "'level' is an enum without any camunda:value"),
                         ("Activity_form", 12, "constraint min needs a number, got 'ten'"),
                         ("Activity_form", 16, "'remark' is defined twice")]),
    "no start event": (lambda: _invalid("no_start_event.bpmn"), [("no_start", 3, "No start event")]),
    "dangling sequence flow": (lambda: _invalid("dangling_sequence_flow.bpmn"),
                               [("Flow_2", 7, "targetRef='Event_deleted', which is not an element")]),
    "duplicate ids": (lambda: _invalid("duplicate_ids.bpmn"),
                      [("Activity_1", 6, "id 'Activity_1' is used twice (first on line 5)")]),
    "call activity to a missing process": (lambda: _invalid("call_activity_missing.bpmn"),
                                           [("Activity_call", 5, "calls process 'not_deployed_anywhere', which "
                                                                 "is not in this deployment")]),
    "call activity whose child file is not uploaded": (lambda: _sources("call_activity_parent.bpmn")[0],
                                                       [("Activity_call_license", 7, "'ca_child_food_license'")]),
    "GBK bytes declared UTF-8": (lambda: _invalid("gbk_bytes_declared_utf8.bpmn"),
                                 [(None, 2, 'says encoding="UTF-8", but the file is not in that encoding')]),
    "unknown encoding": (lambda: _invalid("unknown_encoding.bpmn"), [(None, 1, '"GB-9999", which does not exist')]),
    "UTF-8 bytes declared UTF-16": (lambda: SourceFile("u.bpmn", (MODELERS / "yaoqiang.bpmn").read_bytes().replace(
        b'encoding="UTF-8"', b'encoding="UTF-16"')), [(None, 1, 'says encoding="UTF-16"')]),
    "nested 5000 deep": (lambda: SourceFile("deep.bpmn", b'<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/'
                                            b'BPMN/20100524/MODEL">' + b"<x>" * 5000 + b"</x>" * 5000
                                            + b"</bpmn:definitions>"), [(None, 1, "Excessive depth")]),
    "process id longer than the key column": (lambda: SourceFile("long.bpmn", (MODELERS / "yaoqiang.bpmn").read_bytes()
                                                                 .replace(b"yaoqiang_tax_clearance", b"k" * 300)),
                                              [("k" * 300, 3, "at most 255 characters")]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_or_invalid_input_is_refused_with_a_located_message(db, case):
    make, expected = HOSTILE[case]
    source = make()
    problems = _refuse(db, [source])

    assert _located(problems) == [(element_id, line) for element_id, line, _words in expected]
    for problem, (_id, _line, words) in zip(problems, expected):
        assert words in problem.message, problem.message
        assert problem.file == source.name
        assert "root:" not in problem.message  # nothing from /etc/passwd ever echoes back


def test_an_oversized_upload_is_refused_before_parsing(db):
    limit = db.config.max_upload_bytes
    data = (MODELERS / "yaoqiang.bpmn").read_bytes()
    data = data.replace(b"</definitions>", b"<!--" + b"x" * limit + b"--></definitions>")
    problems = _refuse(db, [SourceFile("big.bpmn", data)])

    assert [p.message for p in problems] == [f"file is {len(data)} bytes; the limit is {limit} bytes"]


def test_deep_but_legal_nesting_deploys_and_runs(db, clerks):
    depth = 60
    body = "".join(f'<bpmn:subProcess id="sp{i}"><bpmn:startEvent id="s{i}"/><bpmn:endEvent id="e{i}"/>'
                   f'<bpmn:sequenceFlow id="f{i}" sourceRef="s{i}" targetRef="sp{i + 1}"/>'
                   f'<bpmn:sequenceFlow id="g{i}" sourceRef="sp{i + 1}" targetRef="e{i}"/>' for i in range(depth))
    xml = ('<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
           'xmlns:camunda="http://camunda.org/schema/1.0/bpmn"><bpmn:process id="deep" isExecutable="true">'
           '<bpmn:startEvent id="s"/><bpmn:sequenceFlow id="f" sourceRef="s" targetRef="sp0"/>'
           f'{body}<bpmn:userTask id="sp{depth}" name="最深处" camunda:candidateGroups="gaj"/>'
           + "</bpmn:subProcess>" * depth + "</bpmn:process></bpmn:definitions>")
    deploy.deploy(db, [SourceFile("deep.bpmn", xml.encode())])
    started = runtime.start_case(db, "deep", {}, "window1")

    assert [t["bpmn_id"] for t in worklist.get_instance(db, started["id"])["tasks"]] == [f"sp{depth}"]


def test_the_api_shape_of_a_refusal_names_file_element_and_line(db):
    with pytest.raises(DeploymentInvalid) as info:
        deploy.deploy(db, [_invalid("service_task.bpmn")])
    body = info.value.to_dict()

    assert body["errors"] == [{"file": "service_task.bpmn", "element_id": "Activity_push", "line": 5,
                               "message": "service tasks are not supported; model the work as a user task "
                                          "or a Python script task"}]


# --- 3. versioning ----------------------------------------------------------------------------------

def _variant(label: str) -> bytes:
    """The bpmn.io diagram with its task renamed: same process key, different content."""
    return (MODELERS / "bpmn_io_demo_executable.bpmn").read_text(encoding="utf-8").replace(
        'name="税务登记审核"', f'name="税务登记审核{label}"').encode()


def test_identical_file_keeps_its_version_and_a_changed_one_makes_the_next(db):
    first = deploy.deploy(db, [SourceFile("tax.bpmn", _variant("A"))])
    again = deploy.deploy(db, [SourceFile("renamed.bpmn", _variant("A"))])
    changed = deploy.deploy(db, [SourceFile("tax.bpmn", _variant("B"))])
    back = deploy.deploy(db, [SourceFile("tax.bpmn", _variant("A"))])

    assert [(v.version, v.created) for v in first + again + changed + back] == [
        (1, True), (1, False), (2, True), (3, True)]
    assert again[0].id == first[0].id
    assert _stored(db) == [("bpmnio_tax_registration", 1), ("bpmnio_tax_registration", 2),
                           ("bpmnio_tax_registration", 3)]


def test_one_invalid_file_in_a_deployment_stores_nothing_for_any(db):
    problems = _refuse(db, [SourceFile("tax.bpmn", _variant("A")), _invalid("truncated.bpmn"),
                            *_sources("camunda_modeler_4_pool.bpmn")])

    assert [(p.file, p.line) for p in problems] == [("truncated.bpmn", 9)]


def test_a_process_id_in_two_files_of_one_deployment_is_refused(db):
    problems = _refuse(db, [SourceFile("a.bpmn", _variant("A")), SourceFile("b.bpmn", _variant("B"))])

    assert [(p.file, p.element_id) for p in problems] == [("b.bpmn", "bpmnio_tax_registration")]
    assert "Duplicate process ID" in problems[0].message


def test_concurrent_deploys_of_one_key_number_versions_without_gap_or_duplicate(db):
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results, errors = [], []

    def deploy_variant(label):
        barrier.wait()
        try:
            results.extend(deploy.deploy(db, [SourceFile("tax.bpmn", _variant(label))], "admin"))
        except Exception as exc:  # collected: an exception in a thread must fail the test, not vanish
            errors.append(exc)

    for round_ in range(2):
        threads = [threading.Thread(target=deploy_variant, args=(f"{round_}-{i}",)) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert errors == []
    assert sorted(v.version for v in results) == list(range(1, 2 * threads_count + 1))
    assert _stored(db) == [("bpmnio_tax_registration", n) for n in range(1, 2 * threads_count + 1)]


GUIDE = """\
flow: bpmnio_tax_registration
name: 税务登记
committed_limit: workdays(1)
statutory_limit: workdays(15)
items:
  - task: Activity_0ch6ck3
    name: 税务登记
    department: swj
    legal_basis: 《税收征收管理法》第十五条
    statutory_limit: workdays(15)
    committed_limit: {limit}
    type: 承诺件
"""


def test_the_service_guide_beside_a_diagram_is_part_of_the_version(db, tmp_path):
    (tmp_path / "tax.bpmn").write_bytes(_variant("A"))
    guide = tmp_path / "tax.guide.yaml"
    guide.write_text(GUIDE.format(limit="workdays(1)"), encoding="utf-8")
    first = deploy.deploy(db, deploy.read_paths([tmp_path]))
    same = deploy.deploy(db, deploy.read_paths([tmp_path / "tax.bpmn"]))
    guide.write_text(GUIDE.format(limit="workhours(4)"), encoding="utf-8")
    changed = deploy.deploy(db, deploy.read_paths([tmp_path]))
    guide.unlink()
    without = deploy.deploy(db, deploy.read_paths([tmp_path]))

    assert [(v.version, v.created) for v in first + same + changed + without] == [
        (1, True), (1, False), (2, True), (3, True)]
    with db.read() as conn:
        guides = [r.guide for r in conn.execute(select(process_definition.c.guide).order_by(process_definition.c.id))]
    assert [g and g["items"][0]["committed_limit"] for g in guides] == ["workdays(1)", "workhours(4)", None]


def test_a_changed_called_process_makes_a_new_version_of_its_caller(db):
    parent, child = _sources("call_activity_parent.bpmn", "call_activity_child.bpmn")
    deploy.deploy(db, [parent, child])
    again = deploy.deploy(db, [parent, child])
    child.data = child.data.replace("食品经营许可审查".encode(), "食品经营许可审查（新）".encode())
    changed = deploy.deploy(db, [parent, child])

    assert {(v.key, v.version, v.created) for v in again} == {
        ("ca_parent_opening", 1, False), ("ca_child_food_license", 1, False)}
    # The parent's version embeds the called process, so new cases must run the new child.
    assert {(v.key, v.version, v.created) for v in changed} == {
        ("ca_parent_opening", 2, True), ("ca_child_food_license", 2, True)}


# --- 4. fuzz ------------------------------------------------------------------------------------------

_FUZZ_TAGS = ["userTask", "task", "complexGateway", "serviceTask", "subProcess", "startEvent", "endEvent",
              "exclusiveGateway", "parallelGateway", "boundaryEvent", "timerEventDefinition", "sequenceFlow",
              "process", "lane", "conditionExpression", "callActivity", "scriptTask", "definitions"]
_FUZZ_VALUES = ["", " ", "Activity_0intake", "Gateway_0join", "StartEvent_1", "${x}", "=x", "PT", "true",
                "false", "名称" * 40, "x" * 300, "0", "-1", "'", "\t\n"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random structural or byte-level edits of a valid diagram."""
    tree = etree.fromstring(data)
    byte_edits = []
    for _ in range(rng.randint(1, 3)):
        elements = [e for e in tree.iter() if isinstance(e.tag, str)]
        element = rng.choice(elements[1:])
        attributes = list(element.attrib)
        operation = rng.choice(["drop", "duplicate", "rename", "drop_attr", "set_attr", "rename_attr",
                                "move", "truncate", "flip_bytes", "text"])
        if operation == "drop" and element.getparent() is not None:
            element.getparent().remove(element)
        elif operation == "duplicate" and element.getparent() is not None:
            element.addnext(copy.deepcopy(element))
        elif operation == "rename":
            namespace = etree.QName(element).namespace or ""
            element.tag = "{%s}%s" % (namespace, rng.choice(_FUZZ_TAGS))
        elif operation == "drop_attr" and attributes:
            del element.attrib[rng.choice(attributes)]
        elif operation == "set_attr":
            name = rng.choice(attributes or ["id"])
            element.set(name, rng.choice(_FUZZ_VALUES))
        elif operation == "rename_attr" and attributes:
            name = rng.choice(attributes)
            value = element.attrib.pop(name)
            element.set(rng.choice(["id", "sourceRef", "targetRef", "attachedToRef", "isExecutable", "name",
                                    "default", "calledElement", "cancelActivity"]), value)
        elif operation == "move":
            target = rng.choice(elements)
            if element not in target.iterancestors() and element is not target:
                target.append(element)
        elif operation == "text":
            element.text = rng.choice(_FUZZ_VALUES + ["amount >", "PT15S", "P1Y2X", "workdays(2)", "import os"])
        elif operation in ("truncate", "flip_bytes"):
            byte_edits.append(operation)
    out = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    for operation in byte_edits:
        if operation == "truncate":
            out = out[:rng.randrange(len(out))]
        else:
            mutable = bytearray(out)
            for _ in range(rng.randint(1, 8)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            out = bytes(mutable)
    return out


def test_fuzzed_diagrams_deploy_or_are_refused_never_crash(db):
    rng = random.Random(20261124)
    bases = [(MODELERS / name).read_bytes() for name in (
        "camunda_modeler_4_pool.bpmn", "camunda_modeler_5_platform7.bpmn", "gateways_python.bpmn",
        "timers_every_form.bpmn", "subprocesses.bpmn", "messages_signals.bpmn", "signavio.bpmn")]
    outcomes = {"deployed": 0, "refused": 0}
    for index in range(200):
        data = _mutate(rng, rng.choice(bases))
        name = f"fuzz_{index}.bpmn"
        try:
            deploy.deploy(db, [SourceFile(name, data)], "fuzzer")
        except DeploymentInvalid as exc:
            outcomes["refused"] += 1
            assert exc.problems and all(p.message and p.file == name for p in exc.problems), index
        else:
            outcomes["deployed"] += 1
    # Both branches were really exercised, so the seed still explores something.
    assert outcomes["deployed"] >= 40 and outcomes["refused"] >= 40, outcomes
    with db.read() as conn:
        versions = conn.execute(select(func.count()).select_from(process_definition)).scalar()
    assert versions <= outcomes["deployed"]


def test_a_misspelt_limit_function_is_refused_at_deploy(db):
    from engine import deploy as deploy_module
    from engine.errors import DeploymentInvalid
    xml = (REPO / "tests" / "fixtures" / "bpmn" / "time_limits.bpmn").read_text(encoding="utf-8")
    with pytest.raises(DeploymentInvalid) as refused:
        deploy_module.deploy(db, [deploy_module.SourceFile("typo.bpmn", xml.replace("workhours(4)", "workhourz(4)").encode())])
    problem = refused.value.problems[0]
    assert problem.element_id == "swj_urge" and "workhourz" in problem.message and "workhours(H)" in problem.message


def test_a_lane_naming_no_department_deploys_with_a_warning_naming_the_step(db, org):
    xml = (REPO / "tests" / "fixtures" / "bpmn" / "parallel_review.bpmn").read_bytes()
    deployed = deploy.deploy(db, [SourceFile("parallel_review.bpmn", xml)])
    assert deployed[0].created and deployed[0].warnings == []          # every lane is a known department
    misspelt = xml.replace("人社局".encode(), "人设局".encode())
    deployed = deploy.deploy(db, [SourceFile("parallel_review.bpmn", misspelt)])
    assert deployed[0].version == 2
    assert [(w["element_id"], w["file"]) for w in deployed[0].warnings] == [("review_rsj", "parallel_review.bpmn")]
    assert "人设局" in deployed[0].warnings[0]["message"] and deployed[0].warnings[0]["line"] > 1
    assert deployed[0].to_dict()["warnings"] == deployed[0].warnings
