"""Contention: 10 processes incrementing one counter against a single writer alone."""

from __future__ import annotations

import json
import sys

from .common import KB, Config, Row, median, seed_store, workers_started

WORKERS = 10


def _session(store_dir: str, workers: int, duration: float, kind: str = "worker") -> dict:
    """Start ``workers`` processes, wait until all are ready (the barrier), run them for ``duration``."""
    argvs = [[sys.executable, "-m", "bench._child", kind, store_dir]] * workers
    with workers_started(argvs, duration) as (procs, start, end):
        results = []
        for p in procs:  # each reports when its time is up, then idles until all have reported
            line = p.stdout.readline()
            if not line.strip():
                raise RuntimeError(f"worker failed ({p.wait()}): {p.stderr.read()[-2000:]}")
            results.append(json.loads(line))
        for p in procs:
            _, err = p.communicate(timeout=60)  # closes stdin: the worker exits
            if p.returncode != 0:
                raise RuntimeError(f"worker failed ({p.returncode}): {err[-2000:]}")
    txns = [t for r in results for t in r["txns"]]
    done = [t for t in txns if start <= t[2] <= end]
    waits = [t1 - t0 for t0, t1, _ in txns]
    per_proc = [sum(1 for t in r["txns"] if start <= t[2] <= end) for r in results]
    return {
        "throughput": len(done) / duration,
        "committed": len(txns),
        "worst_wait": max(waits),
        "median_wait": median(waits),
        "p99_wait": sorted(waits)[min(len(waits) - 1, int(len(waits) * 0.99))],
        "median_latency": median([t2 - t0 for t0, _, t2 in txns]),
        "per_process_min": min(per_proc),
        "per_process_max": max(per_proc),
    }


def run(cfg: Config) -> list[Row]:
    store = seed_store(cfg.workdir / "contention", KB)
    duration = 1.5 if cfg.quick else 3.0
    rounds = 1 if cfg.quick else 3
    alone, many, raw_alone, raw_many = [], [], [], []
    with open(f"{store.path}/raw.json", "wb") as f:
        f.write(open(store.state_path, "rb").read())
    expected = store.read().resources["counter"]
    for _ in range(rounds):  # interleaved: alone, contended, alone, contended ...
        alone.append(_session(store.path, 1, duration))
        many.append(_session(store.path, WORKERS, duration))
        raw_alone.append(_session(store.path, 1, duration, "rawworker"))
        raw_many.append(_session(store.path, WORKERS, duration, "rawworker"))
    expected += sum(s["committed"] for s in alone + many)
    got = store.read().resources["counter"]
    if got != expected:
        raise RuntimeError(f"lost updates: counter is {got}, expected {expected}")
    one_tp = median([s["throughput"] for s in alone])
    many_tp = median([s["throughput"] for s in many])
    worst = max(s["worst_wait"] for s in many)
    ex = {
        "rounds": rounds, "duration_s": duration, "workers": WORKERS,
        "committed_total": sum(s["committed"] for s in alone + many),
        "median_wait_s": median([s["median_wait"] for s in many]),
        "p99_wait_s": max(s["p99_wait"] for s in many),
        "per_process_min": min(s["per_process_min"] for s in many),
        "per_process_max": max(s["per_process_max"] for s in many),
    }
    alone_latency = median([s["median_latency"] for s in alone])
    raw_one = median([s["throughput"] for s in raw_alone])
    raw_ten = median([s["throughput"] for s in raw_many])
    return [
        Row("contention", "contention/throughput", f"commits/s, {WORKERS} processes on one counter", many_tp,
            "commits/s, one writer alone", one_tp, "ops/s", ">= 0.9", extra=ex),
        Row("contention", "contention/worst-wait", f"worst wait to enter a transaction, {WORKERS} processes",
            worst, "median transaction, one writer alone", alone_latency, "s",
            note="no goal; ~(workers-1) transactions is a fair queue", extra=ex),
        Row("contention", "contention/raw-floor", f"commits/s, {WORKERS} processes: bare flock + durable replace",
            raw_ten, "commits/s, one such process alone", raw_one, "ops/s",
            note="what the machine allows: no agentstate", extra={"rounds": rounds, "duration_s": duration}),
    ]
