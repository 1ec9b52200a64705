"""A warm PostgreSQL client for bench/pg.py: ``python -m bench.pg_worker URL INDEX``.

Opens a SessionStore and a plain psycopg connection once, warms both, says "ready", then serves windows:
each "go MODE START END" line (time.monotonic) runs MODE from START until END and answers {"n": ops
completed inside the window}; "quit" (or EOF) ends it. Modes: ``own`` (append one item to this worker's
own session), ``one`` (append to the session every worker shares), ``plain`` (a single-row autocommit
INSERT into a table like session_items: PostgreSQL's floor for a durable row), ``idle``.
"""

from __future__ import annotations

import json
import sys
import time


def main(url: str, index: int) -> None:
    import psycopg

    from agentstate import SessionStore

    base, _, query = url.partition("?")
    schema = dict(p.split("=", 1) for p in query.split("&") if p).get("schema", "agentstate")
    sessions = SessionStore(url)
    conn = psycopg.connect(base, autocommit=True)
    conn.execute(f'SET search_path TO "{schema}"')
    item = {"role": "user", "content": "x" * 200}
    data = json.dumps(item)
    own, shared = f"own-{index}", "shared"
    ops = {
        "own": lambda: sessions.append(own, [item]),
        "one": lambda: sessions.append(shared, [item]),
        "plain": lambda: conn.execute("INSERT INTO floor_rows (session_id, item_id, data) VALUES (%s, %s, %s)",
                                      (own, "i", data)),
    }
    for op in ops.values():  # warm: connections open, statements prepared (psycopg prepares after 5 uses)
        for _ in range(8):
            op()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        _, mode, start, end = words
        start, end = float(start), float(end)
        while time.monotonic() < start:
            time.sleep(min(0.001, max(0.0, start - time.monotonic())))
        n = 0
        if mode != "idle":
            op = ops[mode]
            while True:
                op()
                if time.monotonic() > end:
                    break
                n += 1
        print(json.dumps({"n": n}), flush=True)
    sessions.close()
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
