"""The store lock: an exclusive kernel ``flock`` on a lock file, plus a holder record for people.

The kernel is the only authority. A process holds the lock exactly while it holds the flock;
the kernel releases it the instant the holder exits, however it exits. The lock file is
created once (0600, ``O_NOFOLLOW``) and never unlinked or replaced: not on release, not by
``force_unlock``, not ever while anybody may hold it, so every process locks the same inode.

The holder record (agentstate.state.lock_record: who holds it, for error messages, ``lock status`` and
doctor, never for deciding who holds the lock) is written in place after acquiring (no fsync:
after a crash nobody holds the lock anyway) and blanked before unlocking. docs/format.md
section 5 gives the layout.

Waiting: in the main thread, a blocking ``flock`` interrupted by a one-shot ``ITIMER_REAL``
(SIGALRM) at the deadline, so a release hands the lock over at once and nothing outlives the
call; elsewhere (other threads, or a program that uses SIGALRM itself), ``LOCK_NB`` attempts
with a back-off capped at 1 ms. No helper thread, and no descriptor outlives a call, except that a
Lock made with ``keep=True`` (a store's writer lock, taken again and again) keeps its descriptor open,
unlocked, between a release and its next acquire (``close()`` closes it): the next acquire skips the
open and its path lookup, and still checks that the path names the same inode once it holds the flock
(on a local filesystem by the name /proc/self/fd/N gives for it, not a stat: see Lock._unmoved).

Where flock does not work (ENOLCK, EOPNOTSUPP, EINVAL, ENOSYS), or on a filesystem whose flock
is not shared between the hosts that may mount it (``UNSHARED_FLOCK``, agentstate.state.lock_fs), the
lock refuses with one StorageError line: a store there could be written by two hosts at once.

Fork safety: a forked child closes its copies of every lock descriptor (a copy would keep the
flock alive after its parent died) and never unlocks or blanks its parent's lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import signal
import time
from collections.abc import Callable
from stat import S_ISREG
from typing import Any

from ..duration import parse_duration
from ..errors import ConflictError, NotFound, StateLocked, StorageError
from ..logs import DEBUG, INFO, WARNING, getLogger
from .fileio import OsFiles, io_error, write_all_at
from .lock_fs import UNSHARED_FLOCK, check_filesystem, names_are_local
from .lock_fs import filesystem as _filesystem
from .lock_fs import unsupported as _unsupported
from .lock_record import (
    MAX_RECORD,
    RECORD_BLOCK,
    Holder,
    blank,
    now_iso,
    padded,
    process_start,
    read_record,
    record_size,
)
from .signals import _in_main_thread, _sig

log = getLogger("agentstate.lock")

__all__ = ["DEFAULT_TIMEOUT", "RECORD_BLOCK", "UNSHARED_FLOCK", "Holder", "Lock", "check_filesystem",
           "parse_duration", "process_start"]

DEFAULT_TIMEOUT = 30.0
POLL_CAP = 0.001  # longest pause between LOCK_NB attempts when the timer cannot be used
_CONTENDED = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


# --- descriptors, and what a forked child does with them --------------------------------------------

# every lock-file descriptor this module has open -> the Lock that opened it. The owner matters: once a
# descriptor is closed its number is free, and another thread's Lock may get it at once; a retry that
# asked only "is this number still open?" would close that other Lock's descriptor (EBADF there).
_fds: dict[int, object] = {}


_pid = [os.getpid()]  # this process's PID (kept here: os.getpid() is a system call on every use)


def _after_fork_in_child() -> None:
    """A flock lives as long as any copy of its descriptor: a child keeping one would hold the lock
    after its parent died. Close them (this never unlocks: the parent keeps its lock)."""
    _pid[0] = os.getpid()
    for fd in list(_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _fds.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)



def _close(fd: int) -> None:
    """Forget, then close: closed once forgotten, even if a signal's KeyboardInterrupt comes in between
    (callers that must not leave a lock held retry while ``_fds.get(fd) is self``)."""
    try:
        _fds.pop(fd, None)
    finally:
        os.close(fd)


_INF = float("inf")


def release_held() -> int:
    """Release every lock this process still holds; how many. The CLI calls it before it reports an
    interruption that escaped a transaction's own clean-up: a signal handled at the entry of a context
    manager's ``__exit__``, before it resumed the transaction's generator, leaves that generator
    suspended with its lock held until it is garbage-collected (at interpreter shutdown, perhaps never),
    so the holder record would outlive the process."""
    n = 0
    for lk in list(_fds.values()):
        if isinstance(lk, Lock) and lk.held:
            lk.release()
            n += 1
    return n


def _fd_name(fd: int) -> str | None:
    """The path the kernel shows for descriptor ``fd`` (None without /proc)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# the C functions behind signal's (.signals._sig: ints in and out, no enums): a waiting writer calls six
