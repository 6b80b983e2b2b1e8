"""加签/减签: add a department's copy to a running countersign (会签), or remove an open copy from it."""
from __future__ import annotations

import re
from collections.abc import MutableMapping

from sqlalchemy import select, update
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import ParallelMultiInstanceTask
from SpiffWorkflow.util.task import TaskState

from .accounts import User, department_names, resolve_departments
from .bpmn import task_departments
from .errors import Conflict, InvalidInput, PermissionDenied, Problem
from .runtime import WorkflowFailed, mutate_case
from .scripting import using_calendar
from .snapshot import find_task, load_specs
from .store import Database, app_user, audit_event, department, human_task, process_definition, process_instance

# Besides these, a lead (科室负责人) of a department that holds a copy of the countersign may change it.
OVERSIGHT_ROLES = ("supervisor", "admin")
REMOVED = "removed"   # the human task status of a copy taken away by 减签: off every list, not a decision
_MAX_REASON = 1000


def add_countersigner(db: Database, task_id: int, user: User, department: str, reason: str) -> dict:
    """加签: give `department` its own copy of the countersign that task `task_id` (any open copy) belongs to."""
    added = {}

    def action(conn, case):
        sign = _Countersign.of(case, task_id)
        sign.require_may_change(conn, user)
        text, reason_problem = _reason(reason)
        found, problem = _known_department(conn, department)
        if found is not None and found[0] in sign.departments(conn):
            problem = Problem(f"{found[1]} already has a copy of this countersign", field="department")
        problems = [p for p in (problem, reason_problem) if p is not None]
        if problems:
            raise InvalidInput(problems)
        key, name = found
        child = sign.add(key, name)
        added["guid"] = str(child.id)
        case.event("countersigner_added", task_id, bpmn_id=sign.bpmn_id, department=key, department_name=name,
                   reason=text, task_guid=added["guid"])
        return True

    case = mutate_case(db, None, user.username, action, task_id=task_id)
    with db.read() as conn:
        new_task = conn.execute(select(human_task.c.id).where(
            human_task.c.instance_id == case.row["id"], human_task.c.task_guid == added["guid"],
            human_task.c.status == "open")).scalar()
    return {"task_id": task_id, "instance_id": case.row["id"], "department": department, "new_task_id": new_task,
            "event": "countersigner_added"}


def remove_countersigner(db: Database, task_id: int, user: User, reason: str) -> dict:
    """减签: take the open copy `task_id` away; when every copy left is signed (or enough are), the flow moves on."""
    def action(conn, case):
        row = case.task_row
        if row["status"] == "completed":
            raise Conflict(f"task {task_id} is already signed; a signed copy cannot be removed")
        sign = _Countersign.of(case, task_id)
        sign.require_may_change(conn, user)
        text, problem = _reason(reason)
        if problem is not None:
            raise InvalidInput(problem)
        sign.remove()
        conn.execute(update(human_task).where(human_task.c.id == task_id).values(
            status=REMOVED, completed_at=case.now))
        case.completed_task = task_id   # closed here: the projection only takes it off the queues
        case.event("countersigner_removed", task_id, bpmn_id=sign.bpmn_id, departments=row["departments"],
                   department_names=_names(conn, row["departments"]), assignee=row["assignee"], reason=text)
        with using_calendar(case.calendar):
            sign.finish_if_done()
        return True

    case = mutate_case(db, None, user.username, action, task_id=task_id, then_step=True)
    return {"task_id": task_id, "instance_id": case.row["id"], "case_status": case.row["status"],
            "event": "countersigner_removed"}


