"""Bearer tokens for the API: issue, verify, resolve the current engine user and check roles."""
from __future__ import annotations

from functools import wraps
from typing import Callable

from flask import current_app, g, request
from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from engine import accounts
from engine.accounts import User
from engine.errors import AuthenticationFailed, NotFound, PermissionDenied
from engine.projection import may_work_on
from engine.store import Database

DB_EXTENSION = "approvals_db"
_TOKEN_SALT = "approvals.api-token"
# Roles that oversee every case rather than only those their department works on.
CASE_OVERSEERS = ("window", "supervisor", "admin")


class _ClockSigner(TimestampSigner):
    """Dates tokens with the engine's injected clock, so expiry follows the same "now" as deadlines."""

    def __init__(self, *args, clock, **kwargs):
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock().timestamp())


def database() -> Database:
    return current_app.extensions[DB_EXTENSION]


def _serializer() -> URLSafeTimedSerializer:
    config = database().config
    return URLSafeTimedSerializer(config.secret_key, salt=_TOKEN_SALT, signer=_ClockSigner,
                                  signer_kwargs={"clock": config.clock})


def issue_token(user: User) -> dict:
    return {"token": _serializer().dumps({"sub": user.username}),
            "token_type": "Bearer",
            "expires_in": database().config.token_max_age_seconds}


def user_from_token(token: str) -> User:
    try:
        payload = _serializer().loads(token, max_age=database().config.token_max_age_seconds)
    except SignatureExpired:
        raise AuthenticationFailed("the token has expired; get a new one from POST /api/token") from None
    except BadData:
        raise AuthenticationFailed("the token is not valid; get one from POST /api/token") from None
    username = payload.get("sub") if isinstance(payload, dict) else None
    try:
        return accounts.get_user(database(), username)
    except NotFound:
        # A deactivated or removed account: the same answer as a forged token, nothing more.
        raise AuthenticationFailed("the token is not valid; get one from POST /api/token") from None


def current_user() -> User:
    """The user named by the request's bearer token; raises AuthenticationFailed (401) otherwise."""
    if "user" in g:
        return g.user
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("authentication required: send 'Authorization: Bearer <token>' "
                                   "with a token from POST /api/token")
    g.user = user_from_token(token.strip())
    return g.user


def login_required(view: Callable) -> Callable:
    @wraps(view)
    def wrapper(*args, **kwargs):
        current_user()
        return view(*args, **kwargs)
    return wrapper


def roles_required(*roles: str) -> Callable:
    """Any one of `roles` admits the user; the 403 names them so the client knows what is missing."""
    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = current_user()
            if not user.has_role(*roles):
                raise PermissionDenied(f"this needs the role {' or '.join(roles)}; "
                                       f"you have {', '.join(user.roles) or 'no roles'}")
            return view(*args, **kwargs)
        return wrapper
    return decorate


def check_may_view_case(user: User, case: dict) -> None:
    """Overseers see every case; others only cases they started or whose tasks reach their queues."""
    if user.has_role(*CASE_OVERSEERS) or case.get("started_by") == user.username:
        return
    for task in case.get("tasks", []):
        if may_work_on(user, task) or task.get("completed_by") == user.username:
            return
    raise PermissionDenied(f"case {case.get('case_no')} has no task for your departments")
