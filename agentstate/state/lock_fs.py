"""The filesystem under a lock file: refuse where flock would not exclude other hosts.

The filesystem type and mount point come from /proc/self/mountinfo (the entry of the deepest
mount point holding the directory, on the same device first), cached per st_dev while that mount
point still holds the directory (device numbers are reused after an unmount). Types in
``UNSHARED_FLOCK`` (and every ``fuse.*``) are refused up front, before the lock file is created,
with one StorageError line; the same refusal names the filesystem when flock itself fails.
"""

from __future__ import annotations

import os
import re

from ..errors import StorageError

__all__ = ["LOCAL_NAMES", "UNSHARED_FLOCK", "check_filesystem", "filesystem", "names_are_local", "unsupported"]

# Filesystem types (from /proc/self/mountinfo) refused up front: several hosts may mount them, and
# their flock is local to each client (cifs, 9p, FUSE without lock forwarding, virtiofs and guest
# shared folders) or depends on mount options and leases that can lapse silently (NFS).
UNSHARED_FLOCK = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "vboxsf", "fuse"})
# Local filesystems: a file's name can change only through this kernel, so the name /proc/self/fd/N shows
# for an open descriptor is the truth (a network or cluster filesystem's can lag a change made on another
# host). On these a kept lock descriptor is checked by that name instead of a stat (agentstate.state.lock).
LOCAL_NAMES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "overlay", "zfs", "bcachefs"})
_fs_cache: dict[int, tuple[str, str]] = {}  # st_dev -> (filesystem type, mount point)
_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem(directory: str) -> tuple[str, str] | None:
    """(type, mount point) of the filesystem holding ``directory``, from /proc/self/mountinfo."""
    try:
        dev = os.stat(directory).st_dev
    except OSError:
        return None
    real = os.path.realpath(directory)
    cached = _fs_cache.get(dev)
    # A device number is reused once its filesystem is unmounted (tmpfs, FUSE...: anonymous ones come
    # from one pool), so an entry is trusted only while its mount point still holds the directory.
    if cached is not None and _under(real, cached[1]):
        return cached
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = f"{os.major(dev)}:{os.minor(dev)}"
    best: tuple[bool, int, str, str] | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        if not sep or len(parts) < 5 or not tail:
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), parts[4])
        if not _under(real, point):
            continue
        key = (parts[2] == want, len(point), tail[0], point)  # same device first, then the deepest mount
        if best is None or key[:2] >= best[:2]:
            best = key
    if best is None:
        return None
    _fs_cache[dev] = best[2], best[3]
    return _fs_cache[dev]


def _under(real: str, point: str) -> bool:
    return real == point or real.startswith(point.rstrip("/") + "/")


def unsupported(path: str, fs: tuple[str, str] | None, why: str) -> StorageError:
    """The refusal: one line naming the filesystem (type and mount point) and what to do instead."""
    where = f"the {fs[0]} filesystem at {fs[1]}" if fs else "its filesystem"
    return StorageError(
        f"cannot lock {path}: {where} {why}; agentstate never writes without its lock: keep the store "
        "in a directory on a local filesystem, or use the PostgreSQL backend (--url postgresql://...)",
        path=path, filesystem=fs[0] if fs else None,
    )


_checked: dict[str, bool] = {}  # lock paths found on a filesystem that shares flock -> is it in LOCAL_NAMES


def check_filesystem(path: str) -> None:
    """StorageError if the filesystem holding ``path`` is one whose flock other hosts do not see. A path
    that passed is not checked again in this process (it cost a stat and a lookup on every acquire)."""
    if path in _checked:
        return
    fs = filesystem(os.path.dirname(path) or ".")
    if fs and (fs[0] in UNSHARED_FLOCK or fs[0].startswith("fuse.")):
        raise unsupported(path, fs, "does not share flock locks between the hosts that mount it")
    if fs is not None:  # unknown (the directory does not exist yet...): asked again next time
        _checked[path] = fs[0] in LOCAL_NAMES


def names_are_local(path: str) -> bool:
    """True if ``path`` passed check_filesystem on a filesystem in LOCAL_NAMES."""
    return _checked.get(path, False)
