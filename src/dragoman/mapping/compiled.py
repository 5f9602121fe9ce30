"""A SQLAlchemy statement compiled once for a driver, bound per call without SQLAlchemy.

The store's lookups by account run on the drivers directly (:mod:`.pg_lookup`,
:mod:`.sqlite_lookup`); both send the statement SQLAlchemy compiles for them, with its
positional arguments in the order the compiled SQL names them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Dialect, Select


class CompiledStatement:
    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self._names = tuple(compiled.positiontup or ())
        self._defaults = dict(compiled.params)

    def bind(self, **params: Any) -> tuple[str, tuple[Any, ...]]:
        """The SQL and its arguments: ``params`` over the values the statement holds."""
        values = {**self._defaults, **params}
        return self.sql, tuple(values[name] for name in self._names)
