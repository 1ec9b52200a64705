"""The SQLite engine: ``<store dir>/agentstate.db``.

* The file is created 0600 (the directory 0700), never through a symlink. Pragmas: journal_mode=WAL
  (persistent, set once under the writer lock), synchronous=NORMAL and foreign_keys=ON per connection;
  a write syncs the WAL itself once it released the writer lock, and returns only then (agentstate.sql.durable).
* Writers serialize through agentstate's own lock (:class:`agentstate.lock.Lock`) on
  ``agentstate.db.lock`` and only then ``BEGIN IMMEDIATE``, so SQLite's sleeping busy handler never
  decides who goes next; busy_timeout is only a backstop for readers and for programs other than
  agentstate. Readers take no lock: a deferred ``BEGIN`` reads one WAL snapshot.
* Each ``write()`` is one transaction: committed when the block ends, rolled back on any exception.
  sqlite3 errors become StorageError (disk full, I/O error, busy), StateCorrupted (not a database,
  malformed) or FormatTooNew (a newer schema), each with one clear line.
* Connections come from a small pool: each read() or write() takes one (an idle one, else a new one)
  and gives it back when it ends; at most POOL_IDLE stay open idle, so the descriptors held are
  bounded whatever the thread churn (AgentStateSession runs each call in a fresh worker thread). A
  forked child never touches its parent's. After a failed write the connection is closed, so SQLite
  drops whatever the failure left in memory.
* A failed COMMIT (e.g. ENOSPC writing the WAL, or EIO syncing a reused WAL's header) may leave the
  transaction's frames in the WAL past the last published one: they are written over by a no-op commit on
  the SAME connection, before it is closed (closing the last connection checkpoints, and a failed checkpoint
  leaves a WAL that the next opener re-indexes from the file: it would find those frames). If that fails
  too, the error says the outcome is unknown (``outcome="unknown"``, as a failed directory fsync of the
  state document does).
"""

from __future__ import annotations

import errno as errno_mod
import os
import stat
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..duration import parse_duration
from ..errors import AgentStateError, FormatTooNew, StateCorrupted, StorageError
from ..logs import DEBUG, getLogger
from ..state import fileio, signals
from ..state.lock_pool import LockPool
from . import EmptyTx, Stmt, durable, stats
from .media import disk_full, frozen_or_error
from .schema import MIGRATIONS, PAGE_SIZE, SCHEMA_VERSION, file_pragmas, too_new

log = getLogger("agentstate.sql")

DB_NAME = "agentstate.db"
LOCK_SUFFIX = ".lock"
BUSY_BACKSTOP = 10.0  # seconds; only reached when a program other than agentstate holds SQLite's lock
POOL_IDLE = 4  # idle connections kept open per Database (more are closed when given back)
LOCKS_IDLE = 2  # idle writer Locks (each an open lock-file descriptor) kept per Database
_ABANDONED: list[Any] = []  # connections inherited across fork: never used, never closed, never freed
_group_run: Any = None  # agentstate.sql.group.run, once a grouped write needed it
_pid = [os.getpid()]  # this process's PID, kept (os.getpid() is a system call), updated in a forked child
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


class Tx:
    """A transaction's statement runner (see the package docstring)."""

    __slots__ = ("_conn",)
    dialect = "sqlite"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def run(self, stmt: Stmt, **params: Any) -> list[tuple]:
        return self._conn.execute(stmt.sqlite, params).fetchall()

    def one(self, stmt: Stmt, **params: Any) -> tuple | None:
        return self._conn.execute(stmt.sqlite, params).fetchone()

    def value(self, stmt: Stmt, **params: Any) -> Any:
        row = self._conn.execute(stmt.sqlite, params).fetchone()
        return None if row is None else row[0]

    def execute(self, stmt: Stmt, **params: Any) -> int:
        return self._conn.execute(stmt.sqlite, params).rowcount

    def many(self, stmt: Stmt, rows: Iterable[dict[str, Any]]) -> None:
        self._conn.executemany(stmt.sqlite, rows)

    # one call's statements inside a group commit (agentstate.sql.group)
    def savepoint(self) -> None:
        self._conn.execute("SAVEPOINT call")

    def release_savepoint(self) -> None:
        self._conn.execute("RELEASE call")

    def rollback_to_savepoint(self) -> bool:
        """Undo the statements since savepoint(); False if the transaction itself is gone (SQLite rolled
        it all back, e.g. after a disk-full or I/O error) or cannot be rolled back to it."""
        import sqlite3

        try:
            if not self._conn.in_transaction:
                return False
            self._conn.execute("ROLLBACK TO call")
            self._conn.execute("RELEASE call")
            return True
        except sqlite3.Error:
            return False


