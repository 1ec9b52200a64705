"""PostgreSQL connections and migrations for agentstate/sql/pg.py: URLs and the ``?schema=`` parameter,
the lazily imported driver, server errors as one clear line, one connection per thread with its
``search_path`` set to the schema, and the versioned migrations (see pg.py's docstring)."""

from __future__ import annotations

import logging
import os
import re
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._version import __version__
from ..errors import AgentStateError, FormatTooNew, InvalidInput, StateLocked, StorageError
from ..logs import getLogger
from ..names import URL_HINT as _URL_HINT
from ..names import URL_SCHEMES as SCHEMES  # noqa: F401 - re-exported for pg.py
from ..names import is_url, redact_url, url_problem  # noqa: F401 - is_url re-exported for pg.py
from ..state.signals import behind

log = getLogger("agentstate.pg")

SCHEMA_ENV = "AGENTSTATE_PG_SCHEMA"
DEFAULT_SCHEMA = "agentstate"
EXTRA_HINT = "install the PostgreSQL driver: pip install 'agentstate[postgres]'"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Advisory lock purposes (the second key of pg_advisory_xact_lock(int4, int4)).
LOCK_MIGRATE = 3

# Readers' statements are bounded (a table lock held by another client must not hang `sessions list`,
# `show` or `doctor`): the default, overridden by AGENTSTATE_STATEMENT_TIMEOUT or ``?statement_timeout=``
# in the URL (a duration; 0 = no limit). Writers bound their waits with --lock-timeout instead.
STATEMENT_TIMEOUT_ENV = "AGENTSTATE_STATEMENT_TIMEOUT"
DEFAULT_STATEMENT_TIMEOUT = 30.0
# PostgreSQL's timeouts are int milliseconds: a longer --lock-timeout (over ~24.8 days) is capped to this.
MAX_TIMEOUT_MS = 2147483647
# Idle connections a Connector keeps for the next thread (the rest are closed when their thread ends).
POOL_IDLE = 2


class _PsycopgToDebug(logging.Filter):
    """psycopg's own warnings ("error ignored terminating <psycopg.Pipeline ...>: <libpq text>") would
    reach stderr through logging's last-resort handler, before our one ``error:`` line: they go to our
    log at debug level instead, on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is dropped
            text = str(record.msg)
        log.debug("psycopg: %s", " ".join(text.split()))
        return False


_psycopg_log = logging.getLogger("psycopg")
if not any(isinstance(f, _PsycopgToDebug) for f in _psycopg_log.filters):
    _psycopg_log.addFilter(_PsycopgToDebug())


def check_schema(name: Any) -> str:
    if type(name) is not str or _SCHEMA_NAME.fullmatch(name) is None:
        raise InvalidInput(
            f"PostgreSQL schema name {name!r} is not valid",
            hint="a schema name is 1 to 63 characters from A-Z a-z 0-9 _, not starting with a digit",
        )
    return name


def split_url(url: str) -> tuple[str, str]:
    """(the URL to connect with, the schema name): ``?schema=`` is ours, not libpq's."""
    conninfo, schema, _ = split_url_options(url)
    return conninfo, schema


