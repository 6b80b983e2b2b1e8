"""The applicant's side without a login: service guides, online application (网上申报), case query (全方位查询), online 补正."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace

from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, func, or_, select, update

from . import accounts, audit, casefile, forms, runtime
from .accounts import User, department_names
from .attachments import check_file, safe_filename, sniff
from .errors import ApprovalsError, Conflict, FormInvalid, InvalidInput, NotFound, Problem
from .lights import light_of
from .projection import extensions
from .snapshot import decode, find_task, load_specs, read_state, task_spec_of
from .store import (
    Database, applicant_access, attachment, human_task, process_definition, process_instance,
    query_attempt,
)
from .timekeeping import calendar_for

CHANNEL = "online"
# The actor the audit trail names for what an applicant does through the public pages.
ONLINE_ACTOR = "online"
MATERIAL_PREFIX = "mat_"
# 50 bits of randomness in characters nobody misreads on a phone (no 0/O, 1/I/L).
PASSWORD_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PASSWORD_LENGTH = 10
# Failed queries tolerated per client address and per case number (or notice code) in the window.
QUERY_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_IP = 10
MAX_FAILURES_PER_CASE = 5
REFUSED = "the case number or the query password is wrong"
MAX_FILES = 30
# Applicants send scans and e-documents; Office files are for the window's own attachments.
ONLINE_EXTENSIONS = ("pdf", "jpg", "jpeg", "png", "ofd")
# casefile.notice reads on behalf of a user; the public pages have none, and only call it for a case
# whose password or notice code this browser has given, so they read as the window would.
_NOTICE_READER = User(0, ONLINE_ACTOR, "网上申报", ("window",), ())


class TooManyAttempts(ApprovalsError):
    """Too many failed queries from this address or for this case number; try again later."""


class QueryRefused(ApprovalsError):
    """Wrong case number, password or code; deliberately says nothing about which."""


@dataclass(frozen=True)
class Upload:
    material_key: str
    filename: str
    data: bytes


# ---- service guide catalogue ---------------------------------------------------------------------

def catalogue(db: Database) -> list[dict]:
    """服务指南: every deployed flow (latest active version) with its items, materials, limits, fees and legal basis."""
    with db.read() as conn:
        names = department_names(conn)
        rows = conn.execute(_latest_active(db.config.now())).mappings().all()
    return [_guide_entry(row, names) for row in rows]


def service_guide(db: Database, key: str) -> dict:
    with db.read() as conn:
        names = department_names(conn)
        row = conn.execute(_latest_active(db.config.now(), key)).mappings().first()
    if row is None:
        raise NotFound(f"no deployed process {key!r}")
    return _guide_entry(row, names)


def application_form(db: Database, key: str) -> dict:
    """What an online applicant fills in: the intake form up to its materials checklist, and the materials to upload.

    The intake task is the first user task after the start event. Its fields before the first
    `mat_<key>` checkbox are the applicant's; the checkboxes are ticked from the uploads; fields after
    them (受理意见, 一次性告知, 不予受理理由) are the window's. A field property `applicant` = true/false
    overrides this.
    """
    guide = service_guide(db, key)
    with db.read() as conn:
        row = conn.execute(select(process_definition.c.id, process_definition.c.spec_json)
                           .where(process_definition.c.id == guide["definition_id"])).first()
    intake = _intake_spec(load_specs(row.id, row.spec_json))
    if intake is None or not getattr(getattr(intake, "form", None), "fields", None):
        raise NotFound(f"process {key!r} has no intake form to apply online with")
    fields, material_keys = _split_intake(intake.form.fields)
    known = {m["key"]: m for m in guide["materials"]}
    materials = [known.get(k) or {"key": k, "name": _label(intake.form.fields, k), "required": False, "items": []}
                 for k in material_keys]
    return {**guide, "intake": {"bpmn_id": intake.bpmn_id, "name": intake.bpmn_name},
            "fields": forms.describe(SimpleNamespace(fields=fields)), "materials": materials,
            "_form": SimpleNamespace(fields=fields)}


# ---- online application ----------------------------------------------------------------------------

def apply(db: Database, key: str, values: dict, uploads: list[Upload] | None = None,
          contact: str | None = None) -> dict:
    """网上申报: start a case marked channel=online for the window's 网上预受理; returns the query password once."""
    form = application_form(db, key)
    uploads = list(uploads or [])
    problems = []
    try:
        typed = forms.validate(form["_form"], _without_empty(values))
    except FormInvalid as invalid:
        problems.extend(invalid.problems)
        typed = {}
    problems += _check_uploads(db, uploads, {m["key"] for m in form["materials"]})
    contact = (contact or "").strip() or None
    if contact and len(contact) > 100:
        problems.append(Problem("at most 100 characters", field="contact"))
    if problems:
        raise FormInvalid(problems, "the application has invalid fields")
    password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))
    password_hash = accounts.password_hasher(db)[0].hash(password)
    supplied = sorted({u.material_key for u in uploads})
    data = {**typed, **{MATERIAL_PREFIX + k: True for k in supplied}, "channel": CHANNEL}

    def store(conn, instance_id):
        # In the case's own transaction: no case without its password and materials.
        now = db.config.now()
        conn.execute(applicant_access.insert().values(
            instance_id=instance_id, password_hash=password_hash, channel=CHANNEL, contact=contact, created_at=now))
        for upload in uploads:
            _store_upload(conn, now, instance_id, None, upload)
        audit.record(conn, now, ONLINE_ACTOR, "online_application", instance_id,
                     data={"materials": supplied, "files": len(uploads)})

    started = runtime.start_case(db, key, data, ONLINE_ACTOR, also=store)
    code = started["verification_code"]
    return {"id": started["id"], "case_no": started["case_no"], "password": password,
            "verification_code": code, "process_key": key, "process_name": form["name"]}


