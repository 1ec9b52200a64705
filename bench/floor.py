"""The floor: an agentstate transaction on a 1 KB state against a raw durable replace of the same bytes."""

from __future__ import annotations

from .common import KB, Config, Row, interleaved, median, raw_commit, read_bytes, seed_store


def run(cfg: Config) -> list[Row]:
    store = seed_store(cfg.workdir / "floor-store", KB)
    raw_dir = cfg.workdir / "floor-raw"
    raw_dir.mkdir()
    data = read_bytes(store.state_path)  # the very bytes a transaction writes (same length)

    def transaction() -> None:
        with store.transaction() as st:
            st.resources["counter"] += 1

    def floor() -> None:
        raw_commit(str(raw_dir), "state.json", data)

    def lock_only() -> None:
        lk = store.lock()
        lk.acquire(30.0)
        lk.release()

    def read_only() -> None:
        store.read()

    n = 1 if cfg.quick else cfg.rounds * 20
    t = interleaved(
        {"transaction": transaction, "floor": floor, "lock": lock_only, "read": read_only}, n, warmup=not cfg.quick
    )
    base = median(t["floor"])
    floor_what = f"raw write+fsync+rename+dir fsync of the same {len(data)} bytes"
    rows = [
        Row("floor", "floor/transaction/1KB", "transaction (lock, load, +1, save) on a 1 KB state",
            median(t["transaction"]), floor_what, base, "s", "<= 1.25", extra={"samples": n, "bytes": len(data)}),
        Row("floor", "floor/lock-only/1KB", "lock acquire + release alone (no load, no save)",
            median(t["lock"]), floor_what, base, "s", note="breakdown", extra={"samples": n}),
        Row("floor", "floor/read-only/1KB", "store.read() alone (no lock)",
            median(t["read"]), floor_what, base, "s", note="breakdown", extra={"samples": n}),
    ]
    return rows
