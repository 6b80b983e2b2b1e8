"""Template filters every screen family shares: time limits as clerks say them, file sizes."""
from __future__ import annotations

import re

from flask import Flask
from flask_babel import gettext as _

_LIMIT = re.compile(r"^work(days|hours)\((\d+(?:\.\d+)?)\)$")


def time_limit(expression) -> str:
    """A diagram's or service guide's limit in words: workdays(2) -> 2个工作日, workhours(4) -> 4个工作小时."""
    match = _LIMIT.match(str(expression or ""))
    if not match:
        return str(expression or "—")
    unit, amount = match.groups()
    amount = amount.removesuffix(".0")
    return _("%(n)s working days", n=amount) if unit == "days" else _("%(n)s working hours", n=amount)


def file_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


def register(app: Flask) -> None:
    app.add_template_filter(time_limit, "time_limit")
    app.add_template_filter(file_size, "file_size")
