"""Benchmark: server time of the clerk's pages (待办 list, filters, task page, case page) with 100,000 open tasks."""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as `.venv/bin/python bench/bench_pages.py` without installing
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from bench.bench_completion import ScratchPostgres, forget_engine_caches  # noqa: E402
from engine import accounts, deploy, runtime, schema, seed  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.lights import light_of  # noqa: E402
from engine.timekeeping import calendar_for  # noqa: E402
from engine.store import (  # noqa: E402
    Database, audit_event, human_task, process_instance, task_queue, workflow_state, workflow_task,
)
from webui import create_app  # noqa: E402

TARGET_MS = 300.0
CHEAP_PASSWORDS = {"password_time_cost": 1, "password_memory_kib": 64, "password_parallelism": 1}
SHANGHAI = timezone(timedelta(hours=8))
BRANCHES = {"seal_filing": "gaj", "tax_invoice": "swj", "social_insurance": "rsj", "medical_insurance": "ybj",
            "housing_fund": "gjj", "bank_account": "bank"}
# Share of the cloned cases per stage: (template, weight); the branch templates leave one department open.
STAGES = [("es_intake", 25), ("cp_intake", 10), ("es_registration", 10)] + [(f"es_left_{d}", 9) for d in BRANCHES]
CITIES = ["杭州", "宁波", "温州", "嘉兴", "湖州", "绍兴", "金华", "衢州", "舟山", "台州", "丽水", "上海", "苏州", "南京",
          "合肥", "福州", "厦门", "广州", "深圳", "成都"]
WORDS = ["云杉", "星河", "青禾", "远航", "启明", "东方", "华辰", "银杏", "长风", "明德", "新源", "锦程", "瑞丰", "和光",
         "知行", "拓普", "安泰", "鼎盛", "晨曦", "蓝海"]
ALL_QUEUES_USER = "bench_all"


@dataclass
class Template:
    """A real case the engine ran to some stage: its stored workflow and human tasks, cloned many times."""

    definition_id: int
    body: str              # the workflow's head row
    steps: list[dict]      # its task rows
    open_tasks: list[dict]
    done_tasks: list[dict]


@dataclass
class Seeded:
    open_task_ids: dict[str, list[int]] = field(default_factory=dict)   # template -> open task ids with a body
    instance_ids: list[int] = field(default_factory=list)
    case_prefix: str = ""
    applicant_prefix: str = ""
    tasks: int = 0
    cases: int = 0
    done_rows: int = 0
    seconds: float = 0.0


# ---- seeding ---------------------------------------------------------------------------------------

def _intake_values(guide: dict, name: str) -> dict:
    materials = {f"mat_{m['key']}": True for item in guide["items"] for m in item.get("materials", [])}
    return {"enterprise_name": name, "enterprise_type": "llc", "registered_capital": 100, "legal_representative": "李明",
            "contact_phone": "0571-88886666", "employees": 12, **materials, "intake_decision": "accept"}


def _open_ids(db: Database, instance_id: int) -> dict[str, int]:
    with db.read() as conn:
        return {r.bpmn_id: r.id for r in conn.execute(select(human_task.c.bpmn_id, human_task.c.id).where(
            human_task.c.instance_id == instance_id, human_task.c.status == "open"))}


def make_templates(db: Database) -> dict[str, Template]:
    """Run real cases through the engine to each stage the clones copy."""
    guide = yaml.safe_load((REPO / "processes/enterprise_startup/enterprise_startup.guide.yaml").read_text("utf-8"))
    users = {u: accounts.get_user(db, u) for u in ["window1", "scjgj1", *(f"{d}1" for d in BRANCHES.values())]}
    started: dict[str, int] = {}
    started["cp_intake"] = runtime.start_case(db, "construction_project", {}, "window1")["id"]
    started["es_intake"] = runtime.start_case(db, "enterprise_startup", {}, "window1")["id"]
    for stage in ["es_registration", *(f"es_left_{d}" for d in BRANCHES)]:
        instance_id = runtime.start_case(db, "enterprise_startup", {}, "window1")["id"]
        runtime.complete(db, _open_ids(db, instance_id)["intake"], users["window1"],
                         _intake_values(guide, "杭州云杉科技有限公司"))
        if stage != "es_registration":
            runtime.complete(db, _open_ids(db, instance_id)["registration"], users["scjgj1"],
                             {"scjgj_approved": True, "scjgj_opinion": "准予设立登记", "credit_code": "91330106MA2KXXXX0Y"})
            left = stage.removeprefix("es_left_")
            ids = _open_ids(db, instance_id)
            for bpmn_id, dept in BRANCHES.items():
                if bpmn_id != left:
                    runtime.complete(db, ids[bpmn_id], users[f"{dept}1"],
                                     {f"{dept}_approved": True, f"{dept}_opinion": "同意"})
        started[stage] = instance_id
    templates = {}
    with db.read() as conn:
        for stage, instance_id in started.items():
            body = conn.execute(select(workflow_state.c.body).where(workflow_state.c.instance_id == instance_id)).scalar()
            steps = [dict(r) for r in conn.execute(select(workflow_task).where(
                workflow_task.c.instance_id == instance_id)).mappings()]
            definition_id = conn.execute(select(process_instance.c.definition_id)
                                         .where(process_instance.c.id == instance_id)).scalar()
            rows = [dict(r) for r in conn.execute(select(human_task).where(human_task.c.instance_id == instance_id)
                                                 .order_by(human_task.c.id)).mappings()]
            templates[stage] = Template(definition_id, body, steps, [r for r in rows if r["status"] == "open"],
                                        [r for r in rows if r["status"] == "completed"])
    return templates


