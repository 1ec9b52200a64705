"""PostgreSQL backend: a 1 KB state transaction and a session append on a local server, beside the
local store doing the same and beside the server's floor (a plain autocommit ``UPDATE`` / ``INSERT``
round trip on one open connection: what any durable write to that server costs), plus 10 processes
contending for the state lock against one writer alone, and session appends from 16 warm client
processes (bench/pg_worker.py) against plain single-row INSERTs from as many: each on its own session,
all on one session, 1 against 16 clients, in interleaved 1 s windows (medians of the rounds).

The server: ``AGENTSTATE_BENCH_PG_URL`` if set, else a throwaway one started here (tests/pgserver.py:
initdb into a temp dir, fsync on, the server's defaults), stopped at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from .common import KB, REPO, Config, Row, child_env, interleaved, median, seed_store

CLIENTS = 16
WINDOWS = [("plain", 1), ("plain", CLIENTS), ("own", 1), ("own", CLIENTS), ("one", CLIENTS)]


def _scaling(url: str, rounds: int, window: float, server_dir: str | None = None) -> dict[str, float]:
    """Ops/s of each WINDOWS (mode, clients) case: CLIENTS warm workers started once (the barrier: all
    "ready"), then every round runs each case for ``window`` seconds, all workers told the same START
    and END (the ones beyond ``clients`` idle); the median of the rounds per case. Also the CPU per op:
    the whole machine's (``cpu-``), and that of the worker processes and (``server_dir``: a server
    started here) of every process of the server (``own-cpu-``: what the case itself burns, whatever
    else runs on a shared machine; ``server-cpu-``: the server's part)."""
    argvs = [[sys.executable, "-m", "bench.pg_worker", url, str(i)] for i in range(CLIENTS)]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=child_env()) for argv in argvs]
    got: dict[str, list[float]] = {f"{m}-{k}": [] for m, k in WINDOWS}
    cpu: dict[str, list[float]] = {f"{m}-{k}": [] for m, k in WINDOWS}
    own: dict[str, list[float]] = {f"{m}-{k}": [] for m, k in WINDOWS}
    srv: dict[str, list[float]] = {f"{m}-{k}": [] for m, k in WINDOWS}
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"pg worker did not start: {line!r} {p.stderr.read()[-2000:]}")
        for _ in range(rounds):
            for mode, clients in WINDOWS:
                start = time.monotonic() + 0.05
                for i, p in enumerate(procs):
                    p.stdin.write(f"go {mode if i < clients else 'idle'} {start!r} {start + window!r}\n")
                    p.stdin.flush()
                clients_pids, server_pids = [p.pid for p in procs], _server_pids(server_dir)
                busy0 = _busy(start)
                own0, srv0 = _cpu_of(clients_pids), _cpu_of(server_pids)
                done = 0
                for p in procs:
                    line = p.stdout.readline()
                    if not line.strip():
                        raise RuntimeError(f"pg worker failed ({p.wait()}): {p.stderr.read()[-2000:]}")
                    done += json.loads(line)["n"]
                got[f"{mode}-{clients}"].append(done / window)
                cpu[f"{mode}-{clients}"].append((_busy(None) - busy0) / max(1, done))
                server_cpu = _cpu_of(server_pids) - srv0
                own[f"{mode}-{clients}"].append((_cpu_of(clients_pids) - own0 + server_cpu) / max(1, done))
                srv[f"{mode}-{clients}"].append(server_cpu / max(1, done))
        for p in procs:
            p.stdin.write("quit\n")
            p.stdin.flush()
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return ({k: median(v) for k, v in got.items()} | {f"cpu-{k}": median(v) for k, v in cpu.items()}
            | {f"own-cpu-{k}": median(v) for k, v in own.items()} | {f"server-cpu-{k}": median(v) for k, v in srv.items()})


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` (those gone are left out)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _server_pids(data: str | None) -> list[int]:
    """The postmaster of the server in ``data`` and its children (backends, WAL writer, checkpointer...),
    from /proc; [] when unknown (a server given by URL, or no /proc)."""
    if data is None:
        return []
    try:
        with open(os.path.join(data, "postmaster.pid"), encoding="ascii") as f:
            postmaster = int(f.readline())
        pids = [postmaster]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                            pids.append(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
        return pids
    except (OSError, ValueError):
        return []


def _busy(at: float | None) -> float:
    """The machine's busy CPU seconds so far (all cores, every process: the clients, the server, anything
    else running), read at monotonic time ``at`` (waiting for it) or now. /proc/stat on Linux, else 0."""
    if at is not None:
        while time.monotonic() < at:
            time.sleep(max(0.0, min(0.001, at - time.monotonic())))
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:8]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


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

        conn.execute("CREATE TABLE floor_rows (id bigserial PRIMARY KEY, session_id text NOT NULL,"
                     " item_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), data text NOT NULL)")
        load = os.getloadavg()[0]  # the machine may be shared: report its load beside the figures
        sc = _scaling(url, 1 if cfg.quick else cfg.rounds, 1.0, None if server is None else server.data)
        sx = {"clients": CLIENTS, "rounds": 1 if cfg.quick else cfg.rounds, "window_s": 1.0,
              "loadavg_1min_before": load, "loadavg_1min_after": os.getloadavg()[0],
              **{f"{k}_ops": v for k, v in sc.items() if not k.startswith(("cpu-", "own-cpu-", "server-cpu-"))},
              **{f"{k[4:]}_cpu_s_per_op": v for k, v in sc.items() if k.startswith("cpu-")},
              **{f"{k[8:]}_own_cpu_s_per_op": v for k, v in sc.items() if k.startswith("own-cpu-")},
              **{f"{k[11:]}_server_cpu_s_per_op": v for k, v in sc.items() if k.startswith("server-cpu-")}}
        cpu_note = (f"CPU per op, all processes: {sc[f'cpu-own-{CLIENTS}'] * 1e6:.0f} us against "
                    f"{sc[f'cpu-plain-{CLIENTS}'] * 1e6:.0f} us; clients and server only: "
                    f"{sc[f'own-cpu-own-{CLIENTS}'] * 1e6:.0f} us (server "
                    f"{sc[f'server-cpu-own-{CLIENTS}'] * 1e6:.0f}) against {sc[f'own-cpu-plain-{CLIENTS}'] * 1e6:.0f} us "
                    f"(server {sc[f'server-cpu-plain-{CLIENTS}'] * 1e6:.0f})")
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
        Row("pg", "pg/append-16-own-vs-plain", f"appends/s, {CLIENTS} clients each on its own session",
            sc[f"own-{CLIENTS}"], f"plain INSERT...COMMIT/s, {CLIENTS} clients", sc[f"plain-{CLIENTS}"], "ops/s",
            ">= 0.5", note=cpu_note, extra=sx),
        Row("pg", "pg/append-scaling", f"agentstate appends/s, {CLIENTS} clients / 1 client",
            sc[f"own-{CLIENTS}"] / sc["own-1"], f"plain INSERTs/s, {CLIENTS} clients / 1 client",
            sc[f"plain-{CLIENTS}"] / sc["plain-1"], "x", ">= 0.8", extra=sx),
        Row("pg", "pg/append-16-one-session", f"appends/s, {CLIENTS} clients on one session",
            sc[f"one-{CLIENTS}"], "appends/s, 1 client", sc["own-1"], "ops/s", ">= 0.8", extra=sx),
    ]
