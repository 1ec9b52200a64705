"""The lock's holder record: who holds a store lock, for people (never for deciding who holds it).

One JSON object (lock ID, PID, host, boot ID, PID namespace, process start, operation, version,
acquired-at) written in place at the start of the lock file, padded with spaces to a multiple of
``RECORD_BLOCK`` and ended by a newline; blanked (spaces, then the newline) on release. Read by
error messages, ``lock status`` and doctor. docs/format.md section 5 gives the layout.

Identity: boot ID, PID namespace and process start let ``alive`` tell, under this kernel and PID
namespace, whether the recorded process still runs. Another process's start time and liveness
come from psutil (so ``lock status`` tells a dead holder from a live one on macOS too), imported
only when a record is judged (status, errors, doctor: psutil costs ~20 ms to import, more than
an acquire). A writer's own start time is read without psutil: on Linux the same number from
/proc/self/stat (field 22, clock ticks since boot: what records have always held; psutil's
create_time is boot time + ticks / CLK_TCK, converted back exactly), elsewhere psutil's
create_time. The boot ID and PID namespace have no psutil equivalent: on Linux they stay
/proc/sys/kernel/random/boot_id and /proc/self/ns/pid; elsewhere the boot time stands for the
boot ID and there are no PID namespaces (one constant).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from random import getrandbits as _getrandbits
from typing import Any

from .._version import __version__

__all__ = ["RECORD_BLOCK", "Holder", "blank", "now_iso", "padded", "process_start", "read_record", "record_size"]

RECORD_BLOCK = 512  # the record is padded to a multiple of this (and never shorter than the file)


# --- who we are ----------------------------------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


_LINUX = sys.platform.startswith("linux")
NO_PID_NAMESPACES = "none"  # the pid_namespace of a record written where the kernel has none (not Linux)


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as records hold it (Linux: clock ticks since boot, field 22 of
    /proc/PID/stat; elsewhere: seconds since the epoch, 6 decimals), through psutil; None if it is
    gone or a zombie."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        created = p.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # it runs (another user's, where the system hides its details)
        return ""
    if _LINUX:  # psutil: boot time + ticks / CLK_TCK; back to the ticks /proc gives (and records hold)
        return str(round((created - psutil.boot_time()) * os.sysconf("SC_CLK_TCK")))
    return f"{created:.6f}"


def _own_start(pid: int) -> str | None:
    """This process's start, as process_start gives it, without importing psutil on Linux."""
    if not _LINUX:
        return process_start(pid)
    stat = _read_text("/proc/self/stat")
    fields = stat.rsplit(")", 1)[-1].split() if stat else []
    return fields[19] if len(fields) >= 20 else None


def _boot_id() -> str | None:
    if _LINUX:
        return _read_text("/proc/sys/kernel/random/boot_id")
    import psutil

    return f"boot-time:{psutil.boot_time():.0f}"


def _pid_namespace() -> str | None:
    if not _LINUX:
        return NO_PID_NAMESPACES
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


_identity: tuple[int, str, str | None, str | None, str | None] | None = None


def _forget_identity() -> None:
    global _identity, _templates
    _identity, _templates = None, {}


os.register_at_fork(after_in_child=_forget_identity)  # a forked child is another process


def _me() -> tuple[int, str, str | None, str | None, str | None]:
    """(pid, hostname, boot ID, PID namespace, process start) of this process, read once per process."""
    global _identity
    if _identity is None:
        pid = os.getpid()
        _identity = (pid, socket.gethostname(), _boot_id(), _pid_namespace(), _own_start(pid))
    return _identity


_second: tuple[int, str] = (-1, "")  # the last whole second formatted (one tuple: read atomically by threads)


def now_iso() -> str:
    """UTC now to the millisecond, "2026-01-02T03:04:05.678Z" (the seconds part formatted once a second)."""
    global _second
    t = time.time()
    s = int(t)
    cached = _second
    if cached[0] != s:
        cached = _second = (s, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)))
    return f"{cached[1]}.{int(t * 1000) % 1000:03d}Z"


