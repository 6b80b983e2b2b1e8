"""Benchmark: the supervision board, statistics under every filter and the monthly ranking at 1 M cases (< 1 s).

The data comes from bench/gen_supervision_data.py, whose last step rolls up every finished day with the
engine's own roll-up, as the worker does; each query here then reads the rolled-up days plus a live count of
the day not rolled up yet (as on a running server: the worker rolls a day up an hour after midnight).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as `.venv/bin/python bench/bench_supervision.py`
    sys.path.insert(0, str(REPO))

from bench import gen_supervision_data as gen  # noqa: E402
from engine import rollup, supervision, timekeeping, violations  # noqa: E402
from engine import statistics as engine_statistics  # noqa: E402
from engine.accounts import User  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.figures import LOCAL_TZ  # noqa: E402
from engine.store import Database  # noqa: E402

TARGET_S = 1.0
SUPERVISOR = User(id=0, username="bench", name="bench", roles=("supervisor",), departments=())
LEAD = User(id=0, username="lead", name="lead", roles=("lead",), departments=("gaj",))
NOW = gen.NOW


def timed(label: str, fn, repeat: int) -> dict:
    fn()   # warm: the calendar cache and the connection pool, as on a running server
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    result = {"label": label, "median": statistics.median(times), "max": max(times)}
    verdict = "< 1 s" if result["median"] < TARGET_S else "SLOW (>= 1 s)"
    print(f"  {label:<62} median {result['median'] * 1000:8.1f} ms   max {result['max'] * 1000:8.1f} ms   {verdict}",
          flush=True)
    return result


def nightly_roll_up(db: Database) -> None:
    """Time one night's roll-up (the next day) in a transaction that is rolled back, so the data stays as it is."""
    tomorrow = NOW + timedelta(days=1)
    last = (tomorrow - rollup.ROLL_MARGIN).astimezone(LOCAL_TZ).date() - timedelta(days=1)
    with db.engine.connect() as conn:
        transaction = conn.begin()
        began = time.perf_counter()
        days = rollup._roll_chunk(db, conn, tomorrow, last, None)
        elapsed = time.perf_counter() - began
        transaction.rollback()
    print(f"  nightly roll-up of {days} day: {elapsed:.1f} s (in the worker, once a day; rolled back here)")


def run(url: str, repeat: int) -> list[dict]:
    db = Database(Config(database_url=url, clock=lambda: NOW))
    timekeeping.forget_cached_calendar()
    year = ("2025-11-24", "2026-11-23")
    with db.read() as conn:
        rolled_until = rollup.rolled_until(conn)
    print(f"  rolled up until {rolled_until}; the days from then are counted live")
    nightly_roll_up(db)

    def stats(user=SUPERVISOR, period=year, **filters):
        return lambda: engine_statistics.statistics(db, user, *period, **filters)
    results = [
        timed("board (supervisor: every department)", lambda: supervision.board(db, SUPERVISOR), repeat),
        timed("board (lead of gaj)", lambda: supervision.board(db, LEAD), repeat),
        timed("statistics, one year, no filter", stats(), repeat),
        timed("statistics, one year, flow", stats(flow="time_limits"), repeat),
        timed("statistics, one year, department", stats(department_key="gaj"), repeat),
        timed("statistics, one year, item (step)", stats(item="review_swj"), repeat),
        timed("statistics, one year, window clerk", stats(clerk="window3"), repeat),
        timed("statistics, one year, scoped user (lead of gaj)", stats(user=LEAD), repeat),
        timed("statistics, one year, department + item + clerk + flow",
              stats(department_key="gaj", item="review_gaj", clerk="window3", flow="time_limits"), repeat),
        timed("statistics, one month, department", stats(period=("2026-10-01", "2026-10-31"), department_key="swj"),
              repeat),
        timed("ranking, current month (2026-11, partly live)", lambda: violations.ranking(db, SUPERVISOR, "2026-11"),
              repeat),
        timed("ranking, past month (2026-10)", lambda: violations.ranking(db, SUPERVISOR, "2026-10"), repeat),
    ]
    samples = (("", {}), ("department ybj", {"department_key": "ybj"}), ("clerk window3", {"clerk": "window3"}))
    for label, filters in samples:
        figures = engine_statistics.statistics(db, SUPERVISOR, *year, **filters)["figures"]
        print(f"  one-year figures{' (' + label + ')' if label else ''}: " + ", ".join(f"{k} {figures[k]}" for k in (
            "received", "completed", "on_time_rate", "average_working_days", "median_working_days", "overdue",
            "deemed_consents", "pauses", "send_backs")) + f", satisfaction {figures['satisfaction']}")
    db.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default=gen.SERVER, help="PostgreSQL server URL")
    parser.add_argument("--name", default=gen.NAME, help="scratch database (generated unless --reuse finds it)")
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
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
    slow = [r["label"] for r in results if r["median"] >= TARGET_S]
    print(f"{len(results) - len(slow)} of {len(results)} under {TARGET_S:.0f} s"
          + (f"; slow: {', '.join(slow)}" if slow else ""))
    if slow:
        sys.exit(1)


if __name__ == "__main__":
    main()