def supply_materials(db: Database, instance_id: int, uploads: list[Upload], note: str | None = None) -> dict:
    """补正 online: store the materials and complete the open 补正 task for the applicant; the clock resumes."""
    note = (note or "").strip()
    with db.read() as conn:
        case = conn.execute(select(process_instance.c.definition_id, process_definition.c.spec_json,
                                   process_definition.c.guide)
                            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                            .where(process_instance.c.id == instance_id)).first()
        if case is None:
            raise NotFound(f"no case {instance_id}")
        tasks = conn.execute(select(human_task.c.id, human_task.c.bpmn_id, human_task.c.departments)
                             .where(human_task.c.instance_id == instance_id, human_task.c.status == "open")).all()
    specs = load_specs(case.definition_id, case.spec_json)
    task = next((t for t in tasks if _is_supplement(task_spec_of(specs, t.bpmn_id))), None)
    if task is None:
        raise Conflict("no materials are awaited for this case")
    known = {m["key"] for item in (case.guide or {}).get("items", []) for m in item.get("materials") or []}
    problems = _check_uploads(db, uploads, known)
    if not uploads:
        problems.append(Problem("upload at least one file", field="files"))
    if len(note) > 500:
        problems.append(Problem("at most 500 characters", field="note"))
    if problems:
        raise FormInvalid(problems, "the materials could not be accepted")

    def store(conn):
        now = db.config.now()
        for upload in uploads:
            _store_upload(conn, now, instance_id, task.id, upload)
        audit.record(conn, now, ONLINE_ACTOR, "materials_supplied", instance_id, task.id,
                     data={"materials": sorted({u.material_key for u in uploads}), "note": note})

    db.run(store)
    spec = task_spec_of(specs, task.bpmn_id)
    values = {}
    for field in forms.describe(getattr(spec, "form", None)):
        if field["type"] == "boolean" and field["required"]:
            values[field["id"]] = True      # the applicant's declaration that the materials are supplied
        elif field["type"] == "string" and field["id"].endswith("note") and note:
            values[field["id"]] = note
    applicant = User(0, ONLINE_ACTOR, "网上申报", ("clerk", "window"), tuple(task.departments or ()))
    return runtime.complete(db, task.id, applicant, values)