def _uuid4() -> str:
    """A version-4 UUID string, as str(uuid.uuid4()) at a fifth of its cost and without a getrandom(2)
    (it is on every acquire and every item): from ``random``, which is seeded from the OS once per
    process and again in a forked child. Unique, not secret: nothing here is a credential."""
    b = bytearray(_getrandbits(128).to_bytes(16, "little"))
    b[6], b[8] = b[6] & 0x0F | 0x40, b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _age(iso: str) -> str:
    try:
        s = (datetime.now(UTC) - datetime.fromisoformat(iso.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return ""
    return f" ({s:.1f}s ago)" if s < 10 else f" ({s:.0f}s ago)"


# --- the holder record -----------------------------------------------------------------------------


@dataclass
class Holder:
    """The holder record written into the lock file (one JSON object)."""

    lock_id: str
    pid: int
    hostname: str
    operation: str
    acquired_at: str
    version: str = __version__
    boot_id: str | None = None
    pid_namespace: str | None = None
    process_start: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown fields, kept when parsing

    @classmethod
    def mine(cls, operation: str) -> Holder:
        pid, host, boot, ns, start = _me()
        return cls(_uuid4(), pid, host, operation, now_iso(), __version__, boot, ns, start)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS}

    def to_bytes(self) -> bytes:
        """The record's JSON. The fields that stay the same for a process and operation are encoded once:
        only the lock ID and the time change from one acquire to the next."""
        import orjson

        key = (self.pid, self.hostname, self.operation, self.version, self.boot_id, self.pid_namespace,
               self.process_start)
        parts = _templates.get(key)
        if parts is None and len(_templates) < 64:
            parts = _templates[key] = _template(self)
        if parts is None or len(self.lock_id) != 36 or len(self.acquired_at) != 24 or self.extra:
            return orjson.dumps(self.to_dict())
        head, middle, tail = parts
        return b"".join((head, self.lock_id.encode(), middle, self.acquired_at.encode(), tail))

    @classmethod
    def parse(cls, data: bytes | str | None) -> Holder | None:
        """The record in ``data``; None if it is blank (a free lock) or not a holder record."""
        if not data or not data.strip():
            return None
        import orjson

        try:
            d = orjson.loads(data)
            pid = d["pid"]
            if type(pid) is not int:
                return None
            opt = {k: None if d.get(k) is None else str(d[k]) for k in ("boot_id", "pid_namespace", "process_start")}
            return cls(str(d["lock_id"]), pid, str(d["hostname"]), str(d.get("operation", "?")),
                       str(d.get("acquired_at", "")), str(d.get("version", "?")), **opt,
                       extra={k: v for k, v in d.items() if k not in _FIELDS})
        except Exception:  # noqa: BLE001 - any garbage means "no record"
            return None

    def alive(self) -> bool | None:
        """Whether the holder process still runs: True/False when it ran under this kernel (same boot
        ID) in this PID namespace, else None (unknown: another host, boot or namespace)."""
        _, _, boot, ns, _ = _me()
        if not boot or not ns or self.boot_id != boot or self.pid_namespace != ns:
            return None
        start = process_start(self.pid)
        return start is not None and (self.process_start is None or start in ("", self.process_start))

    def describe(self) -> str:
        return (f"PID {self.pid} on {self.hostname} ({self.operation}, since {self.acquired_at}"
                f"{_age(self.acquired_at)}, lock ID {self.lock_id})")


_FIELDS = tuple(f for f in Holder.__dataclass_fields__ if f != "extra")
_LOCK_ID, _AT = "L" * 36, "T" * 24  # placeholders of the lock ID and acquired_at (both fixed length)
_templates: dict[tuple, tuple[bytes, bytes, bytes] | None] = {}


def _template(h: Holder) -> tuple[bytes, bytes, bytes] | None:
    """(before the lock ID, between it and the time, after the time) of ``h``'s JSON; None if the
    placeholders are not found exactly once each (then the record is encoded whole every time)."""
    import orjson

    d = h.to_dict()
    d["lock_id"], d["acquired_at"] = _LOCK_ID, _AT
    out = orjson.dumps(d)
    lid, at = f'"{_LOCK_ID}"'.encode(), f'"{_AT}"'.encode()
    if out.count(lid) != 1 or out.count(at) != 1 or out.index(lid) > out.index(at):
        return None
    head, rest = out.split(lid)
    middle, tail = rest.split(at)
    return head + b'"', b'"' + middle + b'"', b'"' + tail


# --- reading and writing it in the lock file ---------------------------------------------------------


MAX_RECORD = 64 << 10  # bytes of a lock file read for its record


def read_record(fd: int) -> Holder | None:
    """The record in the open lock file; None if blank, garbled or unreadable (it only informs people)."""
    try:  # a record is a few hundred bytes: a lock file grown huge (by hand) is never read whole
        return Holder.parse(os.pread(fd, min(max(os.fstat(fd).st_size, RECORD_BLOCK), MAX_RECORD), 0))
    except OSError:
        return None


def record_size(body: bytes, file_size: int) -> int:
    """The size the record ``body`` is written at: a multiple of RECORD_BLOCK with room for the
    newline, never shorter than the file (so no stale byte of a longer record is left after it)."""
    return max(-(-(len(body) + 1) // RECORD_BLOCK) * RECORD_BLOCK, file_size)


def padded(body: bytes, size: int) -> bytes:
    """``body`` padded with spaces to ``size`` bytes, the last a newline."""
    return body + b" " * (size - len(body) - 1) + b"\n"


_blanks: dict[int, bytes] = {}


def blank(size: int) -> bytes:
    """A blank record of ``size`` bytes (a free lock's): spaces and a newline (made once per size)."""
    out = _blanks.get(size)
    if out is None:
        out = b" " * (size - 1) + b"\n"
        if len(_blanks) < 16:
            _blanks[size] = out
    return out
