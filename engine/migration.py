"""Migrate running cases to another version of their process: preview, batch, recomputed deadlines, rollback."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable
from uuid import UUID

from sqlalchemy import delete, select, update
from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
    DurationTimerEventDefinition, TimeDateEventDefinition, TimerEventDefinition,
)
from SpiffWorkflow.bpmn.util.diff import SpecDiff, migrate_workflow
from SpiffWorkflow.util.task import TaskState

from . import audit, clock, projection
from .accounts import User, resolve_departments
from .bpmn import task_departments
from .errors import ApprovalsError, Conflict, InvalidInput, NotFound, PermissionDenied, Problem
from .scripting import using_calendar
from .scripting import script_engine
from .snapshot import Snapshot, _registry, load_specs, read_state, write_state
from .store import (
    Database, audit_event, case_migration, clock_pause, human_task, process_definition, process_instance,
    task_queue, timer,
)
from .timekeeping import calendar_for

MIGRATE_ROLES = ("designer", "admin")
_ACTIVE = TaskState.READY | TaskState.WAITING | TaskState.STARTED
_FINISHED = TaskState.COMPLETED | TaskState.CANCELLED | TaskState.ERROR
_CASE_LIMITS = ("committedLimit", "statutoryLimit", "yellowThreshold")


def preview_migration(db: Database, key: str, from_version: int, to_version: int) -> dict:
    """Which running cases on `from_version` can move to `to_version`, which cannot and why, step by step."""
    plan = _Migration.load(db, key, from_version, to_version)
    cases = []
    with db.read() as conn:
        calendar = calendar_for(db, conn)
        for row in _running_on(conn, plan.source.id):
            cases.append(_plan_case(conn, plan, dict(row), calendar, db.config.now()).report())
    return plan.summary(cases)


def migrate_cases(db: Database, key: str, from_version: int, to_version: int, user: User, dry_run: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Move every movable running case from one version to another, each in its own transaction.

    A case that cannot move (or changed while the batch ran) is left exactly as it was and listed with
    the reasons; `progress(done, total)` is called after each case.
    """
    _require(user)
    if dry_run:
        return preview_migration(db, key, from_version, to_version)
    plan = _Migration.load(db, key, from_version, to_version)
    with db.read() as conn:
        ids = [row["id"] for row in _running_on(conn, plan.source.id)]
    cases = []
    for done, instance_id in enumerate(ids, start=1):
        try:
            cases.append(_migrate_one(db, plan, instance_id, user.username))
        except ApprovalsError as exc:
            cases.append({"id": instance_id, "movable": False, "migrated": False, "reasons": [exc.message]})
        if progress is not None:
            progress(done, len(ids))
    return plan.summary(cases)


def migrate_case(db: Database, instance_id: int, to_version: int, user: User, dry_run: bool = False) -> dict:
    """Move one running case to another version of its process (or, with dry_run, say what would happen)."""
    _require(user)
    with db.read() as conn:
        row = conn.execute(select(process_instance.c.id, process_definition.c.key, process_definition.c.version)
                           .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                           .where(process_instance.c.id == instance_id)).first()
    if row is None:
        raise NotFound(f"no case {instance_id}")
    if row.version == to_version:
        raise Conflict(f"case {instance_id} already runs on version {to_version}")
    plan = _Migration.load(db, row.key, row.version, to_version)
    if dry_run:
        with db.read() as conn:
            case_row = conn.execute(select(process_instance).where(process_instance.c.id == instance_id)).mappings().first()
            return _plan_case(conn, plan, dict(case_row), calendar_for(db, conn), db.config.now()).report()
    result = _migrate_one(db, plan, instance_id, user.username)
    if not result["migrated"]:
        raise Conflict(f"case {instance_id} cannot move to version {to_version}: " + "; ".join(result["reasons"]))
    return result


