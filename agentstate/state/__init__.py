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

_EXPORTS = {
    "State": "store",
    "StateStore": "store",
    "PgStateStore": "pgstore",
    "open_state": "open",
    "Plan": "planner",
    "apply": "planner",
    "plan": "planner",
    "remove": "planner",
    "Lock": "lock",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
