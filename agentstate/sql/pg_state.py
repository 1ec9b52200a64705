"""The state document's transaction on PostgreSQL (agentstate/state/pgstore.py) in two messages, sent
through libpq directly (issue 17).

Message 1, one round trip (simple query protocol): the holder record in its own transaction (committed
at once, so waiters see it; UNLOGGED: no WAL flush) unless the connection's standing record already
names this operation (pg_lock.standing_record: its lock ID plus the holder's transaction names each
acquisition), then BEGIN ISOLATION LEVEL READ COMMITTED, the transaction's settings (lock_timeout; no
statement timeout; synchronous_commit off, below), the state advisory lock (waited for in the server up
to lock_timeout; only tried when the caller is to be told who holds it first: ``on_wait``, or a timeout
of 0) and the read of the document as its own statement (its snapshot taken once the lock is held; the
previous version is read only if the document does not verify). Message 2, when the block ends: the new
version if the block changed the document, COMMIT, and the flush (a version of 64 KiB or more: saved
first by a statement of its own, a binary parameter).

The flush: a transaction that wrote commits without waiting for its WAL to reach disk, so that the lock
is released at once and the next writer works while this one's WAL is flushed (ten writers on one
document no longer hold the lock through every flush in turn). The flush that follows in the same
message, q_state.FLUSH, is a transaction of its own that writes WAL and commits synchronously: it waits
until the WAL is durable up to its commit record, which follows this transaction's. Only then does the
call return. A later writer's own flush covers every commit it read, so no success is ever reported for
a version that is not durable, and a version a writer built on is durable once that writer succeeds.
(A reader may see a version up to one flush before it is durable, as a reader of the file store may
see a renamed state.json before its directory is synced.) A failure of the flush after the COMMIT
succeeded is an unknown outcome, never "nothing was written".

Values are written into the text: integers, the document as hex digits
(``encode(data, 'hex')``, ``decode('...', 'hex')``: whatever bytea_output and
standard_conforming_strings say) and the holder record's strings escaped by libpq.

Why not psycopg's cursors and pipeline: around the same statements they cost ~430 us of client CPU per
1 KB transaction, against ~120 us here (docs/performance.md); with ten processes on one document that
CPU is spent while the lock is held, on cores the waiters share.

The waits are here (poll(2) on the socket), so that a signal ends a wait for the lock at once: the
connection is then dropped (the server rolls back, the lock request goes) and the signal raised.
"""

from __future__ import annotations

import select
from binascii import unhexlify
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pe
from psycopg import pq

from ..errors import StorageError
from . import q_state, stats
from .pg import start_write, write_failed
from .pg_batch import _check, _conn_state, _poller, live_conn
from .pg_conn import Connector, _first_line, _timeout_ms
from .pg_lock import _PUBLISH, _wait_locked, keep_standing, locked_error, read_holder, standing_record

_BINARY_AT = 1 << 16  # a document this large is saved as a binary parameter (StateTx.commit)
_SAVE_PARAMS = q_state.SAVE.replace("%(data)s", "$1").replace("%(keep_previous)s", "$2").encode()
_BYTEA, _BOOL = 17, 16  # type OIDs
_BEGIN = ("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT set_config('lock_timeout', '{limit}', true), "
          "set_config('statement_timeout', '0', true), set_config('synchronous_commit', 'off', true); ")
_COMMIT_FLUSH = f"COMMIT; {q_state.FLUSH}".encode()


class StateTx:
    """The open transaction, as the block sees it: ``first_rows`` (the document's row: data as bytes or
    None, and previous as bytes, None, or a function that reads it; [] when the row is missing) and
    ``save()``, the new version to write with the COMMIT."""

    __slots__ = ("first_rows", "_save", "_saved")

    def __init__(self, rows: list[tuple[bytes | None, Any]]) -> None:
        self.first_rows = rows
        self._save: tuple[bytes, bool] | None = None
        self._saved = False  # by save_large, before message 2

    def save(self, data: bytes, keep_previous: bool) -> None:
        self._save = (data, keep_previous)

    def save_large(self, conn: Any) -> None:
        """Before message 2: a document of _BINARY_AT bytes or more is saved by a statement of its own, a
        binary parameter (one round trip more, where hex would double what is sent and the server's
        parser scan it all: a 10 MB document's transaction ~290 against ~180 ms)."""
        if self._save is not None and len(self._save[0]) >= _BINARY_AT:
            data, keep_previous = self._save
            with conn.lock:
                res = conn.pgconn.exec_params(_SAVE_PARAMS, [data, b"t" if keep_previous else b"f"],
                                              [_BYTEA, _BOOL], [1, 0])
            _check(conn, res)
            self._save, self._saved = None, True

    def commit(self, conn: Any, where: str) -> None:
        """Message 2: the save (if any, and not saved by save_large), COMMIT, and the flush if anything was
        written (the module docstring). A flush that fails after the COMMIT succeeded: StorageError with
        an unknown outcome."""
        if self._save is None and not self._saved:
            _send(conn, b"COMMIT")  # nothing written: no WAL to wait for
            return
        head = b"" if self._save is None else q_state.save_hex(*self._save) + b"; "
        results = _send(conn, head + _COMMIT_FLUSH, check=False)
        flushed = len(results) == (3 if head else 2)  # else the save or COMMIT failed: the rest was skipped
        for res in results[:-1] if flushed else results:
            _check(conn, res)  # the save's or COMMIT's error: nothing written
        if not flushed:
            raise psycopg.OperationalError("the server's answer to the COMMIT is missing")  # (never seen)
        try:
            _check(conn, results[-1])
        except psycopg.Error as e:
            raise StorageError(
                f"the new state version was committed to {where}, but the wait for it to be flushed to disk "
                f"failed: {_first_line(e)}",
                hint="the outcome is unknown (the version may or may not survive a server crash); check with "
                     "`agentstate show` before retrying", outcome="unknown") from None