def rollback_migration(db: Database, instance_id: int, user: User) -> dict:
    """Put a migrated case back exactly as it was before its last migration, unless it has moved on since."""
    _require(user)

    def run(conn):
        row = db.lock_instance(conn, instance_id)
        if row is None:
            raise NotFound(f"no case {instance_id}")
        last = conn.execute(select(case_migration).where(case_migration.c.instance_id == instance_id)
                            .order_by(case_migration.c.id.desc()).limit(1)).mappings().first()
        if last is None or last["rolled_back_at"] is not None:
            raise Conflict(f"case {row['case_no']} has no migration to roll back")
        if row["revision"] != last["revision_after"] or row["status"] != "running":
            raise Conflict(f"case {row['case_no']} has moved on since it was migrated; it can no longer be rolled back")
        now = db.config.now()
        before = last["projection_before"]
        write_state(conn, instance_id, last["state_before"])
        open_ids = [t["id"] for t in before["tasks"]]
        current = conn.execute(select(human_task.c.departments).where(human_task.c.id.in_(open_ids))).all()
        queues = {q["department_key"] for q in before["queue"]} | {d for r in current for d in _queues(r.departments)}
        for task in before["tasks"]:
            conn.execute(update(human_task).where(human_task.c.id == task["id"]).values(
                bpmn_id=task["bpmn_id"], name=task["name"], lane=task["lane"], departments=task["departments"],
                due_at=_moment(task["due_at"]), yellow_seconds=task["yellow_seconds"], assignee=task["assignee"],
                claimed_at=_moment(task["claimed_at"])))
        if open_ids:
            conn.execute(_queue_rows(delete(task_queue), queues, open_ids))
        if before["queue"]:
            conn.execute(task_queue.insert(), before["queue"])
        conn.execute(delete(timer).where(timer.c.instance_id == instance_id))
        if before["timers"]:
            conn.execute(timer.insert(), [{"instance_id": instance_id, "task_guid": t["task_guid"],
                                           "bpmn_id": t["bpmn_id"], "due_at": _moment(t["due_at"])}
                                          for t in before["timers"]])
        case = before["row"]
        conn.execute(update(process_instance).where(process_instance.c.id == instance_id).values(
            definition_id=case["definition_id"], due_at=_moment(case["due_at"]),
            statutory_due_at=_moment(case["statutory_due_at"]), yellow_seconds=case["yellow_seconds"],
            revision=row["revision"] + 1))
        conn.execute(update(case_migration).where(case_migration.c.id == last["id"])
                     .values(rolled_back_at=now, rolled_back_by=user.username))
        versions = _versions(conn, last["from_definition_id"], last["to_definition_id"])
        audit.record(conn, now, user.username, "case_migration_rolled_back", instance_id,
                     data={"from_version": versions[last["to_definition_id"]],
                           "to_version": versions[last["from_definition_id"]], "migration_id": last["id"]})
        return {"id": instance_id, "case_no": row["case_no"], "version": versions[last["from_definition_id"]],
                "rolled_back_from": versions[last["to_definition_id"]]}

    return db.run(run)


def migration_history(db: Database, instance_id: int) -> list[dict]:
    """The migrations a case went through, oldest first."""
    with db.read() as conn:
        rows = conn.execute(select(case_migration).where(case_migration.c.instance_id == instance_id)
                            .order_by(case_migration.c.id)).mappings().all()
        versions = _versions(conn, *{r["from_definition_id"] for r in rows}, *{r["to_definition_id"] for r in rows})
    return [{"id": r["id"], "from_version": versions[r["from_definition_id"]],
             "to_version": versions[r["to_definition_id"]], "migrated_at": r["migrated_at"].isoformat(),
             "migrated_by": r["migrated_by"], "mapping": r["mapping"],
             "rolled_back_at": _iso(r["rolled_back_at"]), "rolled_back_by": r["rolled_back_by"]} for r in rows]


# ---- planning -------------------------------------------------------------------------------------

@dataclass
class _Version:
    id: int
    key: str
    version: int
    properties: dict
    specs: object


