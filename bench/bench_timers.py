"""Benchmark: timer-firing latency under the real scheduler, and the sweep's cost per 1,000 due timers."""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as `.venv/bin/python bench/bench_timers.py` without installing
    sys.path.insert(0, str(REPO))

import time_machine  # noqa: E402
from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from engine import accounts, runtime, schema, snapshot, timers  # noqa: E402
from engine.config import Config, normalise_database_url  # noqa: E402
from engine.deploy import SourceFile, deploy  # noqa: E402
from engine.store import Database, audit_event  # noqa: E402

PROCESS_KEY = "bench_timer"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def diagram(seconds: int) -> bytes:
    """One review with an interrupting timer (超时默许) that ends the case when it fires."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="Definitions_bench_timer"
    targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="{PROCESS_KEY}" name="计时器基准" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:userTask id="review" name="部门审查" camunda:candidateGroups="gaj" />
    <bpmn:boundaryEvent id="deemed_consent" name="超时默许" attachedToRef="review">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT{seconds}S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="end" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="review" />
    <bpmn:sequenceFlow id="f2" sourceRef="review" targetRef="end" />
    <bpmn:sequenceFlow id="f3" sourceRef="deemed_consent" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
""".encode()


def prepared(config: Config, timer_seconds: int) -> Database:
    db = Database(config)
    schema.upgrade(db)
    accounts.create_department(db, "gaj", "公安局", actor="bench")
    deploy(db, [SourceFile("bench_timer.bpmn", diagram(timer_seconds))], "bench")
    return db


def measure_latency(workdir: Path, count: int, lead_seconds: int, spacing: float) -> dict:
    """Real clock, real scheduler at the default interval: start cases whose timers come due one by one."""
    config = Config(database_url=f"sqlite:///{workdir / 'latency.sqlite3'}")
    db = prepared(config, lead_seconds)
    scheduler = timers.start_scheduler(config)
    try:
        # Spacing not commensurate with the sweep interval spreads due moments over the sweep's phase.
        for _ in range(count):
            runtime.start_case(db, PROCESS_KEY, {}, "bench")
            time.sleep(spacing)
        give_up = time.monotonic() + lead_seconds + 4 * config.sweep_interval_seconds + 30
        while timers.count_due(db, datetime.now(timezone.utc) + timedelta(days=1)) and time.monotonic() < give_up:
            time.sleep(0.1)
    finally:
        scheduler.shutdown(wait=True)
    with db.read() as conn:
        events = conn.execute(select(audit_event.c.at, audit_event.c.data)
                              .where(audit_event.c.type == "timer_fired")).all()
    db.dispose()
    latencies = sorted((e.at - datetime.fromisoformat(e.data["due_at"])).total_seconds() for e in events)
    return {"interval": config.sweep_interval_seconds, "fired": len(latencies), "expected": count,
            "median": statistics.median(latencies) if latencies else None,
            "p90": latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))] if latencies else None,
            "max": latencies[-1] if latencies else None, "min": latencies[0] if latencies else None}


def measure_sweep(url: str, count: int) -> dict:
    """Seconds for one sweeper to fire `count` overdue timers (one per case), workflows not cached."""
    db = prepared(Config(database_url=url), 15)
    started = time.perf_counter()
    with time_machine.travel(datetime.now(timezone.utc) - timedelta(hours=1), tick=False):
        for _ in range(count):
            runtime.start_case(db, PROCESS_KEY, {}, "bench")
    created = time.perf_counter() - started
    snapshot.snapshots.clear()  # a worker process has not seen these cases; the web processes made them
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    due = timers.count_due(db, now)
    listed = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    result = timers.sweep_report(db, now)
    swept, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    left = timers.count_due(db, now)
    db.dispose()
    return {"due": due, "fired": result.fired, "failed": len(result.failed), "left": left, "seconds": swept,
            "per_1000": swept * 1000 / max(1, result.fired), "cpu_per_1000": cpu * 1000 / max(1, result.fired),
            "count_query": listed, "created": created}


def postgres_database(base_url: str) -> tuple[str | None, str, object]:
    """A scratch database next to `base_url`, or (None, reason, None) when PostgreSQL is not reachable."""
    try:
        admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
        name = f"approvals_bench_timers_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except (SQLAlchemyError, OSError) as exc:
        return None, str(exc).splitlines()[0], None
    return base_url.rsplit("/", 1)[0] + "/" + name, f"PostgreSQL {version}", (admin, name)


def drop_database(handle) -> None:
    admin, name = handle
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def print_sweep(label: str, figures: dict) -> None:
    print(f"    {label:<12} {figures['per_1000']:7.2f} s per 1,000 due timers (wall; "
          f"{figures['cpu_per_1000']:.2f} s of it CPU in the sweeping process) — {figures['fired']} fired, "
          f"{figures['failed']} failed, {figures['left']} left; counting {figures['due']} due rows took "
          f"{figures['count_query'] * 1000:.1f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timers", type=int, default=1000, help="due timers for the sweep-cost run (default 1000)")
    parser.add_argument("--latency-timers", type=int, default=10, help="timers for the latency run (default 10)")
    parser.add_argument("--lead", type=int, default=3, help="seconds from case start to its timer (default 3)")
    parser.add_argument("--spacing", type=float, default=0.37, help="seconds between case starts (default 0.37)")
    parser.add_argument("--pg-url", default=None, help=f"PostgreSQL server (default DATABASE_URL or {DEFAULT_PG_URL})")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)
    if args.timers < 1 or args.latency_timers < 1 or args.lead < 1 or args.spacing < 0:
        parser.error("--timers, --latency-timers and --lead must be at least 1, --spacing at least 0")
    pg_base = normalise_database_url(args.pg_url or os.environ.get("DATABASE_URL") or DEFAULT_PG_URL)

    print(f"timer benchmark: Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench_timers_") as tmp:
        workdir = Path(tmp)
        if not args.skip_latency:
            print(f"\n(1) firing latency, due -> fired: real scheduler, real clock, SQLite, {args.latency_timers} "
                  f"timers due {args.lead} s after their case starts")
            lat = measure_latency(workdir, args.latency_timers, args.lead, args.spacing)
            if lat["median"] is None:
                print(f"    no timer fired within the wait ({lat['expected']} expected)")
            else:
                print(f"    sweep interval {lat['interval']:.1f} s: median {lat['median']:.2f} s, "
                      f"p90 {lat['p90']:.2f} s, min {lat['min']:.2f} s, max {lat['max']:.2f} s "
                      f"({lat['fired']}/{lat['expected']} fired; requirement: every timer within 5 s)")

        print(f"\n(2) sweep cost: one sweeper firing {args.timers} overdue timers (1 per case), workflows not cached")
        print_sweep("SQLite", measure_sweep(f"sqlite:///{workdir / 'sweep.sqlite3'}", args.timers))
        url, what, handle = postgres_database(pg_base)
        if url is None:
            print(f"    PostgreSQL   not reachable at {pg_base.split('@')[-1]} ({what}); skipped")
        else:
            try:
                print_sweep("PostgreSQL", measure_sweep(url, args.timers))
                print(f"    ({what} at {pg_base.split('@')[-1].rsplit('/', 1)[0]})")
            finally:
                drop_database(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
