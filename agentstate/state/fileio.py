"""The one file-I/O seam: every write, fsync, rename, link and unlink of stored data.

Two parts:

* ``OsFiles``, the file layer: thin wrappers over ``os``. Tests swap in a layer with
  the same methods (``tests/crashfs.py`` simulates power loss by dropping what was
  not fsynced).
* The write protocol (``commit``) and its helpers, written against that layer so the
  order of syscalls can be read top to bottom. docs/format.md gives each step's reason.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Sequence

from ..errors import StorageError
from ..logs import getLogger

log = getLogger("agentstate.fileio")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_fdatasync = getattr(os, "fdatasync", os.fsync)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# link() may be refused by filesystems without hard links; then the backup is copied.
NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


class NotRegularFile(OSError):
    """A path that should be a regular file is a FIFO, a device or a socket."""


class OsFiles:
    """The real file layer. Methods raise OSError; the protocol turns that into StorageError."""

    def read(self, path: str) -> bytes | None:
        """The whole file, or None if it does not exist. NotRegularFile for a FIFO or a device (opened
        without blocking: a FIFO planted there never hangs the reader; /dev/zero is never read to the end)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            # A small file (the usual state) in one read, without asking its size; a larger one in one
            # read of its whole size: no chunk list to join (a second copy of a large state).
            data = os.read(fd, 1 << 16)
            if data and len(data) < 1 << 16:  # a short read of a regular file is its end
                return data
            st = os.fstat(fd)  # empty (as a FIFO with no writer reads) or large: what is it?
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(errno.EINVAL, "not a regular file")
            want = st.st_size + 1
            data = os.pread(fd, want, 0)  # from the start again: no concatenation of the first piece
            if len(data) < want:
                return data
            chunks, at = [data], len(data)
            while data:  # it grew meanwhile
                data = os.pread(fd, 1 << 20, at)
                at += len(data)
                chunks.append(data)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def create(self, path: str, mode: int = 0o600) -> int:
        """A new file, never an existing one and never through a symlink (O_EXCL|O_NOFOLLOW)."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)

    def open_rw(self, path: str, mode: int = 0o600, create: bool = True) -> int:
        """Open (or create) for reading and writing, never through a symlink; used for the lock file."""
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0) | _NOFOLLOW | _CLOEXEC, mode)

    def open_spare(self, path: str) -> int:
        """Open an existing file to overwrite it (the spare inode, see commit): never create it, never
        follow a symlink, never block (a FIFO planted there fails with ENXIO instead)."""
        return os.open(path, os.O_WRONLY | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC)

    def open_sync(self, path: str) -> int:
        """Open an existing file only to make it durable (``datasync``): read-only, never created, never
        through a symlink, never blocking; used for SQLite's ``-wal`` (agentstate.sql.durable)."""
        return os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def datasync(self, fd: int) -> None:
        """``fdatasync``: the file's data and what reading it back needs (its size), as SQLite syncs the WAL
        (``fsync`` where there is no fdatasync)."""
        _fdatasync(fd)

    def fchmod(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst, follow_symlinks=False)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        os.mkdir(path, mode)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def mode(self, path: str) -> int | None:
        """Permission bits of an existing file, or None."""
        try:
            return os.stat(path, follow_symlinks=False).st_mode & 0o7777
        except FileNotFoundError:
            return None


def describe(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e} ({name})" if name else str(e.strerror or e)


def io_error(action: str, path: str, e: OSError, *, unchanged: bool = True, tail: str = "") -> StorageError:
    hints = {
        errno.ENOSPC: "free some disk space and retry",
        errno.EDQUOT: "free some disk quota and retry",
        errno.EACCES: "check the permissions of the store directory",
        errno.EPERM: "check the permissions of the store directory",
        errno.EROFS: "the filesystem is read-only; use a writable --dir",
        errno.EIO: "the disk reported an I/O error; check it before retrying",
    }
    tail = tail or ("; the stored state is unchanged" if unchanged else "")
    return StorageError(
        f"cannot {action} {path}: {describe(e)}{tail}",
        hint=hints.get(e.errno or 0),
        errno=errno.errorcode.get(e.errno or 0),
        path=path,
    )


def write_all(files: OsFiles, fd: int, data: bytes | Sequence[bytes]) -> None:
    """Write every byte of ``data`` (or of each part, in order), looping on short writes."""
    for part in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
        view = memoryview(part)
        while view:
            n = files.write(fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "write returned no progress")
            view = view[n:]


