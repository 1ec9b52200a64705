"""Entry point for the suite's subprocesses: ``python -m bench._child mem|worker ...``.

Kept apart so a child imports only what its case needs (a fresh interpreter per case).
"""

from __future__ import annotations

import json
import os
import sys
import time

# --- peak memory -------------------------------------------------------------------------------
# Peak RSS (VmHWM) after resetting the high-water mark to the current RSS by writing "5" to
# /proc/self/clear_refs (Linux >= 4.0): "peak extra memory" = VmHWM - VmRSS at the reset.


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak to the current RSS; return the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def mem(case: str, state_path: str, raw_dir: str) -> dict:
    import orjson

    from agentstate import StateStore

    from .common import raw_commit, read_bytes

    def _floor(extra: int) -> int:
        # Below one page the peak is lost in page granularity (and can even read negative after
        # the kernel trims RSS); report it as one page rather than as zero or less.
        return max(extra, 4096)

    store = StateStore(os.path.dirname(state_path))
    keep = []
    base = _reset_peak()
    if case == "load":
        keep.append(store.read())
        return {"total": _floor(_peak() - base)}
    if case == "rawload":
        keep.append(orjson.loads(read_bytes(state_path)))
        return {"total": _floor(_peak() - base)}
    if case == "txn":
        with store.transaction() as st:
            loaded_peak = _peak()
            at_save = _reset_peak()
            st.resources["agent.a000000"]["n"] += 1
        save_peak = _peak()
        return {"total": _floor(max(loaded_peak, save_peak) - base), "save": _floor(save_peak - at_save)}
    if case == "rawtxn":
        doc = orjson.loads(read_bytes(os.path.join(raw_dir, "state.json")))
        doc["resources"]["agent.a000000"]["n"] += 1
        loaded_peak = _peak()
        at_save = _reset_peak()
        raw_commit(raw_dir, "state.json", orjson.dumps(doc))
        save_peak = _peak()
        return {"total": _floor(max(loaded_peak, save_peak) - base), "save": _floor(save_peak - at_save)}
    raise SystemExit(f"unknown memory case {case!r}")


# --- contention worker -------------------------------------------------------------------------


def worker(store_dir: str) -> dict:
    """Wait for "go START END" on stdin, then loop +1 transactions until END (time.monotonic)."""
    from agentstate import StateStore

    from .common import await_go

    store = StateStore(store_dir, lock_timeout=120)
    _, end = await_go()
    txns = []
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        with store.transaction() as st:
            t1 = time.monotonic()
            st.resources["counter"] += 1
        txns.append((t0, t1, time.monotonic()))
    # Report, then stay idle until every worker has reported: no interpreter exits while others run.
    sys.stdout.write(json.dumps({"pid": os.getpid(), "txns": txns}) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()
    return None


def raw_worker(directory: str) -> None:
    """The worker loop with no agentstate: a bare flock on a lock file, read the state, and the
    floor's durable replace of the same bytes. What ten processes can do on this machine at all."""
    import fcntl

    from .common import await_go, raw_commit

    _, end = await_go()
    txns = []
    lock = os.path.join(directory, "raw.lock")
    state = os.path.join(directory, "raw.json")
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            t1 = time.monotonic()
            with open(state, "rb") as f:
                data = f.read()
            raw_commit(directory, "raw.json", data)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        txns.append((t0, t1, time.monotonic()))
    sys.stdout.write(json.dumps({"pid": os.getpid(), "txns": txns}) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()


def main(argv: list[str]) -> None:
    if argv[0] == "mem":
        out = mem(argv[1], argv[2], argv[3])
    elif argv[0] == "worker":
        worker(argv[1])
        return
    elif argv[0] == "rawworker":
        raw_worker(argv[1])
        return
    else:
        raise SystemExit(f"unknown child command {argv[0]!r}")
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
