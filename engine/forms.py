"""Task forms from camunda:formData: checked at deploy, described for clients, enforced on completion."""
from __future__ import annotations

from datetime import date, datetime

from .bpmn import CAMUNDA
from .errors import FormInvalid, Problem

FIELD_TYPES = ("string", "long", "boolean", "date", "enum")
CONSTRAINTS = ("required", "readonly", "minlength", "maxlength", "min", "max")
_NUMERIC_CONSTRAINTS = ("minlength", "maxlength", "min", "max")


def check_form_definition(form_data) -> list[tuple[str, int | None]]:
    """Problems in a camunda:formData element, as (message, line) pairs."""
    problems = []
    seen = set()
    for field in form_data.iter(CAMUNDA + "formField"):
        field_id = field.get("id")
        where = f"form field {field_id!r}" if field_id else "a form field"
        if not field_id:
            problems.append((f"{where} has no id", field.sourceline))
        elif field_id in seen:
            problems.append((f"{where} is defined twice", field.sourceline))
        seen.add(field_id)
        field_type = field.get("type")
        if field_type not in FIELD_TYPES:
            problems.append((f"{where} has type {field_type!r}; supported types are {', '.join(FIELD_TYPES)}",
                             field.sourceline))
        if field_type == "enum" and not list(field.iter(CAMUNDA + "value")):
            problems.append((f"{where} is an enum without any camunda:value", field.sourceline))
        for constraint in field.iter(CAMUNDA + "constraint"):
            name, config = constraint.get("name"), constraint.get("config")
            if name not in CONSTRAINTS:
                problems.append((f"{where} has constraint {name!r}; supported are {', '.join(CONSTRAINTS)}",
                                 constraint.sourceline))
            elif name in _NUMERIC_CONSTRAINTS:
                try:
                    float(config)
                except (TypeError, ValueError):
                    problems.append((f"{where}: constraint {name} needs a number, got {config!r}",
                                     constraint.sourceline))
    return problems


def describe(form) -> list[dict]:
    """The form as clients render it."""
    fields = []
    for field in getattr(form, "fields", []) or []:
        item = {
            "id": field.id, "label": field.label or field.id, "type": field.type,
            "default": field.default_value, "required": _has(field, "required"),
            "readonly": _has(field, "readonly"),
            "constraints": {v.name: v.config for v in field.validation},
            "properties": {p.id: p.value for p in field.properties},
        }
        if field.type == "enum":
            item["options"] = [{"id": o.id, "name": o.name} for o in field.options]
        fields.append(item)
    return fields


def validate(form, submitted: dict) -> dict:
    """Return the typed values of a submission, or raise FormInvalid listing every bad field."""
    if not isinstance(submitted, dict):
        raise FormInvalid(Problem("form data must be a JSON object", field="data"))
    fields = getattr(form, "fields", None) or []
    if not fields:
        return dict(submitted)
    problems: list[Problem] = []
    known = {f.id for f in fields}
    for extra in sorted(set(submitted) - known):
        problems.append(Problem(f"unknown field {extra!r}", field=extra))
    values = {}
    for field in fields:
        raw = submitted.get(field.id)
        if _has(field, "readonly"):
            if raw is not None:
                problems.append(Problem("this field is read-only", field=field.id))
            continue
        if raw is None or raw == "":
            if _has(field, "required"):
                problems.append(Problem(f"{field.label or field.id} is required", field=field.id))
            continue
        try:
            value = _convert(field, raw)
            _check_bounds(field, value)
        except ValueError as exc:
            problems.append(Problem(str(exc), field=field.id))
            continue
        values[field.id] = value
    if problems:
        raise FormInvalid(problems, "the form has invalid fields")
    return values


def _has(field, constraint: str) -> bool:
    # SpiffWorkflow's own has_validation() misses config-less constraints such as `required`.
    return any(v.name == constraint for v in field.validation)


def _convert(field, raw):
    kind = field.type
    if kind == "string":
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ValueError("must be text")
        return str(raw)
    if kind == "long":
        if isinstance(raw, bool):
            raise ValueError("must be a whole number")
        try:
            number = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None or (isinstance(raw, str) and not raw.strip().lstrip("-").isdigit()):
            raise ValueError(f"must be a whole number, got {raw!r}")
        return number
    if kind == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "on", "off", "1", "0"):
            return raw.lower() in ("true", "on", "1")
        raise ValueError(f"must be true or false, got {raw!r}")
    if kind == "date":
        if not isinstance(raw, str):
            raise ValueError("must be a date like 2026-12-01")
        try:
            return (datetime.fromisoformat(raw).isoformat() if "T" in raw else date.fromisoformat(raw).isoformat())
        except ValueError:
            raise ValueError(f"must be a date like 2026-12-01, got {raw!r}") from None
    if kind == "enum":
        choices = [o.id for o in field.options]
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {raw!r}")
        return raw
    raise ValueError(f"unsupported field type {kind!r}")


def _check_bounds(field, value) -> None:
    for name in _NUMERIC_CONSTRAINTS:
        config = field.get_validation(name)
        if config is None:
            continue
        limit = float(config)
        if name == "minlength" and isinstance(value, str) and len(value) < limit:
            raise ValueError(f"must be at least {int(limit)} characters")
        if name == "maxlength" and isinstance(value, str) and len(value) > limit:
            raise ValueError(f"must be at most {int(limit)} characters")
        if name == "min" and isinstance(value, int) and value < limit:
            raise ValueError(f"must be at least {config}")
        if name == "max" and isinstance(value, int) and value > limit:
            raise ValueError(f"must be at most {config}")
