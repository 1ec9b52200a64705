"""What the medium under ``agentstate.db`` allows, for SQLite's errors that hide it: a full disk (ENOSPC met
while sizing ``agentstate.db-shm`` is reported as an I/O error) and a read-only filesystem (WAL mode
cannot create ``-wal``/``-shm`` there, so even a read fails to open)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from ..errors import StorageError
from ..logs import getLogger

log = getLogger("agentstate.sql")

LOW_SPACE = 1 << 20  # bytes: with fewer free, an I/O error of SQLite's is taken for a full disk


def _name(e: BaseException) -> str:
    return getattr(e, "sqlite_errorname", "") or ""


def disk_full(e: BaseException, directory: str) -> int | None:
    """For SQLite's error ``e``: the bytes free to this user on ``directory``'s filesystem if ``e`` is an
    I/O error and fewer than LOW_SPACE are free, else None (also when unknown). SQLite reports a full disk
    met while sizing its ``-shm`` file, or growing the WAL on some filesystems, as a plain I/O error; this
    tells the two apart for the message."""
    if not _name(e).startswith("SQLITE_IOERR"):
        return None
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    return free if free < LOW_SPACE else None


def read_only_fs(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def wal_pending(path: str) -> bool:
    """Whether ``path``-wal holds frames (writes a checkpoint has not folded into the file yet, maybe)."""
    try:
        return os.stat(path + "-wal").st_size > 0
    except OSError:
        return False


def frozen_or_error(e: Exception, path: str) -> Any:
    """For a read whose open failed with ``e``: on a read-only filesystem without a pending WAL, a
    connection that reads the file as immutable (no -wal/-shm: the file is the whole committed state,
    and nobody can change it there); on one with a pending WAL, StorageError (EROFS) saying what to do
    (reading the file alone would miss those writes); else None (``e`` is the news)."""
    import sqlite3

    if not _name(e).startswith("SQLITE_CANTOPEN"):
        return None
    directory = os.path.dirname(path) or "."
    if not read_only_fs(directory):
        return None
    if wal_pending(path):
        raise StorageError(
            f"cannot read {path}: it is on a read-only filesystem and {os.path.basename(path)}-wal holds "
            "writes not yet folded into it; nothing was changed",
            hint="open the store once where it is writable (any agentstate command that reads it folds them in)",
            errno="EROFS", path=path)
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?immutable=1", uri=True,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error:
        return None
    log.info("%s is on a read-only filesystem: read as an immutable file", path)
    return conn