def split_url_options(url: str) -> tuple[str, str, float]:
    """(the URL to connect with, the schema name, the readers' statement timeout in seconds):
    ``?schema=`` and ``?statement_timeout=`` are ours, not libpq's."""
    from ..duration import parse_duration

    try:
        parts = urlsplit(url)  # ports are libpq's to check (it also takes host1:port1,host2:port2)
    except ValueError as e:
        raise InvalidInput(f"the PostgreSQL URL is not valid: {e}", hint=_URL_HINT) from None
    problem = url_problem(url)
    if problem:
        raise InvalidInput(problem, hint=_URL_HINT)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    timeouts = [v for k, v in query if k == "statement_timeout"]
    rest = [(k, v) for k, v in query if k not in ("schema", "statement_timeout")]
    schema = schemas[-1] if schemas else (os.environ.get(SCHEMA_ENV) or DEFAULT_SCHEMA)
    if timeouts:
        timeout = parse_duration(timeouts[-1], "statement_timeout in the URL")
    elif os.environ.get(STATEMENT_TIMEOUT_ENV):
        timeout = parse_duration(os.environ[STATEMENT_TIMEOUT_ENV], STATEMENT_TIMEOUT_ENV)
    else:
        timeout = DEFAULT_STATEMENT_TIMEOUT
    conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
    if not parts.netloc and conninfo.startswith(f"{parts.scheme}:") and not conninfo.startswith(f"{parts.scheme}://"):
        conninfo = f"{parts.scheme}://" + conninfo[len(parts.scheme) + 1:]  # keep "//": libpq needs it
    try:
        schema = check_schema(schema)
    except InvalidInput as e:
        if schemas:
            raise
        raise InvalidInput(f"{SCHEMA_ENV}: {e.message}", hint=e.hint) from None  # where it came from
    return conninfo, schema, timeout


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


