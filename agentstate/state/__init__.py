"""The state document: its store (directory and PostgreSQL), planner, codec, file protocol, lock and signals.

    store.py        StateStore: read(), transaction(), recovery, doctor checks (a directory)
    pgstore.py      PgStateStore: the same contract in a PostgreSQL row
    open.py         open_state(target): the one way from a directory or URL to a store
    planner.py      apply / plan / remove
    codec.py        the checksummed JSON format and strict JSON values
    fileio.py       the single I/O seam and the write protocol
    lock.py         the kernel-flock lock; lock_record.py its holder record; lock_fs.py the filesystem probe
    signals.py      SIGINT/SIGTERM around writes
"""

from __future__ import annotations

from .._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "State": "store",
    "StateStore": "store",
    "PgStateStore": "pgstore",
    "open_state": "open",
    "Plan": "planner",
    "apply": "planner",
    "plan": "planner",
    "remove": "planner",
    "Lock": "lock",
})
