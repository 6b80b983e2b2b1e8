"""Fixtures for the flows in processes/: their departments and clerks, the deployed flows, and a movable clock."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine

from engine import accounts
from tests.processes.harness import deploy_processes, guide_of

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Lead departments consolidate their stage and may stop or extend the clock.
LEADS = {"scjgj", "fgw", "ghj", "zjj"}


def at(moment: str) -> datetime:
    """`2026-03-02 09:00` at the service centre."""
    return datetime.fromisoformat(moment).replace(tzinfo=SHANGHAI)


class Clock:
    def __init__(self, traveller):
        self._traveller = traveller

    def at(self, moment: str) -> datetime:
        when = at(moment)
        self._traveller.move_to(when)
        return when


@pytest.fixture
def clock():
    """Frozen at Monday 2026-03-02 09:00 (an ordinary working week); tests move it with clock.at(...)."""
    with time_machine.travel(at("2026-03-02 09:00"), tick=False) as traveller:
        yield Clock(traveller)


def make_clerks(db, key: str) -> dict:
    """The flow's departments (from its service guide) and one clerk for each: `<department>1`."""
    guide = guide_of(key)
    existing = {d["key"] for d in accounts.list_departments(db)}
    clerks = {}
    for department, name in guide["departments"].items():
        if department not in existing:
            accounts.create_department(db, department, name, "admin")
        roles = ["clerk", "window"] if department == "window" else ["clerk", "lead"] if department in LEADS else ["clerk"]
        clerks[department] = accounts.create_user(db, f"{department}1", f"{department}-pass-1",
                                                  f"{name}经办人", [department], roles, "admin")
    return clerks


@pytest.fixture
def enterprise(db, clock):
    clerks = make_clerks(db, "enterprise_startup")
    deployed = deploy_processes(db)
    assert deployed["enterprise_startup"].version == 1
    return clerks


@pytest.fixture
def construction(db, clock):
    clerks = make_clerks(db, "construction_project")
    deployed = deploy_processes(db)
    assert deployed["construction_project"].version == 1
    return clerks
