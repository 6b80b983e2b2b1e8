"""Deploy BPMN files: validate everything first, then store one new process-definition version per changed process."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from lxml import etree
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException

from . import audit, guides
from .bpmn import BPMN_NS, CAMUNDA, ApprovalsParser, XmlRefused, parse_xml
from .errors import DeploymentInvalid, Problem
from .forms import check_form_definition
from .snapshot import dump_specs
from .store import Database, process_definition

BPMN_SUFFIXES = (".bpmn", ".bpmn20.xml", ".xml")
_B = "{%s}" % BPMN_NS
# Elements SpiffWorkflow would accept but cannot run here without code we do not allow in diagrams.
UNSUPPORTED = {
    "complexGateway": "complex gateways are not supported; use parallel, exclusive or inclusive gateways",
    "serviceTask": "service tasks are not supported; model the work as a user task or a Python script task",
    "businessRuleTask": "business rule (DMN) tasks are not supported",
    "adHocSubProcess": "ad-hoc sub-processes are not supported",
}


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

    def to_dict(self) -> dict:
        return {"id": self.id, "key": self.key, "version": self.version, "name": self.name, "created": self.created}


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
        results = []
        for candidate in candidates:
            results.append(_store_version(conn, candidate, deployed_by, db.config.now()))
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
        key=candidate.key, version=version, name=candidate.name, source_name=Path(candidate.source.name).name,
        sha256=candidate.sha256, bpmn_xml=candidate.xml, spec_json=candidate.spec_json,
        properties=candidate.properties, guide=candidate.guide, status="active",
        deployed_by=deployed_by, deployed_at=now,
    )).inserted_primary_key[0]
    return DeployedVersion(new_id, candidate.key, version, candidate.name, created=True)


def latest_version_number(conn, key: str) -> int:
    return conn.execute(select(func.max(process_definition.c.version)).where(
        process_definition.c.key == key)).scalar() or 0


def _validate(sources: list[SourceFile], max_bytes: int) -> list[_Candidate]:
    problems: list[Problem] = []
    parser = ApprovalsParser()
    documents = []
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
            problems.append(_from_validation(exc, tree, source.name))
            continue
        except Exception as exc:  # SpiffWorkflow raises assorted errors on odd input; report, never crash
            problems.append(Problem(f"SpiffWorkflow could not read this file: {exc}", file=source.name))
            continue
        documents.append((source, tree))
    if problems:
        raise DeploymentInvalid(problems)

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
                problems.append(_from_validation(exc, tree, source.name))
                continue
            except Exception as exc:
                problems.append(Problem(f"SpiffWorkflow refused process {key!r}: {exc}",
                                        file=source.name, element_id=key, line=process.sourceline))
                continue
            if guide is not None:
                problems.extend(guides.check_against(guide, [spec, *subprocess_specs.values()], source.guide.name))
            digest = hashlib.sha256(source.data + b"\0" + (source.guide.data if source.guide else b""))
            candidates.append(_Candidate(
                key=key, name=process.get("name"), source=source, xml=source.data.decode("utf-8", "replace"),
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
    problems = []
    for process in executable:
        if not process.get("id"):
            problems.append(Problem("a process has no id", file=filename, line=process.sourceline))
        for element in process.iter():
            if not isinstance(element.tag, str):
                continue
            qname = etree.QName(element)
            if qname.namespace == BPMN_NS and qname.localname in UNSUPPORTED:
                problems.append(_at(element, filename, UNSUPPORTED[qname.localname]))
            elif element.tag == _B + "conditionExpression":
                problems.extend(_check_python(element, filename, "condition", "eval"))
            elif element.tag == _B + "script":
                problems.extend(_check_script(element, filename))
            elif element.tag == CAMUNDA + "formData":
                problems.extend(Problem(message, file=filename, element_id=element.getparent().getparent().get("id"),
                                        line=line) for message, line in check_form_definition(element))
    return problems


def _check_python(element, filename: str, what: str, mode: str) -> list[Problem]:
    text = (element.text or "").strip()
    owner = element.getparent()
    if not text:
        return [_at(owner, filename, f"the {what} is empty")]
    if text.startswith(("${", "#{")):
        return [_at(owner, filename, f"the {what} {text!r} is a JUEL expression; write it in Python, e.g. amount > 100")]
    try:
        compile(text, f"<{what}>", mode)
    except SyntaxError as exc:
        return [_at(owner, filename, f"the {what} {text!r} is not valid Python: {exc.msg}")]
    return []


def _check_script(element, filename: str) -> list[Problem]:
    task = element.getparent()
    script_format = (task.get("scriptFormat") or "python").lower()
    if script_format not in ("python", "py", "python3"):
        return [_at(task, filename, f"script format {script_format!r} is not supported; scripts are Python")]
    return _check_python(element, filename, "script", "exec")


def _at(element, filename: str, message: str) -> Problem:
    return Problem(message, file=filename, element_id=element.get("id"), line=element.sourceline)


def _from_validation(exc: ValidationException, tree, filename: str) -> Problem:
    element_id = getattr(exc, "id", None) or None
    line = None
    if element_id:
        found = tree.getroot().xpath("//*[@id=$id]", id=element_id)
        line = found[0].sourceline if found else None
    message = str(exc.args[0]) if exc.args else str(exc)
    return Problem(message, file=getattr(exc, "file_name", None) or filename, element_id=element_id, line=line)


def _process_properties(process) -> dict:
    """Process-level camunda:properties, e.g. committedLimit / statutoryLimit, plus the lane names."""
    properties = {}
    for prop in process.xpath("./bpmn:extensionElements/camunda:properties/camunda:property",
                              namespaces={"bpmn": BPMN_NS, "camunda": CAMUNDA[1:-1]}):
        if prop.get("name"):
            properties[prop.get("name")] = prop.get("value")
    lanes = [lane.get("name") for lane in process.iter(_B + "lane") if lane.get("name")]
    return {"extensions": properties, "lanes": lanes}
