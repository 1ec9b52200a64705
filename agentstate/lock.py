"""The store lock: a kernel flock on ``state.json.lock`` plus a holder record inside it.

The kernel's lock is the authority: a holder that dies releases it at once. The record
(lock ID, PID, host, boot and PID-namespace identity, process start, operation, version,
acquired-at, heartbeat, lock mode) is written and fsynced right after acquiring; it says
who holds the lock, for error messages, ``lock status`` and ``force-unlock``. A released
lock has an empty record.

The record also covers what the kernel cannot see. On filesystems without working flock
the lock falls back to an exclusive-create ("soft") lock file whose record is the lock.
A record left behind is stale when its holder is provably gone: on this machine, its PID
is gone, a zombie, or reused (another process start time); written before this machine's
last boot (another boot ID); on another host, its heartbeat is older than ``stale_after``.
A live holder is never broken for being slow: while it holds the lock a daemon thread
refreshes its heartbeat. A stale record is broken with a WARNING. In flock mode, a record
that is not stale and that the kernel cannot vouch for (a soft-mode holder, a holder on
another host) is respected: the waiter keeps waiting.

Waiting is a blocking flock in a helper thread, so a release wakes the next waiter at
once (no poll interval); the caller waits on an Event with the timeout.

Fork safety: a forked child never releases or refreshes its parent's lock, and closes its
copies of the lock descriptors so that it cannot keep the lock alive after the parent dies.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ._version import __version__
from .duration import parse_duration
from .errors import ConflictError, InvalidInput, NotFound, StateLocked
from .fileio import NO_LINK, OsFiles, write_all, write_all_at

log = logging.getLogger("agentstate.lock")

DEFAULT_TIMEOUT = 30.0
DEFAULT_STALE_AFTER = 300.0
_CONTENDED = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
_RECORD_BLOCK = 512
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return (_now() - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def boot_id() -> str | None:
    return _read_text("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """A token that changes when a PID is reused: start ticks since boot, or psutil's create time."""
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is not None:
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 19:
            return fields[19]
        return None
    if os.path.isdir("/proc/self"):
        return None  # Linux, and the PID is gone
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.3f}"
    except Exception:
        return None


_PID_GONE, _PID_ZOMBIE, _PID_RUNNING = "gone", "zombie", "running"


def _pid_state(pid: int) -> str:
    """``running``, ``zombie`` (exited, not yet reaped: it holds nothing) or ``gone``."""
    if pid <= 0:
        return _PID_GONE
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is not None:
        fields = stat.rsplit(")", 1)[-1].split()
        if not fields:
            return _PID_GONE
        return _PID_ZOMBIE if fields[0] in ("Z", "X", "x") else _PID_RUNNING
    if os.path.isdir("/proc/self"):
        return _PID_GONE  # Linux, and the PID is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return _PID_GONE
    except PermissionError:
        return _PID_RUNNING
    except OSError:
        return _PID_GONE
    try:
        import psutil

        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return _PID_ZOMBIE
    except Exception:
        pass
    return _PID_RUNNING


def pid_alive(pid: int) -> bool:
    return _pid_state(pid) == _PID_RUNNING


