"""Fixtures for the web layer: an app on the test database, a client, and bearer tokens for the demo users."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from webui import create_app
from webui.auth import DB_EXTENSION

# Must match the passwords the `org` fixture in tests/conftest.py gives its users.
PASSWORDS = {"window1": "window-pass-1", "scjgj1": "scjgj-pass-1", "gaj1": "gaj-pass-1", "gaj2": "gaj-pass-2",
             "swj1": "swj-pass-1", "admin": "admin-pass-1"}


@pytest.fixture
def app(db_config):
    application = create_app({"TESTING": True, "ENGINE_CONFIG": db_config})
    yield application
    application.extensions[DB_EXTENSION].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth(client, org):
    """auth("gaj1") -> headers carrying a fresh bearer token obtained through POST /api/token."""
    cache: dict[str, dict] = {}

    def headers(username: str, password: str | None = None) -> dict:
        if username not in cache:
            response = client.post("/api/token", json={"username": username,
                                                       "password": password or PASSWORDS[username]})
            assert response.status_code == 200, response.json
            cache[username] = {"Authorization": f"Bearer {response.json['token']}"}
        return cache[username]

    return headers


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright; skipped locally without it, a failure in CI (./test installs it)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium fonts-noto-cjk)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()