def write_all_at(files: OsFiles, fd: int, data: bytes, offset: int) -> None:
    """pwrite every byte at ``offset``, looping on short writes."""
    n = files.pwrite(fd, data, offset)
    if n == len(data):  # the usual case: one call, no view to slice
        return
    if n <= 0:
        raise OSError(errno.EIO, "pwrite returned no progress")
    view, offset = memoryview(data)[n:], offset + n
    while view:
        n = files.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite returned no progress")
        view, offset = view[n:], offset + n


SMALL_JOIN = 1 << 16
# A state up to this size keeps a spare inode (a third copy on disk; see commit). A larger one does not:
# freeing its old backup is a small part of writing it, and its size is better not kept three times.
SPARE_BYTES = 1 << 20


def temp_name(path: str, kind: str = "tmp") -> str:
    """The one temp name a writer of ``path`` uses for ``kind`` ("tmp": the new version,
    "bak.tmp": the next backup). Fixed, not random: only the lock holder writes, so a name left by
    a killed writer is simply replaced by the next one (no directory listing on every commit)."""
    return f"{path}.{kind}-new"


def temp_prefixes(name: str) -> tuple[str, ...]:
    """File-name prefixes of the temp files a writer of ``name`` may leave behind (``restore-``:
    older agentstate versions, which rolled back a failed directory fsync)."""
    return (f"{name}.tmp-", f"{name}.bak.tmp-", f"{name}.restore-")


def ensure_dir(files: OsFiles, path: str) -> None:
    """Create the store directory (0700) and make its entry durable in the parent."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise StorageError(
            f"cannot create store directory {path}: its parent {parent} {what}",
            hint="create the parent directory or pass another --dir",
            errno="ENOTDIR" if os.path.exists(parent) else "ENOENT",
            path=path,
        )
    try:
        files.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise StorageError(f"{path} exists and is not a directory", path=path) from None
        return
    except OSError as e:
        raise io_error("create store directory", path, e) from None
    try:
        files.fsync_dir(parent)
    except OSError as e:
        raise io_error("make durable the new directory", path, e) from None
    log.info("created store directory %s", path)


def remove_temps(files: OsFiles, directory: str, name: str) -> list[str]:
    """Delete temp files a killed writer left. Call only while holding the lock."""
    prefixes = temp_prefixes(name)
    removed = []
    try:
        entries = files.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        if entry.startswith(prefixes):
            p = os.path.join(directory, entry)
            try:
                files.unlink(p)
                removed.append(p)
            except OSError:
                pass
    if removed:
        log.warning("removed %d temp file(s) left by an interrupted writer: %s", len(removed), ", ".join(removed))
    return removed


def _write_new(files: OsFiles, path: str, data: bytes | Sequence[bytes], mode: int) -> None:
    """Create ``path`` (O_EXCL), write, fsync, close. On error the file is removed."""
    try:
        try:
            fd = files.create(path, 0o600)
        except FileExistsError:
            _unlink_leftover(files, path)
            fd = files.create(path, 0o600)
    except OSError as e:
        raise io_error("create temp file", path, e) from None
    try:
        _fill(files, fd, path, data, mode, 0o600)
    except BaseException:
        _quiet_close(files, fd)
        _quiet_unlink(files, path)
        raise
    try:
        files.close(fd)
    except OSError as e:
        _quiet_unlink(files, path)
        raise io_error("close temp file", path, e) from None


def _fill(files: OsFiles, fd: int, path: str, data: bytes | Sequence[bytes], mode: int, current: int,
          size: int | None = None) -> None:
    """Write ``data`` into the temp file ``fd`` (at ``path``), with ``mode`` (``current``: its mode now),
    cut to ``size`` if given, and fsync it. A failed fsync is final: the caller discards the file."""
    try:
        if current != mode:
            files.fchmod(fd, mode)
        write_all(files, fd, data)
        if size is not None:
            files.truncate(fd, size)
    except OSError as e:
        raise io_error("write temp file", path, e) from None
    try:
        files.fsync(fd)
    except OSError as e:
        # Never rename a file whose fsync failed, and never retry the fsync as if it could succeed.
        raise io_error("fsync temp file", path, e, tail="; the new version was discarded before it "
                       "replaced anything: the stored state is unchanged") from None


def _open_spare(files: OsFiles, path: str) -> tuple[int, int] | None:
    """The spare inode at ``path`` opened to be overwritten, and its mode, if it may be: a regular file
    with no other name (a name of the state or the backup, or a hard link someone made elsewhere, is
    never written in place). None: there is none to reuse (a new temp file is created instead)."""
    try:
        fd = files.open_spare(path)
    except OSError:
        return None
    try:
        st = files.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd, stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    _quiet_close(files, fd)
    return None


def _write_spare(files: OsFiles, fd: int, current: int, path: str, data: bytes | Sequence[bytes], mode: int,
                 size: int) -> None:
    """Overwrite the spare inode (now at the temp name ``path``) with ``data`` (``size`` bytes) from its
    start, cut to that length, fsync, close. On error the caller removes the temp name."""
    try:
        _fill(files, fd, path, data, mode, current, size)
    except BaseException:
        _quiet_close(files, fd)
        raise
    try:
        files.close(fd)
    except OSError as e:
        raise io_error("close temp file", path, e) from None


def _unlink_leftover(files: OsFiles, path: str) -> None:
    """Remove a temp file a killed writer left at our fixed temp name (we hold the lock)."""
    try:
        files.unlink(path)
    except FileNotFoundError:
        return
    log.warning("removed a temp file left by an interrupted writer: %s", path)


def _quiet_close(files: OsFiles, fd: int) -> None:
    try:
        files.close(fd)
    except OSError:
        pass


def _quiet_unlink(files: OsFiles, path: str | None) -> None:
    if path is None:
        return
    try:
        files.unlink(path)
    except OSError:
        pass


def _keep_copy(files: OsFiles, src: str, dst: str, tmp: str, src_bytes: bytes | None, mode: int) -> None:
    """Give the inode at ``src`` the name ``dst`` too (atomically replacing it) through the temp name
    ``tmp``: link, or where links are unsupported, a fsynced copy of ``src_bytes``."""
    try:
        try:
            files.link(src, tmp)
        except FileExistsError:
            _unlink_leftover(files, tmp)
            files.link(src, tmp)
    except OSError as e:
        if e.errno not in NO_LINK or src_bytes is None:
            raise io_error("link", tmp, e) from None
        _write_new(files, tmp, src_bytes, mode)  # no hard links here: copy and fsync
    try:
        files.rename(tmp, dst)
    except OSError as e:
        _quiet_unlink(files, tmp)
        raise io_error("rename into place", dst, e) from None
    except BaseException:  # an interruption (signal): leave no temp name behind
        _quiet_unlink(files, tmp)
        raise
    if files.mode(tmp) is not None:
        # rename() between two names of one inode succeeds and does nothing (POSIX): ``dst``
        # already was this version (e.g. after a commit that failed at its last rename). Drop the temp name.
        _quiet_unlink(files, tmp)


class Previous:
    """What the state path holds before a commit, and what to do with it: whether it ``exists``, is
    ``valid`` (it decoded and verified; only then may it become the backup), and its bytes ``data``
    (for the copy fallback). A plain class: a dataclass costs ~1 ms of every command's start-up."""

    __slots__ = ("exists", "valid", "data")

    def __init__(self, exists: bool, valid: bool, data: bytes | None = None) -> None:
        self.exists, self.valid, self.data = exists, valid, data

    def __repr__(self) -> str:
        return f"Previous(exists={self.exists!r}, valid={self.valid!r}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Previous):
            return NotImplemented
        return (self.exists, self.valid, self.data) == (other.exists, other.valid, other.data)


