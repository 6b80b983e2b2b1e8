"""Shared fixtures: one `db` per test on SQLite (always) or PostgreSQL (when DATABASE_URL names one)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from engine import accounts, deploy, schema, snapshot, timekeeping
from engine.config import Config, normalise_database_url
from engine.store import Database, metadata

REPO = Path(__file__).resolve().parent.parent
snapshot.VERIFY_INCREMENTAL = True
# argon2id at its cheapest: tests create many users; production keeps the recommended cost.
CHEAP_PASSWORDS = {"password_time_cost": 1, "password_memory_kib": 64, "password_parallelism": 1}
PG_URL = normalise_database_url(os.environ.get("DATABASE_URL", "")) if os.environ.get(
    "DATABASE_URL", "").startswith("postgres") else None


def pytest_addoption(parser):
    parser.addoption("--db", default=None, help="sqlite (default) or a PostgreSQL URL")


def pytest_configure(config):
    global PG_URL
    option = config.getoption("--db")
    if option and option.startswith("postgres"):
        PG_URL = normalise_database_url(option)


def pytest_collection_modifyitems(config, items):
    # PostgreSQL-only tests must not pass silently by skipping when CI asked for PostgreSQL.
    if PG_URL is None:
        skip = pytest.mark.skip(reason="needs PostgreSQL: run with DATABASE_URL=postgresql://... (CI does)")
        for item in items:
            if "postgres_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def database_template(tmp_path_factory):
    """Migrate once per session; each test then starts from a copy (SQLite) or truncated tables (PostgreSQL)."""
    if PG_URL:
        name = f"approvals_test_{uuid.uuid4().hex[:10]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG_URL.rsplit("/", 1)[0] + "/" + name
        db = Database(Config(database_url=url))
        schema.upgrade(db)
        db.dispose()
        yield {"kind": "postgresql", "url": url}
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
    else:
        path = tmp_path_factory.mktemp("template") / "template.sqlite3"
        db = Database(Config(database_url=f"sqlite:///{path}"))
        schema.upgrade(db)
        db.dispose()
        yield {"kind": "sqlite", "path": path}


@pytest.fixture
def db_config(database_template, tmp_path):
    snapshot.snapshots.clear()
    snapshot.forget_specs()
    timekeeping.forget_cached_calendar()
    accounts.resolve_departments.cache_clear()
    if database_template["kind"] == "sqlite":
        path = tmp_path / "approvals.sqlite3"
        shutil.copy(database_template["path"], path)
        return Config(database_url=f"sqlite:///{path}", secret_key="test-secret", **CHEAP_PASSWORDS)
    url = database_template["url"]
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
    engine.dispose()
    return Config(database_url=url, secret_key="test-secret", **CHEAP_PASSWORDS)


@pytest.fixture
def db(db_config):
    database = Database(db_config)
    yield database
    database.dispose()


@pytest.fixture
def org(db):
    """Demo departments and users that most tests need."""
    for key, name in [("window", "综合窗口"), ("scjgj", "市场监管局"), ("gaj", "公安局"), ("swj", "税务局"),
                      ("rsj", "人社局"), ("ybj", "医保局")]:
        accounts.create_department(db, key, name)
    users = {
        "window1": accounts.create_user(db, "window1", "window-pass-1", "窗口一", ["window"], ["clerk", "window"]),
        "scjgj1": accounts.create_user(db, "scjgj1", "scjgj-pass-1", "市场监管一", ["scjgj"], ["clerk", "lead"]),
        "gaj1": accounts.create_user(db, "gaj1", "gaj-pass-1", "公安一", ["gaj"], ["clerk"]),
        "gaj2": accounts.create_user(db, "gaj2", "gaj-pass-2", "公安二", ["gaj"], ["clerk"]),
        "swj1": accounts.create_user(db, "swj1", "swj-pass-1", "税务一", ["swj"], ["clerk"]),
        "admin": accounts.create_user(db, "admin", "admin-pass-1", "管理员", [], ["admin", "designer", "supervisor"]),
    }
    return users


def deploy_text(db, name: str, xml: str | bytes, deployed_by: str = "admin"):
    data = xml.encode() if isinstance(xml, str) else xml
    return deploy.deploy(db, [deploy.SourceFile(name, data)], deployed_by)


@pytest.fixture
def fixtures_dir() -> Path:
    return REPO / "tests" / "fixtures"
