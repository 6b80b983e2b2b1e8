"""Hot-path write statements: compiled once per dialect, then run straight on the driver's cursor."""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy.engine import Connection
from sqlalchemy.sql import ClauseElement


class HotStatement:
    """An INSERT, UPDATE or DELETE the engine runs on every task action.

    SQLAlchemy's execute() spends 25–40 µs per call on bookkeeping the engine does not need here (result
    metadata, events, cache keys) — more than SQLite takes to run these statements. This compiles the
    statement once per dialect with the same bind processors SQLAlchemy would apply (so UTC datetimes and
    JSON are stored exactly as everywhere else) and hands the driver the SQL string and values directly,
    inside the caller's transaction. Only for statements without results; an INSERT names its `columns`
    (the rest take their server defaults) and gets no Python-side column defaults.
    """

    def __init__(self, statement: ClauseElement, columns: tuple[str, ...] | None = None):
        self.statement = statement
        self.columns = columns
        self._compiled: dict[str, tuple[str, tuple, dict, bool]] = {}

    def execute(self, conn: Connection, params: dict | list[dict]) -> int:
        """Run with one parameter set or many; returns the number of rows affected."""
        sql, order, processors, positional = self._compiled.get(conn.dialect.name) or self._compile(conn.dialect)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            if isinstance(params, dict):
                cursor.execute(sql, _bind(params, order, processors, positional))
            else:
                cursor.executemany(sql, [_bind(p, order, processors, positional) for p in params])
            return cursor.rowcount
        finally:
            cursor.close()

    def _compile(self, dialect) -> tuple[str, tuple, dict, bool]:
        entry = self._compiled[dialect.name] = _compile(self.statement, dialect, self.columns)
        return entry


def _compile(statement: ClauseElement, dialect, columns: tuple[str, ...] | None = None) -> tuple[str, tuple, dict, bool]:
    """The SQL text, the order of its parameters, and the bind processor of each parameter that has one."""
    compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns else None)
    processors: dict[str, Callable[[Any], Any]] = {}
    for name, bind in compiled.binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    order = tuple(compiled.positiontup or ()) if dialect.positional else tuple(compiled.binds)
    return compiled.string, order, processors, dialect.positional


def _bind(params: dict, order: tuple, processors: dict, positional: bool):
    if positional:
        return [processors[name](params.get(name)) if name in processors else params.get(name) for name in order]
    return {name: processors[name](params.get(name)) if name in processors else params.get(name) for name in order}


class HotQuery:
    """A hot-path SELECT of whole rows, run like HotStatement and converted by SQLAlchemy's result processors."""

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple, dict, bool, list]] = {}

    def first(self, conn: Connection, params: dict) -> dict | None:
        """The first row as a dict keyed by column name, or None."""
        sql, order, processors, positional, columns = self._compiled.get(conn.dialect.name) or self._compile(conn.dialect)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql, _bind(params, order, processors, positional))
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        return {name: convert(value) if convert is not None else value
                for (name, convert), value in zip(columns, row)}

    def _compile(self, dialect):
        sql, order, processors, positional = _compile(self.statement, dialect)
        columns = [(column.key, column.type.dialect_impl(dialect).result_processor(dialect, None))
                   for column in self.statement.selected_columns]
        entry = (sql, order, processors, positional, columns)
        self._compiled[dialect.name] = entry
        return entry
