"""Modelling rules every flow in processes/ keeps: departments, time limits, layout, and a guide that matches the diagram."""
from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
from lxml import etree

from engine import deploy, guides, worklist
from engine.calendar import OfficeHours
from engine.config import Config
from tests.processes.harness import PROCESSES

NS = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL", "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
      "dc": "http://www.omg.org/spec/DD/20100524/DC", "di": "http://www.omg.org/spec/DD/20100524/DI",
      "camunda": "http://camunda.org/schema/1.0/bpmn"}
B = "{%s}" % NS["bpmn"]
C = "{%s}" % NS["camunda"]
FILES = sorted(PROCESSES.rglob("*.bpmn"))
FLOW_NODES = {"startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
              "userTask", "scriptTask", "task", "manualTask", "exclusiveGateway", "parallelGateway",
              "inclusiveGateway", "eventBasedGateway", "subProcess", "callActivity"}
LIMIT = re.compile(r"^(workdays)\((\d+)\)$|^(workhours)\((\d+(?:\.\d+)?)\)$")
WINDOW = "window"
HOURS_PER_DAY = OfficeHours.parse(Config().office_hours).seconds_per_day / 3600


class Flow:
    """One diagram and its service guide, with the lookups the rules need."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = etree.parse(str(path))
        self.root = self.tree.getroot()
        guide_path = guides.find_beside(path)
        assert guide_path is not None, f"{path.name} has no service guide beside it"
        self.guide = guides.load(str(guide_path), guide_path.read_bytes())
        self.process = self.root.find("bpmn:process", NS)
        self.nodes = {el.get("id"): el for el in self.process.iter()
                      if isinstance(el.tag, str) and etree.QName(el).localname in FLOW_NODES}
        self.flows = {el.get("id"): el for el in self.process.iter(B + "sequenceFlow")}
        self.lanes = {el.get("id"): el for el in self.process.iter(B + "lane")}
        self.shapes = {s.get("bpmnElement"): s for s in self.root.iterfind(".//bpmndi:BPMNShape", NS)}
        self.edges = {e.get("bpmnElement"): e for e in self.root.iterfind(".//bpmndi:BPMNEdge", NS)}
        self.items = {item["task"]: item for item in self.guide["items"]}
        self.departments = self.guide["departments"]

    def kind(self, element) -> str:
        return etree.QName(element).localname

    def user_tasks(self):
        return [n for n in self.nodes.values() if self.kind(n) == "userTask"]

    def bounds(self, element_id: str) -> tuple[float, float, float, float]:
        b = self.shapes[element_id].find("dc:Bounds", NS)
        return tuple(float(b.get(k)) for k in ("x", "y", "width", "height"))

    def groups(self, task) -> list[str]:
        return [g.strip() for g in (task.get(C + "candidateGroups") or "").split(",") if g.strip()]

    def properties(self, element) -> dict:
        return {p.get("name"): p.get("value") for p in
                element.xpath("./bpmn:extensionElements/camunda:properties/camunda:property", namespaces=NS)}

    def form(self, task) -> dict:
        return {f.get("id"): f for f in task.xpath(".//camunda:formData/camunda:formField", namespaces=NS)}

    def timers(self, task_id: str) -> list:
        return [n for n in self.nodes.values() if self.kind(n) == "boundaryEvent" and n.get("attachedToRef") == task_id
                and n.find("bpmn:timerEventDefinition", NS) is not None]

    def timer_value(self, boundary) -> str:
        return boundary.find("bpmn:timerEventDefinition/bpmn:timeDuration", NS).text.strip()

    def targets(self, node_id: str) -> list:
        return [self.nodes[f.get("targetRef")] for f in self.flows.values() if f.get("sourceRef") == node_id]

    def lane_of(self, node_id: str):
        for lane in self.lanes.values():
            if node_id in [ref.text for ref in lane.iterfind("bpmn:flowNodeRef", NS)]:
                return lane
        return None

    def is_department_review(self, task) -> bool:
        """Work a department does on the case: not the window's, and not a step that stops the clock."""
        return self.groups(task) != [WINDOW] and self.properties(task).get("clock") != "pause"

    def container(self, element):
        parent = element.getparent()
        while self.kind(parent) not in ("process", "subProcess"):
            parent = parent.getparent()
        return parent


