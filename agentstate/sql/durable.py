"""When a SQLite write is durable: its one sync, made by the writer after it released the writer lock.

Connections run ``synchronous=NORMAL``, so SQLite's COMMIT writes the WAL frames without syncing them (its
checkpoints still sync the WAL before and the main file after, and a reused WAL's header). Right after
the COMMIT, still under the lock and on the connection still open, the writer opens the file holding the
commit (:func:`commit_file`); it releases the lock, then :func:`settle` fdatasyncs that file, and only
then does the write return. The syncs of writers in different processes so overlap the next writer's
transaction, and the kernel folds concurrent ones into one journal commit. A sync that fails is the
outcome unknown: the write is committed and visible, but the disk did not confirm it. docs/format.md,
"Durability point".
"""

from __future__ import annotations

import errno

from ..errors import StorageError
from ..state import fileio


def commit_file(files: fileio.OsFiles, path: str) -> int | OSError:
    """A descriptor of the file holding the commit just made on ``path`` (the database), or the error.

    The WAL. Opened under the writer lock with the committing connection open, it is the live one:
    SQLite deletes it only when the last connection closes, after a checkpoint that made its frames
    durable in the main file. The main file if there is no WAL (a journal mode another program set)."""
    try:
        return files.open_sync(path + "-wal")
    except FileNotFoundError:
        pass
    except OSError as e:
        return e
    try:
        return files.open_sync(path)
    except OSError as e:
        return e


def settle(files: fileio.OsFiles, fd: int | OSError, path: str, operation: str) -> None:
    """``fdatasync`` of ``fd`` (from :func:`commit_file`), then close it; the write is then durable.

    A failure (or the error commit_file returned) raises StorageError with outcome "unknown"."""
    if isinstance(fd, int):
        try:
            files.datasync(fd)
            return
        except OSError as err:
            e = err
        finally:
            files.close(fd)
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
