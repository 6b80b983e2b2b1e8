"""Benchmark: the supervision board and a one-year statistics query on a generated PostgreSQL history (target < 1 s)."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as `.venv/bin/python bench/bench_supervision.py`
    sys.path.insert(0, str(REPO))

from bench import gen_supervision_data as gen  # noqa: E402
from engine import supervision, timekeeping, violations  # noqa: E402
from engine.accounts import User  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.store import Database  # noqa: E402

TARGET_S = 1.0
SUPERVISOR = User(id=0, username="bench", name="bench", roles=("supervisor",), departments=())
LEAD = User(id=0, username="lead", name="lead", roles=("lead",), departments=("gaj",))
# "Now" at the end of the generated year, so the board's red items are overdue and the year is full.
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def timed(label: str, fn, repeat: int) -> dict:
    fn()   # warm: the calendar cache and the connection pool, as on a running server
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    result = {"label": label, "median": statistics.median(times), "max": max(times)}
    verdict = "ok" if result["median"] < TARGET_S else "SLOW"
    print(f"  {label:<58} median {result['median'] * 1000:8.1f} ms   max {result['max'] * 1000:8.1f} ms   {verdict}")
    return result


def run(url: str, repeat: int) -> list[dict]:
    db = Database(Config(database_url=url, clock=lambda: NOW))
    timekeeping.forget_cached_calendar()
    year = ("2025-11-24", "2026-11-23")
    # Once, as the worker would do nightly: work out durations and roll up every finished day.
    began = time.perf_counter()
    supervision.refresh_durations(db)
    days = supervision.roll_up(db)
    print(f"  roll-up of {days} finished days: {time.perf_counter() - began:.1f} s (once; then one day a night)")
    results = [
        timed("board (supervisor: every department)", lambda: supervision.board(db, SUPERVISOR), repeat),
        timed("board (lead of gaj)", lambda: supervision.board(db, LEAD), repeat),
        timed("statistics, one year, no filter", lambda: supervision.statistics(db, SUPERVISOR, *year), repeat),
        timed("statistics, one year, flow", lambda: supervision.statistics(db, SUPERVISOR, *year, flow="time_limits"),
              repeat),
        timed("statistics, one year, window clerk (informative)", lambda: supervision.statistics(db, SUPERVISOR, *year,
                                                                                   clerk="window3"), repeat),
        timed("statistics, one year, department (informative)",
              lambda: supervision.statistics(db, SUPERVISOR, *year, department_key="gaj"), repeat),
        timed("statistics, one month", lambda: supervision.statistics(db, SUPERVISOR, "2026-10-01", "2026-10-31"),
              repeat),
        timed("ranking, one month (informative)", lambda: violations.ranking(db, SUPERVISOR, "2026-10"), repeat),
    ]
    figures = supervision.statistics(db, SUPERVISOR, *year)["figures"]
    print("  one-year figures: " + ", ".join(f"{k} {figures[k]}" for k in (
        "received", "completed", "on_time_rate", "average_working_days", "median_working_days", "overdue",
        "deemed_consents", "pauses", "send_backs")))
    db.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default=gen.SERVER, help="PostgreSQL server URL")
    parser.add_argument("--name", default=gen.NAME, help="scratch database (generated unless --reuse finds it)")
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="use the scratch database if it exists already")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database afterwards")
    args = parser.parse_args()
    if args.reuse and gen.exists(args.server, args.name):
        url = gen.database_url(args.server, args.name)
        print(f"reusing {args.name}")
    else:
        began = time.perf_counter()
        print(f"generating {args.cases:,} cases ({args.cases * 10:,} audit events) into {args.name}")
        url = gen.generate(args.server, args.name, args.cases, log=lambda line: print(line, flush=True))
        print(f"  generated in {time.perf_counter() - began:.0f} s")
    try:
        results = run(url, args.repeat)
    finally:
        if not args.keep:
            gen.drop(args.server, args.name)
    if any(r["median"] >= TARGET_S and "informative" not in r["label"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
