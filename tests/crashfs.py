"""A crash-simulating file layer: the one stand-in the test suite allows for the disk.

``CrashFS`` implements the ``fileio.OsFiles`` interface and models ONE directory (the
store directory) in memory, with the durability rules of a POSIX filesystem after power
loss:

* every inode has its *current* data and its *durable* data (as of its last ``fsync``);
* the directory has a *current* namespace (name -> inode) and a *durable* namespace (as of
  its last ``fsync_dir``). ``create``/``link``/``rename``/``unlink`` change only the current
  namespace; they become durable at the next ``fsync_dir`` of that directory. Namespace
  operations since then are kept in order, so a crash may also persist any *prefix* of
  them (ordered metadata journaling, as on ext4/XFS).

Design choice for the lock (documented here as the brief asks): the lock needs a real
``fcntl.flock`` on a real fd, so everything that is not a state file of the modelled
directory is passed through to the real ``OsFiles``: the lock file ``state.json.lock``
(``open_rw``/``pwrite``/``fsync``/``close`` on its real fd), ``mkdir`` and
``fsync_dir`` of other directories. The modelled directory exists for real (it holds only
the lock file), so the whole ``StateStore.transaction()`` runs unmodified on top of this
layer. Modelled fds are numbered from 1,000,000 so they never collide with real ones.

Recording: set ``on_op`` (a callable taking the operation's description) or use
``record()``; after every operation on the modelled directory a ``Snapshot`` can be taken.
``Snapshot.crash_states()`` yields every state the disk could be in if power were lost at
that moment:

* names: ``durable`` (unsynced names lost), ``current`` (none lost), and every prefix of the
  pending namespace operations;
* data: ``durable`` (unsynced data lost), ``current`` (none lost), ``torn`` (the first half
  of unsynced data persisted) and ``zeros`` (the size persisted, the data not, as on
  ext4 data=writeback).

The brief's four states are (a) current names + durable data, (b) durable names + current
data, (c) durable names + durable data, (d) current names + current data; the others are
extra. ``materialise()`` writes a crash state into a real directory, where the real
loader (``StateStore(dir).read()`` over the real ``OsFiles``) can read it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agentstate.state.fileio import OsFiles

FD_BASE = 1_000_000


@dataclass
class Inode:
    data: bytearray
    durable: bytes
    mode: int


@dataclass(frozen=True)
class Snapshot:
    """The modelled directory at one instant. ``label`` names the operation just done."""

    label: str
    index: int
    inodes: dict[int, tuple[bytes, bytes, int]]  # ino -> (current data, durable data, mode)
    names: dict[str, int]
    durable_names: dict[str, int]
    pending: tuple[tuple[tuple[str, int | None], ...], ...]  # namespace ops since the last fsync_dir

    def _namespaces(self) -> Iterator[tuple[str, dict[str, int]]]:
        yield "names=durable", dict(self.durable_names)
        ns = dict(self.durable_names)
        for k, op in enumerate(self.pending, 1):
            for name, ino in op:
                if ino is None:
                    ns.pop(name, None)
                else:
                    ns[name] = ino
            label = "names=current" if k == len(self.pending) else f"names=prefix{k}"
            yield label, dict(ns)
        if not self.pending:
            yield "names=current", dict(self.names)

    def _data(self, ino: int, how: str) -> bytes:
        current, durable, _ = self.inodes[ino]
        if how == "current" or current == durable:
            return current
        if how == "durable":
            return durable
        if how == "torn":
            return current[: len(current) // 2] if len(current) > len(durable) else durable
        return bytes(len(current))  # zeros

    def crash_states(self) -> Iterator[tuple[str, dict[str, tuple[bytes, int]]]]:
        """(label, {name: (bytes, mode)}) for every state a power loss now could leave."""
        for nlabel, ns in self._namespaces():
            for how in ("durable", "current", "torn", "zeros"):
                yield f"{nlabel},data={how}", {
                    name: (self._data(ino, how), self.inodes[ino][2]) for name, ino in sorted(ns.items())
                }

    def files(self) -> dict[str, bytes]:
        """The current (no crash) contents."""
        return {name: self.inodes[ino][0] for name, ino in self.names.items()}


def materialise(state: dict[str, tuple[bytes, int]], directory: str) -> None:
    """Write a crash state into ``directory`` (emptied first) as real files."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for entry in os.listdir(directory):
        os.unlink(os.path.join(directory, entry))
    for name, (data, mode) in state.items():
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)


