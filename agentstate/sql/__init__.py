"""SQL storage shared by sessions and responses: one database per store.

    db = open_database(target)          # a store directory, or a postgresql:// URL (PostgreSQL engine)
    with db.write(operation="sessions append") as tx:   # the writer lock, then one transaction
        tx.run(q_sessions.GET_SESSION, tenant=..., id=...)
    with db.read() as tx: ...           # a consistent snapshot, no lock

Statements live in the ``q_*`` modules as :class:`Stmt` objects holding each dialect's text side by
side; the engines pick their dialect. This package imports neither sqlite3 nor psycopg at import time.

Interface notes (for the engines and the statement modules):

* ``Stmt(sqlite=..., postgres=...)`` or ``Stmt(both=...)``. Params are named: ``:name`` in SQLite text,
  ``%(name)s`` in PostgreSQL text; ``both`` text is written with ``:name`` and converted for PostgreSQL
  (a literal ``%`` is doubled). Every statement on a tenant-scoped table has ``tenant = :tenant``.
* A transaction object ``tx`` has ``run(stmt, **p) -> list[tuple]``, ``one(stmt, **p) -> tuple | None``,
  ``value(stmt, **p) -> Any``, ``execute(stmt, **p) -> int`` (affected rows) and
  ``many(stmt, rows: Iterable[dict]) -> None`` (executemany, for bulk inserts).
* A Database is used from several threads at once (AgentStateSession runs each call in a worker
  thread): the SQLite engine takes a connection from a small pool per call; an engine must be thread-safe.
* ``check(target) -> list[dict]``: doctor's findings for the database ({"check", "ok", "detail"}).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._record import Record, setattr_
from ..errors import InvalidInput
from ..names import is_url  # noqa: F401 - re-exported: where a store lives

if TYPE_CHECKING:
    from .engine import Database

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _to_pyformat(text: str) -> str:
    return _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))


class Stmt(Record):
    """One SQL statement in both dialects (``both``: the same text, with ``:name`` parameters that
    PostgreSQL gets as ``%(name)s``)."""

    __slots__ = ("sqlite", "postgres", "both")
    _fields = ("sqlite", "postgres")
    sqlite: str
    postgres: str
    both: str

    def __init__(self, sqlite: str = "", postgres: str = "", both: str = "") -> None:
        if both:
            sqlite = sqlite or both
            postgres = postgres or _to_pyformat(both)
        setattr_(self, "sqlite", sqlite)
        setattr_(self, "postgres", postgres)
        setattr_(self, "both", both)

    def text(self, dialect: str) -> str:
        return self.sqlite if dialect == "sqlite" else self.postgres


class EmptyTx:
    """Reads of a database (or schema) that does not exist yet: no tables, so no rows. Both engines'
    ``read()`` yield one rather than create anything."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect

    def run(self, stmt: Stmt, **params: Any) -> list[tuple]:
        return []

    def one(self, stmt: Stmt, **params: Any) -> None:
        return None

    def value(self, stmt: Stmt, **params: Any) -> None:
        return None

    def execute(self, stmt: Stmt, **params: Any) -> int:
        return 0

    def many(self, stmt: Stmt, rows: Iterable[dict[str, Any]]) -> None:
        raise RuntimeError("many() in a read transaction")


def open_database(target: str | os.PathLike[str] | None = None, *, lock_timeout: float | str | None = None) -> Database:
    """The database of a store: ``<dir>/agentstate.db`` for a directory, or a PostgreSQL URL."""
    if is_url(target):
        try:
            from . import pg
        except ImportError:
            raise InvalidInput(
                "a postgresql:// URL needs the PostgreSQL backend",
                hint="install it with: pip install 'agentstate[postgres]'",
            ) from None
        return pg.Database(target, lock_timeout=lock_timeout)
    from ..names import default_dir
    from .engine import Database

    return Database(os.fspath(target) if target is not None else default_dir(), lock_timeout=lock_timeout)


def check(target: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Doctor's findings for the store's database (integrity, schema version, lock); never writes."""
    if is_url(target):
        db = open_database(target)
        try:
            return db.check()
        finally:
            db.close()
    from ..names import default_dir
    from .engine import check_sqlite

    return check_sqlite(os.fspath(target) if target is not None else default_dir())


def read_check(target: str | os.PathLike[str] | None, check: str, scan: Any, *, empty: str,
               reading: str) -> list[dict[str, Any]]:
    """Doctor's run of ``scan(tx)`` over a store's database in one read snapshot: no finding when a
    directory has no database yet, one finding (``check``) when it cannot be opened or read, ``empty``
    when its tables do not exist yet; else what ``scan`` found."""
    from ..errors import AgentStateError

    if not is_url(target):
        from ..names import default_dir
        from .engine import DB_NAME

        if not os.path.exists(os.path.join(os.fspath(target) if target is not None else default_dir(), DB_NAME)):
            return []  # no database: nothing stored, nothing to check (the database check says so)
    def failed(detail: str, e: AgentStateError) -> list[dict[str, Any]]:
        cause = {"ENOSPC": {"disk_full": True}, "EROFS": {"read_only": True}}  # not damage (doctor.py)
        return [{"check": check, "ok": False, "detail": f"{detail}: {e}", **cause.get(e.details.get("errno"), {})}]

    try:
        db = open_database(target)
    except AgentStateError as e:
        return failed("cannot open the database", e)
    try:
        with db.read() as tx:
            return scan(tx)
    except AgentStateError as e:
        if "no such table" in str(e) or "does not exist" in str(e):
            return [{"check": check, "ok": True, "detail": empty}]
        return failed(f"cannot read {reading}", e)
    finally:
        db.close()
