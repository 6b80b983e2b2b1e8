"""Tests for engine.timers: the due-timer sweep fires each timer once, on time, across restarts and workers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from sqlalchemy import func, select

from tests.conftest import REPO, deploy_text
from engine import accounts, runtime, snapshot, timers, worklist
from engine.config import Config
from engine.store import Database, audit_event, human_task, process_instance, timer

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)  # Monday 10:00 in Shanghai

# 公安局 reviews; after 10 s an escalation (催办) opens beside it, after 15 s it is deemed to consent (超时默许).
TIMED = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="Definitions_timed"
    targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="timed_review" name="限时审查（测试）" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:userTask id="review" name="公安局审查" camunda:candidateGroups="gaj" />
    <bpmn:boundaryEvent id="deemed_consent" name="超时默许" attachedToRef="review">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT15S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:boundaryEvent id="warn" name="催办" attachedToRef="review" cancelActivity="false">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT10S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:userTask id="urge" name="催办处理" camunda:candidateGroups="gaj" />
    <bpmn:endEvent id="urged" />
    <bpmn:userTask id="handover" name="统一出件" />
    <bpmn:endEvent id="end" />
    <bpmn:sequenceFlow id="f_start" sourceRef="start" targetRef="review" />
    <bpmn:sequenceFlow id="f_review" sourceRef="review" targetRef="handover" />
    <bpmn:sequenceFlow id="f_deemed" sourceRef="deemed_consent" targetRef="handover" />
    <bpmn:sequenceFlow id="f_warn" sourceRef="warn" targetRef="urge" />
    <bpmn:sequenceFlow id="f_urge" sourceRef="urge" targetRef="urged" />
    <bpmn:sequenceFlow id="f_end" sourceRef="handover" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""

# One interrupting timer and nothing after it: when it fires, the case completes.
ONE_TIMER = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="Definitions_one"
    targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="one_timer" name="单计时器（测试）" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:userTask id="review" name="公安局审查" camunda:candidateGroups="gaj" />
    <bpmn:boundaryEvent id="deemed_consent" name="超时默许" attachedToRef="review">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT15S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="end" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review" />
    <bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="end" />
    <bpmn:sequenceFlow id="f3" sourceRef="deemed_consent" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""

# Two timers on one task, both ending the case: the load for the many-worker tests (2 timers per case).
TWO_TIMERS = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="Definitions_two"
    targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="two_timers" name="双计时器（测试）" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:userTask id="review" name="公安局审查" camunda:candidateGroups="gaj" />
    <bpmn:boundaryEvent id="deemed_consent" name="超时默许" attachedToRef="review">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT15S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:boundaryEvent id="warn" name="催办" attachedToRef="review" cancelActivity="false">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT10S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="warned" />
    <bpmn:endEvent id="end" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review" />
    <bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="end" />
    <bpmn:sequenceFlow id="f3" sourceRef="deemed_consent" targetRef="end" />
    <bpmn:sequenceFlow id="f4" sourceRef="warn" targetRef="warned" />
  </bpmn:process>
</bpmn:definitions>
"""

# Its timer leads into a script that fails at run time, so firing it raises every time.
BROKEN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="Definitions_broken"
    targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="broken_timer" name="计时后脚本出错（测试）" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:userTask id="review" name="公安局审查" camunda:candidateGroups="gaj" />
    <bpmn:boundaryEvent id="deemed_consent" attachedToRef="review">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT5S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:scriptTask id="notify" scriptFormat="python">
      <bpmn:script>result = undefined_name + 1</bpmn:script>
    </bpmn:scriptTask>
    <bpmn:endEvent id="end" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review" />
    <bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="end" />
    <bpmn:sequenceFlow id="f3" sourceRef="deemed_consent" targetRef="notify" />
    <bpmn:sequenceFlow id="f4" sourceRef="notify" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""


@pytest.fixture
def flows(db):
    # Only the two departments the diagrams name: `org`'s six password hashes would triple each test's time.
    accounts.create_department(db, "window", "综合窗口")
    accounts.create_department(db, "gaj", "公安局")
    for name, xml in (("timed_review.bpmn", TIMED), ("one_timer.bpmn", ONE_TIMER), ("two_timers.bpmn", TWO_TIMERS),
                      ("broken_timer.bpmn", BROKEN)):
        deploy_text(db, name, xml)


