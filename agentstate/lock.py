"""The store lock: a kernel flock on ``state.json.lock`` plus a holder record inside it.

The kernel's lock is the authority: a holder that dies releases it at once. The record
(lock ID, PID, host, boot and PID-namespace identity, process start, operation, version,
acquired-at, heartbeat) says who holds it, for error messages, ``lock status`` and
``force-unlock``. On filesystems without working flock the lock falls back to an
exclusive-create ("soft") lock file whose record is the lock; a stale record (dead PID,
reused PID, old heartbeat from another host) is broken with a WARNING.

Waiting is a blocking flock in a helper thread, so a release wakes the next waiter at
once (no poll interval); the caller waits on an Event with the timeout.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._version import __version__
from .duration import parse_duration
from .errors import ConflictError, InvalidInput, NotFound, StateLocked
from .fileio import OsFiles, write_all

log = logging.getLogger("agentstate.lock")

DEFAULT_TIMEOUT = 30.0
DEFAULT_STALE_AFTER = 300.0
_CONTENDED = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
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


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is not None:
        fields = stat.rsplit(")", 1)[-1].split()
        return bool(fields) and fields[0] not in ("Z", "X")  # a zombie holds nothing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


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
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def mine(cls, operation: str) -> Holder:
        now = _iso(_now())
        return cls(
            lock_id=str(uuid.uuid4()),
            pid=os.getpid(),
            hostname=socket.gethostname(),
            operation=operation,
            acquired_at=now,
            heartbeat_at=now,
            boot_id=boot_id(),
            pid_namespace=pid_namespace(),
            process_start=process_start(os.getpid()),
        )

    def to_bytes(self) -> bytes:
        import orjson

        d = asdict(self)
        d.pop("extra")
        return orjson.dumps(d) + b"\n"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def parse(cls, data: bytes | None) -> Holder | None:
        if not data or not data.strip():
            return None
        import orjson

        try:
            d = orjson.loads(data)
            return cls(
                lock_id=str(d["lock_id"]),
                pid=int(d["pid"]),
                hostname=str(d["hostname"]),
                operation=str(d.get("operation", "?")),
                acquired_at=str(d.get("acquired_at", "")),
                heartbeat_at=str(d.get("heartbeat_at", d.get("acquired_at", ""))),
                version=str(d.get("version", "?")),
                boot_id=d.get("boot_id"),
                pid_namespace=d.get("pid_namespace"),
                process_start=d.get("process_start"),
            )
        except Exception:
            return None

    def same_machine(self) -> bool | None:
        """True: this host, same boot, same PID namespace. False: provably another boot. None: can't tell."""
        if self.hostname != socket.gethostname():
            return None
        if self.boot_id and boot_id() and self.boot_id != boot_id():
            return False
        if self.pid_namespace and pid_namespace() and self.pid_namespace != pid_namespace():
            return None
        return True

    def alive(self) -> bool | None:
        """Whether the holder process still runs: True, False, or None when it can't be probed."""
        here = self.same_machine()
        if here is False:
            return False  # written before this machine's last boot
        if here is None:
            return None
        if not pid_alive(self.pid):
            return False
        if self.process_start is not None:
            current = process_start(self.pid)
            if current is not None and current != self.process_start:
                return False  # the PID was reused by another process
        return True

    def stale(self, stale_after: float) -> bool:
        alive = self.alive()
        if alive is not None:
            return not alive  # a live holder is never broken for being slow
        age = _age(self.heartbeat_at)
        return age is not None and age > stale_after

    def describe(self) -> str:
        age = _age(self.acquired_at)
        since = f"since {self.acquired_at}" + (f" ({age:.0f}s ago)" if age is not None else "")
        return f"PID {self.pid} on {self.hostname} ({self.operation}, {since}, lock ID {self.lock_id})"


# --- heartbeat: one daemon thread per process refreshes every lock it holds -------------

_held: dict[int, Lock] = {}
_held_guard = threading.Condition()
_beater: threading.Thread | None = None


def _beat_loop() -> None:
    while True:
        with _held_guard:
            _held_guard.wait(timeout=1.0)
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


def _unregister(lk: Lock) -> None:
    with _held_guard:
        _held.pop(id(lk), None)


