"""One round trip for a whole PostgreSQL write (issue 17): the holder record, then one statement that
takes its lock and does the write, and its COMMIT, in one message. The server waits for the lock itself, then
runs the write and commits without waiting for the client, so a lock is held for the server's time only
(never for a round trip), and writers of different resources share WAL flushes.

Used where the whole write is known up front and decides in SQL (a session append: create-if-missing,
compare, insert, bump: ``q_sessions.PG_APPEND``). Signals are held for the call, so its outcome is
always known (a lock wait is bounded by lock_timeout)."""

from __future__ import annotations

import re
import select
import weakref
from typing import Any

import psycopg
from psycopg import errors as pe
from psycopg import pq

from ..logs import getLogger
from ..state import signals
from .pg_conn import Connector, _timeout_ms, server_error
from .pg_lock import _PUBLISH, Resource, keep_standing, resources_locked, standing_record

log = getLogger("agentstate.pg")


class _Conn:
    """What the calls on one connection keep, found with one lookup per call: its poll object
    (``_alive``); the session-level lock_timeout the prepared path set on it (None: none set, or not
    known to be); its client encoding and the names of the statements prepared on it (a new connection
    prepares anew)."""

    __slots__ = ("poller", "limits", "encoding", "prepared")

    def __init__(self) -> None:
        self.poller: Any = None
        self.limits: str | None = None
        self.encoding: str | None = None
        self.prepared: set[bytes] = set()


_conns: weakref.WeakKeyDictionary[Any, _Conn] = weakref.WeakKeyDictionary()


def _conn_state(conn: Any) -> _Conn:
    st = _conns.get(conn)
    if st is None:
        st = _conns[conn] = _Conn()
    return st


def _poller(conn: Any, st: _Conn) -> Any:
    """The poll object of ``conn``'s socket (readable), made once per connection."""
    poller = st.poller
    if poller is None:
        poller = st.poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
    return poller


def live_conn(cn: Connector) -> tuple[Any, _Conn]:
    """This thread's connection of ``cn`` and its state, replaced first if the server ended it since its
    last use (_alive): a write then never starts on a connection that cannot carry it."""
    conn = cn.conn()
    st = _conn_state(conn)
    if not _alive(conn, st):
        log.info("connection to %s was ended by the server since its last use; reconnecting", cn.where)
        cn.close()
        conn = cn.conn()
        st = _conn_state(conn)
    return conn, st


def _alive(conn: Any, st: _Conn) -> bool:
    """Whether an idle pooled connection may still be used: a server that ended it (a restart, an
    idle timeout, pg_terminate_backend) has sent its goodbye, so the socket is readable. No round trip:
    one poll(2) with a zero timeout, through a poll object kept per connection."""
    try:
        return not _poller(conn, st).poll(0)
    except (OSError, ValueError):
        return False


# The message locked_call sends when it must publish the holder record (the connection's standing record
# does not name this operation yet): the holder record in its own transaction (committed at once, so that
# waiters see it; UNLOGGED: its COMMIT waits for no WAL flush); then the write, one implicit transaction
# of two statements (one message, so the server runs them back to back and commits after the last): its
# limits (no statement timeout: the lock wait is bounded by lock_timeout), then the statement. Read committed: every connection sets
# default_transaction_isolation so (pg_conn), whatever the server's default.
_PUBLISHING = "BEGIN ISOLATION LEVEL READ COMMITTED; " + _PUBLISH + "; COMMIT; "
_WRITE = ("SELECT set_config('statement_timeout', '0', true), set_config('lock_timeout', %(lock_timeout)s, true); "
          "{statement}")
_messages: dict[tuple[str, bool], str] = {}


def reader_begin(cn: Connector, conn: Any) -> str:
    """The BEGIN of a read transaction on ``conn``: with the readers' statement timeout as a local setting
    when a prepared write cleared the connection's own."""
    begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    st = _conns.get(conn)  # limits set by the prepared path: no statement timeout, the writer's lock_timeout
    if st is not None and st.limits is not None and cn.statement_timeout > 0:
        begin += f"; SET LOCAL statement_timeout TO '{_timeout_ms(cn.statement_timeout)}'"
    return begin


