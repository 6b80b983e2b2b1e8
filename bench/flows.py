"""Generated benchmark flow: window intake, N parallel department reviews (one lane each), join, hand-over."""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

PROCESS_KEY = "bench_parallel"
WINDOW = ("window", "综合窗口")


@dataclass(frozen=True)
class Flow:
    """A generated diagram plus what a driver needs to walk it: departments and each step's form data."""

    xml: bytes
    departments: list[tuple[str, str]]          # (key, name) of each reviewing department, in lane order

    @property
    def review_ids(self) -> list[str]:
        return [f"review_{key}" for key, _ in self.departments]

    def completions(self, case: int) -> list[tuple[str, dict]]:
        """(bpmn_id, form data) for every user task of one case, in the order both drivers complete them."""
        steps = [("intake", {"applicant": f"测试企业{case:04d}有限公司", "capital": 100 + case})]
        for index, (key, name) in enumerate(self.departments):
            steps.append((f"review_{key}", {f"{key}_opinion": f"{name}：材料齐全，同意办理。",
                                            f"{key}_approved": index % 7 != 3}))
        steps.append(("handover", {"receipt_no": f"R{case:06d}", "delivered": True}))
        return steps


def department_list(branches: int) -> list[tuple[str, str]]:
    return [(f"dept{i:02d}", f"审查部门{i:02d}") for i in range(1, branches + 1)]


def parallel_flow(branches: int = 16) -> Flow:
    if branches < 1:
        raise ValueError("branches must be at least 1")
    departments = department_list(branches)
    window_nodes = ["start", "intake", "split", "join", "handover", "end"]
    lanes = [_lane("lane_window", WINDOW[1], window_nodes)]
    lanes += [_lane(f"lane_{key}", name, [f"review_{key}"]) for key, name in departments]
    reviews, flows = [], []
    for key, name in departments:
        reviews.append(f"""
    <bpmn:userTask id="review_{key}" name={quoteattr(name + "审查")} camunda:candidateGroups="{key}">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="{key}_opinion" label="审查意见" type="string">
            <camunda:validation><camunda:constraint name="required" /><camunda:constraint name="maxlength" config="500" /></camunda:validation>
          </camunda:formField>
          <camunda:formField id="{key}_approved" label="同意" type="boolean" />
        </camunda:formData>
      </bpmn:extensionElements>
    </bpmn:userTask>""")
        flows.append(f'\n    <bpmn:sequenceFlow id="to_{key}" sourceRef="split" targetRef="review_{key}" />'
                     f'\n    <bpmn:sequenceFlow id="from_{key}" sourceRef="review_{key}" targetRef="join" />')
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="Definitions_bench" targetNamespace="http://bpmn.io/schema/bpmn" exporter="Camunda Modeler" exporterVersion="5.28.0">
  <bpmn:process id="{PROCESS_KEY}" name="并联审批基准（{branches}部门）" isExecutable="true">
    <bpmn:laneSet id="LaneSet_1">{"".join(lanes)}
    </bpmn:laneSet>
    <bpmn:startEvent id="start" name="收件" />
    <bpmn:userTask id="intake" name="窗口受理">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="applicant" label="申请人" type="string">
            <camunda:validation><camunda:constraint name="required" /><camunda:constraint name="minlength" config="2" /></camunda:validation>
          </camunda:formField>
          <camunda:formField id="capital" label="注册资本（万元）" type="long">
            <camunda:validation><camunda:constraint name="min" config="1" /></camunda:validation>
          </camunda:formField>
        </camunda:formData>
      </bpmn:extensionElements>
    </bpmn:userTask>
    <bpmn:parallelGateway id="split" />{"".join(reviews)}
    <bpmn:parallelGateway id="join" />
    <bpmn:userTask id="handover" name="统一出件">
      <bpmn:extensionElements>
        <camunda:formData>
          <camunda:formField id="receipt_no" label="回执编号" type="string" />
          <camunda:formField id="delivered" label="已送达" type="boolean" />
        </camunda:formData>
      </bpmn:extensionElements>
    </bpmn:userTask>
    <bpmn:endEvent id="end" name="办结" />
    <bpmn:sequenceFlow id="f_start" sourceRef="start" targetRef="intake" />
    <bpmn:sequenceFlow id="f_intake" sourceRef="intake" targetRef="split" />{"".join(flows)}
    <bpmn:sequenceFlow id="f_join" sourceRef="join" targetRef="handover" />
    <bpmn:sequenceFlow id="f_end" sourceRef="handover" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""
    return Flow(xml.encode("utf-8"), departments)


def _lane(lane_id: str, name: str, nodes: list[str]) -> str:
    refs = "".join(f"<bpmn:flowNodeRef>{node}</bpmn:flowNodeRef>" for node in nodes)
    return f"\n      <bpmn:lane id=\"{lane_id}\" name={quoteattr(name)}>{refs}</bpmn:lane>"
