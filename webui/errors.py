"""Maps engine errors and HTTP errors to responses in one place: JSON for API clients, plain pages otherwise."""
from __future__ import annotations

import re
import uuid

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, default_exceptions

from engine.errors import (
    ApprovalsError, AuthenticationFailed, Conflict, InvalidInput, NotFound, PermissionDenied,
)

# Most specific class first; anything else the engine raises on purpose is a request it cannot carry out.
STATUS = (
    (NotFound, 404),
    (PermissionDenied, 403),
    (AuthenticationFailed, 401),
    (Conflict, 409),
    (InvalidInput, 422),  # DeploymentInvalid and FormInvalid too
    (ApprovalsError, 422),
)


def translated(message: str, patterns, unknown=None) -> str:
    """An engine message in the page's language: the first (pattern, render) whose pattern matches renders it
    from the match; a message no pattern knows goes to `unknown`, or stays in the engine's words."""
    for pattern, render in patterns:
        match = re.match(pattern, message)
        if match:
            return render(match)
    return unknown(message) if unknown else message


def status_of(error: ApprovalsError) -> int:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 422


def register(app: Flask) -> None:
    app.register_error_handler(ApprovalsError, _engine_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def wants_json() -> bool:
    if request.path == "/api" or request.path.startswith("/api/"):
        return True
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"


def _engine_error(error: ApprovalsError):
    status = status_of(error)
    if not wants_json():
        return default_exceptions[status](description=error.message)
    response = jsonify(error.to_dict())
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="approvals"'
    return response


def _http_error(error: HTTPException):
    if not wants_json() or error.code is None or error.code < 400:
        return error  # redirects (e.g. a missing trailing slash) stay redirects
    response = jsonify({"error": _describe(error)})
    response.status_code = error.code
    for name, value in error.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value  # keeps Allow on 405, Retry-After and the like
    return response


def _describe(error: HTTPException) -> str:
    if error.code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return f"the request is too large; the limit is {limit} bytes" if limit else "the request is too large"
    if error.code == 404:
        return f"no such resource: {request.method} {request.path}"
    if error.code == 405:
        return f"{request.method} is not allowed on {request.path}"
    return error.description or error.name


def _unexpected(error: Exception):
    # The client gets a reference to quote, never the traceback; the log gets both.
    reference = uuid.uuid4().hex[:12]
    current_app.logger.error("unexpected error %s on %s %s", reference, request.method, request.path,
                             exc_info=error)
    if not wants_json():
        return InternalServerError(description=f"An unexpected error occurred (reference {reference}).")
    response = jsonify({"error": "an unexpected error occurred; the administrator can find it in the log "
                                 f"under reference {reference}", "reference": reference})
    response.status_code = 500
    return response
