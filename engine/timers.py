"""The due-timer sweep (wake each case whose timers are due, one short transaction per case) and its scheduler."""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import DBAPIError

from . import applicants, durations, lights, rollup, runtime
from .config import Config
from .store import Database, process_instance, timer

LIGHTS_INTERVAL_SECONDS = 60
STATISTICS_FIRST_DELAY_SECONDS = 30
STATISTICS_INTERVAL_SECONDS = 3600
log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What one sweep did: timers fired, cases woken, cases whose firing raised, cases left to back off."""

    fired: int = 0
    cases: int = 0
    failed: list[int] = field(default_factory=list)
    skipped: int = 0


class Backoff:
    """Cases whose firing raised wait first, then twice as long after each further failure, up to `longest`.

    Without it a case with a broken diagram would be re-run (and logged) every sweep; it is only an
    economy: the timer row stays, so the case fires as soon as it is repaired and retried.
    """

    def __init__(self, first: float = 5.0, longest: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.first, self.longest, self.clock = first, longest, clock
        self._failures: dict[int, tuple[int, float]] = {}  # instance id -> (failures in a row, retry after)
        self._lock = threading.Lock()

    def ready(self, instance_id: int) -> bool:
        with self._lock:
            entry = self._failures.get(instance_id)
        return entry is None or self.clock() >= entry[1]

    def failed(self, instance_id: int) -> float:
        """Record a failure; returns the seconds until the case is tried again."""
        with self._lock:
            count = self._failures.get(instance_id, (0, 0.0))[0] + 1
            delay = min(self.longest, self.first * 2 ** (count - 1))
            self._failures[instance_id] = (count, self.clock() + delay)
        return delay

    def succeeded(self, instance_id: int) -> None:
        with self._lock:
            self._failures.pop(instance_id, None)


def sweep(db: Database, now: datetime | None = None, limit: int | None = None, *,
          backoff: Backoff | None = None, stop: threading.Event | None = None) -> int:
    """Fire every timer due before `now` (default: the config clock); returns how many fired."""
    return sweep_report(db, now, limit, backoff=backoff, stop=stop).fired


def sweep_report(db: Database, now: datetime | None = None, limit: int | None = None, *,
                 backoff: Backoff | None = None, stop: threading.Event | None = None) -> SweepResult:
    """Like sweep(), with the cases woken, failed and skipped.

    `limit` caps how many cases this sweep takes up (None: all that are due). `now` only picks the
    candidates; each case fires under its own lock with the config clock, so a case another worker
    already fired is found empty and skipped. Nothing is locked while listing, so a sweeper never
    holds one lock while waiting for another, and a sweeper that dies loses at most the case it was
    in, whose transaction rolls back with its timer rows intact.
    """
    now = db.config.now() if now is None else now
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError(f"sweep needs an aware datetime for now, got {now!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"sweep limit must be a positive whole number or None, got {limit!r}")
    page = max(1, int(db.config.sweep_batch_size))
    result = SweepResult()
    seen: set[int] = set()
    after = None
    while True:
        rows = _due_rows(db, now, after, page)
        for row in rows:
            if row.instance_id in seen:
                continue
            if (stop is not None and stop.is_set()) or (limit is not None and len(seen) >= limit):
                return result
            seen.add(row.instance_id)
            if backoff is not None and not backoff.ready(row.instance_id):
                result.skipped += 1
                continue
            _wake(db, row, result, backoff)
        if len(rows) < page:
            return result
        # Keyset paging: rows of cases that failed or were busy stay behind us, never in front.
        after = (rows[-1].due_at, rows[-1].id)


def count_due(db: Database, now: datetime | None = None) -> int:
    """How many timers of running cases are due and not yet fired: the sweep's backlog."""
    now = db.config.now() if now is None else now
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(timer.join(
            process_instance, process_instance.c.id == timer.c.instance_id)).where(
            timer.c.due_at < now, process_instance.c.status == "running")).scalar_one()


def _due_rows(db: Database, now: datetime, after, page: int) -> list:
    # Strictly before now: SpiffWorkflow fires a timer only once its moment has passed, so a row due
    # exactly now would wake the case for nothing.
    query = (select(timer.c.id, timer.c.instance_id, timer.c.due_at, process_instance.c.case_no)
             .join(process_instance, process_instance.c.id == timer.c.instance_id)
             .where(timer.c.due_at < now, process_instance.c.status == "running")
             .order_by(timer.c.due_at, timer.c.id).limit(page))
    if after is not None:
        query = query.where(or_(timer.c.due_at > after[0], and_(timer.c.due_at == after[0], timer.c.id > after[1])))
    with db.read() as conn:
        return conn.execute(query).all()


