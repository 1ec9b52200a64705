"""The state document's transaction on PostgreSQL in two messages through libpq (agentstate/sql/pg_state.py):
what it sends, that a signal ends a wait for the lock at once, that its lock IDs still name one
acquisition with a standing holder record, that server settings never change the bytes stored, and that
a version is durable when the call returns though its COMMIT freed the lock before the WAL flush."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from pgserver import schema_sql as sql
from state_holder import StateHolder

from agentstate import ConflictError, StateStore
from agentstate.sql import pg_state


def _sent(monkeypatch) -> list[bytes]:
    texts: list[bytes] = []
    real = pg_state._send

    def send(conn, text, **kw):
        texts.append(text)
        return real(conn, text, **kw)

    monkeypatch.setattr(pg_state, "_send", send)
    return texts


def test_a_transaction_is_two_messages_and_the_holder_record_is_published_once(pg_schema_url, monkeypatch):
    store = StateStore(pg_schema_url)
    store.read()  # connected, nothing locked
    texts = _sent(monkeypatch)
    for n in range(3):
        with store.transaction(operation="deploy") as st:
            st.resources["n"] = n
    with store.transaction(operation="deploy"):
        pass  # no change
    assert len(texts) == 8, texts
    first, later = texts[0].decode(), [t.decode() for t in texts[2::2]]
    assert "lock_holders" in first and "pg_advisory_xact_lock" in first and "state_documents" in first
    assert all("lock_holders" not in t and "pg_advisory_xact_lock" in t for t in later)  # the record stands
    saves = [t.decode() for t in texts[1::2]]
    # It commits without waiting for the WAL flush (the lock is free at once), then waits for the flush in
    # a transaction of its own, in the same message: the call returns once the version is durable.
    assert all("set_config('synchronous_commit', 'off', true)" in t for t in [first, *later])
    assert all(t.endswith("; COMMIT; SELECT setval('state_flushes', 1)") and "decode('" in t for t in saves[:3])
    assert saves[3] == "COMMIT"  # nothing changed: nothing written, no flush to wait for
    assert store.read().resources == {"n": 2} and store.read().serial == 3
    with store.transaction(operation="other") as st:  # another operation: a record of its own
        st.resources["n"] = 9
    assert "lock_holders" in texts[8].decode()


def test_lock_ids_of_one_connections_acquisitions_differ_with_a_standing_record(pg_schema_url):
    store, other = StateStore(pg_schema_url), StateStore(pg_schema_url)
    ids = []
    for _ in range(2):
        with store.transaction(operation="same") as st:
            st.resources["x"] = len(ids)
            ids.append(other.lock_status()["holder"]["lock_id"])
    assert ids[0] != ids[1], ids
    with store.transaction(operation="same"):
        assert other.lock_status()["holder"]["lock_id"] not in ids
        with pytest.raises(ConflictError):
            other.force_unlock(ids[0])  # an earlier acquisition's ID never ends this one
    assert store.read().resources == {"x": 1}
    store.close()
    other.close()


_WAITER = """
import json, sys
from agentstate import StateStore
from agentstate.errors import AgentStateError
store = StateStore(sys.argv[1], lock_timeout=60)
store.read()
print("ready", flush=True)
try:
    with store.transaction(operation="waiter") as st:
        st.resources["waiter"] = True
except AgentStateError as e:
    print(json.dumps({"error": type(e).__name__, "exit_code": e.exit_code, "message": str(e)}), flush=True)
    sys.exit(e.exit_code)