@dataclass
class _Migration:
    """A source and target version with the alignment of their task specs, computed once per batch."""

    source: _Version
    target: _Version
    alignments: dict            # process spec name -> {old task spec name: new TaskSpec} (None: process gone)
    added_steps: dict           # process spec name -> [new user task specs with no counterpart]

    @classmethod
    def load(cls, db: Database, key: str, from_version: int, to_version: int) -> "_Migration":
        for name, value in (("from", from_version), ("to", to_version)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidInput(Problem("must be a version number", field=name))
        if from_version == to_version:
            raise InvalidInput(Problem("source and target are the same version", field="to"))
        with db.read() as conn:
            source, target = (_load_version(conn, key, v) for v in (from_version, to_version))
        alignments, added = {}, {}
        pairs = [(source.specs.spec, target.specs.spec)]
        pairs += [(spec, target.specs.subprocess_specs.get(name)) for name, spec in source.specs.subprocess_specs.items()]
        for old, new in pairs:
            if new is None:
                alignments[old.name] = None
                continue
            diff = SpecDiff(_registry, old, new)
            alignments[old.name] = {spec.name: aligned for spec, aligned in diff.alignment.items()}
            added[old.name] = [spec for spec in diff.added if spec.manual]
        return cls(source, target, alignments, added)

    def new_spec_of(self, process_name: str):
        if process_name == self.target.specs.spec.name:
            return self.target.specs.spec
        return self.target.specs.subprocess_specs.get(process_name)

    def summary(self, cases: list[dict]) -> dict:
        return {"key": self.source.key, "from": self.source.version, "to": self.target.version,
                "total": len(cases), "movable": sum(1 for c in cases if c["movable"]),
                "migrated": sum(1 for c in cases if c.get("migrated")),
                "refused": sum(1 for c in cases if not c["movable"]), "cases": cases}


@dataclass
class _Plan:
    row: dict
    migration: _Migration
    reasons: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    timers: list = field(default_factory=list)
    body_before: str = ""
    body_after: str = ""
    workflow: object = None
    case_values: dict = field(default_factory=dict)
    task_values: dict = field(default_factory=dict)

    @property
    def movable(self) -> bool:
        return not self.reasons

    def report(self) -> dict:
        return {"id": self.row["id"], "case_no": self.row["case_no"], "movable": self.movable,
                "migrated": False, "reasons": self.reasons, "steps": self.steps, "timers": self.timers,
                "case_due_at": _iso(self.row["due_at"]),
                "new_case_due_at": _iso(self.case_values.get("due_at", self.row["due_at"])) if self.movable else None}


@dataclass
class _Before:
    state: int
    last_state_change: float
    data: dict
    internal_data: dict
    expression: str | None


def _plan_case(conn, migration: _Migration, row: dict, calendar, now: datetime) -> _Plan:
    """Migrate the case's workflow in memory and work out every value to store; refusals carry reasons."""
    plan = _Plan(row, migration)
    if row["definition_id"] != migration.source.id:
        plan.reasons.append("the case runs on another version now")
        return plan
    if row["status"] != "running":
        plan.reasons.append(f"the case is {row['status']}")
        return plan
    state = read_state(conn, row["id"])
    plan.body_before = json.dumps(state, ensure_ascii=False, separators=(",", ":"))
    workflow = _decode(state, migration.source.specs)
    open_rows = conn.execute(select(human_task).where(human_task.c.instance_id == row["id"],
                                                      human_task.c.status == "open")
                             .order_by(human_task.c.id)).mappings().all()
    plan.reasons.extend(_unmappable(workflow, migration))
    if plan.reasons:
        plan.steps = [_step_report(r, None, None) for r in open_rows]
        return plan

    before = {task.id: _Before(task.state, task.last_state_change, task.data, dict(task.internal_data),
                               _expression(task.task_spec))
              for task in workflow.get_tasks(state=TaskState.READY | TaskState.WAITING)}
    ready_before = {str(t.id) for t in workflow.get_tasks(state=TaskState.READY, manual=True)}
    with using_calendar(calendar):
        _swap_specs(workflow, migration)
    plan.reasons.extend(_check_after(workflow, migration, ready_before))
    if plan.reasons:
        plan.steps = [_step_report(r, None, None) for r in open_rows]
        return plan
    for task in workflow.get_tasks(state=TaskState.READY | TaskState.WAITING):
        old = before.get(task.id)
        if old is not None:
            # SpiffWorkflow's reset cleared what the step had (a countersign copy's item, its start): put it back.
            task.last_state_change = old.last_state_change
            task.internal_data = dict(old.internal_data)
            if task.state == TaskState.READY:
                task.data = old.data

    pauses = conn.execute(select(clock_pause).where(clock_pause.c.instance_id == row["id"])
                          .order_by(clock_pause.c.started_at)).all()
    extensions = _extensions(conn, row["id"])
    task_extensions = {}
    for task_row in open_rows:
        workdays = extensions.get(task_row["id"])
        spiff = workflow.get_task_from_id(UUID(task_row["task_guid"]))
        if workdays and spiff is not None:
            for limit in clock.limit_timers(spiff):
                task_extensions[limit.id] = workdays
    dues = _retime(workflow, before, calendar, pauses, row["paused_since"], task_extensions, plan)
    plan.case_values = _case_limits(migration, row, calendar, pauses, extensions.get(None))
    yellow = plan.case_values.get("yellow_seconds", row["yellow_seconds"])
    for task_row in open_rows:
        spiff = workflow.get_task_from_id(UUID(task_row["task_guid"]))
        values = _task_values(conn, spiff, task_row, dues, calendar, yellow)
        plan.task_values[task_row["id"]] = values
        plan.steps.append(_step_report(task_row, spiff, values))
    plan.workflow = workflow
    # _check_after made sure every task names a spec of the target version, which is what loading needs.
    plan.body_after = Snapshot(workflow, row["revision"]).encode()
    return plan


def _unmappable(workflow, migration: _Migration) -> list[str]:
    """Steps the case has been through or is at that the target version no longer has."""
    reasons, plumbing = [], []
    for task in workflow.get_tasks():
        process = task.workflow.spec.name
        alignment = migration.alignments.get(process)
        if alignment is None:
            if task.state & (_ACTIVE | _FINISHED):
                reasons.append(f"sub-process {process!r} does not exist in version {migration.target.version}")
                break
            continue
        if alignment.get(task.task_spec.name) is not None:
            continue
        label = _label(task.task_spec)
        if _is_plumbing(task.task_spec) and task.state & (_ACTIVE | _FINISHED):
            plumbing.append(f"element {label} ({TaskState.get_name(task.state)}) does not exist in version "
                            f"{migration.target.version}")
        elif task.state & _ACTIVE:
            reasons.append(f"active step {label} does not exist in version {migration.target.version}")
        elif task.state & _FINISHED:
            reasons.append(f"completed step {label} does not exist in version {migration.target.version}; "
                           f"the case's history would no longer match its diagram")
    # SpiffWorkflow's helper tasks go with their step; name them only when no step explains the refusal.
    return list(dict.fromkeys(reasons or plumbing))


def _swap_specs(workflow, migration: _Migration) -> None:
    """SpiffWorkflow's migrate_workflow on the case and each of its sub-processes, with the batch's alignment."""
    for sub in [workflow, *workflow.subprocesses.values()]:
        alignment = migration.alignments[sub.spec.name]
        diff = _Alignment({task: alignment.get(task.task_spec.name) for task in sub.tasks.values()})
        migrate_workflow(diff, sub, migration.new_spec_of(sub.spec.name))
    workflow.subprocess_specs = migration.target.specs.subprocess_specs


@dataclass
class _Alignment:
    """The part of SpiffWorkflow's WorkflowDiff that migrate_workflow reads."""

    alignment: dict


def _check_after(workflow, migration: _Migration, ready_before: set[str]) -> list[str]:
    reasons = []
    for task in workflow.get_tasks():
        spec = migration.new_spec_of(task.workflow.spec.name)
        if spec is None or spec.task_specs.get(task.task_spec.name) is not task.task_spec:
            reasons.append(f"step {_label(task.task_spec)} ({TaskState.get_name(task.state)}) has no counterpart "
                           f"in version {migration.target.version}")
    ready_after = {str(t.id) for t in workflow.get_tasks(state=TaskState.READY, manual=True)}
    if ready_after != ready_before:
        reasons.append("the active steps would change: " + ", ".join(
            _label(workflow.get_task_from_id(UUID(g)).task_spec) for g in sorted(ready_after ^ ready_before)
            if workflow.get_task_from_id(UUID(g)) is not None))
    automatic = [t for t in workflow.get_tasks(state=TaskState.READY) if not t.task_spec.manual]
    if automatic:
        reasons.append("the active steps would become automatic ones in version "
                       f"{migration.target.version}: " + ", ".join(_label(t.task_spec) for t in automatic))
    for sub in [workflow, *workflow.subprocesses.values()]:
        ahead = _ahead(sub)
        for spec in migration.added_steps.get(sub.spec.name, []):
            if spec.name not in ahead:
                reasons.append(f"new step {_label(spec)} lies on a path this case has already passed; "
                               f"the case would never do it")
    return list(dict.fromkeys(reasons))


def _ahead(sub) -> set[str]:
    """Spec names the (sub-)process can still reach from where it is, without going round a loop again."""
    unfinished = TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.PREDICTED_MASK | TaskState.FUTURE
    done = {t.task_spec.name for t in sub.tasks.values() if t.state == TaskState.COMPLETED}
    frontier = [t.task_spec for t in sub.tasks.values() if t.state & unfinished]
    seen = {spec.name for spec in frontier}
    while frontier:
        spec = frontier.pop()
        for output in spec.outputs:
            if output.name not in seen and output.name not in done:
                seen.add(output.name)
                frontier.append(output)
    return seen


# ---- deadlines ----------------------------------------------------------------------------------

def _retime(workflow, before: dict, calendar, pauses, paused_since, task_extensions: dict, plan: _Plan) -> dict:
    """Give each waiting timer its due moment under the new limit, counted from when its step started.

    Unchanged timers keep exactly what they had; changed ones are due when the new limit, started at the
    step's start, runs out — shifted by the clock stops since then, plus any 延期 granted — so the working
    time already spent counts. Returns the effective (unfrozen) due moment of every waiting timer.
    """
    dues = {}
    for task in clock.waiting_timers(workflow):
        old = before.get(task.id)
        expression = _expression(task.task_spec)
        if old is not None and old.expression == expression:
            task.internal_data = dict(old.internal_data)
            due = clock.timer_due(task)
            if due is not None:
                dues[task.id] = due
            continue
        start = datetime.fromtimestamp((old or task).last_state_change, timezone.utc)
        previous = _due_of(old)
        due = _limit_from(calendar, start, expression, task.task_spec.event_definition)
        if due is None:
            # An expression we cannot evaluate as of the step's start (e.g. a Python expression): it restarted.
            due = clock.timer_due(task)
            plan.timers.append(_timer_report(task, previous, due, restarted=True))
            if due is not None:
                dues[task.id] = due
            continue
        for pause in pauses:
            if pause.ended_at is not None and pause.ended_at > start:
                due = clock.shift(calendar, due, max(pause.started_at, start), pause.ended_at)
        if task_extensions.get(task.id):
            due = calendar.add_working_seconds(due, task_extensions[task.id] * calendar.office_hours.seconds_per_day).at
        dues[task.id] = due
        if paused_since is not None:
            task.internal_data["frozen_remaining"] = calendar.working_seconds_between(max(paused_since, start), due)
            task.internal_data["event_value"] = clock.FROZEN_UNTIL
        else:
            task.internal_data.pop("frozen_remaining", None)
            task.internal_data["event_value"] = due.isoformat()
        plan.timers.append(_timer_report(task, previous, due, restarted=False))
    return dues


def _limit_from(calendar, start: datetime, expression: str | None, definition) -> datetime | None:
    text = _literal(expression)
    if text is None:
        return None
    if isinstance(definition, DurationTimerEventDefinition) and clock.check_limit(text) is None:
        return clock.deadline_from(calendar, start, text).at
    if isinstance(definition, TimeDateEventDefinition):
        try:
            return TimerEventDefinition.get_datetime(text).astimezone(timezone.utc)
        except ValueError:
            return None
    return None


def _literal(expression: str | None) -> str | None:
    text = (expression or "").strip()
    if text[:1] in ("'", '"'):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, str) else None
    return text or None