@pytest.fixture
def clerks(db, flows) -> dict:
    return {"gaj1": accounts.create_user(db, "gaj1", "gaj-pass-1", "公安一", ["gaj"], ["clerk"]),
            "window1": accounts.create_user(db, "window1", "window-pass-1", "窗口一", ["window"], ["clerk", "window"])}


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def timer_rows(db, instance_id=None) -> list:
    query = select(timer.c.instance_id, timer.c.bpmn_id, timer.c.task_guid, timer.c.due_at).order_by(timer.c.id)
    if instance_id is not None:
        query = query.where(timer.c.instance_id == instance_id)
    with db.read() as conn:
        return conn.execute(query).all()


def fired_events(db, instance_id=None) -> list[dict]:
    query = select(audit_event.c.instance_id, audit_event.c.data).where(audit_event.c.type == "timer_fired")
    if instance_id is not None:
        query = query.where(audit_event.c.instance_id == instance_id)
    with db.read() as conn:
        return [{"instance_id": r.instance_id, **r.data} for r in conn.execute(query.order_by(audit_event.c.id))]


def tasks_of(db, instance_id) -> dict[str, str]:
    with db.read() as conn:
        return {r.bpmn_id: r.status for r in conn.execute(
            select(human_task.c.bpmn_id, human_task.c.status).where(human_task.c.instance_id == instance_id))}


def case_status(db, instance_id) -> str:
    with db.read() as conn:
        return conn.execute(select(process_instance.c.status).where(process_instance.c.id == instance_id)).scalar_one()


# --- the sweep -----------------------------------------------------------------------------------


def test_starting_a_case_stores_its_timers_with_their_due_moments(db, flows, clock):
    case = runtime.start_case(db, "timed_review", {}, "window1")

    rows = timer_rows(db)
    assert {(r.bpmn_id, r.due_at) for r in rows} == {
        ("warn", T0 + timedelta(seconds=10)), ("deemed_consent", T0 + timedelta(seconds=15))}
    assert {r.instance_id for r in rows} == {case["id"]}


def test_nothing_fires_before_due(db, flows, clock):
    case = runtime.start_case(db, "timed_review", {}, "window1")
    clock.shift(timedelta(seconds=9.999))

    assert timers.sweep(db) == 0
    assert len(timer_rows(db)) == 2
    assert fired_events(db) == []
    assert tasks_of(db, case["id"]) == {"review": "open"}
    assert timers.count_due(db) == 0


def test_non_interrupting_timer_escalates_and_leaves_the_task_open(db, clerks, clock):
    case = runtime.start_case(db, "timed_review", {}, "window1")
    clock.shift(11)

    assert timers.count_due(db) == 1
    assert timers.sweep(db) == 1

    assert [r.bpmn_id for r in timer_rows(db)] == ["deemed_consent"]
    assert [(e["instance_id"], e["bpmn_id"]) for e in fired_events(db)] == [(case["id"], "warn")]
    assert tasks_of(db, case["id"]) == {"review": "open", "urge": "open"}
    listed = {t["bpmn_id"] for t in worklist.list_tasks(db, clerks["gaj1"])}
    assert listed == {"review", "urge"}
    assert case_status(db, case["id"]) == "running"


def test_interrupting_timer_deems_consent_and_the_flow_moves_on(db, clerks, clock):
    case = runtime.start_case(db, "timed_review", {}, "window1")
    clock.shift(16)

    assert timers.sweep(db) == 2

    assert timer_rows(db) == []
    events = fired_events(db)
    assert sorted(e["bpmn_id"] for e in events) == ["deemed_consent", "warn"]
    assert all(e["instance_id"] == case["id"] for e in events)
    assert tasks_of(db, case["id"]) == {"review": "cancelled", "urge": "open", "handover": "open"}
    assert "review" not in {t["bpmn_id"] for t in worklist.list_tasks(db, clerks["gaj1"])}
    assert "handover" in {t["bpmn_id"] for t in worklist.list_tasks(db, clerks["window1"])}
    with db.read() as conn:
        types = [r.type for r in conn.execute(select(audit_event.c.type).where(
            audit_event.c.instance_id == case["id"]).order_by(audit_event.c.id))]
    assert "deemed_consent" in types


def test_escalation_then_deemed_consent_in_two_sweeps(db, flows, clock):
    case = runtime.start_case(db, "timed_review", {}, "window1")
    clock.shift(11)
    assert timers.sweep(db) == 1
    clock.shift(5)
    assert timers.sweep(db) == 1

    assert [e["bpmn_id"] for e in fired_events(db, case["id"])] == ["warn", "deemed_consent"]
    assert tasks_of(db, case["id"])["handover"] == "open"


