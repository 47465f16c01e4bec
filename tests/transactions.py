"""Which transaction each statement ran in: for the tests that say a step is one unit of work."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


@dataclass
class Transactions:
    """While entered, numbers every transaction ENGINE begins and notes each statement with the
    number of the transaction it ran in (per connection, so threads do not mix them up)."""

    engine: Engine
    begun: int = 0
    committed: int = 0
    statements: list[tuple[int, str]] = field(default_factory=list)
    _numbers: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __enter__(self) -> Transactions:
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "commit", self._commit)
        event.listen(self.engine, "before_cursor_execute", self._statement)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine, "before_cursor_execute", self._statement)

    def _begin(self, conn: Connection) -> None:
        self.begun += 1
        conn.info["probe_txn"] = next(self._numbers)

    def _commit(self, conn: Connection) -> None:
        self.committed += 1

    def _statement(self, conn: Connection, cursor: object, statement: str, *args: object) -> None:
        self.statements.append((conn.info.get("probe_txn", 0), " ".join(statement.split())))

    def matching(self, pattern: str) -> list[str]:
        return [s for _, s in self.statements if re.search(pattern, s)]

    def of(self, pattern: str) -> set[int]:
        """The transactions in which a statement matching PATTERN (a regex) ran."""
        return {n for n, s in self.statements if re.search(pattern, s)}
