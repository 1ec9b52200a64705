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

Modules: this one (``Database``, ``Tx``, ``locked_transaction``, ``check``, ``run_migrations``),
``pg_conn.py`` (URLs, the driver, server errors, ``Connector``, migrations) and ``pg_lock.py`` (the
advisory locks, holder records, lock status, force-unlock); their public names are re-exported here.

psycopg is imported only here, and only when a URL is used: ``import agentstate`` and every local
command stay free of it. Without it, a URL gets one ``InvalidInput`` naming the ``postgres`` extra.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..duration import parse_duration
from ..errors import AgentStateError, StateLocked
from ..logs import getLogger
from . import EmptyTx, stats
from .pg_conn import (  # noqa: F401 - also the names other modules use as pg.<name>
    DEFAULT_SCHEMA,
    EXTRA_HINT,
    LOCK_MIGRATE,
    SCHEMA_ENV,
    SCHEMES,
    Connector,
    _first_line,
    _migrated,
    check_schema,
    dead_since_last_use,
    describe_server,
    interruption_in,
    is_url,
    migrate,
    psycopg_module,
    redact,
    schema_version,
    server_error,
    split_url,
)
from .pg_lock import (  # noqa: F401
    KIND_CHAIN,
    KIND_EVICT,
    KIND_SESSION,
    LOCK_DB,
    LOCK_NAMES,
    LOCK_STATE,
    Resource,
    _begin_locked,
    _begin_resources,
    _record_for,
    _wait_locked,
    describe_holder,
    force_unlock,
    lock_in_tx,
    lock_status,
    locked_error,
    read_holder,
    read_resource_holders,
    resource,
)

log = getLogger("agentstate.pg")


# --- Database: the engine API of agentstate.sql ------------------------------------------------

_locked_call: Any = None  # pg_batch.locked_call, imported by the first call (it imports psycopg: an extra)
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


# A write whose result is always empty (DML without RETURNING) can wait and travel with the next
# statement (or the COMMIT) in one round trip: its result cannot change what the caller sees.
_NO_RESULT = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b", re.I)
_RETURNING = re.compile(r"\bRETURNING\b", re.I)


class Tx:
    """A transaction's statements: run() -> rows, one() -> a row or None, value() -> a value or None,
    execute() -> affected rows, many() -> executemany.

    In a write transaction, statements that return nothing (INSERT/UPDATE/DELETE without RETURNING,
    run through run/one/value/many) are queued and sent in one pipeline with the next statement that
    returns something, or with the COMMIT: the same statements in the same order, fewer round trips.
    Their errors surface there (and roll the whole transaction back, as any error does)."""

    dialect = "postgres"

    def __init__(self, conn: Any, connector: Connector, doing: str, *, queue: bool = False) -> None:
        self._conn = conn
        self._connector = connector
        self._doing = doing
        self._queue = queue
        self._texts: dict[int, tuple[str, bool]] = {}
        self.deferred: list[tuple[str, Any, bool]] = []  # (text, params or rows, many)
        self._timeout = 0.0  # the write's lock timeout (for tx.lock's error)

    def _text(self, stmt: Any) -> tuple[str, bool]:
        got = self._texts.get(id(stmt))
        if got is None:
            text = pg_text(stmt)
            quiet = bool(_NO_RESULT.match(text)) and not _RETURNING.search(text)
            got = self._texts[id(stmt)] = (text, quiet)
        return got

    def _send_queued(self) -> None:
        for text, params, many in self.deferred:
            if many:
                with self._conn.cursor() as cur:
                    cur.executemany(text, params)
            else:
                self._conn.execute(text, params or None)
        self.deferred.clear()

    def _execute(self, text: str, params: dict[str, Any]) -> Any:
        if not self.deferred:
            return self._conn.execute(text, params or None)
        with self._conn.pipeline():
            self._send_queued()
            cur = self._conn.execute(text, params or None)
        return cur

    def commit(self) -> None:
        """Send what is queued and COMMIT, in one round trip."""
        if not self.deferred:
            self._conn.execute("COMMIT")
            return
        with self._conn.pipeline():
            self._send_queued()
            self._conn.execute("COMMIT")

    def run(self, stmt: Any, **params: Any) -> list[tuple]:
        text, quiet = self._text(stmt)
        if quiet and self._queue:
            self.deferred.append((text, params, False))
            return []
        cur = self._execute(text, params)
        return cur.fetchall() if cur.description is not None else []

    def one(self, stmt: Any, **params: Any) -> tuple | None:
        text, quiet = self._text(stmt)
        if quiet and self._queue:
            self.deferred.append((text, params, False))
            return None
        cur = self._execute(text, params)
        return cur.fetchone() if cur.description is not None else None

    def value(self, stmt: Any, **params: Any) -> Any:
        row = self.one(stmt, **params)
        return None if row is None else row[0]

    def execute(self, stmt: Any, **params: Any) -> int:
        return self._execute(self._text(stmt)[0], params).rowcount

    def lock(self, *resources: Resource, wait: bool = True) -> bool:
        """Take resource locks inside this transaction (see pg_lock.lock_in_tx); statements after it see
        what every earlier holder committed."""
        if self.deferred:
            with self._conn.pipeline():
                self._send_queued()
        return lock_in_tx(self._connector, self._conn, list(resources), self._timeout, wait=wait)

    def many(self, stmt: Any, rows: Any) -> None:
        text, quiet = self._text(stmt)
        rows = list(rows)
        if not rows:
            return
        if quiet and self._queue:
            self.deferred.append((text, rows, True))
            return
        if self.deferred:
            with self._conn.pipeline():
                self._send_queued()
        with self._conn.cursor() as cur:
            cur.executemany(text, rows)