# The prepared path (the common case) goes to libpq directly (psycopg's PGconn): the statement prepared
# once per connection under a name of ours, then each call one exec_prepared (Bind, Execute, Sync: one
# message, one answer), its parameters and result values as text. psycopg's cursor machinery around
# the same protocol (adaptation, the prepared-statement cache, result conversion) cost ~55 us of client
# CPU per append, more than the rest of agentstate's work on the call. The blocking libpq call releases
# the GIL; signals arriving meanwhile are held (signals.critical) and delivered after it.
_TUPLES_OK, _CONN_OK, _SQLSTATE = pq.ExecStatus.TUPLES_OK, pq.ConnStatus.OK, pq.DiagnosticField.SQLSTATE
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# text -> (statement name, its SQL with $n placeholders, the parameter names in $n order)
_statements: dict[str, tuple[bytes, bytes, tuple[str, ...]]] = {}


def _statement(text: str) -> tuple[bytes, bytes, tuple[str, ...]]:
    got = _statements.get(text)
    if got is None:
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            if m.group(1) not in names:
                names.append(m.group(1))
            return f"${names.index(m.group(1)) + 1}"

        sql = _PLACEHOLDER.sub(number, text)
        got = _statements[text] = (f"agentstate_call_{len(_statements)}".encode(), sql.encode(), tuple(names))
    return got


def _text_str(v: str, encoding: str) -> bytes:
    b = v.encode(encoding)
    if b"\0" in b:  # libpq sends text parameters as C strings: refused here, as psycopg refuses it
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return b


def _text_array(v: list[str], encoding: str) -> bytes:  # a text[] literal, each element quoted
    if len(v) == 1:  # the usual append: one item
        return _text_str('{"' + v[0].replace("\\", "\\\\").replace('"', '\\"') + '"}', encoding)
    return _text_str("{" + ",".join(['"' + e.replace("\\", "\\\\").replace('"', '\\"') + '"' for e in v]) + "}",
                     encoding)


# A parameter in PostgreSQL's text format, by its Python type (None: sent as NULL, never looked up here).
_TEXT: dict[type, Any] = {
    bool: lambda v, encoding: b"t" if v else b"f",
    int: lambda v, encoding: str(v).encode(),
    str: _text_str,
    list: _text_array,
}


def _exec_prepared(conn: Any, text: str, params: dict[str, Any], st: _Conn | None = None) -> list[tuple]:
    """``text`` as a prepared statement of ``conn`` (prepared first if it is not yet): its rows, each
    value as text (str) or None. Errors are psycopg's (by SQLSTATE); a connection lost meanwhile is an
    OperationalError with ``conn.broken`` set. A statement deallocated behind our back (psycopg sends
    DEALLOCATE ALL after a ROLLBACK, DROP or ALTER on a connection where it prepared statements of its
    own) is prepared again and run once more: it did not run."""
    name, sql, names = _statement(text)
    pgc = conn.pgconn
    if st is None:
        st = _conn_state(conn)
    encoding, done = st.encoding, st.prepared
    if encoding is None:
        encoding = st.encoding = conn.info.encoding
    values = [None if (v := params[n]) is None else _TEXT[v.__class__](v, encoding) for n in names]
    with conn.lock:
        if name not in done:
            _check(conn, pgc.prepare(name, sql))
            done.add(name)
        res = pgc.exec_prepared(name, values)
        if res.status != _TUPLES_OK:
            if res.error_field(_SQLSTATE) == b"26000" and pgc.status == _CONN_OK:  # no such prepared statement
                _check(conn, pgc.prepare(name, sql))
                res = pgc.exec_prepared(name, values)
            _check(conn, res)
        get, width = res.get_value, range(res.nfields)
        return [tuple([None if v is None else v.decode(encoding) for v in [get(i, j) for j in width]])
                for i in range(res.ntuples)]


def _check(conn: Any, res: Any) -> None:
    if res.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        return
    encoding = conn.info.encoding
    if conn.pgconn.status != _CONN_OK:  # lost: libpq's words, no SQLSTATE (or a FATAL one)
        e = pe.error_from_result(res, encoding)
        raise e if isinstance(e, psycopg.OperationalError) else psycopg.OperationalError(str(e))
    raise pe.error_from_result(res, encoding)


