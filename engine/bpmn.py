"""The BPMN dialect we accept: hardened XML parsing plus Camunda Modeler extensions on top of SpiffWorkflow."""
from __future__ import annotations

import ast
import builtins
import codecs
import re
from datetime import datetime
from zoneinfo import ZoneInfo

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

from .scripting import LIMIT_FUNCTIONS

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA = "{%s}" % CAMUNDA_MODEL_NS
# Flowable and Activiti write the same candidateGroups attribute as Camunda 7, in their own namespaces;
# Camunda 8 writes it on zeebe:assignmentDefinition. Honouring them keeps such tasks in their department.
_FOREIGN_CANDIDATE_GROUPS = ("{http://flowable.org/bpmn}candidateGroups", "{http://activiti.org/bpmn}candidateGroups")
_ZEEBE_ASSIGNMENT = "{http://camunda.org/schema/zeebe/1.0}assignmentDefinition"
_GROUP_VARIABLE = re.compile(r"^\$\{\s*[A-Za-z_]\w*\s*\}$")  # as engine.runtime resolves it
# Modelers write date-times without an offset meaning office time, not UTC.
LOCAL_TZ = ZoneInfo("Asia/Shanghai")
_NAIVE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")
# Text a designer meant as an ISO-8601 literal but got wrong (PT, P1Y2X, 2026-1-5): Python would
# accept several of these (a bare name, a subtraction) and the case would fail only when it runs.
_ISO_ATTEMPT = re.compile(r"^((R\d*/)?P((T|\d)[0-9A-Z.,]*)?|\d{4}-\d{1,2}-\d{1,2}\S*)$")
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_DECLARED_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")

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
        line = getattr(exc, "lineno", None)
        # libxml2 stops on the first entity it will not expand; name the real reason instead.
        if _DTD.search(data.replace(b"\0", b"")):
            raise XmlRefused("DOCTYPE and ENTITY declarations are not allowed in BPMN files", line) from None
        hint = _encoding_hint(data)
        raise XmlRefused(f"not well-formed XML: {exc.msg.strip()}{hint}", line) from None
    except ValueError as exc:
        raise XmlRefused(f"not readable as XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    # BPMN never needs a DTD; it is how XXE and billion-laughs payloads arrive, so refuse it outright.
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XmlRefused("DOCTYPE and ENTITY declarations are not allowed in BPMN files", 1)
    return etree.ElementTree(root)


def _encoding_hint(data: bytes) -> str:
    """A sentence for files whose bytes do not match the encoding their XML declaration names."""
    match = _DECLARED_ENCODING.match(data)
    if match is None:
        return ""
    declared = match.group(1).decode("ascii")
    try:
        codecs.lookup(declared)
    except LookupError:
        return f" (the XML declaration names encoding \"{declared}\", which does not exist; use UTF-8)"
    try:
        readable = data.decode(declared).lstrip("\ufeff").lstrip().startswith("<")
    except UnicodeDecodeError:
        readable = False
    if not readable:
        return (f" (the XML declaration says encoding=\"{declared}\", but the file is not in that encoding; "
                f"save it as UTF-8 or correct the declaration)")
    return ""


def document_text(tree: etree._ElementTree, data: bytes) -> str:
    """The file as text, decoded with the encoding the parser used (GBK and UTF-16 files exist)."""
    encoding = tree.docinfo.encoding or "utf-8"
    try:
        text = data.decode(encoding)
    except (LookupError, UnicodeDecodeError):
        text = data.decode("utf-8", "replace")
    return text.lstrip("\ufeff")


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
            if _NAIVE_DATETIME.match(raw):
                raw = _as_local(raw)
            definition.expression = repr(raw)
        elif _ISO_ATTEMPT.match(raw):
            raise ValidationException(
                f"Invalid ISO-8601 timer value {raw!r}: write a duration like PT15S or P2D, a cycle like "
                f"R3/PT10M, a date-time like 2026-12-01T09:00:00+08:00, or workdays(n) / workhours(h)",
                node=self.node, file_name=self.filename)
        else:
            try:
                tree = ast.parse(raw, "<timer>", "eval")
            except SyntaxError as exc:
                raise ValidationException(
                    f"Timer value {raw!r} is neither an ISO-8601 literal nor a valid expression: {exc.msg}",
                    node=self.node, file_name=self.filename) from None
            unknown = sorted(_unknown_functions(tree))
            if unknown:
                raise ValidationException(
                    f"Timer value {raw!r} calls {', '.join(unknown)}(), which does not exist; write the limit as "
                    f"workdays(N), workhours(H) or an ISO-8601 value such as P2D", node=self.node,
                    file_name=self.filename)
        return definition


def _unknown_functions(tree) -> set[str]:
    """Names called in an expression that neither the limit functions nor Python's builtins provide."""
    known = set(LIMIT_FUNCTIONS) | set(dir(builtins))
    return {node.func.id for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in known}


def _as_local(raw: str) -> str:
    """`2026-12-01T09:00` in a diagram means nine o'clock at the service centre."""
    moment = datetime.fromisoformat(raw).replace(tzinfo=LOCAL_TZ)
    return moment.isoformat()


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
        groups = extensions.get("camunda:candidateGroups") or self._foreign_candidate_groups()
        if groups:
            # The runtime resolves plain names and `${variable}`; anything else would name no department.
            for group in groups.split(","):
                group = group.strip()
                if group.startswith(("${", "#{", "=")) and not _GROUP_VARIABLE.match(group):
                    raise ValidationException(
                        f"candidate groups {groups!r} contains the expression {group!r}; list department keys "
                        f"or names separated by commas, e.g. gaj, swj, or one task variable as ${{department}}",
                        node=self.node, file_name=self.filename)
            extensions["camunda:candidateGroups"] = groups
        return extensions

    def _foreign_candidate_groups(self) -> str | None:
        for attribute in _FOREIGN_CANDIDATE_GROUPS:
            if self.node.get(attribute):
                return self.node.get(attribute)
        for extensions in self.node.iterchildren("{%s}extensionElements" % BPMN_NS):
            for assignment in extensions.iterchildren(_ZEEBE_ASSIGNMENT):
                if assignment.get("candidateGroups"):
                    return assignment.get("candidateGroups")
        return None


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
