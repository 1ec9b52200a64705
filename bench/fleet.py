"""Fleet: sessions found by metadata at scale, and the Redis hot tier.

Rows:

* ``fleet/where-sqlite``, ``fleet/where-pg``: the first page of ``list(where={"agent_id": ...}, limit=50)``
  over 100,000 sessions of which 1,000 match, vs the unfiltered first page (issue goal: <= 5 ms
  absolute, in the note and ``extra``).
* ``fleet/context20-hot-vs-pg``: ``context(20)`` served by a hot cache in front of PostgreSQL vs straight
  from PostgreSQL (goal <= 0.5).
* ``fleet/context20-hot-vs-dir``: the same in front of the directory store (reported: the tier exists
  for shared stores; a local SQLite read is already cheap).
* ``fleet/zipf-hit-rate``: the cache's hit rate (value; baseline 1.0) for reads of 10,000 sessions picked
  by a Zipf law (s = 1.1), one append per 20 reads, through a cache of the default window.

The 100,000 sessions are written straight through the engine (executemany in one transaction). Redis:
``AGENTSTATE_BENCH_REDIS_URL`` if set, else a throwaway redis-server (tests/redisserver.py); PostgreSQL
as bench/pg.py. ``--quick`` shrinks the data (10,000 sessions, 100 matching; 1,000 Zipf sessions).
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import uuid
from typing import Any

from .common import REPO, Config, Row, interleaved, median

ITEM = {"role": "user", "content": "What is the weather like in Lisbon tomorrow morning?"}


def _redis() -> tuple[str, Any]:
    url = os.environ.get("AGENTSTATE_BENCH_REDIS_URL")
    if url:
        return url, None
    spec = importlib.util.spec_from_file_location("redisserver", REPO / "tests" / "redisserver.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("redisserver", mod)
    spec.loader.exec_module(mod)
    server = mod.RedisServer.start_new()
    return server.url, server


def _fill(store: Any, n: int, matching: int) -> None:
    """``n`` sessions, ``matching`` of them with agent_id "a-hit" spread evenly through time, each with an
    agent_id and a channel, written in one transaction."""
    from datetime import UTC, datetime, timedelta

    from agentstate.sql import q_sessions as q

    base = datetime(2026, 1, 1, tzinfo=UTC)
    step = max(1, n // matching)
    sessions, tags = [], []
    for i in range(n):
        now = (base + timedelta(seconds=i)).isoformat(timespec="microseconds").replace("+00:00", "Z")
        sid = f"s{i:07d}"
        agent = "a-hit" if i % step == 0 and i // step < matching else f"a-{i % 97}"
        sessions.append({"tenant": store.tenant, "id": sid, "title": None, "metadata":
                         f'{{"agent_id":"{agent}","channel":"{("web", "sms", "voice")[i % 3]}"}}', "now": now,
                         "created_at": now, "version": 1})
        tags.append({"tenant": store.tenant, "session_id": sid, "key": "agent_id", "value": f"s:{agent}", "now": now,
                     "expires_at": None})
        tags.append({"tenant": store.tenant, "session_id": sid, "key": "channel",
                     "value": f"s:{('web', 'sms', 'voice')[i % 3]}", "now": now, "expires_at": None})
    with store.db.write("bench fill") as tx:
        tx.many(q.INSERT_SESSION, sessions)
        tx.many(q.INSERT_TAG, tags)
        tx.run(q.ADD_SESSIONS, tenant=store.tenant, delta=n)


def _analyze(url: str) -> None:
    import psycopg

    from agentstate.sql.pg_conn import split_url

    dsn, schema = split_url(url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'VACUUM ANALYZE "{schema}".sessions')
        conn.execute(f'VACUUM ANALYZE "{schema}".session_tags')


def _where(cfg: Config, target: str, label: str, n: int, matching: int) -> Row:
    from agentstate import SessionStore

    store = SessionStore(target, tenant="where")
    _fill(store, n, matching)
    if label == "pg":
        _analyze(target)  # as autovacuum would after a bulk load: statistics, and the visibility map
    page = store.list(limit=50, where={"agent_id": "a-hit"})
    assert page.total == matching and len(page.items) == 50, (page.total, len(page.items))
    reads = 5 if cfg.quick else 100 * cfg.rounds
    t = interleaved({"where": lambda: store.list(limit=50, where={"agent_id": "a-hit"}),
                     "all": lambda: store.list(limit=50)}, reads)
    store.close()
    got = median(t["where"])
    return Row("fleet", f"fleet/where-{label}", f"first page of list(where=agent_id) over {n:,} sessions, "
               f"{matching:,} matching ({label})", got, f"first page of list() over {n:,} sessions",
               median(t["all"]), "s",
               note=f"issue goal <= 5 ms median: {'met' if got <= 5e-3 else 'MISSED'} ({got * 1e3:.3f} ms)",
               extra={"sessions": n, "matching": matching, "samples": reads, "absolute_goal_s": 5e-3,
                      "absolute_met": got <= 5e-3})


def _hot_vs(cfg: Config, target: str, cache: str, label: str, unix: str | None) -> Row:
    from agentstate import SessionStore

    plain = SessionStore(target, tenant="hot")
    hot = SessionStore(target, tenant="hot", cache=cache)
    plain.append("s", [ITEM] * 40)
    assert hot.context("s", 20) == plain.context("s", 20)  # promoted
    cases = {"hot": lambda: hot.context("s", 20), "plain": lambda: plain.context("s", 20)}
    if unix:  # the same Redis over its Unix socket (a Redis beside the application): reported in extra
        hot_unix = SessionStore(target, tenant="hot", cache=unix)
        cases["unix"] = lambda: hot_unix.context("s", 20)
    reads = 5 if cfg.quick else 300 * cfg.rounds
    t = interleaved(cases, reads)
    hot.close()
    plain.close()
    goal = "<= 0.5" if label == "pg" else None
    h, p = median(t["hot"]), median(t["plain"])
    extra: dict[str, Any] = {"samples": reads}
    note = f"{h * 1e3:.3f} ms vs {p * 1e3:.3f} ms (TCP loopback both)"
    if unix:
        u = median(t["unix"])
        extra["hot_unix_socket_s"] = u
        note += f"; hot over a Unix socket {u * 1e3:.3f} ms ({u / p:.2f}x)"
    return Row("fleet", f"fleet/context20-hot-vs-{label}", f"context(20) from a hot Redis cache in front of {label}",
               h, f"context(20) straight from {label}", p, "s", goal, note=note, extra=extra)


def _zipf(cfg: Config, target: str, cache: str) -> Row:
    from agentstate import SessionStore
    from agentstate.cache import stats

    n = 1_000 if cfg.quick else 10_000
    ops = 2_000 if cfg.quick else 20_000
    rng = random.Random(7)
    weights = [1 / (k ** 1.1) for k in range(1, n + 1)]
    picks = rng.choices(range(n), weights=weights, k=ops)
    plain = SessionStore(target, tenant="zipf")
    from agentstate.sql import q_sessions as q

    with plain.db.write("bench fill") as tx:  # n sessions of 5 items each, in one transaction
        from agentstate.sessions.store import _utcnow

        now = _utcnow()
        tx.many(q.INSERT_SESSION, [{"tenant": "zipf", "id": f"z{i}", "title": None, "metadata": None, "now": now,
                                    "created_at": now, "version": 1} for i in range(n)])
        tx.many(q.INSERT_ITEM, [{"tenant": "zipf", "session_id": f"z{i}", "seq": s, "id": f"z{i}-{s}", "now": now,
                                 "data": '{"role":"user","content":"hi"}'} for i in range(n) for s in range(1, 6)])
        tx.many(q.UPDATE_SESSION_SEQ, [{"tenant": "zipf", "id": f"z{i}", "last_seq": 5, "now": now, "title": None,
                                        "version": 2, "added": 5} for i in range(n)])
        tx.run(q.ADD_SESSIONS, tenant="zipf", delta=n)
    hot = SessionStore(target, tenant="zipf", cache=cache)
    for k, i in enumerate(picks):
        if k % 20 == 19:
            hot.append(f"z{i}", [ITEM])
        else:
            hot.context(f"z{i}", 20)
    row = next(r for r in stats(cache, target) if r["tenant"] == "zipf")
    hot.close()
    plain.close()
    return Row("fleet", "fleet/zipf-hit-rate", f"hit rate of context(20) over {n:,} sessions, Zipf s=1.1, "
               "1 append per 20 reads", row["hit_rate"], "every read a hit", 1.0, "fraction",
               note=f"{row['hits']:,} hits, {row['misses']:,} misses, {row['keys']:,} sessions cached",
               extra={k: row[k] for k in ("hits", "misses", "promotions", "keys")} | {"sessions": n, "ops": ops})


def run(cfg: Config) -> list[Row]:
    from . import pg

    n, matching = (10_000, 100) if cfg.quick else (100_000, 1_000)
    cache, rserver = _redis()
    unix = rserver.unix_url if rserver is not None else None
    base, pserver = pg._server()
    try:
        url = f"{base}{'&' if '?' in base else '?'}schema=fleet_{uuid.uuid4().hex[:8]}"
        d = str(cfg.workdir / "fleet")
        rows = [_where(cfg, d, "sqlite", n, matching), _where(cfg, url, "pg", n, matching),
                _hot_vs(cfg, url, cache, "pg", unix), _hot_vs(cfg, d, cache, "dir", unix), _zipf(cfg, url, cache)]
    finally:
        if rserver is not None:
            rserver.destroy()
        if pserver is not None:
            pserver.destroy()
    return rows
