"""Issue 17 on PostgreSQL: writers of different sessions and of different response chains never wait for
each other (only one session's writes, one chain's and one tenant's eviction are serial); an append is one
round trip; the locks that remain are named in `lock status` and in the lock-timeout error."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from threads import all_at_once

from agentstate import ConflictError, ResponseStore, SessionStore, StateLocked, StorageError
from agentstate.sql import open_database

U = {"role": "user", "content": "hi"}


def test_writers_of_different_sessions_never_wait(pg_schema_url):
    sessions = SessionStore(pg_schema_url, lock_timeout=0.3)
    sessions.append("a", [U])
    db = open_database(pg_schema_url)
    with db.write(operation="held by the test", locks=[db.resource("session", "default", "a")]):
        started = time.monotonic()
        sessions.append("b", [U])  # another session: no wait at all
        sessions.create("c")
        sessions.pop("b")
        sessions.delete("c")
        assert time.monotonic() - started < 0.3 * 3
        with pytest.raises(StateLocked) as ei:  # the same session: waits, then names the lock and its holder
            sessions.append("a", [U])
        assert "session 'a' (tenant 'default')" in str(ei.value) and "held by the test" in str(ei.value)
        assert ei.value.exit_code == 3
        status = db.lock_status()
        assert status["held"] and status["holders"][0]["resource"].startswith("session #")
    assert sessions.get("a").item_count == 1 and sessions.get("b").item_count == 0
    db.close()


def test_writers_of_different_chains_never_wait(pg_schema_url):
    responses = ResponseStore(pg_schema_url, lock_timeout=0.3)
    responses.save({"id": "x1", "output": []})
    responses.save({"id": "y1", "output": []})
    db = open_database(pg_schema_url)
    with db.write(operation="held by the test", locks=[db.resource("response chain", "default", "x1")]):
        responses.save({"id": "y2", "previous_response_id": "y1", "output": []})  # another chain
        responses.save({"id": "z1", "output": []})  # a new chain
        with pytest.raises(StateLocked, match="response chain 'x1'"):
            responses.save({"id": "x2", "previous_response_id": "x1", "output": []})
    responses.save({"id": "x2", "previous_response_id": "x1", "output": []})
    assert [r["id"] for r in responses.chain("x2")] == ["x1", "x2"]
    assert [r["id"] for r in responses.chain("y2")] == ["y1", "y2"]
    db.close()


def test_concurrent_saves_to_many_chains_with_eviction_keep_every_chain_whole(pg_schema_url):
    """Savers of different chains run at once, eviction (max_responses) stays one decision per tenant:
    every surviving chain is whole and the cap holds."""

    def saver(n: int) -> None:
        store = ResponseStore(pg_schema_url, max_responses=30, lock_timeout="60s")
        try:
            for c in range(4):
                root = f"t{n}-c{c}"
                store.save({"id": root, "output": []})
                for d in range(1, 3):
                    store.save({"id": f"{root}-{d}", "previous_response_id": f"{root}-{d - 1}" if d > 1 else root,
                                "output": []})
        finally:
            store.close()

    all_at_once(saver, 6)
    store = ResponseStore(pg_schema_url)
    page = store.list(limit=100, include_deleted=True)
    assert page.total <= 30 + 3  # the cap, plus what a save in flight may hold beyond it
    for r in page.items:  # whole: the walk (which refuses a broken chain) reaches a root
        assert "previous_response_id" not in store.chain(r.id)[0] or store.chain(r.id)[0]["previous_response_id"] is None


@pytest.mark.parametrize(("keyed", "statement"), [
    (True, "SELECT * FROM agentstate_append($1::integer, $2::integer,"),  # q_sessions.PG_APPEND
    (False, "WITH u AS ( UPDATE sessions s SET last_seq = s.last_seq + 1, item_count = s.item_count + 1,"),
])  # the second: q_sessions.PG_APPEND_FAST_ONE (one item, no key, a session that exists)
def test_an_append_is_one_round_trip(pg_schema_url, monkeypatch, keyed, statement):
    """After the first appends of a process (the first publishes its holder record, the next sets the
    connection's limits once and prepares the statement), an append sends one message and reads its
    answer: one exec_prepared on the connection's libpq object, nothing else sent (no psycopg execute, no
    pipeline, no second statement, no client-side binding). With an idempotency key, the call of
    agentstate_append; without one, to a session this store has seen, the statement that needs no function."""
    sessions = SessionStore(pg_schema_url)
    sessions.append("s", [U])
    sessions.append("s", [U])  # the statement, prepared
    sessions.append("s", [U], idempotency_key="w")  # the function, prepared
    sent: list[tuple[str, object]] = []
    real_client, real_conn = psycopg.ClientCursor.execute, psycopg.Connection.execute

    def client_execute(self, query, params=None, **kw):
        sent.append(("client", None))
        return real_client(self, query, params, **kw)

    def conn_execute(self, query, params=None, **kw):
        sent.append(("execute", " ".join(str(query).split())[:40]))
        return real_conn(self, query, params, **kw)

    class Recorder:  # the connection's libpq object, every call that sends something recorded
        def __init__(self, pgconn):
            self._pgconn = pgconn

        def __getattr__(self, name):
            got = getattr(self._pgconn, name)
            if not callable(got) or not name.startswith(("exec", "send", "prepare", "flush", "put", "pipeline")):
                return got

            def call(*args, **kw):
                sent.append((name, args[0] if args else None))
                return got(*args, **kw)
            return call

    monkeypatch.setattr(psycopg.ClientCursor, "execute", client_execute)
    monkeypatch.setattr(psycopg.Connection, "execute", conn_execute)
    conn = sessions.db.connector.conn()
    monkeypatch.setattr(conn, "pgconn", Recorder(conn.pgconn))
    for n in range(3):
        sent.clear()
        sessions.append("s", [U], expect_seq=n + 3, idempotency_key=f"k{n}" if keyed else None)
        assert len(sent) == 1 and sent[0][0] == "exec_prepared", sent
    monkeypatch.undo()
    assert sessions.get("s").item_count == 6
    # what that prepared statement is, as its server session says (pg_prepared_statements is per session)
    (text,), = real_conn(conn, "SELECT statement FROM pg_prepared_statements WHERE name = %s",
                         (sent[0][1].decode(),)).fetchall()
    assert " ".join(text.split()).startswith(statement)


def test_the_prepared_append_survives_its_statement_being_deallocated(pg_schema_url):
    """psycopg sends DEALLOCATE ALL on a connection after a ROLLBACK (a write that raised, a lock that
    timed out), a DROP or an ALTER once it has prepared statements of its own there (reads repeated 5
    times): the append's statement, prepared by agentstate, goes with them. The next append prepares it
    again and runs: nothing fails, nothing is written twice."""
    sessions = SessionStore(pg_schema_url)
    for _ in range(3):
        sessions.append("s", [U])
    conn = sessions.db.connector.conn()
    for _ in range(6):  # psycopg prepares a read it has run 5 times
        sessions.get("s")
    with pytest.raises(ConflictError):  # a write transaction that raises: rolled back
        sessions.create("s")
    sessions.append("s", [U])  # publishes the holder record again (the create replaced it)
    conn.execute("DEALLOCATE ALL")  # whatever psycopg did, none of agentstate's statements is left
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    assert [i.seq for i in sessions.append("s", [U, U])] == [5, 6]  # the prepared path
    assert sessions.db.connector.conn() is conn  # the same connection: re-prepared, not reconnected
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (1,)
    assert sessions.get("s").item_count == 6 and [i.seq for i in sessions.context("s")] == [1, 2, 3, 4, 5, 6]


def test_a_prepared_append_whose_connection_is_killed_is_one_clear_error_and_the_next_reconnects(pg_schema_url):
    """The prepared path on libpq directly: a connection ended while the append waits for its session's
    lock (pg_terminate_backend) is one StorageError (the outcome may be unknown: the connection went
    during the call), not a traceback; nothing of it is stored (it never got the lock), and the next
    append reconnects, prepares the statement on the new connection and stores gaplessly."""
    sessions = SessionStore(pg_schema_url, lock_timeout="30s")
    sessions.append("s", [U])
    sessions.append("s", [U])  # the prepared path from here on
    backend = sessions.db.connector.conn().info.backend_pid  # this thread's connection
    db = open_database(pg_schema_url)
    killed: list[bool] = []

    def kill_once_waiting() -> None:
        with psycopg.connect(pg_schema_url.split("?")[0], autocommit=True) as admin:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()
                if row and row[0] == "Lock":
                    killed.append(admin.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()[0])
                    return
                time.sleep(0.01)

    with db.write(operation="held by the test", locks=[db.resource("session", "default", "s")]):
        killer = threading.Thread(target=kill_once_waiting)
        killer.start()
        with pytest.raises(StorageError) as ei:
            sessions.append("s", [U])
        killer.join(10)
    assert killed == [True]
    assert "connection" in str(ei.value) and "\n" not in str(ei.value)
    assert "may or may not have been saved" in str(ei.value) or "nothing was saved" in str(ei.value)
    assert [i.seq for i in sessions.append("s", [U])] == [3]  # a new connection: prepared anew
    assert sessions.db.connector.conn().info.backend_pid != backend
    assert [i.seq for i in sessions.context("s")] == [1, 2, 3]
    db.close()


def test_the_prepared_append_waits_only_its_lock_timeout_and_names_the_holder(pg_schema_url):
    """The prepared path runs under the connection's session-level lock_timeout: a session locked by
    another writer ends the wait after --lock-timeout with the holder named, nothing written; the reads
    on that connection keep working."""
    sessions = SessionStore(pg_schema_url, lock_timeout="0.3s")
    sessions.append("s", [U])
    sessions.append("s", [U])  # the prepared path from here on
    db = open_database(pg_schema_url)
    with db.write(operation="a long import", locks=[db.resource("session", "default", "s")]):
        t0 = time.monotonic()
        with pytest.raises(StateLocked, match="a long import"):
            sessions.append("s", [U])
        assert time.monotonic() - t0 < 10
        sessions.append("other", [U])  # another session's writer does not wait
    assert sessions.get("s").item_count == 2 and [i.seq for i in sessions.context("s")] == [1, 2]
    sessions.append("s", [U])
    assert sessions.get("s").item_count == 3


def test_lock_ids_of_session_locks_name_one_acquisition(pg_schema_url):
    """The record a process's appends share stands for all of them; the lock ID shown adds the holder's
    transaction, so force-unlock with an ID seen during one write never ends a later one."""
    db = open_database(pg_schema_url)
    other = open_database(pg_schema_url)
    res = db.resource("session", "default", "s")
    with db.write(operation="first", locks=[res]):
        first = other.lock_status()["holders"][0]["lock_id"]
    with db.write(operation="second", locks=[res]):
        second = other.lock_status()["holders"][0]["lock_id"]
        assert second != first
        with pytest.raises(Exception, match="not the current holder"):
            other.force_unlock(first)
    assert other.lock_status()["held"] is False
    db.close()
    other.close()


def test_items_reach_postgresql_exactly_through_the_array_literal(pg_schema_url):
    """The append passes its items as one text[] literal (one item to a session that exists: as one text
    parameter, PG_APPEND_FAST_ONE): quotes, backslashes, braces, commas, "NULL", escapes and non-ASCII
    text come back exactly as given, in order, through the function (a new session), the statement with
    arrays (several items) and the one with one item."""
    sessions = SessionStore(pg_schema_url)
    tricky = ['a"b', "back\\slash", "{braces}, commas", "NULL", "", "line\nbreak\ttab", "ünïcødé ✓ 😀",
              '\\"', "\\\\N", "x" * 70000]
    items = [{"role": "user", "content": t or "-", "n": i, "k": {"nested": [t, None, 1.5, 2**62]}}
             for i, t in enumerate(tricky)]
    stored = sessions.append("s", items)
    assert [it.data for it in stored] == items
    assert [it.data for it in sessions.items("s")] == items
    assert sessions.append("s", []) == [] and sessions.get("s").item_count == len(items)
    assert [it.data for it in sessions.append("s", items)] == items
    assert [sessions.append("s", [it])[0].data for it in items] == items
    assert [it.data for it in sessions.items("s")] == items * 3
    assert sessions.append("t", [{"type": "x", "v": ""}])[0].data == {"type": "x", "v": ""}


def test_the_one_round_trip_append_stamps_with_the_writers_clock(pg_schema_url, monkeypatch):
    """Schema version 5: the append function stamps with the time the writer passes (the same clock as
    every other write path), never before the session's updated_at; so a ttl set by a later write counts
    from that clock too (the function stamped with the server's clock before, and expiry drifted by the
    clocks' difference)."""
    import agentstate.sessions.store as sessions_mod

    now = ["2031-01-01T00:00:00.000000Z"]
    monkeypatch.setattr(sessions_mod, "_utcnow", lambda: now[0])
    sessions = SessionStore(pg_schema_url)
    for _ in range(3):  # the first publishes the holder record; the others take the prepared path
        got = sessions.append("s", [U])
        assert got[0].created_at == now[0]
    assert sessions.get("s").updated_at == now[0]
    now[0] = "2031-01-01T00:00:05.000000Z"
    sessions.append("s", [U], ttl=60)  # the general path (a ttl), the same clock
    info = sessions.get("s")
    assert (info.updated_at, info.expires_at) == (now[0], "2031-01-01T00:01:05.000000Z")
    sessions.append("u", [U])
    sessions.append("u", [U])
    now[0] = "2030-12-31T00:00:00.000000Z"  # a writer whose clock is behind: never before updated_at
    assert sessions.append("u", [U])[0].created_at == "2031-01-01T00:00:05.000000Z"
    assert sessions.get("u").updated_at == "2031-01-01T00:00:05.000000Z"


# -- signals during the one-call append, in a program without agentstate's handlers (library use) --------

def _signal_during_the_call(monkeypatch, signum, fail=False):
    """Send ``signum`` to this process from inside the append's one call (before the statement is sent);
    ``fail``: the call then fails as a server error would."""
    import os

    from agentstate.sql import pg_batch

    real = pg_batch._exec_prepared

    def exec_prepared(conn, text, params, *state):
        os.kill(os.getpid(), signum)
        if fail:
            raise psycopg.errors.InternalError("failed on purpose")
        return real(conn, text, params, *state)

    monkeypatch.setattr(pg_batch, "_exec_prepared", exec_prepared)


@pytest.mark.parametrize("signum,code", [(15, 143), (2, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_call_is_held_and_reported_as_committed(pg_schema_url, monkeypatch, signum, code):
    """SIGTERM (its default: die) or SIGINT (KeyboardInterrupt) while the append's one call runs is held
    until the call returns, then raised as Interrupted saying the append completed; the items are stored,
    and the program's own signal dispositions and mask are as they were."""
    import signal

    from agentstate.errors import Interrupted

    store = SessionStore(pg_schema_url)
    store.append("s", [U])
    store.append("s", [U])  # the connection's holder record is standing: the next append is the prepared call
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if signum == 15 else None
    try:
        _signal_during_the_call(monkeypatch, signum)
        with pytest.raises(Interrupted) as ei:
            store.append("s", [{"role": "user", "content": "third"}])
        assert ei.value.exit_code == code and ei.value.outcome == "committed", ei.value
        assert "completed" in str(ei.value), ei.value
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (
            before if signum == 2 else (before[0], signal.SIG_DFL))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert [i.data["content"] for i in store.items("s")] == ["hi", "hi", "third"]


def test_a_signal_during_the_call_goes_to_the_programs_own_handler_after_it(pg_schema_url, monkeypatch):
    import signal

    store = SessionStore(pg_schema_url)
    store.append("s", [U])
    store.append("s", [U])
    seen: list[tuple[int, int]] = []
    previous = signal.signal(signal.SIGTERM, lambda n, f: seen.append((n, store.get("s").item_count)))
    try:
        _signal_during_the_call(monkeypatch, signal.SIGTERM)
        got = store.append("s", [U])
        monkeypatch.undo()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [i.seq for i in got] == [3]
    assert seen == [(signal.SIGTERM, 3)]  # once, after the call: the append was already stored


def test_a_signal_during_a_call_that_fails_is_dropped_behind_the_error(pg_schema_url, monkeypatch):
    """The call's error is the news (nothing stored): the held SIGTERM is dropped, never a kill."""
    import signal

    store = SessionStore(pg_schema_url)
    store.append("s", [U])
    store.append("s", [U])
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _signal_during_the_call(monkeypatch, signal.SIGTERM, fail=True)
        with pytest.raises(StorageError):
            store.append("s", [U])
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert store.get("s").item_count == 2


def test_a_signal_during_the_call_of_a_program_with_other_threads_is_held_too(pg_schema_url, monkeypatch):
    """With another thread running, a mask on the main thread alone would not hold a process-directed
    SIGTERM (the kernel would give it to the other thread, whose default action kills the process): the
    handlers are installed for the call instead, and the outcome is the same."""
    import signal

    from agentstate.errors import Interrupted

    store = SessionStore(pg_schema_url)
    store.append("s", [U])
    store.append("s", [U])
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _signal_during_the_call(monkeypatch, signal.SIGTERM)
        with pytest.raises(Interrupted) as ei:
            store.append("s", [U])
        monkeypatch.undo()
        assert ei.value.exit_code == 143 and ei.value.outcome == "committed", ei.value
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        other.join()
    assert store.get("s").item_count == 3
