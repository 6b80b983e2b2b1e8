"""Serialized workflow state: spec codec and incremental snapshots that re-encode only tasks that changed."""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from uuid import UUID

import orjson
from sqlalchemy import bindparam, delete, select, update
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SERIALIZER_VERSION, BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import MultiInstanceTask
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from SpiffWorkflow.exceptions import TaskNotFoundException
from SpiffWorkflow.util.task import TaskState

from .scripting import script_engine
from .statements import HotStatement
from .store import workflow_state, workflow_task

_registry = BpmnWorkflowSerializer.configure(CAMUNDA_CONFIG)
_serializer = BpmnWorkflowSerializer(_registry)
_FINISHED = TaskState.COMPLETED | TaskState.CANCELLED | TaskState.ERROR
_STARTED = TaskState.STARTED
_READ_HEAD = select(workflow_state.c.body).where(workflow_state.c.instance_id == bindparam("instance_id"))
_READ_TASKS = select(workflow_task.c.task_guid, workflow_task.c.workflow, workflow_task.c.body,
                     workflow_task.c.seq).where(
    workflow_task.c.instance_id == bindparam("instance_id")).order_by(workflow_task.c.seq)
_INSERT_HEAD = HotStatement(workflow_state.insert(), columns=("instance_id", "body"))
_UPDATE_HEAD = HotStatement(update(workflow_state).where(workflow_state.c.instance_id == bindparam("case_id"))
                            .values(body=bindparam("new_body")))
_INSERT_TASK = HotStatement(workflow_task.insert(), columns=("instance_id", "seq", "task_guid", "workflow", "body"))
_UPDATE_TASK = HotStatement(update(workflow_task).where(
    workflow_task.c.instance_id == bindparam("case_id"), workflow_task.c.seq == bindparam("row"))
    .values(workflow=bindparam("new_workflow"), body=bindparam("new_body")))
_DELETE_TASK = HotStatement(delete(workflow_task).where(
    workflow_task.c.instance_id == bindparam("case_id"), workflow_task.c.seq == bindparam("row")))
# The test suite turns this on, so every save in every test proves the fingerprints right.
VERIFY_INCREMENTAL = False


def tasks_in(workflow: BpmnWorkflow, state_mask: int):
    """Tasks of the workflow and its sub-processes in the given states.

    A plain scan of the task dictionaries: SpiffWorkflow's filtered tree iterator costs several times more
    and the engine asks this on every save.
    """
    for task in workflow.tasks.values():
        if task.state & state_mask:
            yield task
    for sub in workflow.subprocesses.values():
        for task in sub.tasks.values():
            if task.state & state_mask:
                yield task


def completed_in_order(workflow: BpmnWorkflow) -> list:
    """Completed tasks in the order they finished; tree order breaks ties (a redo sits below its first run)."""
    done = [(t.last_state_change, order, t) for order, t in enumerate(workflow.get_tasks())
            if t.state == TaskState.COMPLETED]
    return [t for _, _, t in sorted(done, key=lambda item: item[:2])]


def case_data(workflow: BpmnWorkflow) -> dict:
    """The case's variables as they stand: every completed step's data, later steps winning."""
    data: dict = {}
    for task in completed_in_order(workflow):
        data.update(task.data)
    data.update(workflow.data)
    return data


def find_task(workflow: BpmnWorkflow, guid: str | UUID):
    """The task with this id (sub-processes included), or None; SpiffWorkflow itself raises instead."""
    try:
        return workflow.get_task_from_id(guid if isinstance(guid, UUID) else UUID(guid))
    except TaskNotFoundException:
        return None


