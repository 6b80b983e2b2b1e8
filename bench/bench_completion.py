"""Benchmark: median time per task completion through the engine's public API against raw in-memory SpiffWorkflow."""
from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as `.venv/bin/python bench/bench_completion.py` without installing
    sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, make_url, text  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402

from bench.flows import PROCESS_KEY, WINDOW, Flow, parallel_flow  # noqa: E402
from engine import accounts, runtime, schema, snapshot, timekeeping, worklist  # noqa: E402
from engine.bpmn import ApprovalsParser, parse_xml  # noqa: E402
from engine.config import Config, normalise_database_url  # noqa: E402
from engine.deploy import SourceFile, deploy  # noqa: E402
from engine.store import Database  # noqa: E402

TARGET_RATIO = 2.0
BENCH_USER = "bench_clerk"
BENCH_PASSWORD = "bench-password-1"


@dataclass
class Samples:
    """Wall and thread-CPU times (ns) of single completions, tagged by what kind of step each was."""

    label: str
    times: list[int] = field(default_factory=list)
    cpu: list[int] = field(default_factory=list)   # this thread's CPU time: steadier than wall time on a busy machine
    kinds: list[str] = field(default_factory=list)

    def add(self, kind: str, nanoseconds: int, cpu_nanoseconds: int) -> None:
        self.times.append(nanoseconds)
        self.cpu.append(cpu_nanoseconds)
        self.kinds.append(kind)

    def median_ms(self, kind: str | None = None) -> float:
        return statistics.median(self._of(kind)) / 1e6

    def cpu_median_ms(self) -> float:
        return statistics.median(self.cpu) / 1e6

    def p90_ms(self, kind: str | None = None) -> float:
        values = sorted(self._of(kind))
        return values[min(len(values) - 1, int(0.9 * len(values)))] / 1e6

    def _of(self, kind: str | None) -> list[int]:
        return self.times if kind is None else [t for t, k in zip(self.times, self.kinds) if k == kind]


def step_kinds(flow: Flow) -> list[str]:
    """Intake, reviews, the review whose completion fires the join, hand-over — they cost differently."""
    branches = len(flow.departments)
    return ["intake"] + ["review"] * (branches - 1) + ["review+join", "hand-over"]


# ----------------------------------------------------------------------------------------------
# (b) raw SpiffWorkflow, in memory
# ----------------------------------------------------------------------------------------------

class RawDriver:
    """The same flow parsed by the engine's parser, run by SpiffWorkflow alone: no database, no forms."""

    def __init__(self, flow: Flow):
        parser = ApprovalsParser()
        parser.add_bpmn_xml(parse_xml(flow.xml, 10 * 1024 * 1024), "bench.bpmn")
        self.spec = parser.get_spec(PROCESS_KEY)
        self.subprocess_specs = parser.get_subprocess_specs(PROCESS_KEY)
        self.flow = flow
        self.kinds = step_kinds(flow)

    def run_case(self, case: int, samples: Samples | None) -> dict:
        workflow = BpmnWorkflow(self.spec, self.subprocess_specs)
        workflow.do_engine_steps()
        ready: dict = {}
        for kind, (bpmn_id, data) in zip(self.kinds, self.flow.completions(case)):
            if bpmn_id not in ready:
                ready = {t.task_spec.bpmn_id: t for t in workflow.get_tasks(state=TaskState.READY, manual=True)}
            task = ready.pop(bpmn_id)
            cpu, started = time.thread_time_ns(), time.perf_counter_ns()
            task.set_data(**data)
            task.run()
            workflow.do_engine_steps()
            elapsed, cpu = time.perf_counter_ns() - started, time.thread_time_ns() - cpu
            if samples is not None:
                samples.add(kind, elapsed, cpu)
        if not workflow.completed:
            raise SystemExit(f"raw SpiffWorkflow case {case} did not complete; the generated flow is wrong")
        return dict(workflow.data)


# ----------------------------------------------------------------------------------------------
# (a) / (c) the engine's public API on a real database
# ----------------------------------------------------------------------------------------------

