"""The PostgreSQL engine: connections, server errors, migrations, the advisory write lock, ``Database``.

A ``postgresql://`` (or ``postgres://``) URL names a database; agentstate's tables live in one
PostgreSQL schema of it, ``agentstate`` unless the URL says ``?schema=NAME`` (stripped before
connecting) or the environment sets ``AGENTSTATE_PG_SCHEMA``. The schema name is validated like an
identifier and always quoted with ``psycopg.sql.Identifier``; every connection sets its
``search_path`` to it, so the statements of ``q_*.py`` name tables unqualified in both dialects.

Migrations (``schema.MIGRATIONS``, the "postgres" statements) run on first use, each in its own
transaction, serialized across concurrent first users by a transaction-level advisory lock, and
recorded in ``schema_migrations(version, applied_at)``. A schema newer than the code is refused
(``FormatTooNew``, exit 5) and never touched.

Writers serialize on transaction-level advisory locks (one key per schema and purpose: the state
document, the sessions/responses tables), waited for with ``lock_timeout``. Before waiting, a writer
publishes who it is (lock ID, host, PID, operation, since) in the UNLOGGED table ``lock_holders``,
keyed by its backend PID, in its own autocommit statement so that everyone sees it at once; a waiter
that times out finds the holder through ``pg_locks`` (the granted advisory lock's backend PID) and
that row, and raises ``StateLocked`` naming it. A holder that dies (kill -9, network cut) loses its
connection, hence its lock and its uncommitted change, at once.

psycopg is imported only here, and only when a URL is used: ``import agentstate`` and every local
command stay free of it. Without it, a URL gets one ``InvalidInput`` naming the ``postgres`` extra.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._version import __version__
from ..errors import (
    AgentStateError,
    ConflictError,
    FormatTooNew,
    InvalidInput,
    NotFound,
    StateLocked,
    StorageError,
)

log = logging.getLogger("agentstate.pg")

SCHEMES = ("postgresql://", "postgres://")
SCHEMA_ENV = "AGENTSTATE_PG_SCHEMA"
DEFAULT_SCHEMA = "agentstate"
EXTRA_HINT = "install the PostgreSQL driver: pip install 'agentstate[postgres]'"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Advisory lock purposes (the second key of pg_advisory_xact_lock(int4, int4)).
LOCK_STATE, LOCK_DB, LOCK_MIGRATE = 1, 2, 3
LOCK_NAMES = {LOCK_STATE: "state", LOCK_DB: "sessions and responses", LOCK_MIGRATE: "migrations"}


def is_url(target: Any) -> bool:
    return isinstance(target, str) and target.lower().startswith(SCHEMES)


def check_schema(name: Any) -> str:
    if type(name) is not str or _SCHEMA_NAME.fullmatch(name) is None:
        raise InvalidInput(
            f"PostgreSQL schema name {name!r} is not valid",
            hint="a schema name is 1 to 63 characters from A-Z a-z 0-9 _, not starting with a digit",
        )
    return name


def split_url(url: str) -> tuple[str, str]:
    """(the URL to connect with, the schema name): ``?schema=`` is ours, not libpq's."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    schema = schemas[-1] if schemas else (os.environ.get(SCHEMA_ENV) or DEFAULT_SCHEMA)
    return urlunsplit(parts._replace(query=urlencode(rest))), check_schema(schema)


def psycopg_module():
    try:
        import psycopg
    except ImportError:
        raise InvalidInput("a postgresql:// URL needs the PostgreSQL driver (psycopg), which is not installed",
                           hint=EXTRA_HINT) from None
    return psycopg