def _case_limits(migration: _Migration, row: dict, calendar, pauses, extended_workdays) -> dict:
    """The case's committed and statutory limits and yellow threshold under the new process properties."""
    old = (migration.source.properties or {}).get("extensions", {})
    new = (migration.target.properties or {}).get("extensions", {})
    values = {}
    for name, column in (("committedLimit", "due_at"), ("statutoryLimit", "statutory_due_at")):
        if old.get(name) == new.get(name):
            continue
        deadline = clock.deadline_from(calendar, row["started_at"], new.get(name))
        due = deadline.at if deadline else None
        for pause in pauses:
            if pause.ended_at is not None:
                due = clock.shift(calendar, due, pause.started_at, pause.ended_at)
        if due is not None and column == "due_at" and extended_workdays:
            due = calendar.add_working_seconds(due, extended_workdays * calendar.office_hours.seconds_per_day).at
        values[column] = due
    if old.get("yellowThreshold") != new.get("yellowThreshold"):
        values["yellow_seconds"] = clock.threshold_seconds(calendar, new.get("yellowThreshold"))
    return values


def _task_values(conn, spiff, task_row, dues: dict, calendar, case_yellow) -> dict:
    spec = spiff.task_spec
    settings = projection.extensions(spec)
    departments = resolve_departments(conn, _groups(spiff))
    values = {"bpmn_id": spec.bpmn_id or spec.name, "name": spec.bpmn_name or spec.bpmn_id, "lane": spec.lane,
              "departments": departments,
              "yellow_seconds": clock.threshold_seconds(calendar, settings.get("yellowThreshold")) or case_yellow,
              "due_at": _boundary_due(spiff, dues) or task_row["due_at"],
              "assignee": task_row["assignee"], "claimed_at": task_row["claimed_at"]}
    if departments != list(task_row["departments"] or []) and task_row["assignee"]:
        # The step now belongs elsewhere: its clerk no longer may hold it, so it goes back to the queue.
        values.update(assignee=settings.get("camunda:assignee"), claimed_at=None)
    return values


