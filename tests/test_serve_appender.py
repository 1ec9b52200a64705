"""The append route's writer thread (agentstate.serve.appender) and the group-commit block it uses
(agentstate.sql.group.batch): many calls, one transaction, each call its own outcome, answered only once
durable; a batch-wide failure reaches every call and writes nothing.

Counted, not timed: transactions committed (agentstate.sql.stats) against the calls. A batch is made
deterministic by holding the store's writer lock from the test while calls queue up.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentstate import NotFound, SessionStore
from agentstate.errors import InvalidInput, StateLocked, StorageError
from agentstate.serve.appender import Appender
from agentstate.sql import group, stats
from tests.serve_proc import ServeProc, store_bytes

MSG = {"role": "user", "content": "hello"}


def _committed_items(d: Path, sid: str) -> list[str]:
    """The contents stored for ``sid``, read through a connection of its own (committed rows only)."""
    conn = sqlite3.connect(f"file:{d / 'agentstate.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT data FROM session_items WHERE session_id = ? ORDER BY seq", (sid,))]
    finally:
        conn.close()


def test_a_batch_block_is_one_transaction_and_each_call_has_its_own_outcome(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    store.append("a", [{"type": "first"}])
    store.append("b", [{"type": "first"}])
    stats.reset()
    with group.batch(store.db, "sessions append") as b:
        got_a = store.append("a", [MSG], create=False)
        with pytest.raises(NotFound):
            store.append("nobody", [MSG], create=False)  # its own error: its statements rolled back
        with pytest.raises(InvalidInput):
            store.append("a", [{"role": "user", "content": ""}], create=False)  # refused before any statement
        got_b = store.append("b", [MSG, MSG], create=False)
        assert [it.seq for it in got_a] == [2] and [it.seq for it in got_b] == [2, 3]
        assert len(_committed_items(tmp_path, "a")) == 1  # returned, not yet committed
        assert b.calls == 3 and b.broken is None
    snap = stats.snapshot()
    assert snap["write_transactions"] == 1 and snap["last_batch"] == 3
    assert [it.data.get("content") for it in store.items("a")] == [None, "hello"]
    assert [it.seq for it in store.items("b")] == [1, 2, 3]
    assert store.list(10).total == 2  # "nobody" was not created
    with pytest.raises(RuntimeError, match="do not nest"), group.batch(store.db, "x"), group.batch(store.db, "y"):
        pass
    store.append("c", [MSG])  # outside a block: a call commits on its own again
    assert len(_committed_items(tmp_path, "c")) == 1


def test_a_call_that_takes_the_transaction_breaks_the_batch_and_nothing_commits(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    store.append("a", [{"type": "first"}])
    before = store_bytes(tmp_path)

    def lost(tx: Any) -> None:  # as SQLite does on a disk-full or I/O error: the whole transaction rolled back
        tx._conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(StorageError), group.batch(store.db, "sessions append") as b:
        store.append("a", [MSG], create=False)
        with pytest.raises(sqlite3.OperationalError):
            store.db.grouped("sessions append", lost)
        assert b.broken is not None
        with pytest.raises(sqlite3.OperationalError):
            store.append("a", [MSG], create=False)  # the transaction is gone: no further call runs
    assert store_bytes(tmp_path) == before
    assert [it.seq for it in store.append("a", [MSG])] == [2]  # the store writes on afterwards


def _appends(appender: Appender, calls: list[tuple[Any, str, list[Any]]]) -> list[Any]:
    async def main() -> list[Any]:
        return await asyncio.gather(*(appender.append(*c) for c in calls), return_exceptions=True)

    return asyncio.run(main())


def test_the_appender_groups_calls_and_answers_each_with_its_own_outcome(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    for sid in ("a", "b"):
        store.append(sid, [{"type": "first"}])
    appender = Appender(store.db, None)
    stats.reset()
    held = open(tmp_path / "agentstate.db.lock", "r+b")
    fcntl.flock(held, fcntl.LOCK_EX)  # the calls queue while the lock is held
    threading.Timer(0.3, held.close).start()
    calls = [(store, "a" if i % 2 else "b", [{"role": "user", "content": f"m{i}"}]) for i in range(20)]
    calls.insert(7, (store, "nobody", [MSG]))
    out = _appends(appender, calls)
    appender.close()
    assert isinstance(out[7], NotFound)
    ok = [o for o in out if not isinstance(o, BaseException)]
    assert len(ok) == 20
    assert stats.snapshot()["write_transactions"] <= 2  # the first call alone at most, then all the others
    for sid, parity in (("a", 1), ("b", 0)):
        contents = [it.data.get("content") for it in store.items(sid)][1:]
        assert contents == [f"m{i}" for i in range(20) if i % 2 == parity]  # in the order they were queued
    assert not appender._thread.is_alive()


def test_a_lock_not_acquired_in_time_is_every_calls_error_and_nothing_is_written(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    store.append("a", [{"type": "first"}])
    before = store_bytes(tmp_path)
    appender = Appender(store.db, 0.2)
    with open(tmp_path / "agentstate.db.lock", "r+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = _appends(appender, [(store, "a", [MSG])] * 5)
    assert all(isinstance(o, StateLocked) for o in out), out
    assert len({id(o) for o in out}) == 5  # each call its own copy of the error
    assert store_bytes(tmp_path) == before
    out = _appends(appender, [(store, "a", [MSG])] * 3)  # the thread goes on once the lock is free
    assert sorted(o[0].seq for o in out) == [2, 3, 4]
    appender.close()


def test_concurrent_appends_over_http_share_transactions_and_a_bad_one_fails_alone(tmp_path: Path) -> None:
    srv = ServeProc(tmp_path).start()
    try:
        with srv.client() as http:
            convs = [http.post("/v1/conversations", json={}).json()["id"] for _ in range(8)]
        results: dict[int, Any] = {}

        def client(k: int) -> None:
            with srv.client() as http:
                path = f"/v1/conversations/{convs[k % 8] if k != 5 else 'conv_missing'}/items"
                results[k] = [http.post(path, json={"items": [{"role": "user", "content": f"{k}-{j}"}]}).status_code
                              for j in range(10)]

        before = _metrics(srv)
        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        after = _metrics(srv)
        assert results[5] == [404] * 10
        assert all(codes == [200] * 10 for k, codes in results.items() if k != 5), results
        appends = after["agentstate_appends_total"] - before["agentstate_appends_total"]
        writes = after["agentstate_write_transactions_total"] - before["agentstate_write_transactions_total"]
        assert appends == 150 and writes < appends
        with srv.client() as http:
            for c, conv in enumerate(convs):
                data = http.get(f"/v1/conversations/{conv}/items", params={"limit": 100, "order": "asc"}).json()
                got = [it["content"] for it in data["data"]]
                writers = [k for k in range(16) if k % 8 == c and k != 5]
                assert sorted(got) == sorted(f"{k}-{j}" for k in writers for j in range(10))
                for k in writers:  # each client's appends in its order
                    assert [x for x in got if x.startswith(f"{k}-")] == [f"{k}-{j}" for j in range(10)]
    finally:
        assert srv.stop() == 0
    assert "Traceback" not in srv.log.read_text()


def _metrics(srv: ServeProc) -> dict[str, float]:
    text = httpx.get(srv.url + "/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("agentstate_") and " " in line and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_the_writer_thread_ends_with_the_server(tmp_path: Path) -> None:
    """SIGTERM after appends: drained, exit 0, and the appends are there for the next process."""
    srv = ServeProc(tmp_path).start()
    with srv.client() as http:
        conv = http.post("/v1/conversations", json={}).json()["id"]
        for _ in range(3):
            assert http.post(f"/v1/conversations/{conv}/items", json={"items": [MSG]}).status_code == 200
    t0 = time.monotonic()
    assert srv.stop() == 0 and time.monotonic() - t0 < 10
    with SessionStore(srv.store, tenant="alice") as s:
        assert len(s.items(conv)) == 3
    assert os.path.exists(srv.store / "agentstate.db")


def _raw(srv: ServeProc, head: str, chunks: list[bytes]) -> tuple[int, dict[str, Any]]:
    """One request over a raw socket (``head`` without its blank line; ``chunks`` sent chunked, each in
    its own write; a server that answers early may stop reading); the status and the JSON body."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        try:
            s.sendall(head.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            for c in chunks:
                s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
                time.sleep(0.01)
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # answered (and closed) before the whole body was sent
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head_bytes.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += s.recv(65536)
    return int(head_bytes.split(b" ", 2)[1]), json.loads(body)


def test_the_append_route_reads_a_chunked_body_under_its_limit(tmp_path: Path) -> None:
    srv = ServeProc(tmp_path, extra=["--max-body-bytes", "4096"]).start()
    try:
        with srv.client() as http:
            conv = http.post("/v1/conversations", json={}).json()["id"]
        before = store_bytes(srv.store)
        path = f"/v1/conversations/{conv}/items"
        token = srv.token("alice")
        # a repeated Authorization header: the first one counts (as Starlette's Headers.get reads it)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer nonsense"
        body = b'{"items": [{"role": "user", "content": "in three chunks"}]}'
        status, out = _raw(srv, head, [body[:10], body[10:30], body[30:]])
        assert status == 200 and out["data"][0]["content"] == "in three chunks", out
        after = store_bytes(srv.store)
        head_bad = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nonsense\r\nAuthorization: Bearer {token}"
        status, out = _raw(srv, head_bad, [body])
        assert status == 401 and out["error"]["code"] == "invalid_token", out
        # no Content-Length to refuse early: the stream runs past the limit, 413, nothing kept or stored
        big = b'{"items": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
        status, out = _raw(srv, head, [big[i:i + 1000] for i in range(0, len(big), 1000)])
        assert status == 413 and "over the limit of 4096 bytes" in out["error"]["message"], out
        status, out = _raw(srv, head, [b'{"items": [{"role": "user", "content": "x"}], "items": []}'])
        assert status == 400 and out["error"]["type"] == "invalid_request_error", out
        assert store_bytes(srv.store) == after != before
        with srv.client() as http:
            assert http.post(path, json={"items": [MSG]}).status_code == 200  # still answering
    finally:
        assert srv.stop() == 0