def describe_server(conninfo: str) -> str:
    """host:port/dbname of a URL, without user or password (for messages)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        d = conninfo_to_dict(conninfo)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by connect
        return "the PostgreSQL server"
    host = d.get("host") or "localhost"
    port = d.get("port") or "5432"
    return f"PostgreSQL at {host}:{port}/{d.get('dbname') or d.get('user') or ''}".rstrip("/")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0].strip() if text else type(e).__name__


def server_error(e: BaseException, *, doing: str, where: str, committing: bool = False) -> AgentStateError:
    """One clear AgentStateError for a psycopg error met while ``doing`` something."""
    import psycopg
    from psycopg import errors as pe

    if isinstance(e, AgentStateError):
        return e
    sqlstate = getattr(e, "sqlstate", None) or ""
    msg = _first_line(e)
    if isinstance(e, pe.DiskFull) or sqlstate.startswith("53"):
        return StorageError(f"{where} is out of resources while {doing}: {msg}",
                            hint="nothing was written; free disk space (or memory) on the server and retry")
    if isinstance(e, pe.InsufficientPrivilege):
        return StorageError(f"{where} refused {doing}: {msg}",
                            hint="grant this role the privileges it needs, or run `agentstate migrate --url URL` "
                                 "as a role that may create the schema")
    if isinstance(e, pe.QueryCanceled):
        return StorageError(f"{where} cancelled {doing}: {msg}", hint="nothing was written; retry")
    if isinstance(e, psycopg.OperationalError) or sqlstate.startswith(("08", "57P")):
        if "FATAL:" in msg:  # the server's own words, without libpq's "connection to server at ... failed"
            msg = msg.split("FATAL:", 1)[1].strip()
        low = msg.lower()
        if (sqlstate in ("28P01", "28000") or "authentication failed" in low or "password" in low
                or "not permitted to log in" in low or "pg_hba.conf" in low
                or (low.startswith("role ") and "does not exist" in low)):
            return StorageError(f"cannot log in to {where}: {msg}",
                                hint="check the user and password in the URL (or ~/.pgpass / PGPASSWORD) and "
                                     "that the role may log in")
        if "does not exist" in low and "database" in low:
            return StorageError(f"cannot use {where}: {msg}", hint="create the database, or fix its name in the URL")
        if committing:
            return StorageError(
                f"the connection to {where} was lost while committing: {msg}",
                hint="the change may or may not have been saved; check with `agentstate show` before retrying",
            )
        if doing == "connecting":
            return StorageError(f"cannot connect to {where}: {msg}",
                                hint="check that the server is running and reachable and that the URL is right; "
                                     "then retry")
        return StorageError(f"the connection to {where} was lost while {doing}: {msg}",
                            hint="nothing was saved; retry once the server is reachable again")
    if isinstance(e, psycopg.Error):
        code = f" ({sqlstate})" if sqlstate else ""
        return StorageError(f"{where} failed while {doing}{code}: {msg}", hint="nothing was saved")
    raise e


def lock_key(schema: str) -> int:
    """The first advisory-lock key of a schema (a positive int4, the same for every process)."""
    return zlib.crc32(schema.encode("utf-8")) & 0x7FFFFFFF


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _timeout_ms(timeout: float) -> str:
    return f"{max(1, int(timeout * 1000))}ms"


# --- connections -------------------------------------------------------------------------------

_migrated: set[tuple[str, str]] = set()  # (conninfo, schema) pairs this process found up to date
_orphans: list[Any] = []  # connections inherited over fork: never closed here (that would end the parent's)


class Connector:
    """One lazily opened autocommit connection to ``url``'s database, search_path set to its schema.

    ``conn()`` reconnects after the connection broke (server restart, network cut) and makes sure the
    schema is migrated (once per process).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        psycopg_module()
        self.url = url
        self.conninfo, self.schema = split_url(url)
        self.where = describe_server(self.conninfo)
        self.migrate = migrate
        self.key = lock_key(self.schema)
        self._local = threading.local()  # one connection per thread, as psycopg connections are not shared
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<{self.where} schema {self.schema}>"

    @property
    def _conn(self) -> Any:
        return getattr(self._local, "conn", None)

    def conn(self) -> Any:
        """This thread's connection, opened (and the schema migrated) on first use, replaced if broken."""
        if self._pid != os.getpid():  # a forked child never uses (nor closes) its parent's connections
            with self._all_lock:
                _orphans.extend(self._all)
                self._all = []
            self._local = threading.local()
            self._pid = os.getpid()
        c = self._conn
        if c is not None and (c.closed or c.broken):
            self.close()
            c = None
        if c is None:
            c = self._connect()
            self._local.conn = c
            with self._all_lock:
                self._all.append(c)
        return c

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict

        try:
            given = conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError as e:
            raise InvalidInput(f"the PostgreSQL URL is not valid: {_first_line(e)}") from None
        extra = {k: v for k, v in {
            "connect_timeout": "10",
            "application_name": f"agentstate {__version__} pid {os.getpid()}",
            "keepalives": "1", "keepalives_idle": "15", "keepalives_interval": "5", "keepalives_count": "3",
        }.items() if k not in given}
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True, **extra)
        except psycopg.Error as e:
            raise server_error(e, doing="connecting", where=self.where) from None
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            if self.migrate and (self.conninfo, self.schema) not in _migrated:
                migrate(conn, self.schema, self.where)
                _migrated.add((self.conninfo, self.schema))
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        c = self._conn
        self._local.conn = None
        if c is None:
            return
        with self._all_lock:
            if c in self._all:
                self._all.remove(c)
        if self._pid == os.getpid():
            _close(c)

    def close_all(self) -> None:
        """Close every connection this object opened in this process."""
        with self._all_lock:
            conns, self._all = self._all, []
        self._local = threading.local()
        if self._pid == os.getpid():
            for c in conns:
                _close(c)

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Map psycopg errors met while ``doing`` to one AgentStateError; drop a broken connection."""
        import psycopg

        try:
            yield
        except psycopg.Error as e:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self.close()
            raise server_error(e, doing=doing, where=self.where) from None

    def query(self, doing: str, text: str, params: Any = None) -> list[tuple]:
        """One autocommit read; a connection found dead (the server restarted since its last use) is
        replaced and the read retried once."""
        import psycopg

        for attempt in (1, 2):
            with self.errors(doing):
                conn = self.conn()
                try:
                    return conn.execute(text, params).fetchall()
                except psycopg.OperationalError:
                    if attempt == 2 or not (conn.broken or conn.closed):
                        raise
                    self.close()
        raise AssertionError("unreachable")


def _close(c: Any) -> None:
    try:
        c.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone anyway
        pass


# --- migrations --------------------------------------------------------------------------------

def schema_version(conn: Any) -> int | None:
    """The version recorded in the current schema's schema_migrations, None if there is none."""
    from psycopg import errors as pe

    try:
        with conn.transaction():
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except pe.UndefinedTable:
        return None
    return row[0] or 0


