"""PostgreSQL backend: a 1 KB state transaction and a session append on a local server, beside the
local store doing the same and beside the server's floor (a plain autocommit ``UPDATE`` / ``INSERT``
round trip on one open connection: what any durable write to that server costs), plus 10 processes
contending for the state lock against one writer alone.

The server: ``AGENTSTATE_BENCH_PG_URL`` if set, else a throwaway one started here (tests/pgserver.py:
initdb into a temp dir, fsync on, the server's defaults), stopped at the end.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from typing import Any

from .common import KB, REPO, Config, Row, interleaved, median, seed_store


def _pgserver() -> Any:
    spec = importlib.util.spec_from_file_location("pgserver", REPO / "tests" / "pgserver.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pgserver", mod)
    spec.loader.exec_module(mod)
    return mod


def _server() -> tuple[str, Any]:
    url = os.environ.get("AGENTSTATE_BENCH_PG_URL")
    if url:
        return url, None
    server = _pgserver().PgServer.start_new()
    return server.url, server


def run(cfg: Config) -> list[Row]:
    import psycopg

    from agentstate import SessionStore, StateStore

    from . import contention

    base, server = _server()
    try:
        schema = "bench_" + uuid.uuid4().hex[:8]
        url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
        pg_store = seed_store(url, KB)  # type: ignore[arg-type]
        dir_store = seed_store(cfg.workdir / "pg-local", KB)
        pg_sessions = SessionStore(url)
        dir_sessions = SessionStore(str(cfg.workdir / "pg-local-sessions"))
        item = {"role": "user", "content": "x" * 200}
        for s in (pg_sessions, dir_sessions):
            s.append("bench", [item])

        conn = psycopg.connect(url.split("?")[0], autocommit=True)
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("CREATE TABLE floor_doc (id int PRIMARY KEY, data bytea)")
        conn.execute("CREATE TABLE floor_items (id bigserial PRIMARY KEY, data text)")
        payload = os.urandom(KB)
        conn.execute("INSERT INTO floor_doc VALUES (1, %s)", (payload,))

        def txn(store: StateStore) -> Any:
            def case() -> None:
                with store.transaction() as st:
                    st.resources["counter"] += 1
            return case

        def floor_update() -> None:
            conn.execute("UPDATE floor_doc SET data = %s WHERE id = 1", (payload,))

        def floor_insert() -> None:
            conn.execute("INSERT INTO floor_items (data) VALUES (%s)", ('{"role":"user","content":"x"}',))

        n = 20 if cfg.quick else 300
        t = interleaved({
            "pg_txn": txn(pg_store), "dir_txn": txn(dir_store), "floor_update": floor_update,
            "pg_append": lambda: pg_sessions.append("bench", [item]),
            "dir_append": lambda: dir_sessions.append("bench", [item]),
            "floor_insert": floor_insert,
        }, n)
        m = {k: median(v) for k, v in t.items()}
        ex = {"samples": n, "server": pg_store.connector.where, **{f"{k}_s": v for k, v in m.items()}}

        duration = 1.5 if cfg.quick else 3.0
        rounds = 1 if cfg.quick else 3
        alone, many = [], []
        expected = StateStore(url).read().resources["counter"]
        for _ in range(rounds):
            alone.append(contention._session(url, 1, duration))
            many.append(contention._session(url, contention.WORKERS, duration))
        expected += sum(s["committed"] for s in alone + many)
        got = StateStore(url).read().resources["counter"]
        if got != expected:
            raise RuntimeError(f"lost updates on PostgreSQL: counter is {got}, expected {expected}")
        one_tp = median([s["throughput"] for s in alone])
        many_tp = median([s["throughput"] for s in many])
        conn.close()
        pg_store.close()
    finally:
        if server is not None:
            server.destroy()
    return [
        Row("pg", "pg/txn-1KB-vs-floor", "1 KB state transaction, PostgreSQL", m["pg_txn"],
            "plain UPDATE of 1 KB, autocommit (server floor)", m["floor_update"], "s",
            note="no goal: lock, read, verify, write, commit", extra=ex),
        Row("pg", "pg/txn-1KB-vs-local", "1 KB state transaction, PostgreSQL", m["pg_txn"],
            "1 KB state transaction, local directory", m["dir_txn"], "s", note="no goal", extra=ex),
        Row("pg", "pg/append-vs-floor", "session append (1 item), PostgreSQL", m["pg_append"],
            "plain INSERT, autocommit (server floor)", m["floor_insert"], "s", note="no goal", extra=ex),
        Row("pg", "pg/append-vs-local", "session append (1 item), PostgreSQL", m["pg_append"],
            "session append (1 item), local agentstate.db", m["dir_append"], "s", note="no goal", extra=ex),
        Row("pg", "pg/contention", f"commits/s, {contention.WORKERS} processes on one counter, PostgreSQL",
            many_tp, "commits/s, one writer alone, PostgreSQL", one_tp, "ops/s", ">= 0.9",
            extra={"rounds": rounds, "duration_s": duration}),
    ]
