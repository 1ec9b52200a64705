"""One disk (issue 17): every one-disk goal in one run, each a ratio against a baseline measured in the
same run (interleaved, medians).

* ``disk/append-vs-floor``: one-item SessionStore.append vs a bare sqlite3 INSERT + COMMIT (WAL,
  synchronous=FULL) on the same file system (goal <= 1.6). ``disk/append-design-floor`` (no goal), in the
  same interleaved run: the append's own statements on agentstate's schema and the lock's system calls,
  with no Python around them, against the same INSERT: what the design costs before any of agentstate's code.
* ``disk/sdk-add_items``: AgentStateSession.add_items vs the Agents SDK's SQLiteSession.add_items (<= 1.25).
* ``disk/threads``: appends/s of 10 threads of one process, each on its own session, vs one thread (>= 1.5:
  group commit lets them share COMMITs). Windows of both alternate.
* ``disk/processes``: appends/s of 10 processes on one session vs one process (>= 0.9).
* ``disk/transaction/1KB``: a state document transaction on 1 KB vs the fsync floor (<= 1.4).
* ``disk/load/1KB``: ``store.read()`` of 1 KB vs raw read + ``orjson.loads`` (<= 1.5).
* ``disk/cli-sessions-show``: ``agentstate sessions show --json`` vs ``python -c "import typer"`` (<= 1.35).

``python -m bench --only disk`` (``--rounds`` scales the samples).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Any

import orjson

from .common import KB, SDK_BATCH, Config, Row, interleaved, median, sdk_pair

THREADS = 10
ITEM = {"role": "user", "content": "What is the weather like in Lisbon tomorrow morning?"}


def _append_rows(cfg: Config) -> list[Row]:
    from agentstate import SessionStore

    from .sessions import _floor_conn

    store = SessionStore(cfg.workdir / "disk-append")
    store.append("small", [ITEM] * 9)
    floor = _floor_conn(cfg.workdir / "disk-floor.db")
    design = _DesignFloor(cfg.workdir / "disk-design")
    payload = orjson.dumps(ITEM).decode()

    def raw() -> None:
        floor.execute("BEGIN IMMEDIATE")
        floor.execute("INSERT INTO t (data) VALUES (?)", (payload,))
        floor.execute("COMMIT")

    n = 3 if cfg.quick else 60 * cfg.rounds
    t = interleaved({"ours": lambda: store.append("small", [ITEM]), "floor": raw, "design": design.append}, n)
    floor.close()
    store.close()
    design.close()
    base = "sqlite3 INSERT + COMMIT, WAL, synchronous=FULL, same file system"
    return [Row("disk", "disk/append-vs-floor", "one-item SessionStore.append", median(t["ours"]), base,
                median(t["floor"]), "s", "<= 1.6", extra={"samples": n}),
            Row("disk", "disk/append-design-floor", "the same append's statements and lock system calls, "
                "no Python around them", median(t["design"]), base, median(t["floor"]), "s",
                note="what the schema and the lock cost alone: no goal", extra={"samples": n})]


class _DesignFloor:
    """What a one-item append costs with none of agentstate's Python: the statements SessionStore.append
    runs (as its connection traces them: BEGIN IMMEDIATE, the schema version, the session row, the item's
    INSERT, the session's UPDATE, COMMIT) on agentstate's own schema, with SQLite syncing the WAL at the
    COMMIT (synchronous=FULL: one fdatasync, as agentstate's), between the lock's system calls (flock,
    the holder record written, blanked, unlocked). The item table's row, its key's index, the session
    row and its recency index: four pages (2 KiB, a new store's) where the bare INSERT writes one (4 KiB)."""

    def __init__(self, path: Any) -> None:
        import sqlite3

        from agentstate import SessionStore
        from agentstate.sql.schema import file_pragmas

        made = SessionStore(path)  # the schema, made by agentstate on its first write
        made.append("seed", [ITEM])
        made.close()
        self.conn = sqlite3.connect(path / "agentstate.db", isolation_level=None)
        self.conn.execute("PRAGMA synchronous=FULL")
        file_pragmas(self.conn)  # the checkpoint size agentstate's connections set
        self.conn.execute("INSERT INTO sessions (tenant, id, created_at, updated_at) VALUES ('default', 's', "
                          "'2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')")
        self.lock = os.open(path / "agentstate.db.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.record = (b'{"pid": 1234, "host": "bench", "operation": "sessions append", '
                       b'"acquired_at": "2026-01-01T00:00:00.000000Z"}').ljust(512)
        self.blank = b" " * 512
        self.seq = 0
        self.item = orjson.dumps(ITEM).decode()

    def append(self) -> None:
        c, self.seq = self.conn, self.seq + 1
        now = f"2026-01-01T00:{self.seq // 60 % 60:02d}:{self.seq % 60:02d}.000000Z"
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        os.pwrite(self.lock, self.record, 0)
        c.execute("BEGIN IMMEDIATE")
        c.execute("PRAGMA user_version").fetchone()
        c.execute("SELECT id, title, metadata, created_at, updated_at, item_count, last_seq, version, expires_at "
                  "FROM sessions WHERE tenant = ? AND id = ?", ("default", "s")).fetchone()
        c.execute("INSERT INTO session_items (tenant, session_id, seq, id, created_at, data) VALUES (?, ?, ?, ?, ?, ?)",
                  ("default", "s", self.seq, f"00000000-0000-4000-8000-{self.seq:012d}", now, self.item))
        c.execute("UPDATE sessions SET last_seq = ?, item_count = item_count + 1, updated_at = ?, version = ?, "
                  "title = COALESCE(title, ?) WHERE tenant = ? AND id = ?",
                  (self.seq, now, self.seq, "title", "default", "s"))
        c.execute("COMMIT")
        os.pwrite(self.lock, self.blank, 0)
        fcntl.flock(self.lock, fcntl.LOCK_UN)

    def close(self) -> None:
        self.conn.close()
        os.close(self.lock)


def _sdk_rows(cfg: Config) -> list[Row]:
    import asyncio

    pair = sdk_pair(cfg, "disk-sdk")
    if pair is None:
        return []
    ours, theirs = pair
    batch = SDK_BATCH
    loop = asyncio.new_event_loop()
    n = 3 if cfg.quick else 60 * cfg.rounds
    try:
        t = interleaved({"ours": lambda: loop.run_until_complete(ours.add_items(batch)),
                         "theirs": lambda: loop.run_until_complete(theirs.add_items(batch))}, n)
    finally:
        loop.close()
        ours.close()
        theirs.close()
    return [Row("disk", "disk/sdk-add_items", "AgentStateSession.add_items (2 items)", median(t["ours"]),
                "Agents SDK SQLiteSession.add_items (file db)", median(t["theirs"]), "s", "<= 1.25",
                extra={"samples": n})]


def _threads_window(store: Any, threads: int, duration: float) -> float:
    """Appends/s of ``threads`` threads, each appending to its own session for ``duration`` seconds."""
    go = threading.Barrier(threads + 1)
    counts = [0] * threads
    end = [0.0]

    def worker(w: int) -> None:
        go.wait()
        n = 0
        while time.monotonic() < end[0]:
            store.append(f"t{w}", [ITEM])
            n += 1
        counts[w] = n

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    start = time.monotonic()
    end[0] = start + duration
    go.wait()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def _thread_rows(cfg: Config) -> list[Row]:
    from agentstate import SessionStore
    from agentstate.sql import stats

    store = SessionStore(cfg.workdir / "disk-threads")
    for w in range(THREADS):
        store.append(f"t{w}", [ITEM])
    duration = 0.5 if cfg.quick else 1.0
    rounds = 1 if cfg.quick else 3 * cfg.rounds
    one, many = [], []
    stats.reset()
    for r in range(rounds):
        pair = [(1, one), (THREADS, many)] if r % 2 == 0 else [(THREADS, many), (1, one)]
        for k, out in pair:
            out.append(_threads_window(store, k, duration))
    snap = stats.snapshot()
    store.close()
    return [Row("disk", "disk/threads", f"appends/s, {THREADS} threads of one process, a session each",
                median(many), "appends/s, one thread", median(one), "ops/s", ">= 1.5",
                extra={"rounds": rounds, "duration_s": duration, "average_batch": round(snap["average_batch"], 2),
                       "write_transactions": snap["write_transactions"], "appends": snap["appends"]})]


def _process_rows(cfg: Config) -> list[Row]:
    from .sessions import _contention

    own = cfg.workdir / "disk-processes"  # not the sessions benchmark's store (it counts every item)
    own.mkdir(exist_ok=True)
    row = _contention(Config(quick=cfg.quick, rounds=cfg.rounds, workdir=own))[0]
    row.bench, row.name = "disk", "disk/processes"
    return [row]


def _state_rows(cfg: Config) -> list[Row]:
    import orjson

    from .common import read_bytes, seed_store
    from .floor import run as floor_run

    rows = []
    own = cfg.workdir / "disk-floor"  # not the floor benchmark's directories
    own.mkdir(exist_ok=True)
    for r in floor_run(Config(quick=cfg.quick, rounds=cfg.rounds, workdir=own)):
        if r.name == "floor/transaction/1KB":
            r.bench, r.name, r.goal = "disk", "disk/transaction/1KB", "<= 1.4"
            rows.append(r)
    store = seed_store(cfg.workdir / "disk-load-1KB", KB)
    path = store.state_path
    n = 3 if cfg.quick else 200 * cfg.rounds
    t = interleaved({"load": store.read, "raw": lambda: orjson.loads(read_bytes(path))}, n)
    rows.append(Row("disk", "disk/load/1KB", "store.read(), 1 KB state", median(t["load"]),
                    "raw read + orjson.loads", median(t["raw"]), "s", "<= 1.5", extra={"samples": n}))
    return rows


def _cli_rows(cfg: Config) -> list[Row]:
    import sys

    from agentstate import SessionStore

    from .cli_start import _byte_compile, _timed
    from .common import agentstate_cmd, child_env

    _byte_compile()
    d = cfg.workdir / "disk-cli"
    with SessionStore(d) as s:
        s.append("chat", [ITEM] * 10)
    env = child_env()
    cli = agentstate_cmd()
    cases = {
        "show": lambda: _timed([*cli, "sessions", "show", "chat", "--json", "--dir", str(d)], env, check_json=True),
        "typer": lambda: _timed([sys.executable, "-c", "import typer"], env),
    }
    # 40 pairs: a process start on this kind of machine spreads 0.8-1.9x pair to pair (farm-bench), and 20
    # left the medians' ratio moving by 0.15 from one run to the next
    n = 1 if cfg.quick else max(40, cfg.rounds * 12)
    t = interleaved(cases, n, warmup=not cfg.quick)
    return [Row("disk", "disk/cli-sessions-show", "agentstate sessions show --json (10 items)", median(t["show"]),
                'python -c "import typer"', median(t["typer"]), "s", "<= 1.35", extra={"runs": n})]


def run(cfg: Config) -> list[Row]:
    return (_append_rows(cfg) + _sdk_rows(cfg) + _thread_rows(cfg) + _process_rows(cfg) + _state_rows(cfg)
            + _cli_rows(cfg))
