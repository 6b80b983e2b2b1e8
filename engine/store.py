"""Database tables, connections and transactions (with per-case locking and retry) for SQLite and PostgreSQL."""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, Date, DateTime, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
    UniqueConstraint, bindparam, create_engine, event, select, text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from .config import Config
from .statements import HotQuery


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC so SQLite and PostgreSQL agree."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass an aware one")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc)


metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

setting = Table(
    "setting", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

department = Table(
    "department", metadata,
    Column("key", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

app_user = Table(
    "app_user", metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("roles", String(255), nullable=False, default=""),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime, nullable=False),
)

user_department = Table(
    "user_department", metadata,
    Column("user_id", Integer, ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True),
    Column("department_key", String(64), ForeignKey("department.key"), primary_key=True),
)

process_definition = Table(
    "process_definition", metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", String(255), nullable=True),
    Column("source_name", String(255), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("bpmn_xml", Text, nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("properties", JSON, nullable=False),
    Column("guide", JSON, nullable=True),
    Column("status", String(16), nullable=False, default="active"),
    Column("deployed_by", String(64), nullable=True),
    Column("deployed_at", UTCDateTime, nullable=False),
    # issue 6: a version scheduled for a future date takes no new cases before this moment.
    Column("activates_at", UTCDateTime, nullable=True),
    UniqueConstraint("key", "version", name="uq_process_definition_key_version"),
)

process_instance = Table(
    "process_instance", metadata,
    Column("id", Integer, primary_key=True),
    Column("definition_id", Integer, ForeignKey("process_definition.id"), nullable=False, index=True),
    Column("case_no", String(32), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("revision", Integer, nullable=False, default=0),
    Column("applicant", String(255), nullable=True),
    Column("started_by", String(64), nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("due_at", UTCDateTime, nullable=True),
    Column("statutory_due_at", UTCDateTime, nullable=True),
    Column("statutory_exceeded_at", UTCDateTime, nullable=True),
    Column("light", String(8), nullable=True),
    Column("yellow_seconds", Integer, nullable=True),
    Column("paused_since", UTCDateTime, nullable=True),
    Column("extended_at", UTCDateTime, nullable=True),
    # Printed on every notice (and as a QR code) so anyone can check a notice against the public query.
    Column("verification_code", String(16), nullable=True, unique=True),
    Index("ix_process_instance_status_started", "status", "started_at"),
    Index("ix_process_instance_applicant", "applicant"),
    Index("ix_process_instance_definition_status", "definition_id", "status"),
)

# Kept apart from process_instance so case lists never read the serialized workflow. The head (workflow data,
# sub-process heads) is here and each task is a row of workflow_task, so a save writes only what changed.
workflow_state = Table(
    "workflow_state", metadata,
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), primary_key=True),
    Column("body", Text, nullable=False),
)

workflow_task = Table(
    "workflow_task", metadata,
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), primary_key=True),
    # Creation order within the case: parents come first (as restoring needs), and the tasks one step
    # changes (a branch's step and what follows it) were created together, so they share a page or two.
    Column("seq", Integer, primary_key=True),
    Column("task_guid", String(36), nullable=False),
    Column("workflow", String(36), nullable=False),   # "" for the case's own workflow, else its sub-process id
    Column("body", Text, nullable=False),
    sqlite_with_rowid=False,   # one b-tree, clustered by case
)

case_sequence = Table(
    "case_sequence", metadata,
    Column("day", String(8), primary_key=True),
    Column("last", Integer, nullable=False),
)

human_task = Table(
    "human_task", metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), nullable=False),
    # Not unique: a task sent back (退回) comes round again under the same SpiffWorkflow id.
    Column("task_guid", String(36), nullable=False, index=True),
    Column("bpmn_id", String(255), nullable=False),
    Column("name", String(255), nullable=True),
    Column("lane", String(255), nullable=True),
    Column("departments", JSON, nullable=False),
    Column("assignee", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("claimed_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("completed_by", String(64), nullable=True),
    Column("due_at", UTCDateTime, nullable=True),
    Column("light", String(8), nullable=True),
    Column("yellow_seconds", Integer, nullable=True),
    Column("extended_at", UTCDateTime, nullable=True),
    Column("delegated_from", String(64), nullable=True),
    Column("urge_count", Integer, nullable=False, default=0),
    Column("urged_at", UTCDateTime, nullable=True),
    Index("ix_human_task_instance_status", "instance_id", "status"),
    Index("ix_human_task_assignee_status", "assignee", "status"),
    Index("ix_human_task_status_due", "status", "due_at"),
    Index("ix_human_task_queue_walk", "status", "assignee", "due_at", "id", "instance_id", "light"),
    # Only delegated tasks are in it, so completing an ordinary task leaves it alone (its query names a delegator).
    Index("ix_human_task_delegated_from_status", "delegated_from", "status",
          sqlite_where=text("delegated_from IS NOT NULL"), postgresql_where=text("delegated_from IS NOT NULL")),
    Index("ix_human_task_completed_by_at", "completed_by", "completed_at", "instance_id"),
)

# One row per (open task, candidate department); rows go when the task closes, so a
# department's queue is an index range scan however many tasks have ever existed.
task_queue = Table(
    "task_queue", metadata,
    Column("department_key", String(64), primary_key=True),
    Column("human_task_id", Integer, ForeignKey("human_task.id", ondelete="CASCADE"), primary_key=True),
    # Closing a task removes its rows by task alone; without this that read the whole queue.
    Index("ix_task_queue_human_task_id", "human_task_id"),
    sqlite_with_rowid=False,   # the key is the row: one b-tree less to write per completed task
)

audit_event = Table(
    "audit_event", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(64), nullable=True),
    Column("type", String(64), nullable=False),
    Column("instance_id", Integer, nullable=True),
    Column("task_id", Integer, nullable=True),
    Column("data", JSON, nullable=False),
    Index("ix_audit_event_instance", "instance_id", "id"),
    Index("ix_audit_event_type_at", "type", "at"),
)

timer = Table(
    "timer", metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), nullable=False),
    Column("task_guid", String(36), nullable=False),
    Column("bpmn_id", String(255), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    UniqueConstraint("instance_id", "task_guid", name="uq_timer_instance_task"),
    Index("ix_timer_due_at", "due_at"),
)

