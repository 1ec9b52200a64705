"""The advisory write locks of agentstate/sql/pg.py: the published holder record, taking the lock within
``lock_timeout``, naming the holder through pg_locks, lock status and force-unlock (see pg.py's docstring)."""

from __future__ import annotations

import os
import socket
import uuid
import weakref
import zlib
from typing import Any, NamedTuple

from .._version import __version__
from ..errors import ConflictError, NotFound, StateLocked
from ..logs import getLogger
from .pg_conn import LOCK_MIGRATE, Connector, _first_line, _iso, _timeout_ms, redact

log = getLogger("agentstate.pg")

# Advisory lock purposes (the second key of pg_advisory_xact_lock(int4, int4)).
LOCK_STATE, LOCK_DB = 1, 2
LOCK_NAMES = {LOCK_STATE: "state", LOCK_DB: "sessions and responses", LOCK_MIGRATE: "migrations"}

# Per-resource locks of the sessions and responses tables (schema version 3): what must be serial is one
# session's writes (its seqs), one response chain's writes, one tenant's eviction decision, so each has its
# own transaction-level advisory lock and writers of different ones never wait for each other. Key: the
# two-int4 form, (a key per schema and kind, a hash of tenant and name), so pg_locks shows them apart from
# the schema's purpose locks above. Two names with the same 31-bit hash share a lock: slower, never wrong.
KIND_SESSION, KIND_CHAIN, KIND_EVICT = "session", "response chain", "response eviction"
KINDS = (KIND_SESSION, KIND_CHAIN, KIND_EVICT)


class Resource(NamedTuple):
    classid: int
    objid: int
    what: str  # "session 'chat-1' (tenant 'alice')", for lock status and the lock-timeout error


def kind_key(schema: str, kind: str) -> int:
    return zlib.crc32(f"{schema}\0{kind}".encode()) & 0x7FFFFFFF


def resource(cn: Connector, kind: str, tenant: str, name: str) -> Resource:
    """The lock of one session / response chain (``name``) or of a tenant's eviction (``name`` "")."""
    return resource_in(cn.schema, kind, tenant, name)


_resources: dict[tuple[str, str, str, str], Resource] = {}  # the last ones named: computed once (per append)


def resource_in(schema: str, kind: str, tenant: str, name: str) -> Resource:
    got = _resources.get((schema, kind, tenant, name))
    if got is None:
        objid = zlib.crc32(f"{tenant}\0{name}".encode()) & 0x7FFFFFFF
        what = f"{kind} {name!r} (tenant {tenant!r})" if name else f"{kind} of tenant {tenant!r}"
        if len(_resources) >= 1024:
            _resources.clear()
        got = _resources[(schema, kind, tenant, name)] = Resource(kind_key(schema, kind), objid, what)
    return got


_HOLDER_COLUMNS = "lock_id, host, pid, operation, version, since"

_PUBLISH = (
    "INSERT INTO lock_holders (backend_pid, lock_key, " + _HOLDER_COLUMNS + ")"
    " VALUES (pg_backend_pid(), %(purpose)s, %(lock_id)s, %(host)s, %(pid)s, %(operation)s, %(version)s, now())"
    " ON CONFLICT (backend_pid) DO UPDATE SET lock_key = EXCLUDED.lock_key, lock_id = EXCLUDED.lock_id,"
    " host = EXCLUDED.host, pid = EXCLUDED.pid, operation = EXCLUDED.operation, version = EXCLUDED.version,"
    " since = EXCLUDED.since"
)

# The backend holding an advisory lock (granted, in this database) and what it published. The lock ID
# shown is the record's and the holder's transaction, as for resource locks below: a standing record
# (pg_state.py) stands for several acquisitions of one connection, the ID names exactly one.
_HOLDER = (
    "SELECT l.pid, h.lock_id || '/' || l.virtualtransaction, h.host, h.pid, h.operation, h.version,"
    " coalesce(a.xact_start, h.since), a.application_name, host(a.client_addr), a.usename"
    " FROM pg_locks l"
    " LEFT JOIN lock_holders h ON h.backend_pid = l.pid AND h.lock_key = %(purpose)s"
    " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %(key)s::oid AND l.objid = %(purpose)s::oid"
    " AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


# The holders of a schema's resource locks (granted): the same columns, plus the kind's key and the hash.
# The lock ID shown is the record's and the holder's transaction (pg_locks.virtualtransaction): a record
# may stand for several acquisitions of one connection (pg_batch), the ID names exactly one.
_RESOURCE_HOLDERS = (
    "SELECT l.pid, h.lock_id || '/' || l.virtualtransaction, h.host, h.pid, h.operation, h.version,"
    " coalesce(a.xact_start, h.since), a.application_name, host(a.client_addr), a.usename,"
    " l.classid::bigint, l.objid::bigint"
    " FROM pg_locks l"
    " LEFT JOIN lock_holders h ON h.backend_pid = l.pid"
    " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ANY(%(keys)s::oid[])"
    " AND (%(objid)s::oid IS NULL OR l.objid = %(objid)s::oid)"
    " AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " ORDER BY coalesce(a.xact_start, h.since), l.pid LIMIT 100"
)


def read_resource_holders(conn: Any, schema: str, res: Resource | None = None) -> list[dict[str, Any]]:
    """The holders of the schema's resource locks (of ``res`` only, if given), oldest first."""
    from psycopg import errors as pe

    names = {kind_key(schema, k): k for k in KINDS}
    keys = [res.classid] if res is not None else list(names)
    try:
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '2s'")
            rows = conn.execute(_RESOURCE_HOLDERS, {"keys": keys, "objid": None if res is None else res.objid}
                                ).fetchall()
    except (pe.UndefinedTable, pe.LockNotAvailable):
        return []
    holders = []
    for row in rows:
        h = _holder_dict(row[:10])
        h["resource"] = res.what if res is not None else f"{names.get(int(row[10]), 'lock')} #{int(row[11])}"
        holders.append(h)
    return holders


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
            f"since {holder['acquired_at']}, lock ID {holder['lock_id']})"
            + (f", holding the lock of {holder['resource']}" if holder.get("resource") else ""))


