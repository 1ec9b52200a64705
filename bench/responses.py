"""Responses: rebuilding a previous_response_id chain at 10 / 1,000 / 10,000 links, and a save.

Rows (each a ratio against a baseline measured in the same run):

* ``responses/chain-1000``, ``responses/chain-10000``: ``chain()`` of a chain that long vs of a
  10-link chain, of minimal ~150-byte responses (an id, the link, one output text). The issue's goal
  is absolute: 10,000 links in <= 50 ms median (reported in the note and ``extra``).
* ``responses/chain-10000-full``: 10,000 links of ~450-byte Responses-API objects vs the floor of
  reading them at all: a bare sqlite3 range scan of the same bodies plus the same orjson parse.
  Turning the bodies into Python dicts is most of both: the cost grows with the response size.
* ``responses/chain-10000-query``: the recursive query alone (no parse) vs a bare range scan of the
  same rows: what following 10,000 links one by one costs over reading adjacent rows.
* ``responses/save``: one ``save()`` continuing a chain vs a bare sqlite3 INSERT + COMMIT (WAL,
  synchronous=FULL) on the same disk: what the lock, validation and chain bookkeeping add.

The chains are built with ``save_many`` (one transaction each).
"""

from __future__ import annotations

import time
from typing import Any

from .common import Config, Row, interleaved, median

LENGTHS = (10, 1_000, 10_000)


def _response(name: str, i: int, minimal: bool = False) -> dict[str, Any]:
    """A Responses-API object: ~450 bytes (a message output and usage), or ~150 bytes if ``minimal``."""
    text = f"Answer {i}: the forecast for Lisbon is sunny, 24 degrees, light wind."
    if minimal:
        out: dict[str, Any] = {"id": f"{name}-{i}", "output": [{"type": "message", "content": text}]}
    else:
        out = {
            "id": f"{name}-{i}", "object": "response", "created_at": 1_750_000_000 + i, "status": "completed",
            "model": "gpt-4o-mini-2024-07-18",
            "output": [{"type": "message", "id": f"msg_{name}_{i}", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "annotations": [], "text": text}]}],
            "usage": {"input_tokens": 120 + i % 50, "output_tokens": 30, "total_tokens": 150 + i % 50},
        }
    if i:
        out["previous_response_id"] = f"{name}-{i - 1}"
    return out


def _chains(cfg: Config) -> list[Row]:
    import sqlite3

    import orjson

    from agentstate import ResponseStore
    from agentstate.responses.store import MAX_CHAIN
    from agentstate.sql import q_responses as q

    store = ResponseStore(cfg.workdir / "responses-chain")
    t0 = time.perf_counter()
    for n in LENGTHS:
        store.save_many([_response(f"c{n}", i, minimal=True) for i in range(n)])
    longest = LENGTHS[-1]
    store.save_many([_response("full", i) for i in range(longest)])
    build_s = time.perf_counter() - t0
    for n in LENGTHS:  # correctness before timing
        got = store.chain(f"c{n}-{n - 1}")
        assert len(got) == n and got[0]["id"] == f"c{n}-0" and got[-1]["id"] == f"c{n}-{n - 1}", n
    scan = sqlite3.connect(cfg.workdir / "responses-chain" / "agentstate.db")
    scan_sql = "SELECT body FROM responses WHERE tenant = 'default' AND root_id = ? ORDER BY seq"

    def query_only() -> None:
        with store.db.read() as tx:
            tx.run(q.CHAIN, tenant="default", id=f"full-{longest - 1}", max_links=MAX_CHAIN)

    def timed(fn: Any) -> Any:
        def case() -> None:  # returns None: the result is freed inside the case that made it (interleaved()
            fn()             # would otherwise free it while timing the next case)
        return case

    cases: dict[str, Any] = {f"chain{n}": timed(lambda n=n: store.chain(f"c{n}-{n - 1}")) for n in LENGTHS}
    cases["full"] = timed(lambda: store.chain(f"full-{longest - 1}"))
    cases["full_scan_parse"] = timed(lambda: [orjson.loads(r[0]) for r in scan.execute(scan_sql, ("full-0",))])
    cases["full_query"] = query_only
    cases["full_scan"] = timed(lambda: scan.execute(scan_sql, ("full-0",)).fetchall())
    samples = 3 if cfg.quick else cfg.rounds * 4
    t = interleaved(cases, samples)
    scan.close()
    store.close()
    m = {k: median(v) for k, v in t.items()}
    short = m[f"chain{LENGTHS[0]}"]
    base = {"samples": samples, "build_seconds": round(build_s, 2)}
    rows = [Row("responses", f"responses/chain-{n}", f"chain() of {n:,} links (~150-byte responses)",
                m[f"chain{n}"], f"chain() of {LENGTHS[0]} links", short, "s", extra={**base, "links": n})
            for n in LENGTHS[1:]]
    met = m[f"chain{longest}"] <= 0.050
    rows[-1].note = f"issue goal <= 50 ms median: {'met' if met else 'MISSED'} ({m[f'chain{longest}'] * 1e3:.1f} ms)"
    rows[-1].extra.update(absolute_goal_s=0.050, absolute_met=met)
    rows.append(Row("responses", f"responses/chain-{longest}-full", f"chain() of {longest:,} links (~450-byte "
                    "responses)", m["full"], f"sqlite3 range scan + orjson parse of the same {longest:,} bodies",
                    m["full_scan_parse"], "s", note="no goal; parsing the bodies into dicts is most of both",
                    extra={**base, "links": longest}))
    rows.append(Row("responses", f"responses/chain-{longest}-query", f"the recursive query alone, {longest:,} links",
                    m["full_query"], f"sqlite3 range scan of the same {longest:,} rows (no walk)", m["full_scan"], "s",
                    note="no goal; what following the links costs over reading adjacent rows", extra=base))
    return rows


def _save(cfg: Config) -> list[Row]:
    import sqlite3

    import orjson

    from agentstate import ResponseStore

    store = ResponseStore(cfg.workdir / "responses-save")
    store.save(_response("s", 0))
    floor = sqlite3.connect(cfg.workdir / "responses-floor.db", isolation_level=None)
    floor.execute("PRAGMA journal_mode=WAL")
    floor.execute("PRAGMA synchronous=FULL")
    floor.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    counter = {"ours": 0, "raw": 0}

    def ours() -> None:
        counter["ours"] += 1
        store.save(_response("s", counter["ours"]))

    def raw() -> None:
        counter["raw"] += 1
        floor.execute("BEGIN IMMEDIATE")
        floor.execute("INSERT INTO t (body) VALUES (?)", (orjson.dumps(_response("s", counter["raw"])).decode(),))
        floor.execute("COMMIT")

    samples = 3 if cfg.quick else cfg.rounds * 10
    t = interleaved({"ours": ours, "raw": raw}, samples)
    store.close()
    floor.close()
    return [Row("responses", "responses/save", "ResponseStore.save (continuing a chain)", median(t["ours"]),
                "sqlite3 INSERT + COMMIT, WAL, synchronous=FULL", median(t["raw"]), "s",
                note="no goal; the fsync dominates both", extra={"samples": samples})]


def run(cfg: Config) -> list[Row]:
    return _chains(cfg) + _save(cfg)
