"""Load and save against state size: time and peak memory, as ratios to raw orjson plus the floor's I/O."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

from agentstate import StateStore

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


FIRST_SAVE_RESOURCES = 200_000  # ~11 MB of small resources: the address checks are at their most
FIRST_BASE = "orjson.dumps + write+fsync+rename+dir fsync into an empty directory"


def first_save(cfg: Config) -> Row:
    """The first save of many small resources into an empty store, against dumps + the floor's I/O."""
    n_res = 20_000 if cfg.quick else FIRST_SAVE_RESOURCES
    resources = {f"res.r{i:06d}": {"n": i, "tag": "agent-state-x", "on": True} for i in range(n_res)}
    counter = iter(range(1 << 30))
    made: list[Path] = []

    def fresh() -> Path:
        d = cfg.workdir / f"first-{next(counter)}"
        d.mkdir(mode=0o700)  # made before the clock starts, for both: only the save is timed
        made.append(d)
        return d

    def ours(d: Path) -> float:
        with StateStore(d).transaction() as st:
            st.resources.update(resources)
            t1 = time.perf_counter()
        return t1  # the save: from the end of the block to the transaction's exit

    def raw(d: Path) -> None:
        raw_commit(str(d), "state.json", orjson.dumps({"format_version": 2, "serial": 1, "resources": resources}))

    samples = 1 if cfg.quick else cfg.rounds * 2
    times: dict[str, list[float]] = {"ours": [], "raw": []}
    for i in range(samples + (0 if cfg.quick else 1)):  # the first round warms up, uncounted
        order = [("ours", ours), ("raw", raw)] if i % 2 else [("raw", raw), ("ours", ours)]
        for name, fn in order:
            d = fresh()
            t0 = time.perf_counter()
            t1 = fn(d)
            dt = time.perf_counter() - (t1 or t0)
            if i or cfg.quick:
                times[name].append(dt)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        made.clear()
    size = len(orjson.dumps(resources))
    return Row("size", "size/first-save", f"first save of {n_res:,} small resources ({size / MB:.1f} MB) "
               "into an empty store (block end to exit)", median(times["ours"]), FIRST_BASE, median(times["raw"]), "s", "<= 1.5",
               extra={"samples": samples, "resources": n_res, "bytes": size})


def run(cfg: Config) -> list[Row]:
    rows: list[Row] = [first_save(cfg)]
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