def _wake(db: Database, row, result: SweepResult, backoff: Backoff | None) -> None:
    result.cases += 1
    try:
        fired = runtime.fire_due_timers(db, row.instance_id)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise  # the database went away: every other case would fail the same way
        _failed(row, result, backoff)
    except Exception:
        _failed(row, result, backoff)
    else:
        result.fired += fired
        if backoff is not None:
            backoff.succeeded(row.instance_id)


def _failed(row, result: SweepResult, backoff: Backoff | None) -> None:
    result.failed.append(row.instance_id)
    retry = f"; next try in {backoff.failed(row.instance_id):.0f} s" if backoff is not None else ""
    log.exception("timer sweep: case %s (instance %s) failed to fire its timer due %s%s; its timers stay pending",
                  row.case_no, row.instance_id, row.due_at.isoformat(), retry)


class TimerScheduler(BackgroundScheduler):
    """A BackgroundScheduler that sweeps every `config.sweep_interval_seconds` on its own Database.

    shutdown() also asks a running sweep to stop after its current case, then closes the Database.
    """

    def __init__(self, config: Config):
        interval = config.sweep_interval_seconds
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError(f"sweep_interval_seconds must be a positive number, got {interval!r}")
        super().__init__(timezone=timezone.utc)
        self.db = Database(config)
        self.backoff = Backoff()
        self.stop_sweeping = threading.Event()
        # A due timer waits at most one interval plus the sweeps ahead of it; coalesce and no grace
        # limit mean a late run (after a long sweep or a suspended host) happens once, not never.
        self.add_job(self._run, "interval", seconds=interval, id="timer-sweep", name="timer sweep",
                     max_instances=1, coalesce=True, misfire_grace_time=None,
                     next_run_time=datetime.now(timezone.utc))
        # Lights change far more slowly than timers fire; a minute keeps the board current enough.
        self.add_job(self._run_lights, "interval", seconds=max(interval, LIGHTS_INTERVAL_SECONDS),
                     id="light-sweep", name="light sweep", max_instances=1, coalesce=True,
                     misfire_grace_time=None, next_run_time=datetime.now(timezone.utc))
        # Supervision statistics read pre-summed days; summing them (and pruning old query attempts) hourly
        # keeps a one-year query fast. The first run comes half a minute after start, so start-up stays quick
        # and a fresh upgrade (an empty roll-up) is caught up at once rather than an hour later.
        self.add_job(self._run_statistics, "interval", seconds=STATISTICS_INTERVAL_SECONDS, id="statistics",
                     name="statistics roll-up", max_instances=1, coalesce=True, misfire_grace_time=None,
                     next_run_time=datetime.now(timezone.utc) + timedelta(seconds=STATISTICS_FIRST_DELAY_SECONDS))

    def _run_statistics(self) -> None:
        try:
            durations.refresh_durations(self.db)
            rollup.roll_up(self.db)
            applicants.prune_attempts(self.db)
        except Exception:
            log.exception("statistics roll-up failed; retrying next hour")

    def _run_lights(self) -> None:
        try:
            changed = lights.sweep_lights(self.db)
        except Exception:
            log.exception("light sweep failed; retrying next interval")
            return
        if changed:
            log.info("light sweep: %d task/case light change(s) recorded", changed)

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            result = sweep_report(self.db, backoff=self.backoff, stop=self.stop_sweeping)
        except Exception:
            log.exception("timer sweep failed; retrying next interval")
            return
        if result.fired or result.failed:
            log.info("timer sweep: fired %d timer(s) in %d case(s), %d failed, %.2f s", result.fired,
                     result.cases, len(result.failed), time.perf_counter() - started)

    def shutdown(self, wait: bool = True) -> None:
        self.stop_sweeping.set()
        super().shutdown(wait=wait)
        self.db.dispose()


def start_scheduler(config: Config) -> TimerScheduler:
    """Start sweeping in a background thread (first sweep at once, so timers due during downtime fire)."""
    scheduler = TimerScheduler(config)
    scheduler.start()
    return scheduler


def run_worker(config: Config, stop: threading.Event | None = None) -> None:
    """`approvals worker`: sweep until SIGTERM or SIGINT (or `stop` is set), then finish the current case."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # APScheduler logs every run at INFO: two lines every interval would bury the sweep's own reports.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, _frame):
            log.info("timer worker: %s received, stopping", signal.Signals(signum).name)
            stop.set()
        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    scheduler = start_scheduler(config)
    log.info("timer worker: sweeping every %s s", config.sweep_interval_seconds)
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        log.info("timer worker: stopped")
