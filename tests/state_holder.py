"""``StateHolder(target, operation)``: a thread that holds a state transaction open (the lock held, one
resource set and not yet committed) for the tests that need a lock holder to look at, time out on or end.

    with StateHolder(url, "deploy") as holder:   # returns once the transaction holds the lock
        ...                                      # the lock is held by this process's thread
        holder.release()                         # let it commit (or fail) now; holder.errors says how
    # leaving the block releases it too
"""

from __future__ import annotations

import threading
from typing import Any

from agentstate import StateStore


class StateHolder:
    def __init__(self, target: str, operation: str, *, hold_for: float = 20.0) -> None:
        self.target, self.operation, self.hold_for = target, operation, hold_for
        self.errors: list[BaseException] = []  # what the holding transaction raised (e.g. its session was ended)
        self._holding, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        try:
            with StateStore(self.target).transaction(operation=self.operation) as st:
                st.resources["held"] = True
                self._holding.set()
                self._release.wait(self.hold_for)
        except BaseException as e:  # noqa: BLE001 - reported through .errors
            self.errors.append(e)
            self._holding.set()

    def __enter__(self) -> StateHolder:
        self._thread.start()
        try:
            assert self._holding.wait(10), "the holder did not get the lock"
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        self._release.set()
        self._thread.join(self.hold_for)

    def __exit__(self, *exc: Any) -> None:
        self.release()
