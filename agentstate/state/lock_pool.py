"""``LockPool``: the idle writer Locks of one store object, each keeping its lock-file descriptor open
between writes (``Lock(keep=True)``, agentstate.state.lock), so a store that writes again and again skips
the open of the lock file. ``take()`` an idle one (or a new one), ``give()`` it back after its release
(closed instead when ``idle`` are idle already), ``close()`` them all. Importing this module loads no
lock machinery: a reader's start-up does without it (Lock is imported by the first ``take()``)."""

from __future__ import annotations

from typing import Any

__all__ = ["LockPool"]


class LockPool:
    __slots__ = ("_free", "files", "idle", "path")

    def __init__(self, path: str, files: Any, idle: int) -> None:
        self.path, self.files, self.idle = path, files, idle
        self._free: list[Any] = []

    def take(self) -> Any:
        """An unacquired ``keep=True`` Lock of the path: an idle one, else a new one."""
        try:
            return self._free.pop()
        except IndexError:
            from .lock import Lock

            return Lock(self.path, files=self.files, keep=True)

    def give(self, lk: Any) -> None:
        """``lk``, released, back to the idle ones (or closed, when ``idle`` are idle already)."""
        if len(self._free) < self.idle:
            self._free.append(lk)
        else:
            lk.close()

    def close(self) -> None:
        """Close the descriptor of every idle Lock (another thread may be taking them too)."""
        while self._free:
            try:
                self._free.pop().close()
            except IndexError:
                return
