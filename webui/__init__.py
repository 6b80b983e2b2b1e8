"""The Flask application factory: engine config and database, blueprints and error handlers."""
from __future__ import annotations

from dataclasses import replace

from datetime import timedelta
from pathlib import Path

from flask import Flask, request, session
from flask_babel import Babel, get_locale, lazy_gettext as _l
from flask_wtf.csrf import CSRFProtect

from engine import settings
from engine.config import Config
from engine.store import Database

from . import errors, formatting
from .api import api
from .auth import DB_EXTENSION
from .cases import cases
from .admin import admin
from .designer import designer
from .designer_api import designer_api
from .pages import pages
from .public import public
from .feedback import feedback
from .login import page_user, session_pages
from .time_api import time_api
from .supervision import supervision
from .supervision_api import supervision_api
from .tasks import tasks

# A deployment upload may carry several diagrams and their guides, each up to max_upload_bytes.
UPLOAD_FILES = 8
MULTIPART_OVERHEAD = 64 * 1024


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app; test_config may hold Flask settings and a ready engine Config under "ENGINE_CONFIG".

    The signing key is the config's (APPROVALS_SECRET_KEY); when that is empty it is the one stored in
    the database, shared by every process.
    """
    overrides = dict(test_config or {})
    config = overrides.pop("ENGINE_CONFIG", None)
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"ENGINE_CONFIG must be an engine.config.Config, not {type(config).__name__}")
    db = Database(config or Config.from_env())
    if not db.config.secret_key:
        # Without a configured key every process would sign with its own random one; share one via the database.
        db.config = replace(db.config, secret_key=settings.secret_key(db))

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=db.config.secret_key,
        MAX_CONTENT_LENGTH=db.config.max_upload_bytes * UPLOAD_FILES + MULTIPART_OVERHEAD,
    )
    app.config.update(overrides)
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.config.setdefault("PERMANENT_SESSION_LIFETIME", timedelta(hours=10))   # one working day
    app.config.setdefault("BABEL_DEFAULT_LOCALE", "zh_CN")
    # One catalog folder per screen family (translations, translations_designer, ...), merged by Flask-Babel.
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", ";".join(
        sorted(path.name for path in Path(app.root_path).glob("translations*") if path.is_dir())))
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)   # valid for the session; a clerk's form may stay open
    app.json.ensure_ascii = False  # Chinese names stay readable in responses
    app.extensions[DB_EXTENSION] = db
    Babel(app, locale_selector=_choose_locale)
    csrf = CSRFProtect(app)
    for blueprint in (api, time_api, designer_api, supervision_api):
        csrf.exempt(blueprint)   # bearer tokens, not cookies: no cross-site request can carry them
        app.register_blueprint(blueprint)
    for blueprint in (session_pages, pages, cases, public, feedback, designer, admin, supervision, tasks):
        app.register_blueprint(blueprint)
    app.context_processor(_page_context)
    errors.register(app)
    formatting.register(app)
    return app


# The main navigation; entries whose pages are not registered are left out.
NAV = [
    ("tasks.task_list", _l("To do"), ()),
    ("tasks.done_list", _l("Done"), ()),
    ("cases.case_list", _l("All cases"), ("supervisor", "admin", "window")),
    ("supervision.board", _l("Supervision"), ("supervisor", "admin", "lead")),
    ("feedback.index", _l("Ratings and complaints"), ("supervisor", "admin", "window", "lead")),
    ("designer.index", _l("Designer"), ("designer", "admin")),
    ("admin.index", _l("Administration"), ("admin",)),
]


def _choose_locale() -> str:
    chosen = session.get("language") or request.accept_languages.best_match(["zh_CN", "zh", "en"]) or "zh_CN"
    return "zh_CN" if chosen.startswith("zh") else chosen


def _page_context() -> dict:
    from flask import current_app
    return {
        "page_user": page_user(),
        "nav_items": [item for item in NAV if item[0] in current_app.view_functions],
        # Babel names zh_CN "zh_Hans_CN" (its catalog lives under "zh"); templates only need which one.
        "current_locale": "zh_CN" if get_locale().language == "zh" else "en",
    }

