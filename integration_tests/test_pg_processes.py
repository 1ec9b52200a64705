"""PostgreSQL backend with real processes and a real server: contention, kills, cut connections,
a server stopped and started under a running writer (the suite's server, tests/pgserver.py)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from agentstate import SessionStore, StateLocked, StateStore
from agentstate.sql.pg import split_url
from agentstate.sql.schema import SCHEMA_VERSION

WORKER = str(Path(__file__).with_name("pg_worker.py"))
SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1)


def read_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from worker within {timeout}s"
    line = proc.stdout.readline()
    assert line, f"worker ended: {proc.stderr.read() if proc.poll() is not None else ''}"
    return line.strip()


def finish(procs: list[subprocess.Popen], timeout: float = 120.0) -> None:
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        assert out.strip().endswith("done"), (out, err)


def test_ten_processes_times_twenty_increments_are_exact(pg_schema_url):
    n, k = 10, 40 if SLOW else 20
    with StateStore(pg_schema_url).transaction():  # the schema exists before the race (tested below)
        pass
    procs = [spawn("incr", pg_schema_url, str(k)) for _ in range(n)]
    finish(procs)
    state = StateStore(pg_schema_url).read()
    assert state.resources["counter"] == n * k
    assert state.serial == n * k


def test_first_use_by_many_processes_migrates_once(pg_schema_url):
    procs = [spawn("incr", pg_schema_url, "1") for _ in range(8)]  # a fresh schema: all race to create it
    finish(procs)
    assert StateStore(pg_schema_url).read().resources["counter"] == 8
    conninfo, schema = split_url(pg_schema_url)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_migrations').fetchall()
    assert sorted(rows) == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each applied once


def test_thirty_processes_appending_to_one_session_gapless(pg_schema_url):
    n, k = 30, 10 if SLOW else 5
    SessionStore(pg_schema_url).create(session_id="shared")
    procs = [spawn("append", pg_schema_url, "shared", str(k), f"p{i}") for i in range(n)]
    finish(procs)
    items = SessionStore(pg_schema_url).items("shared")
    assert [it.seq for it in items] == list(range(1, n * k + 1))
    for i in range(n):  # every process's items landed, in its own order
        mine = [int(it.data["content"].split()[1]) for it in items if it.data["content"].split()[0] == f"p{i}"]
        assert mine == list(range(k))


def test_a_sigkilled_holder_frees_the_lock_within_seconds(pg_schema_url):
    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        st.resources["counter"] = 1
    holder = spawn("hold", pg_schema_url)
    try:
        lock_id = read_line(holder).split()[1]
        with pytest.raises(StateLocked) as ei:
            with store.transaction(lock_timeout=0.2):
                pass
        assert ei.value.holder["lock_id"] == lock_id and ei.value.holder["pid"] == holder.pid
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        t0 = time.monotonic()
        with store.transaction(lock_timeout=10) as st:
            waited = time.monotonic() - t0
            assert "held" not in st.resources  # the killed holder's change died with it
            st.resources["counter"] += 1
        assert waited < 5.0
        assert store.read().resources == {"counter": 2}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_holder_whose_connection_is_cut_loses_nothing_committed(pg_schema_url):
    store = StateStore(pg_schema_url)
    finish([spawn("incr", pg_schema_url, "5")])  # committed by another process
    holder = spawn("hold", pg_schema_url)
    try:
        lock_id = read_line(holder).split()[1]
        ended = store.force_unlock(lock_id)  # pg_terminate_backend of the holder's session
        assert ended["pid"] == holder.pid
        with store.transaction(lock_timeout=5) as st:
            assert st.resources == {"counter": 5}  # committed work kept, the cut holder's change gone
            st.resources["counter"] += 1
        # The holder still sleeps: its next use of the connection would fail, its work is gone.
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    got = store.read()
    assert got.resources == {"counter": 6} and got.serial == 6


def test_server_stopped_and_started_mid_run(pg_server, pg_schema_url):
    """A writer loops while the server stops: it gets one clear error per attempt (exit 1, nothing
    half-written), then goes on by itself once the server is back. Every acknowledged commit survives."""
    writer = spawn("loop", pg_schema_url)
    lines: list[str] = []
    try:
        assert read_line(writer).startswith("ready")
        while len([x for x in lines if x.startswith("ok")]) < 20:
            lines.append(read_line(writer))
        pg_server.stop("fast")
        try:
            deadline = time.monotonic() + 20
            while not any(x.startswith("err") for x in lines):
                assert time.monotonic() < deadline, "no error while the server was down"
                lines.append(read_line(writer))
            time.sleep(0.5)
        finally:
            pg_server.start()
        errors_seen = len(lines)
        deadline = time.monotonic() + 30
        while not (len(lines) > errors_seen and lines[-1].startswith("ok")
                   and sum(1 for x in lines[errors_seen:] if x.startswith("ok")) >= 10):
            assert time.monotonic() < deadline, f"the writer did not recover: {lines[-5:]}"
            lines.append(read_line(writer))
    finally:
        writer.kill()
        writer.wait()
    lines += [x.strip() for x in writer.stdout.read().splitlines()]  # what it acknowledged before the kill
    errors = [x for x in lines if x.startswith("err")]
    assert errors
    for e in errors:
        code, message = e.split(" ", 2)[1:]
        assert code == "1", e  # server trouble is an ordinary error
        assert "\n" not in message and "Traceback" not in message
        assert "PostgreSQL" in message and ("retry" in message or "check" in message), e
    acked = [int(x.split()[1]) for x in lines if x.startswith("ok")]
    assert acked == sorted(acked) and len(set(acked)) == len(acked)
    final = StateStore(pg_schema_url).read().resources["counter"]
    unknown = sum(1 for e in errors if "may or may not" in e)  # lost during COMMIT: outcome unknown
    assert acked[-1] <= final <= acked[-1] + 1 + unknown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_cancelled_cli_waiting_for_the_lock_exits_with_one_line(pg_schema_url, sig):
    """A CI job cancelled while its command waits for the PostgreSQL lock: 143 (SIGTERM) or 130
    (SIGINT), one line, nothing written; the holder goes on unharmed."""
    cli = str(Path(sys.executable).parent / "agentstate")
    holder = spawn("hold", pg_schema_url)
    try:
        read_line(holder)
        p = subprocess.Popen([cli, "apply", "--set", "a=1", "--url", pg_schema_url, "--lock-timeout", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not StateStore(pg_schema_url).lock_status()["held"] or not _waiting(pg_schema_url):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 128 + sig, err
        assert err.count("\n") == 1 and err.startswith("error: interrupted") and "unchanged" in err
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    assert StateStore(pg_schema_url).read().resources == {}


def _waiting(url: str) -> bool:
    """A backend of this database waits for an advisory lock."""
    conninfo, _ = split_url(url)
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                            ).fetchone()[0] > 0


def test_100_processes_append_to_one_session_gapless(pg_schema_url):
    """Issue 17: with per-session locks and one-statement appends, 100 processes appending to one session at
    once still get seqs 1..1000 with no gap, each process's items in its own order."""
    from pathlib import Path

    from agentstate_integration import PYTHON
    from procs import run_burst

    appender = str(Path(__file__).with_name("session_appender.py"))
    writers, per = 100, 10
    run_burst([[PYTHON, appender, "burst", pg_schema_url, "s", f"w{w}", str(per)] for w in range(writers)])
    store = SessionStore(pg_schema_url)
    items = store.items("s")
    assert [i.seq for i in items] == list(range(1, writers * per + 1))
    assert store.get("s").item_count == writers * per
    for w in range(writers):
        assert [it.data["i"] for it in items if it.data["writer"] == f"w{w}"] == list(range(per))
    assert len({i.id for i in items}) == len(items)
    store.close()
