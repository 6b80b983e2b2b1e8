"""Deploy BPMN files: validate everything first, then store one new process-definition version per changed process."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException

from . import audit, guides
from .bpmn import BPMN_NS, CAMUNDA, ApprovalsParser, XmlRefused, document_text, parse_xml
from .errors import DeploymentInvalid, Problem
from .forms import check_form_definition
from .snapshot import dump_specs
from .store import Database, department, process_definition

# .bpmn2 is what jBPM and the Eclipse BPMN2 Modeler save.
BPMN_SUFFIXES = (".bpmn", ".bpmn2", ".bpmn20.xml", ".xml")
_B = "{%s}" % BPMN_NS
# Elements SpiffWorkflow would accept but cannot run here without code we do not allow in diagrams.
UNSUPPORTED = {
    "complexGateway": "complex gateways are not supported; use parallel, exclusive or inclusive gateways",
    "serviceTask": "service tasks are not supported; model the work as a user task or a Python script task",
    "businessRuleTask": "business rule (DMN) tasks are not supported",
    "adHocSubProcess": "ad-hoc sub-processes are not supported",
}
_MAX_KEY = 255  # process_definition.key / name columns


@dataclass
class SourceFile:
    name: str
    data: bytes
    guide: "SourceFile | None" = None


@dataclass
class DeployedVersion:
    id: int
    key: str
    version: int
    name: str | None
    created: bool
    # Steps whose lane or candidate group names no department yet: deployed all the same (the department may
    # be created next), but no clerk sees those steps until it exists.
    warnings: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "key": self.key, "version": self.version, "name": self.name, "created": self.created,
                "warnings": self.warnings}


@dataclass
class _Candidate:
    key: str
    name: str | None
    source: SourceFile
    xml: str
    sha256: str
    spec_json: str
    properties: dict
    guide: dict | None


def read_paths(paths: list[str | Path]) -> list[SourceFile]:
    """Files and folders (searched recursively) to deploy; a guide file beside a diagram travels with it."""
    sources: list[SourceFile] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(BPMN_SUFFIXES))
        elif path.is_file():
            files = [path]
        else:
            raise DeploymentInvalid(Problem(f"no such file or folder: {path}", file=str(path)))
        for file in files:
            guide_path = guides.find_beside(file)
            guide = SourceFile(str(guide_path), guide_path.read_bytes()) if guide_path else None
            sources.append(SourceFile(str(file), file.read_bytes(), guide))
    if not sources:
        raise DeploymentInvalid(Problem("no BPMN files found", file=", ".join(map(str, paths))))
    return sources


def deploy(db: Database, sources: list[SourceFile], deployed_by: str | None = None) -> list[DeployedVersion]:
    """Validate all sources together; store nothing unless every one of them is valid."""
    candidates = _validate(sources, db.config.max_upload_bytes)

    def store(conn):
        if not db.is_sqlite:
            # SQLite's BEGIN IMMEDIATE already serialises deploys; on PostgreSQL two deploys of one key
            # would both read version N and race for N+1, so take a per-key lock (sorted: no deadlock).
            for key in sorted({c.key for c in candidates}):
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('approvals.deploy'), hashtext(:key))"),
                             {"key": key})
        results = []
        for candidate in candidates:
            result = _store_version(conn, candidate, deployed_by, db.config.now())
            result.warnings = _unknown_departments(conn, candidate)
            results.append(result)
        for result in results:
            if result.created:
                audit.record(conn, db.config.now(), deployed_by, "process_deployed",
                             data={"key": result.key, "version": result.version, "definition_id": result.id})
        return results

    for _attempt in range(5):
        try:
            return db.run(store)
        except IntegrityError:
            # Two deploys of the same key raced for one version number: take the next one.
            continue
    raise DeploymentInvalid(Problem("could not allocate a version number; try again"))


def _store_version(conn, candidate: _Candidate, deployed_by, now) -> DeployedVersion:
    latest = conn.execute(
        select(process_definition.c.id, process_definition.c.version, process_definition.c.sha256)
        .where(process_definition.c.key == candidate.key)
        .order_by(process_definition.c.version.desc()).limit(1)
    ).first()
    if latest is not None and latest.sha256 == candidate.sha256:
        return DeployedVersion(latest.id, candidate.key, latest.version, candidate.name, created=False)
    version = (latest.version if latest else 0) + 1
    new_id = conn.execute(process_definition.insert().values(
        key=candidate.key, version=version, name=candidate.name, source_name=Path(candidate.source.name).name[:255],
        sha256=candidate.sha256, bpmn_xml=candidate.xml, spec_json=candidate.spec_json,
        properties=candidate.properties, guide=candidate.guide, status="active",
        deployed_by=deployed_by, deployed_at=now,
    )).inserted_primary_key[0]
    return DeployedVersion(new_id, candidate.key, version, candidate.name, created=True)


def _unknown_departments(conn, candidate: _Candidate) -> list[dict]:
    """User tasks whose lane or candidate group matches no department's key or name."""
    data = candidate.source.data   # the bytes as uploaded: their XML declaration names their encoding
    process = next((p for p in parse_xml(data, len(data)).getroot().iter(_B + "process")
                    if p.get("id") == candidate.key), None)
    if process is None:
        return []
    lane_of = {ref.text.strip(): lane.get("name") or lane.get("id")
               for lane in process.iter(_B + "lane") for ref in lane.iter(_B + "flowNodeRef") if ref.text}
    wanted = []
    for task in process.iter(_B + "userTask"):
        groups = task.get(CAMUNDA + "candidateGroups")
        names = [g.strip() for g in groups.split(",")] if groups else [lane_of.get(task.get("id"))]
        wanted += [(task, name) for name in names if name and not name.startswith("${")]
    known = {row.key for row in conn.execute(select(department.c.key))} | {
        row.name for row in conn.execute(select(department.c.name))}
    return [{"file": Path(candidate.source.name).name, "element_id": task.get("id"), "line": task.sourceline,
             "department": name,
             "message": f"no department is called {name!r}: nobody will see this step until one is created"}
            for task, name in wanted if name not in known]