def hours(limit: str) -> float:
    match = LIMIT.match(limit)
    assert match, f"{limit!r} is not workdays(N) or workhours(H)"
    return int(match.group(2)) * HOURS_PER_DAY if match.group(1) else float(match.group(4))


@pytest.fixture(scope="module", params=FILES, ids=[f.parent.name for f in FILES])
def flow(request) -> Flow:
    return Flow(request.param)


def test_both_flows_are_there():
    assert {f.parent.name for f in FILES} >= {"enterprise_startup", "construction_project"}
    for file in FILES:
        assert file.stem == file.parent.name, "one folder per flow: processes/<key>/<key>.bpmn"


def test_camunda_modeler_file_with_one_pool_of_department_lanes(flow):
    root, process = flow.root, flow.process
    assert root.get("exporter") == "Camunda Modeler" and root.nsmap.get("camunda") == NS["camunda"]
    assert process.get("isExecutable") == "true" and process.get("id") == flow.path.stem
    participants = root.findall("bpmn:collaboration/bpmn:participant", NS)
    assert [p.get("processRef") for p in participants] == [process.get("id")]
    lane_names = [lane.get("name") for lane in flow.lanes.values()]
    assert lane_names and set(lane_names) <= set(flow.departments.values())
    assert len(lane_names) == len(set(lane_names))
    properties = flow.properties(process)
    assert properties["committedLimit"] == flow.guide["committed_limit"]
    assert properties["statutoryLimit"] == flow.guide["statutory_limit"]
    assert hours(properties["committedLimit"]) <= hours(properties["statutoryLimit"])


def test_flow_node_ids_are_unique_in_the_whole_file(flow):
    # SpiffWorkflow finds a sequence flow's target by any element with that id, enum values included.
    ids = [el.get("id") for el in flow.root.iter() if isinstance(el.tag, str) and el.get("id")]
    clashes = sorted(node_id for node_id in flow.nodes if ids.count(node_id) > 1)
    assert clashes == []


def test_every_user_task_names_its_department(flow):
    keys_by_name = {name: key for key, name in flow.departments.items()}
    for task in flow.user_tasks():
        groups = flow.groups(task)
        lane = flow.lane_of(task.get("id"))
        assert groups or lane is not None, f"{task.get('id')} has neither candidateGroups nor a lane"
        loop = task.find("bpmn:multiInstanceLoopCharacteristics", NS)
        if loop is not None and groups and groups[0].startswith("${"):
            # A countersign: each instance belongs to the department its element variable names.
            assert groups == ["${%s}" % loop.get(C + "elementVariable")], task.get("id")
            continue
        assert set(groups) <= set(flow.departments), f"{task.get('id')}: unknown departments {groups}"
        if lane is not None and groups:
            assert groups == [keys_by_name[lane.get("name")]], \
                f"{task.get('id')} is drawn in lane {lane.get('name')} but worked by {groups}"


def test_every_department_review_has_a_working_time_limit(flow):
    for task in flow.user_tasks():
        if not flow.is_department_review(task):
            continue
        timers = flow.timers(task.get("id"))
        assert timers, f"{task.get('id')} ({task.get('name')}) has no boundary time limit"
        for timer in timers:
            assert LIMIT.match(flow.timer_value(timer)), f"{timer.get('id')}: {flow.timer_value(timer)!r}"


def test_deemed_consent_gives_the_same_answer_a_clerk_would_and_rejoins(flow):
    deemed = [t for t in flow.nodes.values() if flow.kind(t) == "boundaryEvent"
              and t.find("bpmn:timerEventDefinition", NS) is not None and t.get("cancelActivity", "true") == "true"]
    assert deemed, "the flow designates no 超时默许 item"
    for timer in deemed:
        task = flow.nodes[timer.get("attachedToRef")]
        [script] = flow.targets(timer.get("id"))
        assert flow.kind(script) == "scriptTask" and script.get("scriptFormat") == "python"
        assigned = {target.id: ast.literal_eval(node.value)
                    for node in ast.parse(script.find("bpmn:script", NS).text).body if isinstance(node, ast.Assign)
                    for target in node.targets}
        answers = {field for field in flow.form(task) if field.endswith(("_approved", "_opinion"))}
        assert answers and answers <= set(assigned), f"{script.get('id')} does not answer {answers - set(assigned)}"
        assert [v for k, v in assigned.items() if k.endswith("_approved")] == [True]
        assert [n.get("id") for n in flow.targets(script.get("id"))] == [n.get("id") for n in flow.targets(task.get("id"))]


