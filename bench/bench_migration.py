"""Benchmark: migrating 10,000 running 企业开办 cases from version 1 to a revised version 2, in cases per second."""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as `.venv/bin/python bench/bench_migration.py` without installing
    sys.path.insert(0, str(REPO))

import time_machine  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from bench.bench_completion import ScratchPostgres, forget_engine_caches, sqlite_database  # noqa: E402
from engine import accounts, deploy, migration, runtime, schema  # noqa: E402
from engine.config import Config, normalise_database_url  # noqa: E402
from engine.store import (  # noqa: E402
    Database, human_task, process_instance, task_queue, timer, workflow_state, workflow_task,
)

KEY = "enterprise_startup"
PROCESSES = REPO / "processes"
SHANGHAI = ZoneInfo("Asia/Shanghai")
# Each running case is a copy of one of these: at registration, in the six parallel reviews, at consolidation.
STATES = ("registration", "reviews", "consolidate")
BRANCHES = {"seal_filing": "gaj", "tax_invoice": "swj", "social_insurance": "rsj",
            "medical_insurance": "ybj", "housing_fund": "gjj", "bank_account": "bank"}


def local(moment: str) -> datetime:
    return datetime.fromisoformat(moment).replace(tzinfo=SHANGHAI)


def revised_xml() -> bytes:
    """Version 2: 承诺 2 → 1 working day and every department's workhours(4) → workhours(2)."""
    xml = (PROCESSES / KEY / f"{KEY}.bpmn").read_text(encoding="utf-8")
    xml = xml.replace('name="committedLimit" value="workdays(2)"', 'name="committedLimit" value="workdays(1)"')
    return xml.replace(">workhours(4)</bpmn:timeDuration>", ">workhours(2)</bpmn:timeDuration>").encode("utf-8")


def prepare(db: Database, cases: int, traveller) -> accounts.User:
    """Deploy, drive one template case into each state through the engine, then copy them in bulk."""
    guide = PROCESSES / KEY / f"{KEY}.guide.yaml"
    source = deploy.SourceFile(f"{KEY}.bpmn", (PROCESSES / KEY / f"{KEY}.bpmn").read_bytes(),
                               deploy.SourceFile(guide.name, guide.read_bytes()))
    deploy.deploy(db, [source], "bench")
    users = {}
    for department in ("window", "scjgj", *BRANCHES.values()):
        accounts.create_department(db, department, department, "bench")
        roles = ["clerk", "window"] if department == "window" else ["clerk"]
        users[department] = accounts.create_user(db, f"{department}1", "bench-password-1", department,
                                                 [department], roles, "bench")
    admin = accounts.create_user(db, "designer1", "bench-password-1", "designer", [], ["designer", "admin"], "bench")
    templates = {state: _template(db, users, state, traveller) for state in STATES}
    _copy(db, templates, cases)
    deploy.deploy(db, [deploy.SourceFile(f"{KEY}.bpmn", revised_xml(), deploy.SourceFile(guide.name, guide.read_bytes()))],
                  "bench")
    return admin


def _template(db: Database, users: dict, state: str, traveller) -> int:
    from engine import worklist
    traveller.move_to(local("2026-03-02 09:00"))
    case = runtime.start_case(db, KEY, {"enterprise_name": "基准测试有限公司"}, "window1")

    def do(department: str, step: str, values: dict) -> None:
        [task] = [t for t in worklist.list_tasks(db, users[department], limit=500)
                  if t["instance_id"] == case["id"] and t["bpmn_id"] == step]
        runtime.complete(db, task["id"], users[department], values)

    guide_keys = _material_keys()
    traveller.move_to(local("2026-03-02 09:10"))
    do("window", "intake", {"enterprise_name": "基准测试有限公司", "enterprise_type": "llc", "registered_capital": 100,
                            "legal_representative": "李明", "contact_phone": "0571-88886666", "employees": 12,
                            **{f"mat_{k}": True for k in guide_keys}, "intake_decision": "accept"})
    if state == "registration":
        return case["id"]
    traveller.move_to(local("2026-03-02 10:00"))
    do("scjgj", "registration", {"scjgj_approved": True, "scjgj_opinion": "准予设立登记",
                                 "credit_code": "91330106MA2KXXXX0Y"})
    traveller.move_to(local("2026-03-02 10:30"))
    done = list(BRANCHES.items()) if state == "consolidate" else list(BRANCHES.items())[:2]
    for step, department in done:
        do(department, step, {f"{department}_approved": True, f"{department}_opinion": "同意"})
    return case["id"]


def _material_keys() -> list[str]:
    import yaml
    guide = yaml.safe_load((PROCESSES / KEY / f"{KEY}.guide.yaml").read_text(encoding="utf-8"))
    return sorted({m["key"] for item in guide["items"] for m in item.get("materials", [])})