def latest_version_number(conn, key: str) -> int:
    return conn.execute(select(func.max(process_definition.c.version)).where(
        process_definition.c.key == key)).scalar() or 0


def _validate(sources: list[SourceFile], max_bytes: int) -> list[_Candidate]:
    problems: list[Problem] = []
    parser = ApprovalsParser()
    documents = []
    trees = {}
    for source in sources:
        try:
            tree = parse_xml(source.data, max_bytes)
        except XmlRefused as exc:
            problems.append(Problem(exc.message, file=source.name, line=exc.line))
            continue
        file_problems = _check_document(tree, source.name)
        problems.extend(file_problems)
        if file_problems:
            continue
        try:
            parser.add_bpmn_xml(tree, source.name)
        except ValidationException as exc:
            problems.append(_from_validation(exc, {source.name: tree}, source.name))
            continue
        except Exception as exc:  # SpiffWorkflow raises assorted errors on odd input; report, never crash
            problems.append(Problem(f"SpiffWorkflow could not read this file: {exc}", file=source.name))
            continue
        documents.append((source, tree))
        trees[source.name] = tree
    if not problems:
        problems.extend(_check_called_processes(documents, parser))
    if problems:
        raise DeploymentInvalid(problems)
    by_name = {source.name: source for source, _tree in documents}

    candidates = []
    for source, tree in documents:
        guide = None
        if source.guide is not None:
            try:
                guide = guides.load(source.guide.name, source.guide.data)
            except DeploymentInvalid as exc:
                problems.extend(exc.problems)
                continue
        for process in tree.getroot().iter(_B + "process"):
            if process.get("isExecutable") != "true":
                continue
            key = process.get("id")
            try:
                spec = parser.get_spec(key)
                subprocess_specs = parser.get_subprocess_specs(key)
                spec_json = dump_specs(spec, subprocess_specs)
            except ValidationException as exc:
                problems.append(_from_validation(exc, trees, source.name))
                continue
            except Exception as exc:
                problems.append(Problem(f"SpiffWorkflow refused process {key!r}: {exc}",
                                        file=source.name, element_id=key, line=process.sourceline))
                continue
            if guide is not None:
                problems.extend(guides.check_against(guide, [spec, *subprocess_specs.values()], source.guide.name))
            digest = hashlib.sha256(source.data + b"\0" + (source.guide.data if source.guide else b""))
            # A called process from another file is compiled into this version, so a change there
            # must make a new version here too.
            for called_file in sorted({parser.process_parsers[name].filename for name in subprocess_specs}
                                      - {source.name}):
                digest.update(b"\0" + called_file.encode() + b"\0" + by_name[called_file].data)
            candidates.append(_Candidate(
                key=key, name=process.get("name"), source=source, xml=document_text(tree, source.data),
                sha256=digest.hexdigest(), spec_json=spec_json, properties=_process_properties(process),
                guide=guide,
            ))
    if problems:
        raise DeploymentInvalid(problems)
    return candidates