class EngineDriver:
    """Starts cases and completes every task through engine.runtime.complete, as a clerk would."""

    def __init__(self, db: Database, flow: Flow):
        self.db = db
        self.flow = flow
        self.kinds = step_kinds(flow)
        accounts.create_department(db, WINDOW[0], WINDOW[1], actor="bench")
        for key, name in flow.departments:
            accounts.create_department(db, key, name, actor="bench")
        self.user = accounts.create_user(
            db, BENCH_USER, BENCH_PASSWORD, "基准测试办事员",
            departments=[WINDOW[0], *(key for key, _ in flow.departments)], roles=["clerk", "window"], actor="bench")
        deployed = deploy(db, [SourceFile("bench_parallel.bpmn", flow.xml)], deployed_by="bench")
        if [d.key for d in deployed] != [PROCESS_KEY]:
            raise SystemExit(f"deploy returned {deployed!r}; expected one version of {PROCESS_KEY}")

    def run_case(self, case: int, samples: Samples | None, cold: bool = False) -> int:
        instance_id = runtime.start_case(self.db, PROCESS_KEY, {}, actor=self.user.username)["id"]
        open_tasks: dict[str, int] = {}
        result = None
        for kind, (bpmn_id, data) in zip(self.kinds, self.flow.completions(case)):
            if bpmn_id not in open_tasks:
                open_tasks = self._open_tasks(instance_id)
            task_id = open_tasks.pop(bpmn_id)
            if cold:
                # As when another worker process served the case last: load and decode from the database.
                snapshot.snapshots.clear()
            cpu, started = time.thread_time_ns(), time.perf_counter_ns()
            result = runtime.complete(self.db, task_id, self.user, data)
            elapsed, cpu = time.perf_counter_ns() - started, time.thread_time_ns() - cpu
            if samples is not None:
                samples.add(kind, elapsed, cpu)
        if result is None or result["case_status"] != "completed":
            raise SystemExit(f"engine case {instance_id} (bench case {case}) ended as {result!r}, not completed; "
                             f"unfinished tasks in the saved state: {self.unfinished(instance_id)}")
        return instance_id

    def unfinished(self, instance_id: int) -> list[str]:
        with self.db.read() as conn:
            state = snapshot.read_state(conn, instance_id)
        finished = TaskState.COMPLETED | TaskState.CANCELLED | TaskState.ERROR
        return [f"{t['task_spec']}:{TaskState.get_name(t['state'])}" for t in state["tasks"].values()
                if not t["state"] & finished]

    def final_data(self, instance_id: int) -> dict:
        with self.db.read() as conn:
            return snapshot.read_state(conn, instance_id)["data"]

    def _open_tasks(self, instance_id: int) -> dict[str, int]:
        return {t["bpmn_id"]: t["id"] for t in worklist.list_tasks(self.db, self.user, limit=500)
                if t["instance_id"] == instance_id}


def forget_engine_caches() -> None:
    """The engine's process-wide caches are keyed by row id; two databases in one process must not share them."""
    snapshot.snapshots.clear()
    snapshot.forget_specs()
    timekeeping.forget_cached_calendar()
    accounts.resolve_departments.cache_clear()


def measure(engine_driver: EngineDriver, raw: RawDriver, cases: int, warmup: int, label: str,
            cold: bool = False) -> tuple[Samples, Samples]:
    """Alternate engine and raw cases so that both see the same machine at the same moments."""
    engine_samples, raw_samples = Samples(label), Samples("raw SpiffWorkflow")
    for case in range(-warmup, cases):
        measured = case >= 0
        gc.collect()
        instance_id = engine_driver.run_case(case, engine_samples if measured else None, cold=cold)
        gc.collect()
        raw_data = raw.run_case(case, raw_samples if measured else None)
        if case in (-warmup, cases - 1):  # first and last: the two sides did the same work
            engine_data = engine_driver.final_data(instance_id)
            if engine_data != json.loads(json.dumps(raw_data)):
                raise SystemExit(f"case {case}: engine and raw SpiffWorkflow ended with different data\n"
                                 f"engine: {engine_data}\nraw:    {raw_data}")
    return engine_samples, raw_samples