class Database:
    """The PostgreSQL side of ``agentstate.sql.open_database(url)``."""

    dialect = "postgres"

    def __init__(self, url: str, *, lock_timeout: float | str | None = None) -> None:
        self.connector = Connector(url)
        self.url = url
        self.path = url
        if lock_timeout is None:
            lock_timeout = os.environ.get("AGENTSTATE_LOCK_TIMEOUT") or 30.0
        self.lock_timeout = parse_duration(lock_timeout, "lock timeout")

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r})"

    def resource(self, kind: str, tenant: str, name: str = "") -> Resource:
        """The lock of one session, one response chain (``name``) or one tenant's eviction (``name`` "")."""
        return resource(self.connector, kind, tenant, name)

    def timeout(self, lock_timeout: float | str | None = None) -> float:
        if lock_timeout is None:
            return self.lock_timeout
        return parse_duration(lock_timeout, "lock timeout")

    @contextmanager
    def write(self, operation: str = "write", lock_timeout: float | str | None = None,
              on_wait: Any = None, *, locks: list[Resource] | None = None) -> Iterator[Tx]:
        """A write transaction holding the locks of ``locks`` (sessions, chains: see pg_lock) taken before
        anything is read; ``locks=[]``: none at first (``tx.lock()`` takes them later); None: the whole
        schema's sessions/responses lock (LOCK_DB)."""
        from ..state import signals

        timeout = self.timeout(lock_timeout)
        locked = False
        with signals.guarded():  # SIGINT/SIGTERM: abandoned before the COMMIT, finished once it is sent
            try:
                with locked_transaction(self.connector, operation, LOCK_DB if locks is None else locks, timeout,
                                        on_wait, "the sessions and responses store") as tx:
                    locked = True
                    yield tx
            except KeyboardInterrupt as e:
                committed = getattr(e, "outcome", None) == "committed"
                where = f"{self.connector.where} schema {self.connector.schema}"
                raise signals.interrupted(e, operation, committed=f"the {operation} is committed to {where}"
                                          if committed else None, locked=locked) from None

    def call(self, operation: str, lock: Resource, stmt: Any, params: dict[str, Any],
             lock_timeout: float | str | None = None) -> list[tuple]:
        """A whole write in one statement and one round trip (pg_batch.locked_call): its rows. ``params``
        is the caller's to give up: the lock's keys are added to it."""
        global _locked_call
        if _locked_call is None:
            from .pg_batch import locked_call as _locked_call

        timeout = self.lock_timeout if lock_timeout is None else self.timeout(lock_timeout)
        return _locked_call(self.connector, operation, lock, timeout, pg_text(stmt), params)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        import psycopg

        from .pg_batch import reader_begin

        cn = self.connector
        for attempt in (1, 2):
            with cn.errors("reading"):
                conn = cn.conn(write=False)
                try:
                    if cn.absent and conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
                        yield EmptyTx("postgres")  # nothing stored yet, and a read creates nothing
                        return
                    conn.execute(reader_begin(cn, conn))
                    break
                except psycopg.OperationalError as e:  # dead since its last use: reconnect once
                    if attempt == 2 or not dead_since_last_use(conn, e):
                        raise
                    cn.close()
        try:
            yield Tx(conn, cn, "reading")
            conn.execute("COMMIT")
        except psycopg.Error as e:
            _rollback(cn, conn)
            cn.after_error(e)
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


