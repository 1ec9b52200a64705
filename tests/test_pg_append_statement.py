"""The common PostgreSQL append as one statement (schema version 9, q_sessions.PG_APPEND_FAST): no key, at
least one item, a session that exists without a time to live and meets its expectations. It takes the
session's lock before it reads the row; a session's tags follow with what was committed while it waited;
when it writes nothing, the function (q_sessions.PG_APPEND) decides, with the same outcomes as before."""

from __future__ import annotations

import threading

import pytest
from pgserver import RawHolder, schema_conn
from pgserver import schema_sql as sql
from threads import all_at_once

from agentstate import ConflictError, NotFound, SessionStore
from agentstate.sql import q_sessions as q
from agentstate.sql.pg import pg_text
from agentstate.sql.pg_batch import _statement

U = {"role": "user", "content": "hi"}


def _stamps(url: str, sid: str) -> tuple[str, set[str]]:
    """(the session's updated_at, the set of its tags' updated_at)."""
    (updated,), = sql(url, "SELECT updated_at FROM sessions WHERE id = %s", (sid,))
    return updated, {r[0] for r in sql(url, "SELECT updated_at FROM session_tags WHERE session_id = %s", (sid,))}


@pytest.mark.parametrize("stmt", [q.PG_APPEND_FAST, q.PG_APPEND_FAST_ONE])
def test_the_statement_takes_the_sessions_lock_before_it_reads_the_row(pg_schema_url, stmt):
    """The lock is an InitPlan behind a one-time filter, run before the scan of sessions starts: a writer
    waiting for it holds no page of the table (a pin would keep the page from being pruned)."""
    SessionStore(pg_schema_url).append("s", [U])
    params = {"tenant": "default", "id": "s", "ids": ["i"], "datas": ["d"], "title": None, "now": "x",
              "expect_seq": None, "expect_version": None, "classid": 1, "objid": 2, "item_id": "i", "item_data": "d"}
    _, text, names = _statement(pg_text(stmt))  # its text as prepared: $n parameters, in names' order
    with schema_conn(pg_schema_url) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")  # the plan a prepared statement settles on
        conn.execute(f"PREPARE fast AS {text.decode()}")
        args = ", ".join("NULL" if params[n] is None else f"'{params[n]}'" if not isinstance(params[n], list)
                         else "'{" + ",".join(params[n]) + "}'" for n in names)
        plan = [r[0] for r in conn.execute(f"EXPLAIN (VERBOSE, COSTS OFF) EXECUTE fast({args})")]
    text = "\n".join(plan)
    init = next(i for i, line in enumerate(plan) if "InitPlan" in line)
    assert "pg_advisory_xact_lock" in plan[init + 1] + plan[init + 2] + plan[init + 3], text
    gate = next(i for i, line in enumerate(plan) if "One-Time Filter" in line)
    scan = next(i for i, line in enumerate(plan) if "Scan using sessions_pkey" in line)
    assert init < gate < scan, text  # the filter gates the node above the scan: the lock before the row


def test_an_append_to_a_session_with_tags_stamps_the_tags_committed_while_it_waited(pg_schema_url):
    """The statement's snapshot is taken before it waits for the lock; tags a metadata writer commits
    meanwhile are invisible to it, and are stamped anyway (agentstate_touch_tags reads after the lock)."""
    sessions = SessionStore(pg_schema_url, lock_timeout="30s")
    sessions.create("s", metadata={"team": "a"})
    done: list[object] = []
    ready, go = threading.Event(), threading.Event()

    def appender() -> None:  # its own thread, so its own connection: warmed, then the append that waits
        sessions.append("s", [U])
        sessions.append("s", [U])  # the prepared statement from here on
        ready.set()
        go.wait(30)
        done.append(sessions.append("s", [U]))

    t = threading.Thread(target=appender)
    t.start()
    assert ready.wait(30)
    holder = RawHolder(pg_schema_url, ("session", "default", "s"))
    go.set()
    holder.wait_for_a_waiter()  # the append has its snapshot and waits for the lock
    # what update_metadata does under the lock: the session row, then its tags replaced
    holder.conn.execute("UPDATE sessions SET metadata = '{\"team\": \"b\", \"env\": \"x\"}', "
                        "updated_at = '2026-01-01T00:00:00.000000Z' WHERE id = 's'")
    holder.conn.execute("DELETE FROM session_tags WHERE session_id = 's'")
    holder.commit("INSERT INTO session_tags (tenant, session_id, key, value, updated_at) VALUES "
                  "('default', 's', 'team', 'b', %s), ('default', 's', 'env', 'x', %s)",
                  ("2026-01-01T00:00:00.000000Z",) * 2)
    t.join(30)
    assert [i.seq for i in done[0]] == [3]
    updated, tags = _stamps(pg_schema_url, "s")
    assert tags == {updated} and updated == done[0][0].created_at


