"""Group commit under a storm of real signals (issue 17, with the trust issue's promise): a process whose
main thread appends in a loop while four threads append to their own sessions, and SIGINT arrives every
few milliseconds, delivered wherever the main thread happens to be: in its own loop, queued behind
another thread's batch, leading a batch, in the hand-over after it.

Library use: the program's own SIGINT handler raises; agentstate calls it (after any critical section)
instead of raising its own. Whatever the main thread was told, the threads' appends all complete (none
of them was interrupted), each stored once and in order; the main thread's are stored exactly when it was
told "appended" or "committed", never when told "abandoned"; nothing is stored twice; once the storm ends
the process appends again at once (before group.py's hand-over was re-run after a signal, one could leave
the group led by nobody and every later append waiting forever); and the program's own handlers are
in place again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentstate import SessionStore

CHILD = r"""
import json, os, signal, sys, threading, time
from agentstate import SessionStore, Interrupted

d, seconds = sys.argv[1], float(sys.argv[2])
store = SessionStore(d)
store.append("main", [{"n": -1}])  # the database exists before the storm


class Stop(KeyboardInterrupt):
    pass


armed = [False]


def on_sigint(signum, frame):  # the program's own handler: agentstate calls it instead of raising
    if armed[0]:
        raise Stop()


signal.signal(signal.SIGINT, on_sigint)
print("ready", flush=True)
end = time.monotonic() + seconds
told = {}  # n -> "appended" | "committed" | "abandoned" | "either"
done = {w: 0 for w in range(4)}
errors = []


def worker(w):
    n = 0
    while time.monotonic() < end:
        try:
            store.append(f"w{w}", [{"w": w, "n": n}])
        except BaseException as e:  # none: these calls are never interrupted
            errors.append(f"worker {w}: {e!r}")
            return
        n += 1
        done[w] = n


threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
for t in threads:
    t.start()
n = 0
while time.monotonic() < end:
    result = None
    try:
        armed[0] = True
        result = store.append("main", [{"n": n}])
        armed[0] = False
        told[n] = "appended"
    except Interrupted as e:
        armed[0] = False
        told[n] = e.details["outcome"]
    except KeyboardInterrupt:  # the program's own, outside agentstate's write, or in its own bookkeeping
        armed[0] = False
        told[n] = "appended" if result is not None else "either"
    n += 1
armed[0] = False
for t in threads:
    t.join(30)
hung = [w for w, t in enumerate(threads) if t.is_alive()]
after = threading.Thread(target=lambda: store.append("main", [{"n": "after"}]), daemon=True)
after.start()
after.join(30)
restored = signal.getsignal(signal.SIGINT) is on_sigint and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
print(json.dumps({"told": told, "done": done, "errors": errors, "hung": hung, "after_hung": after.is_alive(),
                  "handlers_restored": restored}), flush=True)
os._exit(0)
"""


def test_a_storm_of_signals_never_strands_a_group_commit_nor_misreports_an_append(tmp_path: Path) -> None:
    d = tmp_path / "store"
    child = tmp_path / "storm.py"
    child.write_text(CHILD)
    p = subprocess.Popen([sys.executable, str(child), str(d), "4"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        sent, start = 0, time.monotonic()
        rng = __import__("random").Random(17)
        while time.monotonic() - start < 3.5 and p.poll() is None:
            os.kill(p.pid, signal.SIGINT)
            sent += 1
            time.sleep(rng.uniform(0.0005, 0.004))
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the process hung after {sent} SIGINTs: an append waits for a group led by nobody")
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    report = json.loads(out.splitlines()[-1])
    assert report["errors"] == [] and report["hung"] == [], report
    assert not report["after_hung"], "after the storm the process's next append waited forever"
    assert report["handlers_restored"], "the program's own signal handlers were left replaced by agentstate's"
    told = {int(n): what for n, what in report["told"].items()}
    outcomes = set(told.values())
    assert sent > 300 and {"abandoned", "appended"} <= outcomes, (sent, outcomes)  # the storm reached both
    print({what: list(told.values()).count(what) for what in sorted(outcomes)}, "of", len(told), "appends;",
          sent, "SIGINTs")

    with SessionStore(d) as s:
        for w, n in report["done"].items():
            assert [i.data["n"] for i in s.items(f"w{w}")] == list(range(n)), f"worker {w}"
        stored = [i.data["n"] for i in s.items("main")]
    assert stored[0] == -1 and stored[-1] == "after"
    main = stored[1:-1]
    assert len(main) == len(set(main)) and main == sorted(main), "an append of the main thread stored twice"
    for n, what in told.items():
        if what in ("appended", "committed"):
            assert n in main, (n, what)
        elif what == "abandoned":
            assert n not in main, (n, what)
