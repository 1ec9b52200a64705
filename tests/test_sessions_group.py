"""Group commit (issue 17): concurrent appends of one process share one transaction (agentstate.sql.group).

Counted, not timed: the transactions committed (agentstate.sql.stats) against the appends. A batch is made
deterministic by holding the database's writer lock from the test (a second descriptor: flock excludes it
too) while the calls queue up behind their leader, then releasing it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentstate import ConflictError, NotFound, SessionStore
from agentstate.errors import Interrupted
from agentstate.sql import group, stats
from agentstate.sql.engine import Database
from agentstate.state.lock import Lock


def _queued(path: str, n: int) -> None:
    """Wait until ``n`` calls wait in the group of ``path`` (leader included)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for key, g in list(group._groups.items()):
            if key[0] == path and len(g.queue) >= n:
                return
        time.sleep(0.001)
    raise AssertionError(f"{n} calls never queued")


class Calls:
    """Run calls in threads; keep each one's result or error."""

    def __init__(self) -> None:
        self.out: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, fn: Any, *args: Any, **kw: Any) -> None:
        def run() -> None:
            try:
                self.out[name] = fn(*args, **kw)
            except BaseException as e:  # noqa: BLE001 - kept for the assertions
                self.out[name] = e

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)

    def join(self) -> dict[str, Any]:
        for t in self.threads:
            t.join(60)
        return self.out


def test_threads_share_transactions_and_every_call_is_whole(tmp_path: Path) -> None:
    d = str(tmp_path)
    SessionStore(d).append("warm", [{"type": "x"}])
    stats.reset()
    threads, calls, k = 10, 20, 3

    def worker(w: int) -> None:
        store = SessionStore(d)  # a store each: grouping is per database file, across stores
        for c in range(calls):
            store.append(f"s{w % 3}", [{"type": "note", "w": w, "c": c, "i": i} for i in range(k)])
        store.close()

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    snap = stats.snapshot()
    assert snap["appends"] == threads * calls
    assert snap["batched_calls"] == threads * calls
    assert snap["write_transactions"] == snap["batches"] < threads * calls  # some calls shared a COMMIT
    seen = set()
    with SessionStore(d) as s:
        for sid in ("s0", "s1", "s2"):
            items = s.items(sid)
            assert [it.seq for it in items] == list(range(1, len(items) + 1))  # gapless
            for j in range(0, len(items), k):  # each call's k items contiguous, in order
                group_ = [it.data for it in items[j:j + k]]
                assert [g["i"] for g in group_] == list(range(k))
                assert len({(g["w"], g["c"]) for g in group_}) == 1
                seen.add((group_[0]["w"], group_[0]["c"]))
    assert seen == {(w, c) for w in range(threads) for c in range(calls)}


def test_a_failing_call_in_a_batch_fails_alone(tmp_path: Path) -> None:
    d = str(tmp_path)
    store = SessionStore(d)
    store.append("a", [{"type": "first"}])  # at seq 1
    store.append("k", [{"type": "keyed"}], idempotency_key="key-1")
    db_path = os.path.join(d, "agentstate.db")
    lk = Lock(db_path + ".lock")
    lk.acquire(5, "test")
    stats.reset()
    calls = Calls()
    try:
        calls.start("leader", store.append, "a", [{"type": "lead"}])
        _queued(db_path, 1)
        calls.start("conflict", store.append, "a", [{"type": "never"}], expect_seq=0)
        calls.start("missing", store.append, "nobody", [{"type": "never"}], create=False)
        calls.start("ok", store.append, "b", [{"type": "b1"}, {"type": "b2"}])
        calls.start("replay", store.append, "k", [{"type": "again"}], idempotency_key="key-1")
        calls.start("created", store.append, "c", [{"type": "c1"}], expect_seq=0)
        _queued(db_path, 6)
    finally:
        lk.release()
    out = calls.join()
    assert isinstance(out["conflict"], ConflictError)
    assert isinstance(out["missing"], NotFound)
    assert [i.data["type"] for i in out["leader"]] == ["lead"]
    assert [(i.seq, i.data["type"]) for i in out["ok"]] == [(1, "b1"), (2, "b2")]
    assert [i.data["type"] for i in out["replay"]] == ["keyed"]
    assert [(i.seq, i.data["type"]) for i in out["created"]] == [(1, "c1")]
    snap = stats.snapshot()
    assert snap["write_transactions"] == 1 and snap["last_batch"] == 6
    assert snap["appends"] == 3  # leader, ok, created (a replay stores nothing)
    assert [i.data["type"] for i in store.items("a")] == ["first", "lead"]
    assert [i.data["type"] for i in store.items("b")] == ["b1", "b2"]
    assert [i.data["type"] for i in store.items("k")] == ["keyed"]
    with pytest.raises(NotFound):
        store.get("nobody")
    store.close()


def test_a_lock_timeout_reaches_the_whole_batch(tmp_path: Path) -> None:
    d = str(tmp_path)
    store = SessionStore(d, lock_timeout=0.3)
    store.append("a", [{"type": "first"}])
    db_path = os.path.join(d, "agentstate.db")
    lk = Lock(db_path + ".lock")
    lk.acquire(5, "test")
    calls = Calls()
    try:
        calls.start("one", store.append, "a", [{"type": "x"}])
        _queued(db_path, 1)
        calls.start("two", store.append, "b", [{"type": "y"}])
        out = calls.join()
    finally:
        lk.release()
    from agentstate import StateLocked

    assert isinstance(out["one"], StateLocked) and isinstance(out["two"], StateLocked)
    assert [i.data["type"] for i in store.items("a")] == ["first"]
    assert store.append("b", [{"type": "z"}])[0].seq == 1  # the group still works afterwards
    store.close()


