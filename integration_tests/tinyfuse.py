"""A real FUSE filesystem in a few lines, for tests that need one: an empty, read-only root directory.

    with TinyFuse(mountpoint) as fs:   # root only: mount(2) of type "fuse.agentstate-test"
        ...                            # fs.ops lists the opcodes the kernel sent

It speaks the kernel's /dev/fuse protocol directly (no libfuse, no package): INIT and GETATTR are
answered, a LOOKUP finds nothing (ENOENT), every other request gets ENOSYS (so anything that tries to
create a file fails, and is seen in ``ops``). Unmounted (lazily) and its connection closed on exit.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading

FUSE_LOOKUP, FUSE_GETATTR, FUSE_INIT, FUSE_DESTROY = 1, 3, 26, 38
_IN = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, padding
_OUT = struct.Struct("<IiQ")  # len, error, unique
# fuse_init_out for protocol 7.31: major, minor, max_readahead, flags, max_background,
# congestion_threshold, max_write, time_gran, max_pages, map_alignment, flags2, unused[7]
_INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
# fuse_attr_out: attr_valid, attr_valid_nsec, dummy, then fuse_attr: ino, size, blocks, atime, mtime,
# ctime, atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags
_ATTR_OUT = struct.Struct("<QII" "QQQQQQ" "IIIIIIIIII")
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
TYPE = "fuse.agentstate-test"


class TinyFuse:
    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.ops: list[int] = []
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TinyFuse:
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if self._libc.mount(b"agentstate-test", self.mountpoint.encode(), TYPE.encode(), MS_NOSUID | MS_NODEV,
                            opts) != 0:
            e = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(e, f"mount {TYPE} on {self.mountpoint}: {os.strerror(e)}")
        self._thread = threading.Thread(target=self._serve, name="tinyfuse", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._libc.umount2(self.mountpoint.encode(), MNT_DETACH)
        os.close(self._fd)  # ends the connection: the serving thread's read fails
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        while True:
            try:
                req = os.read(self._fd, 1 << 20)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: a request was interrupted before we read it
                return  # ENODEV (unmounted) or EBADF (closed)
            _, opcode, unique, nodeid, *_ = _IN.unpack_from(req)
            self.ops.append(opcode)
            if opcode == FUSE_INIT:
                body = _INIT_OUT.pack(7, 31, 0, 0, 16, 12, 4096, 1, 1, 0, 0, *([0] * 7))
                self._reply(unique, 0, body)
            elif opcode == FUSE_GETATTR and nodeid == 1:
                body = _ATTR_OUT.pack(1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0o040555, 2, 0, 0, 0, 4096, 0)
                self._reply(unique, 0, body)
            elif opcode == FUSE_LOOKUP:
                self._reply(unique, -errno.ENOENT, b"")  # the root is empty
            elif opcode == FUSE_DESTROY:
                self._reply(unique, 0, b"")
                return
            else:
                self._reply(unique, -errno.ENOSYS, b"")

    def _reply(self, unique: int, error: int, body: bytes) -> None:
        try:
            os.write(self._fd, _OUT.pack(_OUT.size + len(body), error, unique) + body)
        except OSError:
            pass  # the request was interrupted meanwhile
