"""`agentstate serve`'s append route as a process: its one writer thread commits appends in groups
(agentstate.serve.appender). A failed sync of a batch's COMMIT (EIO injected by strace on the WAL's
fdatasync, which a write makes after its COMMIT and the lock's release) gives every append of the batch the
same "outcome unknown" answer, never a success, and leaves the server answering; SIGTERM while clients append
drains them: every acknowledged append is there afterwards, and the exit is 0."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentstate_integration import STRACE, parse_strace
from procs import integrity

from agentstate import SessionStore
from tests import serve_proc
from tests.serve_proc import ServeProc


def _child_pid(pid: int) -> int:
    """The server under strace (strace's one child)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise AssertionError("strace started no server")


def test_a_failed_sync_fails_every_append_of_its_batch_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    convs = [f"conv_{k}" for k in range(6)]
    with SessionStore(str(store), tenant="alice") as s:  # closed: the server's connection is then the only one
        for c in convs:
            s.append(c, [{"role": "user", "content": "zero"}])
    trace = tmp_path / "trace.txt"
    # strace counts per thread. The writer thread's first commit (the warm-up) syncs the new WAL's header,
    # the store's directory and the WAL (1-3); then each commit syncs the WAL once, after it: the append
    # that waits for the lock alone is 4, the batch of five queued behind it 5 (EIO).
    monkeypatch.setattr(serve_proc, "CLI", [STRACE, "-f", "-qq", "-y", "-o", str(trace), "--seccomp-bpf",
                                            "-e", "trace=fsync,fdatasync", "-e", "inject=fdatasync:error=EIO:when=5",
                                            sys.executable, "-m", "agentstate"])
    srv = ServeProc(tmp_path, store=store).start()
    server = _child_pid(srv.proc.pid)
    out: dict[int, httpx.Response] = {}

    def append(k: int) -> None:
        with srv.client() as http:
            out[k] = http.post(f"/v1/conversations/{convs[k]}/items",
                               json={"items": [{"role": "user", "content": f"doomed {k}"},
                                               {"role": "user", "content": f"doomed {k} too"}]})

    with srv.client() as http:  # the warm-up
        assert http.post(f"/v1/conversations/{convs[0]}/items", json={"items": [{"role": "user", "content": "warm"}]}
                         ).status_code == 200
    held = open(store / "agentstate.db.lock", "r+b")
    fcntl.flock(held, fcntl.LOCK_EX)  # the writer thread waits for the lock with the first append...
    first = threading.Thread(target=append, args=(0,))
    first.start()
    time.sleep(0.5)
    rest = [threading.Thread(target=append, args=(k,)) for k in range(1, 6)]  # ...while these five queue
    for t in rest:
        t.start()
    time.sleep(0.5)
    held.close()
    for t in [first, *rest]:
        t.join(30)
    try:
        assert out[0].status_code == 200, out[0].text  # its own batch, sync 4
        failed = [out[k] for k in range(1, 6)]  # one batch, sync 5: EIO
        assert [r.status_code for r in failed] == [503] * 5, [r.text for r in failed]
        messages = {r.json()["error"]["message"] for r in failed}
        assert len(messages) == 1, messages
        message = messages.pop()
        assert "cannot confirm this request's outcome" in message and "nothing was changed" not in message, message
        with srv.client() as http:  # the server goes on: the next append commits
            after = http.post(f"/v1/conversations/{convs[1]}/items", json={"items": [{"role": "user", "content": "next"}]})
            assert after.status_code == 200 and after.json()["data"][0]["content"] == "next"
            for k, c in enumerate(convs):
                got = [it["content"] for it in
                       http.get(f"/v1/conversations/{c}/items", params={"order": "asc"}).json()["data"]]
                # the batch is committed (it failed after its COMMIT), whole and in order: an unknown outcome
                want = ["zero", "warm", "doomed 0", "doomed 0 too"] if k == 0 else ["zero", f"doomed {k}", f"doomed {k} too"]
                want += ["next"] if k == 1 else []
                assert got == want, (k, got)
    finally:
        os.kill(server, signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        srv.logf.close()
    injected = [c for c in parse_strace(trace.read_text()) if c.injected]
    assert len(injected) == 1 and "agentstate.db-wal" in injected[0].line, [c.line for c in injected]
    assert integrity(store) == ["ok"]
    with SessionStore(str(store), tenant="alice") as s:  # a new process's view: seqs go on without a gap
        assert [it.seq for it in s.items(convs[1])] == [1, 2, 3, 4]
    assert "Traceback" not in srv.log.read_text()


def test_sigterm_while_clients_append_drains_them_and_exits_0(tmp_path: Path) -> None:
    srv = ServeProc(tmp_path).start()
    with srv.client() as http:
        convs = [http.post("/v1/conversations", json={}).json()["id"] for _ in range(8)]
    acked: list[list[str]] = [[] for _ in convs]
    bad: list[Any] = []
    stop = threading.Event()

    def client(k: int) -> None:
        n = 0
        with srv.client(timeout=10.0) as http:
            while not stop.is_set():
                tag = f"c{k}-{n}"
                n += 1
                try:
                    r = http.post(f"/v1/conversations/{convs[k]}/items",
                                  json={"items": [{"role": "user", "content": tag}]})
                except httpx.HTTPError:
                    return  # the server stopped: this one was not answered
                if r.status_code != 200:
                    bad.append((r.status_code, r.text[:200]))
                    return
                acked[k].append(tag)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(convs))]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert srv.stop(signal.SIGTERM) == 0
    stop.set()
    for t in threads:
        t.join(30)
    assert not bad, bad[:3]
    assert sum(map(len, acked)) > len(convs)
    log = srv.log.read_text()
    assert "Traceback" not in log
    with SessionStore(str(srv.store), tenant="alice") as s:
        for k, c in enumerate(convs):
            stored = [it.data["content"] for it in s.items(c)]
            assert stored[:len(acked[k])] == acked[k]  # every acknowledged append, in order
            assert len(stored) - len(acked[k]) <= 1  # at most the one in flight whose answer was lost
