"""The floor: an agentstate transaction on a 1 KB state against a raw durable replace of the same bytes."""

from __future__ import annotations

import fcntl
import os
import shutil

from .common import KB, Config, Row, interleaved, median, raw_commit, read_bytes, seed_store


def lean_transaction(directory: str) -> None:
    """The same protocol as a transaction with none of agentstate's other work: open and flock the
    lock file (inode re-check), write a holder record, read and verify state.json (SHA-256, parse),
    +1, encode with its checksum, the new version into the spare inode (renamed to the temp name) or a
    new temp file, fsync, the old backup linked as the next spare, backup link + rename, rename,
    directory fsync, blank the record, unlock. Every descriptor is opened and closed here."""
    from agentstate.state import codec

    path = os.path.join(directory, "state.json")
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.fstat(fd)
        os.stat(path + ".lock", follow_symlinks=False)
        os.pwrite(fd, b'{"pid":%d}' % os.getpid() + b" " * 480 + b"\n", 0)
        doc = codec.decode_document(read_bytes(path))
        doc.resources["counter"] += 1
        body = codec.encode_raw(doc.resources)
        data = b"".join(codec.Digest(codec.document_head(doc.serial + 1, doc.lineage,
                                                         "2026-01-01T00:00:00.000000Z"), body).parts())
        tmp = path + ".tmp-new"
        try:
            t = os.open(path + ".spare", os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            t = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        else:
            os.fstat(t)
            os.rename(path + ".spare", tmp)
        try:
            os.write(t, data)
            os.ftruncate(t, len(data))
            os.fsync(t)
        finally:
            os.close(t)
        try:
            os.link(path + ".bak", path + ".spare", follow_symlinks=False)
        except FileNotFoundError:
            pass
        os.link(path, path + ".bak.tmp-new", follow_symlinks=False)
        os.rename(path + ".bak.tmp-new", path + ".bak")
        os.rename(tmp, path)
        d = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(d)
        finally:
            os.close(d)
        os.pwrite(fd, b" " * 511 + b"\n", 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def run(cfg: Config) -> list[Row]:
    store = seed_store(cfg.workdir / "floor-store", KB)
    raw_dir = cfg.workdir / "floor-raw"
    raw_dir.mkdir()
    data = read_bytes(store.state_path)  # the very bytes a transaction writes (same length)
    lean_dir = cfg.workdir / "floor-lean"
    shutil.copytree(store.path, lean_dir)

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

    def lean() -> None:
        lean_transaction(str(lean_dir))

    n = 1 if cfg.quick else cfg.rounds * 20
    t = interleaved(
        {"transaction": transaction, "floor": floor, "lock": lock_only, "read": read_only, "lean": lean}, n,
        warmup=not cfg.quick,
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
        Row("floor", "floor/lean/1KB", "the same protocol with nothing else (bench/floor.py lean_transaction)",
            median(t["lean"]), floor_what, base, "s", note="breakdown", extra={"samples": n}),
    ]
    return rows