_SIGALRM, _ITIMER_REAL, _SIG_BLOCK = int(signal.SIGALRM), int(signal.ITIMER_REAL), int(signal.SIG_BLOCK)
_SIG_DFL, _SIG_IGN = int(signal.SIG_DFL), int(signal.SIG_IGN)


def _try(fd: int, op: int = fcntl.LOCK_EX) -> bool:
    """One non-blocking attempt; False if someone else holds it."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in _CONTENDED:
            return False
        raise


class _Expired(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Expired


def _checkpoint() -> None:
    """Entering a Python function runs any signal handler already due (here: a late SIGALRM)."""


def _alarm_usable() -> bool:
    """The timer can interrupt a blocking flock only in the main thread (Linux sends ITIMER_REAL's
    SIGALRM to the thread-group leader), only if that thread does not block SIGALRM, and only if nobody
    else uses SIGALRM or ITIMER_REAL (we would break their timer). Every waiting writer asks, so this
    uses the C functions behind the signal module's (no enum conversions: 0.9 us where it took 1.7)."""
    return (_in_main_thread()
            and _sig.getsignal(_SIGALRM) in (_SIG_DFL, _SIG_IGN)
            and _sig.getitimer(_ITIMER_REAL) == (0.0, 0.0)
            and _SIGALRM not in _sig.pthread_sigmask(_SIG_BLOCK, ()))