def read_holder(conn: Any, key: int, purpose: int) -> dict[str, Any] | None:
    """The current holder of the ``purpose`` lock, or None (also while the schema does not exist)."""
    from psycopg import errors as pe

    try:
        with conn.transaction():
            # Bounded: lock_holders itself may be locked by another client (the holder is then unknown).
            conn.execute("SET LOCAL lock_timeout = '2s'")
            return _holder_dict(conn.execute(_HOLDER, {"key": key, "purpose": purpose}).fetchone())
    except (pe.UndefinedTable, pe.LockNotAvailable):
        return None


# A connection's standing record: the purpose and operation of the record a locked_call or a state
# transaction published and left in place (its lock ID is the record's plus the holder's transaction,
# so it still names one acquisition).
_standing: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def standing_record(cn: Connector, conn: Any, operation: str, purpose: int = LOCK_DB) -> dict[str, Any] | None:
    """The holder record to publish first, or None when the connection's standing record already says
    this purpose and operation (no statement to send: the common case of a process writing again)."""
    if _standing.get(conn) == (purpose, operation):
        return None
    _standing.pop(conn, None)  # until the new one is known to be committed
    return _me(operation, cn.key, purpose)


def keep_standing(conn: Any, operation: str, purpose: int = LOCK_DB) -> None:
    _standing[conn] = (purpose, operation)


def _me(operation: str, key: int, purpose: int) -> dict[str, Any]:
    return {"purpose": purpose, "lock_id": str(uuid.uuid4()), "host": socket.gethostname(), "pid": os.getpid(),
            "operation": operation, "version": __version__, "_lock": key}


def _record_for(cn: Connector, conn: Any, purpose: int, operation: str) -> dict[str, Any]:
    """The holder record to publish before this transaction. Its lock ID is fresh for every acquisition:
    an ID names one acquisition, so `force-unlock ID` can never end a later one on the same connection."""
    _standing.pop(conn, None)  # replaced by this one
    return _me(operation, cn.key, purpose)


def _begin_locked(cn: Connector, conn: Any, purpose: int, timeout: float, me: dict[str, Any] | None, what: str,
                  wait: bool) -> bool:
    """One round trip: publish the holder record ``me`` if any (its own short transaction, committed so
    that waiters see it at once), then BEGIN ISOLATION LEVEL READ COMMITTED (whatever the server's or
    database's default: every statement then sees what is committed when it starts, so nothing read
    under the lock predates the previous holder's COMMIT), set lock_timeout (every lock wait of the
    transaction, not only the advisory lock's) and no statement timeout, then take the advisory lock.
    ``wait``: wait for it (up to ``timeout``; StateLocked naming the holder after that). Else only try
    it. Returns whether it is taken."""
    from psycopg import errors as pe

    limit = _timeout_ms(timeout)  # 0 (one attempt): 1 ms for the other lock waits
    try:
        with conn.pipeline() as p:
            if me is not None:
                conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (limit,))
                conn.execute(_PUBLISH, me)
                conn.execute("COMMIT")
                p.sync()  # the record commits on its own, visible to waiters at once
            conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', '0', true)",
                         (limit,))
            if wait:
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (cn.key, purpose))
            else:
                cur = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (cn.key, purpose))
    except pe.LockNotAvailable:
        if conn.info.transaction_status:
            conn.execute("ROLLBACK")
        raise locked_error(what, timeout, read_holder(conn, cn.key, purpose)) from None
    return True if wait else bool(cur.fetchone()[0])