def _boundary_due(task, dues: dict) -> datetime | None:
    found = [dues[t.id] for t in clock.limit_timers(task) if t.id in dues]
    return min(found) if found else None


def _groups(task) -> list[str]:
    groups = []
    for group in task_departments(task.task_spec):
        if group.startswith("${") and group.endswith("}"):
            value = task.data.get(group[2:-1].strip())
            groups.extend([str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)] if value else [])
        else:
            groups.append(group)
    return groups


def _extensions(conn, instance_id: int) -> dict:
    """Working days of 延期 granted: task id -> days, None -> the case's own limit."""
    granted = {}
    for row in conn.execute(select(audit_event.c.task_id, audit_event.c.data).where(
            audit_event.c.instance_id == instance_id, audit_event.c.type == "limit_extended")):
        data = row.data if isinstance(row.data, dict) else json.loads(row.data)
        granted[row.task_id if data.get("scope") == "task" else None] = int(data.get("workdays") or 0)
    return granted


# ---- storing ------------------------------------------------------------------------------------

def _migrate_one(db: Database, migration: _Migration, instance_id: int, actor: str | None) -> dict:
    def run(conn):
        row = db.lock_instance(conn, instance_id)
        if row is None:
            raise NotFound(f"no case {instance_id}")
        now = db.config.now()
        plan = _plan_case(conn, migration, dict(row), calendar_for(db, conn), now)
        if not plan.movable:
            return plan.report()
        _store(conn, plan, now, actor)
        return plan.report() | {"migrated": True}

    return db.run(run)


