"""The case file (办件档案) read model: header, diagram progress, timeline, pauses, attachments and printed notices."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import or_, select
from SpiffWorkflow.bpmn.specs.mixins.events.intermediate_event import BoundaryEvent
from SpiffWorkflow.util.task import TaskState

from . import audit
from .accounts import User, department_names
from .errors import InvalidInput, NotFound, PermissionDenied, Problem
from .lights import RED, light_of
from .projection import may_work_on
from .snapshot import case_data, completed_in_order, decode, load_specs, read_state
from .store import (
    Database, app_user, attachment, clock_pause, human_task, process_definition, process_instance,
)
from .timekeeping import calendar_for

CENTRE_NAME_ENV = "APPROVALS_CENTRE_NAME"
DEFAULT_CENTRE_NAME = "XX市政务服务中心"
# Roles that oversee every case; everyone else sees the cases their work touches.
OVERSEERS = ("window", "supervisor", "admin")
NOTICE_KINDS = ("acceptance", "rejection", "supplement", "special-procedure", "completion")
# The article of 行政许可法 each notice rests on; the flow's own basis comes from its service guide.
STATUTE = {
    "acceptance": "《中华人民共和国行政许可法》第三十二条",
    "rejection": "《中华人民共和国行政许可法》第三十二条",
    "supplement": "《中华人民共和国行政许可法》第三十二条第一款第（四）项",
    "special-procedure": "《中华人民共和国行政许可法》第四十五条",
    "completion": "《中华人民共和国行政许可法》第三十八条、第四十二条",
}
SUPPLEMENT_PAUSE = "补正"   # every other pause kind is a 特别程序 (§45)
_LIVE = TaskState.READY | TaskState.STARTED


def centre_name() -> str:
    """The service centre printed on every notice (APPROVALS_CENTRE_NAME)."""
    return os.environ.get(CENTRE_NAME_ENV, "").strip() or DEFAULT_CENTRE_NAME


def may_view(user: User, started_by: str | None, tasks) -> bool:
    """Overseers see every case; others the cases they started or with a task for their departments or by them."""
    if user.has_role(*OVERSEERS) or started_by == user.username:
        return True
    return any(may_work_on(user, t) or user.username in (t["completed_by"], t["delegated_from"]) for t in tasks)


def case_file(db: Database, instance_id: int, user: User) -> dict:
    """Everything the case page shows; PermissionDenied when the user has no business with the case."""
    read = _read(db, instance_id, user)
    row, now = read.row, read.now
    completed, active, overdue, departments = _progress(read)
    return {
        **_header(read),
        "bpmn_xml": row["bpmn_xml"],
        "progress": {"completed": sorted(completed), "active": sorted(active), "overdue": sorted(overdue),
                     "departments": departments},
        "steps": [_step(read, t) for t in read.tasks],
        "events": _timeline(read),
        "pauses": [_pause(read, p) for p in read.pauses],
        "attachments": _attachments(db, instance_id, read.local),
        "notices": _available(read),
        "workable": [t["id"] for t in read.tasks if t["status"] == "open" and may_work_on(user, t)],
        "now": read.local(now),
    }


def notice(db: Database, instance_id: int, user: User, kind: str, number: int | None = None) -> dict:
    """What a printed notice shows; NotFound when this kind of notice does not apply to the case (yet)."""
    if kind not in NOTICE_KINDS:
        raise NotFound(f"no notice {kind!r}; notices are {', '.join(NOTICE_KINDS)}")
    read = _read(db, instance_id, user)
    issued = [n for n in _available(read) if n["kind"] == kind]
    if not issued:
        raise NotFound(f"case {read.row['case_no']} has no {kind} notice")
    if number is None:
        chosen = issued[-1]
    elif 1 <= number <= len(issued):
        chosen = issued[number - 1]
    else:
        raise NotFound(f"case {read.row['case_no']} has {len(issued)} {kind} notice(s), not number {number}")
    guide = read.row["guide"] or {}
    header = _header(read)
    result = {
        **chosen, "centre_name": centre_name(), "case": header, "statute": STATUTE[kind],
        "legal_basis": guide.get("legal_basis"), "window": guide.get("window"),
        "service_items": [_guide_item(read, item) for item in guide.get("items", [])],
        "legal_representative": read.data.get("legal_representative"),
        "contact_phone": read.data.get("contact_phone"),
        "committed_limit": guide.get("committed_limit"), "statutory_limit": guide.get("statutory_limit"),
    }
    if kind == "supplement":
        result["materials"] = _missing_materials(guide, chosen)
    return result


def list_cases(db: Database, user: User, search: str = "", status: str = "", limit: int = 50,
               offset: int = 0) -> dict:
    """全部办件 for overseers: newest first, searched by case number, applicant or verification code.

    `more` says whether a next page exists (no count: it would scan every case)."""
    if not user.has_role(*OVERSEERS):
        raise PermissionDenied("only window staff, supervisors and administrators see every case")
    if status and status not in ("running", "completed", "terminated"):
        raise InvalidInput(Problem("status must be running, completed or terminated", field="status"))
    limit = max(1, min(int(limit), 200))
    query = (select(process_instance.c.id, process_instance.c.case_no, process_instance.c.status,
                    process_instance.c.applicant, process_instance.c.started_at, process_instance.c.ended_at,
                    process_instance.c.due_at, process_instance.c.yellow_seconds, process_instance.c.paused_since,
                    process_definition.c.key.label("process_key"), process_definition.c.name.label("process_name"),
                    process_definition.c.version)
             .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
             .order_by(process_instance.c.id.desc()).limit(limit + 1).offset(max(0, int(offset))))
    search = (search or "").strip()[:100]
    if search.isascii() and search.isdigit():
        # A case number (or its date prefix): the unique index answers, never a scan of applicants. A notice's
        # verification code can be all digits too.
        query = query.where(or_(process_instance.c.case_no == search if len(search) >= 13
                                else process_instance.c.case_no.like(search + "%"),
                                process_instance.c.verification_code == search))
    elif search:
        literal = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(or_(process_instance.c.applicant.like("%" + literal + "%", escape="\\"),
                                process_instance.c.verification_code == search.upper()))
    if status:
        query = query.where(process_instance.c.status == status)
    with db.read() as conn:
        rows = conn.execute(query).mappings().all()
        more = len(rows) > limit
        rows = rows[:limit]
        ids = [r["id"] for r in rows]
        open_tasks = conn.execute(select(human_task.c.instance_id, human_task.c.name, human_task.c.departments)
                                  .where(human_task.c.instance_id.in_(ids or [0]), human_task.c.status == "open")
                                  .order_by(human_task.c.id)).all()
        names = department_names(conn)
        calendar = calendar_for(db, conn)
    now, local = db.config.now(), db.config.local
    current: dict[int, list[str]] = {}
    for task in open_tasks:
        owners = "、".join(names.get(d, d) for d in task.departments or []) or "综合窗口"
        current.setdefault(task.instance_id, []).append(f"{task.name}（{owners}）")
    return {"more": more, "cases": [{
        "id": r["id"], "case_no": r["case_no"], "status": r["status"], "applicant": r["applicant"],
        "process_key": r["process_key"], "process_name": r["process_name"] or r["process_key"],
        "version": r["version"], "started_at": local(r["started_at"]), "ended_at": local(r["ended_at"]),
        "due_at": local(r["due_at"]), "paused": r["paused_since"] is not None,
        "light": (light_of(calendar, now, r["started_at"], r["due_at"], r["yellow_seconds"])
                  if r["status"] == "running" else None),
        "current": current.get(r["id"], []),
    } for r in rows]}


def first_open_task(db: Database, instance_id: int, user: User) -> int | None:
    """The case's earliest open task this user may work on (where the window goes after starting a case)."""
    with db.read() as conn:
        tasks = conn.execute(select(human_task.c.id, human_task.c.assignee, human_task.c.departments)
                             .where(human_task.c.instance_id == instance_id, human_task.c.status == "open")
                             .order_by(human_task.c.id)).mappings().all()
    return next((t["id"] for t in tasks if may_work_on(user, t)), None)