def _too_new(found: int, schema: str, where: str, supported: int) -> FormatTooNew:
    return FormatTooNew(
        f"the agentstate schema {schema!r} on {where} is at version {found}; this agentstate knows up to {supported}",
        hint="upgrade agentstate; the schema was left untouched",
        schema_version=found,
    )


def migrate(conn: Any, schema: str, where: str) -> list[int]:
    """Bring ``schema`` up to SCHEMA_VERSION; the versions applied (none if it was up to date)."""
    import psycopg
    from psycopg import sql

    from .schema import MIGRATIONS, SCHEMA_VERSION

    try:
        found = schema_version(conn)
        if found is not None and found >= SCHEMA_VERSION:
            if found > SCHEMA_VERSION:
                raise _too_new(found, schema, where, SCHEMA_VERSION)
            return []
        applied: list[int] = []
        ident = sql.Identifier(schema)
        for version in range(1, SCHEMA_VERSION + 1):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (lock_key(schema), LOCK_MIGRATE))
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
                if current > SCHEMA_VERSION:
                    raise _too_new(current, schema, where, SCHEMA_VERSION)
                if current >= version:
                    continue
                for statement in MIGRATIONS[version - 1].get("postgres", []):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied.append(version)
        if applied:
            log.info("migrated schema %s on %s to version %d", schema, where, SCHEMA_VERSION)
        return applied
    except psycopg.Error as e:
        raise server_error(e, doing="creating or upgrading the agentstate schema", where=where) from None


# --- the advisory write lock -------------------------------------------------------------------