# ----------------------------------------------------------------------------------------------
# databases
# ----------------------------------------------------------------------------------------------

def sqlite_database(directory: Path) -> Database:
    db = Database(Config(database_url=f"sqlite:///{directory / 'bench.sqlite3'}", secret_key="bench"))
    schema.upgrade(db)
    return db


def sqlite_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


class ScratchPostgres:
    """A database of our own on the given server, created for this run and dropped afterwards."""

    def __init__(self, server_url: str):
        self.name = f"bench_{uuid.uuid4().hex[:12]}"
        self.url = make_url(server_url).set(database=self.name).render_as_string(hide_password=False)
        self.admin = create_engine(server_url, isolation_level="AUTOCOMMIT")

    def __enter__(self) -> "ScratchPostgres":
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self

    def size(self) -> int:
        with self.admin.connect() as conn:
            return conn.execute(text("SELECT pg_database_size(:name)"), {"name": self.name}).scalar_one()

    def __exit__(self, *exc) -> None:
        with self.admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                         {"name": self.name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}"'))
        self.admin.dispose()


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def line(tag: str, samples: Samples) -> str:
    return (f"{tag:<5}{samples.label:<42} median {samples.median_ms():7.3f} ms   p90 {samples.p90_ms():7.3f} ms   "
            f"cpu median {samples.cpu_median_ms():7.3f} ms   ({len(samples.times)} completions)")


def breakdown(samples: list[tuple[str, Samples]], kinds: list[str]) -> list[str]:
    rows = ["     per step, median ms:        " + "".join(f"{k:>13}" for k in dict.fromkeys(kinds))]
    for tag, s in samples:
        rows.append(f"       {tag:<26}" + "".join(f"{s.median_ms(k):13.3f}" for k in dict.fromkeys(kinds)))
    return rows


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