# ---- case query ------------------------------------------------------------------------------------

def query_case(db: Database, case_no: str, password: str, ip: str) -> dict:
    """全方位查询 by case number and query password; the same refusal, work and accounting whether or not the case exists."""
    case_no = str(case_no or "").strip()[:64]
    attempt = _begin_attempt(db, ip, case_no)
    with db.read() as conn:
        row = conn.execute(select(process_instance.c.id, applicant_access.c.password_hash)
                           .join(applicant_access, applicant_access.c.instance_id == process_instance.c.id)
                           .where(process_instance.c.case_no == case_no)).first()
    hasher, dummy = accounts.password_hasher(db)
    try:
        hasher.verify(row.password_hash if row is not None else dummy, str(password or ""))
        ok = row is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok:
        raise QueryRefused(REFUSED)
    _succeeded(db, attempt)
    return {"instance_id": row.id, "case_no": case_no}


def query_by_code(db: Database, code: str, ip: str) -> dict:
    """The verification code printed (and as a QR code) on every notice opens the same view."""
    code = str(code or "").strip().upper()[:32]
    attempt = _begin_attempt(db, ip, "code:" + code)
    with db.read() as conn:
        row = conn.execute(select(process_instance.c.id, process_instance.c.case_no)
                           .where(process_instance.c.verification_code == code)).first() if code else None
    if row is None:
        raise QueryRefused("no notice carries this verification code")
    _succeeded(db, attempt)
    return {"instance_id": row.id, "case_no": row.case_no}


def progress(db: Database, case_no: str) -> dict:
    """What the applicant sees of a case: status, current steps, deadlines, history, notices, materials, rating."""
    with db.read() as conn:
        row = conn.execute(
            select(process_instance, process_definition.c.key.label("process_key"),
                   process_definition.c.name.label("process_name"), process_definition.c.spec_json,
                   process_definition.c.guide, applicant_access.c.channel)
            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
            .outerjoin(applicant_access, applicant_access.c.instance_id == process_instance.c.id)
            .where(process_instance.c.case_no == case_no)).mappings().first()
        if row is None:
            raise NotFound(f"no case {case_no}")
        tasks = conn.execute(select(human_task).where(human_task.c.instance_id == row["id"])
                             .order_by(human_task.c.id)).mappings().all()
        names = department_names(conn)
        files = conn.execute(select(attachment.c.id, attachment.c.material_key, attachment.c.filename,
                                    attachment.c.size, attachment.c.uploaded_at)
                             .where(attachment.c.instance_id == row["id"]).order_by(attachment.c.id)).mappings().all()
        events = audit.for_instance(conn, row["id"])
        calendar = calendar_for(db, conn)
        specs = load_specs(row["definition_id"], row["spec_json"])
        supplement = next((t for t in tasks if t["status"] == "open" and _is_supplement(task_spec_of(specs, t["bpmn_id"]))),
                          None)
        data = _task_data(conn, row, specs, supplement["task_guid"]) if supplement is not None else {}
    now = db.config.now()
    outcome = next((e["data"].get("outcome") for e in reversed(events)
                    if e["type"] in ("case_completed", "case_terminated")), None)
    material_names = {m["key"]: m["name"] for item in (row["guide"] or {}).get("items", [])
                      for m in item.get("materials") or []}
    return {
        "id": row["id"], "case_no": row["case_no"], "process_key": row["process_key"],
        "process_name": row["process_name"] or row["process_key"], "applicant": row["applicant"],
        "channel": row["channel"] or "window", "status": row["status"], "outcome": outcome,
        "started_at": row["started_at"], "ended_at": row["ended_at"], "due_at": row["due_at"],
        "statutory_due_at": row["statutory_due_at"], "paused_since": row["paused_since"],
        "verification_code": row["verification_code"],
        "light": (light_of(calendar, now, row["started_at"], row["due_at"], row["yellow_seconds"])
                  if row["status"] == "running" and row["paused_since"] is None else None),
        "workdays_left": (round(calendar.workdays_left(now, row["due_at"]), 1)
                          if row["status"] == "running" and row["due_at"] else None),
        "current": [_step(t, names, calendar, now) for t in tasks if t["status"] == "open"],
        "history": [_step(t, names, calendar, now) for t in tasks if t["status"] not in ("open", "removed")],
        "supplement": _supplement_request(supplement, data, material_names),
        "notices": _notices(events),
        "materials": [{**f, "name": material_names.get(f["material_key"], f["material_key"])} for f in files],
        "departments": sorted({d for t in tasks for d in (t["departments"] or [])}),
        "department_names": names,
    }