_HOLDER_COLUMNS = "lock_id, host, pid, operation, version, since"

_PUBLISH = (
    "INSERT INTO lock_holders (backend_pid, lock_key, " + _HOLDER_COLUMNS + ")"
    " VALUES (pg_backend_pid(), %(purpose)s, %(lock_id)s, %(host)s, %(pid)s, %(operation)s, %(version)s, now())"
    " ON CONFLICT (backend_pid) DO UPDATE SET lock_key = EXCLUDED.lock_key, lock_id = EXCLUDED.lock_id,"
    " host = EXCLUDED.host, pid = EXCLUDED.pid, operation = EXCLUDED.operation, version = EXCLUDED.version,"
    " since = EXCLUDED.since"
)

# The backend holding an advisory lock (granted, in this database) and what it published.
_HOLDER = (
    "SELECT l.pid, h.lock_id, h.host, h.pid, h.operation, h.version, coalesce(h.since, a.xact_start),"
    " a.application_name, host(a.client_addr), a.usename"
    " FROM pg_locks l"
    " LEFT JOIN lock_holders h ON h.backend_pid = l.pid AND h.lock_key = %(purpose)s"
    " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %(key)s::oid AND l.objid = %(purpose)s::oid"
    " AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _holder_dict(row: tuple | None) -> dict[str, Any] | None:
    if row is None:
        return None
    backend_pid, lock_id, host, pid, operation, version, since, app, client, user = row
    return {
        "lock_id": lock_id,
        "pid": pid,
        "hostname": host,
        "operation": operation,
        "acquired_at": _iso(since),
        "version": version,
        "backend_pid": backend_pid,
        "client_addr": client,
        "user": user,
        "application_name": app,
    }


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown holder"
    if holder.get("pid") is None:
        return f"PostgreSQL backend {holder['backend_pid']} ({holder.get('application_name') or 'not agentstate'})"
    return (f"PID {holder['pid']} on {holder['hostname']} (operation {holder['operation']!r}, "
            f"since {holder['acquired_at']}, lock ID {holder['lock_id']})")


def read_holder(conn: Any, key: int, purpose: int) -> dict[str, Any] | None:
    with conn.transaction():
        return _holder_dict(conn.execute(_HOLDER, {"key": key, "purpose": purpose}).fetchone())


def _me(operation: str, key: int, purpose: int) -> dict[str, Any]:
    return {"purpose": purpose, "lock_id": str(uuid.uuid4()), "host": socket.gethostname(), "pid": os.getpid(),
            "operation": operation, "version": __version__, "_lock": key}


def _begin_locked(cn: Connector, conn: Any, purpose: int, timeout: float, me: dict[str, Any]) -> bool:
    """One round trip: publish the holder record (its own autocommit statement), BEGIN, set
    lock_timeout, try the advisory lock. True if it was taken."""
    with conn.pipeline() as p:
        conn.execute(_PUBLISH, me)
        p.sync()  # the record commits on its own, visible to waiters at once
        conn.execute("BEGIN")
        if timeout > 0:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (_timeout_ms(timeout),))
        cur = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (cn.key, purpose))
        return bool(cur.fetchone()[0])


def _wait_locked(cn: Connector, conn: Any, purpose: int, timeout: float, on_wait: Any, what: str) -> None:
    """The lock was busy: tell ``on_wait`` who holds it, then wait up to ``timeout`` (lock_timeout, set
    by _begin_locked). On timeout: roll back, name the holder, StateLocked."""
    from psycopg import errors as pe

    if timeout > 0:
        if on_wait is not None:
            on_wait(_holder_dict(conn.execute(_HOLDER, {"key": cn.key, "purpose": purpose}).fetchone()))
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (cn.key, purpose))
            return
        except pe.LockNotAvailable:
            pass
    conn.execute("ROLLBACK")
    raise locked_error(what, timeout, read_holder(conn, cn.key, purpose))