def test_an_interrupted_leader_leaves_the_others_to_the_next_batch(tmp_path: Path) -> None:
    d = str(tmp_path)
    store = SessionStore(d)
    store.append("a", [{"type": "first"}])
    db = Database(d)
    db_path = db.path
    lk = Lock(db_path + ".lock")
    lk.acquire(5, "test")

    def interrupted_work(tx: Any) -> None:
        raise KeyboardInterrupt  # as a signal would, in the leader's own work

    calls = Calls()
    try:
        calls.start("leader", db.grouped, "sessions append", interrupted_work)
        _queued(db_path, 1)
        calls.start("x", store.append, "a", [{"type": "x"}])
        calls.start("y", store.append, "b", [{"type": "y"}])
        _queued(db_path, 3)
    finally:
        lk.release()
    out = calls.join()
    assert isinstance(out["leader"], Interrupted) and out["leader"].outcome == "abandoned"
    assert [i.data["type"] for i in out["x"]] == ["x"] and [i.data["type"] for i in out["y"]] == ["y"]
    assert [i.data["type"] for i in store.items("a")] == ["first", "x"]
    db.close()
    store.close()


def test_a_leader_interrupted_past_its_commit_never_runs_the_others_again(tmp_path: Path, monkeypatch) -> None:
    """A KeyboardInterrupt that reaches the leader after its COMMIT (where a signal is held, but a program's
    own exception, or a handler not agentstate's, is not): the write says "committed", and the calls of its
    batch are done, with their items stored once; run again, as calls of an abandoned batch are, they
    would be stored twice."""
    from agentstate.sql import durable

    d = str(tmp_path)
    store = SessionStore(d)
    store.append("a", [{"type": "first"}])
    db = Database(d)
    lk = Lock(db.path + ".lock")
    lk.acquire(5, "test")
    settle, cut = durable.settle, []

    def settle_then_interrupt(*args: Any, **kwargs: Any) -> None:
        settle(*args, **kwargs)
        if not cut:  # the leader's: the batch's one sync
            cut.append(True)
            raise KeyboardInterrupt

    monkeypatch.setattr(durable, "settle", settle_then_interrupt)
    calls = Calls()
    try:
        calls.start("leader", db.grouped, "sessions append", lambda tx: "leader's work")
        _queued(db.path, 1)
        calls.start("x", store.append, "a", [{"type": "x"}])
        calls.start("y", store.append, "b", [{"type": "y"}])
        _queued(db.path, 3)
    finally:
        lk.release()
    out = calls.join()
    assert cut == [True]
    assert isinstance(out["leader"], Interrupted) and out["leader"].outcome == "committed", out["leader"]
    assert [i.data["type"] for i in out["x"]] == ["x"] and [i.data["type"] for i in out["y"]] == ["y"]
    assert [i.data["type"] for i in store.items("a")] == ["first", "x"]
    assert [i.data["type"] for i in store.items("b")] == ["y"]
    db.close()
    store.close()


KILLED = r"""
import os, sys, threading
from agentstate import SessionStore
d, r = sys.argv[1], int(sys.argv[2])

def worker(w):
    store = SessionStore(d)
    b = 0
    while True:
        k = 1 + b % 4
        store.append(f"s{w % 2}", [{"r": r, "w": w, "b": b, "i": i, "of": k} for i in range(k)])
        os.write(1, f"ack {w} {b}\n".encode())
        b += 1

for w in range(6):
    threading.Thread(target=worker, args=(w,), daemon=True).start()
threading.Event().wait()
"""


def test_a_kill_during_batches_leaves_whole_calls_only(tmp_path: Path) -> None:
    """A real process, six threads appending calls of 1-4 items, SIGKILLed at a different point each round:
    every stored call is whole and contiguous, every acknowledged call is stored."""
    d = tmp_path / "store"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    acked: set[tuple[int, int, int]] = set()
    for r in range(6):
        p = subprocess.Popen([sys.executable, str(script), str(d), str(r)], stdout=subprocess.PIPE)
        assert p.stdout is not None
        for _ in range(20 + 37 * r):
            line = p.stdout.readline()
            if not line:
                break
            w, b = map(int, line.split()[1:])
            acked.add((r, w, b))
        os.kill(p.pid, signal.SIGKILL)
        rest, _ = p.communicate()
        for line in rest.splitlines():  # written before the kill: acknowledged too
            w, b = map(int, line.split()[1:])
            acked.add((r, w, b))
        assert acked <= _calls(d)
    stats_seen = _calls(d)
    assert len(stats_seen) >= len(acked) > 0


def _calls(d: Path) -> set[tuple[int, int, int]]:
    """(round, writer, batch) of every call stored; asserts each is whole and contiguous."""
    out = set()
    with SessionStore(str(d)) as s:
        for sid in ("s0", "s1"):
            try:
                items = s.items(sid)
            except NotFound:
                continue
            assert [it.seq for it in items] == list(range(1, len(items) + 1))
            j = 0
            while j < len(items):
                first = items[j].data
                k = first["of"]
                chunk = [it.data for it in items[j:j + k]]
                assert [c["i"] for c in chunk] == list(range(k)), chunk  # whole, in order, nothing between
                assert len({(c["r"], c["w"], c["b"]) for c in chunk}) == 1, chunk
                out.add((first["r"], first["w"], first["b"]))
                j += k
    return out
