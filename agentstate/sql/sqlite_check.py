"""Doctor's checks of the SQLite database: opens ``agentstate.db`` read-only, writes nothing (split from
engine.py, which runs the writes)."""

from __future__ import annotations

import os
import stat
from typing import Any

from ..errors import AgentStateError, StorageError
from .engine import BUSY_BACKSTOP, DB_NAME, LOCK_SUFFIX
from .media import disk_full, frozen_or_error
from .schema import SCHEMA_VERSION

__all__ = ["check_sqlite"]


def check_sqlite(directory: str) -> list[dict[str, Any]]:
    """Doctor's findings for ``<directory>/agentstate.db``; opens it without writing anything."""
    import sqlite3

    path = os.path.join(directory, DB_NAME)
    findings: list[dict[str, Any]] = []

    def add(check: str, ok: bool, detail: str, **extra: Any) -> None:
        findings.append({"check": check, "ok": ok, "detail": detail, **extra})

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        add("database", True, f"{path} does not exist yet (no sessions or responses stored)", path=path)
        _check_lock(directory, add)
        return findings
    if not stat.S_ISREG(st.st_mode):
        add("database", False, f"{path} is not a regular file", path=path)
        return findings
    mode = st.st_mode & 0o777
    if mode & 0o077:
        add("database permissions", False, f"{path} is readable by others (mode {mode:o}); chmod 600 it", path=path)
    def unreadable(e: Exception, what: str) -> None:
        free = disk_full(e, directory)
        if free is not None:  # not damage: SQLite cannot size its -shm file on a full disk
            add("database", False, f"{path}: cannot be read while the disk is full ({free} bytes free in "
                f"{directory}; SQLite: {e}); free some disk space", path=path, disk_full=True)
        else:
            add("database", False, f"{path}: {what}{e}", path=path)

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_BACKSTOP, isolation_level=None)
    except sqlite3.Error as e:
        unreadable(e, "cannot open: ")
        return findings
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            try:
                frozen = frozen_or_error(e, path)  # a read-only filesystem: the file read as immutable
            except StorageError as ro:  # ... unless its WAL holds writes: not damage either
                add("database", False, ro.message.removesuffix("; nothing was changed"), path=path, read_only=True)
                return findings
            if frozen is None:
                unreadable(e, "")
                return findings
            conn.close()
            conn = frozen
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error as e2:
                unreadable(e2, "")
                return findings
        if version > SCHEMA_VERSION:
            add("database schema", False, f"{path}: schema version {version} is newer than this agentstate "
                f"({SCHEMA_VERSION}); upgrade agentstate", path=path, schema_version=version)
        elif version < SCHEMA_VERSION and version != 0:
            add("database schema", True, f"{path}: schema version {version}, migrated to {SCHEMA_VERSION} on the "
                "next write", path=path, schema_version=version)
        else:
            add("database schema", True, f"{path}: schema version {version}", path=path, schema_version=version)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        except sqlite3.Error as e:
            add("database integrity", False, f"{path}: {e}", path=path)
        else:
            if rows == ["ok"] and not fk:
                add("database integrity", True, f"{path}: integrity_check ok", path=path)
            else:
                problems = [r for r in rows if r != "ok"] + [f"foreign key: {r}" for r in fk]
                add("database integrity", False, f"{path}: {len(problems)} problem(s): {'; '.join(problems[:5])}",
                    path=path, problems=problems[:100])
        if version >= 1:
            _check_counts(conn, path, add)
    finally:
        conn.close()
    _check_lock(directory, add)
    return findings


def _check_counts(conn: Any, path: str, add: Any) -> None:
    """session_counts (list()'s total) must equal the sessions each tenant really has."""
    import sqlite3

    try:
        real = dict(conn.execute("SELECT tenant, COUNT(*) FROM sessions GROUP BY tenant").fetchall())
        kept = {t: n for t, n in conn.execute("SELECT tenant, sessions FROM session_counts").fetchall() if n}
    except sqlite3.Error as e:
        add("session counts", False, f"{path}: {e}", path=path)
        return
    wrong = sorted(t for t in set(real) | set(kept) if real.get(t, 0) != kept.get(t, 0))
    if wrong:
        add("session counts", False, f"{path}: the kept session count differs from the sessions of tenant(s) "
            f"{', '.join(wrong[:5])}", path=path, tenants=wrong[:100])
    else:
        add("session counts", True, f"{path}: {sum(real.values())} session(s) in {len(real)} tenant(s)", path=path)


def _check_lock(directory: str, add: Any) -> None:
    from ..state.lock import Lock

    lock_path = os.path.join(directory, DB_NAME + LOCK_SUFFIX)
    if not os.path.lexists(lock_path):
        add("database lock", True, "free")
        return
    try:
        status = Lock(lock_path).status()
    except (OSError, AgentStateError) as e:
        add("database lock", False, f"{lock_path}: {e}")
        return
    holder = status.get("holder")
    if status.get("held"):
        ok = not status.get("stale")
        who = _describe(holder)
        add("database lock", ok, f"held by {who}" + (" and looks stale" if not ok else ""))
    elif status.get("last_holder"):
        add("database lock", True, f"free (a stale holder record of {_describe(status['last_holder'])} is left; "
            "the next writer overwrites it)")
    else:
        add("database lock", True, "free")


def _describe(holder: Any) -> str:
    if not holder:
        return "an unknown holder"
    if isinstance(holder, dict):
        return f"PID {holder.get('pid')} on {holder.get('hostname') or holder.get('host')} ({holder.get('operation')})"
    return str(holder)
