"""Generate a year of supervision history in a scratch PostgreSQL database: N cases, 4 steps and 10 audit events each.

Ratings (a third of the completed cases) and the violations of the red events are generated too, and the
statistics roll-up is then filled by the real roll-up code (engine.rollup.roll_up), as the worker would.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as `.venv/bin/python bench/gen_supervision_data.py`
    sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, make_url, text  # noqa: E402

from engine import deploy, rollup, schema, seed, timekeeping  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.store import Database  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NAME = "bench_supervision"
FLOW = REPO / "tests" / "fixtures" / "bpmn" / "time_limits.bpmn"
CHEAP_PASSWORDS = {"password_time_cost": 1, "password_memory_kib": 64, "password_parallelism": 1}
# Departments the generated steps go to (the demo organisation's keys; index = i % 20).
DEPARTMENTS = [key for key, _ in seed.DEPARTMENTS]
START = "2025-11-24 00:00:00"     # UTC; the history covers the 365 days from here
# "Now" for the roll-up and the benchmark: the end of the generated year, so the board's red items are overdue.
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
OFFICE_DAY = 7 * 3600


def database_url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def exists(server: str, name: str) -> bool:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() is not None
    admin.dispose()
    return found


def drop(server: str, name: str) -> None:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def generate(server: str, name: str, cases: int, log=print, roll_up: bool = True) -> str:
    """Create (or replace) the scratch database and fill it; returns its URL."""
    drop(server, name)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = database_url(server, name)
    db = Database(Config(database_url=url, **CHEAP_PASSWORDS))
    schema.upgrade(db)
    seed.seed_demo(db)
    definition = deploy.deploy(db, [deploy.SourceFile(FLOW.name, FLOW.read_bytes())], "bench")[0].id
    db.dispose()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    departments = "ARRAY[" + ", ".join(f"'{d}'" for d in DEPARTMENTS) + "]"
    params = {"n": cases, "def": definition, "start": START}
    # Cases: spread evenly over the year; the newest twelfth has every third case still running.
    # An ended case took 0..10 calendar days (a fixed pseudo-random spread), due in 7, statutory 28.
    # Window clerks take blocks of 20 consecutive cases in turn, so each of them receives every department mix.
    steps = [
        ("cases", f"""
        INSERT INTO process_instance (id, definition_id, case_no, status, revision, applicant, started_by, started_at,
                                      ended_at, due_at, statutory_due_at, light)
        SELECT i, :def, 'B' || lpad(i::text, 10, '0'), CASE WHEN running THEN 'running' ELSE 'completed' END, 1,
               '企业' || (i % 5000), 'window' || (1 + (i / 20) % 20), s,
               CASE WHEN running THEN NULL ELSE s + took END, s + interval '7 days', s + interval '28 days',
               CASE WHEN running THEN (CASE WHEN i % 7 = 0 THEN 'red' WHEN i % 7 = 1 THEN 'yellow' ELSE 'green' END)
                    WHEN took > interval '7 days' THEN 'red' ELSE NULL END
        FROM (SELECT i, s, ((i::bigint * 7919) % 864000) * interval '1 second' AS took,
                     (i > :n - :n / 12 AND i % 3 = 0) AS running
              FROM (SELECT i, timestamp '{START}' + (i - 1) * (interval '365 days' / :n) AS s
                    FROM generate_series(1, :n) AS i) AS g) AS x"""),
        # Steps: k = 1 the window's intake, k = 2..4 three departments' reviews.
        ("steps", f"""
        INSERT INTO human_task (id, instance_id, task_guid, bpmn_id, name, departments, assignee, status, created_at,
                                completed_at, completed_by, due_at, light, urge_count)
        SELECT (p.id - 1) * 4 + k, p.id, md5(p.id::text || '-' || k), CASE WHEN k = 1 THEN 'intake' ELSE 'review_' || d END,
               CASE WHEN k = 1 THEN '窗口受理' ELSE d || '审查' END,
               CASE WHEN k = 1 THEN '[]'::json ELSE json_build_array(d) END,
               CASE WHEN k = 1 THEN p.started_by WHEN open THEN NULL ELSE d || '1' END,
               CASE WHEN open THEN 'open' ELSE 'completed' END,
               p.started_at + CASE WHEN k = 1 THEN interval '0' ELSE interval '1 hour' END,
               CASE WHEN open THEN NULL WHEN k = 1 THEN p.started_at + interval '1 hour'
                    ELSE p.started_at + (p.ended_at - p.started_at) * k / 4 END,
               CASE WHEN open THEN NULL WHEN k = 1 THEN p.started_by ELSE d || '1' END,
               CASE WHEN k = 1 THEN NULL ELSE p.started_at + interval '3 days' END,
               CASE WHEN open THEN (CASE WHEN (p.id + k) % 9 = 0 THEN 'red' WHEN (p.id + k) % 9 = 1 THEN 'yellow'
                                         ELSE 'green' END)
                    WHEN k > 1 AND p.started_at + (p.ended_at - p.started_at) * k / 4 > p.started_at + interval '3 days'
                    THEN 'red' ELSE NULL END, 0
        FROM process_instance p CROSS JOIN generate_series(1, 4) AS k
        CROSS JOIN LATERAL (SELECT ({departments})[1 + (p.id + k) % {len(DEPARTMENTS)}] AS d,
                                   (p.status = 'running' AND k > 1) AS open) AS x"""),
        ("queue", """
        INSERT INTO task_queue (department_key, human_task_id)
        SELECT departments ->> 0, id FROM human_task WHERE status = 'open'"""),
        # Audit: 10 events a case. k: 1 case_started, 2 task_created (intake), 3 task_completed (intake),
        # 4..6 task_created (reviews), 7..9 task_completed or, sprinkled in, warnings, red lights, deemed
        # consents, pauses and send-backs; 10 case_completed (a running case: a task_claimed instead).
        ("audit", """
        INSERT INTO audit_event (id, at, actor, type, instance_id, task_id, data)
        SELECT :base + (p.id - 1) * 10 + k,
               CASE WHEN k <= 3 THEN p.started_at WHEN k <= 6 THEN p.started_at + interval '1 hour'
                    WHEN k <= 9 THEN COALESCE(p.started_at + (p.ended_at - p.started_at) * (k - 5) / 4,
                                              p.started_at + interval '2 hours')
                    ELSE COALESCE(p.ended_at, p.started_at + interval '3 hours') END,
               CASE WHEN k <= 3 OR k = 10 THEN p.started_by ELSE NULL END,
               CASE WHEN k = 1 THEN 'case_started' WHEN k = 2 OR (k BETWEEN 4 AND 6) THEN 'task_created'
                    WHEN k = 3 THEN 'task_completed'
                    WHEN k = 10 THEN CASE WHEN p.status = 'running' THEN 'task_claimed' ELSE 'case_completed' END
                    WHEN k = 9 AND p.id % 50 = 0 THEN 'deemed_consent'
                    WHEN k = 9 AND p.id % 40 = 1 THEN 'task_red'
                    WHEN k = 9 AND p.id % 25 = 2 THEN 'task_yellow'
                    WHEN k = 8 AND p.id % 60 = 3 THEN 'clock_paused'
                    WHEN k = 8 AND p.id % 70 = 4 THEN 'task_sent_back'
                    WHEN k = 8 AND p.id % 30 = 5 THEN 'case_red'
                    WHEN p.status = 'running' THEN 'task_claimed'
                    ELSE 'task_completed' END,
               p.id,
               CASE WHEN k = 1 OR k = 10 THEN NULL WHEN k <= 3 THEN (p.id - 1) * 4 + 1
                    WHEN k <= 6 THEN (p.id - 1) * 4 + (k - 2) ELSE (p.id - 1) * 4 + (k - 5) END,
               '{}'::json
        FROM process_instance p CROSS JOIN generate_series(1, 10) AS k"""),
        # What refresh_durations would have worked out on the calendar (a synthetic but consistent figure).
        ("durations", f"""
        INSERT INTO case_duration (instance_id, ended_at, taken_seconds, paused_seconds, net_seconds,
                                   committed_seconds, statutory_seconds, on_time, early)
        SELECT id, ended_at, taken, paused, taken - paused, {5 * OFFICE_DAY}, {20 * OFFICE_DAY},
               ended_at <= due_at, ended_at <= due_at - interval '1 day'
        FROM (SELECT id, ended_at, due_at, (extract(epoch FROM ended_at - started_at) * 5 / 24)::int + 3600 AS taken,
                     CASE WHEN id % 60 = 3 THEN 3600 ELSE 0 END AS paused
              FROM process_instance WHERE status = 'completed') AS c"""),
        # 好差评: a third of the completed cases rated a day after completion, scores 1..5 in turn; every
        # fourth rating names the department of the first review.
        ("ratings", f"""
        INSERT INTO rating (instance_id, score, comment, department, rated_at)
        SELECT id, 1 + (id * 7) % 5, NULL,
               CASE WHEN id % 4 = 0 THEN ({departments})[1 + (id + 2) % {len(DEPARTMENTS)}] ELSE NULL END,
               ended_at + interval '1 day'
        FROM process_instance WHERE status = 'completed' AND id % 3 = 0"""),
        # The violation record of each red event, as engine.violations.record_violations keeps them.
        ("violations", """
        INSERT INTO violation (source_key, kind, instance_id, task_id, bpmn_id, department, clerk, occurred_at, due_at)
        SELECT kind || ':' || a.instance_id || ':' || coalesce(a.task_id::text, '-') || ':'
                    || coalesce(t.departments ->> 0, '-'),
               kind, a.instance_id, a.task_id, t.bpmn_id, t.departments ->> 0, t.assignee, a.at, t.due_at
        FROM audit_event a LEFT JOIN human_task t ON t.id = a.task_id
        CROSS JOIN LATERAL (SELECT CASE a.type WHEN 'task_red' THEN 'step_late' WHEN 'case_red' THEN 'case_late'
                                   ELSE 'deemed_consent' END AS kind) AS k
        WHERE a.type IN ('task_red', 'case_red', 'deemed_consent')"""),
        ("sequences", """
        SELECT setval(pg_get_serial_sequence('process_instance', 'id'), (SELECT max(id) FROM process_instance)),
               setval(pg_get_serial_sequence('human_task', 'id'), (SELECT max(id) FROM human_task)),
               setval(pg_get_serial_sequence('audit_event', 'id'), (SELECT max(id) FROM audit_event))"""),
        ("vacuum analyze", "VACUUM ANALYZE"),
    ]
    with engine.connect() as conn:
        conn.execute(text("SET maintenance_work_mem = '512MB'"))
        params["base"] = conn.execute(text("SELECT coalesce(max(id), 0) FROM audit_event")).scalar()
        for label, sql in steps:
            began = time.perf_counter()
            conn.execute(text(sql), {k: v for k, v in params.items() if f":{k}" in sql})
            log(f"  {label:<15} {time.perf_counter() - began:7.1f} s")
    engine.dispose()
    if roll_up:
        fill_roll_up(url, log)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        counts = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                  for table in ("process_instance", "human_task", "audit_event", "case_duration", "rating",
                                "violation", "supervision_day")}
        size = conn.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
    engine.dispose()
    log("  rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()) + f"; database {size}")
    return url


def fill_roll_up(url: str, log=print) -> int:
    """Roll up every finished day with the engine's own code, as the worker's hourly job does; returns the days."""
    db = Database(Config(database_url=url, clock=lambda: NOW))
    timekeeping.forget_cached_calendar()
    schema.upgrade(db)    # a database generated before the latest migration gets it first
    began = time.perf_counter()
    days = rollup.roll_up(db, NOW)
    log(f"  {'roll-up':<15} {time.perf_counter() - began:7.1f} s  ({days} finished days)")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    db.dispose()
    return days


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL (any database on it)")
    parser.add_argument("--name", default=NAME, help="scratch database to create (replaced if it exists)")
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--drop", action="store_true", help="only drop the scratch database")
    parser.add_argument("--no-roll-up", action="store_true",
                        help="leave the statistics roll-up empty (statistics then count every day live)")
    parser.add_argument("--roll-up-only", action="store_true",
                        help="only roll up the finished days of an existing scratch database")
    args = parser.parse_args()
    if args.drop:
        drop(args.server, args.name)
        return
    began = time.perf_counter()
    if args.roll_up_only:
        fill_roll_up(database_url(args.server, args.name))
        return
    print(f"generating {args.cases:,} cases into {args.name}")
    generate(args.server, args.name, args.cases, roll_up=not args.no_roll_up)
    print(f"done in {time.perf_counter() - began:.0f} s; drop it with --drop")


if __name__ == "__main__":
    main()