def _begin_resources(cn: Connector, conn: Any, resources: list[Resource], timeout: float,
                     me: dict[str, Any], statements: list[tuple[str, Any]] = (), commit: bool = False) -> list[Any]:
    """As _begin_locked, for resource locks: publish ``me``, BEGIN ISOLATION LEVEL READ COMMITTED, the
    timeouts, then wait for each lock of ``resources`` (in key order, so two writers never wait for
    each other in a cycle), then ``statements`` (text, params), each its own statement (so its snapshot
    is taken once every lock is held), then COMMIT if ``commit``: all in one round trip. Returns the
    cursors of ``statements``.
    On a lock timeout: rolled back, StateLocked naming the lock and its holder."""
    from psycopg import errors as pe

    limit = _timeout_ms(timeout)
    try:
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")  # the record: its own transaction, visible
            conn.execute(_PUBLISH, me)                            # to waiters at once (an UNLOGGED table: its
            conn.execute("COMMIT")                                # COMMIT waits for no WAL flush)
            conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', '0', true)",
                         (limit,))
            for r in sorted(set(resources)):
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (r.classid, r.objid))
            curs = [conn.execute(text, params) for text, params in statements]
            if commit:
                conn.execute("COMMIT")
        return curs
    except pe.LockNotAvailable:
        if conn.info.transaction_status:
            conn.execute("ROLLBACK")
        raise resources_locked(cn, conn, resources, timeout) from None


def resources_locked(cn: Connector, conn: Any, resources: list[Resource], timeout: float) -> Exception:
    """The StateLocked of a lock wait that timed out (the transaction already rolled back): the first
    of ``resources`` that is held, and its holder; or a lock on the tables held by another program."""
    for r in sorted(set(resources)):
        holders = read_resource_holders(conn, cn.schema, r)
        if holders:
            return locked_error(r.what, timeout, holders[0])
    what = " and ".join(r.what for r in resources) or "the sessions and responses store"
    return locked_error(what, timeout, None)


def lock_in_tx(cn: Connector, conn: Any, resources: list[Resource], timeout: float, *, wait: bool = True) -> bool:
    """Inside a write transaction: take the locks of ``resources`` (in key order; up to lock_timeout,
    else the transaction is rolled back and StateLocked names the holder). ``wait=False``: only try
    the one resource given; whether it is now held."""
    from psycopg import errors as pe

    if not wait:
        (r,) = resources
        return bool(conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (r.classid, r.objid)).fetchone()[0])
    try:
        for r in sorted(set(resources)):
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (r.classid, r.objid))
    except pe.LockNotAvailable:
        conn.execute("ROLLBACK")
        raise resources_locked(cn, conn, resources, timeout) from None
    return True


def _wait_locked(cn: Connector, conn: Any, purpose: int, timeout: float, on_wait: Any, what: str) -> None:
    """The lock was busy: tell ``on_wait`` who holds it, then wait up to ``timeout`` (lock_timeout, set
    by the transaction's start). On timeout: roll back, name the holder, StateLocked."""
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
    if holder is None:  # not the advisory lock (free now): a lock on the tables, held by another session
        return StateLocked(f"timed out after {timeout:g}s waiting for a lock of {what}: another session holds a lock "
                           "on its tables", hint="see pg_locks for the session holding it; nothing was written; "
                           "retry with a longer --lock-timeout once it is released")
    hint = ("wait and retry with a longer --lock-timeout; if that process is stuck, stop it "
            "(its lock is freed the instant its connection ends)")
    if holder and holder.get("lock_id"):
        hint += f", or run `agentstate force-unlock {holder['lock_id']} --url URL` to end its session"
    return StateLocked(f"timed out after {timeout:g}s waiting for the lock: {what} is locked by "
                       f"{describe_holder(holder)}", hint=hint, holder=holder)


def lock_status(connector: Connector, purpose: int) -> dict[str, Any]:
    with connector.errors("reading the lock status"):
        conn = connector.conn(write=False)
        holder = read_holder(conn, connector.key, purpose)
        holders = read_resource_holders(conn, connector.schema) if purpose == LOCK_DB else []
    if holder is None and holders:
        holder = holders[0]
    extra = {"holders": holders} if purpose == LOCK_DB else {}
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
        **extra,
    }


def force_unlock(connector: Connector, purpose: int, lock_id: str) -> dict[str, Any]:
    """End the session of the holder whose lock ID is ``lock_id`` (pg_terminate_backend).

    NotFound if the lock is free; ConflictError if another holder has it; StateLocked if this role
    may not end that session (it is then still held)."""
    from psycopg import errors as pe

    with connector.errors("force-unlocking"):
        conn = connector.conn(write=False)
        holder = read_holder(conn, connector.key, purpose)
        if purpose == LOCK_DB and (holder is None or holder.get("lock_id") != lock_id):
            holders = read_resource_holders(conn, connector.schema)
            holder = next((h for h in holders if h.get("lock_id") == lock_id), holder or (holders or [None])[0])
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
