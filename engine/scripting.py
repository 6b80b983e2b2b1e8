"""The script engine diagrams run in: Python expressions plus time-limit functions on the working-day calendar."""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from datetime import datetime, timezone

from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment

# The runtime installs the calendar (with the administrators' adjustments) around each engine step.
_calendar = contextvars.ContextVar("approvals_calendar", default=None)


@contextmanager
def using_calendar(calendar):
    token = _calendar.set(calendar)
    try:
        yield
    finally:
        _calendar.reset(token)


def current_calendar():
    calendar = _calendar.get()
    if calendar is None:
        from .calendar import WorkCalendar
        calendar = WorkCalendar()
    return calendar


def _duration_until(deadline: datetime) -> str:
    # Timer durations count from "now" (when SpiffWorkflow first evaluates the timer, i.e. when the
    # governed task starts), so the working-day deadline is expressed as the seconds until it.
    seconds = max(0.0, (deadline - datetime.now(timezone.utc)).total_seconds())
    return f"PT{seconds:.3f}S"


def workdays(n) -> str:
    """Time limit of n working days: close of business of the n-th working day after today."""
    n = int(n)
    if n < 0:
        raise ValueError("workdays() needs a number of days >= 0")
    return _duration_until(current_calendar().add_workdays(datetime.now(timezone.utc), n).at)


def workhours(hours) -> str:
    """Time limit in office hours counted from now."""
    hours = float(hours)
    if hours < 0:
        raise ValueError("workhours() needs a number of hours >= 0")
    return _duration_until(current_calendar().add_workhours(datetime.now(timezone.utc), hours).at)


LIMIT_FUNCTIONS = {"workdays": workdays, "workhours": workhours}

script_engine = PythonScriptEngine(environment=TaskDataEnvironment(dict(LIMIT_FUNCTIONS)))