def _wait(fd: int, deadline: float) -> bool:
    """Block until the kernel hands us the lock (True) or the deadline passes (False)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return _try(fd)
    if not _alarm_usable():
        pause = 0.0001
        while True:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            if _try(fd):
                return True
            if time.monotonic() >= deadline:
                return False
            pause = min(pause * 2, POLL_CAP)
    previous = _sig.signal(_SIGALRM, _on_alarm)
    try:
        try:
            _sig.setitimer(_ITIMER_REAL, max(remaining, 1e-6))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            finally:
                _sig.setitimer(_ITIMER_REAL, 0)
                _checkpoint()
            return True
        except _Expired as e:
            if e.__context__ is not None:  # it rang while another exception (Ctrl-C) was on its way out
                raise e.__context__ from None
            return _try(fd)  # the alarm may have rung just after the flock succeeded: ask again
    finally:
        _sig.signal(_SIGALRM, previous)


# --- the lock -----------------------------------------------------------------------------------------


class Lock:
    """Exclusive lock on a lock file. ``acquire(timeout, operation)`` then ``release()``, or ``with``."""

    def __init__(self, path: str | os.PathLike[str], *, files: OsFiles | None = None, keep: bool = False) -> None:
        self.path = os.fspath(path)
        self.files = files or OsFiles()
        self.holder: Holder | None = None
        self._fd: int | None = None
        self._keep = keep
        self._kept = -1  # keep=True: the descriptor kept open (unlocked, still in _fds) since the last release
        self._size = RECORD_BLOCK
        self._name: str | None = None  # /proc/self/fd/N's name for the descriptor last checked by _same_inode
        self._owner_pid = 0
        self._acquired = 0.0

    @property
    def held(self) -> bool:
        return self.holder is not None and _pid[0] == self._owner_pid

    def __enter__(self) -> Lock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _status_command(self) -> str | None:
        """The command that shows this lock: `lock status` shows both of a store's (the state document's
        and the sessions/responses database's)."""
        if os.path.basename(self.path) not in ("state.json.lock", "agentstate.db.lock"):
            return None
        return f"agentstate lock status --dir {shlex.quote(os.path.dirname(self.path) or '.')}"

    # -- acquire and release ---------------------------------------------------------------------

    def acquire(
        self,
        timeout: float | str = DEFAULT_TIMEOUT,
        operation: str = "transaction",
        on_wait: Callable[[Holder | None], None] | None = None,
    ) -> Holder:
        """Take the lock within ``timeout`` seconds (0 = one attempt) or raise StateLocked.

        ``on_wait(holder)`` is called once if the lock is busy, with the current holder record (or None).
        Other failures are StorageError."""
        if self.held:
            raise RuntimeError("lock already held by this object")
        if type(timeout) is not float or not 0 <= timeout < _INF:  # seconds already parsed skip the parser;
            timeout = parse_duration(timeout, "lock timeout")  # anything else (NaN, -1, "10s") goes through it
        start = time.monotonic()
        deadline = start + timeout
        check_filesystem(self.path)
        me = Holder.mine(operation)  # built before any wait: less to do once the lock is handed over
        waited = False
        # One try from the first open to the return: any exception on the way (an OSError, or a signal's
        # KeyboardInterrupt at any bytecode: in the wait, right after the flock, while the record is
        # written, in the log lines) leaves nothing behind. ``fd`` is the descriptor this call holds and
        # has not closed (-1: none); ``written`` is set before the record is written, so the record is
        # blanked whenever it may be ours; a lock already handed over to this object is released. So an
        # acquire that raises never leaves the lock held, in this process or any other.
        fd, size, written = -1, RECORD_BLOCK, False
        try:
            while True:
                kept = self._take_kept() if self._kept >= 0 else -1
                fd = kept if kept >= 0 else self._open(create=True)
                if not self._flock(fd, fcntl.LOCK_EX):
                    if not waited:
                        waited = True
                        self._announce(fd, on_wait)
                    if not self._flock(fd, fcntl.LOCK_EX, deadline):
                        self._timed_out(fd, timeout)
                file_size = self._unmoved(fd) if fd == kept else -1
                if file_size >= 0:
                    break
                st = self._same_inode(fd)
                if st is not None:
                    file_size = st.st_size
                    self._name = _fd_name(fd) if self._keep and names_are_local(self.path) else None
                    break
                # The path was unlinked or replaced while we waited (by hand: agentstate never does):
                # a lock on the old inode excludes nobody who opens the path now. Start again.
                log.warning("lock file %s was replaced while waiting for it; locking the new one", self.path)
                replaced, fd = fd, -1
                _close(replaced)  # closing drops the flock on the old inode
            size = max(RECORD_BLOCK, file_size)
            if waited:  # else mine() stamped it just now
                me.acquired_at = now_iso()
            body = me.to_bytes()
            # a record left by a holder that died ("{..."), else spaces: one byte says which
            previous = read_record(fd) if file_size and os.pread(fd, 1, 0) == b"{" else None
            if previous is not None and fd == kept:  # its record may be longer than the file size known here
                file_size = max(file_size, os.fstat(fd).st_size)
            if file_size > MAX_RECORD:  # no record is this long: grown by hand or damage; cut back, under the lock
                self.files.truncate(fd, 0)
                log.warning("lock file %s was %d bytes, far more than a holder record: cut back to one", self.path,
                            file_size)
                file_size = 0
            size = record_size(body, file_size)
            written = True
            write_all_at(self.files, fd, padded(body, size), 0)
            self._owner_pid, self._acquired = me.pid, time.monotonic()
            self._fd, self._size, self.holder = fd, size, me
            if previous is not None:
                log.warning("stale lock record overwritten: %s ended without releasing the lock (the kernel freed "
                            "it)", previous.describe())
            if waited:
                log.info("lock %s acquired by PID %d after waiting %.1f ms (%s, lock ID %s)",
                         self.path, me.pid, (self._acquired - start) * 1000, operation, me.lock_id)
            else:
                log.info("lock %s acquired by PID %d (%s, lock ID %s)", self.path, me.pid, operation, me.lock_id)
            return me
        except BaseException as e:
            while True:  # a second signal while giving back: give back again (the first is on its way out)
                try:
                    self._abandon(fd, size, written)
                    break
                except BaseException:
                    pass
            if isinstance(e, OSError) and not isinstance(e, StorageError):  # ours already names the step
                raise io_error("write the holder record to" if written else "lock", self.path, e) from None
            raise

    def _abandon(self, fd: int, size: int, written: bool) -> None:
        """An acquire that raises: give back whatever it took (see acquire)."""
        if self._fd == fd and self.holder is not None and fd >= 0:
            self.release()  # handed over already: undo it all
        elif fd >= 0 and _fds.get(fd) is self:  # still open here (closing drops the flock, if we got it)
            if written:  # the acquire's own error (a failed record write, say) is the news: no warning too
                self._blank_unlock_close(fd, size, quiet=True)
            else:
                _close(fd)

    def release(self) -> None:
        """Blank the record, unlock, close. In a forked child: only forget (never unlock the parent's lock).

        A signal (KeyboardInterrupt) raised inside still releases; one raised on the way in, before the
        first line runs, leaves the lock held and ``held`` True, as before the call: call it again."""
        holder, fd, owner = self.holder, self._fd, self._owner_pid
        if holder is None:
            return
        assert fd is not None
        try:
            if _pid[0] != owner:
                return  # the child's copy of the descriptor was closed at fork
            self._blank_unlock_close(fd, self._size, self._keep)
        finally:
            self.holder, self._fd = None, None
            while _fds.get(fd) is self and _pid[0] == owner and self._kept != fd:  # a signal before the close: never leave it held
                try:
                    self._blank_unlock_close(fd, self._size)
                except BaseException:
                    pass  # another signal: close again (the first one is on its way out)
        if log.isEnabledFor(INFO):
            log.info("lock %s released by PID %d after holding it %.1f ms (lock ID %s)",
                     self.path, holder.pid, (time.monotonic() - self._acquired) * 1000, holder.lock_id)

    def _blank_unlock_close(self, fd: int, size: int, keep: bool = False, quiet: bool = False) -> None:
        """The release order: the record is blank before anyone else can hold the lock. ``keep``: the
        descriptor stays open (unlocked) for the next acquire, unless anything on the way failed.
        ``quiet``: a failed blanking is logged at debug level only (an acquire that fails says why itself)."""
        kept = False
        try:
            try:
                write_all_at(self.files, fd, blank(size), 0)
            except OSError as e:  # the next holder overwrites it; the kernel says it is free
                log.log(DEBUG if quiet else WARNING, "could not blank the holder record in %s: %s",
                        self.path, e)
            fcntl.flock(fd, fcntl.LOCK_UN)
            if keep:
                self._kept = fd
                kept = True
        finally:
            if not kept:
                _close(fd)

    def _take_kept(self) -> int:
        """The descriptor kept since the last release, now this acquire's; -1 if there is none (a forked
        child's copies were closed at the fork; a number closed since may be another Lock's now)."""
        fd, self._kept = self._kept, -1
        return fd if fd >= 0 and _fds.get(fd) is self else -1

    def close(self) -> None:
        """Close the descriptor a ``keep=True`` Lock keeps between acquisitions (a no-op otherwise, and
        while held: release() first)."""
        fd = self._take_kept()
        if fd >= 0:
            _close(fd)

    # -- inspection ----------------------------------------------------------------------------------

    def read_holder(self) -> Holder | None:
        """The record in the lock file now (None: blank, missing or garbled). Not proof of anything."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW | os.O_NONBLOCK)  # a FIFO never blocks us
        except OSError:
            return None
        try:
            return read_record(fd)
        finally:
            os.close(fd)

    def status(self) -> dict[str, Any]:
        """{"path", "held", "holder", "last_holder", "holder_alive", "stale", "next"}. Takes no lock.

        ``held`` is the kernel's answer (a LOCK_NB attempt on a separate descriptor); ``holder`` the
        record of the current holder; ``last_holder`` a record left by a holder that ended without
        releasing (``stale``: harmless, the next holder overwrites it); ``holder_alive`` True/False for
        a holder under this kernel and PID namespace, else None; ``next`` what to do, or None."""
        check_filesystem(self.path)
        held, record = False, None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW | os.O_NONBLOCK)  # a FIFO never blocks us
        except FileNotFoundError:
            fd = None
        except OSError as e:
            raise io_error("open the lock file", self.path, e) from None
        if fd is not None:
            _fds[fd] = self
            try:
                self._same_inode(fd)  # a regular file?
                held = not self._flock(fd, fcntl.LOCK_SH)  # while we hold it shared, nobody can take it
                record = read_record(fd)
            finally:
                _close(fd)
        alive = record.alive() if record else None
        return {
            "path": self.path,
            "held": held,
            "holder": record.to_dict() if record and held else None,
            "last_holder": record.to_dict() if record and not held else None,
            "holder_alive": alive,
            "stale": record is not None and not held,
            "next": self._next_step(held, record, alive),
        }

    def _next_step(self, held: bool, record: Holder | None, alive: bool | None) -> str | None:
        if held:
            if record is None:
                return "a process is taking the lock right now (no record written yet): wait and look again"
            if alive:
                return (f"wait for PID {record.pid} on {record.hostname} to finish, or stop it: its lock is freed "
                        "the instant it exits")
            return f"wait for it to finish, or {self._stop(record)}: its lock is freed the instant it exits"
        if record is None:
            return None
        text = "nothing to do: the lock is free and the next writer overwrites this record"
        if os.path.basename(self.path) == "state.json.lock":  # force-unlock clears the state document's record
            directory = shlex.quote(os.path.dirname(self.path) or ".")
            text += f"; to clear it now: agentstate force-unlock {record.lock_id} --dir {directory}"
        return text

    def _stop(self, record: Holder | None) -> str:
        """How to end the holder, said so that it cannot hit the wrong process."""
        if record is None:
            return "stop the process holding it"
        alive = record.alive()
        if alive is None:
            return (f"stop PID {record.pid} on {record.hostname} where it runs (another host or PID namespace, "
                    "e.g. a container: that PID means another process here)")
        if alive is False:
            return (f"stop the process that inherited the lock descriptor of PID {record.pid} (gone); "
                    f"`fuser -v {shlex.quote(self.path)}` lists it")
        return f"stop PID {record.pid} on {record.hostname}"

    def force_unlock(self, lock_id: str, *, force: bool = False) -> Holder:
        """Clear a stale holder record (one left with no process holding the lock); returns it.

        Never removes the lock file, and never touches a lock the kernel says is held: that is
        StateLocked (exit 3), naming the holder, whatever ``force`` says (``force`` adds nothing: it
        is accepted for callers that still pass it). ConflictError (exit 5) if ``lock_id`` is not the
        record's; NotFound (exit 6) if there is no lock file or no record."""
        check_filesystem(self.path)
        while True:
            try:
                fd = self._open(create=False)
            except FileNotFoundError:
                raise NotFound(f"no lock file at {self.path}: nothing to unlock") from None
            try:
                if not self._flock(fd, fcntl.LOCK_EX):
                    record = read_record(fd)
                    who = record.describe() if record else "a process that has not written its record yet"
                    raise StateLocked(
                        f"refusing to unlock {self.path}: the kernel says it is held by {who}, so it is not stale",
                        hint=f"wait for it to finish, or {self._stop(record)}: its lock is freed the instant it exits "
                             "(a held lock is never removed, with or without --force)",
                        holder=record.to_dict() if record else None,
                    )
                st = self._same_inode(fd)
                if st is None:
                    continue  # replaced meanwhile (finally closes fd): look at the new one
                record = read_record(fd)
                if record is None:
                    raise NotFound(f"the lock {self.path} is free and holds no record: nothing to unlock")
                if record.lock_id != lock_id:
                    raise ConflictError(
                        f"lock ID mismatch: the record in {self.path} has lock ID {record.lock_id}, not {lock_id}",
                        hint="check `agentstate lock status`", holder=record.to_dict(),
                    )
                try:
                    write_all_at(self.files, fd, blank(max(st.st_size, RECORD_BLOCK)), 0)
                except OSError as e:
                    raise io_error("clear the holder record in", self.path, e) from None
                log.warning("stale lock record cleared from %s: %s had ended without releasing the lock",
                            self.path, record.describe())
                return record
            finally:
                _close(fd)

    # -- pieces ----------------------------------------------------------------------------------------

    def _open(self, create: bool) -> int:
        try:
            fd = self.files.open_rw(self.path, create=create)
        except OSError as e:
            if not create and isinstance(e, FileNotFoundError):
                raise
            raise io_error("open the lock file", self.path, e) from None
        try:  # until the caller has it, an exception (a signal) closes it here
            _fds[fd] = self
            return fd
        except BaseException:
            _fds.pop(fd, None)
            os.close(fd)
            raise

    def _flock(self, fd: int, op: int, deadline: float | None = None) -> bool:
        """One attempt (``deadline`` None) or wait until ``deadline``; False if not granted."""
        try:
            return _try(fd, op) if deadline is None else _wait(fd, deadline)
        except OSError as e:
            if e.errno in _NO_FLOCK:
                raise _unsupported(self.path, _filesystem(os.path.dirname(self.path) or "."),
                                   f"rejects flock ({errno.errorcode.get(e.errno, e.errno)})") from None
            raise io_error("lock", self.path, e) from None

    def _unmoved(self, fd: int) -> int:
        """For the descriptor kept since the last release: the lock file's size as this Lock left it, if
        the path still names it for sure (on a local filesystem, by the name the kernel keeps for the
        descriptor: /proc/self/fd/N, with " (deleted)" once unlinked or replaced), else -1 (ask
        _same_inode). No stat: on Linux 6.13+ a stat marks the file's times as seen, and the next write
        then stamps it with a fine-grained time, dirtying the inode on every acquire (~40 us here)."""
        name = self._name
        return self._size if name is not None and _fd_name(fd) == name else -1

    def _same_inode(self, fd: int) -> os.stat_result | None:
        """fstat of ``fd`` if the path still names that inode, else None. StorageError if it is no
        regular file."""
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            raise StorageError(f"cannot lock {self.path}: it is not a regular file", path=self.path,
                               hint="move it away: agentstate creates its lock file itself")
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev) else None

    def _announce(self, fd: int, on_wait: Callable[[Holder | None], None] | None) -> None:
        if on_wait is None and not log.isEnabledFor(INFO):
            return  # nobody to tell: skip reading the record (a hot path under contention)
        holder = read_record(fd)
        log.info("waiting for lock %s held by %s", self.path,
                 holder.describe() if holder else "a process that has not written its record yet")
        if on_wait is not None:
            on_wait(holder)

    def _timed_out(self, fd: int, timeout: float) -> None:
        holder = None
        for _ in range(3):  # a new holder may be between taking the lock and writing its record
            holder = read_record(fd)
            if holder is not None:
                break
            time.sleep(0.005)
        who = holder.describe() if holder else "a process that has not written its holder record yet"
        log.info("timed out after %gs waiting for lock %s held by %s", timeout, self.path, who)
        see = self._status_command()
        raise StateLocked(
            f"timed out after {timeout:g}s waiting for the lock {self.path}: it is held by {who}",
            hint=f"retry with a longer --lock-timeout, or {self._stop(holder)} (its lock is freed the instant it exits)"
                 + (f"; `{see}` shows the holder" if see else ""),
            holder=holder.to_dict() if holder else None,
        )
