"""Peers on the same work: a durable read-modify-write of one resource in a small and a large document.

Each peer's time is given as a ratio to agentstate's (peer / agentstate: above 1 = agentstate is faster).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from .common import Config, Row, interleaved, make_resources, median, raw_commit, read_bytes, seed_store

KEY = "agent.a000000"

PEERS = {
    "sqlite-doc": "sqlite3 WAL, synchronous=FULL, whole document as one JSON text row (orjson)",
    "sqlite-rows": "sqlite3 WAL, synchronous=FULL, one row per resource (rewrites one row only)",
    "tinydb": "TinyDB 4, one document per resource (not crash-safe: rewrites in place)",
    "json-replace": "plain json + os.replace, no fsync (unsafe)",
    "raw-floor": "raw orjson read+loads, change, dumps, write+fsync+rename+dir fsync (the floor, no lock)",
}


class SqliteDoc:
    def __init__(self, path: Path, resources: dict[str, Any]) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE state (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)")
        self.db.execute("INSERT INTO state VALUES (1, ?)", (orjson.dumps(resources).decode(),))

    def rmw(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        (doc,) = self.db.execute("SELECT doc FROM state WHERE id = 1").fetchone()
        res = orjson.loads(doc)
        res[KEY]["n"] += 1
        self.db.execute("UPDATE state SET doc = ? WHERE id = 1", (orjson.dumps(res).decode(),))
        self.db.execute("COMMIT")


class SqliteRows:
    def __init__(self, path: Path, resources: dict[str, Any]) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE resources (address TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO resources VALUES (?, ?)",
                            ((k, orjson.dumps(v).decode()) for k, v in resources.items()))
        self.db.execute("COMMIT")

    def rmw(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        (value,) = self.db.execute("SELECT value FROM resources WHERE address = ?", (KEY,)).fetchone()
        v = orjson.loads(value)
        v["n"] += 1
        self.db.execute("UPDATE resources SET value = ? WHERE address = ?", (orjson.dumps(v).decode(), KEY))
        self.db.execute("COMMIT")


class Tiny:
    def __init__(self, path: Path, resources: dict[str, Any]) -> None:
        from tinydb import TinyDB

        self.db = TinyDB(path)
        ids = self.db.insert_multiple({"address": k, "value": v} for k, v in resources.items())
        self.doc_id = next(i for i, k in zip(ids, resources, strict=True) if k == KEY)

    def rmw(self) -> None:
        doc = self.db.get(doc_id=self.doc_id)  # TinyDB reads and parses the whole file on every call
        value = doc["value"]
        value["n"] += 1
        self.db.update({"value": value}, doc_ids=[self.doc_id])  # ...and rewrites it all in place


class RawFloor:
    """The floor for this work: what agentstate does, minus the lock, checksum, backup and checks."""

    def __init__(self, path: Path, resources: dict[str, Any]) -> None:
        self.dir, self.name = str(path.parent), path.name
        path.write_bytes(orjson.dumps(resources))

    def rmw(self) -> None:
        res = orjson.loads(read_bytes(os.path.join(self.dir, self.name)))
        res[KEY]["n"] += 1
        raw_commit(self.dir, self.name, orjson.dumps(res))


class JsonReplace:
    def __init__(self, path: Path, resources: dict[str, Any]) -> None:
        self.path = str(path)
        with open(self.path, "w") as f:
            json.dump(resources, f)

    def rmw(self) -> None:
        with open(self.path) as f:
            res = json.load(f)
        res[KEY]["n"] += 1
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f)
        os.replace(tmp, self.path)


def run(cfg: Config) -> list[Row]:
    rows: list[Row] = []
    labels = list(cfg.sizes)[:3]  # 1KB, 1MB, 10MB (quick: smaller); the largest is "large"
    for label in labels:
        nbytes = cfg.sizes[label]
        d = cfg.workdir / f"peers-{label}"
        d.mkdir()
        store = seed_store(d / "agentstate", nbytes)
        resources = make_resources(nbytes)
        peers = {
            "sqlite-doc": SqliteDoc(d / "doc.sqlite", resources),
            "sqlite-rows": SqliteRows(d / "rows.sqlite", resources),
            "tinydb": Tiny(d / "tiny.json", resources),
            "json-replace": JsonReplace(d / "plain.json", resources),
            "raw-floor": RawFloor(d / "raw.json", resources),
        }

        def agentstate_rmw() -> None:
            with store.transaction() as st:  # noqa: B023
                st.resources[KEY]["n"] += 1

        n = cfg.samples(nbytes)
        t = interleaved({"agentstate": agentstate_rmw, **{k: p.rmw for k, p in peers.items()}}, n,
                        warmup=not cfg.quick)
        ours = median(t["agentstate"])
        for name, what in PEERS.items():
            rows.append(Row("peers", f"peers/{name}/{label}", what, median(t[name]),
                            f"agentstate transaction, {label}", ours, "s",
                            note="unsafe" if name == "json-replace" else
                            ("not crash-safe" if name == "tinydb" else ""),
                            extra={"samples": n, "agentstate_s": ours, "size": label, "bytes": nbytes}))
        for p in peers.values():
            db = getattr(p, "db", None)
            if db is not None:
                db.close()
    return rows
