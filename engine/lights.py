"""Supervision lights: green, yellow (预警) near the deadline, red (逾期) past it — counted in office time."""
from __future__ import annotations

from datetime import datetime

GREEN, YELLOW, RED = "green", "yellow", "red"


def light_of(calendar, now: datetime, started_at: datetime | None, due_at: datetime | None,
             yellow_seconds: float | None = None) -> str:
    """Yellow once the office time left is at most min(1 working day, half the limit) unless configured."""
    if due_at is None:
        return GREEN
    if now >= due_at:
        return RED
    left = calendar.working_seconds_between(now, due_at)
    if yellow_seconds is None:
        limit = calendar.working_seconds_between(started_at, due_at) if started_at else left
        yellow_seconds = min(calendar.office_hours.seconds_per_day, limit / 2)
    return YELLOW if left <= yellow_seconds else GREEN