def locked_error(what: str, timeout: float, holder: dict[str, Any] | None) -> StateLocked:
    hint = ("wait and retry with a longer --lock-timeout; if that process is stuck, stop it "
            "(its lock is freed the instant its connection ends)")
    if holder and holder.get("lock_id"):
        hint += f", or run `agentstate force-unlock {holder['lock_id']} --url URL` to end its session"
    return StateLocked(f"timed out after {timeout:g}s waiting for the lock: {what} is locked by "
                       f"{describe_holder(holder)}", hint=hint, holder=holder)


def lock_status(connector: Connector, purpose: int) -> dict[str, Any]:
    conn = connector.conn()
    with connector.errors("reading the lock status"):
        holder = read_holder(conn, connector.key, purpose)
    return {
        "url": redact(connector.url),
        "schema": connector.schema,
        "lock": LOCK_NAMES[purpose],
        "mode": "postgresql advisory lock",
        "held": holder is not None,
        "holder": holder,
        "last_holder": None,
        "holder_alive": True if holder else None,
        "stale": False,
        "stale_reason": None,
    }


def force_unlock(connector: Connector, purpose: int, lock_id: str) -> dict[str, Any]:
    """End the session of the holder whose lock ID is ``lock_id`` (pg_terminate_backend).

    NotFound if the lock is free; ConflictError if another holder has it; StateLocked if this role
    may not end that session (it is then still held)."""
    from psycopg import errors as pe

    conn = connector.conn()
    with connector.errors("force-unlocking"):
        holder = read_holder(conn, connector.key, purpose)
        if holder is None:
            raise NotFound(f"the {LOCK_NAMES[purpose]} lock is not held", hint="nothing to unlock")
        if holder.get("lock_id") != lock_id:
            raise ConflictError(
                f"lock ID {lock_id} is not the current holder's; the lock is held by {describe_holder(holder)}",
                hint="check `agentstate lock status --url URL`", holder=holder,
            )
        try:
            with conn.transaction():
                # PostgreSQL 14+ waits (up to 5 s) until the backend is gone; older servers only signal it.
                text = ("SELECT pg_terminate_backend(%s, 5000)" if conn.info.server_version >= 140000
                        else "SELECT pg_terminate_backend(%s)")
                ended = conn.execute(text, (holder["backend_pid"],)).fetchone()[0]
        except pe.InsufficientPrivilege as e:
            raise StateLocked(
                f"cannot end the holder's session: {_first_line(e)}; "
                f"it still holds the lock: {describe_holder(holder)}",
                hint="ask an administrator to run pg_terminate_backend, or stop that process", holder=holder,
            ) from None
    if not ended:
        raise StateLocked(f"the holder's session did not end in time: {describe_holder(holder)}",
                          hint="retry, or stop that process", holder=holder)
    log.warning("lock force-unlocked: ended PostgreSQL backend %s of %s", holder["backend_pid"],
                describe_holder(holder))
    return holder


