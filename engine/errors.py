"""The one error hierarchy of the engine; the web layer maps each class to one HTTP status."""
from __future__ import annotations

from dataclasses import dataclass


class ApprovalsError(Exception):
    """Base of every error the engine raises on purpose; `message` is safe to show to a user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": self.message}


class NotFound(ApprovalsError):
    pass


class PermissionDenied(ApprovalsError):
    pass


class AuthenticationFailed(ApprovalsError):
    pass


class Conflict(ApprovalsError):
    pass


@dataclass
class Problem:
    """One thing wrong with an input, located as precisely as we can."""

    message: str
    file: str | None = None
    element_id: str | None = None
    line: int | None = None
    field: str | None = None

    def to_dict(self) -> dict:
        if self.field is not None:
            return {"field": self.field, "message": self.message}
        return {"file": self.file, "element_id": self.element_id, "line": self.line, "message": self.message}


class InvalidInput(ApprovalsError):
    """Input refused; carries every problem found so the user can fix them in one go."""

    def __init__(self, problems: list[Problem] | Problem, message: str | None = None):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__(message or "; ".join(p.message for p in self.problems))

    def to_dict(self) -> dict:
        return {"error": self.message, "errors": [p.to_dict() for p in self.problems]}


class DeploymentInvalid(InvalidInput):
    """A BPMN upload that cannot be deployed: broken XML, not BPMN, unsupported or bad elements."""


class FormInvalid(InvalidInput):
    """Task form data that breaks the form's field constraints."""

