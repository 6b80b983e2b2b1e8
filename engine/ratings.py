"""好差评 ratings of finished cases, the follow-ups poor ratings open (15 working days) and complaints (10 working days)."""
from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from . import audit
from .accounts import User, department_names
from .errors import Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .lights import RED, light_of
from .store import Database, complaint, department, follow_up, human_task, process_instance, rating
from .timekeeping import calendar_for

SCORES = {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}
POOR = 2                      # scores at or below open a follow-up (差评整改)
FOLLOW_UP_WORKDAYS = 15
COMPLAINT_WORKDAYS = 10
HANDLER_ROLES = ("supervisor", "window", "lead", "admin")
RATED_STATUSES = ("completed", "terminated")
_REFERENCE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def rate(db: Database, instance_id: int, score, comment: str | None = None, department_key: str | None = None) -> dict:
    """Rate a finished case once; a poor score opens a follow-up due in 15 working days."""
    problems = []
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score)
    if not isinstance(score, int) or isinstance(score, bool) or score not in SCORES:
        problems.append(Problem("choose a rating from 1 (非常不满意) to 5 (非常满意)", field="score"))
    comment = (comment or "").strip() or None
    if comment and len(comment) > 1000:
        problems.append(Problem("at most 1000 characters", field="comment"))
    if score in SCORES and score <= POOR and not comment:
        problems.append(Problem("tell us what went wrong so it can be put right", field="comment"))
    department_key = (department_key or "").strip() or None
    if problems:
        raise InvalidInput(problems)

    def store(conn):
        case = conn.execute(select(process_instance.c.status).where(process_instance.c.id == instance_id)).first()
        if case is None:
            raise NotFound(f"no case {instance_id}")
        if case.status not in RATED_STATUSES:
            raise Conflict("a case can be rated once it is finished (办结)")
        if department_key is not None and department_key not in _case_departments(conn, instance_id):
            raise InvalidInput(Problem("choose one of the departments that handled this case", field="department"))
        if conn.execute(select(rating.c.id).where(rating.c.instance_id == instance_id)).first():
            raise Conflict("this case has already been rated")
        now = db.config.now()
        rating_id = conn.execute(rating.insert().values(
            instance_id=instance_id, score=score, comment=comment, department=department_key, rated_at=now,
        )).inserted_primary_key[0]
        audit.record(conn, now, "online", "case_rated", instance_id,
                     data={"score": score, "level": SCORES[score], "department": department_key})
        result = {"id": rating_id, "score": score, "level": SCORES[score], "follow_up": None}
        if score <= POOR:
            due = calendar_for(db, conn).add_workdays(now, FOLLOW_UP_WORKDAYS).at
            follow_up_id = conn.execute(follow_up.insert().values(
                rating_id=rating_id, instance_id=instance_id, department=department_key, opened_at=now,
                due_at=due, status="open")).inserted_primary_key[0]
            audit.record(conn, now, None, "follow_up_opened", instance_id,
                         data={"follow_up_id": follow_up_id, "due_at": due.isoformat(), "score": score})
            result["follow_up"] = {"id": follow_up_id, "due_at": due}
        return result

    try:
        return db.run(store)
    except IntegrityError:   # two submissions at once: the unique instance_id lets only one in
        raise Conflict("this case has already been rated") from None


def rating_of(db: Database, instance_id: int) -> dict | None:
    with db.read() as conn:
        row = conn.execute(select(rating).where(rating.c.instance_id == instance_id)).mappings().first()
    return {**row, "level": SCORES[row["score"]]} if row else None


def list_follow_ups(db: Database, user: User, status: str = "open", limit: int = 200) -> list[dict]:
    """Follow-ups of poor ratings, soonest due first, each with its light."""
    _require_handler(user)
    _check_status(status, ("open", "closed", ""))
    query = (select(follow_up, rating.c.score, rating.c.comment, process_instance.c.case_no,
                    process_instance.c.applicant)
             .join(rating, rating.c.id == follow_up.c.rating_id)
             .join(process_instance, process_instance.c.id == follow_up.c.instance_id)
             .order_by(follow_up.c.due_at, follow_up.c.id).limit(max(1, min(limit, 1000))))
    if status:
        query = query.where(follow_up.c.status == status)
    with db.read() as conn:
        rows = conn.execute(query).mappings().all()
        calendar = calendar_for(db, conn)
        names = department_names(conn)
    now = db.config.now()
    return [{**row, "level": SCORES[row["score"]], "department_name": names.get(row["department"], row["department"]),
             "light": _light(calendar, now, row["opened_at"], row["due_at"], row["closed_at"])} for row in rows]


def close_follow_up(db: Database, follow_up_id: int, user: User, resolution: str) -> dict:
    _require_handler(user)
    resolution = _written(resolution, "resolution", "describe how the complaint was followed up and put right")
    return _settle(db, follow_up, follow_up_id, user, "follow_up_closed", "follow_up_id",
                   "closed_at", dict(status="closed", closed_by=user.username, resolution=resolution),
                   missing=f"no follow-up {follow_up_id}",
                   settled=lambda row: f"follow-up {follow_up_id} is already closed")