def corrupt_name(path: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{path}.corrupt-{stamp}-{os.urandom(3).hex()}"


def commit(files: OsFiles, path: str, data: bytes | Sequence[bytes], previous: Previous,
           on_durable: Callable[[], None] | None = None) -> str | None:
    """Atomically replace ``path`` with ``data``; keep the previous valid version as ``path.bak``.

    Steps (docs/format.md, "Write protocol"):
      1. the new version's file is the temp file ``path.tmp-new``: the spare inode ``path.spare`` (the
         backup before last, kept by the previous commit) renamed to that name if it is a regular file
         with no other name, else a new file (O_EXCL, 0600); ``data`` is written into it from its
         start (and it is cut to length), looping on short writes;
      2. fsync it, close it;
      3. if ``path`` holds a valid version: link the backup to ``path.spare`` (so that replacing it
         frees no inode: it is the next commit's spare), link ``path`` to ``path.bak.tmp-new`` and
         rename that over ``path.bak`` (copy+fsync if links are unsupported); if it holds an invalid
         one: link it aside as ``path.corrupt-<time>`` (evidence, never deleted); the backup is left alone;
      4. rename the temp file over ``path``: the path is never missing, never truncated;
      5. fsync the directory; only then is the commit reported done.
    On an error (or a signal) before step 4, ``path`` is unchanged (and, before step 3's rename,
    the backup too) and no temp file remains. Signals are deferred from step 4 to the end of step 5.
    If step 5 fails the outcome is unknown: fail-stop, nothing is rolled back (a later fsync proves
    nothing about the earlier writes); the StorageError says so. Returns the path where an invalid
    previous file was kept, if any. ``on_durable()`` runs once step 5 succeeded, still inside the span
    where signals are held: whatever the caller records there (the commit happened) is recorded even if
    a signal lands on the very next bytecode.

    Why a spare: a plain replace creates one inode and frees one (the backup before last) on every
    commit. On ext4 with ``discard`` the freeing alone is ~200 µs of a ~600 µs commit; reusing that
    inode for the next version creates none and frees none.
    """
    from . import signals

    directory = os.path.dirname(path) or "."
    mode = files.mode(path) if previous.exists else None
    mode = 0o600 if mode is None else mode
    tmp: str | None = temp_name(path)
    bak_tmp = temp_name(path, "bak.tmp")
    spare = path + ".spare"
    linked_spare = False  # step 3 gave the backup the spare's name (undone if the commit fails)
    size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else sum(map(len, data))
    if size <= SMALL_JOIN and not isinstance(data, (bytes, bytearray, memoryview)):
        data = b"".join(data)  # one write(2) instead of one per part; large ones are not copied
    kept_at = None
    try:
        taken = _take_spare(files, spare, tmp)
        if taken is not None:  # steps 1-2, into the spare inode, now at the temp name
            _write_spare(files, *taken, tmp, data, mode, size)
        else:
            _write_new(files, tmp, data, mode)  # steps 1-2
        if previous.exists and previous.valid:  # step 3
            linked_spare = size <= SPARE_BYTES and _keep_spare(files, path + ".bak", spare)
            _keep_copy(files, path, path + ".bak", bak_tmp, previous.data, mode)
        elif previous.exists:
            kept_at = corrupt_name(path)
            _keep_copy(files, path, kept_at, bak_tmp, previous.data, mode)
            log.warning("kept the corrupted state file as %s", kept_at)
        with signals.critical():  # from the rename to the end of the directory fsync
            try:
                files.rename(tmp, path)  # step 4
            except OSError as e:
                raise io_error("rename new state into", path, e) from None
            tmp = None
            try:
                files.fsync_dir(directory)  # step 5
            except OSError as e:
                raise fsync_dir_failed(directory, path, e) from None
            if on_durable is not None:
                on_durable()
    except BaseException:
        # An error or a signal (even one that struck right after a create or link returned): our
        # temp names go, and the spare name step 3 added. Safe: we hold the lock, and nobody else
        # writes these names.
        if tmp is not None:
            _quiet_unlink(files, tmp)
            _quiet_unlink(files, bak_tmp)
            if linked_spare:
                _quiet_unlink(files, spare)
        raise
    return kept_at


def _take_spare(files: OsFiles, spare: str, tmp: str) -> tuple[int, int] | None:
    """The spare inode, open for writing (and its mode) and renamed to the temp name ``tmp`` (replacing
    a leftover there), if there is one to reuse (see _open_spare); else None."""
    taken = _open_spare(files, spare)
    if taken is None:
        return None
    fd = taken[0]
    try:
        files.rename(spare, tmp)
    except BaseException as e:
        _quiet_close(files, fd)
        if isinstance(e, OSError):
            raise io_error("rename temp file", tmp, e) from None
        raise
    return taken


def _keep_spare(files: OsFiles, backup: str, spare: str) -> bool:
    """Give the current backup's inode the name ``spare`` too, so that replacing the backup frees
    nothing: it is the next commit's spare. False where it cannot (no backup yet, no hard links, a
    name there that will not go): that commit then frees the old backup, as a plain replace does.
    Any other failure is the commit's (nothing replaced yet: the stored state is unchanged)."""
    try:
        try:
            files.link(backup, spare)
        except FileExistsError:  # not reusable (another name, not a regular file), or a killed writer's
            try:
                files.unlink(spare)
            except OSError:
                return False
            files.link(backup, spare)
    except OSError as e:
        if e.errno == errno.ENOENT or e.errno in NO_LINK:
            return False
        raise io_error("link", spare, e) from None
    return True


def fsync_dir_failed(directory: str, path: str, e: OSError) -> StorageError:
    """Fail-stop: the rename is done but not known durable. Say exactly that, claim nothing more."""
    return StorageError(
        f"cannot fsync directory {directory} after replacing {path}: {describe(e)}; the outcome is unknown "
        "(the new version may or may not survive a crash); run `agentstate doctor`",
        errno=errno.errorcode.get(e.errno or 0), path=path, outcome="unknown",
    )
