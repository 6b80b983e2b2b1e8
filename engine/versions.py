"""Versions of a deployed process: history with element-level diffs, case counts, suspend, scheduled activation, roll back."""
from __future__ import annotations

from datetime import datetime

import yaml
from lxml import etree
from sqlalchemy import func, select, update

from . import audit, deploy
from .accounts import User
from .bpmn import BPMN_NS
from .errors import Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .store import Database, process_definition, process_instance

DESIGN_ROLES = ("designer", "admin")
_B = "{%s}" % BPMN_NS
# Elements that only carry wiring, not a step of their own; their changes show on their owners.
_WIRING = {"incoming", "outgoing", "flowNodeRef"}


def list_versions(db: Database, key: str, now: datetime | None = None) -> list[dict]:
    """Every version of `key`, newest first: who deployed it when, what changed from the one before, cases on it."""
    now = now or db.config.now()
    with db.read() as conn:
        rows = conn.execute(select(
            process_definition.c.id, process_definition.c.version, process_definition.c.name,
            process_definition.c.status, process_definition.c.deployed_by, process_definition.c.deployed_at,
            process_definition.c.activates_at, process_definition.c.bpmn_xml, process_definition.c.source_name)
            .where(process_definition.c.key == key).order_by(process_definition.c.version)).all()
        if not rows:
            raise NotFound(f"no deployed process {key!r}")
        counts = _case_counts(conn, [r.id for r in rows])
    current = _current_version(rows, now)
    result, previous = [], None
    for row in rows:
        changes = diff_xml(previous.bpmn_xml, row.bpmn_xml) if previous is not None else None
        result.append({
            "id": row.id, "key": key, "version": row.version, "name": row.name, "status": row.status,
            "state": _state(row, now, current), "deployed_by": row.deployed_by,
            "deployed_at": row.deployed_at.isoformat(), "source_name": row.source_name,
            "activates_at": row.activates_at.isoformat() if row.activates_at else None,
            "running_cases": counts.get(row.id, {}).get("running", 0),
            "cases": sum(counts.get(row.id, {}).values()),
            "changes": _summary(changes) if changes is not None else None,
        })
        previous = row
    result.reverse()
    return result


def get_version(db: Database, key: str, version: int) -> dict:
    """One version with its BPMN XML and service guide (for the modeler and the viewer)."""
    with db.read() as conn:
        row = _definition(conn, key, version)
        counts = _case_counts(conn, [row.id]).get(row.id, {})
    return {"id": row.id, "key": key, "version": row.version, "name": row.name, "status": row.status,
            "deployed_by": row.deployed_by, "deployed_at": row.deployed_at.isoformat(),
            "activates_at": row.activates_at.isoformat() if row.activates_at else None,
            "source_name": row.source_name, "xml": row.bpmn_xml, "guide": row.guide,
            "properties": row.properties, "running_cases": counts.get("running", 0)}


def diff_versions(db: Database, key: str, from_version: int, to_version: int) -> dict:
    """Elements added, removed and changed between two versions (by element id), for the visual diff."""
    with db.read() as conn:
        old = _definition(conn, key, from_version)
        new = _definition(conn, key, to_version)
    return {"key": key, "from": from_version, "to": to_version, **diff_xml(old.bpmn_xml, new.bpmn_xml)}


def diff_xml(old_xml: str, new_xml: str) -> dict:
    """Compare the process elements of two BPMN documents; diagram layout (DI) is ignored."""
    old, new = _elements(old_xml), _elements(new_xml)
    added = [_describe(element_id, new[element_id]) for element_id in new if element_id not in old]
    removed = [_describe(element_id, old[element_id]) for element_id in old if element_id not in new]
    changed = []
    for element_id in old:
        if element_id in new and old[element_id]["fields"] != new[element_id]["fields"]:
            before, after = old[element_id]["fields"], new[element_id]["fields"]
            changed.append(_describe(element_id, new[element_id]) | {
                "previous_name": old[element_id]["name"],
                "details": [{"field": field, "before": before.get(field), "after": after.get(field)}
                            for field in sorted(set(before) | set(after)) if before.get(field) != after.get(field)],
            })
    return {"added": added, "removed": removed, "changed": changed}


def suspend_version(db: Database, key: str, version: int, user: User) -> dict:
    """No new cases start on a suspended version; running ones carry on."""
    return _set_status(db, key, version, user, "suspended", None)


def activate_version(db: Database, key: str, version: int, user: User, activates_at: datetime | None = None) -> dict:
    """Reactivate a version, now or from a future moment (cases start on it from then on)."""
    if activates_at is not None and activates_at.tzinfo is None:
        raise InvalidInput(Problem("give the activation moment with its time zone", field="activates_at"))
    return _set_status(db, key, version, user, "active", activates_at)