def storage_error(e: BaseException, path: str, action: str) -> AgentStateError:
    """One clear error for a sqlite3 exception (or OSError) met while doing ``action`` on ``path``."""
    if isinstance(e, OSError):
        return fileio.io_error(action, path, e)
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    base = name.split("_")[0:2]
    primary = "_".join(base) if name.startswith("SQLITE_") else name
    if primary in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return StateCorrupted(
            f"{path} is damaged ({text}); nothing was changed",
            hint="run `agentstate doctor`; restore the database from a backup if it reports damage",
            path=path,
        )
    hints = {
        "SQLITE_FULL": ("ENOSPC", "free some disk space and retry"),
        "SQLITE_IOERR": ("EIO", "the disk reported an I/O error; check it, then run `agentstate doctor`"),
        "SQLITE_BUSY": (None, "a program other than agentstate holds the database's write lock; stop it"),
        "SQLITE_LOCKED": (None, "a program other than agentstate holds the database's write lock; stop it"),
        "SQLITE_READONLY": ("EROFS", "check the permissions of the store directory and its files"),
        "SQLITE_CANTOPEN": ("EACCES", "check that the store directory exists and is writable"),
        "SQLITE_PERM": ("EACCES", "check the permissions of the store directory and its files"),
    }
    directory = os.path.dirname(path) or "."
    free = disk_full(e, directory)
    if free is not None:  # SQLite reports ENOSPC met while sizing agentstate.db-shm (or the WAL) as EIO
        return StorageError(
            f"cannot {action} {path}: the disk is full ({free} bytes free in {directory}; SQLite: {text}); "
            "nothing was changed", hint="free some disk space and retry", errno="ENOSPC", path=path,
            sqlite=name or None)
    code, hint = hints.get(primary, (None, None))
    if primary in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        text = "the database is busy"
    return StorageError(
        f"cannot {action} {path}: {text}; nothing was changed", hint=hint, errno=code, path=path, sqlite=name or None
    )