def test_appends_with_and_without_keys_and_metadata_changes_on_one_session_stay_gapless(pg_schema_url):
    """Both paths on one session at once (keyed appends through the function, the rest through the
    statement) with metadata rewritten meanwhile: every seq once, in order, and the tags stamped like
    the session."""
    sessions = SessionStore(pg_schema_url, lock_timeout="60s")
    sessions.create("s", metadata={"n": "0"})

    def writer(w: int) -> None:
        store = SessionStore(pg_schema_url, lock_timeout="60s")
        try:
            for i in range(15):
                key = f"{w}-{i}" if w % 2 else None
                store.append("s", [U, U] if i % 3 == 0 else [U], idempotency_key=key)
                if w == 0 and i % 4 == 0:
                    store.update_metadata("s", {"n": str(i), "w": str(w)})
        finally:
            store.close()

    all_at_once(writer, 6)
    items = sessions.items("s")
    assert [i.seq for i in items] == list(range(1, 6 * 20 + 1))  # 5 of every 15 appends add two items
    info = sessions.get("s")
    assert info.item_count == 120
    updated, tags = _stamps(pg_schema_url, "s")
    assert updated == info.updated_at and tags == {updated}


def test_when_the_statement_writes_nothing_the_function_decides(pg_schema_url):
    """A missing session, a failed expectation, a session with a time to live: the statement writes
    nothing and the function's outcome is the answer, as before."""
    sessions = SessionStore(pg_schema_url)
    assert [i.seq for i in sessions.append("new", [U, U])] == [1, 2]  # created by the function
    with pytest.raises(NotFound):
        sessions.append("absent", [U], create=False)
    with pytest.raises(ConflictError):
        sessions.append("new", [U], expect_seq=1)
    with pytest.raises(ConflictError):
        sessions.append("new", [U], expect_version=sessions.get("new").version - 1)
    assert [i.seq for i in sessions.append("new", [U], expect_seq=2)] == [3]
    sessions.create("ttl", ttl="1h")
    before = sessions.get("ttl").expires_at
    assert [i.seq for i in SessionStore(pg_schema_url).append("ttl", [U])] == [1]  # the general path
    after = sessions.get("ttl")
    assert after.item_count == 1 and after.expires_at == before
    assert [s.id for s in sessions.list().items] == ["ttl", "new"]
    assert sessions.get("new").item_count == 3


def test_a_session_with_a_time_to_live_goes_to_the_general_path_at_once_until_it_has_none(pg_schema_url, monkeypatch):
    """The one-round-trip path writes nothing for a session with a time to live; the store then sends that
    session's appends to the general path directly (not two statements first that write nothing), until
    the general path finds it without one (here: deleted and created again without one by another store)."""
    from agentstate.sessions import pg_append
    from agentstate.sessions import store as store_module

    sessions = SessionStore(pg_schema_url)
    sessions.create("t", ttl="1h")
    calls: list[str] = []

    def spy(store, db, sid, *args, **kw):
        calls.append(sid)
        return pg_append.append(store, db, sid, *args, **kw)

    monkeypatch.setattr(store_module, "_pg_append", spy)
    assert [i.seq for i in sessions.append("t", [U])] == [1]
    assert [i.seq for i in sessions.append("t", [U])] == [2] and calls == ["t"]  # the second: general path
    other = SessionStore(pg_schema_url)
    other.delete("t")
    other.create("t")  # no time to live now
    assert [i.seq for i in sessions.append("t", [U])] == [1] and calls == ["t"]  # general path: finds none
    assert [i.seq for i in sessions.append("t", [U])] == [2] and calls == ["t", "t"]  # one round trip again
    assert sessions.get("t").expires_at is None and sessions.get("t").item_count == 2


def test_a_session_new_to_the_store_is_appended_by_the_function_then_by_the_statement(pg_schema_url, monkeypatch):
    """A session this store has not seen: the function alone (one round trip, as it creates one if
    missing); once it answered, the statement; a session deleted meanwhile by another store: the statement
    writes nothing and the function creates it again."""
    sessions = SessionStore(pg_schema_url)
    sent: list[object] = []
    real = sessions.db.call

    def call(operation, lock, stmt, params, lock_timeout=None):
        sent.append(stmt)
        return real(operation, lock, stmt, params, lock_timeout)

    monkeypatch.setattr(sessions.db, "call", call)
    assert [i.seq for i in sessions.append("n", [U])] == [1] and sent == [q.PG_APPEND]
    assert [i.seq for i in sessions.append("n", [U, U])] == [2, 3] and sent[1:] == [q.PG_APPEND_FAST]
    assert [i.seq for i in sessions.append("n", [U])] == [4] and sent[2:] == [q.PG_APPEND_FAST_ONE]
    SessionStore(pg_schema_url).delete("n")
    assert [i.seq for i in sessions.append("n", [U])] == [1] and sent[3:] == [q.PG_APPEND_FAST_ONE, q.PG_APPEND]
    assert [i.seq for i in sessions.append("n", [U])] == [2] and sent[5:] == [q.PG_APPEND_FAST_ONE]
    assert sessions.get("n").item_count == 2
