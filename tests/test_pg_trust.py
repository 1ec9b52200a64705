"""Issue 15, the PostgreSQL items: isolation levels other than the default, a deleted state row, connections
bounded whatever the thread churn, every statement bounded (table locks held by other clients, huge
--lock-timeout), lock IDs naming one acquisition, psycopg's own warnings and a URL without a host.
(Signals after COMMIT: integration_tests/test_pg_processes.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest
from pgserver import RawHolder, schema_conn, schema_url
from pgserver import schema_sql as sql
from threads import all_at_once

from agentstate import ConflictError, ResponseStore, SessionStore, StateStore
from agentstate.sql.pg import LOCK_STATE
from agentstate.sql.pg_conn import POOL_IDLE
from agentstate.state import codec

CLI = [sys.executable, "-m", "agentstate"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**ENV, **(env or {})})


def one_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# -- item 3: a database whose default isolation is repeatable read or serializable ---------------------

@pytest.fixture(params=["repeatable read", "serializable"])
def iso_url(request, pg_server) -> str:
    name = "iso_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_isolation = '{request.param}'")
    base = pg_server.admin_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base) as conn:  # the default is in effect for new sessions
        assert conn.execute("SHOW transaction_isolation").fetchone()[0] == request.param
    return schema_url(base, "iso")


def in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_a_writer_that_waited_sees_the_previous_holders_commit_whatever_the_default_isolation(iso_url):
    store = StateStore(iso_url)
    with store.transaction() as st:
        st.resources["a"] = 0  # serial 1
    lineage = store.read().lineage
    holder = RawHolder(iso_url, LOCK_STATE)

    def expects_serial_2():
        with StateStore(iso_url).transaction(expect_serial=2, operation="after") as st:
            st.resources["b"] = 1
        return "ok"

    t, out = in_thread(expects_serial_2)
    holder.wait_for_a_waiter()  # its BEGIN has run: the commit below happens after it
    serial2 = codec.encode_document(serial=2, lineage=lineage, updated_at="2024-01-01T00:00:00Z",
                                    resources_bytes=codec.encode_value({"a": 1}))
    holder.commit("UPDATE state_documents SET previous = data, data = %s WHERE name = 'state'", (serial2,))
    t.join(30)
    assert out == ["ok"], out
    st = store.read()
    assert st.serial == 3 and st.resources == {"a": 1, "b": 1}

    # --expect-serial against the old serial is refused (as a conflict), never passed on stale data
    holder = RawHolder(iso_url, LOCK_STATE)

    def expects_serial_3():
        with StateStore(iso_url).transaction(expect_serial=3, operation="stale") as st:
            st.resources["c"] = 1
        return "ok"

    t, out = in_thread(expects_serial_3)
    holder.wait_for_a_waiter()
    serial4 = codec.encode_document(serial=4, lineage=lineage, updated_at="2024-01-01T00:00:00Z",
                                    resources_bytes=codec.encode_value({"a": 2}))
    holder.commit("UPDATE state_documents SET previous = data, data = %s WHERE name = 'state'", (serial4,))
    t.join(30)
    assert len(out) == 1 and isinstance(out[0], ConflictError), out
    assert store.read().resources == {"a": 2}


def test_save_with_previous_after_a_concurrent_commit_whatever_the_default_isolation(iso_url):
    ResponseStore(iso_url, tenant="elsewhere").save({"id": "r1", "output": []})
    holder = RawHolder(iso_url, ("response chain", "default", "r1"))  # the chain r2 names, r1's (not there yet)
    t, out = in_thread(lambda: ResponseStore(iso_url).save({"id": "r2", "previous_response_id": "r1",
                                                             "output": []}))
    holder.wait_for_a_waiter()
    # r1 appears in the default tenant, committed while the save of r2 waits for the lock
    holder.commit("UPDATE responses SET tenant = 'default' WHERE id = 'r1'")
    t.join(30)
    assert len(out) == 1 and not isinstance(out[0], BaseException), out
    assert ResponseStore(iso_url).get("r2")["previous_response_id"] == "r1"


def test_concurrent_appends_have_no_duplicate_keys_whatever_the_default_isolation(iso_url):
    SessionStore(iso_url).create("s")

    def appender(n: int) -> None:
        store = SessionStore(iso_url, lock_timeout="60s")
        for i in range(8):
            store.append("s", [{"role": "user", "content": f"{n}-{i}"}])

    all_at_once(appender, 8)
    items = SessionStore(iso_url).items("s")
    assert [i.seq for i in items] == list(range(1, 65))
    assert sorted(i.data["content"] for i in items) == sorted(f"{n}-{i}" for n in range(8) for i in range(8))


# -- item 4: a deleted state row -----------------------------------------------------------------------

def test_a_deleted_state_row_is_reported_by_doctor_and_the_next_write_is_never_lost(pg_schema_url):
    url = pg_schema_url
    assert cli("apply", "--set", "a=1", "--url", url).returncode == 0
    sql(url, "DELETE FROM state_documents")
    r = cli("doctor", "--url", url, "--json")
    assert r.returncode != 0, r.stdout
    bad = [f for f in json.loads(r.stdout)["findings"] if not f["ok"]]
    assert any("missing" in f["detail"] for f in bad), bad
    r = cli("apply", "--set", "b=2", "--url", url, "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(cli("show", "--url", url, "--json").stdout)
    assert shown["resources"] == {"b": 2} and shown["serial"] == json.loads(r.stdout)["serial"]
    assert sql(url, "SELECT count(*) FROM state_documents") == [(1,)]
    assert cli("doctor", "--url", url).returncode == 0
    assert StateStore(url).read().resources == {"b": 2}


# -- item 5: connections bounded whatever the thread churn ---------------------------------------------

def _my_connections(url: str) -> int:
    me = f"pid {os.getpid()}"
    rows = sql(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
               (f"agentstate % {me}",))
    return rows[0][0]


def test_a_thousand_short_threads_leave_the_server_connections_where_they_were(pg_schema_url):
    sessions = SessionStore(pg_schema_url)
    state = StateStore(pg_schema_url)
    sessions.create("s")
    state.read()
    before = _my_connections(pg_schema_url)
    errors: list = []

    def call(n: int) -> None:
        try:
            if n % 10 == 0:
                sessions.append("s", [{"role": "user", "content": str(n)}])
            elif n % 2:
                sessions.get("s")
            else:
                state.read()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    for start in range(0, 1000, 8):  # 1,000 threads, 8 at a time
        threads = [threading.Thread(target=call, args=(n,)) for n in range(start, start + 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    after = _my_connections(pg_schema_url)
    assert after <= before + 2 * POOL_IDLE, (before, after)  # idle ones per store at most, never one per thread
    assert sessions.get("s").item_count == 100
    sessions.close()
    state.close()


# -- item 7: every statement bounded -------------------------------------------------------------------

class TableLock:
    """Another client holding ACCESS EXCLUSIVE locks on ``tables`` in an open transaction."""

    def __init__(self, url: str, *tables: str) -> None:
        self.conn = schema_conn(url)
        self.conn.execute("BEGIN")
        for t in tables:
            self.conn.execute(f"LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE")

    def __enter__(self) -> TableLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.parametrize("table", ["state_documents", "lock_holders"])
def test_a_writer_waiting_on_a_table_lock_gives_up_after_its_lock_timeout(pg_schema_url, table):
    url = pg_schema_url
    assert cli("apply", "--set", "a=1", "--url", url).returncode == 0
    with TableLock(url, table):
        t0 = time.monotonic()
        r = cli("apply", "--set", "a=2", "--url", url, "--lock-timeout", "2s")
        took = time.monotonic() - t0
    line = one_line(r, 3)
    assert took < 15, took
    assert "lock" in line
    assert StateStore(url).read().resources == {"a": 1}


def test_readers_give_up_after_the_statement_timeout(pg_schema_url):
    url = pg_schema_url
    assert cli("apply", "--set", "a=1", "--url", url).returncode == 0
    assert cli("sessions", "create", "--id", "s1", "--url", url).returncode == 0
    with TableLock(url, "sessions", "session_items", "state_documents"):
        for args, env in ((("sessions", "list", "--url", url + "&statement_timeout=1s"), {}),
                          (("sessions", "show", "s1", "--url", url), {"AGENTSTATE_STATEMENT_TIMEOUT": "1s"}),
                          (("show", "--url", url), {"AGENTSTATE_STATEMENT_TIMEOUT": "1s"}),
                          (("doctor", "--url", url), {"AGENTSTATE_STATEMENT_TIMEOUT": "1s"})):
            t0 = time.monotonic()
            r = cli(*args, env=env)
            took = time.monotonic() - t0
            line = one_line(r, 1)
            assert took < 15 and "statement timeout" in line, (args, took, line)
    assert json.loads(cli("show", "--url", url, "--json").stdout)["resources"] == {"a": 1}


def test_a_lock_timeout_beyond_postgres_int_limit_still_writes(pg_schema_url):
    r = cli("apply", "--set", "a=1", "--url", pg_schema_url, "--lock-timeout", "30d")
    assert r.returncode == 0, r.stderr
    with SessionStore(pg_schema_url, lock_timeout="100d") as s:
        s.append("s", [{"role": "user", "content": "x"}])


# -- item 10: a lock ID names one acquisition ----------------------------------------------------------

def test_force_unlock_with_an_earlier_acquisitions_id_never_ends_a_later_one(pg_schema_url):
    store = StateStore(pg_schema_url)
    seen: list[str] = []
    phase = [threading.Event() for _ in range(4)]

    def two_transactions():  # one thread, so one connection, two acquisitions
        with store.transaction(operation="first") as st:
            st.resources["a"] = 1
            phase[0].set()
            phase[1].wait(20)
        with store.transaction(operation="second") as st:
            st.resources["b"] = 1
            phase[2].set()
            phase[3].wait(20)
        return "ok"

    t, out = in_thread(two_transactions)
    assert phase[0].wait(20)
    seen.append(store.lock_status()["holder"]["lock_id"])
    phase[1].set()
    assert phase[2].wait(20)
    now = store.lock_status()["holder"]
    assert now["operation"] == "second" and now["lock_id"] != seen[0]
    with pytest.raises(ConflictError):
        store.force_unlock(seen[0])
    phase[3].set()
    t.join(30)
    assert out == ["ok"], out
    assert store.read().resources == {"a": 1, "b": 1}


# -- bad input: psycopg's own warnings, a URL without a host -------------------------------------------

def test_psycopg_warnings_never_reach_stderr(pg_schema_url):
    """The connection ends while a pipelined write is queued (as when the server stops mid-commit):
    psycopg logs "error ignored terminating <psycopg.Pipeline [BAD] ...>" on its own logger, which
    reached stderr through logging's last-resort handler, before our one error line."""
    code = (
        "import sys, psycopg\n"
        "from agentstate import SessionStore, StorageError\n"
        "from agentstate.sql.pg import split_url\n"
        "url = sys.argv[1]\n"
        "s = SessionStore(url)\n"
        "s.append('s', [{'role': 'user', 'content': 'a'}])\n"
        "try:\n"
        "    with s.db.write('x') as tx:\n"
        "        with psycopg.connect(split_url(url)[0], autocommit=True) as c:\n"
        "            c.execute('SELECT pg_terminate_backend(%s, 5000)', (tx._conn.info.backend_pid,))\n"
        "        tx.run(\"UPDATE sessions SET title = 'x' WHERE id = 's'\")\n"
        "except StorageError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, pg_schema_url], capture_output=True, text=True, timeout=60,
                          env=ENV)
    assert proc.returncode == 0 and "connection" in proc.stdout, (proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
    code = ("import logging, agentstate.sql.pg\n"
            "logging.getLogger('psycopg').warning('error ignored terminating %r: %s', '<psycopg.Pipeline [BAD]>',"
            " 'server closed the connection unexpectedly\\n\\tThis probably means the server terminated')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("url", ["postgresql://", "postgres://", "postgresql://user@"])
def test_a_url_without_a_host_says_what_is_wrong(url):
    for args in (("show", "--url", url), ("sessions", "list", "--url", url)):
        line = one_line(cli(*args), 2)
        assert "names no host" in line and 'missing "="' not in line, line


def test_a_bad_statement_timeout_is_named(pg_schema_url):
    line = one_line(cli("show", "--url", pg_schema_url, env={"AGENTSTATE_STATEMENT_TIMEOUT": "soon"}), 2)
    assert "AGENTSTATE_STATEMENT_TIMEOUT" in line
    line = one_line(cli("show", "--url", pg_schema_url + "&statement_timeout=soon"), 2)  # a bad --url, as a bad variable
    assert "statement_timeout" in line


@pytest.mark.parametrize("nth", [1, 2, 3], ids=["while-taking-the-lock", "first-batch", "second-batch"])
def test_a_signal_while_psycopg_leaves_a_pipeline_is_reported_as_the_signal(pg_schema_url, monkeypatch, nth):
    """psycopg's pipeline, interrupted while it waits for the server, still leaves pipeline mode in a
    ``finally``; that fails ("cannot exit pipeline mode while busy") and its OperationalError replaces
    the interruption. It must come out as the signal (exit 130/143), never as "the connection was lost"
    (CI saw this once in `sessions import`), nor be swallowed by the write's reconnect-once retry and the
    import carried on. Here the interruption is raised as the ``nth`` pipeline of the import is left
    (1: the holder record, BEGIN and the session's lock; then executemany's batches)."""
    import signal

    from agentstate.errors import Interrupted
    from agentstate.state import signals

    store = SessionStore(pg_schema_url)
    store.append("warm", [{"role": "user", "content": "x"}])
    real = psycopg.Connection.wait
    left: list[int] = []

    def wait(self, gen, *args, **kwargs):
        if getattr(gen, "__name__", "") == "_exit_gen":
            left.append(1)
            if len(left) == nth:
                gen.close()
                raise signals.Interruption(signal.SIGINT)
        return real(self, gen, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "wait", wait)
    lines = [json.dumps({"role": "user", "content": f"item {n}"}) for n in range(3000)]
    with pytest.raises(Interrupted) as caught:
        store.import_lines(lines, "imp")
    assert caught.value.exit_code == 130 and caught.value.outcome == "abandoned", caught.value
    assert "lost" not in str(caught.value), caught.value
    assert len(left) == nth  # nothing went on after the signal
    monkeypatch.undo()
    assert store.list() and [s.id for s in store.list()] == ["warm"]  # nothing of the import is stored
    store.append("after", [{"role": "user", "content": "y"}])
    assert store.get("after").item_count == 1  # the store still works