def redact(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


# --- Database: the engine API of agentstate.sql ------------------------------------------------

_COLON_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def pg_text(stmt: Any) -> str:
    """The PostgreSQL text of a statement: ``stmt.postgres``, else the shared text with ``:name``
    parameters written ``%(name)s``."""
    if isinstance(stmt, str):
        return stmt
    text = getattr(stmt, "postgres", None)
    if text:
        return text
    shared = getattr(stmt, "both", None) or getattr(stmt, "sqlite", None)
    if not shared:
        raise TypeError(f"statement {stmt!r} has no PostgreSQL text")
    return _COLON_PARAM.sub(r"%(\1)s", shared.replace("%", "%%"))


class Tx:
    """A transaction's statements: run() -> rows, one() -> a row or None, value() -> a value or None,
    execute() -> affected rows, many() -> executemany."""

    dialect = "postgres"

    def __init__(self, conn: Any, connector: Connector, doing: str) -> None:
        self._conn = conn
        self._connector = connector
        self._doing = doing
        self._texts: dict[int, str] = {}
        self.deferred: list[tuple[str, dict[str, Any]]] = []

    def defer(self, stmt: Any, **params: Any) -> None:
        """Run ``stmt`` at commit, sent with the COMMIT in one round trip (for a write whose result
        nobody needs)."""
        self.deferred.append((pg_text(stmt), params))

    def _execute(self, stmt: Any, params: dict[str, Any]) -> Any:
        text = self._texts.get(id(stmt))
        if text is None:
            text = self._texts[id(stmt)] = pg_text(stmt)
        return self._conn.execute(text, params or None)

    def run(self, stmt: Any, **params: Any) -> list[tuple]:
        cur = self._execute(stmt, params)
        return cur.fetchall() if cur.description is not None else []

    def one(self, stmt: Any, **params: Any) -> tuple | None:
        cur = self._execute(stmt, params)
        return cur.fetchone() if cur.description is not None else None

    def value(self, stmt: Any, **params: Any) -> Any:
        row = self.one(stmt, **params)
        return None if row is None else row[0]

    def execute(self, stmt: Any, **params: Any) -> int:
        return self._execute(stmt, params).rowcount

    def many(self, stmt: Any, rows: Any) -> None:
        text = self._texts.get(id(stmt))
        if text is None:
            text = self._texts[id(stmt)] = pg_text(stmt)
        rows = list(rows)
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(text, rows)


class Database:
    """The PostgreSQL side of ``agentstate.sql.open_database(url)``."""

    dialect = "postgres"

    def __init__(self, url: str, *, lock_timeout: float | str | None = None) -> None:
        from ..duration import parse_duration

        self.connector = Connector(url)
        self.url = url
        self.path = url
        if lock_timeout is None:
            lock_timeout = os.environ.get("AGENTSTATE_LOCK_TIMEOUT") or 30.0
        self.lock_timeout = parse_duration(lock_timeout, "lock timeout")

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r})"

    @contextmanager
    def write(self, operation: str = "write", lock_timeout: float | str | None = None,
              on_wait: Any = None) -> Iterator[Tx]:
        from ..duration import parse_duration

        timeout = self.lock_timeout if lock_timeout is None else parse_duration(lock_timeout, "lock timeout")
        with locked_transaction(self.connector, operation, LOCK_DB, timeout, on_wait,
                                "the sessions and responses store") as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Tx]:
        import psycopg

        cn = self.connector
        for attempt in (1, 2):
            with cn.errors("reading"):
                conn = cn.conn()
                try:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    break
                except psycopg.OperationalError:  # dead since its last use: reconnect once
                    if attempt == 2 or not (conn.broken or conn.closed):
                        raise
                    cn.close()
        try:
            yield Tx(conn, cn, "reading")
            conn.execute("COMMIT")
        except psycopg.Error as e:
            _rollback(cn, conn)
            raise server_error(e, doing="reading", where=cn.where) from None
        except BaseException:
            _rollback(cn, conn)
            raise

    def lock_status(self) -> dict[str, Any]:
        return lock_status(self.connector, LOCK_DB)

    def force_unlock(self, lock_id: str) -> dict[str, Any]:
        return force_unlock(self.connector, LOCK_DB, lock_id)

    def migrate(self, lock_timeout: float | str | None = None) -> int:
        """Bring the schema up to date now (it also happens on first use); returns the version."""
        from .schema import SCHEMA_VERSION

        self.connector.conn()
        return SCHEMA_VERSION

    def check(self) -> list[dict[str, Any]]:
        return check(self.connector)

    def close(self) -> None:
        self.connector.close_all()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_migrations(url: str) -> dict[str, Any]:
    """``agentstate migrate --url URL``: create or upgrade the schema now; what was found and done."""
    from .schema import SCHEMA_VERSION

    cn = Connector(url, migrate=False)
    try:
        conn = cn.conn()
        with cn.errors("reading the schema version"):
            found = schema_version(conn)
        applied = migrate(conn, cn.schema, cn.where)
        _migrated.add((cn.conninfo, cn.schema))
    finally:
        cn.close_all()
    return {"url": redact(url), "schema": cn.schema, "server": cn.where, "found_version": found or 0,
            "applied": applied, "schema_version": SCHEMA_VERSION}