def dump_specs(spec, subprocess_specs: dict) -> str:
    return json.dumps({
        "spec": _registry.convert(spec),
        "subprocess_specs": {name: _registry.convert(s) for name, s in subprocess_specs.items()},
    }, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Specs:
    spec: object
    subprocess_specs: dict
    spec_json: str


_spec_cache: "OrderedDict[int, Specs]" = OrderedDict()
_spec_lock = threading.Lock()


def load_specs(definition_id: int, spec_json: str) -> Specs:
    """Deployed specs never change, so each process keeps one parsed copy per definition."""
    with _spec_lock:
        cached = _spec_cache.get(definition_id)
        if cached is not None:
            _spec_cache.move_to_end(definition_id)
            return cached
    raw = json.loads(spec_json)
    specs = Specs(
        spec=_registry.restore(raw["spec"]),
        subprocess_specs={name: _registry.restore(s) for name, s in raw["subprocess_specs"].items()},
        spec_json=spec_json,
    )
    with _spec_lock:
        _spec_cache[definition_id] = specs
        while len(_spec_cache) > 256:
            _spec_cache.popitem(last=False)
    return specs


def task_spec_of(specs: Specs, bpmn_id: str):
    """The task spec drawn as `bpmn_id`; for a countersign (multi-instance) the step itself, not its loop."""
    loop = None
    for spec in (specs.spec, *specs.subprocess_specs.values()):
        for task_spec in spec.task_specs.values():
            if task_spec.bpmn_id == bpmn_id:
                if not isinstance(task_spec, MultiInstanceTask):
                    return task_spec
                loop = loop or task_spec
    return loop


def forget_specs() -> None:
    """Drop parsed specs (ids are only reused when a database is wiped, as tests do)."""
    with _spec_lock:
        _spec_cache.clear()


def new_workflow(specs: Specs) -> BpmnWorkflow:
    return BpmnWorkflow(specs.spec, specs.subprocess_specs, script_engine=script_engine)


@dataclass
class Snapshot:
    """A live workflow plus what was last saved from it: each task's encoded form, open tasks, timer rows.

    The stored form is one head row (workflow data, sub-process heads) plus one row per task, so a save writes
    the head and only the tasks whose encoded form changed.
    """

    workflow: BpmnWorkflow
    revision: int
    # UUID -> (fingerprint, json text, workflow key, row seq) of each task as stored ("" keys the case's own
    # workflow; seq numbers the case's task rows in creation order).
    fragments: dict = field(default_factory=dict)
    next_seq: int = 0
    # The projection as last written (None: unknown, read it from the database).
    open_tasks: dict | None = None                  # task guid -> human_task id
    timers: dict | None = None                      # task guid -> (due_at, bpmn_id)

    def save(self, conn, instance_id: int, first: bool = False) -> None:
        """Write what changed since the last save (everything on the first) in the caller's transaction."""
        fresh, changed, removed = self._changes()
        head = _dumps(self._head())
        if first:
            _INSERT_HEAD.execute(conn, {"instance_id": instance_id, "body": head})
        else:
            _UPDATE_HEAD.execute(conn, {"case_id": instance_id, "new_body": head})
        if fresh:
            _INSERT_TASK.execute(conn, [{"instance_id": instance_id, "seq": seq, "task_guid": guid, "workflow": key,
                                         "body": text} for seq, guid, key, text in fresh])
        if changed:
            _UPDATE_TASK.execute(conn, [{"case_id": instance_id, "row": seq, "new_workflow": key, "new_body": text}
                                        for seq, key, text in changed])
        if removed:
            _DELETE_TASK.execute(conn, [{"case_id": instance_id, "row": seq} for seq in removed])
        if VERIFY_INCREMENTAL:
            expected = Snapshot(self.workflow, self.revision).state()
            if self._as_saved() != expected or read_state(conn, instance_id) != expected:
                raise AssertionError("incremental snapshot differs from a full encode: a task changed "
                                     "without its fingerprint moving")

    def encode(self) -> str:
        """The whole workflow state as one JSON text."""
        return _dumps(self.state())

    def state(self) -> dict:
        """The whole workflow state as SpiffWorkflow's serializer reads it (for a snapshot not saved through save())."""
        self._changes()
        return self._as_saved()

    def _as_saved(self) -> dict:
        rows = sorted((seq, str(task_id), key, text) for task_id, (_f, text, key, seq) in self.fragments.items())
        return _assemble(self._head(), ((guid, key, text) for _seq, guid, key, text in rows))

    def _head(self) -> dict:
        workflow = self.workflow
        return _workflow_head(workflow) | {
            "bpmn_events": _registry.convert(workflow.bpmn_events),
            "typename": _registry.typenames[type(workflow)],
            "serializer_version": SERIALIZER_VERSION,
            "tasks": {},
            "subprocesses": {str(sub_id): _workflow_head(sub) | {
                "parent_task_id": str(sub.parent_task_id), "spec": sub.spec.name, "tasks": {},
                "typename": _registry.typenames[type(sub)]} for sub_id, sub in workflow.subprocesses.items()},
        }

    def _changes(self) -> tuple[list, list, list]:
        """Re-encode the tasks whose fingerprint moved: (new task rows, changed task rows, seqs of removed rows)."""
        workflow = self.workflow
        fresh: list = []
        changed: list = []
        seen = self._encode_tasks(workflow.tasks, "", fresh, changed)
        for sub_id, sub in workflow.subprocesses.items():
            seen += self._encode_tasks(sub.tasks, str(sub_id), fresh, changed)
        removed = []
        if seen != len(self.fragments):
            live = set(workflow.tasks).union(*(sub.tasks for sub in workflow.subprocesses.values()))
            for stale in set(self.fragments) - live:
                removed.append(self.fragments.pop(stale)[3])
        return fresh, changed, removed

    def _encode_tasks(self, tasks: dict, key: str, fresh: list, changed: list) -> int:
        """Encode one workflow's tasks into fragments, collecting new and changed ones (this runs on every save)."""
        fragments = self.fragments
        for task_id, task in tasks.items():
            fingerprint = _fingerprint(task, tasks)
            cached = fragments.get(task_id)
            if cached is not None and fingerprint is not None and cached[0] == fingerprint:
                continue
            text = _dumps(_registry.convert(task))
            if cached is None:
                seq = self.next_seq
                self.next_seq += 1
                fresh.append((seq, str(task_id), key, text))
            else:
                seq = cached[3]
                if cached[1] != text or cached[2] != key:
                    changed.append((seq, key, text))
            fragments[task_id] = (fingerprint, text, key, seq)
        return len(tasks)


def _dumps(value) -> str:
    """Compact JSON text. orjson encodes task dictionaries several times faster than json, and every save
    encodes the tasks that changed; json takes what orjson refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _fingerprint(task, tasks: dict):
    """What decides a task's encoded form, or None when it cannot be known without encoding it.

    SpiffWorkflow changes a task's state (and last_state_change) whenever it changes its data, except in
    a running multi-instance or sub-process task, which merges its children's results in place: those and
    their children are always re-encoded. A task's data is stored as a delta against its parent's, so a
    live parent's data is part of the fingerprint; timers are covered by their internal data.
    `tasks` is the task dictionary of the task's own workflow (where its parent is); the attributes are
    read directly because this runs for every task on every save.
    """
    state = task._state
    if state & _STARTED:
        return None
    parent = tasks.get(task._parent)
    parent_state = parent._state if parent is not None else _FINISHED
    if parent_state & _STARTED:
        return None
    internal = task.internal_data
    mine = (state, task.last_state_change, len(task._children), task.triggered, len(task.data),
            id(task.data), repr(internal) if internal else None)
    if parent_state & _FINISHED:
        return mine
    # The delta is taken against the parent's keys: a live parent's data counts too.
    return mine + (parent_state, parent.last_state_change, id(parent.data), len(parent.data))


def _workflow_head(workflow) -> dict:
    return {
        "data": _registry.convert(_registry.clean(workflow.data)),
        "correlations": workflow.correlations,
        "last_task": str(workflow.last_task.id) if workflow.last_task is not None else None,
        "success": workflow.success,
        "completed": workflow.completed,
        "root": str(workflow.task_tree.id),
    }


def _assemble(head: dict, rows) -> dict:
    """A whole serialized workflow from its head and its (guid, workflow key, json text) task rows."""
    # Rows come in creation order, parents first, as SpiffWorkflow's restore needs (a task's data is stored
    # as a delta on its parent's).
    for guid, key, text in rows:
        (head["subprocesses"][key] if key else head)["tasks"][guid] = json.loads(text)
    return head


def read_state(conn, instance_id: int) -> dict | None:
    """A case's whole serialized workflow, as SpiffWorkflow's serializer reads it (None: no such case)."""
    head = conn.execute(_READ_HEAD, {"instance_id": instance_id}).scalar()
    if head is None:
        return None
    return _assemble(json.loads(head), (row[:3] for row in conn.execute(_READ_TASKS, {"instance_id": instance_id})))


def write_state(conn, instance_id: int, state: dict | str) -> None:
    """Replace a case's stored workflow with a whole serialized one (migration and its undo)."""
    state = json.loads(state) if isinstance(state, str) else state
    head = {**state, "tasks": {}, "subprocesses": {sub_id: {**sub, "tasks": {}}
                                                  for sub_id, sub in state.get("subprocesses", {}).items()}}
    rows = [(guid, "", task) for guid, task in state["tasks"].items()]
    rows += [(guid, sub_id, task) for sub_id, sub in state.get("subprocesses", {}).items()
             for guid, task in sub["tasks"].items()]
    conn.execute(delete(workflow_task).where(workflow_task.c.instance_id == instance_id))
    conn.execute(delete(workflow_state).where(workflow_state.c.instance_id == instance_id))
    _INSERT_HEAD.execute(conn, {"instance_id": instance_id,
                                "body": _dumps(head)})
    if rows:
        _INSERT_TASK.execute(conn, [{"instance_id": instance_id, "seq": seq, "task_guid": guid, "workflow": key,
                                     "body": _dumps(task)} for seq, (guid, key, task) in enumerate(rows)])


def stored_snapshot(conn, instance_id: int, revision: int, specs: Specs) -> Snapshot | None:
    """The case's workflow decoded from the database, knowing what is stored so the next save writes only changes."""
    head = conn.execute(_READ_HEAD, {"instance_id": instance_id}).scalar()
    if head is None:
        return None
    rows = conn.execute(_READ_TASKS, {"instance_id": instance_id}).all()
    snapshot = Snapshot(decode(_assemble(json.loads(head), (row[:3] for row in rows)), specs), revision)
    # No fingerprints yet: the first save re-encodes every task and writes those whose text differs.
    snapshot.fragments = {UUID(guid): (None, text, key, seq) for guid, key, text, seq in rows}
    snapshot.next_seq = rows[-1].seq + 1 if rows else 0
    return snapshot


def decode(state: dict | str, specs: Specs) -> BpmnWorkflow:
    state = json.loads(state) if isinstance(state, str) else dict(state)
    state.pop("serializer_version", None)
    # A fresh copy each time: SpiffWorkflow's restore pops keys (task extensions!) out of what it reads.
    fresh = json.loads(specs.spec_json)
    state["spec"] = fresh["spec"]
    state["subprocess_specs"] = fresh["subprocess_specs"]
    workflow = _serializer.from_dict(state)
    workflow.script_engine = script_engine
    return workflow


class SnapshotCache:
    """Process-local cache of live workflows; valid only while the stored revision matches."""

    def __init__(self, size: int = 2048):
        self._items: "OrderedDict[int, Snapshot]" = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def take(self, instance_id: int, revision: int) -> Snapshot | None:
        # Taking removes the entry: a snapshot is mutated by one transaction at a time and
        # only goes back once that transaction has committed.
        with self._lock:
            snapshot = self._items.pop(instance_id, None)
        if snapshot is not None and snapshot.revision == revision:
            return snapshot
        return None

    def put(self, instance_id: int, snapshot: Snapshot) -> None:
        with self._lock:
            self._items[instance_id] = snapshot
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


snapshots = SnapshotCache()
