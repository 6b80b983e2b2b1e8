"""Versions of a process: history with element diffs, case counts, suspend/reactivate, scheduled activation, roll back."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import time_machine

from engine import runtime, versions
from engine.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tests.conftest import deploy_text

FLOW = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="defs" targetNamespace="http://example.org">
  <bpmn:process id="permit" name="许可" isExecutable="true">
    <bpmn:extensionElements>
      <camunda:properties><camunda:property name="committedLimit" value="{limit}" /></camunda:properties>
    </bpmn:extensionElements>
    <bpmn:startEvent id="start" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review" />
    <bpmn:userTask id="review" name="{review}" camunda:candidateGroups="gaj" />
    <bpmn:boundaryEvent id="review_limit" attachedToRef="review" cancelActivity="false">
      <bpmn:timerEventDefinition><bpmn:timeDuration>{hours}</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="{after}" />
    {extra}
    <bpmn:endEvent id="end" />
  </bpmn:process>
</bpmn:definitions>
"""
EXTRA_STEP = """<bpmn:userTask id="archive" name="归档" camunda:candidateGroups="window" />
    <bpmn:sequenceFlow id="f3" sourceRef="archive" targetRef="end" />"""


def flow(limit="workdays(2)", review="审查", hours="workhours(4)", extra=False) -> str:
    return FLOW.format(limit=limit, review=review, hours=hours, after="archive" if extra else "end",
                       extra=EXTRA_STEP if extra else "")


@pytest.fixture
def three_versions(db, org):
    deploy_text(db, "permit.bpmn", flow())
    runtime.start_case(db, "permit", {}, "window1")
    deploy_text(db, "permit.bpmn", flow(limit="workdays(1)", review="审查（新）", hours="workhours(2)", extra=True))
    runtime.start_case(db, "permit", {}, "window1")
    runtime.start_case(db, "permit", {}, "window1")
    deploy_text(db, "permit.bpmn", flow(limit="workdays(1)", review="审查（新）", hours="workhours(2)"))
    return org


def test_versions_list_who_deployed_what_changed_and_the_cases_on_each(db, three_versions):
    listed = versions.list_versions(db, "permit")
    assert [v["version"] for v in listed] == [3, 2, 1]
    assert [v["running_cases"] for v in listed] == [0, 2, 1]
    assert [v["state"] for v in listed] == ["current", "superseded", "superseded"]
    assert all(v["deployed_by"] == "admin" for v in listed)
    assert listed[2]["changes"] is None
    second = listed[1]["changes"]
    assert [e["id"] for e in second["added"]] == ["archive", "f3"]
    assert second["removed"] == []
    assert {e["id"] for e in second["changed"]} == {"permit", "review", "review_limit", "f2"}
    third = listed[0]["changes"]
    assert [e["id"] for e in third["removed"]] == ["archive", "f3"]


def test_diff_names_each_changed_field_with_before_and_after(db, three_versions):
    diff = versions.diff_versions(db, "permit", 1, 2)
    changed = {e["id"]: e for e in diff["changed"]}
    assert changed["review"]["previous_name"] == "审查" and changed["review"]["name"] == "审查（新）"
    assert {"field": "timerEventDefinition/timeDuration", "before": "workhours(4)", "after": "workhours(2)"} in \
        changed["review_limit"]["details"]
    assert {"field": "extensionElements/properties/property[committedLimit]@value", "before": "workdays(2)",
            "after": "workdays(1)"} in changed["permit"]["details"]
    assert {"field": "@targetRef", "before": "end", "after": "archive"} in changed["f2"]["details"]
    assert diff["added"][0] == {"id": "archive", "name": "归档", "type": "userTask"}


def test_diagram_layout_alone_is_no_change():
    xml = flow()
    moved = xml.replace("</bpmn:definitions>", """<bpmndi:BPMNDiagram xmlns:bpmndi="http://www.omg.org/spec/BPMN/20100524/DI"
        id="d"><bpmndi:BPMNPlane id="p" bpmnElement="permit" /></bpmndi:BPMNDiagram></bpmn:definitions>""")
    assert versions.diff_xml(xml, moved) == {"added": [], "removed": [], "changed": []}


def test_get_version_returns_its_xml(db, three_versions):
    one = versions.get_version(db, "permit", 1)
    assert "workdays(2)" in one["xml"] and one["running_cases"] == 1
    with pytest.raises(NotFound):
        versions.get_version(db, "permit", 9)
    with pytest.raises(NotFound):
        versions.list_versions(db, "nothing")


def test_a_suspended_version_takes_no_new_cases_and_reactivates(db, three_versions):
    admin = three_versions["admin"]
    versions.suspend_version(db, "permit", 3, admin)
    assert runtime.start_case(db, "permit", {}, "window1")["version"] == 2
    assert [v["state"] for v in versions.list_versions(db, "permit")] == ["suspended", "current", "superseded"]
    for version in (1, 2):
        versions.suspend_version(db, "permit", version, admin)
    with pytest.raises(NotFound):
        runtime.start_case(db, "permit", {}, "window1")
    versions.activate_version(db, "permit", 3, admin)
    assert runtime.start_case(db, "permit", {}, "window1")["version"] == 3


def test_only_designers_change_versions(db, three_versions):
    with pytest.raises(PermissionDenied):
        versions.suspend_version(db, "permit", 3, three_versions["gaj1"])
    assert versions.list_versions(db, "permit")[0]["status"] == "active"


def test_activation_on_a_future_date_is_listed_as_scheduled(db, three_versions):
    admin = three_versions["admin"]
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    versions.activate_version(db, "permit", 3, admin, activates_at=tomorrow)
    listed = versions.list_versions(db, "permit")
    assert listed[0]["state"] == "scheduled" and listed[1]["state"] == "current"
    assert versions.list_versions(db, "permit", now=tomorrow + timedelta(seconds=1))[0]["state"] == "current"
    with pytest.raises(InvalidInput):
        versions.activate_version(db, "permit", 3, admin, activates_at=datetime(2027, 1, 1))


def test_a_version_scheduled_for_tomorrow_starts_cases_only_from_tomorrow(db, three_versions):
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    versions.activate_version(db, "permit", 3, three_versions["admin"], activates_at=tomorrow)
    assert runtime.start_case(db, "permit", {}, "window1")["version"] == 2
    with time_machine.travel(tomorrow + timedelta(minutes=1), tick=False):
        assert runtime.start_case(db, "permit", {}, "window1")["version"] == 3


def test_roll_back_redeploys_an_older_version_as_the_newest(db, three_versions):
    rolled = versions.redeploy_version(db, "permit", 1, three_versions["admin"])
    assert rolled["version"] == 4 and rolled["redeployed_from"] == 1
    assert versions.diff_versions(db, "permit", 1, 4) == {"key": "permit", "from": 1, "to": 4, "added": [],
                                                           "removed": [], "changed": []}
    assert runtime.start_case(db, "permit", {}, "window1")["version"] == 4
    with pytest.raises(Conflict):
        versions.redeploy_version(db, "permit", 4, three_versions["admin"])
