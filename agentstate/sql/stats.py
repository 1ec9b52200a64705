"""Counters of this process's writes, for ``/metrics`` and the benchmarks (plain ints, read freely).

``write_transactions``: write transactions committed (the SQLite engine counts each COMMIT that returned;
another engine may count its own through :func:`committed`); ``appends``: session appends that stored
their items (a replayed idempotency key or a failed call is not counted); ``batches`` and
``batched_calls``: group commits (agentstate.sql.group) and the calls they carried, so
``batched_calls / batches`` is the average batch size and ``last_batch`` the size of the latest.
"""

from __future__ import annotations

import threading

__all__ = ["appended", "batch", "committed", "reset", "snapshot"]

write_transactions = 0
appends = 0
batches = 0
batched_calls = 0
last_batch = 0

_mutex = threading.Lock()


def committed(n: int = 1) -> None:
    """``n`` write transactions were committed."""
    global write_transactions
    with _mutex:
        write_transactions += n


def appended(n: int = 1) -> None:
    """``n`` appends were committed."""
    global appends
    with _mutex:
        appends += n


def batch(size: int) -> None:
    """A group commit of ``size`` calls was committed."""
    global batches, batched_calls, last_batch
    with _mutex:
        batches += 1
        batched_calls += size
        last_batch = size


def snapshot() -> dict[str, float]:
    """The counters now, plus ``average_batch`` (0.0 before the first batch)."""
    with _mutex:
        return {"write_transactions": write_transactions, "appends": appends, "batches": batches,
                "batched_calls": batched_calls, "last_batch": last_batch,
                "average_batch": batched_calls / batches if batches else 0.0}


def reset() -> None:
    """Every counter back to 0 (tests and benchmarks)."""
    global write_transactions, appends, batches, batched_calls, last_batch
    with _mutex:
        write_transactions = appends = batches = batched_calls = last_batch = 0
