"""When a SQLite write is durable: its one sync, made by the writer after it released the writer lock.

Connections run ``synchronous=NORMAL``, so SQLite's COMMIT writes the WAL frames without syncing them (its
checkpoints still sync the WAL before and the main file after, and a reused WAL's header). Right after
the COMMIT, still under the lock and on the connection still open, the writer takes a descriptor of the
file holding the commit: the WAL's, which its connection keeps (:class:`KeptWals`), or one that
:func:`commit_file` opens; it releases the lock, then :func:`settle` fdatasyncs that file, and only
then does the write return. The syncs of writers in different processes so overlap the next writer's
transaction, and the kernel folds concurrent ones into one journal commit. A sync that fails is the
outcome unknown: the write is committed and visible, but the disk did not confirm it. docs/format.md,
"Durability point".
"""

from __future__ import annotations

import errno
from typing import Any

from ..errors import StorageError
from ..state import fileio


def open_wal(files: fileio.OsFiles, path: str) -> int | OSError | None:
    """A descriptor of ``path``'s WAL, None if there is none, or the error. Opened under the writer lock
    with a connection open, it is the live WAL for as long as that connection stays open: SQLite deletes
    the WAL (or a new one can replace it) only once the last connection closed, after a checkpoint made
    its frames durable in the main file. So a writer may keep it with its connection (the engine does,
    opened at the connection's first commit and closed with it, or after a failed sync)."""
    try:
        return files.open_sync(path + "-wal")
    except FileNotFoundError:
        return None
    except OSError as e:
        return e


class KeptWals:
    """The WAL descriptor each write connection keeps (see :func:`open_wal`): opened at its first commit,
    closed with the connection, or by a failed sync (the next commit opens it afresh). One open and one
    close less per write. Where there is no WAL, the main file is opened per write and not kept."""

    def __init__(self) -> None:
        self._fds: dict[Any, tuple[fileio.OsFiles, int]] = {}  # connection -> (its file layer, descriptor)

    def target(self, conn: Any, files: fileio.OsFiles, path: str) -> tuple[int | OSError, bool]:
        """Right after ``conn``'s COMMIT, under the writer lock: what to :func:`settle` and its ``keep``."""
        kept = self._fds.get(conn)
        if kept is not None:
            if kept[0] is files:
                return kept[1], True
            self.close(conn)  # opened through another file layer (a test swapped it): not this one's
        fd = open_wal(files, path)
        if isinstance(fd, int):
            self._fds[conn] = (files, fd)
            return fd, True
        return (_main_file(files, path) if fd is None else fd), False

    def forget(self, conn: Any) -> None:
        """After a failed sync, which closed the descriptor."""
        self._fds.pop(conn, None)

    def close(self, conn: Any) -> None:
        kept = self._fds.pop(conn, None)
        if kept is not None:
            try:
                kept[0].close(kept[1])
            except OSError:
                pass  # closing only: nothing was written through it

    def close_all(self) -> None:
        for conn in list(self._fds):
            self.close(conn)


def commit_file(files: fileio.OsFiles, path: str) -> int | OSError:
    """A descriptor of the file holding the commit just made on ``path`` (the database), or the error.

    The WAL. Opened under the writer lock with the committing connection open, it is the live one:
    SQLite deletes it only when the last connection closes, after a checkpoint that made its frames
    durable in the main file. The main file if there is no WAL (a journal mode another program set)."""
    wal = open_wal(files, path)
    return _main_file(files, path) if wal is None else wal


def _main_file(files: fileio.OsFiles, path: str) -> int | OSError:
    """The database file itself, where there is no WAL; or the error."""
    try:
        return files.open_sync(path)
    except OSError as e:
        return e


def settle(files: fileio.OsFiles, fd: int | OSError, path: str, operation: str, *, keep: bool = False) -> None:
    """``fdatasync`` of ``fd`` (from :func:`commit_file` or :meth:`KeptWals.target`), then close it (``keep``: only if the sync
    failed); the write is then durable.

    A failure (or the error given instead of a descriptor) raises StorageError with outcome "unknown"."""
    if isinstance(fd, int):
        try:
            files.datasync(fd)
        except BaseException as err:
            files.close(fd)  # a kept one too: the writer opens the WAL afresh next time
            if not isinstance(err, OSError):
                raise
            e = err
        else:
            if not keep:
                files.close(fd)
            return
    else:
        e = fd
    raise StorageError(  # as fileio.fsync_dir_failed says it for the state document
        f"cannot make the {operation} durable in {path}: {fileio.describe(e)}; the outcome is unknown (the "
        f"{operation} is committed, but the disk did not confirm that it would survive a power cut); "
        "run `agentstate doctor`", errno=errno.errorcode.get(e.errno or 0), path=path, outcome="unknown")


def sync_now(files: fileio.OsFiles, path: str, operation: str) -> None:
    """Under the writer lock: make the commit just made durable before going on (a migration, the
    no-op commit over a failed one), as :func:`settle` does it after the release."""
    settle(files, commit_file(files, path), path, operation)