class Database:
    """The SQLite database of one store directory. Thread-safe (a pool of connections); fork-safe."""

    dialect = "sqlite"

    def __init__(self, directory: str, *, lock_timeout: float | str | None = None,
                 files: fileio.OsFiles | None = None) -> None:
        self.directory = directory
        self.path = os.path.join(directory, DB_NAME)
        self.lock_path = self.path + LOCK_SUFFIX
        if lock_timeout is None:
            lock_timeout = os.environ.get("AGENTSTATE_LOCK_TIMEOUT") or 30.0
        self.lock_timeout = parse_duration(lock_timeout, "lock timeout")
        self.files = files or fileio.OsFiles()
        self._idle: list[Any] = []  # connections open and free to take
        self._all: list[Any] = []  # every connection open (idle or taken)
        self._all_lock = threading.Lock()
        self._frozen: set[Any] = set()  # connections reading an immutable file (a read-only filesystem)
        self._wals = durable.KeptWals()  # each write connection's WAL descriptor, kept with it
        self._pid = os.getpid()
        self._wal_known = False
        self._ready = False  # this process found the schema current under the lock (one PRAGMA per write since)
        self._dir_ok = False  # the store directory exists (checked once)
        # Idle writer Locks, each keeping its lock-file descriptor open between writes: a write takes one
        # (or makes one), gives it back after the release; closed by close() or when this object is collected.
        self._locks = LockPool(self.lock_path, self.files, LOCKS_IDLE)
        weakref.finalize(self, self._locks.close)
        weakref.finalize(self, self._wals.close_all)

    def __repr__(self) -> str:
        return f"Database({self.path!r})"

    # -- connections -------------------------------------------------------------------------------------

    def _forget_after_fork(self) -> None:
        with self._all_lock:
            _ABANDONED.extend(self._all)
            self._all = []
            self._idle = []
            self._frozen = set()
            self._wals.close_all()  # the parent's connections': this process's copies of their descriptors
        self._pid = os.getpid()
        self._wal_known = self._ready = False

    def _take(self, create: bool) -> Any:
        """A connection for one read() or write() (give it back with _give, or _discard it); None when
        the file does not exist and ``create`` is false."""
        if _pid[0] != self._pid:
            self._forget_after_fork()
        with self._all_lock:
            if self._idle:
                return self._idle.pop()
        import sqlite3

        if create:
            self._create_file()
        else:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                return None
            except OSError as e:
                raise fileio.io_error("open", self.path, e) from None
            if not stat.S_ISREG(st.st_mode):
                raise self._not_regular(st)
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_BACKSTOP, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise storage_error(e, self.path, "open") from None
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # a write syncs the WAL itself (durable.py)
            conn.execute("PRAGMA foreign_keys=ON")
            file_pragmas(conn)
        except sqlite3.Error as e:
            conn.close()
            if create:
                raise storage_error(e, self.path, "open") from None
            conn = frozen_or_error(e, self.path)  # a read on a read-only filesystem (media.py), or its error
            if conn is None:
                raise storage_error(e, self.path, "open") from None
            self._frozen.add(conn)
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _give(self, conn: Any) -> None:
        """Back to the pool (outside any transaction), or closed if POOL_IDLE are idle already."""
        if _pid[0] != self._pid:
            return  # a connection of the parent's: never touched
        with self._all_lock:
            if conn in self._all and len(self._idle) < POOL_IDLE and conn not in self._frozen:
                self._idle.append(conn)
                return
        self._discard(conn)  # a frozen one is never pooled: the filesystem may be writable by the next read

    def _not_regular(self, st: os.stat_result) -> StorageError:
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        return StorageError(f"{self.path} is {what}; refusing to open it", hint="move it away", path=self.path)

    def _create_file(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise fileio.io_error("open", self.path, e) from None
        else:
            if not stat.S_ISREG(st.st_mode):
                raise self._not_regular(st)
            return
        fileio.ensure_dir(self.files, self.directory)
        try:
            fd = self.files.open_rw(self.path, 0o600, create=True)
        except OSError as e:
            if e.errno == errno_mod.ELOOP:
                raise StorageError(f"{self.path} is a symlink; refusing to open it", path=self.path) from None
            raise fileio.io_error("create", self.path, e) from None
        self.files.close(fd)

    def _discard(self, conn: Any) -> None:
        """Close a taken connection (after a failure: SQLite forgets whatever it held)."""
        if conn is None or _pid[0] != self._pid:
            return
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)
            self._frozen.discard(conn)
            self._wals.close(conn)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing after a failure; the failure is what gets reported
            log.debug("closing %s after a failure failed too", self.path, exc_info=True)

    def close(self) -> None:
        """Close every connection this object opened (in this process)."""
        if _pid[0] != self._pid:
            self._forget_after_fork()
            return
        self._locks.close()
        with self._all_lock:
            conns, self._all, self._idle, self._frozen = self._all, [], [], set()
            self._wals.close_all()
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                log.debug("closing %s failed", self.path, exc_info=True)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the lock ----------------------------------------------------------------------------------------

    def lock(self) -> Any:
        """An unacquired writer Lock of this database (one that keeps its descriptor between writes)."""
        return self._locks.take()

    def _new_lock(self, lock_timeout: float | str | None) -> tuple[Any, float]:
        """The writer lock (not acquired yet) and the timeout to acquire it with; the store directory
        is made once."""
        timeout = self.lock_timeout if lock_timeout is None else parse_duration(lock_timeout, "lock timeout")
        if not self._dir_ok:
            fileio.ensure_dir(self.files, self.directory)
            self._dir_ok = True
        return self.lock(), timeout

    def _unlock(self, lk: Any) -> None:
        with signals.critical(outcome=None):  # a signal never cuts a release short
            lk.release()
        self._locks.give(lk)

    @contextmanager
    def _locked(self, operation: str, lock_timeout: float | str | None) -> Iterator[None]:
        lk, timeout = self._new_lock(lock_timeout)
        try:
            try:  # acquire inside: a signal right after it returns still ends in release() (a no-op if not held)
                lk.acquire(timeout, operation)  # StateLocked, or StorageError naming the problem (never a bare OSError)
                yield
            finally:
                self._unlock(lk)
        except KeyboardInterrupt:
            signals.release_cut_short(lk)  # a signal at the start of the finally above, before its release
            raise

    # -- schema ------------------------------------------------------------------------------------------

    def _version(self, conn: Any) -> int:
        return conn.execute("PRAGMA user_version").fetchone()[0]

    def _prepare_locked(self, conn: Any) -> None:
        """Under the writer lock: refuse a newer schema, switch to WAL once, run pending migrations."""
        version = self._version(conn)
        if version > SCHEMA_VERSION:
            raise too_new(version, self.path)
        if not self._wal_known:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                if version == 0 and conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                    conn.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")  # a new file: before WAL writes its header
                    file_pragmas(conn, PAGE_SIZE)
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"cannot switch {self.path} to WAL mode (got {mode!r})", path=self.path)
            self._wal_known = True
        import sqlite3

        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version]["sqlite"]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1:d}")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:  # its frames must not come back either (see _bury_failed_commit)
                if not self._bury_failed_commit(conn):
                    raise self._unknown(e, "migrate") from None
                raise
            durable.sync_now(self.files, self.path, "migrate")
            version += 1
            log.info("migrated %s to schema version %d", self.path, version)

    def _begin(self, conn: Any) -> None:
        """Under the writer lock: ``BEGIN IMMEDIATE`` on a current schema. The schema version is read once,
        inside the transaction; only the first write of this Database (or after the file changed under it:
        replaced by an older one, migrated by a newer agentstate) prepares it outside one first."""
        if not self._ready:
            self._prepare_locked(conn)
        conn.execute("BEGIN IMMEDIATE")
        version = self._version(conn)
        if version != SCHEMA_VERSION:
            if version > SCHEMA_VERSION:  # a newer agentstate migrated it in between
                raise too_new(version, self.path)
            conn.execute("ROLLBACK")  # an older file put in its place: prepare it as a first write does
            self._wal_known = False
            self._prepare_locked(conn)
            conn.execute("BEGIN IMMEDIATE")
            version = self._version(conn)
            if version != SCHEMA_VERSION:
                raise too_new(version, self.path)
        self._ready = True

    def migrate(self, lock_timeout: float | str | None = None) -> int:
        """Bring the schema up to date now (it also happens on first write); returns the version."""
        import sqlite3

        conn = None
        try:
            with self._locked("migrate", lock_timeout):
                conn = self._take(create=True)
                self._prepare_locked(conn)
                version = self._version(conn)
        except sqlite3.Error as e:
            self._discard(conn)
            raise storage_error(e, self.path, "migrate") from None
        except BaseException:
            self._discard(conn)
            raise
        self._give(conn)
        return version

    # -- transactions ------------------------------------------------------------------------------------

    def grouped(self, operation: str, work: Any, lock_timeout: float | str | None = None) -> Any:
        """``work(tx)`` committed in a write transaction that concurrent grouped calls of this process may
        share (group commit, agentstate.sql.group); its result once durable, or its own error."""
        global _group_run
        if _group_run is None:
            from .group import run as _group_run
        return _group_run(self, operation, work, lock_timeout)

    @contextmanager
    def write(self, operation: str = "write", lock_timeout: float | str | None = None, *,
              done: list[Any] | None = None) -> Iterator[Tx]:
        """Writer lock, then ``BEGIN IMMEDIATE``; commit at the end of the block, roll back on an exception.

        The COMMIT does not sync (synchronous=NORMAL): the lock is released, then the WAL is synced
        (agentstate.sql.durable), and only then does the block's caller go on. A failed sync is StorageError with
        outcome "unknown".

        SIGINT/SIGTERM (agentstate.state.signals): before the COMMIT the transaction is abandoned (rolled back);
        from the COMMIT to the end of the sync the signal is held, so the write is finished and durable;
        either way the lock is released and Interrupted (exit 130/143) says which: a signal that arrives
        after that is reported as after a completed write."""
        import sqlite3

        locked = committed = False
        lk = None
        with signals.guarded():
            try:
                lk, timeout = self._new_lock(lock_timeout)
                try:  # acquire inside: a signal right after it returns still ends in release() (a no-op if not held)
                    lk.acquire(timeout, operation)  # StateLocked, or StorageError (never a bare OSError)
                    locked = True
                    conn = None
                    committing = False
                    try:
                        conn = self._take(create=True)
                        self._begin(conn)
                        yield Tx(conn)
                        committing = True
                        with signals.critical():  # a signal waits until the write is durable (or failed)
                            conn.execute("COMMIT")
                            committed = True
                            wal, kept = self._wals.target(conn, self.files, self.path)  # under the lock
                            try:
                                lk.release()  # the next writer goes on while this one syncs
                            finally:
                                try:
                                    durable.settle(self.files, wal, self.path, operation, keep=kept)
                                except BaseException:
                                    if kept:  # settle closed it
                                        self._wals.forget(conn)
                                    raise
                            if done is not None:
                                done.append(True)
                            stats.committed()
                            signals.note_committed("the %s is committed to %s", operation, self.path)  # formatted if needed
                    except sqlite3.Error as e:
                        if committing and not self._bury_failed_commit(conn):
                            raise self._unknown(e, operation) from None
                        self._abort(conn)
                        raise storage_error(e, self.path, f"write ({operation})") from None
                    except BaseException:
                        if not committed:
                            self._abort(conn)
                        else:  # a signal right after the COMMIT: the connection is fine
                            self._give(conn)
                        raise
                    self._give(conn)
                finally:
                    self._unlock(lk)
            except KeyboardInterrupt as e:
                signals.release_cut_short(lk)  # a signal at the start of the finally above, before its release
                what = f"the {operation} is committed to {self.path}"
                committed = committed or getattr(e, "outcome", None) == "committed"
                raise signals.interrupted(e, operation, committed=what if committed else None,
                                          locked=locked) from None

    def _unknown(self, e: BaseException, operation: str) -> StorageError:
        """The COMMIT failed and its frames could not be written over: they may come back (see _bury...)."""
        err = storage_error(e, self.path, f"write ({operation})")
        text = err.message.removesuffix("; nothing was changed")
        return StorageError(
            f"{text}; the outcome is unknown (the failed commit could not be written over, so it may still "
            "appear); run `agentstate doctor`",
            hint=err.hint, errno=err.details.get("errno"), path=self.path, sqlite=err.details.get("sqlite"),
            outcome="unknown",
        )

    def _bury_failed_commit(self, conn: Any) -> bool:
        """After a COMMIT failed (e.g. ENOSPC writing the WAL), still under the writer lock, on the same
        connection (closed afterwards); True if done, False if the outcome is unknown.

        SQLite publishes a commit in the WAL index only after writing all its frames, so nobody sees the failed
        transaction; but its frames, commit marker included, may sit in the WAL past the last
        published frame. Whoever next rebuilds the index from the WAL file (the first opener after
        the last connection closed with a failed checkpoint, or after every process died) would find
        them: a write reported as failed would appear. A no-op transaction (user_version rewritten as
        it is) writes over them first; it must run before this connection closes, because closing the
        last connection runs a checkpoint which, failing, leaves exactly that WAL behind.
        """
        import sqlite3

        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA user_version = {self._version(conn):d}")
            conn.execute("COMMIT")
            durable.sync_now(self.files, self.path, "write")
        except (sqlite3.Error, StorageError):
            log.warning("after a failed commit, %s could not be written over either; run `agentstate doctor`",
                        self.path, exc_info=log.isEnabledFor(DEBUG))
            self._abort(conn)
            return False
        return True

    def _abort(self, conn: Any) -> None:
        """Roll back, and close the connection (SQLite forgets the failure; the next write takes another)."""
        import sqlite3

        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback of %s failed", self.path, exc_info=True)
        self._discard(conn)

    @contextmanager
    def read(self) -> Iterator[Tx | EmptyTx]:
        """A consistent snapshot, no lock. A database not created yet reads as empty."""
        import sqlite3

        conn = None
        try:
            conn = self._take(create=False)
            if conn is None:
                yield EmptyTx("sqlite")
                return
            conn.execute("BEGIN")
            version = self._version(conn)
            if version != SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                if version > SCHEMA_VERSION:
                    raise too_new(version, self.path)
                if version == 0:
                    yield EmptyTx("sqlite")
                    return
                self.migrate()
                conn.execute("BEGIN")
            try:
                yield Tx(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            self._discard(conn)
            conn = None
            raise storage_error(e, self.path, "read") from None
        finally:
            if conn is not None:
                self._give(conn)

    # -- checks ------------------------------------------------------------------------------------------

    def check(self) -> list[dict[str, Any]]:
        return check_sqlite(self.directory)


def check_sqlite(directory: str) -> list[dict[str, Any]]:
    """Doctor's findings for ``<directory>/agentstate.db`` (agentstate.sql.sqlite_check)."""
    from .sqlite_check import check_sqlite as check

    return check(directory)


__all__ = ["DB_NAME", "Database", "FormatTooNew", "Tx", "check_sqlite", "storage_error"]