def redeploy_version(db: Database, key: str, version: int, user: User) -> dict:
    """Roll back: deploy an older version's diagram and guide again as the newest version."""
    _require_designer(user)
    with db.read() as conn:
        row = _definition(conn, key, version)
    guide = None
    if row.guide is not None:
        guide = deploy.SourceFile(f"{key}.guide.yaml", yaml.safe_dump(row.guide, allow_unicode=True).encode())
    source = deploy.SourceFile(row.source_name or f"{key}.bpmn", row.bpmn_xml.encode("utf-8"), guide)
    deployed = [d for d in deploy.deploy(db, [source], user.username) if d.key == key]
    if not deployed or not deployed[0].created:
        raise Conflict(f"version {version} of {key!r} is already the newest version")
    with db.write() as conn:
        audit.record(conn, db.config.now(), user.username, "process_redeployed",
                     data={"key": key, "from_version": version, "version": deployed[0].version})
    return deployed[0].to_dict() | {"redeployed_from": version}


def definition_id(conn, key: str, version: int) -> int:
    return _definition(conn, key, version).id


def _set_status(db: Database, key: str, version: int, user: User, status: str, activates_at) -> dict:
    _require_designer(user)

    def store(conn):
        row = _definition(conn, key, version)
        conn.execute(update(process_definition).where(process_definition.c.id == row.id)
                     .values(status=status, activates_at=activates_at))
        audit.record(conn, db.config.now(), user.username, f"process_{'suspended' if status == 'suspended' else 'activated'}",
                     data={"key": key, "version": version,
                           "activates_at": activates_at.isoformat() if activates_at else None})
        return {"key": key, "version": version, "status": status,
                "activates_at": activates_at.isoformat() if activates_at else None}

    return db.run(store)


def _require_designer(user: User) -> None:
    if not user.has_role(*DESIGN_ROLES):
        raise PermissionDenied("only designers and administrators may change process versions")


def _definition(conn, key: str, version: int):
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidInput(Problem("version must be a whole number", field="version"))
    row = conn.execute(select(process_definition).where(
        process_definition.c.key == key, process_definition.c.version == version)).first()
    if row is None:
        raise NotFound(f"process {key!r} has no version {version}")
    return row


def _case_counts(conn, definition_ids: list[int]) -> dict:
    counts: dict[int, dict] = {}
    for row in conn.execute(select(process_instance.c.definition_id, process_instance.c.status, func.count())
                            .where(process_instance.c.definition_id.in_(definition_ids))
                            .group_by(process_instance.c.definition_id, process_instance.c.status)):
        counts.setdefault(row[0], {})[row[1]] = row[2]
    return counts


def _current_version(rows, now: datetime) -> int | None:
    """The version new cases start on: the newest active one whose activation moment has come."""
    startable = [r.version for r in rows if r.status == "active" and (r.activates_at is None or r.activates_at <= now)]
    return max(startable) if startable else None


def _state(row, now: datetime, current: int | None) -> str:
    if row.status == "suspended":
        return "suspended"
    if row.activates_at is not None and row.activates_at > now:
        return "scheduled"
    return "current" if row.version == current else "superseded"


def _summary(changes: dict) -> dict:
    return {kind: [{"id": e["id"], "name": e["name"], "type": e["type"]} for e in changes[kind]]
            for kind in ("added", "removed", "changed")}


def _describe(element_id: str, element: dict) -> dict:
    return {"id": element_id, "name": element["name"], "type": element["type"]}


def _elements(xml: str) -> dict:
    """Every id-bearing element under the processes and collaborations, with its own fields flattened."""
    root = etree.fromstring(xml.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True,
                                                                   remove_comments=True))
    found = {}
    for container in [*root.iterchildren(_B + "process"), *root.iterchildren(_B + "collaboration")]:
        for element in container.iter(_B + "*"):
            element_id = element.get("id")
            if not element_id:
                continue
            found[element_id] = {"name": element.get("name"), "type": etree.QName(element).localname,
                                 "fields": _fields(element)}
    return found


def _fields(element) -> dict:
    """Attributes and texts of an element and its non-element children (timer, form, properties, script)."""
    fields: dict[str, str] = {}

    def walk(node, path: str) -> None:
        for name, value in node.attrib.items():
            fields[f"{path}@{etree.QName(name).localname}"] = value
        text = (node.text or "").strip()
        if text:
            fields[path or "text"] = text
        seen: dict[str, int] = {}
        for child in node:
            if not isinstance(child.tag, str):
                continue
            local = etree.QName(child).localname
            if child.get("id") and etree.QName(child).namespace == BPMN_NS:
                continue  # a flow element of its own (sub-process content, lanes)
            if local in _WIRING:
                continue
            label = child.get("name") or child.get("id")
            step = f"{local}[{label}]" if label else local
            seen[step] = seen.get(step, 0) + 1
            if seen[step] > 1:
                step = f"{step}#{seen[step]}"
            walk(child, f"{path}/{step}" if path else step)

    walk(element, "")
    return fields