def _message(text: str, publish: bool) -> str:
    got = _messages.get((text, publish))
    if got is None:
        got = _messages[(text, publish)] = (_PUBLISHING if publish else "") + _WRITE.format(statement=text)
    return got


def locked_call(cn: Connector, operation: str, res: Resource, timeout: float, text: str,
                params: dict[str, Any]) -> list[tuple]:
    """Run ``text``, one statement (a function such as agentstate_append) that takes the lock of ``res``
    itself and then does the whole write, in its own transaction, in one round trip. ``text`` takes
    the named parameters ``%(name)s`` of ``params`` plus ``classid`` and ``objid`` (the lock, added to
    ``params``: the caller's to give up), each cast to its type in the text (values: None, bool, int,
    str, list of str). In the common case (the connection's standing holder record already names this
    operation) it runs alone as a prepared statement (the extended protocol: the server plans it once
    per connection; libpq directly, see _exec_prepared), in autocommit (its own transaction, committed
    when it ends), under the connection's session-level limits: this lock_timeout and no statement
    timeout, set once (and again when the timeout differs). Else it goes in one simple-protocol message
    after the holder record and the transaction's own limits (psycopg's ClientCursor binds the
    parameters; the server runs the statements one after the other, each with its own snapshot). Its
    rows, each value as text (str) or None. A statement that raises rolls the write back (nothing
    written); a connection lost during the call is "may or may not have been saved".

    SIGINT and SIGTERM are held for the call (signals.held in library use, signals.critical where the
    handlers are installed): one that arrives meanwhile is raised when it returns, as Interrupted saying
    the write was committed (or, if the call failed, dropped: its error is the news)."""
    try:
        with signals.held():  # library use: blocked for the call, delivered after it (CLI: critical() below)
            return _call(cn, operation, res, timeout, text, params)
    except KeyboardInterrupt as e:
        where = f"{cn.where} schema {cn.schema}"
        outcome = getattr(e, "outcome", None)
        if outcome is None:  # a plain KeyboardInterrupt (no handler of ours): the call was cut short
            raise signals.unknown_outcome(e, operation, where) from None
        raise signals.interrupted(e, operation, committed=f"the {operation} is committed to {where}"
                                  if outcome == "committed" else None) from None


def _call(cn: Connector, operation: str, res: Resource, timeout: float, text: str,
          params: dict[str, Any]) -> list[tuple]:
    try:
        conn, st = live_conn(cn)
    except psycopg.Error as e:  # cn.errors(), without a generator on every call
        cn.after_error(e)
        raise server_error(e, doing=f"starting a write ({operation})", where=cn.where) from None
    me = standing_record(cn, conn, operation)
    lock_timeout = _timeout_ms(timeout)
    params["classid"], params["objid"] = res.classid, res.objid  # the caller's own dict
    prepared = me is None
    try:
        if prepared and st.limits != lock_timeout:
            st.limits = None  # until the new ones are known to be set
            conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', '0', false)",
                         (lock_timeout,))
            st.limits = lock_timeout
        with signals.critical():  # held for the call: its outcome is known when it ends
            if prepared:
                rows = _exec_prepared(conn, text, params, st)
            else:
                cur = psycopg.ClientCursor(conn)
                cur.execute(_message(text, me is not None), {**params, **(me or {}), "lock_timeout": lock_timeout})
                rows = []
                while True:
                    if cur.description is not None:
                        rows = [tuple(None if v is None else str(v) for v in row) for row in cur.fetchall()]
                    if not cur.nextset():
                        break
            signals.note_committed("the %s is committed to %s schema %s", operation, cn.where, cn.schema)
        if me is not None:
            keep_standing(conn, operation)
        return rows
    except pe.LockNotAvailable:
        _rollback(cn, conn)
        raise resources_locked(cn, conn, [res], timeout) from None
    except psycopg.Error as e:
        lost = isinstance(e, psycopg.OperationalError) and (conn.broken or conn.closed)
        _rollback(cn, conn)
        cn.after_error(e)
        raise server_error(e, doing=f"writing ({operation})", where=cn.where, committing=lost) from None
    except BaseException:
        _rollback(cn, conn)
        raise


def _rollback(cn: Connector, conn: Any) -> None:
    from .pg import _rollback

    _rollback(cn, conn)