def notice(db: Database, case_no: str, kind: str, number: int | None = None) -> dict:
    """A printed notice of the case, exactly as the case file prints it for the window (the caller has checked access)."""
    with db.read() as conn:
        instance_id = conn.execute(select(process_instance.c.id).where(process_instance.c.case_no == case_no)).scalar()
    if instance_id is None:
        raise NotFound(f"no case {case_no}")
    return casefile.notice(db, instance_id, _NOTICE_READER, kind, number)


def material_file(db: Database, instance_id: int, attachment_id: int) -> dict:
    """One file the applicant uploaded to this case (never another case's)."""
    with db.read() as conn:
        row = conn.execute(select(attachment).where(attachment.c.id == attachment_id,
                                                    attachment.c.instance_id == instance_id)).mappings().first()
    if row is None:
        raise NotFound(f"no file {attachment_id} in this case")
    return dict(row)


def prune_attempts(db: Database, older_than: timedelta = timedelta(days=1)) -> int:
    """Forget query attempts no rate limit looks at any more; returns how many went."""
    cutoff = db.config.now() - max(older_than, QUERY_WINDOW)
    return db.run(lambda conn: conn.execute(query_attempt.delete().where(query_attempt.c.at < cutoff)).rowcount)


# ---- helpers ----------------------------------------------------------------------------------------

def _latest_active(now: datetime, key: str | None = None):
    # A version scheduled for a later date (activates_at) does not take applications yet.
    latest = (select(process_definition.c.key, func.max(process_definition.c.version).label("version"))
              .where(process_definition.c.status == "active",
                     or_(process_definition.c.activates_at.is_(None), process_definition.c.activates_at <= now))
              .group_by(process_definition.c.key))
    if key is not None:
        latest = latest.where(process_definition.c.key == key)
    latest = latest.subquery()
    return (select(process_definition.c.id, process_definition.c.key, process_definition.c.name,
                   process_definition.c.version, process_definition.c.guide, process_definition.c.properties)
            .join(latest, and_(latest.c.key == process_definition.c.key,
                               latest.c.version == process_definition.c.version))
            .order_by(process_definition.c.key))


def _guide_entry(row, names: dict) -> dict:
    guide = row["guide"] or {}
    limits = (row["properties"] or {}).get("extensions", {})
    departments = {**names, **(guide.get("departments") or {})}
    materials: dict[str, dict] = {}
    items = []
    for item in guide.get("items", []):
        for material in item.get("materials") or []:
            entry = materials.setdefault(material["key"], {"key": material["key"], "name": material["name"],
                                                           "required": False, "items": []})
            entry["required"] = entry["required"] or bool(material.get("required"))
            entry["items"].append(item["name"])
        items.append({**item, "department_name": departments.get(item.get("department"), item.get("department"))})
    return {
        "key": row["key"], "name": guide.get("name") or row["name"] or row["key"], "version": row["version"],
        "definition_id": row["id"], "committed_limit": guide.get("committed_limit") or limits.get("committedLimit"),
        "statutory_limit": guide.get("statutory_limit") or limits.get("statutoryLimit"),
        "legal_basis": guide.get("legal_basis"), "window": guide.get("window"), "items": items,
        "materials": list(materials.values()),
    }


