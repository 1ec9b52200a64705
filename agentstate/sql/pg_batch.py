"""One round trip for a whole PostgreSQL write (issue 17): the holder record, BEGIN, the resource locks,
the write's statements and COMMIT, pipelined. The server waits for the locks itself, then runs the
statements and commits without waiting for the client, so a lock is held for the server's time only
(never for a round trip), and writers of different resources share WAL flushes.

Used where the whole write is known up front and decides in SQL (a session append: create-if-missing,
compare, insert, bump in one statement, ``q_sessions.PG_APPEND``). Signals are held for the batch, so
its outcome is always known (a lock wait is bounded by lock_timeout)."""

from __future__ import annotations

import logging
import select
from typing import Any

from .pg_conn import Connector, server_error
from .pg_lock import LOCK_DB, Resource, _begin_resources, _record_for

log = logging.getLogger("agentstate.pg")


def _alive(conn: Any) -> bool:
    """Whether an idle pooled connection may still be used: a server that ended it (a restart, an
    idle timeout, pg_terminate_backend) has sent its goodbye, so the socket is readable. No round trip."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def locked_batch(cn: Connector, operation: str, resources: list[Resource], timeout: float,
                 statements: list[tuple[str, Any]]) -> list[list[tuple]]:
    """Run ``statements`` (text, params) in one transaction holding the locks of ``resources``, and
    commit, in one round trip; the rows of each statement. A statement that raises rolls everything
    back (nothing written); a connection lost during the batch is "may or may not have been saved"."""
    import psycopg

    from ..state import signals

    with cn.errors(f"starting a write ({operation})"):
        conn = cn.conn()
        if not _alive(conn):
            log.info("connection to %s was ended by the server since its last use; reconnecting", cn.where)
            cn.close()
            conn = cn.conn()
    me = _record_for(cn, conn, LOCK_DB, operation)
    where = f"{cn.where} schema {cn.schema}"
    try:
        with signals.critical():  # held for the batch: the outcome is known when it ends
            curs = _begin_resources(cn, conn, resources, timeout, me, statements, commit=True)
            rows = [cur.fetchall() if cur.description is not None else [] for cur in curs]
            signals.note_committed(f"the {operation} is committed to {where}")
        return rows
    except psycopg.Error as e:
        from .pg import _rollback

        lost = isinstance(e, psycopg.OperationalError) and (conn.broken or conn.closed)
        _rollback(cn, conn)
        cn.after_error(e)
        raise server_error(e, doing=f"writing ({operation})", where=cn.where, committing=lost) from None
    except BaseException:
        from .pg import _rollback

        _rollback(cn, conn)
        raise