print(json.dumps({"done": True}), flush=True)
"""


def _waiting(url: str, timeout: float = 20.0) -> bool:
    """Whether a backend of this server waits for an advisory lock (the waiter's lock request)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url.split("?")[0], autocommit=True) as c:
        while time.monotonic() < deadline:
            if c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'").fetchone()[0]:
                return True
            time.sleep(0.05)
    return False


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_wait_for_the_state_lock_at_once_and_changes_nothing(pg_schema_url, signum, code):
    with StateHolder(pg_schema_url, "deploy", hold_for=30) as holder:
        waiter = subprocess.Popen([sys.executable, "-c", _WAITER, pg_schema_url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert waiter.stdout.readline().strip() == "ready"
        assert _waiting(pg_schema_url), "the waiter never waited for the lock"
        t0 = time.monotonic()
        waiter.send_signal(signum)
        out, err = waiter.communicate(timeout=20)
        assert time.monotonic() - t0 < 10, "the wait went on after the signal"
        assert waiter.returncode == code, (out, err)
        got = json.loads(out.strip().splitlines()[-1])
        assert got["error"] == "Interrupted" and got["exit_code"] == code, got
        assert "Traceback" not in err
        holder.release()
        assert holder.errors == []  # the holder was never disturbed
    assert StateStore(pg_schema_url).read().resources == {"held": True}  # nothing of the waiter's
    assert not _waiting(pg_schema_url, timeout=0.5)  # and no backend of it left waiting


def test_server_settings_never_change_the_stored_bytes(pg_schema_url):
    """bytea_output = escape and standard_conforming_strings = off (a role's or database's settings):
    the document still goes and comes back as exactly the bytes of the codec."""
    role = "r_" + uuid.uuid4().hex[:12]
    admin = psycopg.connect(pg_schema_url.split("?")[0], autocommit=True)
    admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    admin.execute(f"ALTER ROLE {role} SET bytea_output = 'escape'")
    admin.execute(f"ALTER ROLE {role} SET standard_conforming_strings = off")
    try:
        url = pg_schema_url.replace("agentstate@", f"{role}@", 1)
        value = {"quote": "it's", "backslash": "a\\b", "nul-ish": "\\x00", "unicode": "é€😀"}
        store = StateStore(url)
        with store.transaction() as st:
            st.resources.update(value)
        with store.transaction() as st:
            st.resources["again"] = 1
        assert StateStore(pg_schema_url).read().resources == {**value, "again": 1}
        data, previous = admin.execute(
            f"SELECT data, previous FROM {pg_schema_url.split('schema=')[1]}.state_documents WHERE name = 'state'"
        ).fetchone()
        from agentstate.state import codec

        assert codec.decode_document(bytes(data)).resources == {**value, "again": 1}
        assert codec.decode_document(bytes(previous)).resources == value
        store.close()
    finally:
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        admin.execute(f"DROP ROLE {role}")
        admin.close()


@pytest.mark.parametrize("size", [1_000, 200_000], ids=["hex-in-the-message", "binary-parameter"])
def test_the_previous_version_is_read_only_to_recover_and_stays_when_it_is_used(pg_schema_url, monkeypatch, size):
    """A transaction reads ``previous`` only when ``data`` does not verify; the recovery's save keeps the
    good previous version, for a document saved in the message (hex) and one too large for that (a
    binary parameter of its own statement)."""
    from backend_view import put, stored

    from agentstate.state import codec

    big = "x" * size
    put(pg_schema_url, current=b"damaged", previous=codec.encode_document(
        serial=4, lineage="l-1", updated_at="2026-01-01T00:00:00.000000Z",
        resources_bytes=codec.encode_value({"big": big})))
    texts = _sent(monkeypatch)
    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        assert st.source == "backup" and st.resources == {"big": big}
        st.resources["n"] = 1
    assert sum(b"encode(previous" in t for t in texts) == 1  # read once, to recover
    data, previous = stored(pg_schema_url)
    assert codec.decode_document(previous).serial == 4  # the good version stays
    new = codec.decode_document(data)
    assert new.resources == {"big": big, "n": 1} and new.serial == 6 and new.lineage == "l-1"
    texts.clear()
    with store.transaction() as st:
        st.resources["n"] = 2
    assert not any(b"encode(previous" in t for t in texts)  # data verifies: previous is never read
    assert (b"decode('" in texts[-1]) == (size < 65536)
    assert texts[-1].endswith(b"COMMIT; SELECT setval('state_flushes', 1)")  # saved either way: flushed
    data, previous = stored(pg_schema_url)
    assert codec.decode_document(data).resources == {"big": big, "n": 2}
    assert codec.decode_document(previous).resources == {"big": big, "n": 1}


def test_a_connection_ended_while_idle_is_replaced_before_the_next_transaction(pg_schema_url, monkeypatch):
    """The server ended the store's connection between two transactions (an idle timeout, an
    administrator): the next transaction sees it before sending anything, opens a new connection, and
    publishes its holder record again there; nothing fails and nothing is lost."""
    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        st.resources["n"] = 1
    with psycopg.connect(pg_schema_url.split("?")[0], autocommit=True) as admin:
        pid = store.connector.conn().info.backend_pid
        assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()[0]
    texts = _sent(monkeypatch)
    with store.transaction() as st:
        st.resources["n"] += 1
    assert len(texts) == 2 and b"lock_holders" in texts[0]  # a new connection: its record published first
    assert store.connector.conn().info.backend_pid != pid
    assert StateStore(pg_schema_url).read().resources == {"n": 2}


def test_an_acknowledged_transaction_survives_an_immediate_stop_of_the_server(pg_server, pg_schema_url):
    """A transaction commits without waiting for its WAL (the lock is free at once) and returns only after
    the flush that follows it: every acknowledged version survives a crash of the server (an immediate
    stop: the WAL still in the server's memory is lost), right after a burst of transactions, when the
    last commits' WAL is not yet written out by the server's own WAL writer."""
    store = StateStore(pg_schema_url)
    for round_ in range(3):
        for _ in range(40):
            with store.transaction() as st:
                st.resources["n"] = st.resources.get("n", 0) + 1
        pg_server.stop("immediate")
        pg_server.start()
        assert store.read().resources["n"] == 40 * (round_ + 1)
    store.close()


def test_a_flush_that_fails_after_the_commit_is_an_unknown_outcome_never_nothing_changed(pg_schema_url):
    """The COMMIT succeeded and the flush after it failed (here its sequence was dropped by hand): the
    version is committed, so the error says so and calls the outcome unknown; it never says that nothing
    was written. The store works again once the sequence is back."""
    from agentstate import StorageError

    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        st.resources["n"] = 1
    sql(pg_schema_url, "DROP SEQUENCE state_flushes")
    with pytest.raises(StorageError) as ei:
        with store.transaction() as st:
            st.resources["n"] = 2
    assert ei.value.details["outcome"] == "unknown" and ei.value.exit_code == 1
    assert "was committed" in ei.value.message and "state_flushes" in ei.value.message
    assert "nothing" not in str(ei.value)
    assert StateStore(pg_schema_url).read().resources == {"n": 2}  # committed, as the error said
    with store.transaction():
        pass  # no change: no flush needed, and the connection is usable
    sql(pg_schema_url, "CREATE SEQUENCE state_flushes AS BIGINT")
    with store.transaction() as st:
        st.resources["n"] = 3
    assert StateStore(pg_schema_url).read().resources == {"n": 3}
    store.close()