def _intake_spec(specs):
    """The first user task reachable from the start event (breadth first), i.e. the window's intake."""
    spec = specs.spec
    queue, seen = [spec.start], set()
    while queue:
        task_spec = queue.pop(0)
        if task_spec.name in seen:
            continue
        seen.add(task_spec.name)
        if getattr(task_spec, "manual", False):
            return task_spec
        queue.extend(task_spec.outputs)
    return None


def _split_intake(fields) -> tuple[list, list[str]]:
    applicant, materials, checklist_seen = [], [], False
    for field in fields:
        flag = {p.id: p.value for p in field.properties}.get("applicant")
        if field.id.startswith(MATERIAL_PREFIX) and field.type == "boolean":
            materials.append(field.id[len(MATERIAL_PREFIX):])
            checklist_seen = True
        elif flag is not None:
            if str(flag).lower() == "true":
                applicant.append(field)
        elif not checklist_seen:
            applicant.append(field)
    return applicant, materials


def _label(fields, key: str) -> str:
    for field in fields:
        if field.id == MATERIAL_PREFIX + key:
            return field.label or key
    return key


def _without_empty(values: dict) -> dict:
    if not isinstance(values, dict):
        raise FormInvalid(Problem("form data must be a JSON object", field="data"))
    return {k: v for k, v in values.items() if v not in (None, "")}


def _check_uploads(db: Database, uploads: list[Upload], known: set[str]) -> list[Problem]:
    problems = []
    if len(uploads) > MAX_FILES:
        problems.append(Problem(f"at most {MAX_FILES} files", field="files"))
    for upload in uploads:
        where = f"material:{upload.material_key}"
        if upload.material_key not in known:
            problems.append(Problem(f"unknown material {upload.material_key!r}", field=where))
            continue
        try:
            check_file(upload.filename, upload.data, db.config.max_upload_bytes, ONLINE_EXTENSIONS)
        except InvalidInput as refused:
            problems += [Problem(f"{upload.filename}: {p.message}", field=where) for p in refused.problems]
    return problems


def _store_upload(conn, now: datetime, instance_id: int, task_id: int | None, upload: Upload) -> None:
    # (checked by _check_uploads before the transaction began)
    conn.execute(attachment.insert().values(
        instance_id=instance_id, task_id=task_id, material_key=upload.material_key,
        filename=safe_filename(upload.filename), content_type=sniff(upload.data).content_type, size=len(upload.data),
        sha256=hashlib.sha256(upload.data).hexdigest(), content=upload.data,
        uploaded_by=ONLINE_ACTOR, uploaded_at=now))


def _begin_attempt(db: Database, ip: str, subject: str) -> int:
    """Refuse when over the limit; otherwise record the attempt as failed until it is proven right.

    Counting in-flight attempts as failures means parallel guesses cannot slip past the limit.
    """
    ip = str(ip or "unknown")[:64]

    def begin(conn):
        now = db.config.now()
        since = now - QUERY_WINDOW
        failures = select(func.count()).select_from(query_attempt).where(
            query_attempt.c.at > since, query_attempt.c.success.is_(False))
        by_ip = conn.execute(failures.where(query_attempt.c.ip == ip)).scalar()
        by_case = conn.execute(failures.where(query_attempt.c.case_no == subject)).scalar()
        attempt = conn.execute(query_attempt.insert().values(at=now, ip=ip, case_no=subject, success=False)
                               ).inserted_primary_key[0]
        return attempt, by_ip >= MAX_FAILURES_PER_IP or by_case >= MAX_FAILURES_PER_CASE

    attempt, limited = db.run(begin)
    if limited:
        raise TooManyAttempts("too many failed queries; try again in 15 minutes")
    return attempt