def test_sweeping_twice_fires_nothing_the_second_time(db, flows, clock):
    first = runtime.start_case(db, "timed_review", {}, "window1")
    second = runtime.start_case(db, "one_timer", {}, "window1")
    clock.shift(20)

    assert timers.sweep(db) == 3
    assert timers.sweep(db) == 0

    guids = [e["task_guid"] for e in fired_events(db)]
    assert len(guids) == len(set(guids)) == 3
    assert case_status(db, second["id"]) == "completed"
    assert case_status(db, first["id"]) == "running"


def test_only_due_cases_are_woken(db, flows, clock):
    early = runtime.start_case(db, "one_timer", {}, "window1")
    clock.shift(30)
    late = runtime.start_case(db, "one_timer", {}, "window1")
    clock.shift(1)

    assert timers.sweep(db) == 1

    assert case_status(db, early["id"]) == "completed"
    assert case_status(db, late["id"]) == "running"
    assert [r.instance_id for r in timer_rows(db)] == [late["id"]]
    with db.read() as conn:
        revision = conn.execute(select(process_instance.c.revision).where(
            process_instance.c.id == late["id"])).scalar_one()
    assert revision == 1  # the late case was not loaded and re-saved


def test_timers_of_a_task_completed_in_time_never_fire(db, clerks, clock):
    case = runtime.start_case(db, "timed_review", {}, "window1")
    task_id = next(t["id"] for t in worklist.list_tasks(db, clerks["gaj1"]) if t["instance_id"] == case["id"])
    clock.shift(5)
    runtime.complete(db, task_id, clerks["gaj1"], {})
    clock.shift(60)

    assert timers.sweep(db) == 0
    assert timer_rows(db) == []
    assert fired_events(db) == []
    assert tasks_of(db, case["id"]) == {"review": "completed", "handover": "open"}


def test_limit_caps_the_cases_woken_and_the_next_sweep_takes_the_rest(db, flows, clock):
    cases = [runtime.start_case(db, "one_timer", {}, "window1") for _ in range(3)]
    clock.shift(20)

    assert timers.sweep(db, limit=2) == 2
    assert timers.count_due(db) == 1
    assert timers.sweep(db) == 1
    assert [case_status(db, c["id"]) for c in cases] == ["completed"] * 3


def test_sweep_pages_through_more_due_timers_than_one_batch(db_config, flows, clock):
    db = Database(Config(database_url=db_config.database_url, sweep_batch_size=2))
    try:
        cases = [runtime.start_case(db, "timed_review", {}, "window1") for _ in range(3)]
        clock.shift(20)
        assert timers.sweep(db) == 6
        assert timer_rows(db) == []
        assert len({e["instance_id"] for e in fired_events(db)}) == len(cases)
    finally:
        db.dispose()


def test_now_decides_what_is_due(db, flows, clock):
    runtime.start_case(db, "one_timer", {}, "window1")
    clock.shift(20)

    assert timers.sweep(db, now=T0 + timedelta(seconds=5)) == 0
    assert len(timer_rows(db)) == 1
    assert timers.sweep(db, now=T0 + timedelta(seconds=16)) == 1


def test_sweep_refuses_bad_arguments(db):
    with pytest.raises(ValueError) as naive:
        timers.sweep(db, now=datetime(2026, 3, 2, 10, 0))
    with pytest.raises(ValueError) as zero:
        timers.sweep(db, limit=0)
    assert "aware datetime" in str(naive.value)
    assert "positive whole number" in str(zero.value)


def test_a_case_that_keeps_failing_does_not_block_the_others(db_config, flows, clock, caplog):
    # One case per page, broken case first: keyset paging must walk past it within the same sweep.
    db = Database(Config(database_url=db_config.database_url, sweep_batch_size=1))
    try:
        broken = runtime.start_case(db, "broken_timer", {}, "window1")
        good = [runtime.start_case(db, "one_timer", {}, "window1") for _ in range(2)]
        clock.shift(20)

        result = timers.sweep_report(db)
        assert (result.fired, result.cases, result.failed) == (2, 3, [broken["id"]])
        assert f"case {broken['case_no']} (instance {broken['id']})" in caplog.text
        assert [case_status(db, c["id"]) for c in good] == ["completed", "completed"]
        assert [r.instance_id for r in timer_rows(db)] == [broken["id"]]  # rolled back, still pending
        assert fired_events(db, broken["id"]) == []

        again = timers.sweep_report(db)
        assert (again.fired, again.failed) == (0, [broken["id"]])
    finally:
        db.dispose()