def test_every_element_has_layout(flow):
    missing = sorted(set(flow.nodes) - set(flow.shapes)) + sorted(set(flow.lanes) - set(flow.shapes))
    missing += sorted(set(flow.flows) - set(flow.edges))
    participant = flow.root.find("bpmn:collaboration/bpmn:participant", NS).get("id")
    assert missing == [] and participant in flow.shapes
    for element_id in [*flow.nodes, *flow.lanes, participant]:
        x, y, w, h = flow.bounds(element_id)
        assert w > 0 and h > 0, element_id
    for flow_id, edge in flow.edges.items():
        points = [(float(p.get("x")), float(p.get("y"))) for p in edge.iterfind("di:waypoint", NS)]
        assert len(points) >= 2, flow_id
        sequence = flow.flows[flow_id]
        assert _on_border(points[0], flow.bounds(sequence.get("sourceRef"))), f"{flow_id} does not leave its source"
        assert _on_border(points[-1], flow.bounds(sequence.get("targetRef"))), f"{flow_id} does not reach its target"


def test_layout_is_readable(flow):
    """Shapes sit in their lane and sub-process, boundary events on their host, and nothing overlaps."""
    pool = flow.bounds(flow.root.find("bpmn:collaboration/bpmn:participant", NS).get("id"))
    lanes = sorted((flow.bounds(lane_id) for lane_id in flow.lanes), key=lambda b: b[1])
    assert lanes[0][1] == pool[1] and lanes[-1][1] + lanes[-1][3] == pool[1] + pool[3]
    for upper, lower in zip(lanes, lanes[1:]):
        assert upper[1] + upper[3] == lower[1], "lanes stack without gaps or overlaps"
    for lane_id, lane in flow.lanes.items():
        lx, ly, lw, lh = flow.bounds(lane_id)
        for ref in lane.iterfind("bpmn:flowNodeRef", NS):
            cx, cy = _centre(flow.bounds(ref.text))
            assert lx <= cx <= lx + lw and ly <= cy <= ly + lh, f"{ref.text} is drawn outside lane {lane.get('name')}"
    for node_id, node in flow.nodes.items():
        container = flow.container(node)
        if flow.kind(container) == "subProcess":
            assert _inside(flow.bounds(node_id), flow.bounds(container.get("id"))), f"{node_id} outside its sub-process"
        if flow.kind(node) == "boundaryEvent":
            assert _on_border(_centre(flow.bounds(node_id)), flow.bounds(node.get("attachedToRef"))), node_id
    solid = [n for n in flow.nodes if flow.kind(flow.nodes[n]) != "subProcess"]
    hosts = {n: flow.nodes[n].get("attachedToRef") for n in solid}
    overlapping = [(a, b) for a, b in itertools.combinations(solid, 2)
                   if hosts[a] != b and hosts[b] != a and _overlap(flow.bounds(a), flow.bounds(b))]
    assert overlapping == []


def test_gateways_decide_with_python_conditions(flow):
    for node_id, node in flow.nodes.items():
        if flow.kind(node) not in ("exclusiveGateway", "inclusiveGateway"):
            continue
        outgoing = [f for f in flow.flows.values() if f.get("sourceRef") == node_id]
        if len(outgoing) < 2:
            continue
        for sequence in outgoing:
            if sequence.get("id") == node.get("default"):
                continue
            condition = sequence.find("bpmn:conditionExpression", NS)
            assert condition is not None, f"{sequence.get('id')} leaves {node_id} without a condition"
            compile(condition.text, sequence.get("id"), "eval")


