"""The BPMN dialect we accept: hardened XML parsing plus Camunda Modeler extensions on top of SpiffWorkflow."""
from __future__ import annotations

import re

from lxml import etree
from SpiffWorkflow.bpmn.parser.BpmnParser import full_tag
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.camunda.parser.CamundaParser import CamundaParser
from SpiffWorkflow.camunda.parser.event_parsers import (
    CamundaBoundaryEventParser, CamundaIntermediateCatchEventParser, CamundaStartEventParser,
)
from SpiffWorkflow.camunda.parser.task_spec import CAMUNDA_MODEL_NS, UserTaskParser
from SpiffWorkflow.camunda.specs.user_task import UserTask
from SpiffWorkflow.bpmn.specs.defaults import BoundaryEvent, IntermediateCatchEvent, StartEvent

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA = "{%s}" % CAMUNDA_MODEL_NS

# ISO-8601 durations (P2D, PT15S), repeating intervals (R3/PT1H) and date-times, as modelers write them.
_ISO_LITERAL = re.compile(
    r"^(R\d*/.+|P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
    r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?|\d{4}-\d{2}-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?)$",
    re.IGNORECASE,
)


class XmlRefused(Exception):
    """The bytes are not XML we are willing to read (malformed, DTD, too big)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


def parse_xml(data: bytes, max_bytes: int) -> etree._ElementTree:
    """Parse untrusted XML: no DTDs, no entities, no network, bounded size."""
    if len(data) > max_bytes:
        raise XmlRefused(f"file is {len(data)} bytes; the limit is {max_bytes} bytes")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_blank_text=False,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise XmlRefused(f"not well-formed XML: {exc.msg}", getattr(exc, "lineno", None)) from None
    except ValueError as exc:
        raise XmlRefused(f"not readable as XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    # BPMN never needs a DTD; it is how XXE and billion-laughs payloads arrive, so refuse it outright.
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XmlRefused("DOCTYPE and ENTITY declarations are not allowed in BPMN files", 1)
    return etree.ElementTree(root)


def iso_literal(expression: str | None) -> bool:
    return bool(expression) and bool(_ISO_LITERAL.match(expression.strip()))


def check_iso_literal(text: str) -> None:
    """Raise ValueError when an ISO-looking timer value is not one SpiffWorkflow can compute."""
    text = text.strip()
    if text.upper().startswith("R"):
        TimerEventDefinition.parse_iso_recurring_interval(text)
    elif text.upper().startswith("P"):
        TimerEventDefinition.parse_iso_duration(text)
    else:
        TimerEventDefinition.get_datetime(text)


class _TimerLiteralMixin:
    """Camunda Modeler writes `PT15S`; SpiffWorkflow evaluates timer text as Python. Quote literals."""

    def parse_timer_event(self, event):
        definition = super().parse_timer_event(event)
        raw = (definition.expression or "").strip()
        if not raw:
            raise ValidationException("The timer has no value.", node=self.node, file_name=self.filename)
        if iso_literal(raw):
            try:
                check_iso_literal(raw)
            except Exception as exc:
                raise ValidationException(f"Invalid ISO-8601 timer value {raw!r}: {exc}",
                                          node=self.node, file_name=self.filename) from None
            definition.expression = repr(raw)
        else:
            try:
                compile(raw, "<timer>", "eval")
            except SyntaxError as exc:
                raise ValidationException(
                    f"Timer value {raw!r} is neither an ISO-8601 literal nor a valid expression: {exc.msg}",
                    node=self.node, file_name=self.filename) from None
        return definition


class _StartEventParser(_TimerLiteralMixin, CamundaStartEventParser):
    pass


class _CatchEventParser(_TimerLiteralMixin, CamundaIntermediateCatchEventParser):
    pass


class _BoundaryEventParser(_TimerLiteralMixin, CamundaBoundaryEventParser):
    pass


class _UserTaskParser(UserTaskParser):
    """Also keeps the Camunda assignment attributes, which SpiffWorkflow's parser drops."""

    def parse_extensions(self, node=None):
        extensions = super().parse_extensions(node)
        for attribute in ("candidateGroups", "candidateUsers", "assignee", "formKey", "dueDate"):
            value = self.node.get(CAMUNDA + attribute)
            if value:
                extensions["camunda:" + attribute] = value
        return extensions


class ApprovalsParser(CamundaParser):
    OVERRIDE_PARSER_CLASSES = {
        **CamundaParser.OVERRIDE_PARSER_CLASSES,
        full_tag("userTask"): (_UserTaskParser, UserTask),
        full_tag("startEvent"): (_StartEventParser, StartEvent),
        full_tag("intermediateCatchEvent"): (_CatchEventParser, IntermediateCatchEvent),
        full_tag("boundaryEvent"): (_BoundaryEventParser, BoundaryEvent),
    }


def task_departments(spec) -> list[str]:
    """Departments that may work a user task: candidateGroups wins over the lane."""
    extensions = getattr(spec, "extensions", None) or {}
    groups = extensions.get("camunda:candidateGroups")
    if groups:
        return [g.strip() for g in groups.split(",") if g.strip()]
    return [spec.lane] if getattr(spec, "lane", None) else []