def _succeeded(db: Database, attempt: int) -> None:
    db.run(lambda conn: conn.execute(update(query_attempt).where(query_attempt.c.id == attempt).values(success=True)))


def _is_supplement(spec) -> bool:
    settings = extensions(spec) if spec is not None else {}
    return settings.get("clock") == "pause" and (settings.get("pauseKind") or "补正") == "补正"


def _step(task, names: dict, calendar, now: datetime) -> dict:
    return {
        "name": task["name"], "bpmn_id": task["bpmn_id"], "status": task["status"],
        "departments": [names.get(d, d) for d in task["departments"] or []] or [names.get("window", "综合窗口")],
        "created_at": task["created_at"], "due_at": task["due_at"], "completed_at": task["completed_at"],
        "light": (light_of(calendar, now, task["created_at"], task["due_at"], task["yellow_seconds"])
                  if task["status"] == "open" else None),
    }


def _supplement_request(task, data: dict, material_names: dict) -> dict | None:
    """The open 补正 request as the flow recorded it: its last 一次性告知 (supplement_notices) or a lead's 退回补正."""
    if task is None:
        return None
    missing, note = [], ""
    notices = [n for key, value in data.items() if key.endswith("supplement_notices") and isinstance(value, list)
               for n in value if isinstance(n, dict)]
    send_backs = [b for key, value in data.items() if key.endswith("send_backs") and isinstance(value, list)
                  for b in value if isinstance(b, dict) and b.get("kind") == "supplement"]
    if task["bpmn_id"].endswith("review") and send_backs or not notices and send_backs:
        note = send_backs[-1].get("reason") or ""
    elif notices:
        names = dict(zip(notices[-1].get("materials") or [], notices[-1].get("names") or []))
        missing = [{"key": k, "name": material_names.get(k) or names.get(k, k)} for k in notices[-1].get("materials") or []]
        note = notices[-1].get("note") or ""
    return {"task_id": task["id"], "name": task["name"], "since": task["created_at"], "materials": missing,
            "note": note}


def _task_data(conn, row, specs, task_guid: str) -> dict:
    """The data an open task holds, read from the stored workflow (nothing is stepped or saved)."""
    workflow = decode(read_state(conn, row["id"]), specs)
    task = find_task(workflow, task_guid)
    return dict(task.data) if task is not None else {}


NOTICE_TITLES = {
    "receipt": "申请材料接收凭证", "acceptance": "受理通知书", "supplement": "补正材料通知书（一次性告知）",
    "rejection": "不予受理告知书", "special-procedure": "特别程序告知书", "extension": "延期告知",
    "completion": "办结通知书",
}


def _notices(events: list[dict]) -> list[dict]:
    """Notices the case has given rise to, from its audit trail (the printed versions are the case file's)."""
    found = []
    for event in events:
        kind, data = None, event["data"]
        values = data.get("values") or {}
        if event["type"] == "case_started":
            kind = "receipt"
        elif event["type"] == "task_completed" and values.get("intake_decision") in ("accept", "reject"):
            kind = "acceptance" if values["intake_decision"] == "accept" else "rejection"
        elif event["type"] == "clock_paused":
            kind = "supplement" if data.get("kind") == "补正" else "special-procedure"
        elif event["type"] == "limit_extended" and data.get("scope") == "case":
            kind = "extension"
        elif event["type"] == "case_completed" and data.get("outcome") != "not_accepted":
            kind = "completion"
        if kind:
            found.append({"kind": kind, "title": NOTICE_TITLES[kind], "issued_at": datetime.fromisoformat(event["at"])})
    return found