def _store(conn, plan: _Plan, now: datetime, actor: str | None) -> None:
    row, instance_id = plan.row, plan.row["id"]
    open_rows = conn.execute(select(human_task).where(human_task.c.id.in_(list(plan.task_values)))).mappings().all()
    task_ids = list(plan.task_values)
    queues = {d for r in open_rows for d in _queues(r["departments"])}
    queue = [dict(r) for r in conn.execute(_queue_rows(select(task_queue), queues, task_ids)).mappings()]
    timers = conn.execute(select(timer.c.task_guid, timer.c.bpmn_id, timer.c.due_at)
                          .where(timer.c.instance_id == instance_id)).all()
    before = {
        "row": {"definition_id": row["definition_id"], "due_at": _iso(row["due_at"]),
                "statutory_due_at": _iso(row["statutory_due_at"]), "yellow_seconds": row["yellow_seconds"]},
        "tasks": [{"id": r["id"], "bpmn_id": r["bpmn_id"], "name": r["name"], "lane": r["lane"],
                   "departments": r["departments"], "due_at": _iso(r["due_at"]), "yellow_seconds": r["yellow_seconds"],
                   "assignee": r["assignee"], "claimed_at": _iso(r["claimed_at"])} for r in open_rows],
        "queue": queue,
        "timers": [{"task_guid": t.task_guid, "bpmn_id": t.bpmn_id, "due_at": _iso(t.due_at)} for t in timers],
    }
    revision = row["revision"] + 1
    mapping = {"steps": plan.steps, "timers": plan.timers}
    conn.execute(case_migration.insert().values(
        instance_id=instance_id, from_definition_id=plan.migration.source.id,
        to_definition_id=plan.migration.target.id, migrated_at=now, migrated_by=actor, revision_after=revision,
        state_before=plan.body_before, projection_before=before, mapping=mapping))
    write_state(conn, instance_id, plan.body_after)
    for task_id, values in plan.task_values.items():
        conn.execute(update(human_task).where(human_task.c.id == task_id).values(**values))
    if plan.task_values:
        conn.execute(_queue_rows(delete(task_queue), queues, task_ids))
        conn.execute(task_queue.insert(), [{"department_key": d, "human_task_id": task_id}
                                           for task_id, values in plan.task_values.items()
                                           for d in values["departments"] or [projection.WINDOW_QUEUE]])
    conn.execute(delete(timer).where(timer.c.instance_id == instance_id))
    wanted = [{"instance_id": instance_id, "task_guid": str(task.id),
               "bpmn_id": task.task_spec.bpmn_id or task.task_spec.name, "due_at": clock.timer_due(task)}
              for task in clock.waiting_timers(plan.workflow)]
    wanted = [w for w in wanted if w["due_at"] is not None]
    if wanted:
        conn.execute(timer.insert(), wanted)
    conn.execute(update(process_instance).where(process_instance.c.id == instance_id).values(
        definition_id=plan.migration.target.id, revision=revision, **plan.case_values))
    audit.record(conn, now, actor, "case_migrated", instance_id, data={
        "from_version": plan.migration.source.version, "to_version": plan.migration.target.version,
        "from_definition_id": plan.migration.source.id, "to_definition_id": plan.migration.target.id,
        "due_at": _iso(plan.case_values.get("due_at", row["due_at"])), "previous_due_at": _iso(row["due_at"]),
        **mapping})