class CrashFS(OsFiles):
    """In-memory model of one directory with fsync/fsync_dir durability; see the module doc.

    ``max_write`` makes every ``write`` short (at most that many bytes), so the writer's
    loop and torn temp files are exercised. ``link_errno`` makes every ``link`` in the
    modelled directory fail with that errno (e.g. EPERM: a filesystem without hard links).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_write: int | None = None,
                 link_errno: int | None = None) -> None:
        self.dir = os.path.abspath(os.fspath(directory))
        self.max_write = max_write
        self.link_errno = link_errno
        self.inodes: dict[int, Inode] = {}
        self.names: dict[str, int] = {}
        self.durable_names: dict[str, int] = {}
        self.pending: list[tuple[tuple[str, int | None], ...]] = []
        self.fds: dict[int, list[int]] = {}  # fd -> [ino, offset]
        self._next_ino = 1
        self._next_fd = FD_BASE
        self.ops: list[str] = []
        self.on_op: Callable[[str], None] | None = None

    # -- set-up and inspection -------------------------------------------------------------

    def put(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """A file that exists durably (data and name) before the test starts."""
        ino = self._new_inode(mode)
        self.inodes[ino].data[:] = data
        self.inodes[ino].durable = bytes(data)
        self.names[name] = ino
        self.durable_names[name] = ino

    def put_link(self, name: str, existing: str) -> None:
        """A durable second name for an existing file (a hard link)."""
        self.names[name] = self.durable_names[name] = self.names[existing]

    def snapshot(self, label: str) -> Snapshot:
        return Snapshot(
            label,
            len(self.ops),
            {ino: (bytes(i.data), i.durable, i.mode) for ino, i in self.inodes.items()},
            dict(self.names),
            dict(self.durable_names),
            tuple(self.pending),
        )

    def record(self) -> list[Snapshot]:
        """Start recording: returns a list that gets a Snapshot before and after every operation."""
        snaps = [self.snapshot("start")]
        self.on_op = lambda op: snaps.append(self.snapshot(op))
        return snaps

    # -- helpers ---------------------------------------------------------------------------

    def _modelled(self, path: str) -> str | None:
        """The name inside the modelled directory, or None for a passed-through path."""
        p = os.path.abspath(path)
        if os.path.dirname(p) != self.dir or p.endswith(".lock"):
            return None
        return os.path.basename(p)

    def _new_inode(self, mode: int) -> int:
        ino = self._next_ino
        self._next_ino += 1
        self.inodes[ino] = Inode(bytearray(), b"", mode)
        return ino

    def _new_fd(self, ino: int) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self.fds[fd] = [ino, 0]
        return fd

    def _done(self, op: str) -> None:
        self.ops.append(op)
        if self.on_op is not None:
            self.on_op(op)

    def _ns(self, *changes: tuple[str, int | None]) -> None:
        for name, ino in changes:
            if ino is None:
                del self.names[name]
            else:
                self.names[name] = ino
        self.pending.append(tuple(changes))

    def _ino(self, name: str, path: str) -> int:
        if name not in self.names:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return self.names[name]

    def _exclusive(self, name: str, path: str) -> None:
        if name in self.names:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)

    # -- the OsFiles interface ---------------------------------------------------------------

    def read(self, path: str) -> bytes | None:
        name = self._modelled(path)
        if name is None:
            return super().read(path)
        ino = self.names.get(name)
        return None if ino is None else bytes(self.inodes[ino].data)

    def create(self, path: str, mode: int = 0o600) -> int:
        name = self._modelled(path)
        if name is None:
            return super().create(path, mode)
        self._exclusive(name, path)
        ino = self._new_inode(mode)
        self._ns((name, ino))
        fd = self._new_fd(ino)
        self._done(f"create {name}")
        return fd

    def open_rw(self, path: str, mode: int = 0o600, create: bool = True) -> int:
        name = self._modelled(path)
        if name is None:
            return super().open_rw(path, mode, create)
        if name not in self.names:
            if not create:
                self._ino(name, path)
            self._ns((name, self._new_inode(mode)))
        fd = self._new_fd(self.names[name])
        self._done(f"open_rw {name}")
        return fd

    def open_spare(self, path: str) -> int:
        name = self._modelled(path)
        if name is None:
            return super().open_spare(path)
        fd = self._new_fd(self._ino(name, path))
        self._done(f"open {name}")
        return fd

    def fstat(self, fd: int) -> os.stat_result:
        if fd not in self.fds:
            return super().fstat(fd)
        ino = self.fds[fd][0]
        links = sum(1 for i in self.names.values() if i == ino)
        inode = self.inodes[ino]
        return os.stat_result((stat.S_IFREG | inode.mode, ino, 0, links, 0, 0, len(inode.data), 0, 0, 0))

    def truncate(self, fd: int, size: int) -> None:
        if fd not in self.fds:
            return super().truncate(fd, size)
        buf = self.inodes[self.fds[fd][0]].data
        if len(buf) > size:
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))
        self._done(f"truncate ino{self.fds[fd][0]} {size}")

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if fd not in self.fds:
            return super().write(fd, data)
        data = bytes(data[: self.max_write] if self.max_write else data)
        ino, off = self.fds[fd]
        buf = self.inodes[ino].data
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))
        buf[off : off + len(data)] = data
        self.fds[fd][1] = off + len(data)
        self._done(f"write {len(data)}B ino{ino}")
        return len(data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if fd not in self.fds:
            return super().pwrite(fd, data, offset)
        buf = self.inodes[self.fds[fd][0]].data
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        self._done(f"pwrite {len(data)}B ino{self.fds[fd][0]}")
        return len(data)

    def fsync(self, fd: int) -> None:
        if fd not in self.fds:
            return super().fsync(fd)
        inode = self.inodes[self.fds[fd][0]]
        inode.durable = bytes(inode.data)
        self._done(f"fsync ino{self.fds[fd][0]}")

    def fchmod(self, fd: int, mode: int) -> None:
        if fd not in self.fds:
            return super().fchmod(fd, mode)
        self.inodes[self.fds[fd][0]].mode = mode
        self._done(f"fchmod ino{self.fds[fd][0]} {mode:o}")

    def close(self, fd: int) -> None:
        if fd not in self.fds:
            return super().close(fd)
        ino, _ = self.fds.pop(fd)
        self._done(f"close ino{ino}")

    def link(self, src: str, dst: str) -> None:
        s, d = self._modelled(src), self._modelled(dst)
        if s is None and d is None:
            return super().link(src, dst)
        assert s is not None and d is not None, "link across the modelled directory"
        if self.link_errno is not None:
            raise OSError(self.link_errno, os.strerror(self.link_errno), dst)
        ino = self._ino(s, src)
        self._exclusive(d, dst)
        self._ns((d, ino))
        self._done(f"link {s} {d}")

    def rename(self, src: str, dst: str) -> None:
        s, d = self._modelled(src), self._modelled(dst)
        if s is None and d is None:
            return super().rename(src, dst)
        assert s is not None and d is not None, "rename across the modelled directory"
        ino = self._ino(s, src)
        # POSIX: renaming one name of an inode over another name of the same inode does nothing.
        if s != d and self.names.get(d) != ino:
            self._ns((s, None), (d, ino))
        self._done(f"rename {s} {d}")

    def unlink(self, path: str) -> None:
        name = self._modelled(path)
        if name is None:
            return super().unlink(path)
        self._ino(name, path)
        self._ns((name, None))
        self._done(f"unlink {name}")

    def fsync_dir(self, path: str) -> None:
        if os.path.abspath(path) != self.dir:
            return super().fsync_dir(path)
        self.durable_names = dict(self.names)
        self.pending.clear()
        self._done("fsync_dir")

    def listdir(self, path: str) -> list[str]:
        if os.path.abspath(path) != self.dir:
            return super().listdir(path)
        return sorted(set(self.names) | set(os.listdir(self.dir)))

    def mode(self, path: str) -> int | None:
        name = self._modelled(path)
        if name is None:
            return super().mode(path)
        ino = self.names.get(name)
        return None if ino is None else self.inodes[ino].mode