def open_pg(url: str, *, lock_timeout: float | str | None = None) -> Database:
    return Database(url, lock_timeout=lock_timeout)


def check(cn: Connector) -> list[dict[str, Any]]:
    """Doctor's findings for the PostgreSQL schema: reachable, schema version, locks held."""
    from .schema import SCHEMA_VERSION

    findings: list[dict[str, Any]] = []

    def add(check: str, ok: bool, detail: str, **extra: Any) -> None:
        findings.append({"check": check, "ok": ok, "detail": detail, **extra})

    probe = Connector(cn.url, migrate=False)
    try:
        conn = probe.conn()
        with probe.errors("checking the schema"):
            version = schema_version(conn)
            if version is None:
                add("database", True, f"schema {cn.schema} on {cn.where} does not exist yet (an empty store)")
                return findings
            ok = version == SCHEMA_VERSION
            add("database", ok, f"schema {cn.schema} on {cn.where}: version {version}"
                + ("" if ok else f" (this agentstate knows {SCHEMA_VERSION})"), schema_version=version)
            for purpose in (LOCK_STATE, LOCK_DB):
                holder = read_holder(conn, probe.key, purpose)
                add(f"{LOCK_NAMES[purpose]} lock", True,
                    "free" if holder is None else f"held by {describe_holder(holder)}")
    except AgentStateError as e:
        add("database", False, str(e))
    finally:
        probe.close_all()
    return findings


def _rollback(cn: Connector, conn: Any) -> None:
    if conn.closed or conn.broken:
        cn.close()
        return
    try:
        if conn.info.transaction_status:  # not idle
            conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - the connection is unusable: drop it, the server rolls back
        cn.close()


@contextmanager
def locked_transaction(cn: Connector, operation: str, purpose: int, timeout: float, on_wait: Any,
                       what: str) -> Iterator[Tx]:
    """One PostgreSQL transaction holding the ``purpose`` advisory lock: the holder record published
    (autocommit), BEGIN, the lock (all in one round trip when it is free), the block, then the
    statements the block deferred and COMMIT (one round trip). Any exception rolls back (a lost
    connection: the server rolls back); psycopg errors become one AgentStateError.

    A connection found dead at the start (the server restarted since its last use) is replaced and
    the start retried once: nothing had been sent yet."""
    import psycopg

    from .. import signals

    me = _me(operation, cn.key, purpose)
    for attempt in (1, 2):
        with cn.errors(f"starting a write ({operation})"):
            conn = cn.conn()
        try:
            got = _begin_locked(cn, conn, purpose, timeout, me)
            break
        except psycopg.OperationalError as e:
            _rollback(cn, conn)
            if attempt == 2 or not (conn.broken or conn.closed):
                raise server_error(e, doing=f"starting a write ({operation})", where=cn.where) from None
            log.info("connection to %s was lost since its last use; reconnecting", cn.where)
        except psycopg.Error as e:
            _rollback(cn, conn)
            raise server_error(e, doing=f"starting a write ({operation})", where=cn.where) from None
        except BaseException:
            _rollback(cn, conn)
            raise
    committing = False
    try:
        if not got:
            _wait_locked(cn, conn, purpose, timeout, on_wait, what)
        tx = Tx(conn, cn, operation)
        yield tx
        committing = True
        with signals.critical():  # a signal during COMMIT is held: the outcome is then known
            if tx.deferred:
                with conn.pipeline():
                    for text, params in tx.deferred:
                        conn.execute(text, params)
                    conn.execute("COMMIT")
            else:
                conn.execute("COMMIT")
    except psycopg.Error as e:
        _rollback(cn, conn)
        if isinstance(e, psycopg.errors.LockNotAvailable):  # a row lock held by a program other than agentstate
            raise StateLocked(f"timed out after {timeout:g}s waiting for a row lock of {what}: {_first_line(e)}",
                              hint="a session other than agentstate's holds it; see pg_locks") from None
        raise server_error(e, doing=f"writing ({operation})", where=cn.where, committing=committing) from None
    except BaseException:
        _rollback(cn, conn)
        raise
