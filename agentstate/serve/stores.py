"""One SessionStore and one ResponseStore per tenant, and every store call in a worker thread.

Store calls block (the writer lock, the fsync), so each runs in anyio's thread pool: many requests
are in the library at once, each in its own thread, exactly like the threads of one process using
the library directly; concurrent appends thus reach the library together (where they can share a
transaction) and reads never wait for writes. At most MAX_WRITERS writing calls are in the library
at once (``write=True``); the others wait on a semaphore, not on the lock file. A ResponseStore keeps a small queue of chain uses
that is not meant to be shared by threads, so one tenant's response calls take turns.

Appends (the hot path, ``append``) to a SQLite store without a hot tier take no thread of their own:
one writer thread commits them in groups (``appender``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio.to_thread

from ..errors import StateLocked
from ..responses import ResponseStore
from ..sessions import SessionStore

T = TypeVar("T")
MAX_TENANTS = 4096  # stores kept; past that the cache starts over (a store is cheap to reopen)
# Writing calls in the library at once. A thread waiting for the store's writer lock polls its flock
# (a worker thread cannot take the blocking wait the main thread uses); 32 of them take the GIL from
# the event loop often enough to halve the server's throughput (32 clients: 183 appends/s with 32
# writers, 365/s with 8). Eight keep the lock busy and still let a library that commits concurrent
# appends together (group commit) batch up to eight.
MAX_WRITERS = 8
DEFAULT_LOCK_TIMEOUT = 30.0  # the library's default (--lock-timeout changes both)


class Stores:
    def __init__(self, target: str | None, *, max_item_bytes: int, lock_timeout: float | None,
                 cache: str | None = None) -> None:
        self.target = target
        self.cache = cache  # a Redis hot tier in front of the sessions (agentstate.cache), or None
        self.max_item_bytes = max_item_bytes
        self.lock_timeout = lock_timeout
        self._sessions: dict[str, SessionStore] = {}
        self._responses: dict[str, tuple[ResponseStore, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._db: Any = None
        self._writers = threading.BoundedSemaphore(MAX_WRITERS)
        self._appender: Any = None  # an appender.Appender once the first append found a store it suits
        self._grouping: bool | None = None  # whether it suits (None: not known until the database opens)

    @property
    def db(self) -> Any:
        """The one database every tenant's stores share (a store would otherwise open its own: a
        connection per thread per tenant, or a PostgreSQL pool per tenant)."""
        if self._db is None:
            from ..sql import open_database

            with self._lock:
                if self._db is None:
                    self._db = open_database(self.target, lock_timeout=self.lock_timeout)
        return self._db

    def _shared(self, store: T) -> T:
        store._db = self.db  # type: ignore[attr-defined] - the library has no public way to share one yet
        return store

    def sessions(self, tenant: str) -> SessionStore:
        store = self._sessions.get(tenant)
        if store is None:
            new = self._shared(SessionStore(self.target, tenant=tenant, lock_timeout=self.lock_timeout,
                                            max_item_bytes=self.max_item_bytes, cache=self.cache or ""))
            with self._lock:
                if len(self._sessions) >= MAX_TENANTS:
                    self._sessions.clear()
                store = self._sessions.setdefault(tenant, new)
        return store

    def responses(self, tenant: str) -> tuple[ResponseStore, threading.Lock]:
        entry = self._responses.get(tenant)
        if entry is None:
            new = (self._shared(ResponseStore(self.target, tenant=tenant, max_item_bytes=self.max_item_bytes,
                                              lock_timeout=self.lock_timeout)), threading.Lock())
            with self._lock:
                if len(self._responses) >= MAX_TENANTS:
                    self._responses.clear()
                entry = self._responses.setdefault(tenant, new)
        return entry

    async def with_sessions(self, tenant: str, fn: Callable[[SessionStore], T], *, write: bool = False) -> T:
        store = self.sessions(tenant)
        if not write:
            return await anyio.to_thread.run_sync(fn, store)

        def call() -> T:
            with self._writing():
                return fn(store)

        return await anyio.to_thread.run_sync(call)

    async def append(self, tenant: str, conversation_id: str, items: list[Any]) -> Any:
        """``SessionStore.append(conversation_id, items, create=False)`` for the tenant, committed."""
        store = self.sessions(tenant)
        if self._grouping is None:
            db = await anyio.to_thread.run_sync(lambda: self.db)  # opening it may block
            self._grouping = not self.cache and getattr(db, "dialect", None) == "sqlite" and hasattr(db, "grouped")
        if not self._grouping:
            return await self.with_sessions(tenant, lambda s: s.append(conversation_id, items, create=False),
                                            write=True)
        appender = self._appender
        if appender is None:
            from .appender import Appender

            appender = self._appender = Appender(self.db, self.lock_timeout)
        return await appender.append(store, conversation_id, items)

    async def with_responses(self, tenant: str, fn: Callable[[ResponseStore], T], *, write: bool = False) -> T:
        store, lock = self.responses(tenant)

        def call() -> T:
            if write:
                with self._writing(), lock:
                    return fn(store)
            with lock:
                return fn(store)

        return await anyio.to_thread.run_sync(call)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One of the MAX_WRITERS places, waited for no longer than the lock itself would be."""
        timeout = self.lock_timeout if self.lock_timeout is not None else DEFAULT_LOCK_TIMEOUT
        if not self._writers.acquire(timeout=timeout):
            raise StateLocked(f"timed out after {timeout:g}s waiting for the store's writer lock (the server's "
                              f"{MAX_WRITERS} writers were all waiting for it)")
        try:
            yield
        finally:
            self._writers.release()

    def close(self) -> None:
        """At shutdown: the responses' queued chain uses recorded, then the shared database closed."""
        appender, self._appender = self._appender, None
        if appender is not None:
            appender.close()  # the appends queued are answered first (requests have drained by now)
        with self._lock:
            self._grouping = None
            for r, lock in self._responses.values():
                with lock:
                    r.close()  # records pending uses, closes the (shared) database: reopened if used again
            self._sessions.clear()
            self._responses.clear()
            if self._db is not None:
                self._db.close()
                self._db = None


def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
    return anyio.to_thread.run_sync(fn, *args)
