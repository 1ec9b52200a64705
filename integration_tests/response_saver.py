"""Response savers for the integration tests (run as subprocesses; some are SIGKILLed).

    python response_saver.py burst DIR WRITER N
        print "ready", wait for one line on stdin, then save a chain of N responses one save at a
        time: WRITER-0 (a root), WRITER-1 after WRITER-0, ...; print "done"
    python response_saver.py forkserver DIR CAP [--unsafe]
        import everything once and print "server-ready"; for each "go R" line on stdin fork a child
        that prints "ready R <pid>" and then saves responses forever with max_responses=CAP: R-0 (a
        root), R-1 after R-0, ...; every third save is a batch of two (save_many). After each save
        returned it prints "ack R b..." naming the responses it stored (one write). When the child has died:
        "dead R <wait status>". --unsafe: a batch is saved as two saves (the kill loop's self-check
        must catch the half batch a kill can leave).

Each acknowledgement is one write(2) made only after the save returned, so it names committed
responses. The fork server never opens the database itself, so no child inherits a connection.
"""

from __future__ import annotations

import os

from worker import main, say, serve, wait_for_go

from agentstate.responses.store import ResponseStore


def _response(name: str, b: int) -> dict:
    out = {"id": f"{name}-{b}", "object": "response", "output": [{"type": "message", "n": b, "text": "x" * (b % 50)}]}
    if b:
        out["previous_response_id"] = f"{name}-{b - 1}"
    return out


def burst(directory: str, writer: str, n: int) -> None:
    store = ResponseStore(directory)
    wait_for_go()
    for b in range(n):
        store.save(_response(writer, b))
    store.close()
    say("done")


def child(directory: str, rnd: int, cap: int, unsafe: bool = False) -> None:
    store = ResponseStore(directory, max_responses=cap)
    say(f"ready {rnd} {os.getpid()}")
    b = 0
    while True:
        if b % 3 == 2:
            batch = [_response(f"r{rnd}", b), _response(f"r{rnd}", b + 1)]
            if unsafe:
                for r in batch:
                    store.save(r)
            else:
                store.save_many(batch)
            say(f"ack {rnd} {b} {b + 1}")  # one write for the batch
            b += 2
        else:
            store.save(_response(f"r{rnd}", b))
            say(f"ack {rnd} {b}")
            b += 1


def forkserver(directory: str, cap: int, unsafe: bool = False) -> None:
    import sqlite3  # noqa: F401  (loaded once here, so a child does not pay for it)

    import orjson  # noqa: F401

    from agentstate import sql  # noqa: F401
    from agentstate.sql import engine, q_responses  # noqa: F401
    from agentstate.state import codec, lock, signals  # noqa: F401

    serve(lambda rnd: child(directory, rnd, cap, unsafe))


if __name__ == "__main__":
    main(burst=lambda a: burst(a[0], a[1], int(a[2])),
         forkserver=lambda a: forkserver(a[0], int(a[1]), "--unsafe" in a[2:]))
