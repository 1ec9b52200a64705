"""Group commit (issue 17): a COMMIT that fails fails every call of its batch, with the same honest message.

A child process holds the database's writer lock from its main thread while four threads queue their
appends behind the first (the leader), then lets them go: one batch, one COMMIT. EIO is injected (strace)
on the first WAL sync of every thread (``when=`` counts per thread): only the leader syncs, and its
second sync, the no-op commit that writes over the failed one's frames, succeeds. Every call must report
the same "nothing was changed" error, nothing of theirs may be read, by that process or a new one, and the
next append takes the next seq.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agentstate_integration import parse_strace, run_strace
from procs import integrity

from agentstate import SessionStore

CHILD = r"""
import json, os, sys, threading, time
from agentstate import SessionStore, StorageError
from agentstate.sql import group, stats
from agentstate.state.lock import Lock
d = sys.argv[1]
s = SessionStore(d)
path = os.path.join(d, "agentstate.db")
lk = Lock(path + ".lock")
lk.acquire(5, "test")
out = {}

def call(i):
    try:
        s.append(f"s{i % 2}", [{"type": "doomed", "i": i}, {"type": "doomed2", "i": i}])
        out[i] = "appended"
    except StorageError as e:
        out[i] = e.message

ts = [threading.Thread(target=call, args=(i,)) for i in range(4)]
ts[0].start()
while not any(len(g.queue) == 1 for g in group._groups.values()):
    time.sleep(0.001)
for t in ts[1:]:
    t.start()
while not any(len(g.queue) == 4 for g in group._groups.values()):
    time.sleep(0.001)
lk.release()
for t in ts:
    t.join()
report = {"calls": [out[i] for i in range(4)], "stats": stats.snapshot(),
          "same": {sid: [i.data["type"] for i in s.items(sid)] for sid in ("s0", "s1")}}
print(json.dumps(report), flush=True)
os._exit(0)  # no close: its checkpoint would be another thread's first sync
"""


def test_a_failed_commit_fails_the_whole_batch_alike(tmp_path: Path) -> None:
    d = tmp_path / "store"
    with SessionStore(str(d)) as s:  # closed: the child's connection is then the only one
        s.append("s0", [{"type": "zero"}])
        s.append("s1", [{"type": "zero"}])
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    trace = tmp_path / "trace.txt"
    r = run_strace([sys.executable, str(child), str(d)], trace, trace="fsync,fdatasync",
                   inject=["fdatasync:error=EIO:when=1"])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    injected = [c for c in parse_strace(trace.read_text()) if c.injected]
    assert len(injected) == 1 and "agentstate.db-wal" in injected[0].line, [c.line for c in injected]
    report = json.loads(r.stdout.splitlines()[-1])
    calls = report["calls"]
    assert len(set(calls)) == 1, calls  # the same outcome for every call of the batch
    assert calls[0].endswith("nothing was changed") and "I/O error" in calls[0], calls
    assert report["stats"]["write_transactions"] == 0 and report["stats"]["appends"] == 0, report["stats"]
    assert report["same"] == {"s0": ["zero"], "s1": ["zero"]}, report
    assert integrity(d) == ["ok"]
    with SessionStore(str(d)) as s:  # a new process's view, then the next seq, no gap
        assert [i.data["type"] for i in s.items("s0")] == ["zero"]
        s.append("s0", [{"type": "next"}])
        assert [i.seq for i in s.items("s0")] == [1, 2]


WAITER = r"""
import json, os, signal, sys, threading, time
from agentstate import SessionStore
from agentstate.errors import Interrupted
from agentstate.sql import group
from agentstate.state import signals
from agentstate.state.lock import Lock
signals.install()  # as the CLI does: a signal anywhere becomes an Interruption
d = sys.argv[1]
s = SessionStore(d)
lk = Lock(os.path.join(d, "agentstate.db") + ".lock")
lk.acquire(5, "test")
out = {}

def leader():
    out["leader"] = [i.seq for i in s.append("a", [{"type": "leader"}])]

def queued(n):
    while not any(len(g.queue) == n for g in group._groups.values()):
        time.sleep(0.001)

def interrupt_then_release():
    queued(2)  # the main thread is queued behind the leader (waiting, or about to: both leave the same way)
    os.kill(os.getpid(), signal.SIGTERM)
    queued(1)  # it left the queue
    lk.release()

t = threading.Thread(target=leader)
t.start()
queued(1)
h = threading.Thread(target=interrupt_then_release)
h.start()
try:
    s.append("b", [{"type": "main"}])
    out["main"] = "appended"
except Interrupted as e:
    out["main"] = {"outcome": e.outcome, "message": e.message, "exit": e.exit_code}
t.join()
h.join()
out["b"] = [i.data["type"] for i in s.items("b")] if s.list().total > 1 else []
print(json.dumps(out), flush=True)
"""


def test_a_waiting_call_interrupted_leaves_the_queue_and_writes_nothing(tmp_path: Path) -> None:
    import subprocess

    d = tmp_path / "store"
    with SessionStore(str(d)) as s:
        s.append("a", [{"type": "zero"}])
    child = tmp_path / "waiter.py"
    child.write_text(WAITER)
    r = subprocess.run([sys.executable, str(child), str(d)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["leader"] == [2]  # the leader's batch went on without it
    main = out["main"]
    assert main["outcome"] == "abandoned" and main["exit"] == 143, main
    assert "SIGTERM" in main["message"] and "the lock was not acquired" in main["message"], main
    assert out["b"] == []
    with SessionStore(str(d)) as s:
        assert [i.data["type"] for i in s.items("a")] == ["zero", "leader"]
        assert s.list().total == 1