def test_backoff_spaces_out_retries_of_a_failing_case(db, flows, clock):
    broken = runtime.start_case(db, "broken_timer", {}, "window1")
    clock.shift(20)
    seconds = [1000.0]
    backoff = timers.Backoff(first=5, longest=20, clock=lambda: seconds[0])

    assert timers.sweep_report(db, backoff=backoff).failed == [broken["id"]]
    skipped = timers.sweep_report(db, backoff=backoff)
    assert (skipped.cases, skipped.skipped, skipped.failed) == (0, 1, [])

    seconds[0] += 5
    assert timers.sweep_report(db, backoff=backoff).failed == [broken["id"]]
    seconds[0] += 5  # the second failure doubled the wait to 10 s
    assert timers.sweep_report(db, backoff=backoff).skipped == 1
    seconds[0] += 5
    assert timers.sweep_report(db, backoff=backoff).failed == [broken["id"]]
    assert backoff.failed(broken["id"]) == 20  # capped at `longest`


def test_a_stop_request_ends_the_sweep_before_the_next_case(db, flows, clock):
    for _ in range(2):
        runtime.start_case(db, "one_timer", {}, "window1")
    clock.shift(20)
    stop = threading.Event()
    stop.set()

    assert timers.sweep(db, stop=stop) == 0
    assert timers.count_due(db) == 2


def test_timers_survive_a_restart(db_config, flows, clock):
    first = Database(db_config)
    case = runtime.start_case(first, "timed_review", {}, "window1")
    first.dispose()
    snapshot.snapshots.clear()  # nothing of the old process remains but the database
    clock.shift(16)

    restarted = Database(db_config)
    try:
        assert timers.sweep(restarted) == 2
        assert tasks_of(restarted, case["id"])["handover"] == "open"
        assert timer_rows(restarted) == []
    finally:
        restarted.dispose()


# --- the scheduler and the worker command (real clock: timers are created already overdue) ---------


def _overdue_cases(db, key: str, count: int) -> list[dict]:
    with time_machine.travel(datetime.now(timezone.utc) - timedelta(minutes=10), tick=False):
        return [runtime.start_case(db, key, {}, "window1") for _ in range(count)]


def _wait_until(condition, seconds: float, what: str) -> None:
    """Poll for another thread's or process's work (not a deadline of ours): fail if it never happens."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds} s waiting for {what}")
        time.sleep(0.05)


def test_scheduler_sweeps_in_the_background(db, flows):
    cases = _overdue_cases(db, "one_timer", 3)
    scheduler = timers.start_scheduler(Config(database_url=db.config.database_url, sweep_interval_seconds=0.2))
    try:
        job = scheduler.get_job("timer-sweep")
        assert (job.max_instances, job.coalesce) == (1, True)
        _wait_until(lambda: timers.count_due(db) == 0, 20, "the scheduler to fire 3 overdue timers")
    finally:
        scheduler.shutdown(wait=True)
    assert [case_status(db, c["id"]) for c in cases] == ["completed"] * 3
    assert len(fired_events(db)) == 3


def test_scheduler_defaults_to_the_configured_interval():
    scheduler = timers.TimerScheduler(Config(database_url="sqlite://"))
    try:
        assert scheduler.get_job("timer-sweep").trigger.interval == timedelta(seconds=2)
        # the statistics roll-up first runs within a minute of start (an upgrade starts with none), then hourly
        statistics = scheduler.get_job("statistics")
        assert statistics.next_run_time - datetime.now(timezone.utc) < timedelta(minutes=1)
        assert statistics.trigger.interval == timedelta(hours=1)
    finally:
        scheduler.db.dispose()
    with pytest.raises(ValueError) as bad:
        timers.TimerScheduler(Config(database_url="sqlite://", sweep_interval_seconds=0))
    assert "sweep_interval_seconds" in str(bad.value)


WORKER_COMMAND = """
import sys
from engine.config import Config
from engine import timers
timers.run_worker(Config(database_url=sys.argv[1], sweep_interval_seconds=0.2))
"""


def test_worker_command_fires_timers_and_stops_cleanly_on_sigterm(db, flows):
    cases = _overdue_cases(db, "one_timer", 2)
    worker = subprocess.Popen([sys.executable, "-c", WORKER_COMMAND, db.config.database_url], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: timers.count_due(db) == 0, 30, "the worker to fire 2 overdue timers")
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, stderr
    assert "SIGTERM received, stopping" in stderr and "timer worker: stopped" in stderr
    assert [case_status(db, c["id"]) for c in cases] == ["completed", "completed"]


# --- PostgreSQL: several worker processes, and a worker killed mid-sweep ---------------------------

# A sweeping process: connects, says "ready", waits for "go", sweeps until nothing is due, prints its count.
SWEEPER = """
import json, sys, time
from datetime import datetime
from engine.config import Config
from engine.store import Database
from engine import timers
now = datetime.fromisoformat(sys.argv[2])
db = Database(Config(database_url=sys.argv[1], clock=lambda: now, sweep_batch_size=50))
timers.count_due(db)
print("ready", flush=True)
sys.stdin.readline()
fired = 0
while True:
    swept = timers.sweep(db)
    fired += swept
    if timers.count_due(db) == 0:
        break
    if not swept:
        time.sleep(0.01)  # what is left is held by the other workers right now