# ---- small helpers --------------------------------------------------------------------------------

def _decode(state: dict, specs) -> object:
    """snapshot.decode without rebuilding the specs from JSON for every case (half the cost of a batch).

    The deployed specs are shared read-only, as start_case already shares them between new workflows;
    this is SpiffWorkflow 3.2's BpmnWorkflowConverter.from_dict with the spec restore left out.
    """
    state.pop("serializer_version", None)
    converter = _registry.convert_from_dict[state["typename"]].args[0].__self__
    workflow = converter.target_class(specs.spec, dict(specs.subprocess_specs), deserializing=True)
    workflow.tasks = converter.mapping_from_dict(state["tasks"], UUID, workflow=workflow)
    workflow.task_tree = workflow.tasks.get(UUID(state["root"]))
    converter.set_default_attributes(workflow, state)
    converter.subprocesses_from_dict(state["subprocesses"], workflow)
    workflow.bpmn_events = _registry.restore(state.pop("bpmn_events", []))
    workflow.script_engine = script_engine
    return workflow


def _queues(departments) -> list[str]:
    return list(departments or []) + [projection.WINDOW_QUEUE]


def _queue_rows(statement, queues: set[str], task_ids: list[int]):
    # task_queue's key starts with the department: naming the departments keeps this an index lookup,
    # where human_task_id alone would scan every queued task of every case.
    return statement.where(task_queue.c.department_key.in_(sorted(queues)), task_queue.c.human_task_id.in_(task_ids))