# ---- reading one case ------------------------------------------------------------------------------

@dataclass
class _Read:
    row: dict
    tasks: list
    events: list
    pauses: list
    workflow: object
    data: dict
    calendar: object
    now: datetime
    names: dict        # department key -> name
    people: dict       # username -> display name
    local: object      # aware datetime -> local time of the centre


def _read(db: Database, instance_id: int, user: User) -> _Read:
    with db.read() as conn:
        row = conn.execute(
            select(process_instance, process_definition.c.key.label("process_key"),
                   process_definition.c.name.label("process_name"), process_definition.c.version,
                   process_definition.c.bpmn_xml, process_definition.c.spec_json, process_definition.c.guide)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .where(process_instance.c.id == instance_id)).mappings().first()
        if row is None:
            raise NotFound(f"no case {instance_id}")
        tasks = conn.execute(select(human_task).where(human_task.c.instance_id == instance_id)
                             .order_by(human_task.c.id)).mappings().all()
        if not may_view(user, row["started_by"], tasks):
            raise PermissionDenied(f"case {row['case_no']} has no task for your departments")
        events = audit.for_instance(conn, instance_id)
        pauses = conn.execute(select(clock_pause).where(clock_pause.c.instance_id == instance_id)
                              .order_by(clock_pause.c.id)).mappings().all()
        names = department_names(conn)
        actors = {e["actor"] for e in events if e["actor"]} | {row["started_by"]} | {
            t[c] for t in tasks for c in ("assignee", "completed_by") if t[c]}
        people = {r.username: r.name for r in conn.execute(
            select(app_user.c.username, app_user.c.name).where(app_user.c.username.in_(actors - {None})))}
        calendar = calendar_for(db, conn)
        state = read_state(conn, instance_id)
    # Read-only: the stored state is decoded, never stepped (only engine/runtime.py steps workflows).
    workflow = decode(state, load_specs(row["definition_id"], row["spec_json"]))
    return _Read(dict(row), [dict(t) for t in tasks], events, [dict(p) for p in pauses], workflow,
                 case_data(workflow), calendar, db.config.now(), names, people, db.config.local)