print(json.dumps({"fired": fired}), flush=True)
"""


@pytest.mark.postgres_only
def test_a_case_held_by_a_clerk_is_skipped_not_waited_for(db, flows, clock):
    held = runtime.start_case(db, "one_timer", {}, "window1")
    free = runtime.start_case(db, "one_timer", {}, "window1")
    clock.shift(20)
    outcome = {}
    with db.write() as conn:
        db.lock_instance(conn, held["id"])  # a clerk's transaction on that case, still open
        sweeper = threading.Thread(target=lambda: outcome.update(fired=timers.sweep(db)))
        sweeper.start()
        sweeper.join(timeout=20)
        assert not sweeper.is_alive(), "the sweep waited for a case lock instead of skipping it"
    assert outcome["fired"] == 1
    assert [r.instance_id for r in timer_rows(db)] == [held["id"]]
    assert case_status(db, free["id"]) == "completed"
    assert timers.sweep(db) == 1  # once the clerk is done, the next sweep takes it


def _start_sweepers(url: str, now: datetime, count: int) -> list[subprocess.Popen]:
    workers = [subprocess.Popen([sys.executable, "-c", SWEEPER, url, now.isoformat()], cwd=REPO, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(count)]
    for worker in workers:
        line = worker.stdout.readline()
        assert line.strip() == "ready", worker.stderr.read()
    for worker in workers:  # all start together, so they really compete for the same rows
        worker.stdin.write("go\n")
        worker.stdin.flush()
    return workers


def _assert_every_timer_fired_exactly_once(db, cases: list[dict], per_case: int) -> None:
    with db.read() as conn:
        fired = Counter((r.instance_id, r.data["task_guid"]) for r in conn.execute(
            select(audit_event.c.instance_id, audit_event.c.data).where(audit_event.c.type == "timer_fired")))
        statuses = Counter(conn.execute(select(process_instance.c.status)).scalars())
        cancelled = conn.execute(select(func.count()).select_from(human_task).where(
            human_task.c.status == "cancelled")).scalar_one()
        remaining = conn.execute(select(func.count()).select_from(timer)).scalar_one()
    assert remaining == 0
    assert set(fired.values()) == {1}, f"fired twice: {[key for key, n in fired.items() if n > 1][:5]}"
    per_instance = Counter(instance_id for instance_id, _ in fired)
    assert per_instance == Counter({case["id"]: per_case for case in cases}), "some timers never fired"
    assert statuses == Counter({"completed": len(cases)})  # every case moved on past its 超时默许
    assert cancelled == len(cases)


@pytest.mark.postgres_only
@pytest.mark.slow
def test_three_worker_processes_fire_thousands_of_timers_exactly_once(db, flows):
    cases = _overdue_cases(db, "two_timers", 1000)
    now = datetime.now(timezone.utc)
    assert timers.count_due(db, now) == 2000

    workers = _start_sweepers(db.config.database_url, now, 3)
    reports = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
        reports.append(json.loads(stdout.strip().splitlines()[-1])["fired"])

    _assert_every_timer_fired_exactly_once(db, cases, per_case=2)
    assert sum(reports) == 2000  # the workers' own counts agree with the audit trail: none counted twice
    assert sum(1 for fired in reports if fired > 0) >= 2, f"the work was not shared: {reports}"


@pytest.mark.postgres_only
@pytest.mark.slow
def test_a_worker_killed_mid_sweep_loses_nothing(db, flows):
    cases = _overdue_cases(db, "two_timers", 500)
    now = datetime.now(timezone.utc)
    [worker] = _start_sweepers(db.config.database_url, now, 1)
    try:
        _wait_until(lambda: len(fired_events(db)) >= 100, 60, "the worker to get going")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == -signal.SIGKILL
    left = timers.count_due(db, now)
    assert 0 < left < 1000, "the worker was not killed mid-sweep"

    # Its open transaction rolled back with its connection, releasing the case it held; a case still
    # locked while PostgreSQL notices the dead connection is skipped and taken by a later sweep.
    give_up = time.monotonic() + 60
    while timers.count_due(db, now) and time.monotonic() < give_up:
        timers.sweep(db, now)
    _assert_every_timer_fired_exactly_once(db, cases, per_case=2)