def countersign_panel(db: Database, task_id: int, user: User) -> dict | None:
    """What the task page shows of the countersign an open task belongs to (None when it is not one): its
    current copies, whether `user` may add or remove copies, and the departments that may still be added.

    Read from the projection and the deployed spec alone, without decoding the workflow; the actions check
    everything again on the live workflow.
    """
    with db.read() as conn:
        row = conn.execute(select(human_task.c.instance_id, human_task.c.bpmn_id, human_task.c.status)
                           .where(human_task.c.id == task_id)).first()
        if row is None or row.status != "open":
            return None
        case = conn.execute(select(process_instance.c.status, process_instance.c.definition_id,
                                   process_definition.c.spec_json)
                            .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                            .where(process_instance.c.id == row.instance_id)).first()
        if case is None or case.status != "running" or not _countersign_spec(
                load_specs(case.definition_id, case.spec_json), row.bpmn_id):
            return None
        rows = conn.execute(select(human_task.c.id, human_task.c.task_guid, human_task.c.departments,
                                   human_task.c.status, human_task.c.assignee, human_task.c.completed_by,
                                   human_task.c.created_at)
                            .where(human_task.c.instance_id == row.instance_id, human_task.c.bpmn_id == row.bpmn_id)
                            .order_by(human_task.c.id)).mappings().all()
        added = {(e.data or {}).get("task_guid") for e in conn.execute(
            select(audit_event.c.data).where(audit_event.c.instance_id == row.instance_id,
                                             audit_event.c.type == "countersigner_added"))}
        names = department_names(conn)
        people = dict(conn.execute(select(app_user.c.username, app_user.c.name).where(app_user.c.username.in_(
            {r[k] for r in rows for k in ("assignee", "completed_by")} - {None}))).all())
    # This round's copies: those opened when the countersign started (the latest such moment, should the
    # step have run before) and those added to it since.
    started = max((r["created_at"] for r in rows if r["task_guid"] not in added), default=None)
    copies = [r for r in rows if r["status"] in ("open", "completed")
              and (started is None or r["created_at"] >= started)]
    holding = {d for r in copies for d in r["departments"] or []}
    may_change = user.has_role(*OVERSIGHT_ROLES) or (user.has_role("lead") and bool(set(user.departments) & holding))
    return {
        "copies": [{"id": r["id"], "departments": r["departments"] or [],
                    "department_names": [names.get(d, d) for d in r["departments"] or []],
                    "status": r["status"], "assignee": r["assignee"], "completed_by": r["completed_by"],
                    "holder_name": people.get(r["completed_by"] or r["assignee"], r["completed_by"] or r["assignee"])}
                   for r in copies],
        "may_change": may_change,
        "choices": [{"key": key, "name": name} for key, name in sorted(names.items()) if key not in holding]
        if may_change else [],
    }


