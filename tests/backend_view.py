"""What a store holds, seen from outside, for contract tests that run on every backend (``store_target``).

``stored(target)`` -> (current version's bytes, previous version's bytes), None where absent: state.json
and state.json.bak in a directory; ``state_documents.data`` and ``.previous`` in a PostgreSQL schema.
``fingerprint(target)``: everything stored, to assert that a call changed nothing (files with their
mtimes and modes; the PostgreSQL rows with their update time). ``put(target, current, previous)`` writes
raw bytes (damage for recovery tests). They read the backend directly, never through agentstate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_KEEP = object()


def is_pg(target: Any) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def _pg(target: str):
    import psycopg

    from agentstate.sql.pg import split_url

    conninfo, schema = split_url(target)
    conn = psycopg.connect(conninfo, autocommit=True)
    return conn, schema


def _pg_row(target: str) -> tuple | None:
    from psycopg import errors

    conn, schema = _pg(target)
    with conn:
        try:
            row = conn.execute(
                f'SELECT data, previous, updated_at FROM "{schema}".state_documents WHERE name = %s', ("state",)
            ).fetchone()
        except errors.UndefinedTable:
            return None
    return None if row is None else (_b(row[0]), _b(row[1]), row[2])


def _b(v: Any) -> bytes | None:
    return None if v is None else bytes(v)


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


def stored(target: Any) -> tuple[bytes | None, bytes | None]:
    if is_pg(target):
        row = _pg_row(target)
        return (None, None) if row is None else (row[0], row[1])
    d = Path(target)
    return _read(d / "state.json"), _read(d / "state.json.bak")


def fingerprint(target: Any) -> Any:
    if is_pg(target):
        return _pg_row(target)
    d = Path(target)
    if not d.exists():
        return {}
    out = {}
    for p in sorted(d.iterdir()):
        if p.name.endswith(".lock"):
            continue
        s = p.lstat()
        out[p.name] = (p.read_bytes() if p.is_file() else None, s.st_mtime_ns, s.st_mode)
    return out


def put(target: Any, current: Any = _KEEP, previous: Any = _KEEP) -> None:
    """Store raw bytes as the current and/or previous version (None: absent)."""
    if is_pg(target):
        import agentstate

        with agentstate.StateStore(target).transaction():  # the schema exists (created by the first write)
            pass
        conn, schema = _pg(target)
        with conn:
            for column, value in (("data", current), ("previous", previous)):
                if value is not _KEEP:
                    conn.execute(f'UPDATE "{schema}".state_documents SET {column} = %s WHERE name = %s',
                                 (value, "state"))
        return
    d = Path(target)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, value in (("state.json", current), ("state.json.bak", previous)):
        if value is _KEEP:
            continue
        if value is None:
            try:
                os.unlink(d / name)
            except FileNotFoundError:
                pass
        else:
            (d / name).write_bytes(value)