def _header(read: _Read) -> dict:
    row, local = read.row, read.local
    running = row["status"] == "running"
    return {
        "id": row["id"], "case_no": row["case_no"], "status": row["status"], "process_key": row["process_key"],
        "process_name": row["process_name"] or row["process_key"], "version": row["version"],
        "applicant": row["applicant"], "started_by": row["started_by"],
        "started_by_name": read.people.get(row["started_by"], row["started_by"]),
        "started_at": local(row["started_at"]), "ended_at": local(row["ended_at"]),
        "due_at": local(row["due_at"]), "statutory_due_at": local(row["statutory_due_at"]),
        "statutory_exceeded": row["statutory_exceeded_at"] is not None or bool(
            running and row["statutory_due_at"] and row["statutory_due_at"] <= read.now),
        "paused_since": local(row["paused_since"]), "extended_at": local(row["extended_at"]),
        "light": (light_of(read.calendar, read.now, row["started_at"], row["due_at"], row["yellow_seconds"])
                  if running else None),
        "workdays_left": (round(read.calendar.workdays_left(read.now, row["due_at"]), 1)
                          if running and row["due_at"] else None),
        "verification_code": row["verification_code"], "outcome": read.data.get("outcome"),
    }


def _progress(read: _Read) -> tuple[set, set, set, dict]:
    """BPMN ids of finished, current and late elements, and the departments working on each current one."""
    completed, active = set(), set()
    for task in read.workflow.get_tasks():
        bpmn_id = task.task_spec.bpmn_id
        if bpmn_id is None:
            continue
        if task.state == TaskState.COMPLETED:
            completed.add(bpmn_id)
        elif task.state & _LIVE or (task.state == TaskState.WAITING and _is_waiting_step(task.task_spec)):
            active.add(bpmn_id)
    departments: dict[str, list[str]] = {}
    overdue = set()
    for t in read.tasks:
        if t["status"] == "open":
            active.add(t["bpmn_id"])
            for key in t["departments"] or ["window"]:
                name = read.names.get(key, key)
                if name not in departments.setdefault(t["bpmn_id"], []):
                    departments[t["bpmn_id"]].append(name)
        elif t["status"] == "completed":
            completed.add(t["bpmn_id"])
        if _late(read, t):
            overdue.add(t["bpmn_id"])
    return completed - active, active, overdue, departments