def test_service_guide_items_match_the_diagram(flow):
    seen_departments = set()
    for task_id, item in flow.items.items():
        task = flow.nodes.get(task_id)
        assert task is not None and flow.kind(task) == "userTask", f"guide item {item['name']} names no user task"
        assert flow.groups(task) == [item["department"]], task_id
        assert hours(item["committed_limit"]) <= hours(item["statutory_limit"]), task_id
        timers = flow.timers(task_id)
        assert [flow.timer_value(t) for t in timers] == [item["committed_limit"]], \
            f"{task_id}: the diagram's limit differs from the guide's committed limit"
        interrupting = timers[0].get("cancelActivity", "true") == "true"
        assert interrupting == bool(item.get("deemed_consent")), f"{task_id}: 超时默许 differs between guide and diagram"
        assert item["materials"] and item["fees"], task_id
        seen_departments.add(item["department"])
    for timer in flow.nodes.values():
        if flow.kind(timer) == "boundaryEvent" and timer.get("cancelActivity", "true") == "true":
            assert timer.get("attachedToRef") in flow.items, f"{timer.get('id')}: 超时默许 must be announced in the guide"
    used = {g for task in flow.user_tasks() for g in flow.groups(task) if not g.startswith("${")}
    assert used <= set(flow.departments) and seen_departments <= used


def test_intake_checklists_list_exactly_the_guide_materials(flow):
    intakes = [t for t in flow.user_tasks() if any(f.startswith("mat_") for f in flow.form(t))]
    assert intakes, "no intake form with a materials checklist"
    checker = {}
    for task_id in flow.items:
        container = flow.container(flow.nodes[task_id])
        while True:
            found = [t for t in intakes if flow.container(t) is container]
            if found or flow.kind(container) == "process":
                break
            container = flow.container(container)
        assert len(found) == 1, f"{task_id}: no single intake checks its materials"
        checker.setdefault(found[0].get("id"), []).append(flow.items[task_id])
    assert set(checker) == {t.get("id") for t in intakes}
    for intake in intakes:
        items = checker[intake.get("id")]
        keys = {m["key"] for item in items for m in item["materials"]}
        required = {m["key"] for item in items for m in item["materials"] if m.get("required")}
        names = {m["key"]: m["name"] for item in items for m in item["materials"]}
        form = flow.form(intake)
        assert {f[4:] for f in form if f.startswith("mat_")} == keys, intake.get("id")
        for key in keys:
            assert form["mat_" + key].get("type") == "boolean" and names[key] in form["mat_" + key].get("label")
        [check] = [s for s in flow.targets(intake.get("id")) if flow.kind(s) == "scriptTask"]
        assignment = next(n for n in ast.parse(check.find("bpmn:script", NS).text).body
                          if isinstance(n, ast.Assign) and n.targets[0].id == "required")
        assert set(ast.literal_eval(assignment.value)) == required, f"{check.get('id')} checks other materials"


def test_processes_deploy_together_and_redeploying_is_a_no_op(db):
    sources = deploy.read_paths([PROCESSES])
    assert all(source.guide is not None for source in sources)
    first = deploy.deploy(db, sources, "admin")
    assert sorted((v.key, v.version, v.created) for v in first) == [
        ("construction_project", 1, True), ("enterprise_startup", 1, True)]
    again = deploy.deploy(db, deploy.read_paths([PROCESSES]), "admin")
    assert all(not v.created and v.version == 1 for v in again)
    assert {p["key"] for p in worklist.list_processes(db)} == {"construction_project", "enterprise_startup"}


def _centre(b):
    return b[0] + b[2] / 2, b[1] + b[3] / 2


def _on_border(point, b, tolerance=1.0):
    x, y = point
    left, top, right, bottom = b[0], b[1], b[0] + b[2], b[1] + b[3]
    on_vertical = (abs(x - left) <= tolerance or abs(x - right) <= tolerance) and top - tolerance <= y <= bottom + tolerance
    on_horizontal = (abs(y - top) <= tolerance or abs(y - bottom) <= tolerance) and left - tolerance <= x <= right + tolerance
    return on_vertical or on_horizontal


def _inside(inner, outer):
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def _overlap(a, b):
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