def profile(driver: EngineDriver, cases: int, path: Path, top: int) -> None:
    """cProfile a few more engine cases (never the measured ones: the profiler slows everything down)."""
    profiler = cProfile.Profile()
    for case in range(cases):
        profiler.enable()
        driver.run_case(10_000 + case, None)
        profiler.disable()
    profiler.dump_stats(path)
    print(f"\ncProfile of {cases} engine cases written to {path}; top {top} by cumulative time:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=40, help="measured cases per line (default 40)")
    parser.add_argument("--branches", type=int, default=16, help="parallel departments in the flow (default 16)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured cases first (default 3)")
    parser.add_argument("--db", metavar="URL", default=None,
                        help="PostgreSQL server for line (c), e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test; "
                             "a scratch database bench_<random> is created there and dropped")
    parser.add_argument("--no-cold", action="store_true", help="skip the informative cold-cache line")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="afterwards, cProfile extra engine cases on SQLite and write the stats to FILE")
    parser.add_argument("--profile-cases", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file and print where it is")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio is above {TARGET_RATIO}")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    if not 1 <= args.branches <= 99:
        parser.error("--branches must be between 1 and 99")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.profile_cases < 1:
        parser.error("--profile-cases must be at least 1")
    if args.db is not None:
        args.db = normalise_database_url(args.db)
        if not args.db.startswith("postgresql+"):
            parser.error(f"--db must be a PostgreSQL URL like postgresql+psycopg://postgres@127.0.0.1:5432/test, "
                         f"got {args.db!r} (the SQLite line always runs on a scratch file)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flow = parallel_flow(args.branches)
    kinds = step_kinds(flow)
    raw = RawDriver(flow)
    print(f"flow: intake -> {args.branches} parallel department reviews -> join -> hand-over "
          f"({len(kinds)} completions per case); {args.cases} measured cases per line after {args.warmup} warm-up")
    print(f"Python {platform.python_version()}, SpiffWorkflow {package_version('SpiffWorkflow')}, "
          f"SQLAlchemy {package_version('SQLAlchemy')}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs, {platform.platform()}; load average {os.getloadavg()[0]:.2f} at start")
    status = 0

    directory = Path(tempfile.mkdtemp(prefix="bench_completion_"))
    try:
        forget_engine_caches()
        db = sqlite_database(directory)
        driver = EngineDriver(db, flow)
        engine_samples, raw_samples = measure(
            driver, raw, args.cases, args.warmup, "engine.runtime.complete, SQLite file")
        db.dispose()
        database_file = directory / "bench.sqlite3"
        size = sqlite_size(database_file)
        total_cases = args.cases + args.warmup
        ratio = engine_samples.median_ms() / raw_samples.median_ms()
        print()
        print(line("(a)", engine_samples))
        print(line("(b)", raw_samples))
        verdict = "meets the target" if ratio <= TARGET_RATIO else "ABOVE the target"
        print(f"     ratio (a)/(b) of medians: {ratio:.2f}  (target <= {TARGET_RATIO}: {verdict}); "
              f"p90 ratio {engine_samples.p90_ms() / raw_samples.p90_ms():.2f}; "
              f"cpu-time ratio {engine_samples.cpu_median_ms() / raw_samples.cpu_median_ms():.2f}")
        print(f"     SQLite file: {human_bytes(size)} after {total_cases} cases "
              f"({human_bytes(size / total_cases)} per case)")
        for row in breakdown([("(a) engine, SQLite", engine_samples), ("(b) raw SpiffWorkflow", raw_samples)], kinds):
            print(row)
        if args.check and ratio > TARGET_RATIO:
            status = 1

        if not args.no_cold:
            try:
                cold_samples, cold_raw = measure(driver, raw, args.cases, 1,
                                                 "same, snapshot cache cleared each time", cold=True)
            except Exception as exc:  # report the engine's failure as a result line, not a traceback
                print(f"(a') same, snapshot cache cleared each time: FAILED, the engine could not reload a saved "
                      f"case: {type(exc).__name__}: {exc}")
                status = status or 3
            else:
                print(line("(a')", cold_samples) + f"   {cold_samples.median_ms() / cold_raw.median_ms():.2f}x raw "
                      "(informative: a worker that did not serve the case last)")
            snapshot.snapshots.clear()
            db.dispose()

        if args.profile:
            profile(driver, args.profile_cases, Path(args.profile), 30)
            db.dispose()
    finally:
        if args.keep:
            print(f"     kept {directory / 'bench.sqlite3'}")
        else:
            shutil.rmtree(directory, ignore_errors=True)

    if args.db:
        forget_engine_caches()
        try:
            with ScratchPostgres(args.db) as scratch:
                pg = Database(Config(database_url=scratch.url, secret_key="bench"))
                try:
                    schema.upgrade(pg)
                    pg_driver = EngineDriver(pg, flow)
                    pg_samples, pg_raw = measure(pg_driver, raw, args.cases, args.warmup,
                                                 "engine.runtime.complete, PostgreSQL")
                    size = scratch.size()
                finally:
                    pg.dispose()
                    forget_engine_caches()
            print(line("(c)", pg_samples) + f"   {pg_samples.median_ms() / pg_raw.median_ms():.2f}x raw "
                  f"(informative; raw median alongside it {pg_raw.median_ms():.3f} ms; "
                  f"database {human_bytes(size)}, scratch {scratch.name} dropped)")
        except SQLAlchemyError as exc:
            print(f"(c)  PostgreSQL at {args.db}: could not run: {str(exc).splitlines()[0]}")
            status = status or 2
    else:
        print("(c)  PostgreSQL: not run (pass --db postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    # Other work on the machine inflates the longer engine call more (more preemptions): a high load means a worse ratio.
    print(f"     load average {os.getloadavg()[0]:.2f} at the end")
    return status


if __name__ == "__main__":
    sys.exit(main())