@dataclass
class Holder:
    """The holder record written into the lock file (one JSON object)."""

    lock_id: str
    pid: int
    hostname: str
    operation: str
    acquired_at: str
    heartbeat_at: str
    version: str = __version__
    boot_id: str | None = None
    pid_namespace: str | None = None
    process_start: str | None = None
    mode: str | None = None  # "flock" or "soft": whether the kernel lock backs this record
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown fields, kept when parsing

    @classmethod
    def mine(cls, operation: str, mode: str | None = None) -> Holder:
        now = _iso(_now())
        pid, host, boot, ns, start = _my_identity()
        return cls(
            lock_id=str(uuid.uuid4()),
            pid=pid,
            hostname=host,
            operation=operation,
            acquired_at=now,
            heartbeat_at=now,
            boot_id=boot,
            pid_namespace=ns,
            process_start=start,
            mode=mode,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _RECORD_FIELDS}

    def to_bytes(self) -> bytes:
        import orjson

        return orjson.dumps(self.to_dict()) + b"\n"

    @classmethod
    def parse(cls, data: bytes | str | None) -> Holder | None:
        """The record in ``data``, or None if it is empty or not a holder record."""
        if not data or not data.strip():
            return None
        import orjson

        try:
            d = orjson.loads(data)
            if not isinstance(d, dict):
                return None
            pid = d["pid"]
            if isinstance(pid, bool) or not isinstance(pid, int):
                return None

            def opt(key: str) -> str | None:
                v = d.get(key)
                return None if v is None else str(v)

            known = {f for f in cls.__dataclass_fields__ if f != "extra"}
            return cls(
                lock_id=str(d["lock_id"]),
                pid=pid,
                hostname=str(d["hostname"]),
                operation=str(d.get("operation", "?")),
                acquired_at=str(d.get("acquired_at", "")),
                heartbeat_at=str(d.get("heartbeat_at") or d.get("acquired_at", "")),
                version=str(d.get("version", "?")),
                boot_id=opt("boot_id"),
                pid_namespace=opt("pid_namespace"),
                process_start=opt("process_start"),
                mode=opt("mode"),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except Exception:
            return None

    # -- where and whether the holder runs ------------------------------------------------

    def same_kernel(self) -> bool | None:
        """Whether the holder ran under this running kernel (whose flock we can trust): True, False, or None."""
        mine = boot_id()
        if self.boot_id and mine:
            return self.boot_id == mine
        return True if self.hostname == socket.gethostname() else None

    def same_machine(self) -> bool | None:
        """True: this machine and boot, PIDs comparable. False: provably an earlier boot. None: can't tell."""
        mine = boot_id()
        here = self.hostname == socket.gethostname()
        if self.boot_id and mine:
            if self.boot_id != mine:
                return False if here else None  # this host before its last boot, or another host
        elif not here:
            return None
        if self.pid_namespace and pid_namespace() and self.pid_namespace != pid_namespace():
            return None  # another PID namespace: its PIDs mean nothing here
        return True

    def liveness(self) -> tuple[bool | None, str]:
        """(alive, why): True/False when the holder can be probed on this machine, None when it can't."""
        here = self.same_machine()
        if here is False:
            return False, f"it was written before this machine's last boot (boot ID {self.boot_id})"
        if here is None:
            return None, "it runs on another host or in another PID namespace"
        state = _pid_state(self.pid)
        if state == _PID_GONE:
            return False, "its process is gone"
        if state == _PID_ZOMBIE:
            return False, "its process has exited (a zombie)"
        if self.process_start is not None:
            current = process_start(self.pid)
            if current is not None and current != self.process_start:
                return False, (
                    f"its PID was reused by another process (start {current}, recorded {self.process_start})"
                )
        return True, "its process is alive"

    def alive(self) -> bool | None:
        """Whether the holder process still runs: True, False, or None when it can't be probed."""
        return self.liveness()[0]

    def stale_reason(self, stale_after: float) -> str | None:
        """Why this record is stale, or None if it may still be held. A live holder is never stale."""
        alive, why = self.liveness()
        if alive is False:
            return why
        if alive is True:
            return None  # never broken for being slow
        age = _age(self.heartbeat_at)
        if age is not None and age > stale_after:
            return f"{why} and its last heartbeat was {age:.0f}s ago (stale after {stale_after:g}s)"
        return None

    def stale(self, stale_after: float) -> bool:
        return self.stale_reason(stale_after) is not None

    def describe(self) -> str:
        age = _age(self.acquired_at)
        since = f"since {self.acquired_at}" + (f" ({_fmt_age(age)} ago)" if age is not None else "")
        return f"PID {self.pid} on {self.hostname} ({self.operation}, {since}, lock ID {self.lock_id})"


_RECORD_FIELDS = tuple(f for f in Holder.__dataclass_fields__ if f != "extra")
_identity: tuple[int, str, str | None, str | None, str | None] | None = None


def _my_identity() -> tuple[int, str, str | None, str | None, str | None]:
    """(pid, hostname, boot ID, PID namespace, process start) of this process, read once per PID."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:  # a forked child is another process
        _identity = (pid, socket.gethostname(), boot_id(), pid_namespace(), process_start(pid))
    return _identity


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "?"
    return f"{age:.1f}s" if age < 10 else f"{age:.0f}s"


# --- process-wide bookkeeping: heartbeats, and descriptors to drop in a forked child ---------

_held: dict[int, Lock] = {}  # locks this process holds, refreshed by the heartbeat thread
_held_guard = threading.Condition()
_beater: threading.Thread | None = None
_fds: dict[int, object] = {}  # every open lock descriptor -> the Lock that owns it


def _beat_interval(stale_after: float) -> float:
    return min(60.0, max(0.1, stale_after / 5))


def _beat_loop() -> None:
    while True:
        with _held_guard:
            wait = min((_beat_interval(lk.stale_after) for lk in _held.values()), default=1.0)
            _held_guard.wait(timeout=min(1.0, wait / 2))
            locks = list(_held.values())
        for lk in locks:
            try:
                lk._maybe_heartbeat()
            except Exception:  # never let the heartbeat thread die
                log.debug("heartbeat failed", exc_info=True)


def _register(lk: Lock) -> None:
    global _beater
    with _held_guard:
        _held[id(lk)] = lk
        if _beater is None or not _beater.is_alive():
            _beater = threading.Thread(target=_beat_loop, name="agentstate-heartbeat", daemon=True)
            _beater.start()
        _held_guard.notify_all()


def _unregister(lk: Lock) -> None:
    with _held_guard:
        _held.pop(id(lk), None)


def _track(fd: int, owner: object) -> int:
    _fds[fd] = owner
    return fd


def _close_fd(fd: int, owner: object) -> None:
    """Close ``fd`` if ``owner`` still owns it (in a forked child it was closed already)."""
    if _fds.get(fd) is owner:
        del _fds[fd]
        os.close(fd)


def _after_fork_in_child() -> None:
    """A child never releases or refreshes its parent's locks, and drops its copies of their descriptors:
    a flock lives as long as any copy of the descriptor, so a child that kept one would hold the lock
    after its parent died."""
    global _beater, _held_guard
    for lk in list(_held.values()):
        lk._io = threading.Lock()  # the heartbeat thread may have held it at fork time
        lk._fd = None
    for fd in list(_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _fds.clear()
    _held.clear()
    _beater = None
    _held_guard = threading.Condition()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _NoFlock(Exception):
    pass


class Lock:
    """Exclusive lock on a store. ``acquire(timeout, operation)`` then ``release()``, or ``with``."""

    def __init__(
        self,
        path: str,
        *,
        files: OsFiles | None = None,
        stale_after: float | str = DEFAULT_STALE_AFTER,
        mode: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.files = files or OsFiles()
        self.stale_after = parse_duration(stale_after, "stale threshold")
        self.mode = mode or os.environ.get("AGENTSTATE_LOCK_MODE") or "auto"
        if self.mode not in ("auto", "flock", "soft"):
            raise InvalidInput(f"unknown lock mode {self.mode!r} (auto, flock or soft)")
        self.holder: Holder | None = None
        self._fd: int | None = None
        self._record_size = _RECORD_BLOCK
        self._owner_pid: int | None = None
        self._acquired_mono = 0.0
        self._last_beat = 0.0
        self._io = threading.Lock()
        self._lost_warned = False
        self._soft_link: bool | None = None  # whether soft records can be published with link()

    # -- public ------------------------------------------------------------------------

    def acquire(
        self,
        timeout: float | str = DEFAULT_TIMEOUT,
        operation: str = "transaction",
        on_wait: Callable[[Holder | None], None] | None = None,
    ) -> Holder:
        """Take the lock within ``timeout`` seconds (0 = one attempt) or raise StateLocked.

        ``on_wait(holder)`` is called once if the lock is busy, with the current holder record (or None).
        """
        if self.holder is not None:
            raise RuntimeError("lock already held by this object")
        timeout = parse_duration(timeout, "lock timeout")
        start = time.monotonic()
        deadline = start + timeout
        wait = _Wait(self, on_wait)
        me: Holder | None = None
        if self.mode != "soft":
            try:
                me = self._acquire_flock(operation, deadline, timeout, wait)
            except _NoFlock:
                log.warning("flock is not supported on %s; using an exclusive-create lock file", self.path)
                self.mode = "soft"
        if me is None:
            me = self._acquire_soft(operation, deadline, timeout, wait)
        self.holder = me
        self._owner_pid = os.getpid()
        self._lost_warned = False
        self._acquired_mono = self._last_beat = time.monotonic()
        _register(self)
        if wait.started:
            log.info(
                "lock acquired by PID %d after waiting %.3fs (%s, lock ID %s)",
                me.pid, self._acquired_mono - start, operation, me.lock_id,
            )
        else:
            log.info("lock acquired by PID %d (%s, lock ID %s)", me.pid, operation, me.lock_id)
        return me

    def release(self) -> None:
        """Release the lock. In a forked child this only forgets the parent's lock; it never unlocks it."""
        if self.holder is None:
            return
        _unregister(self)
        held = time.monotonic() - self._acquired_mono
        mine = os.getpid() == self._owner_pid
        with self._io:
            holder, self.holder = self.holder, None
            fd, self._fd = self._fd, None
            try:
                if mine and self.mode == "soft":
                    self._release_soft(holder)
                elif mine and fd is not None:
                    try:  # a free lock has a blank record
                        write_all_at(self.files, fd, b" " * (self._record_size - 1) + b"\n", 0)
                    except OSError:
                        pass  # the next holder sees the record, and the kernel says it is free
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                if fd is not None:
                    _close_fd(fd, self)
        if mine:
            log.info("lock released by PID %d after holding it %.3fs (lock ID %s)", holder.pid, held, holder.lock_id)

    @property
    def held(self) -> bool:
        return self.holder is not None and os.getpid() == self._owner_pid

    def __enter__(self) -> Lock:
        if self.holder is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _read_record(self) -> tuple[int | None, Holder | None]:
        """(inode, record) of the lock file; (None, None) if there is none."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None, None
        try:
            return os.fstat(fd).st_ino, Holder.parse(os.pread(fd, 65536, 0))
        finally:
            os.close(fd)

    def read_holder(self) -> Holder | None:
        try:
            return Holder.parse(self.files.read(self.path))
        except OSError:
            return None

    def status(self) -> dict[str, Any]:
        """{"path", "mode", "held", "holder", "last_holder", "holder_alive", "stale", "stale_reason"}.

        Takes no lock. ``holder`` is the record of a current holder; ``last_holder`` one left behind by a
        holder that did not release (the lock is free). ``holder_alive`` is None when it can't be probed.
        """
        holder = self.read_holder()
        kernel = None if self.mode == "soft" else self._probe_held()
        if kernel is None:
            held = os.path.lexists(self.path)
        else:
            held = kernel or (holder is not None and self._record_blocks(holder))
        alive = holder.alive() if holder else None
        reason = None
        if held and holder is not None:
            reason = holder.stale_reason(self.stale_after)
        elif held and kernel is None and self._record_abandoned():
            reason = f"the lock file has held no valid record for more than {self.stale_after:g}s"
        return {
            "path": self.path,
            "mode": self.mode,
            "held": held,
            "holder": holder.to_dict() if holder and held else None,
            "last_holder": holder.to_dict() if holder and not held else None,
            "holder_alive": alive,
            "stale": reason is not None,
            "stale_reason": reason,
        }

    def force_unlock(self, lock_id: str, force: bool = False) -> Holder:
        """Remove the lock if ``lock_id`` names its current holder record.

        ConflictError (exit 5) if it names another holder; StateLocked (exit 3) if that holder is alive on
        this machine, unless ``force``; NotFound (exit 6) if no holder is recorded.
        """
        if self.mode != "soft":
            try:
                return self._force_unlock_flock(lock_id, force)
            except _NoFlock:
                pass
        holder = self.read_holder()
        self._check_unlock(holder, lock_id, force)
        assert holder is not None
        if not self._take_aside(holder):
            raise ConflictError(
                f"the lock {self.path} changed hands meanwhile; nothing was removed",
                hint="check `agentstate lock status`",
            )
        log.warning("lock force-unlocked: removed %s held by %s", self.path, holder.describe())
        return holder

    # -- flock -------------------------------------------------------------------------

    def _open_locked(self, blocking: bool, abandoned: Callable[[], bool] | None = None) -> int | None:
        """Open the lock file and flock it; None if contended (or ``abandoned()`` while retrying).
        Retries if the file was replaced meanwhile."""
        while True:
            existed = os.path.lexists(self.path)
            fd = _track(self.files.open_rw(self.path), self)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as e:
                _close_fd(fd, self)
                if e.errno in _NO_FLOCK:
                    if not existed:
                        self._take_aside(None)  # leave no empty lock file behind: soft mode takes over
                    raise _NoFlock() from e
                if e.errno in _CONTENDED:
                    return None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            _close_fd(fd, self)  # force-unlocked (unlinked) meanwhile: lock the new file instead
            if abandoned is not None and abandoned():
                return None  # a waiter that timed out must not queue on the new file

    def _unlock_close(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            _close_fd(fd, self)

    def _record_blocks(self, previous: Holder) -> bool:
        """With the kernel lock free: must this record still be respected?

        A holder that used flock under this running kernel is gone (the kernel released its lock). A holder
        the kernel cannot vouch for (a soft-mode holder, a holder on another host) counts until it is stale.
        """
        if previous.mode != "soft" and previous.same_kernel() is True:
            return False
        return previous.stale_reason(self.stale_after) is None

    def _acquire_flock(self, operation: str, deadline: float, timeout: float, wait: _Wait) -> Holder:
        pause = 0.002
        while True:
            fd = self._open_locked(blocking=False)
            if fd is None:
                wait.start(self.read_holder)
                fd = self._wait_flock(deadline)
                if fd is None:
                    self._timed_out(timeout)
            try:
                previous = Holder.parse(os.pread(fd, 65536, 0))
                blocker = previous if previous is not None and self._record_blocks(previous) else None
                if blocker is None:
                    if previous is not None:
                        _alive, why = previous.liveness()
                        self._log_broken(previous, f"the kernel released its lock: {why}"
                                         if previous.same_kernel() else previous.stale_reason(self.stale_after))
                    me = Holder.mine(operation, "flock")
                    self._write_record(fd, me)
                    self._fd = fd
                    return me
            except BaseException:
                self._unlock_close(fd)
                raise
            # A live holder the kernel cannot see: keep waiting for it (polling: nothing will wake us).
            self._unlock_close(fd)
            wait.start(lambda b=blocker: b)
            pause = self._back_off(deadline, timeout, pause, 0.05)

    def _wait_flock(self, deadline: float) -> int | None:
        """Block in a helper thread until the kernel hands us the lock, or until the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        done = threading.Event()
        guard = threading.Lock()
        box: dict[str, Any] = {}

        def wait() -> None:
            try:
                fd = self._open_locked(blocking=True, abandoned=lambda: bool(box.get("abandoned")))
            except BaseException as e:  # pragma: no cover - reported to the caller
                with guard:
                    box["error"] = e
                done.set()
                return
            if fd is None:
                return
            with guard:
                if box.get("abandoned"):
                    self._unlock_close(fd)  # nobody wants it any more: pass it on at once
                    return
                box["fd"] = fd
            done.set()

        threading.Thread(target=wait, name="agentstate-lock-wait", daemon=True).start()
        done.wait(remaining)
        with guard:
            if "fd" in box:
                return box["fd"]
            if "error" in box:
                raise box["error"]
            box["abandoned"] = True
        return None

    def _write_record(self, fd: int, holder: Holder) -> None:
        """Write the record in place, padded with spaces to a multiple of 512 bytes, and fsync it.

        Keeping the size fixed makes the write an overwrite (no truncate, no size change), which
        costs a third of truncate+write+fsync; release blanks it the same way."""
        body = holder.to_bytes().rstrip(b"\n")
        size = -(-(len(body) + 1) // _RECORD_BLOCK) * _RECORD_BLOCK
        data = body.ljust(size - 1) + b"\n"
        write_all_at(self.files, fd, data, 0)
        if os.fstat(fd).st_size != size:
            self.files.truncate(fd, size)
        self.files.fsync(fd)
        self._record_size = size

    def _force_unlock_flock(self, lock_id: str, force: bool) -> Holder:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise NotFound(f"no lock file at {self.path}", hint="nothing to unlock") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
            except OSError as e:
                if e.errno in _NO_FLOCK:
                    raise _NoFlock() from e
                if e.errno not in _CONTENDED:
                    raise
                free = False
            holder = Holder.parse(os.pread(fd, 65536, 0))
            if free and holder is not None and not self._record_blocks(holder):
                # Nobody holds the lock; the record was left by a holder that did not release. Clear it.
                self._check_unlock(holder, lock_id, force=True)
                self.files.truncate(fd, 0)
                self.files.fsync(fd)
                log.warning("lock record cleared: %s was free; its record named %s", self.path, holder.describe())
                return holder
            self._check_unlock(holder, lock_id, force)
            assert holder is not None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.files.unlink(self.path)  # the holder keeps its flock on the old file, alone
            log.warning("lock force-unlocked: removed %s held by %s", self.path, holder.describe())
            return holder
        finally:
            os.close(fd)

    def _check_unlock(self, holder: Holder | None, lock_id: str, force: bool) -> None:
        if holder is None:
            raise NotFound(f"no lock holder is recorded in {self.path}", hint="nothing to unlock")
        if holder.lock_id != lock_id:
            raise ConflictError(
                f"lock ID mismatch: {self.path} is held under lock ID {holder.lock_id}, not {lock_id}",
                hint="check `agentstate lock status`",
                holder=holder.to_dict(),
            )
        if not force and holder.alive() is True:
            raise StateLocked(
                f"refusing to unlock: the holder is alive on this host, {holder.describe()}",
                hint="wait for it, stop it, or add --force if you are sure",
                holder=holder.to_dict(),
            )

    # -- soft (no flock) -----------------------------------------------------------------

    def _acquire_soft(self, operation: str, deadline: float, timeout: float, wait: _Wait) -> Holder:
        pause = 0.001
        while True:
            me = Holder.mine(operation, "soft")
            if self._create_soft(me):
                return me
            ino, current = self._read_record()
            if ino is None:
                continue  # released meanwhile: try again at once
            if current is None:
                if self._soft_link is not False:
                    # Soft holders publish complete records with link(): an empty or garbled lock file is
                    # no soft holder's (a flock-mode lock file, or one left by a failed probe). Remove it.
                    if self._take_aside(None, ino):
                        log.info("removed lock file %s: it held no holder record", self.path)
                    continue
                if self._record_abandoned():
                    self._break(None, f"its lock file held no valid record for more than {self.stale_after:g}s", ino)
                    continue
            else:
                reason = current.stale_reason(self.stale_after)
                if reason is not None:
                    self._break(current, reason, ino)
                    continue
            wait.start(lambda c=current: c)
            pause = self._back_off(deadline, timeout, pause, 0.02)

    def _create_soft(self, me: Holder) -> bool:
        """Create the lock file holding ``me``'s record; False if it exists.

        The record is written and fsynced into a temp file that is then linked into place, so the lock
        file is never seen empty. Where hard links are not supported: exclusive create, then write.
        """
        data = me.to_bytes()
        if self._soft_link is not False:
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:12]}"
            fd = self.files.create(tmp)
            try:
                try:
                    write_all(self.files, fd, data)
                    self.files.fsync(fd)
                finally:
                    self.files.close(fd)
                try:
                    self.files.link(tmp, self.path)
                except FileExistsError:
                    return False
                except OSError as e:
                    if e.errno not in NO_LINK:
                        raise
                    self._soft_link = False
                else:
                    self._soft_link = True
                    return True
            finally:
                try:
                    self.files.unlink(tmp)
                except OSError:
                    pass
        try:
            fd = self.files.create(self.path)
        except FileExistsError:
            return False
        try:
            write_all(self.files, fd, data)
            self.files.fsync(fd)
        except BaseException:
            try:
                self.files.unlink(self.path)
            except OSError:
                pass
            raise
        finally:
            self.files.close(fd)
        return True

    def _record_abandoned(self) -> bool:
        """An empty/garbled lock file older than the stale threshold was left by a killed creator."""
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return False
        return age > self.stale_after

    def _take_aside(self, expect: Holder | None, ino: int | None = None) -> bool:
        """Remove the lock file if it still holds ``expect``'s record (or, for None, no valid record).

        Renaming it aside first makes the check and the removal one step: if it changed hands meanwhile,
        the new holder's file is put back. ``ino``: the inode that was judged; if the lock file is another
        one by now, it is left alone (this keeps the put-back, and its window, for rare races only).
        """
        if ino is not None:
            try:
                if os.stat(self.path, follow_symlinks=False).st_ino != ino:
                    return False
            except FileNotFoundError:
                return False
        aside = f"{self.path}.broken-{uuid.uuid4().hex[:8]}"
        try:
            self.files.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            taken = Holder.parse(self.files.read(aside))
            if (taken is None) if expect is None else (taken is not None and taken.lock_id == expect.lock_id):
                return True
            try:
                self.files.link(aside, self.path)
            except FileExistsError:
                log.error("lock %s changed hands while a stale lock was being broken", self.path)
            return False
        finally:
            try:
                self.files.unlink(aside)
            except FileNotFoundError:
                pass

    def _break(self, stale: Holder | None, reason: str, ino: int | None = None) -> None:
        if not self._take_aside(stale, ino):
            return
        if stale is None:
            log.warning("stale lock broken: %s; %s", self.path, reason)
        else:
            self._log_broken(stale, reason)

    def _log_broken(self, stale: Holder, reason: str | None) -> None:
        log.warning(
            "stale lock broken: PID %d on %s (%s, lock ID %s) acquired it %s ago, last heartbeat %s ago; %s",
            stale.pid, stale.hostname, stale.operation, stale.lock_id,
            _fmt_age(_age(stale.acquired_at)), _fmt_age(_age(stale.heartbeat_at)), reason or "it is stale",
        )

    def _beat_soft(self, holder: Holder, beat: Holder) -> bool:
        """Refresh the record if it is still ours. Check and write go through one descriptor: a new
        holder's lock file is a new inode, so the write can never land in someone else's record."""
        try:
            fd = self.files.open_rw(self.path, create=False)
        except FileNotFoundError:
            return False
        try:
            current = Holder.parse(os.pread(fd, 65536, 0))
            if current is None or current.lock_id != holder.lock_id:
                return False
            self._write_record(fd, beat)
            return True
        finally:
            self.files.close(fd)

    def _release_soft(self, holder: Holder) -> None:
        if not self._take_aside(holder):
            log.warning("lock %s was broken while held; not removing the new holder's lock", self.path)

    # -- shared --------------------------------------------------------------------------

    def _probe_held(self) -> bool | None:
        """Whether the kernel lock is held (None: flock does not work here)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            return None if e.errno in _NO_FLOCK else True
        finally:
            os.close(fd)
        return False

    def _back_off(self, deadline: float, timeout: float, pause: float, cap: float) -> float:
        """Sleep before polling again (StateLocked at the deadline); returns the next, doubled pause."""
        now = time.monotonic()
        if now >= deadline:
            self._timed_out(timeout)
        time.sleep(min(pause, deadline - now))
        return min(pause * 2, cap)

    def _timed_out(self, timeout: float) -> None:
        holder = self.read_holder()
        for _ in range(3):  # a new holder may be between taking the lock and writing its record
            if holder is not None:
                break
            time.sleep(0.005)
            holder = self.read_holder()
        who = holder.describe() if holder else "an unknown holder"
        log.info("timed out after %gs waiting for lock %s held by %s", timeout, self.path, who)
        if holder:
            directory = os.path.dirname(self.path) or "."
            hint = (
                f"if that process is stuck or gone, remove the lock with: agentstate force-unlock {holder.lock_id} "
                f"--dir {shlex.quote(directory)}"
            )
        else:
            hint = "retry with a longer --lock-timeout, or see `agentstate lock status`"
        raise StateLocked(
            f"timed out after {timeout:g}s waiting for the lock: state is locked by {who}",
            hint=hint,
            holder=holder.to_dict() if holder else None,
        )

    def _maybe_heartbeat(self) -> None:
        if self.holder is None or time.monotonic() - self._last_beat < _beat_interval(self.stale_after):
            return
        with self._io:
            holder = self.holder
            if holder is None or os.getpid() != self._owner_pid:
                return
            beat = replace(holder, heartbeat_at=_iso(_now()))
            if self.mode == "soft":
                if not self._beat_soft(holder, beat):
                    if not self._lost_warned:
                        self._lost_warned = True
                        log.warning("lock %s was broken while held by PID %d (lock ID %s)",
                                    self.path, holder.pid, holder.lock_id)
                    return
            elif self._fd is not None:
                self._write_record(self._fd, beat)
            holder.heartbeat_at = beat.heartbeat_at
            self._last_beat = time.monotonic()


class _Wait:
    """Announces a wait once: one log line, and ``on_wait(holder)`` (the CLI shows it on a terminal)."""

    def __init__(self, lock: Lock, on_wait: Callable[[Holder | None], None] | None) -> None:
        self.lock, self.on_wait, self.started = lock, on_wait, False

    def start(self, current: Callable[[], Holder | None]) -> None:
        if self.started:
            return
        self.started = True
        if self.on_wait is None and not log.isEnabledFor(logging.INFO):
            return  # nobody to tell: skip reading the record (a hot path under contention)
        holder = current()
        who = holder.describe() if holder else "a holder that has not written its record yet"
        log.info("waiting for lock %s held by %s", self.lock.path, who)
        if self.on_wait:
            self.on_wait(holder)