def _copy(db: Database, templates: dict, cases: int) -> None:
    """Insert `cases` running cases as copies of the templates (explicit ids, a thousand rows a statement)."""
    with db.write() as conn:
        rows = {state: (dict(conn.execute(select(process_instance).where(process_instance.c.id == i)).mappings().one()),
                        (conn.execute(select(workflow_state.c.body).where(workflow_state.c.instance_id == i)).scalar(),
                         [dict(r) for r in conn.execute(select(workflow_task).where(
                             workflow_task.c.instance_id == i)).mappings()]),
                        [dict(r) for r in conn.execute(select(human_task).where(human_task.c.instance_id == i)).mappings()],
                        [dict(r) for r in conn.execute(select(task_queue).join(
                            human_task, human_task.c.id == task_queue.c.human_task_id)
                            .where(human_task.c.instance_id == i)).mappings()],
                        [dict(r) for r in conn.execute(select(timer).where(timer.c.instance_id == i)).mappings()])
                for state, i in templates.items()}
        next_case = conn.execute(select(func.max(process_instance.c.id))).scalar() + 1
        next_task = conn.execute(select(func.max(human_task.c.id))).scalar() + 1
        batch: dict[str, list] = {"case": [], "state": [], "steps": [], "task": [], "queue": [], "timer": []}
        for n in range(cases):
            case_row, (head, steps), tasks, queue, timers = rows[STATES[n % len(STATES)]]
            case_id = next_case + n
            batch["case"].append({**case_row, "id": case_id, "case_no": f"B{n:08d}", "verification_code": None})
            batch["state"].append({"instance_id": case_id, "body": head})
            batch["steps"] += [{**step, "instance_id": case_id} for step in steps]
            ids = {}
            for task in tasks:
                ids[task["id"]] = next_task
                batch["task"].append({**task, "id": next_task, "instance_id": case_id})
                next_task += 1
            batch["queue"] += [{**q, "human_task_id": ids[q["human_task_id"]]} for q in queue]
            batch["timer"] += [{**t, "id": None, "instance_id": case_id} for t in timers]
            if len(batch["case"]) >= 1000 or n == cases - 1:
                for table, key in ((process_instance, "case"), (workflow_state, "state"), (workflow_task, "steps"),
                                   (human_task, "task"), (task_queue, "queue")):
                    conn.execute(table.insert(), batch[key])
                conn.execute(timer.insert(), [{k: v for k, v in t.items() if k != "id"} for t in batch["timer"]])
                batch = {k: [] for k in batch}
        if not db.is_sqlite:
            for table in ("process_instance", "human_task"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))


def _progress(done: int, total: int) -> None:
    if done % 1000 == 0 or done == total:
        print(f"  {done}/{total}", file=sys.stderr, flush=True)


def run(db: Database, label: str, cases: int, preview: bool) -> dict:
    forget_engine_caches()
    with time_machine.travel(local("2026-03-02 09:00"), tick=True) as traveller:
        started = time.perf_counter()
        admin = prepare(db, cases, traveller)
        prepared = time.perf_counter() - started
        traveller.move_to(local("2026-03-02 11:00"))
        previewed = None
        if preview:
            forget_engine_caches()   # cold, as on a worker that did not serve these cases
            started = time.perf_counter()
            migration.migrate_cases(db, KEY, 1, 2, admin, dry_run=True)
            previewed = time.perf_counter() - started
        forget_engine_caches()
        started, cpu = time.perf_counter(), time.process_time()
        result = migration.migrate_cases(db, KEY, 1, 2, admin, progress=_progress)
        migrated, cpu = time.perf_counter() - started, time.process_time() - cpu
    total = result["total"]
    shown = f"preview {previewed:6.1f} s = {total / previewed:6.0f} cases/s; " if previewed else ""
    print(f"{label:<11} {total} running cases (created in {prepared:5.1f} s); {shown}migrate {migrated:6.1f} s = "
          f"{total / migrated:6.1f} cases/s ({result['migrated']} migrated, {result['refused']} refused); "
          f"this process's CPU {1000 * cpu / total:.1f} ms a case (= {total / cpu:.0f} cases per CPU-second); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if result["migrated"] != total:
        raise SystemExit(f"expected every case to move: {result['refused']} refused, e.g. "
                         f"{next((c['reasons'] for c in result['cases'] if not c['movable']), None)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000, help="running cases to migrate (default 10,000)")
    parser.add_argument("--preview", action="store_true", help="also time the dry run (preview) of the batch")
    parser.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL (needs --db)")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="PostgreSQL server, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test; a scratch "
                             "database bench_<random> is created there and dropped")
    args = parser.parse_args(argv)
    if args.cases < 3:
        parser.error("--cases must be at least 3")
    print(f"Python {platform.python_version()}, SpiffWorkflow {package_version('SpiffWorkflow')}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    print("cases: a third each at registration, in the six parallel reviews (two done), at consolidation; "
          "version 2 changes the committed limit and all six review limits")
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory(prefix="bench_migration_") as directory:
            db = sqlite_database(Path(directory))
            try:
                run(db, "SQLite", args.cases, args.preview)
            finally:
                db.dispose()
    if args.db:
        url = normalise_database_url(args.db)
        with ScratchPostgres(url) as scratch:
            db = Database(Config(database_url=scratch.url, secret_key="bench"))
            schema.upgrade(db)
            try:
                run(db, "PostgreSQL", args.cases, args.preview)
            finally:
                db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