def seed_pages(db: Database, count: int, bodies_every: int, rng: random.Random) -> Seeded:
    """Bulk-insert `count` cases, each with one open task (plus its completed history), cloned from real cases."""
    started = time.perf_counter()
    seed.seed_demo(db)
    all_departments = [d["key"] for d in accounts.list_departments(db)]
    accounts.create_user(db, ALL_QUEUES_USER, "bench-password-1", "全部门经办人", all_departments, ["clerk", "window"])
    deploy.deploy(db, deploy.read_paths([REPO / "processes"]), "bench")
    templates = make_templates(db)
    now = db.config.now()
    calendar = calendar_for(db)
    names = [stage for stage, _ in STAGES]
    weights = [weight for _, weight in STAGES]
    seeded = Seeded()
    with db.read() as conn:
        next_case = conn.execute(select(func.max(process_instance.c.id))).scalar() + 1
        next_task = conn.execute(select(func.max(human_task.c.id))).scalar() + 1
    today = now.astimezone(SHANGHAI).date()
    chunk = 5000
    for first in range(0, count, chunk):
        instances, states, steps, tasks, queue, events = [], [], [], [], [], []
        for i in range(first, min(first + chunk, count)):
            stage = rng.choices(names, weights)[0]
            template = templates[stage]
            instance_id = next_case + i
            started_at = now - timedelta(days=rng.uniform(0, 20))
            day = today - timedelta(days=i // 2500)
            case_no = f"{day:%Y%m%d}{100 + i % 2500:05d}"
            applicant = f"{rng.choice(CITIES)}{rng.choice(WORDS)}{i}号有限公司"
            instances.append({"id": instance_id, "definition_id": template.definition_id, "case_no": case_no,
                              "status": "running", "revision": 1, "applicant": applicant, "started_by": "window1",
                              "started_at": started_at, "due_at": started_at + timedelta(days=rng.uniform(2, 6)),
                              "verification_code": f"B{i:011X}"})
            with_body = i % bodies_every == 0
            if with_body:
                states.append({"instance_id": instance_id, "body": template.body})
                steps += [{**step, "instance_id": instance_id} for step in template.steps]
            events.append({"at": started_at, "actor": "window1", "type": "case_started", "instance_id": instance_id,
                           "task_id": None, "data": {"case_no": case_no}})
            for done in template.done_tasks:
                tasks.append({**done, "id": next_task, "instance_id": instance_id,
                              "created_at": started_at, "completed_at": started_at + timedelta(hours=1)})
                next_task += 1
                seeded.done_rows += 1
            for task in template.open_tasks:
                departments = task["departments"] or []
                roll = rng.random()
                holder = f"{departments[0]}1" if departments and roll < 0.03 else None
                created = started_at + timedelta(hours=rng.uniform(1, 8))
                due = now + timedelta(hours=rng.uniform(-60, 240))
                # The light the supervision sweep would have stored, so the yellow filter sees settled data.
                light = light_of(calendar, now, created, due, task["yellow_seconds"])
                tasks.append({**task, "id": next_task, "instance_id": instance_id, "created_at": created,
                              "due_at": due, "assignee": holder, "claimed_at": created if holder else None,
                              "light": None if light == "green" else light})
                queue += [{"department_key": d, "human_task_id": next_task} for d in departments or ["__window__"]]
                if with_body:
                    seeded.open_task_ids.setdefault(stage, []).append(next_task)
                next_task += 1
                seeded.tasks += 1
            if with_body:
                seeded.instance_ids.append(instance_id)
            seeded.cases += 1
        with db.write() as conn:
            conn.execute(process_instance.insert(), instances)
            if states:
                conn.execute(workflow_state.insert(), states)
                conn.execute(workflow_task.insert(), steps)
            conn.execute(human_task.insert(), tasks)
            conn.execute(task_queue.insert(), queue)
            conn.execute(audit_event.insert(), events)
    with db.write() as conn:
        if not db.is_sqlite:
            for table in ("process_instance", "human_task", "audit_event"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
    # PostgreSQL's autovacuum would analyse tables this size by itself soon after; SQLite is left as the
    # application leaves it (no ANALYZE), so its planner runs on its built-in heuristics.
    if not db.is_sqlite:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    seeded.case_prefix = f"{today - timedelta(days=3):%Y%m%d}"
    seeded.applicant_prefix = "杭州云杉"
    seeded.seconds = time.perf_counter() - started
    return seeded


# Indexes the list queries are written for (engine/tasklists.py), asked of the schema's migration; the bench
# measures without them first, then creates whichever are missing and measures again.
REQUESTED_INDEXES = [
    ("ix_human_task_queue_walk", "human_task", "status, assignee, due_at, id, instance_id, light"),
    ("ix_human_task_delegated_from_status", "human_task", "delegated_from, status"),
    ("ix_human_task_completed_by_at", "human_task", "completed_by, completed_at, instance_id"),
    ("ix_process_instance_applicant", "process_instance", "applicant"),
    ("ix_process_instance_definition_status", "process_instance", "definition_id, status"),
]


def missing_indexes(db: Database) -> list[str]:
    from sqlalchemy import inspect
    with db.engine.connect() as conn:
        inspector = inspect(conn)
        present = {i["name"] for table in ("human_task", "process_instance") for i in inspector.get_indexes(table)}
    return [name for name, _table, _columns in REQUESTED_INDEXES if name not in present]


def create_requested_indexes(db: Database) -> list[str]:
    created = []
    missing = set(missing_indexes(db))
    with db.write() as conn:
        for name, table, columns in REQUESTED_INDEXES:
            if name in missing:
                conn.execute(text(f"CREATE INDEX {name} ON {table} ({columns})"))
                created.append(name)
    if not db.is_sqlite:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE human_task"))
            conn.execute(text("ANALYZE process_instance"))
    return created


# ---- measuring -------------------------------------------------------------------------------------

@dataclass
class Page:
    label: str
    user: str
    url: str


def pages_to_measure(seeded: Seeded, has_cases: bool) -> list[Page]:
    intake = seeded.open_task_ids["es_intake"][0]
    branch = seeded.open_task_ids["es_left_seal_filing"][0]
    pages = [
        Page("/tasks (window1: window queue)", "window1", "/tasks"),
        Page("/tasks (gaj1: one department)", "gaj1", "/tasks"),
        Page("/tasks (clerk of all 20 departments)", ALL_QUEUES_USER, "/tasks"),
        Page("/tasks?department=gaj", ALL_QUEUES_USER, "/tasks?department=gaj"),
        Page("/tasks?process=construction_project", ALL_QUEUES_USER, "/tasks?process=construction_project"),
        Page("/tasks?light=yellow", ALL_QUEUES_USER, "/tasks?light=yellow"),
        Page("/tasks?light=green", ALL_QUEUES_USER, "/tasks?light=green"),
        Page("/tasks?overdue=1", ALL_QUEUES_USER, "/tasks?overdue=1"),
        Page("/tasks?due_within=1", ALL_QUEUES_USER, "/tasks?due_within=1"),
        Page("/tasks?q=<case number prefix>", ALL_QUEUES_USER, f"/tasks?q={seeded.case_prefix}"),
        Page("/tasks?q=<applicant prefix>", ALL_QUEUES_USER, f"/tasks?q={seeded.applicant_prefix}"),
        Page("/tasks?sort=-due&page=200", ALL_QUEUES_USER, "/tasks?sort=-due&page=200"),
        Page("/tasks/done (window1)", "window1", "/tasks/done"),
        Page("/tasks/<id> (intake form)", "window1", f"/tasks/{intake}"),
        Page("/tasks/<id> (parallel branch)", "gaj1", f"/tasks/{branch}"),
    ]
    if has_cases:
        pages.append(Page("/cases/<id>", "window1", f"/cases/{seeded.instance_ids[-1]}"))
    return pages


def measure(label: str, db_config: Config, seeded: Seeded, repeat: int) -> bool:
    """Time each page with the Flask test client (server time, no network); prints one line per page."""
    print(f"\n{label}: {seeded.cases:,} cases, {seeded.tasks:,} open tasks, {seeded.done_rows:,} completed tasks "
          f"(seeded in {seeded.seconds:.0f} s); median and max of {repeat} requests after 2 warm-ups")
    app = create_app({"TESTING": True, "ENGINE_CONFIG": db_config})
    has_cases = "cases.case_page" in app.view_functions
    ok = True
    try:
        for page in pages_to_measure(seeded, has_cases):
            client = app.test_client()
            with client.session_transaction() as session:
                session["username"] = page.user
            for _ in range(2):  # warm caches (specs, calendar) as a running server has them
                response = client.get(page.url)
            if response.status_code != 200:
                raise SystemExit(f"{page.url} as {page.user} answered {response.status_code}: "
                                 f"{response.get_data(as_text=True)[:500]}")
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                client.get(page.url)
                times.append((time.perf_counter() - started) * 1000)
            median = statistics.median(times)
            ok &= median < TARGET_MS
            flag = "" if median < TARGET_MS else "   ABOVE TARGET"
            print(f"  {page.label:<44} median {median:7.1f} ms   max {max(times):7.1f} ms{flag}")
    finally:
        app.extensions["approvals_db"].dispose()
    if not has_cases:
        print("  /cases/<id>: skipped, the cases blueprint is not registered in create_app")
    return ok


def run(config: Config, args, label: str) -> bool:
    forget_engine_caches()
    db = Database(config)
    try:
        schema.upgrade(db)
        seeded = seed_pages(db, args.tasks, args.bodies_every, random.Random(7))
        missing = missing_indexes(db)
    finally:
        db.dispose()
    ok = True
    if missing and not args.skip_without:
        forget_engine_caches()
        # Informative, and slower: three requests a page are enough to show what the missing indexes cost.
        measure(f"{label}, schema as migrated (missing {', '.join(missing)})", config, seeded,
                min(args.repeat, 3))
    if missing:
        db = Database(config)
        try:
            started = time.perf_counter()
            created = create_requested_indexes(db)
            print(f"\n     created the requested indexes in {time.perf_counter() - started:.1f} s: {', '.join(created)}")
        finally:
            db.dispose()
    forget_engine_caches()
    ok &= measure(f"{label}, with the requested indexes", config, seeded, args.repeat)
    return ok


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000, help="cases, each with one open task (default 100000)")
    parser.add_argument("--repeat", type=int, default=15, help="measured requests per page (default 15)")
    parser.add_argument("--bodies-every", type=int, default=20,
                        help="store the serialized workflow for every Nth cloned case (default 20): the lists never "
                             "read it, the task and case pages read one row by key")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="also run on a scratch database on this PostgreSQL server "
                             "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file and print where it is")
    parser.add_argument("--skip-without", action="store_true",
                        help="do not measure the schema as migrated when it lacks the requested indexes")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when a median is above {TARGET_MS:.0f} ms")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}; load average {os.getloadavg()[0]:.2f} at start; target median < {TARGET_MS:.0f} ms")
    ok = True
    if not args.no_sqlite:
        directory = Path(tempfile.mkdtemp(prefix="bench_pages_"))
        try:
            config = Config(database_url=f"sqlite:///{directory / 'bench.sqlite3'}", secret_key="bench",
                            **CHEAP_PASSWORDS)
            ok &= run(config, args, "SQLite file")
        finally:
            if args.keep:
                print(f"     kept {directory / 'bench.sqlite3'}")
            else:
                shutil.rmtree(directory, ignore_errors=True)
    if args.db:
        try:
            with ScratchPostgres(args.db) as scratch:
                ok &= run(Config(database_url=scratch.url, secret_key="bench", **CHEAP_PASSWORDS), args,
                          f"PostgreSQL (scratch database {scratch.name}, dropped afterwards)")
        except SQLAlchemyError as exc:
            print(f"PostgreSQL at {args.db}: could not run: {str(exc).splitlines()[0]}")
            return 2
    else:
        print("\nPostgreSQL: not run (pass --db postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)   # progress shows when the output goes to a file
    sys.exit(main())
