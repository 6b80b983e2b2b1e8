"""Engine settings, read once from the environment and passed explicitly to every engine call."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

DEFAULT_SQLITE_PATH = Path("instance") / "approvals.sqlite3"


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Config:
    database_url: str = f"sqlite:///{DEFAULT_SQLITE_PATH}"
    # Empty: the web app takes the key stored in the database, so every process signs alike.
    secret_key: str = ""
    # Injected so that tests and the timer sweep agree on "now" without patching.
    clock: Callable[[], datetime] = system_clock
    max_upload_bytes: int = 5 * 1024 * 1024
    token_max_age_seconds: int = 8 * 3600
    sweep_interval_seconds: float = 2.0
    sweep_batch_size: int = 200
    # argon2id cost; production keeps argon2-cffi's recommended profile, tests choose a cheap one.
    password_time_cost: int = 3
    password_memory_kib: int = 65536
    password_parallelism: int = 4
    office_hours: str = "09:00-12:00,13:30-17:30"
    timezone: str = "Asia/Shanghai"

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        env = os.environ
        values: dict = {}
        if env.get("DATABASE_URL"):
            values["database_url"] = normalise_database_url(env["DATABASE_URL"])
        if env.get("APPROVALS_SECRET_KEY"):
            values["secret_key"] = env["APPROVALS_SECRET_KEY"]
        if env.get("APPROVALS_MAX_UPLOAD_BYTES"):
            values["max_upload_bytes"] = int(env["APPROVALS_MAX_UPLOAD_BYTES"])
        if env.get("APPROVALS_SWEEP_INTERVAL_SECONDS"):
            values["sweep_interval_seconds"] = float(env["APPROVALS_SWEEP_INTERVAL_SECONDS"])
        if env.get("APPROVALS_SWEEP_BATCH_SIZE"):
            values["sweep_batch_size"] = int(env["APPROVALS_SWEEP_BATCH_SIZE"])
        if env.get("APPROVALS_OFFICE_HOURS"):
            values["office_hours"] = env["APPROVALS_OFFICE_HOURS"]
        values.update(overrides)
        return cls(**values)

    def now(self) -> datetime:
        return self.clock()

    def local(self, moment: datetime | None) -> datetime | None:
        """An aware moment on the centre's clock (None stays None)."""
        return moment.astimezone(ZoneInfo(self.timezone)) if moment is not None else None


def normalise_database_url(url: str) -> str:
    """Accept the libpq-style `postgresql://` URL operators paste, and use psycopg 3 for it."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url