def _require(user: User) -> None:
    if not user.has_role(*MIGRATE_ROLES):
        raise PermissionDenied("only designers and administrators may migrate cases")


def _load_version(conn, key: str, version: int) -> _Version:
    row = conn.execute(select(process_definition.c.id, process_definition.c.properties,
                              process_definition.c.spec_json)
                       .where(process_definition.c.key == key, process_definition.c.version == version)).first()
    if row is None:
        raise NotFound(f"process {key!r} has no version {version}")
    return _Version(row.id, key, version, row.properties or {}, load_specs(row.id, row.spec_json))


def _running_on(conn, definition_id: int):
    return conn.execute(select(process_instance).where(process_instance.c.definition_id == definition_id,
                                                       process_instance.c.status == "running")
                        .order_by(process_instance.c.id)).mappings().all()


def _versions(conn, *definition_ids: int) -> dict:
    return {r.id: r.version for r in conn.execute(select(process_definition.c.id, process_definition.c.version)
                                                  .where(process_definition.c.id.in_(definition_ids)))}


def _expression(spec) -> str | None:
    definition = getattr(spec, "event_definition", None)
    return definition.expression if isinstance(definition, TimerEventDefinition) else None


def _due_of(old: _Before | None) -> datetime | None:
    value = old.internal_data.get("event_value") if old is not None else None
    if not isinstance(value, str) or value == clock.FROZEN_UNTIL:
        return None
    return TimerEventDefinition.get_datetime(value).astimezone(timezone.utc)


def _is_plumbing(spec) -> bool:
    """SpiffWorkflow's own helper tasks (Start, End, BoundaryEventSplit...) carry no BPMN id."""
    return not getattr(spec, "bpmn_id", None)


def _label(spec) -> str:
    name = getattr(spec, "bpmn_name", None)
    bpmn_id = getattr(spec, "bpmn_id", None) or spec.name
    return f"{name}（{bpmn_id}）" if name else bpmn_id


def _step_report(task_row, spiff, values) -> dict:
    report = {"task_id": task_row["id"], "bpmn_id": task_row["bpmn_id"], "name": task_row["name"],
              "departments": task_row["departments"], "due_at": _iso(task_row["due_at"])}
    if values is not None:
        report.update(to_bpmn_id=values["bpmn_id"], to_name=values["name"], to_departments=values["departments"],
                      new_due_at=_iso(values["due_at"]), unclaimed=values["assignee"] != task_row["assignee"])
    return report


def _timer_report(task, previous, due, restarted: bool) -> dict:
    return {"task_guid": str(task.id), "bpmn_id": task.task_spec.bpmn_id, "due_at": _iso(previous),
            "new_due_at": _iso(due), "restarted": restarted}


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat() if moment is not None else None


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
