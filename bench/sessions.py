"""Sessions: append cost at any history size, reads at 1,000,000 items, listing, contention, and the
OpenAI Agents SDK's own SQLiteSession as a peer.

Rows (each a ratio against a baseline measured in the same run):

* ``sessions/append-flat``: one-item append to a session of 1,000,000 items vs one of 10 (goal <= 1.2:
  an append reads the session row, never the history).
* ``sessions/append-vs-floor``: that append vs a bare sqlite3 INSERT + COMMIT (WAL, synchronous=FULL)
  on the same disk: what the lock, validation and bookkeeping add.
* ``sessions/context20``: ``context(20)`` at 1,000,000 items vs at 20 items (the issue's goal is
  <= 1 ms median, absolute: reported in the note and ``extra``).
* ``sessions/list50``: ``list(limit=50)`` over 10,000 sessions vs over 50 (goal <= 5 ms absolute).
* ``sessions/contention``: appends/s of 10 processes on one session vs one process alone (goal >= 0.9).
* ``sessions/sdk-add_items``, ``sessions/sdk-get_items20``: AgentStateSession vs the SDK's SQLiteSession
  (a file database) doing the same work, as a peer.

The 1,000,000-item session is built directly through the engine (one executemany in one transaction),
not by a million appends. ``--quick`` shrinks it to 10,000 items and 500 sessions.

Run as a child for the contention case: ``python -m bench.sessions worker DIR``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import SDK_BATCH, Config, Row, await_go, interleaved, median, sdk_pair, workers_started

WORKERS = 10
ITEM = {"role": "user", "content": "What is the weather like in Lisbon tomorrow morning?"}


def _fill(store: Any, session_id: str, n: int) -> None:
    """A session of ``n`` items written straight through the engine, in one transaction."""
    import orjson

    from agentstate.sessions.store import _utcnow
    from agentstate.sql import q_sessions as q

    data = orjson.dumps({"type": "message", "role": "assistant",
                         "content": [{"type": "output_text", "text": "It will be sunny, 24 degrees."}]}).decode()
    now = _utcnow()
    with store.db.write("bench fill") as tx:
        version = store._insert(tx, session_id, None, None, now)
        chunk = 50_000
        for start in range(1, n + 1, chunk):
            tx.many(q.INSERT_ITEM, ({"tenant": store.tenant, "session_id": session_id, "seq": s,
                                      "id": f"item-{s}", "now": now, "data": data}
                                     for s in range(start, min(n, start + chunk - 1) + 1)))
        tx.run(q.UPDATE_SESSION_SEQ, tenant=store.tenant, id=session_id, last_seq=n, now=now, title=None,
               version=store._next_version(tx, session_id, version), added=n)


def _floor_conn(path: Path) -> Any:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, data TEXT NOT NULL)")
    return conn


def _appends(cfg: Config, big_n: int) -> list[Row]:
    from agentstate import SessionStore

    store = SessionStore(cfg.workdir / "sessions-append")
    t0 = time.perf_counter()
    _fill(store, "big", big_n)
    fill_s = time.perf_counter() - t0
    store.append("small", [ITEM] * 9)
    floor = _floor_conn(cfg.workdir / "sessions-floor.db")
    import orjson

    payload = orjson.dumps(ITEM).decode()

    def raw() -> None:
        floor.execute("BEGIN IMMEDIATE")
        floor.execute("INSERT INTO t (data) VALUES (?)", (payload,))
        floor.execute("COMMIT")

    n = 3 if cfg.quick else 40 * cfg.rounds
    t = interleaved({"small": lambda: store.append("small", [ITEM]), "big": lambda: store.append("big", [ITEM]),
                     "floor": raw}, n)
    floor.close()
    assert store.get("big").item_count == big_n + n + 1
    small, big, raw_m = median(t["small"]), median(t["big"]), median(t["floor"])

    reads = 5 if cfg.quick else 200 * cfg.rounds
    store.append("twenty", [ITEM] * 20)
    r = interleaved({"big": lambda: store.context("big", 20), "twenty": lambda: store.context("twenty", 20)}, reads)
    ctx_big, ctx_small = median(r["big"]), median(r["twenty"])
    store.close()
    label = f"{big_n:,}"
    return [
        Row("sessions", "sessions/append-flat", f"one-item append, session of {label} items", big,
            "one-item append, session of 10 items", small, "s", "<= 1.2",
            extra={"items": big_n, "samples": n, "fill_seconds": round(fill_s, 2)}),
        Row("sessions", "sessions/append-vs-floor", "one-item SessionStore.append (lock, validation, bookkeeping)",
            small, "sqlite3 INSERT + COMMIT, WAL, synchronous=FULL", raw_m, "s",
            note="no goal; the floor's fsync dominates both", extra={"samples": n}),
        Row("sessions", "sessions/context20", f"context(20) at {label} items", ctx_big, "context(20) at 20 items",
            ctx_small, "s", "<= 1.5",
            note=f"issue goal <= 1 ms median: {'met' if ctx_big <= 1e-3 else 'MISSED'} ({ctx_big * 1e3:.3f} ms)",
            extra={"items": big_n, "samples": reads, "absolute_goal_s": 1e-3, "absolute_met": ctx_big <= 1e-3}),
    ]


def _listing(cfg: Config, many: int) -> list[Row]:
    from agentstate import SessionStore
    from agentstate.sessions.store import _utcnow
    from agentstate.sql import q_sessions as q

    store = SessionStore(cfg.workdir / "sessions-list")
    few = SessionStore(cfg.workdir / "sessions-list", tenant="few")
    for s, n in ((store, many), (few, 50)):
        with s.db.write("bench fill") as tx:
            tx.run(q.ADD_SESSIONS, tenant=s.tenant, delta=n)
            version = s._next_version(tx, "s000000")  # one for all of them (as migrated sessions have): only listed here
            for i in range(n):
                now = _utcnow()
                tx.run(q.INSERT_SESSION, tenant=s.tenant, id=f"s{i:06d}", title=f"session {i}", metadata=None,
                       now=now, created_at=now, version=version)
    reads = 5 if cfg.quick else 100 * cfg.rounds
    t = interleaved({"many": lambda: store.list(limit=50), "few": lambda: few.list(limit=50)}, reads)
    page = store.list(limit=50)
    assert page.total == many and len(page.items) == 50
    got = median(t["many"])
    store.close()
    few.close()
    return [Row("sessions", "sessions/list50", f"list(limit=50) over {many:,} sessions", got,
                "list(limit=50) over 50 sessions", median(t["few"]), "s", "<= 1.5",
                note=f"issue goal <= 5 ms median: {'met' if got <= 5e-3 else 'MISSED'} ({got * 1e3:.3f} ms)",
                extra={"sessions": many, "samples": reads, "absolute_goal_s": 5e-3, "absolute_met": got <= 5e-3})]


# -- contention: worker processes ------------------------------------------------------------------------------


def _contend(store_dir: str, workers: int, duration: float) -> dict:
    argvs = [[sys.executable, "-m", "bench.sessions", "worker", store_dir, f"w{w}"] for w in range(workers)]
    with workers_started(argvs, duration) as (procs, start, end):
        results = []
        for p in procs:
            out, err = p.communicate(timeout=duration + 120)
            if p.returncode != 0:
                raise RuntimeError(f"worker failed ({p.returncode}): {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    done = [t for r in results for t in r["ends"] if start <= t <= end]
    return {"throughput": len(done) / duration, "committed": sum(len(r["ends"]) for r in results)}


def _contention(cfg: Config) -> list[Row]:
    from agentstate import SessionStore

    d = cfg.workdir / "sessions-contention"
    store = SessionStore(d)
    store.append("s", [ITEM])
    duration = 1.0 if cfg.quick else 3.0
    rounds = 1 if cfg.quick else 3
    alone, many = [], []
    for _ in range(rounds):
        alone.append(_contend(str(d), 1, duration))
        many.append(_contend(str(d), WORKERS, duration))
    committed = 1 + sum(s["committed"] for s in alone + many)
    items = store.items("s")
    if [i.seq for i in items] != list(range(1, committed + 1)):
        raise RuntimeError(f"sessions contention: {len(items)} items for {committed} appends, or a seq gap")
    store.close()
    one, ten = median([s["throughput"] for s in alone]), median([s["throughput"] for s in many])
    return [Row("sessions", "sessions/contention", f"appends/s, {WORKERS} processes on one session", ten,
                "appends/s, one process alone", one, "ops/s", ">= 0.9",
                extra={"rounds": rounds, "duration_s": duration, "committed_total": committed})]


def worker(store_dir: str, name: str) -> None:
    from agentstate import SessionStore

    store = SessionStore(store_dir)
    store.get("s")  # connection and schema check before the start line
    _, end = await_go()
    ends = []
    i = 0
    while time.monotonic() < end:
        store.append("s", [{"type": "note", "w": name, "i": i}])
        ends.append(time.monotonic())
        i += 1
    print(json.dumps({"ends": ends}), flush=True)


# -- the Agents SDK's SQLiteSession as a peer -------------------------------------------------------------------


def _sdk_peer(cfg: Config) -> list[Row]:
    import asyncio

    pair = sdk_pair(cfg, "sessions-sdk")
    if pair is None:
        return []
    ours, theirs = pair
    batch = SDK_BATCH
    loop = asyncio.new_event_loop()
    n = 3 if cfg.quick else 40 * cfg.rounds
    try:
        loop.run_until_complete(ours.add_items(batch * 50))
        loop.run_until_complete(theirs.add_items(batch * 50))
        add = interleaved({"ours": lambda: loop.run_until_complete(ours.add_items(batch)),
                           "theirs": lambda: loop.run_until_complete(theirs.add_items(batch))}, n)
        get = interleaved({"ours": lambda: loop.run_until_complete(ours.get_items(20)),
                           "theirs": lambda: loop.run_until_complete(theirs.get_items(20))}, n * 5)
        a = loop.run_until_complete(ours.get_items(20))
        b = loop.run_until_complete(theirs.get_items(20))
        assert a == b, "the two sessions disagree"
    finally:
        loop.close()
        ours.close()
        theirs.close()
    return [
        Row("sessions", "sessions/sdk-add_items", "AgentStateSession.add_items (2 items)", median(add["ours"]),
            "Agents SDK SQLiteSession.add_items (file db)", median(add["theirs"]), "s",
            note="peer; ours also takes the cross-process writer lock and checks each item is strict JSON",
            extra={"samples": n}),
        Row("sessions", "sessions/sdk-get_items20", "AgentStateSession.get_items(20)", median(get["ours"]),
            "Agents SDK SQLiteSession.get_items(20)", median(get["theirs"]), "s", note="peer",
            extra={"samples": n * 5}),
    ]


def run(cfg: Config) -> list[Row]:
    big_n = 10_000 if cfg.quick else 1_000_000
    many = 500 if cfg.quick else 10_000
    return _appends(cfg, big_n) + _listing(cfg, many) + _contention(cfg) + _sdk_peer(cfg)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]}")