def _check_document(tree, filename: str) -> list[Problem]:
    root = tree.getroot()
    if not isinstance(root.tag, str) or etree.QName(root).namespace != BPMN_NS or etree.QName(root).localname != "definitions":
        found = etree.QName(root).text if isinstance(root.tag, str) else "?"
        return [Problem(f"not a BPMN 2.0 file: the root element is {found}, expected bpmn:definitions "
                        f"in namespace {BPMN_NS}", file=filename, line=root.sourceline)]
    processes = list(root.iter(_B + "process"))
    if not processes:
        return [Problem("the file contains no bpmn:process", file=filename, line=root.sourceline)]
    executable = [p for p in processes if p.get("isExecutable") == "true"]
    if not executable:
        return [Problem(f"process {p.get('id')!r} is not executable; set isExecutable=\"true\" to deploy it",
                        file=filename, element_id=p.get("id"), line=p.sourceline) for p in processes]
    problems = _check_ids(root, filename)
    assigned = set()
    for process in executable:
        if not process.get("id"):
            problems.append(Problem("a process has no id", file=filename, line=process.sourceline))
        elif len(process.get("id")) > _MAX_KEY or len(process.get("name") or "") > _MAX_KEY:
            problems.append(_at(process, filename, f"the process id and name must be at most {_MAX_KEY} characters"))
        problems.extend(_check_references(process, filename))
        for element in process.iter():
            if not isinstance(element.tag, str):
                continue
            qname = etree.QName(element)
            if qname.namespace == BPMN_NS and qname.localname in UNSUPPORTED:
                problems.append(_at(element, filename, UNSUPPORTED[qname.localname]))
            elif element.tag in (_B + "dataInputAssociation", _B + "dataOutputAssociation"):
                owner = element.getparent()
                if element.find(_B + "assignment") is not None and owner not in assigned:
                    assigned.add(owner)
                    problems.append(_at(owner, filename,
                                        "data assignments (jBPM-style TaskName/GroupId inputs) are not supported; "
                                        "use lanes or camunda:candidateGroups, and task data for values"))
            elif element.tag == _B + "conditionExpression":
                problems.extend(_check_condition(element, filename))
            elif element.tag == _B + "script":
                problems.extend(_check_script(element, filename))
            elif element.tag == CAMUNDA + "formData":
                problems.extend(Problem(message, file=filename, element_id=element.getparent().getparent().get("id"),
                                        line=line) for message, line in check_form_definition(element))
    return problems


def _check_ids(root, filename: str) -> list[Problem]:
    """Element ids must be unique: SpiffWorkflow would silently keep one of two same-id tasks."""
    seen: dict[str, object] = {}
    problems = []
    for element in root.iter(_B + "*"):
        element_id = element.get("id")
        if not element_id:
            continue
        if element_id in seen:
            problems.append(_at(element, filename, f"id {element_id!r} is used twice (first on line "
                                                   f"{seen[element_id].sourceline}); ids must be unique"))
        else:
            seen[element_id] = element
    return problems


def _check_references(process, filename: str) -> list[Problem]:
    """Sequence flows and boundary events must point at elements of their own (sub-)process."""
    problems = []
    containers = [process, *process.iter(_B + "subProcess", _B + "transaction")]
    for container in containers:
        local = {child.get("id") for child in container if isinstance(child.tag, str) and child.get("id")}
        for flow in container.iterchildren(_B + "sequenceFlow"):
            for attribute in ("sourceRef", "targetRef"):
                ref = flow.get(attribute)
                if not ref:
                    problems.append(_at(flow, filename, f"sequence flow {flow.get('id')!r} has no {attribute}"))
                elif ref not in local:
                    problems.append(_at(flow, filename, f"sequence flow {flow.get('id')!r} has {attribute}={ref!r}, "
                                                        f"which is not an element of the same (sub-)process"))
        for event in container.iterchildren(_B + "boundaryEvent"):
            if event.get("attachedToRef") not in local:
                problems.append(_at(event, filename, f"boundary event {event.get('id')!r} is attached to "
                                                     f"{event.get('attachedToRef')!r}, which is not an activity "
                                                     f"of the same (sub-)process"))
    return problems


