"""The append route's writes: one writer thread commits, in groups, the appends the event loop hands it.

With a worker thread per append (anyio's pool: a queue hand-off there, a wake-up back, and each thread
waiting on the group commit's leader), 32 clients cost the server about as much CPU in thread traffic
as in the appends themselves, and the event loop holds the same GIL. Here the event loop queues the
call (the tenant's store, the conversation id, the items, a future) and goes on serving; one thread
takes every call queued (at most MAX_BATCH), runs them in one transaction of the shared database
(``agentstate.sql.group.batch``: each in its own SAVEPOINT, so one call's error rolls back only its
own items), commits, and hands all the outcomes back to the loop in one ``call_soon_threadsafe``.

A request is answered only after its batch's COMMIT returned (durable). A batch-wide failure (the
writer lock not acquired in time, a failed COMMIT, a storage error that took the transaction) reaches
every call of the batch that had not failed on its own; nothing of the batch was written. While one
batch commits (its fsync releases the GIL), the next queues: batches grow with the load.

Only a SQLite store without a hot tier is written this way (the appends the library groups itself);
PostgreSQL and a store behind the hot tier keep a worker thread per call (``Stores.with_sessions``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import threading
from typing import Any

from ..sql import group

log = logging.getLogger("agentstate.serve")

MAX_BATCH = 64  # calls per transaction: bounds what one failure (or one slow batch) takes with it
OPERATION = "sessions append"


class Appender:
    def __init__(self, db: Any, lock_timeout: float | None) -> None:
        self.db = db
        self.lock_timeout = lock_timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="agentstate-appender", daemon=True)
        self._thread.start()

    async def append(self, store: Any, conversation_id: str, items: list[Any]) -> Any:
        """``store.append(conversation_id, items, create=False)``, committed: its items, or its error."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((store, conversation_id, items, future, loop))
        return await future

    def close(self, timeout: float = 30.0) -> None:
        """After the calls queued so far are answered, the thread ends."""
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        stop = False
        while not stop:
            first = q.get()
            if first is None:
                return
            calls = [first]
            while len(calls) < MAX_BATCH:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                calls.append(nxt)
            try:
                outcomes = self._commit(calls)
            except BaseException as e:  # noqa: BLE001 - never lose the thread: every call gets the error
                outcomes = [(None, e)] * len(calls)
            self._answer(calls, outcomes)

    def _commit(self, calls: list[tuple[Any, ...]]) -> list[tuple[Any, BaseException | None]]:
        results: list[Any] = [None] * len(calls)
        errors: list[BaseException | None] = [None] * len(calls)
        try:
            with group.batch(self.db, OPERATION, self.lock_timeout) as b:
                for i, (store, conversation_id, items, _future, _loop) in enumerate(calls):
                    try:
                        results[i] = store.append(conversation_id, items, create=False)
                    except Exception as e:
                        if b.broken is not None:
                            raise  # the transaction is gone: nothing of the batch commits
                        errors[i] = e  # this call's own error; its statements were rolled back
        except Exception as e:  # the batch's: every call that had not failed on its own gets it
            for i, err in enumerate(errors):
                if err is None:
                    errors[i] = _copy(e)
        return [(None if err is not None else results[i], err) for i, err in enumerate(errors)]

    @staticmethod
    def _answer(calls: list[tuple[Any, ...]], outcomes: list[tuple[Any, BaseException | None]]) -> None:
        by_loop: dict[Any, list[tuple[Any, Any, BaseException | None]]] = {}
        for call, (result, error) in zip(calls, outcomes, strict=True):
            by_loop.setdefault(call[4], []).append((call[3], result, error))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _settle(answers: list[tuple[Any, Any, BaseException | None]]) -> None:
    """In the event loop: each call's future gets its outcome (one whose request went away is skipped)."""
    for future, result, error in answers:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _copy(e: BaseException) -> BaseException:
    try:
        return copy.copy(e)
    except Exception:  # noqa: BLE001 - an uncopyable error: the same object
        return e