class _Countersign:
    """A running parallel multi-instance user task whose copies each go to one department of a {key: name} map."""

    def __init__(self, case, copy, parent):
        self.case, self.copy, self.parent = case, copy, parent
        self.spec = parent.task_spec
        self.bpmn_id = copy.task_spec.bpmn_id or copy.task_spec.name

    @classmethod
    def of(cls, case, task_id: int) -> "_Countersign":
        row = case.task_row
        if row["status"] != "open":
            raise Conflict(f"task {task_id} is {row['status']}")
        copy = find_task(case.workflow, row["task_guid"])
        if copy is None or copy.state != TaskState.READY:
            raise Conflict(f"task {task_id} is no longer ready")
        parent = copy.parent
        spec = getattr(parent, "task_spec", None)
        if (not _is_countersign(spec, copy.task_spec) or parent.state != TaskState.STARTED
                or not isinstance(spec.data_output.get(parent), MutableMapping)):
            raise Conflict(f"task {task_id} ({row['name'] or row['bpmn_id']}) is not a countersign: only a parallel "
                           "multi-instance step over a department map with candidate groups ${department} is")
        return cls(case, copy, parent)

    @property
    def collection(self) -> MutableMapping:
        return self.spec.data_output.get(self.parent)

    def instances(self) -> list:
        return [c for c in self.parent.children if c.task_spec.name == self.spec.task_spec]

    def departments(self, conn) -> set[str]:
        """Departments holding a copy, open or signed (a removed copy no longer counts)."""
        keys = set(self.collection)
        guids = [str(c.id) for c in self.instances()]
        for row in conn.execute(select(human_task.c.departments).where(
                human_task.c.instance_id == self.case.row["id"], human_task.c.task_guid.in_(guids),
                human_task.c.status.in_(["open", "completed"]))):
            keys.update(row.departments or [])
        for child in self.instances():
            item = child.data.get(self.spec.output_item.bpmn_id)
            if isinstance(item, str):
                keys.update(resolve_departments(conn, [item]))
        return keys

    def require_may_change(self, conn, user: User) -> None:
        if user.has_role(*OVERSIGHT_ROLES):
            return
        if user.has_role("lead") and set(user.departments) & self.departments(conn):
            return
        raise PermissionDenied("only a lead (科室负责人) of a department in this countersign, or a supervisor, "
                               "may add or remove countersigners")

    def add(self, key: str, name: str):
        """Create the new copy the way SpiffWorkflow's create_child does, and record it in the department map."""
        spec, parent = self.spec, self.parent
        self.collection[key] = name
        task_spec = parent.workflow.spec.task_specs[spec.task_spec]
        if not task_spec.completed_event.is_connected(spec.merge_child):
            task_spec.completed_event.connect(spec.merge_child)
        child = parent._add_child(task_spec, TaskState.WAITING)
        child.triggered = True
        # The element variable (e.g. `department`) holds the map's value, as for the copies made at the start.
        child.data[spec.output_item.bpmn_id] = name
        child.internal_data["key_or_index"] = key
        child.task_spec._update(child)
        if child.state != TaskState.READY:
            raise Conflict(f"the new copy for {name} could not be opened")
        return child

    def remove(self) -> None:
        instances = self.instances()
        if len(instances) <= 1:
            raise Conflict("the last copy of a countersign cannot be removed")
        key = self.copy.internal_data.get("key_or_index")
        self.copy.cancel()
        self.copy.workflow._remove_task(self.copy.id)
        if key is not None:
            self.collection.pop(key, None)

    def finish_if_done(self) -> None:
        """What merging a signature does: once every copy left is signed, or the completion condition holds,
        the countersign is ready to finish (the engine then runs it on); the copies still open are withdrawn."""
        instances = self.instances()
        done = [c for c in instances if c.state == TaskState.COMPLETED]
        if len(done) == len(instances):
            self.parent._set_state(TaskState.READY)
            return
        if not done or not self.spec.condition:
            return
        merged = self.parent.internal_data.get("merged") or []
        last = next((c for c in done if str(c.id) == merged[-1]), done[-1]) if merged else done[-1]
        counters = {"nrOfInstances": len(instances), "nrOfCompletedInstances": len(done),
                    "nrOfActiveInstances": len(instances) - len(done)}
        try:
            met = self.parent.workflow.script_engine.environment.evaluate(
                self.spec.condition, {**last.data, **counters})
        except Exception as exc:  # a diagram's condition failing: name the element, save nothing
            raise WorkflowFailed(f"step {self.bpmn_id!r} failed: completion condition: {exc}") from None
        if met:
            for child in instances:
                if child.state != TaskState.COMPLETED:
                    child.cancel()
            self.parent._set_state(TaskState.READY)


def _is_countersign(spec, child_spec) -> bool:
    """A parallel multi-instance user task over a collection whose element variable names its candidate group."""
    element = getattr(spec, "output_item", None)
    if not isinstance(spec, ParallelMultiInstanceTask) or spec.data_output is None or element is None:
        return False
    group = re.compile(r"\$\{\s*%s\s*\}" % re.escape(element.bpmn_id))
    return any(group.fullmatch(g) for g in task_departments(child_spec))


def _countersign_spec(specs, bpmn_id: str):
    for process in (specs.spec, *specs.subprocess_specs.values()):
        for spec in process.task_specs.values():
            if getattr(spec, "bpmn_id", None) == bpmn_id and isinstance(spec, ParallelMultiInstanceTask):
                child = process.task_specs.get(spec.task_spec)
                return spec if child is not None and _is_countersign(spec, child) else None
    return None


def _reason(reason) -> tuple[str, Problem | None]:
    text = reason.strip() if isinstance(reason, str) else ""
    if not text:
        return text, Problem("give the reason", field="reason")
    if len(text) > _MAX_REASON:
        return text, Problem(f"at most {_MAX_REASON} characters", field="reason")
    return text, None


def _names(conn, keys) -> list[str]:
    names = dict(conn.execute(select(department.c.key, department.c.name).where(
        department.c.key.in_(list(keys or [])))).all())
    return [names.get(k, k) for k in keys or []]


def _known_department(conn, key) -> tuple[tuple[str, str] | None, Problem | None]:
    """(key, name) of a department named by its key, or the problem with what was given."""
    if not isinstance(key, str) or not key.strip():
        return None, Problem("choose a department", field="department")
    row = conn.execute(select(department.c.key, department.c.name).where(department.c.key == key.strip())).first()
    if row is None:
        return None, Problem(f"no department {key.strip()!r}", field="department")
    return (row.key, row.name), None