def _check_called_processes(documents, parser) -> list[Problem]:
    """Every call activity must call a process deployed in the same upload (by id)."""
    problems = []
    for source, tree in documents:
        for process in tree.getroot().iter(_B + "process"):
            if process.get("isExecutable") != "true":
                continue
            for call in process.iter(_B + "callActivity"):
                called = (call.get("calledElement") or "").strip()
                if not called:
                    problems.append(_at(call, source.name, "the call activity does not name the process it calls "
                                                           "(calledElement)"))
                elif called not in parser.process_parsers:
                    problems.append(_at(call, source.name, f"the call activity calls process {called!r}, which is "
                                                           f"not in this deployment; deploy its file together "
                                                           f"with this one"))
    return problems


_PYTHON_LANGUAGES = ("", "python", "py", "python3", "text/x-python", "text/python")


def _check_condition(element, filename: str) -> list[Problem]:
    language = (element.get("language") or "").strip()
    if language.lower() not in _PYTHON_LANGUAGES:
        return [_at(element.getparent(), filename, f"the condition is written in {language!r}; conditions are "
                                                   f"Python expressions, e.g. amount > 100")]
    return _check_python(element, filename, "condition", "eval")


def _check_python(element, filename: str, what: str, mode: str) -> list[Problem]:
    text = (element.text or "").strip()
    owner = element.getparent()
    if not text:
        return [_at(owner, filename, f"the {what} is empty")]
    if text.startswith(("${", "#{")):
        inner = text[2:-1].strip() if text.endswith("}") else ""
        example = inner if inner and _compiles(inner, mode) else "amount > 100"
        return [_at(owner, filename, f"the {what} {text!r} is a JUEL expression; write it in Python, e.g. {example}")]
    if text.startswith("=") and what == "condition":
        example = text[1:].strip() if _compiles(text[1:].strip(), mode) else "amount > 100"
        return [_at(owner, filename, f"the {what} {text!r} is a FEEL expression (Camunda 8); write it in Python, "
                                     f"e.g. {example}")]
    try:
        compile(text, f"<{what}>", mode)
    except SyntaxError as exc:
        return [_at(owner, filename, f"the {what} {text!r} is not valid Python: {exc.msg}")]
    return []


def _compiles(text: str, mode: str) -> bool:
    try:
        compile(text, "<expression>", mode)
    except (SyntaxError, ValueError):
        return False
    return True


def _check_script(element, filename: str) -> list[Problem]:
    task = element.getparent()
    script_format = (task.get("scriptFormat") or "python").lower()
    if script_format not in ("python", "py", "python3"):
        return [_at(task, filename, f"script format {script_format!r} is not supported; scripts are Python")]
    return _check_python(element, filename, "script", "exec")


def _at(element, filename: str, message: str) -> Problem:
    return Problem(message, file=filename, element_id=element.get("id"), line=element.sourceline)


def _from_validation(exc: ValidationException, trees: dict, filename: str) -> Problem:
    element_id = getattr(exc, "id", None) or None
    filename = getattr(exc, "file_name", None) or filename
    line = None
    tree = trees.get(filename)
    if element_id and tree is not None:
        found = tree.getroot().xpath("//bpmn:*[@id=$id]", id=element_id, namespaces={"bpmn": BPMN_NS})
        line = found[0].sourceline if found else None
    message = str(exc.args[0]) if exc.args else str(exc)
    return Problem(message, file=filename, element_id=element_id, line=line)


def _process_properties(process) -> dict:
    """Process-level camunda:properties, e.g. committedLimit / statutoryLimit, plus the lane names."""
    properties = {}
    for prop in process.xpath("./bpmn:extensionElements/camunda:properties/camunda:property",
                              namespaces={"bpmn": BPMN_NS, "camunda": CAMUNDA[1:-1]}):
        if prop.get("name"):
            properties[prop.get("name")] = prop.get("value")
    lanes = [lane.get("name") for lane in process.iter(_B + "lane") if lane.get("name")]
    return {"extensions": properties, "lanes": lanes}