def _send(conn: Any, text: bytes, check: bool = True) -> list[Any]:
    """Send ``text`` (statements in one simple-protocol message) and read the result of each; the first
    error, as psycopg's exception, once every result was read (the server skips the statements after a
    failed one; ``check=False``: the results as they are, the caller judges them). A lost connection is
    raised either way. Waits in poll(2): a signal's exception leaves here with the connection
    mid-message (the caller drops it)."""
    pgc = conn.pgconn
    with conn.lock:
        pgc.send_query(text)
        fd = pgc.socket
        while pgc.flush():  # a connection in non-blocking mode: the rest when the socket takes it
            select.select([], [fd], [])
        poller = _poller(conn, _conn_state(conn))
        results = []
        while True:
            while pgc.is_busy():
                poller.poll()
                pgc.consume_input()
            res = pgc.get_result()
            if res is None:
                break
            results.append(res)
    if check:
        for res in results:
            _check(conn, res)  # raises the first error
    if pgc.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError(f"the connection was lost: {pgc.get_error_message()}")
    return results


def _rows(conn: Any, res: Any) -> list[tuple[bytes | None, Any]]:
    """The document's row of READ_HEX's result: data as bytes (None where NULL), and previous as a
    function that reads it (None where NULL): called only when data is missing or does not verify."""
    if not res.ntuples:
        return []
    data = res.get_value(0, 0)
    return [(None if data is None else unhexlify(data), (lambda: _previous(conn)) if res.get_value(0, 1) == b"t" else None)]


def _previous(conn: Any) -> bytes | None:
    res = _send(conn, q_state.PREVIOUS_HEX.encode())[-1]
    value = res.get_value(0, 0) if res.ntuples else None
    return None if value is None else unhexlify(value)


def _begin(cn: Connector, conn: Any, purpose: int, timeout: float, operation: str, what: str,
           wait: bool) -> tuple[bool, list[tuple[bytes | None, Any]]]:
    """Message 1: (whether the lock is held, the document's rows if so)."""
    begin = _BEGIN.format(limit=_timeout_ms(timeout))
    me = standing_record(cn, conn, operation, purpose)
    record = ""
    if me is not None:  # the first transaction of this connection (or of another operation)
        lit = pq.Escaping(conn.pgconn).escape_literal
        record = begin + _PUBLISH % {
            "purpose": int(purpose), "lock_id": lit(me["lock_id"].encode()).decode(),
            "host": lit(me["host"].encode()).decode(), "pid": int(me["pid"]),
            "operation": lit(me["operation"].encode()).decode(), "version": lit(me["version"].encode()).decode(),
        } + "; COMMIT; "
    lock = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    text = f"{record}{begin}SELECT {lock}({int(cn.key)}, {int(purpose)}); {q_state.READ_HEX}".encode()
    try:
        results = _send(conn, text)
    except pe.LockNotAvailable:
        conn.execute("ROLLBACK")
        raise locked_error(what, timeout, read_holder(conn, cn.key, purpose)) from None
    if me is not None:
        keep_standing(conn, operation, purpose)
    if not wait and results[-2].get_value(0, 0) != b"t":
        return False, []
    return True, _rows(conn, results[-1])


def _drop(cn: Connector, conn: Any) -> None:
    """Abandon ``conn`` mid-message (a signal) or after an error: rolled back if it can still talk, else
    closed (the server rolls back)."""
    if conn.closed or conn.broken or conn.pgconn.is_busy() or conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
        cn.close()
        return
    try:
        if conn.info.transaction_status:
            conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - unusable: drop it, the server rolls back
        cn.close()


@contextmanager
def state_transaction(cn: Connector, operation: str, purpose: int, timeout: float, on_wait: Any,
                      what: str) -> Iterator[StateTx]:
    """The state document's transaction: the lock of ``purpose`` held from message 1 to the COMMIT of
    message 2 (see the module docstring); the block gets a StateTx. Any exception rolls back (a lost
    connection: the server rolls back); psycopg errors become one AgentStateError; a signal drops the
    connection and is raised (after the COMMIT was sent: held until its answer, see signals.critical).
    A connection found dead at the start (the server restarted since its last use) is replaced and the
    start retried once: nothing of the transaction had been sent."""
    from ..state import signals

    wait = timeout > 0 and on_wait is None

    def begin(conn: Any) -> tuple[bool, list[tuple[bytes | None, Any]]]:
        return _begin(cn, conn, purpose, timeout, operation, what, wait)

    conn, (got, rows) = start_write(cn, operation, begin, _drop, connect=lambda: live_conn(cn)[0])
    committing = False
    try:
        if not got:
            _wait_locked(cn, conn, purpose, timeout, on_wait, what)  # psycopg: told, then waited (rare)
            rows = [(None if d is None else bytes(d), None if p is None else bytes(p))
                    for d, p in conn.execute(q_state.READ).fetchall()]
        tx = StateTx(rows)
        yield tx
        tx.save_large(conn)
        committing = True
        with signals.critical():  # a signal during COMMIT is held: the outcome is then known
            where = f"{cn.where} schema {cn.schema}"
            tx.commit(conn, where)
            signals.note_committed(f"the {operation} is committed to {where}")
        stats.committed()
    except BaseException as e:
        _drop(cn, conn)
        if isinstance(e, (psycopg.Error, KeyboardInterrupt)):
            raise write_failed(cn, e, operation, what, timeout, committing) from None
        raise