def file_complaint(db: Database, subject: str, body: str, instance_id: int | None = None,
                   department_key: str | None = None, contact: str | None = None) -> dict:
    """投诉 about a case or a department; answered within 10 working days. Returns the reference to follow it with."""
    subject, body = (subject or "").strip(), (body or "").strip()
    department_key = (department_key or "").strip() or None
    contact = (contact or "").strip() or None
    problems = []
    if not subject:
        problems.append(Problem("a subject is required", field="subject"))
    elif len(subject) > 200:
        problems.append(Problem("at most 200 characters", field="subject"))
    if not body:
        problems.append(Problem("describe the complaint", field="body"))
    elif len(body) > 4000:
        problems.append(Problem("at most 4000 characters", field="body"))
    if contact and len(contact) > 100:
        problems.append(Problem("at most 100 characters", field="contact"))
    if instance_id is None and department_key is None:
        problems.append(Problem("name the case or the department the complaint is about", field="department"))
    if problems:
        raise InvalidInput(problems)

    def store(conn):
        if department_key is not None and not conn.execute(
                select(department.c.key).where(department.c.key == department_key)).first():
            raise InvalidInput(Problem(f"unknown department {department_key!r}", field="department"))
        if instance_id is not None and not conn.execute(
                select(process_instance.c.id).where(process_instance.c.id == instance_id)).first():
            raise NotFound(f"no case {instance_id}")
        now = db.config.now()
        due = calendar_for(db, conn).add_workdays(now, COMPLAINT_WORKDAYS).at
        reference = "TS" + "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(10))
        complaint_id = conn.execute(complaint.insert().values(
            reference=reference, instance_id=instance_id, department=department_key, subject=subject, body=body,
            contact=contact, filed_at=now, due_at=due, status="open")).inserted_primary_key[0]
        audit.record(conn, now, "online", "complaint_filed", instance_id,
                     data={"complaint_id": complaint_id, "department": department_key, "due_at": due.isoformat()})
        return {"id": complaint_id, "reference": reference, "due_at": due}

    return db.run(store)


def complaint_by_reference(db: Database, reference: str) -> dict:
    """What the complainant may see again: their complaint, its deadline and the answer."""
    with db.read() as conn:
        row = conn.execute(select(complaint).where(complaint.c.reference == str(reference or "").strip().upper())
                           ).mappings().first()
    if row is None:
        raise NotFound("no complaint with this reference")
    return {k: row[k] for k in ("reference", "subject", "body", "filed_at", "due_at", "status", "answered_at", "answer")}


def list_complaints(db: Database, user: User, status: str = "open", limit: int = 200) -> list[dict]:
    _require_handler(user)
    _check_status(status, ("open", "answered", ""))
    query = (select(complaint, process_instance.c.case_no)
             .outerjoin(process_instance, process_instance.c.id == complaint.c.instance_id)
             .order_by(complaint.c.due_at, complaint.c.id).limit(max(1, min(limit, 1000))))
    if status:
        query = query.where(complaint.c.status == status)
    with db.read() as conn:
        rows = conn.execute(query).mappings().all()
        calendar = calendar_for(db, conn)
        names = department_names(conn)
    now = db.config.now()
    return [{**row, "department_name": names.get(row["department"], row["department"]),
             "light": _light(calendar, now, row["filed_at"], row["due_at"], row["answered_at"])} for row in rows]


def answer_complaint(db: Database, complaint_id: int, user: User, answer: str) -> dict:
    _require_handler(user)
    answer = _written(answer, "answer", "write the answer to the complainant")
    return _settle(db, complaint, complaint_id, user, "complaint_answered", "complaint_id",
                   "answered_at", dict(status="answered", answered_by=user.username, answer=answer),
                   missing=f"no complaint {complaint_id}",
                   settled=lambda row: f"complaint {row['reference']} has already been answered")


def _written(text: str | None, field: str, missing: str) -> str:
    text = (text or "").strip()
    if not text:
        raise InvalidInput(Problem(missing, field=field))
    if len(text) > 4000:
        raise InvalidInput(Problem("at most 4000 characters", field=field))
    return text


def _settle(db: Database, table, item_id: int, user: User, event: str, id_key: str, moment_column: str, values: dict,
            missing: str, settled) -> dict:
    """Close a follow-up or answer a complaint, once: `values` and the moment are stored, and the audit trail
    records whether it was late."""
    def store(conn):
        row = conn.execute(select(table).where(table.c.id == item_id)).mappings().first()
        if row is None:
            raise NotFound(missing)
        now = db.config.now()
        if not conn.execute(update(table).where(table.c.id == item_id, table.c.status == "open")
                            .values({**values, moment_column: now})).rowcount:
            raise Conflict(settled(row))
        late = now > row["due_at"]
        audit.record(conn, now, user.username, event, row["instance_id"], data={id_key: item_id, "late": late})
        return {"id": item_id, "status": values["status"], "late": late}

    return db.run(store)


def _light(calendar, now: datetime, started: datetime, due: datetime, done: datetime | None) -> str | None:
    """Open items light up like tasks; a closed one stays red if it was closed late."""
    if done is not None:
        return RED if done > due else None
    return light_of(calendar, now, started, due)


def _case_departments(conn, instance_id: int) -> set[str]:
    rows = conn.execute(select(human_task.c.departments).where(human_task.c.instance_id == instance_id)).scalars()
    return {d for departments in rows for d in departments or []}




def _require_handler(user: User) -> None:
    if not user.has_role(*HANDLER_ROLES):
        raise PermissionDenied("only supervisors, window staff and leads handle ratings and complaints")


def _check_status(status: str, allowed: tuple) -> None:
    if status not in allowed:
        raise InvalidInput(Problem(f"status must be one of {', '.join(s for s in allowed if s)}", field="status"))
