"""Serialized workflow state: spec codec and incremental snapshots that re-encode only tasks that changed."""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from uuid import UUID

from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SERIALIZER_VERSION, BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from SpiffWorkflow.exceptions import TaskNotFoundException
from SpiffWorkflow.util.task import TaskState

from .scripting import script_engine

_registry = BpmnWorkflowSerializer.configure(CAMUNDA_CONFIG)
_serializer = BpmnWorkflowSerializer(_registry)
_FINISHED = TaskState.COMPLETED | TaskState.CANCELLED | TaskState.ERROR
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


def forget_specs() -> None:
    """Drop parsed specs (ids are only reused when a database is wiped, as tests do)."""
    with _spec_lock:
        _spec_cache.clear()


def new_workflow(specs: Specs) -> BpmnWorkflow:
    return BpmnWorkflow(specs.spec, specs.subprocess_specs, script_engine=script_engine)


@dataclass
class Snapshot:
    """A live workflow plus what was last saved from it: each task's encoded form, open tasks, timer rows."""

    workflow: BpmnWorkflow
    revision: int
    fragments: dict = field(default_factory=dict)   # UUID -> (fingerprint, json text)
    # The projection as last written (None: unknown, read it from the database).
    open_tasks: dict | None = None                  # task guid -> human_task id
    timers: dict | None = None                      # task guid -> (due_at, bpmn_id)

    def encode(self) -> str:
        """Encode the whole workflow state, re-encoding only tasks whose fingerprint moved."""
        text = self._encode()
        if VERIFY_INCREMENTAL and text != Snapshot(self.workflow, self.revision)._encode():
            raise AssertionError("incremental snapshot differs from a full encode: a task changed "
                                 "without its fingerprint moving")
        return text

    def _encode(self) -> str:
        workflow = self.workflow
        parts = []
        seen = set()
        for task_id, task in workflow.tasks.items():
            parts.append(self._task_json(task_id, task))
            seen.add(task_id)
        subprocesses = {}
        for sub_id, sub in workflow.subprocesses.items():
            sub_parts = []
            for task_id, task in sub.tasks.items():
                sub_parts.append(self._task_json(task_id, task))
                seen.add(task_id)
            subprocesses[str(sub_id)] = _workflow_head(sub) | {
                "parent_task_id": str(sub.parent_task_id), "spec": sub.spec.name, "tasks": "@",
                "typename": _registry.typenames[type(sub)],
            }, sub_parts
        if len(seen) != len(self.fragments):
            for stale in set(self.fragments) - seen:
                del self.fragments[stale]
        head = _workflow_head(workflow) | {
            "bpmn_events": _registry.convert(workflow.bpmn_events),
            "typename": _registry.typenames[type(workflow)],
            "serializer_version": SERIALIZER_VERSION,
        }
        # Stitch pre-encoded task fragments into the envelope instead of re-encoding them.
        head_json = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
        sub_json = ",".join(
            f'"{sub_id}":' + json.dumps(sub_head, ensure_ascii=False, separators=(",", ":")).replace(
                '"tasks":"@"', '"tasks":{' + ",".join(sub_parts) + "}")
            for sub_id, (sub_head, sub_parts) in subprocesses.items()
        )
        return head_json + ',"tasks":{' + ",".join(parts) + '},"subprocesses":{' + sub_json + "}}"

    def _task_json(self, task_id: UUID, task) -> str:
        fingerprint = _fingerprint(task)
        cached = self.fragments.get(task_id)
        if cached is not None and fingerprint is not None and cached[0] == fingerprint:
            return cached[1]
        text = f'"{task_id}":' + json.dumps(_registry.convert(task), ensure_ascii=False, separators=(",", ":"))
        self.fragments[task_id] = (fingerprint, text)
        return text


def _fingerprint(task):
    """What decides a task's encoded form, or None when it cannot be known without encoding it.

    SpiffWorkflow changes a task's state (and last_state_change) whenever it changes its data, except in
    a running multi-instance or sub-process task, which merges its children's results in place: those and
    their children are always re-encoded. A task's data is stored as a delta against its parent's, so a
    live parent's data is part of the fingerprint; timers are covered by their internal data.
    """
    parent = task.parent
    if task.state & TaskState.STARTED or (parent is not None and parent.state & TaskState.STARTED):
        return None
    internal = task.internal_data
    mine = (task.state, task.last_state_change, len(task._children), task.triggered, len(task.data),
            id(task.data), repr(internal) if internal else None)
    if parent is None or parent.state & _FINISHED:
        return mine
    # The delta is taken against the parent's keys: a live parent's data counts too.
    return mine + (parent.state, parent.last_state_change, id(parent.data), len(parent.data))


def _workflow_head(workflow) -> dict:
    return {
        "data": _registry.convert(_registry.clean(workflow.data)),
        "correlations": workflow.correlations,
        "last_task": str(workflow.last_task.id) if workflow.last_task is not None else None,
        "success": workflow.success,
        "completed": workflow.completed,
        "root": str(workflow.task_tree.id),
    }


def decode(body: str, specs: Specs) -> BpmnWorkflow:
    state = json.loads(body)
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