def check(cn: Connector, purposes: tuple[int, ...] = (LOCK_DB,)) -> list[dict[str, Any]]:
    """Doctor's findings for the PostgreSQL schema: reachable, schema version, the ``purposes`` locks
    (by default the sessions/responses one; the state store reports its own). Never writes."""
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
            for purpose in purposes:
                holder = read_holder(conn, probe.key, purpose)
                if purpose == LOCK_DB:  # the sessions', chains' and evictions' own locks (schema version 3)
                    holders = read_resource_holders(conn, probe.schema)
                    holder = holder or (holders[0] if holders else None)
                    more = f" (and {len(holders) - 1} more session/chain locks)" if len(holders) > 1 else ""
                else:
                    more = ""
                add("database lock" if purpose == LOCK_DB else "lock", True,
                    "free" if holder is None else f"held by {describe_holder(holder)}{more}")
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
def locked_transaction(cn: Connector, operation: str, purpose: int | list[Resource], timeout: float, on_wait: Any,
                       what: str) -> Iterator[Tx]:
    """One PostgreSQL transaction holding the ``purpose`` advisory lock: the holder record published
    (autocommit), BEGIN, the lock (all in one round trip when it is free), the block, then the
    statements the block deferred and COMMIT (one round trip). Any exception rolls back (a lost
    connection: the server rolls back); psycopg errors become one AgentStateError. (The state
    document's transaction is pg_state.py's.)

    A connection found dead at the start (the server restarted since its last use) is replaced and
    the start retried once: nothing had been sent yet."""
    import psycopg

    from ..state import signals

    def begin(conn: Any) -> bool:
        if isinstance(purpose, int):
            me = _record_for(cn, conn, purpose, operation)
            return _begin_locked(cn, conn, purpose, timeout, me, what, wait=timeout > 0 and on_wait is None)
        # resource locks (possibly none yet): always waited for, up to lock_timeout
        _begin_resources(cn, conn, purpose, timeout, _record_for(cn, conn, LOCK_DB, operation))
        return True

    conn, got = start_write(cn, operation, begin, _rollback)
    committing = False
    try:
        if not got:
            _wait_locked(cn, conn, purpose, timeout, on_wait, what)
        tx = Tx(conn, cn, operation, queue=True)
        tx._timeout = timeout
        yield tx
        committing = True
        with signals.critical():  # a signal during COMMIT is held: the outcome is then known
            tx.commit()
            signals.note_committed(f"the {operation} is committed to {cn.where} schema {cn.schema}")
        stats.committed()
    except (psycopg.Error, KeyboardInterrupt) as e:
        if isinstance(e, psycopg.Error) and interruption_in(e) is not None:
            cn.close()  # an interrupted pipeline: drop the connection (the server rolls back)
        else:
            _rollback(cn, conn)
        raise write_failed(cn, e, operation, what, timeout, committing) from None
    except BaseException:
        _rollback(cn, conn)
        raise


def start_write(cn: Connector, operation: str, begin: Any, cleanup: Any, connect: Any = None) -> tuple[Any, Any]:
    """Start a write transaction: ``begin(conn)`` on this thread's connection (``connect()``'s, if
    given), and (the connection, what it returned). A connection found dead (the server restarted
    since its last use) is replaced and ``begin`` tried once more: nothing of the transaction had
    been committed. Else a psycopg error becomes the signal behind it (the connection dropped: the
    server rolls back) or one server_error, after ``cleanup(cn, conn)`` rolled back or dropped it;
    anything else is raised after cleanup."""
    import psycopg

    for attempt in (1, 2):
        with cn.errors(f"starting a write ({operation})"):
            conn = connect() if connect is not None else cn.conn()
        try:
            return conn, begin(conn)
        except psycopg.Error as e:
            interrupted = interruption_in(e)
            if interrupted is not None:
                cn.close()
                raise interrupted from None
            lost = conn.broken or conn.closed
            cleanup(cn, conn)
            if isinstance(e, psycopg.OperationalError) and lost and attempt == 1:
                log.info("connection to %s was lost since its last use; reconnecting", cn.where)
                continue
            cn.after_error(e)
            raise server_error(e, doing=f"starting a write ({operation})", where=cn.where) from None
        except BaseException:
            cleanup(cn, conn)
            raise
    raise AssertionError("unreachable: the second attempt returns or raises")


def write_failed(cn: Connector, e: BaseException, operation: str, what: str, timeout: float,
                 committing: bool) -> BaseException:
    """What a write transaction raises for ``e`` (a psycopg error or a signal), its connection already
    rolled back or dropped: the signal (behind a psycopg error, see interruption_in), or an unknown
    outcome when it cut a COMMIT short (not held: no agentstate handler here, so the COMMIT was sent
    and its reply not read); a row lock of a program other than agentstate (StateLocked); else one
    server_error."""
    import psycopg

    from ..state import signals

    interrupted = e if isinstance(e, KeyboardInterrupt) else interruption_in(e)
    if interrupted is not None:
        if committing and getattr(interrupted, "outcome", None) != "committed":
            return signals.unknown_outcome(interrupted, operation, f"{cn.where} schema {cn.schema}")
        return interrupted
    cn.after_error(e)
    if isinstance(e, psycopg.errors.LockNotAvailable):
        return StateLocked(f"timed out after {timeout:g}s waiting for a lock on the tables of {what}: "
                           f"{_first_line(e)}", hint="a session other than agentstate's holds it; see pg_locks; "
                           "nothing was written")
    return server_error(e, doing=f"writing ({operation})", where=cn.where, committing=committing)
