"""The case clock: limit expressions, and freezing/thawing a workflow's timers while the clock is stopped."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import MultiInstanceTask
from SpiffWorkflow.util.task import TaskState

from .snapshot import tasks_in

# A frozen timer waits here; SpiffWorkflow compares it with "now" and never fires it.
FROZEN_UNTIL = "9999-12-31T00:00:00+00:00"
_LIMIT = re.compile(r"^\s*(workdays|workhours)\(\s*(\d+(?:\.\d+)?)\s*\)\s*$")


def limit_holder(task):
    """The step whose boundary timers set `task`'s limit: the task itself, or for a countersign copy its countersign."""
    parent = task.parent
    return parent if parent is not None and isinstance(parent.task_spec, MultiInstanceTask) else task


def limit_timers(task) -> list:
    """The waiting timers on the boundary of `task`'s limit holder (empty when it has no boundary events)."""
    holder = limit_holder(task)
    split = holder.parent
    if split is None or not split.task_spec.name.endswith(".BoundaryEventSplit"):
        return []
    return [t for t in split.children if t is not holder and t.state == TaskState.WAITING]


def deadline_from(calendar, start: datetime, expression: str | None):
    """The Deadline of a limit written `workdays(N)` / `workhours(H)` / ISO duration, or None."""
    if not expression:
        return None
    match = _LIMIT.match(expression)
    if match:
        unit, amount = match.groups()
        if unit == "workdays":
            return calendar.add_workdays(start, int(float(amount)))
        return calendar.add_workhours(start, float(amount))
    from .calendar import Deadline  # local: keeps this module importable without the calendar for parsing
    parsed = TimerEventDefinition.parse_iso_duration(expression.strip())
    return Deadline(start + TimerEventDefinition.get_timedelta_from_start(parsed, start), False)


def threshold_seconds(calendar, expression: str | None) -> int | None:
    """Office time before a deadline when the light turns yellow, from `workdays(N)` / `workhours(H)`."""
    match = _LIMIT.match(expression or "")
    if not match:
        return None
    unit, amount = match.groups()
    per_unit = calendar.office_hours.seconds_per_day if unit == "workdays" else 3600
    return int(float(amount) * per_unit)


def check_limit(expression: str) -> str | None:
    """None when the limit expression is usable, else what is wrong with it."""
    if _LIMIT.match(expression or ""):
        return None
    try:
        TimerEventDefinition.parse_iso_duration((expression or "").strip())
        return None
    except Exception:
        return f"{expression!r} is not a limit; write workdays(N), workhours(H) or an ISO duration like P5D"


def is_timer(definition) -> bool:
    return isinstance(definition, TimerEventDefinition)


def waiting_timers(workflow):
    for task in tasks_in(workflow, TaskState.WAITING):
        if isinstance(getattr(task.task_spec, "event_definition", None), TimerEventDefinition):
            yield task


def freeze_timers(workflow, calendar, paused_since: datetime) -> int:
    """Park every running timer, remembering the office time it still had when the clock stopped."""
    frozen = 0
    for task in waiting_timers(workflow):
        if "frozen_remaining" in task.internal_data:
            continue
        due = timer_due(task)
        if due is None:
            continue
        started = datetime.fromtimestamp(task.last_state_change, timezone.utc)
        counted_from = max(paused_since, started)
        task.internal_data["frozen_remaining"] = calendar.working_seconds_between(counted_from, due)
        task.internal_data["event_value"] = FROZEN_UNTIL
        frozen += 1
    return frozen


def thaw_timers(workflow, calendar, resumed_at: datetime) -> int:
    """Restart parked timers with the office time they had left: the paused time does not count."""
    thawed = 0
    for task in waiting_timers(workflow):
        remaining = task.internal_data.pop("frozen_remaining", None)
        if remaining is None:
            continue
        task.internal_data["event_value"] = calendar.add_working_seconds(resumed_at, remaining).at.isoformat()
        thawed += 1
    return thawed


def shift(calendar, due: datetime | None, paused_since: datetime, resumed_at: datetime) -> datetime | None:
    """Move a deadline so that the office time it had left at the pause is left again at the resume."""
    if due is None:
        return None
    remaining = calendar.working_seconds_between(paused_since, due)
    return calendar.add_working_seconds(resumed_at, remaining).at


def timer_due(task) -> datetime | None:
    """The stored due moment of a waiting timer (evaluating its expression the first time)."""
    definition = getattr(task.task_spec, "event_definition", None)
    if not isinstance(definition, TimerEventDefinition):
        return None
    value = task.internal_data.get("event_value")
    if value is None:
        definition.has_fired(task)
        value = task.internal_data.get("event_value")
    if isinstance(value, dict):  # cycle timers keep their next firing under "next"
        value = value.get("next") if value.get("cycles") != 0 else None
    if value is None or value == FROZEN_UNTIL:
        return None
    return TimerEventDefinition.get_datetime(value).astimezone(timezone.utc)


def extend_timers(workflow, calendar, task_guids: set[str] | None, days: int) -> int:
    """延期: push the due moment of the given timers (all when None) back by N working days."""
    moved = 0
    for task in waiting_timers(workflow):
        if task_guids is not None and str(task.id) not in task_guids:
            continue
        due = timer_due(task)
        if due is None:
            continue
        task.internal_data["event_value"] = _plus_workdays(calendar, due, days).isoformat()
        moved += 1
    return moved


def _plus_workdays(calendar, due: datetime, days: int) -> datetime:
    return calendar.add_working_seconds(due, days * calendar.office_hours.seconds_per_day).at
