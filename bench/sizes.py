"""Load and save against state size: time and peak memory, as ratios to raw orjson plus the floor's I/O."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import orjson

from .common import MB, REPO, Config, Row, child_env, interleaved, median, raw_commit, read_bytes, seed_store

MEMORY_MIN_BYTES = MB  # below this the peak is within page/arena granularity: not measured

LOAD_BASE = "read file + orjson.loads"
TXN_BASE = "read + orjson.loads + change one + orjson.dumps + write+fsync+rename+dir fsync"
SAVE_BASE = "orjson.dumps + write+fsync+rename+dir fsync"


def _mem(case: str, state_path: str, raw_dir: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-m", "bench._child", "mem", case, state_path, raw_dir],
        capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=600,
    )
    if p.returncode != 0:
        raise RuntimeError(f"memory child {case} failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(cfg: Config) -> list[Row]:
    rows: list[Row] = []
    for label, nbytes in cfg.sizes.items():
        store = seed_store(cfg.workdir / f"size-{label}", nbytes)
        path = store.state_path
        raw_dir = cfg.workdir / f"size-{label}-raw"
        raw_dir.mkdir()
        (raw_dir / "state.json").write_bytes(read_bytes(path))
        file_size = os.path.getsize(path)
        resources = len(store.read().resources)

        def load() -> None:
            store.read()  # noqa: B023 - called within this iteration only

        def raw_load() -> None:
            orjson.loads(read_bytes(path))  # noqa: B023

        def txn() -> dict:
            with store.transaction() as st:  # noqa: B023
                t1 = time.perf_counter()
                st.resources["agent.a000000"]["n"] += 1
            return {"save": time.perf_counter() - t1}

        def raw_txn() -> dict:
            doc = orjson.loads(read_bytes(str(raw_dir / "state.json")))  # noqa: B023
            doc["resources"]["agent.a000000"]["n"] += 1
            t1 = time.perf_counter()
            raw_commit(str(raw_dir), "state.json", orjson.dumps(doc))  # noqa: B023
            return {"save": time.perf_counter() - t1}

        n = cfg.samples(nbytes)
        t = interleaved({"load": load, "raw_load": raw_load, "txn": txn, "raw_txn": raw_txn}, n,
                        warmup=not cfg.quick and nbytes <= 10 * MB)
        ex = {"samples": n, "file_bytes": file_size, "resources": resources}
        rows += [
            Row("size", f"size/load/{label}", f"store.read(), {label} state", median(t["load"]),
                LOAD_BASE, median(t["raw_load"]), "s", "<= 1.3", extra=ex),
            Row("size", f"size/transaction/{label}", f"transaction changing one resource, {label} state",
                median(t["txn"]), TXN_BASE, median(t["raw_txn"]), "s", "<= 1.5", extra=ex),
            Row("size", f"size/save/{label}", f"save part of that transaction (block end to exit), {label}",
                median(t["txn.save"]), SAVE_BASE, median(t["raw_txn.save"]), "s", "<= 1.5", extra=ex),
        ]
        if nbytes < MEMORY_MIN_BYTES:
            continue
        m = {case: _mem(case, path, str(raw_dir)) for case in ("load", "rawload", "txn", "rawtxn")}
        pairs = (
            ("load", m["load"]["total"], m["rawload"]["total"], LOAD_BASE),
            ("transaction", m["txn"]["total"], m["rawtxn"]["total"], TXN_BASE),
            ("save", m["txn"]["save"], m["rawtxn"]["save"], SAVE_BASE),
        )
        for op, peak, raw_peak, base_what in pairs:
            mex = {"file_bytes": file_size, "resources": resources, "raw_peak": raw_peak}
            rows += [
                Row("size", f"size/mem-{op}/{label}", f"peak extra RSS of {op}, {label} state", peak,
                    "the document (state.json size)", file_size, "bytes", "<= 3", extra=mex),
                Row("size", f"size/mem-{op}-vs-raw/{label}", f"peak extra RSS of {op}, {label} state", peak,
                    f"peak extra RSS of {base_what}", raw_peak, "bytes", extra=mex),
            ]
    return rows
