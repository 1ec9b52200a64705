"""Session appenders for the integration tests (run as subprocesses; some are SIGKILLed).

    python session_appender.py burst DIR SESSION WRITER N
        print "ready", wait for one line on stdin, then append N items one append at a time,
        {"type": "note", "writer": WRITER, "i": 0..N-1}, and print "done"
    python session_appender.py forkserver DIR SESSION [--unsafe]
        import everything once and print "server-ready"; for each "go R" line on stdin fork a child
        that prints "ready R <pid>" and then appends batches forever: batch b holds k = 1 + b % 4
        items {"type": "note", "round": R, "batch": b, "i": 0..k-1, "of": k}; after each append
        returned it prints "ack R b k". When the child has died: "dead R <wait status>".
        --unsafe: append a batch one item per transaction (the kill loop's self-check must catch it).

Each acknowledgement is one write(2) made only after append() returned, so it is a committed append.
The fork server makes a kill-loop round cost a fork instead of an interpreter start; it never opens
the database itself, so no child inherits a connection.
"""

from __future__ import annotations

import os

from worker import main, say, serve, wait_for_go

from agentstate.sessions.store import SessionStore


def burst(directory: str, session: str, writer: str, n: int) -> None:
    store = SessionStore(directory)
    wait_for_go()
    for i in range(n):
        store.append(session, [{"type": "note", "writer": writer, "i": i}])
    store.close()
    say("done")


def child(directory: str, session: str, rnd: int, unsafe: bool) -> None:
    store = SessionStore(directory)
    say(f"ready {rnd} {os.getpid()}")
    b = 0
    while True:
        k = 1 + b % 4
        items = [{"type": "note", "round": rnd, "batch": b, "i": i, "of": k} for i in range(k)]
        if unsafe:  # the kill loop's self-check: one transaction per item, so a kill can split a batch
            for item in items:
                store.append(session, [item])
        else:
            store.append(session, items)
        say(f"ack {rnd} {b} {k}")
        b += 1


def forkserver(directory: str, session: str, unsafe: bool = False) -> None:
    import sqlite3  # noqa: F401  (loaded once here, so a child does not pay for it)

    import orjson  # noqa: F401

    from agentstate import sql  # noqa: F401
    from agentstate.sql import engine, q_sessions  # noqa: F401
    from agentstate.state import codec, lock, signals  # noqa: F401

    serve(lambda rnd: child(directory, session, rnd, unsafe))


if __name__ == "__main__":
    main(burst=lambda a: burst(a[0], a[1], a[2], int(a[3])),
         forkserver=lambda a: forkserver(a[0], a[1], "--unsafe" in a[2:]))