def _after_fork_in_child() -> None:
    global _beater, _held_guard
    _held.clear()  # a child never refreshes, and never releases, its parent's locks
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
        stale_after: float = DEFAULT_STALE_AFTER,
        mode: str | None = None,
    ) -> None:
        self.path = path
        self.files = files or OsFiles()
        self.stale_after = stale_after
        self.mode = mode or os.environ.get("AGENTSTATE_LOCK_MODE") or "auto"
        if self.mode not in ("auto", "flock", "soft"):
            raise InvalidInput(f"unknown lock mode {self.mode!r} (auto, flock or soft)")
        self.holder: Holder | None = None
        self._fd: int | None = None
        self._owner_pid: int | None = None
        self._acquired_mono = 0.0
        self._last_beat = 0.0
        self._io = threading.Lock()

    # -- public ------------------------------------------------------------------------

    def acquire(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        operation: str = "transaction",
        on_wait: Callable[[Holder | None], None] | None = None,
    ) -> Holder:
        if self.holder is not None:
            raise RuntimeError("lock already held by this object")
        timeout = parse_duration(timeout, "lock timeout")
        start = time.monotonic()
        deadline = start + timeout
        me = Holder.mine(operation)
        waited = False
        if self.mode != "soft":
            try:
                waited = self._acquire_flock(me, deadline, on_wait)
            except _NoFlock:
                log.warning("flock is not supported on %s; using an exclusive-create lock file", self.path)
                self.mode = "soft"
        if self.mode == "soft":
            waited = self._acquire_soft(me, deadline, on_wait)
        self.holder = me
        self._owner_pid = os.getpid()
        self._acquired_mono = self._last_beat = time.monotonic()
        _register(self)
        if waited:
            log.info("lock acquired by PID %d after waiting %.3fs", me.pid, self._acquired_mono - start)
        else:
            log.info("lock acquired by PID %d (%s, lock ID %s)", me.pid, operation, me.lock_id)
        return me

    def release(self) -> None:
        if self.holder is None:
            return
        _unregister(self)
        held = time.monotonic() - self._acquired_mono
        mine = os.getpid() == self._owner_pid
        with self._io:
            try:
                if not mine:
                    pass  # a forked child: close its copy, never unlock the parent's lock
                elif self.mode == "soft":
                    self._release_soft()
                elif self._fd is not None:
                    try:
                        self.files.truncate(self._fd, 0)  # a free lock has no record
                    except OSError:
                        pass
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                self._fd = None
                holder, self.holder = self.holder, None
        if mine:
            log.info("lock released by PID %d after %.3fs (lock ID %s)", holder.pid, held, holder.lock_id)

    def __enter__(self) -> Lock:
        if self.holder is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def read_holder(self) -> Holder | None:
        try:
            return Holder.parse(self.files.read(self.path))
        except OSError:
            return None

    def status(self) -> dict[str, Any]:
        """{"path", "mode", "held", "holder", "holder_alive", "stale"} without taking the lock."""
        holder = self.read_holder()
        held = self._probe_held()
        alive = holder.alive() if holder else None
        stale = bool(holder and held and holder.stale(self.stale_after))
        return {
            "path": self.path,
            "mode": self.mode,
            "held": held,
            "holder": holder.to_dict() if holder and held else None,
            "last_holder": holder.to_dict() if holder and not held else None,
            "holder_alive": alive,
            "stale": stale,
        }

    def force_unlock(self, lock_id: str, force: bool = False) -> Holder:
        """Remove the lock if ``lock_id`` names its current holder (and that holder is dead, or ``force``)."""
        holder = self.read_holder()
        if holder is None:
            raise NotFound(f"no lock is recorded in {self.path}", hint="nothing to unlock")
        if holder.lock_id != lock_id:
            raise ConflictError(
                f"lock ID mismatch: {self.path} is held under lock ID {holder.lock_id}, not {lock_id}",
                hint="check `agentstate lock status`",
                holder=holder.to_dict(),
            )
        if self._probe_held() and holder.alive() and not force:
            raise StateLocked(
                f"refusing to unlock: the holder is alive, {holder.describe()}",
                hint="wait for it, stop it, or add --force if you are sure",
                holder=holder.to_dict(),
            )
        try:
            self.files.unlink(self.path)
        except FileNotFoundError:
            pass
        log.warning("lock force-unlocked: removed %s held by %s", self.path, holder.describe())
        return holder

    # -- flock -------------------------------------------------------------------------

    def _open_locked(self, blocking: bool) -> int | None:
        """Open the lock file and flock it; None if contended. Retries if the file was replaced."""
        while True:
            fd = self.files.open_rw(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as e:
                os.close(fd)
                if e.errno in _NO_FLOCK:
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
            os.close(fd)  # force-unlocked (unlinked) meanwhile: lock the new file instead

    def _acquire_flock(self, me: Holder, deadline: float, on_wait: Callable | None) -> bool:
        fd = self._open_locked(blocking=False)
        waited = False
        if fd is None:
            waited = True
            current = self.read_holder()
            log.info("waiting for lock %s held by %s", self.path, current.describe() if current else "an unknown holder")
            if on_wait:
                on_wait(current)
            fd = self._wait_flock(deadline)
            if fd is None:
                self._timed_out(deadline)
        self._fd = fd
        try:
            previous = Holder.parse(os.pread(fd, 65536, 0))
            if previous is not None:
                age = _age(previous.heartbeat_at)
                log.warning(
                    "stale lock record broken: PID %d on %s (%s) died %s without releasing; the kernel freed its lock",
                    previous.pid, previous.hostname, previous.operation,
                    f"{age:.0f}s after its last heartbeat" if age is not None else "",
                )
            self._write_record(fd, me)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._fd = None
            raise
        return waited

    def _wait_flock(self, deadline: float) -> int | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        done = threading.Event()
        guard = threading.Lock()
        box: dict[str, Any] = {}

        def wait() -> None:
            try:
                fd = self._open_locked(blocking=True)
            except BaseException as e:  # pragma: no cover - reported to the caller
                box["error"] = e
                done.set()
                return
            with guard:
                if box.get("abandoned"):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                    return
                box["fd"] = fd
            done.set()

        threading.Thread(target=wait, name="agentstate-lock-wait", daemon=True).start()
        done.wait(remaining)
        with guard:
            if "error" in box:
                raise box["error"]
            if "fd" in box:
                return box["fd"]
            box["abandoned"] = True
        return None

    def _write_record(self, fd: int, holder: Holder) -> None:
        data = holder.to_bytes()
        self.files.pwrite(fd, data, 0)
        self.files.truncate(fd, len(data))
        self.files.fsync(fd)

    # -- soft (no flock) -----------------------------------------------------------------

    def _acquire_soft(self, me: Holder, deadline: float, on_wait: Callable | None) -> bool:
        sleep = 0.001
        waited = False
        while True:
            try:
                fd = self.files.create(self.path)
            except FileExistsError:
                pass
            else:
                try:
                    write_all(self.files, fd, me.to_bytes())
                    self.files.fsync(fd)
                finally:
                    self.files.close(fd)
                return waited
            current = self.read_holder()
            if current is None:
                if self._record_abandoned():
                    self._break(None)
                    continue
            elif current.stale(self.stale_after):
                self._break(current)
                continue
            if not waited:
                waited = True
                log.info("waiting for lock %s held by %s", self.path, current.describe() if current else "a holder still writing its record")
                if on_wait:
                    on_wait(current)
            if time.monotonic() >= deadline:
                self._timed_out(deadline)
            time.sleep(min(sleep, max(0.0, deadline - time.monotonic())))
            sleep = min(sleep * 2, 0.05)

    def _record_abandoned(self) -> bool:
        """An empty/garbled lock file older than the stale threshold was left by a killed creator."""
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return False
        return age > self.stale_after

    def _break(self, stale: Holder | None) -> None:
        aside = f"{self.path}.broken-{uuid.uuid4().hex[:8]}"
        try:
            self.files.rename(self.path, aside)
        except FileNotFoundError:
            return
        taken = Holder.parse(self.files.read(aside))
        if stale is not None and (taken is None or taken.lock_id != stale.lock_id):
            # Someone else broke it and a new holder took it meanwhile: put theirs back.
            try:
                self.files.link(aside, self.path)
            except FileExistsError:
                log.error("lock %s changed hands while breaking a stale lock", self.path)
            self.files.unlink(aside)
            return
        self.files.unlink(aside)
        if stale is None:
            log.warning("stale lock broken: %s held an empty record older than %.0fs", self.path, self.stale_after)
        else:
            age = _age(stale.heartbeat_at)
            reason = "its process is gone" if stale.alive() is False else "its heartbeat is too old"
            log.warning(
                "stale lock broken: PID %d on %s (%s), last heartbeat %s ago; %s",
                stale.pid, stale.hostname, stale.operation, f"{age:.0f}s" if age is not None else "?", reason,
            )

    def _release_soft(self) -> None:
        current = self.read_holder()
        if current is None or self.holder is None or current.lock_id != self.holder.lock_id:
            log.warning("lock %s was broken while held; not removing the new holder's lock", self.path)
            return
        try:
            self.files.unlink(self.path)
        except FileNotFoundError:
            pass

    # -- shared --------------------------------------------------------------------------

    def _probe_held(self) -> bool:
        if self.mode == "soft":
            return os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _NO_FLOCK:
                return os.path.getsize(self.path) > 0
            return True
        finally:
            os.close(fd)
        return False

    def _timed_out(self, deadline: float) -> None:
        holder = self.read_holder()
        who = holder.describe() if holder else "an unknown holder"
        log.info("timed out waiting for lock %s held by %s", self.path, who)
        hint = (
            f"if that process is gone or stuck, run: agentstate force-unlock {holder.lock_id}"
            if holder
            else "retry with a longer --lock-timeout"
        )
        raise StateLocked(f"state is locked by {who}", hint=hint, holder=holder.to_dict() if holder else None)

    def _maybe_heartbeat(self) -> None:
        interval = max(0.5, self.stale_after / 5)
        if self.holder is None or time.monotonic() - self._last_beat < interval:
            return
        with self._io:
            if self.holder is None or os.getpid() != self._owner_pid:
                return
            self.holder.heartbeat_at = _iso(_now())
            if self.mode == "soft":
                current = self.read_holder()
                if current is None or current.lock_id != self.holder.lock_id:
                    return
                fd = self.files.open_rw(self.path, create=False)
                try:
                    self._write_record(fd, self.holder)
                finally:
                    os.close(fd)
            elif self._fd is not None:
                self._write_record(self._fd, self.holder)
            self._last_beat = time.monotonic()
