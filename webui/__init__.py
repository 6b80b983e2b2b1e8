"""The Flask application factory: engine config and database, blueprints and error handlers."""
from __future__ import annotations

from dataclasses import replace

from flask import Flask

from engine import settings
from engine.config import Config
from engine.store import Database

from . import errors
from .api import api
from .auth import DB_EXTENSION
from .pages import pages
from .time_api import time_api

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
    app.json.ensure_ascii = False  # Chinese names stay readable in responses
    app.extensions[DB_EXTENSION] = db
    app.register_blueprint(api)
    app.register_blueprint(time_api)
    app.register_blueprint(pages)
    errors.register(app)
    return app