# Files attached to a case (materials, opinions); kept in the database so every node serves them.
attachment = Table(
    "attachment", metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("task_id", Integer, nullable=True),
    Column("material_key", String(64), nullable=True),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("uploaded_by", String(64), nullable=True),
    Column("uploaded_at", UTCDateTime, nullable=False),
)

# Each stop of a case's clock (补正, 特别程序); working_seconds is filled in when the clock restarts.
clock_pause = Table(
    "clock_pause", metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("automatic", Boolean, nullable=False, default=False),
    Column("reason", Text, nullable=True),
    Column("expected_workdays", Integer, nullable=True),
    Column("task_id", Integer, nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("started_by", String(64), nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("ended_by", String(64), nullable=True),
    Column("working_seconds", Integer, nullable=True),
)

# Administrators' calendar: next year's State Council schedule and local adjustments (win over the package).
calendar_day = Table(
    "calendar_day", metadata,
    Column("day", Date, primary_key=True),
    Column("workday", Boolean, nullable=False),
    Column("holiday_name", String(64), nullable=True),
    Column("note", String(255), nullable=True),
)

calendar_year = Table(
    "calendar_year", metadata,
    Column("year", Integer, primary_key=True),
    Column("loaded_at", UTCDateTime, nullable=False),
    Column("source", String(255), nullable=True),
)

APPEND_ONLY_TABLES = ("audit_event",)

T = TypeVar("T")

# Built once: the hot paths run these on every action, and a prebuilt statement skips SQLAlchemy's
# per-call construction and cache-key work (about a quarter of the cost of a freshly built one).
_CASE_ROW = select(process_instance).where(process_instance.c.id == bindparam("instance_id"))
_READ_CASE = HotQuery(_CASE_ROW)
_LOCK_CASE = HotQuery(_CASE_ROW.with_for_update())
_LOCK_CASE_SKIP = HotQuery(_CASE_ROW.with_for_update(skip_locked=True))


class Database:
    """One SQLAlchemy engine plus the transaction discipline every engine function uses."""

    def __init__(self, config: Config):
        self.config = config
        self.url = config.database_url
        self.is_sqlite = self.url.startswith("sqlite")
        self.engine = _create_engine(self.url)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        # SQLite: take the write lock up front (BEGIN IMMEDIATE) so two writers never
        # deadlock upgrading a shared lock; PostgreSQL relies on row locks instead.
        with self.engine.connect().execution_options(immediate=True) as conn:
            with conn.begin():
                yield conn

    def run(self, fn: Callable[[Connection], T], retries: int = 8) -> T:
        """Run fn in a write transaction, retrying on lock timeouts, deadlocks and serialization failures."""
        for attempt in range(retries + 1):
            try:
                with self.write() as conn:
                    return fn(conn)
            except (OperationalError, DBAPIError) as exc:
                if attempt == retries or not _is_transient(exc):
                    raise
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def lock_instance(self, conn: Connection, instance_id: int, skip_locked: bool = False):
        """Lock one case row for the rest of the transaction; returns the row or None."""
        query = _READ_CASE if self.is_sqlite else _LOCK_CASE_SKIP if skip_locked else _LOCK_CASE
        return query.first(conn, {"instance_id": instance_id})


def _is_transient(exc: DBAPIError) -> bool:
    text = str(exc.orig if getattr(exc, "orig", None) is not None else exc).lower()
    return any(marker in text for marker in (
        "database is locked", "deadlock detected", "could not serialize", "lock timeout",
        "could not obtain lock", "database table is locked",
    ))


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pooled connection stays open: closing the last one checkpoints the WAL (~13 ms a transaction).
        pooling = {"poolclass": NullPool} if not path or path == ":memory:" else {"pool_size": 10, "max_overflow": 20}
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pooling)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives process crashes; only an OS crash may lose the last commits.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Straight on the driver: this runs before every transaction, and exec_driver_sql costs ~20 µs more.
            conn.connection.dbapi_connection.execute(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("immediate") else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


# --- issue 6: migration of running cases between versions ---
# One row per migrated case, keeping what it was before so the migration can be rolled back exactly.
case_migration = Table(
    "case_migration", metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("from_definition_id", Integer, ForeignKey("process_definition.id"), nullable=False),
    Column("to_definition_id", Integer, ForeignKey("process_definition.id"), nullable=False),
    Column("migrated_at", UTCDateTime, nullable=False),
    Column("migrated_by", String(64), nullable=True),
    # The case's revision right after migrating: a rollback is refused once the case has moved on.
    Column("revision_after", Integer, nullable=False),
    Column("state_before", Text, nullable=False),
    Column("projection_before", JSON, nullable=False),
    Column("mapping", JSON, nullable=False),
    Column("rolled_back_at", UTCDateTime, nullable=True),
    Column("rolled_back_by", String(64), nullable=True),
)


# --- issue 7: applicants (online application, public case query, 好差评 ratings, complaints) ---
# The query password of a case applied for online; only its argon2 hash is kept.
applicant_access = Table(
    "applicant_access", metadata,
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), primary_key=True),
    Column("password_hash", String(255), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("contact", String(100), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

# Every public case query, so N web processes share one rate limit per client address and per case number.
query_attempt = Table(
    "query_attempt", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("ip", String(64), nullable=False),
    Column("case_no", String(64), nullable=True),
    Column("success", Boolean, nullable=False),
    Index("ix_query_attempt_ip_at", "ip", "at"),
    Index("ix_query_attempt_case_no_at", "case_no", "at"),
)

# 好差评: one rating per case, 5 = 非常满意 ... 1 = 非常不满意; department is the one rated, when the applicant names one.
rating = Table(
    "rating", metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("score", Integer, nullable=False),
    Column("comment", Text, nullable=True),
    Column("department", String(64), nullable=True),
    Column("rated_at", UTCDateTime, nullable=False),
    Index("ix_rating_rated_at", "rated_at"),
)

# A poor rating (score <= 2) must be followed up (回访整改) within 15 working days.
follow_up = Table(
    "follow_up", metadata,
    Column("id", Integer, primary_key=True),
    Column("rating_id", Integer, ForeignKey("rating.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("department", String(64), nullable=True),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("closed_at", UTCDateTime, nullable=True),
    Column("closed_by", String(64), nullable=True),
    Column("resolution", Text, nullable=True),
    Index("ix_follow_up_status_due", "status", "due_at"),
)

# Complaints about a case or a department, answered within 10 working days.
complaint = Table(
    "complaint", metadata,
    Column("id", Integer, primary_key=True),
    Column("reference", String(16), nullable=False, unique=True),
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="SET NULL"), nullable=True, index=True),
    Column("department", String(64), nullable=True),
    Column("subject", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("contact", String(100), nullable=True),
    Column("filed_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("answered_at", UTCDateTime, nullable=True),
    Column("answered_by", String(64), nullable=True),
    Column("answer", Text, nullable=True),
    Index("ix_complaint_status_due", "status", "due_at"),
)


# --- issue 7: supervision (电子监察): violations and the per-case durations statistics aggregate ---
# One row per red event and responsible department; never deleted (DB triggers), only annotated and closed.
violation = Table(
    "violation", metadata,
    Column("id", Integer, primary_key=True),
    # kind:instance:task:department — the same breach is recorded once however many paths report it.
    Column("source_key", String(200), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("instance_id", Integer, ForeignKey("process_instance.id"), nullable=False, index=True),
    Column("task_id", Integer, nullable=True),
    Column("bpmn_id", String(255), nullable=True),
    Column("department", String(64), nullable=True),
    Column("clerk", String(64), nullable=True),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=True),
    Column("closed_at", UTCDateTime, nullable=True),
    Column("closed_by", String(64), nullable=True),
    Index("ix_violation_occurred_at", "occurred_at"),
    Index("ix_violation_department_occurred", "department", "occurred_at"),
)

# Supervisors' annotations (and the closing remark) on a violation; append-only.
violation_note = Table(
    "violation_note", metadata,
    Column("id", Integer, primary_key=True),
    Column("violation_id", Integer, ForeignKey("violation.id"), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("author", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("text", Text, nullable=False),
)

# Office time each ended case took, computed once on the calendar so statistics aggregate it in SQL.
case_duration = Table(
    "case_duration", metadata,
    Column("instance_id", Integer, ForeignKey("process_instance.id", ondelete="CASCADE"), primary_key=True),
    Column("ended_at", UTCDateTime, nullable=False),
    Column("taken_seconds", Integer, nullable=False),
    Column("paused_seconds", Integer, nullable=False),
    # taken minus paused: what the statistics average, and indexed to find a median without sorting them all
    Column("net_seconds", Integer, nullable=False),
    Column("committed_seconds", Integer, nullable=True),
    Column("statutory_seconds", Integer, nullable=True),
    Column("on_time", Boolean, nullable=False),
    Column("early", Boolean, nullable=False),
    Index("ix_case_duration_ended_at", "ended_at"),
    Index("ix_case_duration_net_seconds", "net_seconds"),
)

# The summable figures of supervision_day (engine/figures.py counts them): case figures, step figures,
# office time of the cases completed, lights they ended with, 好差评 ratings, and per department the steps finished.
SUPERVISION_FIGURES = (
    "received", "completed", "terminated", "case_warnings", "cases_overdue", "statutory_exceeded", "pauses",
    "task_warnings", "tasks_overdue", "deemed_consents", "send_backs", "tasks_completed",
    "dur_n", "dur_on_time", "dur_early", "dur_net", "dur_net_c", "dur_committed", "dur_net_s", "dur_statutory",
    "cases_green", "cases_yellow", "cases_red", "tasks_green", "tasks_yellow", "tasks_red",
    "ratings", "rating_sum", "rating_satisfied", "step_completed", "step_late", "step_closed", "step_seconds",
)

# The statistics of finished local days, summed once so a year's figures read a few hundred rows instead of
# millions. One row per day, flow, receiving window clerk ("" = every clerk), department and step (bpmn id;
# "" = any): a case's figures are filed under every department and step it has, a step's under its own.
supervision_day = Table(
    "supervision_day", metadata,
    Column("clerk", String(64), primary_key=True),
    Column("item", String(255), primary_key=True),
    Column("department", String(64), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("flow", String(255), primary_key=True),
    *[Column(name, BigInteger, nullable=False, default=0) for name in SUPERVISION_FIGURES],
    # office time of the cases completed, counted per tenth of a working day: {bucket: cases}, for the median
    Column("histogram", JSON(none_as_null=True), nullable=True),
    Index("ix_supervision_day_department_item_day", "department", "item", "day"),
)

# Where the roll-up stands (one row, locked while rolling): days before rolled_until are in supervision_day;
# checked_at and seen tell which case migrations it has accounted for.
supervision_roll = Table(
    "supervision_roll", metadata,
    Column("id", Integer, primary_key=True),
    Column("rolled_until", Date, nullable=True),
    Column("checked_at", UTCDateTime, nullable=True),
    Column("seen", JSON, nullable=False),
)

Index("ix_process_instance_ended_at", process_instance.c.ended_at)
Index("ix_human_task_completed_at", human_task.c.completed_at)
