"""Process harness: deploy processes/ for real, drive a case by BPMN id as a department's clerk, reloading every step."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy import select

from engine import deploy, runtime, worklist
from engine.snapshot import decode, load_specs, read_state, snapshots
from engine.store import Database, process_definition, process_instance

PROCESSES = Path(__file__).resolve().parents[2] / "processes"

try:  # the timer sweep every worker runs; a case-by-case wake-up until it exists
    from engine.timers import sweep as _sweep
except ImportError:  # pragma: no cover - only before engine/timers.py landed
    _sweep = None


def deploy_processes(db: Database) -> dict:
    """Deploy every flow in processes/ the way `approvals deploy processes/` does."""
    return {v.key: v for v in deploy.deploy(db, deploy.read_paths([PROCESSES]), "admin")}


def guide_of(key: str) -> dict:
    return yaml.safe_load((PROCESSES / key / f"{key}.guide.yaml").read_text(encoding="utf-8"))


def reload() -> None:
    """Forget the live workflows so that the next step decodes the case from the database."""
    snapshots.clear()


def fire_timers(db: Database, instance_id: int | None = None) -> int:
    reload()
    try:
        if _sweep is not None:
            return _sweep(db)
        return runtime.fire_due_timers(db, instance_id)
    finally:
        reload()


@dataclass
class Case:
    """One running case, seen through the eyes of each department's clerk."""

    db: Database
    clerks: dict            # department key -> User (the clerk who works that department's queue)
    id: int
    case_no: str
    key: str

    @classmethod
    def start(cls, db: Database, clerks: dict, key: str, data: dict, actor: str = "window1") -> "Case":
        reload()
        started = runtime.start_case(db, key, data, actor)
        reload()
        return cls(db, clerks, started["id"], started["case_no"], key)

    # ---- what each department sees ---------------------------------------------------------
    def seen_by(self, department: str) -> list[str]:
        """BPMN ids of this case's open tasks in the worklist of the department's clerk, sorted."""
        return sorted(t["bpmn_id"] for t in worklist.list_tasks(self.db, self.clerks[department], limit=500)
                      if t["instance_id"] == self.id)

    def worklists(self) -> dict[str, list[str]]:
        """Every department that has something of this case to do, with what it sees."""
        seen = {department: self.seen_by(department) for department in self.clerks}
        return {department: tasks for department, tasks in seen.items() if tasks}

    def task(self, step: str, department: str) -> dict:
        """The department's one open task of this case, named by BPMN id or by its name (e.g. 公章刻制备案)."""
        found = [t for t in worklist.list_tasks(self.db, self.clerks[department], limit=500)
                 if t["instance_id"] == self.id and step in (t["bpmn_id"], t["name"])]
        assert len(found) == 1, f"{department} sees {len(found)} open {step!r} tasks of case {self.case_no}"
        return found[0]

    # ---- doing the work ----------------------------------------------------------------------
    def complete(self, step: str, department: str, **values) -> dict:
        """Complete the department's open task with these form values, as its clerk, from a cold start."""
        task = self.task(step, department)
        reload()
        try:
            return runtime.complete(self.db, task["id"], self.clerks[department], values)
        finally:
            reload()

    def fire_timers(self) -> int:
        return fire_timers(self.db, self.id)

    # ---- what the engine recorded ------------------------------------------------------------
    def instance(self) -> dict:
        return worklist.get_instance(self.db, self.id)

    @property
    def status(self) -> str:
        return self.instance()["status"]

    def events(self, type_: str | None = None) -> list[dict]:
        return [e for e in self.instance()["events"] if type_ is None or e["type"] == type_]

    def tasks(self, bpmn_id: str) -> list[dict]:
        """Every human task (open, completed, cancelled) the case has had for this BPMN id, oldest first."""
        return [t for t in self.instance()["tasks"] if t["bpmn_id"] == bpmn_id]

    def data_at(self, bpmn_id: str) -> dict:
        """Case data as the latest step with this BPMN id holds it, read back from the stored workflow."""
        with self.db.read() as conn:
            row = conn.execute(
                select(process_instance.c.definition_id, process_definition.c.spec_json)
                .join(process_definition, process_definition.c.id == process_instance.c.definition_id)
                .where(process_instance.c.id == self.id)).first()
            state = read_state(conn, self.id)
        workflow = decode(state, load_specs(row.definition_id, row.spec_json))
        # A step inside a loop (退回) runs again as a descendant of its earlier run, so the task-tree
        # order breaks ties between runs that happened at the same (frozen) moment.
        steps = [(t.last_state_change, order, t) for order, t in enumerate(workflow.get_tasks())
                 if t.task_spec.bpmn_id == bpmn_id and t.data]
        assert steps, f"case {self.case_no} has not reached {bpmn_id!r}"
        return dict(max(steps, key=lambda step: step[:2])[2].data)


def materials(guide: dict, tasks: set[str] | None = None, missing: tuple[str, ...] = ()) -> dict:
    """The intake checklist ticked for every material of the given items except `missing`."""
    keys = {m["key"] for item in guide["items"] if tasks is None or item["task"] in tasks
            for m in item.get("materials", [])}
    return {f"mat_{key}": key not in missing for key in sorted(keys)}
