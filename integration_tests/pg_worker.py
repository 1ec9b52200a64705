"""A worker process for the PostgreSQL process tests (run as a subprocess; killed, cut off, restarted).

    python pg_worker.py incr URL N            N transactions, each "counter" += 1; print "done"
    python pg_worker.py append URL SID N TAG  N appends of one item {"role": "user", "content": "TAG i"}
                                              to session SID; print "done"
    python pg_worker.py hold URL              open a state transaction, set "held" = 1, print
                                              "holding <lock id>" and sleep (never commits)
    python pg_worker.py loop URL              forever: one increment of "counter" per transaction;
                                              print "ok <value>" after each commit returned, or
                                              "err <exit code> <message>" for an AgentStateError
                                              (then go on after a short pause)

Lines are written with one write(2) each, unbuffered: a printed "ok" is an acknowledged commit.
"""

from __future__ import annotations

import os
import time

from worker import main
from worker import say as _say

from agentstate import AgentStateError, SessionStore, StateStore


def incr(url: str, n: int) -> None:
    store = StateStore(url, lock_timeout=120)
    for _ in range(n):
        with store.transaction(operation="incr") as st:
            st.resources["counter"] = st.resources.get("counter", 0) + 1
    _say("done")


def append(url: str, sid: str, n: int, tag: str) -> None:
    sessions = SessionStore(url, lock_timeout=120)
    for i in range(n):
        sessions.append(sid, [{"role": "user", "content": f"{tag} {i}"}])
    _say("done")


def hold(url: str) -> None:
    store = StateStore(url, lock_timeout=30)

    def show(holder):  # never called: the lock is free when the holder starts
        pass

    with store.transaction(operation="pg-hold", on_wait=show) as st:
        st.resources["held"] = 1
        status = store.lock_status()
        _say(f"holding {status['holder']['lock_id']}")
        while True:
            time.sleep(60)


def loop(url: str) -> None:
    store = StateStore(url, lock_timeout=10)
    _say(f"ready {os.getpid()}")
    while True:
        try:
            with store.transaction(operation="loop") as st:
                value = st.resources.get("counter", 0) + 1
                st.resources["counter"] = value
        except AgentStateError as e:
            _say(f"err {e.exit_code} {' '.join(str(e).split())}")
            time.sleep(0.05)
            continue
        _say(f"ok {value}")


if __name__ == "__main__":
    main(incr=lambda a: incr(a[0], int(a[1])), append=lambda a: append(a[0], a[1], int(a[2]), a[3]),
         hold=lambda a: hold(a[0]), loop=lambda a: loop(a[0]))