def interruption_in(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt (a signal's Interruption) that ``e`` replaced, if any.

    psycopg's pipeline, when the block it wraps was interrupted while it waited for the server, still
    leaves pipeline mode in a ``finally``; that fails ("cannot exit pipeline mode while busy") and its
    OperationalError replaces the interruption, which survives only as the error's ``__context__``.
    Reported as a lost connection it would hide the signal (wrong line, wrong exit code), and a write
    path that retries a lost connection once would carry on after a Ctrl-C."""
    return behind(e, "__context__", 8)


def dead_since_last_use(conn: Any, e: BaseException) -> bool:
    """Whether ``e`` (an OperationalError met before anything was sent) says only that ``conn`` died
    since its last use (a server restart), so that one retry on a new connection is right: not when a
    signal is behind it (interruption_in), which must end the call instead."""
    return (conn.broken or conn.closed) and interruption_in(e) is None


def server_error(e: BaseException, *, doing: str, where: str, committing: bool = False) -> BaseException:
    """One clear AgentStateError for a psycopg error met while ``doing`` something (or the interruption
    the error replaced: see interruption_in)."""
    import psycopg
    from psycopg import errors as pe

    if isinstance(e, AgentStateError):
        return e
    interrupted = interruption_in(e)
    if interrupted is not None:
        return interrupted
    sqlstate = getattr(e, "sqlstate", None) or ""
    msg = _first_line(e)
    if isinstance(e, pe.DiskFull) or sqlstate.startswith("53"):
        return StorageError(f"{where} is out of resources while {doing}: {msg}",
                            hint="nothing was written; free disk space (or memory) on the server and retry")
    if isinstance(e, pe.InsufficientPrivilege):
        return StorageError(f"{where} refused {doing}: {msg}",
                            hint="grant this role the privileges it needs, or run `agentstate migrate --url URL` "
                                 "as a role that may create the schema")
    if isinstance(e, pe.QueryCanceled) and "statement timeout" in msg:
        return StorageError(f"{where} did not answer within the statement timeout while {doing}: {msg}",
                            hint="another session may hold a lock on agentstate's tables (see pg_locks); nothing "
                                 f"was written; retry, or raise the limit with {STATEMENT_TIMEOUT_ENV} or "
                                 "?statement_timeout= in the URL")
    if isinstance(e, pe.QueryCanceled):
        return StorageError(f"{where} cancelled {doing}: {msg}", hint="nothing was written; retry")
    if isinstance(e, psycopg.OperationalError) or sqlstate.startswith(("08", "57P")):
        if "FATAL:" in msg:  # the server's own words, without libpq's "connection to server at ... failed"
            msg = msg.split("FATAL:", 1)[1].strip()
        elif doing == "connecting" and "failed: " in msg:  # libpq's "connection to server at ... failed: why"
            msg = msg.rsplit("failed: ", 1)[1].strip() or msg
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
            check = ("agentstate sessions show ID" if "(sessions" in doing else
                     "agentstate responses get ID" if "(responses" in doing else "agentstate show")
            return StorageError(
                f"the connection to {where} was lost while committing: {msg}",
                hint=f"the change may or may not have been saved; check with `{check}` before retrying",
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
    """A timeout for lock_timeout/statement_timeout: at least 1 ms, at most PostgreSQL's int limit
    (~24.8 days; a longer --lock-timeout is capped, as docs/format.md says)."""
    return f"{min(MAX_TIMEOUT_MS, max(1, int(timeout * 1000)))}ms"


# --- connections -------------------------------------------------------------------------------

_migrated: set[tuple[str, str]] = set()  # (conninfo, schema) pairs this process found up to date
_orphans: list[Any] = []  # connections inherited over fork: never closed here (that would end the parent's)


class _Lease:
    """A thread's hold on one pooled connection. A thread's ``threading.local`` storage is freed when the
    thread ends, and with it this object: its connection then goes back to the pool (or is closed), so
    short-lived threads (asyncio's executor, a web server's workers) never pile up server connections."""

    __slots__ = ("conn", "pool", "__weakref__")

    def __init__(self, conn: Any, pool: Any) -> None:
        self.conn = conn
        self.pool = pool  # a weakref.ref to the Connector

    def __del__(self) -> None:
        try:
            pool = self.pool()
            if pool is not None and self.conn is not None:
                pool._give_back(self.conn)
        except Exception:  # noqa: BLE001 - e.g. at interpreter shutdown: the process's end closes it anyway
            pass


class Connector:
    """Lazily opened autocommit connections to ``url``'s database, search_path set to its schema.

    Each thread uses one connection at a time (psycopg connections are not shared), checked out of a
    small pool on first use and given back when the thread ends: at most POOL_IDLE idle connections are
    kept, so the number of server connections follows the number of live threads using the store, never
    the number of threads that ever did. ``conn()`` reconnects after the connection broke (server
    restart, network cut) and makes sure the schema is migrated (once per process).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        import weakref

        psycopg_module()
        self.url = url
        self.conninfo, self.schema, self.statement_timeout = split_url_options(url)
        self.where = describe_server(self.conninfo)
        self.migrate = migrate
        self.key = lock_key(self.schema)
        self._local = threading.local()  # this thread's _Lease
        self._all: list[Any] = []  # every open connection (leased or idle)
        self._idle: list[Any] = []
        self._all_lock = threading.RLock()  # RLock: a _Lease may be freed (and give back) while it is held
        self._ref = weakref.ref(self)
        self._pid = os.getpid()
        self.absent = False  # the schema did not exist when last checked (reads then see an empty store)

    def __repr__(self) -> str:
        return f"<{self.where} schema {self.schema}>"

    @property
    def _conn(self) -> Any:
        lease = getattr(self._local, "lease", None)
        return None if lease is None else lease.conn

    def _give_back(self, c: Any) -> None:
        """A finished thread's connection: kept idle for the next thread if healthy and there is room."""
        if self._pid != os.getpid():
            return
        keep = False
        try:
            keep = not (c.closed or c.broken) and not c.info.transaction_status  # idle, not in a transaction
        except Exception:  # noqa: BLE001 - an unusable connection is closed
            keep = False
        with self._all_lock:
            if keep and c in self._all and len(self._idle) < POOL_IDLE:
                self._idle.append(c)
                return
            if c in self._all:
                self._all.remove(c)
        _close(c)

    def conn(self, write: bool = True) -> Any:
        """This thread's connection, checked out of the pool (or opened) on first use, replaced if broken.
        The schema is checked when the connection opens (a newer one: FormatTooNew; an older one:
        migrated); a schema that does not exist yet is created only for a write (``write``): reading
        never creates anything."""
        if self._pid != os.getpid():  # a forked child never uses (nor closes) its parent's connections
            with self._all_lock:
                _orphans.extend(self._all)
                self._all, self._idle = [], []
            self._local = threading.local()
            self._pid = os.getpid()
        c = self._conn
        if c is not None and (c.closed or c.broken):
            self.close()
            c = None
        if c is None:
            with self._all_lock:
                while self._idle and c is None:
                    c = self._idle.pop()
                    if c.closed or c.broken:
                        self._all.remove(c)
                        _close(c)
                        c = None
            if c is None:
                c = self._connect()
                with self._all_lock:
                    self._all.append(c)
            self._local.lease = _Lease(c, self._ref)
        if write and self.absent:
            migrate(c, self.schema, self.where)
            _migrated.add((self.conninfo, self.schema))
            self.absent = False
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
            # Every statement is bounded (readers by this; writers set their own limits per transaction).
            # Transactions that do not say their isolation are read committed whatever the server's
            # default (pg_batch's one-statement writes rely on it: each statement sees what is committed).
            conn.execute(sql.SQL("SET statement_timeout TO {}; SET search_path TO {}; "
                                 "SET default_transaction_isolation TO 'read committed'").format(
                sql.Literal(_timeout_ms(self.statement_timeout) if self.statement_timeout > 0 else "0"),
                sql.Identifier(self.schema)))
            if self.migrate and (self.conninfo, self.schema) not in _migrated:
                from .schema import SCHEMA_VERSION

                try:
                    found = schema_version(conn)
                except psycopg.Error as e:
                    raise server_error(e, doing="reading the schema version", where=self.where) from None
                if found is None:
                    self.absent = True  # created by the first write
                else:
                    if found != SCHEMA_VERSION:
                        migrate(conn, self.schema, self.where)  # FormatTooNew if newer
                    _migrated.add((self.conninfo, self.schema))
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        lease = getattr(self._local, "lease", None)
        self._local.lease = None
        if lease is None or lease.conn is None:
            return
        c, lease.conn = lease.conn, None
        with self._all_lock:
            if c in self._all:
                self._all.remove(c)
        if self._pid == os.getpid():
            _close(c)

    def close_all(self) -> None:
        """Close every connection this object opened in this process."""
        with self._all_lock:
            conns, self._all, self._idle = self._all, [], []
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
            self.after_error(e)
            raise server_error(e, doing=doing, where=self.where) from None

    def after_error(self, e: BaseException) -> None:
        """Drop a broken connection; if the schema or a table vanished (dropped while in use), forget that
        it was up to date, so that the next connection checks it again (and a write re-creates it)."""
        from psycopg import errors as pe

        if isinstance(e, (pe.UndefinedTable, pe.InvalidSchemaName)):
            _migrated.discard((self.conninfo, self.schema))
            self.close()
        elif self._conn is not None and (self._conn.broken or self._conn.closed or interruption_in(e) is not None):
            self.close()  # an interrupted pipeline leaves the connection in pipeline mode: not reusable

    def query(self, doing: str, text: str, params: Any = None, lock_timeout: float | None = None) -> list[tuple]:
        """One autocommit read ([] while the schema does not exist); a connection found dead (the server
        restarted since its last use) is replaced and the read retried once. ``lock_timeout``: its lock
        waits (a table locked by another client) end after that long: StateLocked (a writer command's
        --lock-timeout bounds its lock-free read too); the statement timeout bounds it in any case."""
        import psycopg
        from psycopg import errors as pe

        for attempt in (1, 2):
            with self.errors(doing):
                conn = self.conn(write=False)
                try:
                    if lock_timeout is None:
                        return conn.execute(text, params).fetchall()
                    with conn.transaction():
                        conn.execute("SELECT set_config('lock_timeout', %s, true)", (_timeout_ms(lock_timeout),))
                        return conn.execute(text, params).fetchall()
                except pe.LockNotAvailable:
                    raise StateLocked(f"timed out after {lock_timeout:g}s while {doing}: another session holds a "
                                      "lock on agentstate's tables",
                                      hint="see pg_locks for the session holding it; retry with a longer "
                                           "--lock-timeout once it is released") from None
                except pe.UndefinedTable:
                    if self.absent:
                        return []
                    raise
                except psycopg.OperationalError as e:
                    if attempt == 2 or not dead_since_last_use(conn, e):
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


redact = redact_url  # the URL without its password (agentstate.names)