def _is_waiting_step(spec) -> bool:
    # A catch event on the path (a timer, a message) is where the case stands; a boundary timer only watches.
    return getattr(spec, "event_definition", None) is not None and not isinstance(spec, BoundaryEvent)


def _late(read: _Read, task: dict) -> bool:
    """Open past its deadline, or closed after it (a late step stays a violation once done)."""
    due = task["due_at"]
    if due is None or task["status"] == "sent_back":
        return False
    if task["status"] == "open":
        return light_of(read.calendar, read.now, task["created_at"], due, task["yellow_seconds"]) == RED
    return task["completed_at"] is not None and task["completed_at"] >= due


def _step(read: _Read, t: dict) -> dict:
    local = read.local
    return {
        "id": t["id"], "bpmn_id": t["bpmn_id"], "name": t["name"] or t["bpmn_id"], "status": t["status"],
        "departments": [read.names.get(k, k) for k in t["departments"] or ["window"]],
        "assignee": read.people.get(t["assignee"], t["assignee"]),
        "completed_by": read.people.get(t["completed_by"], t["completed_by"]),
        "created_at": local(t["created_at"]), "due_at": local(t["due_at"]), "completed_at": local(t["completed_at"]),
        "light": (light_of(read.calendar, read.now, t["created_at"], t["due_at"], t["yellow_seconds"])
                  if t["status"] == "open" else None),
        "late": _late(read, t),
    }


def _timeline(read: _Read) -> list[dict]:
    names = {t["id"]: t["name"] or t["bpmn_id"] for t in read.tasks}
    return [{**e, "at": read.local(datetime.fromisoformat(e["at"])),
             "actor_name": read.people.get(e["actor"], e["actor"]),
             "task_name": names.get(e["task_id"])} for e in read.events]


def _pause(read: _Read, p: dict) -> dict:
    seconds = p["working_seconds"]
    if seconds is None and p["ended_at"] is None:
        seconds = read.calendar.working_seconds_between(p["started_at"], read.now)
    per_day = read.calendar.office_hours.seconds_per_day
    return {"id": p["id"], "kind": p["kind"], "automatic": p["automatic"], "reason": p["reason"],
            "expected_workdays": p["expected_workdays"], "started_at": read.local(p["started_at"]),
            "started_by": read.people.get(p["started_by"], p["started_by"]), "ended_at": read.local(p["ended_at"]),
            "ended_by": read.people.get(p["ended_by"], p["ended_by"]),
            "workdays": round(seconds / per_day, 2) if seconds is not None else None,
            "special": p["kind"] != SUPPLEMENT_PAUSE}


def _attachments(db: Database, instance_id: int, local) -> list[dict]:
    with db.read() as conn:
        rows = conn.execute(select(attachment.c.id, attachment.c.task_id, attachment.c.material_key,
                                   attachment.c.filename, attachment.c.content_type, attachment.c.size,
                                   attachment.c.uploaded_by, attachment.c.uploaded_at)
                            .where(attachment.c.instance_id == instance_id).order_by(attachment.c.id)).mappings()
        return [{**r, "uploaded_at": local(r["uploaded_at"])} for r in rows]


# ---- printed notices -------------------------------------------------------------------------------

def _available(read: _Read) -> list[dict]:
    """The notices this case has given rise to, oldest first, each with the moment it was issued."""
    row, data = read.row, read.data
    found = []
    accepted_at = _first_moment(read, lambda d: d.get("accepted") is True)
    if accepted_at is not None:
        found.append({"kind": "acceptance", "issued_at": accepted_at})
    for at, entry in _supplements(read):
        found.append({"kind": "supplement", "issued_at": at, **entry})
    for pause in read.pauses:
        if pause["kind"] != SUPPLEMENT_PAUSE:
            found.append({"kind": "special-procedure", "issued_at": read.local(pause["started_at"]),
                          "pause": _pause(read, pause)})
    if row["status"] == "completed" and data.get("outcome") == "not_accepted":
        reasons = data.get("outcome_reasons") or {}
        found.append({"kind": "rejection", "issued_at": read.local(row["ended_at"]),
                      "reasons": [str(v) for v in reasons.values() if v] or
                      ([str(data["rejection_reason"])] if data.get("rejection_reason") else [])})
    elif row["status"] == "completed":
        refusals = data.get("refusal_reasons") or {}
        found.append({"kind": "completion", "issued_at": read.local(row["ended_at"]),
                      "approved": data.get("outcome") != "refused",
                      "reasons": [{"department": read.names.get(k, k), "reason": str(v)} for k, v in refusals.items()],
                      "collected_by": data.get("collected_by")})
    numbered: dict[str, int] = {}
    for item in sorted(found, key=lambda n: n["issued_at"]):
        numbered[item["kind"]] = item["number"] = numbered.get(item["kind"], 0) + 1
    found.sort(key=lambda n: (NOTICE_KINDS.index(n["kind"]), n["number"]))
    return found


def _first_moment(read: _Read, holds) -> datetime | None:
    for task in completed_in_order(read.workflow):
        if holds(task.data):
            return read.local(datetime.fromtimestamp(task.last_state_change, timezone.utc))
    return None


def _supplements(read: _Read) -> list[tuple[datetime, dict]]:
    """一次性告知 at intake (the flow's `*supplement_notices`) and a lead's 退回申请人补正 during review."""
    seen, found = set(), []
    for task in completed_in_order(read.workflow):
        for key, value in task.data.items():
            if not key.endswith("supplement_notices") or not isinstance(value, list):
                continue
            for index, entry in enumerate(value):
                if (key, index) not in seen and isinstance(entry, dict):
                    seen.add((key, index))
                    found.append((read.local(datetime.fromtimestamp(task.last_state_change, timezone.utc)), {
                        "materials": list(entry.get("materials") or []), "names": list(entry.get("names") or []),
                        "note": entry.get("note") or ""}))
    items = (read.row["guide"] or {}).get("items", [])
    for event in read.events:
        values = (event["data"] or {}).get("values") or {} if event["type"] == "task_completed" else {}
        # A consolidation form (`<prefix>decision` = supplement, `<prefix>return_item`, `<prefix>opinion`);
        # the intake's own decision is covered by its notice list above.
        decision = next((k for k, v in values.items() if k.endswith("decision") and "intake" not in k
                         and v == "supplement"), None)
        if decision is None:
            continue
        prefix = decision[:-len("decision")]
        item = values.get(prefix + "return_item")
        found.append((read.local(datetime.fromisoformat(event["at"])), {
            "materials": [], "names": [], "note": values.get(prefix + "opinion") or event["data"].get("opinion") or "",
            "for_items": [i["name"] for i in items if item in (i.get("department"), i.get("task"))],
            "department": read.names.get(item, item)}))
    return sorted(found, key=lambda pair: pair[0])


def _missing_materials(guide: dict, chosen: dict) -> list[dict]:
    """Each missing material once, with the service items that need it and whether it is required."""
    by_key: dict[str, dict] = {}
    for item in guide.get("items", []):
        for material in item.get("materials", []) or []:
            entry = by_key.setdefault(material["key"], {"key": material["key"], "name": material["name"],
                                                        "required": False, "needed_for": []})
            entry["required"] = entry["required"] or bool(material.get("required"))
            entry["needed_for"].append(item["name"])
    names = dict(zip(chosen.get("materials", []), chosen.get("names", [])))
    return [by_key.get(key) or {"key": key, "name": names.get(key, key), "required": True, "needed_for": []}
            for key in chosen.get("materials", [])]


def _guide_item(read: _Read, item: dict) -> dict:
    runs = [t for t in read.tasks if t["bpmn_id"] == item.get("task")]
    last = runs[-1] if runs else None
    deemed = any(e["type"] == "deemed_consent" and e["data"].get("bpmn_id") == item.get("task") for e in read.events)
    return {"name": item.get("name"), "department": read.names.get(item.get("department"), item.get("department")),
            "type": item.get("type"), "committed_limit": item.get("committed_limit"),
            "statutory_limit": item.get("statutory_limit"), "legal_basis": item.get("legal_basis"),
            "status": "deemed" if deemed else (last["status"] if last else None),
            "completed_at": read.local(last["completed_at"]) if last else None}
