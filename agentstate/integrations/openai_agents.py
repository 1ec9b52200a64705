"""The OpenAI Agents SDK's Session protocol on agentstate sessions: a drop-in for its SQLiteSession.

    from agents import Agent, Runner
    from agentstate.integrations.openai_agents import AgentStateSession

    session = AgentStateSession("chat-42", dir=".agentstate", tenant="alice")
    result = await Runner.run(agent, "Hello", session=session)

Implements the protocol structurally (``session_id``, ``session_settings``, async ``get_items(limit)``,
``add_items(items)``, ``pop_item()``, ``clear_session()``, each taking the SDK's optional ``wrapper=``
keyword, and ``close()``), so neither this module nor ``import agentstate`` imports the SDK (a session
imports its SessionSettings when it is built). Each ``add_items`` batch is one append: one
transaction, all or none, safe with any number of processes writing the same session. The history is
readable with ``agentstate sessions show chat-42``.

As the SDK's own sessions:

* ``session_settings`` is a SessionSettings (a dict is normalized, an unknown key is TypeError).
* Any non-empty string is a session id. One the store's name rules refuse (``'a b'``, an emoji,
  ``../etc/passwd``, 5,000 characters) is kept under a key derived from it (``stored_id``, see
  docs/format.md "Agents SDK sessions"); it never reaches a path.
* Any item that is JSON is stored as given (no message-shape checks; an item that is not an object is
  kept in a wrapper object, given back as it was); one json.dumps cannot serialize is TypeError.
* A mutation (add_items, pop_item, clear_session, a compaction's replacement) that is cancelled while
  it runs finishes first (or never starts), then the CancelledError surfaces: nothing half done.
* After ``close()`` every call is RuntimeError; ``close()`` also works as ``await session.close()``.
* The compaction hooks of openai-agents 0.24 (``_get_compaction_snapshot``, ``_atomic_replace_items``):
  ``OpenAIResponsesCompactionSession`` over agentstate replaces history in one transaction.

The calls run in a worker thread (``asyncio.to_thread``), as the SDK's own SQLiteSession does, so
the event loop never waits on the disk or on the writer lock.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import threading
from collections.abc import Callable, Generator
from typing import Any

from ..errors import ConflictError, InvalidInput, NotFound
from ..names import _NAME
from ..sessions.store import SessionStore

__all__ = ["MAX_SDK_ITEM_BYTES", "AgentStateSession", "stored_id"]

# SQLiteSession stores items of any size; the store's default limit (1 MiB) is raised for the SDK's
# items (tool outputs, images as data URLs) to what both backends keep comfortably in one row.
MAX_SDK_ITEM_BYTES = 256 << 20
# An item that is not a JSON object is stored as {WRAP: item}; so is an object whose only key is WRAP.
WRAP = "agentstate:value"
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@\-]")


def stored_id(session_id: Any) -> str:
    """The store's key for an SDK session id: the id itself if it is a valid agentstate name, else
    ``sdk-<its name characters, others as _, at most 48>@<first 32 hex digits of its SHA-256>``."""
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a string, got {type(session_id).__name__}")
    if not session_id:
        raise ValueError("session_id must not be empty")
    if _NAME.fullmatch(session_id):
        return str(session_id)
    from hashlib import sha256

    digest = sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    readable = _UNSAFE.sub("_", session_id[:48])
    return f"sdk-{readable}@{digest}"


def _wrap(item: Any) -> Any:
    if isinstance(item, dict) and not (len(item) == 1 and WRAP in item):
        return item
    return {WRAP: item}


def _unwrap(data: dict[str, Any]) -> Any:
    return data[WRAP] if len(data) == 1 and WRAP in data else data


def _settings(value: Any) -> Any:
    """value as the SDK's SessionSettings (as SQLiteSession does it), or as given without the SDK."""
    try:
        from agents.memory.session_settings import SessionSettings, coerce_session_settings
    except ImportError:  # pragma: no cover - the SDK is what calls us
        return value
    return SessionSettings() if value is None else coerce_session_settings(value)


class _Closed:
    """What close() returns: nothing to wait for, but ``await session.close()`` works too (as with the
    SDK's async backends)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


async def _settle(work: asyncio.Future[Any], abort: list[bool]) -> Any:
    """Await a mutation's outcome despite cancellation, then re-raise the first cancellation: the
    caller learns of it only once the write is committed or known not to happen (``abort`` tells a
    worker that has not begun to leave it). ``shield`` keeps a cancellation of the caller's task from
    reaching ``work`` (the worker thread's future): each round waits for that same outcome."""
    cancelled: asyncio.CancelledError | None = None
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError as e:
            if work.cancelled():  # the future itself (never by this module): its result() says so
                break
            abort.append(True)
            cancelled = cancelled or e
        except BaseException:  # noqa: BLE001 - the write's own error: raised by result() below
            break
    if cancelled is not None:
        if not work.cancelled():
            work.exception()  # retrieved: the cancellation is what the caller asked for
        raise cancelled
    return work.result()


def _in_thread(fn: Callable[[], Any]) -> asyncio.Future[Any]:
    """``fn()`` in the loop's default executor (as asyncio.to_thread, without its coroutine), with the
    caller's context variables."""
    return asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, fn)


class _Aborted(Exception):
    pass


class AgentStateSession:
    """One conversation of the Agents SDK, stored as the agentstate session ``stored_id(session_id)``.

    ``dir`` is the store (a directory or a postgresql:// URL; default as for SessionStore). Pass
    ``store`` to share one SessionStore (and its connections) between many sessions (close() then
    leaves it open). ``session_settings`` (the SDK's SessionSettings or a dict) gives a default
    ``limit`` for get_items. ``max_item_bytes`` bounds one item's JSON (for a store made here).
    """

    session_settings: Any = None

    def __init__(
        self,
        session_id: str,
        dir: str | os.PathLike[str] | None = None,
        tenant: str = "default",
        *,
        store: SessionStore | None = None,
        session_settings: Any = None,
        lock_timeout: float | str | None = None,
        max_item_bytes: int = MAX_SDK_ITEM_BYTES,
    ) -> None:
        self.stored_id = stored_id(session_id)
        self.session_id = session_id
        self.session_settings = _settings(session_settings)
        self._owns_store = store is None
        self.store = store if store is not None else SessionStore(dir, tenant=tenant, lock_timeout=lock_timeout,
                                                                  max_item_bytes=max_item_bytes)
        self._closed = False
        self._busy = 0  # calls running in worker threads: close() leaves the store to the last one
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"AgentStateSession({self.session_id!r}, store={self.store!r})"

    # -- plumbing -------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("AgentStateSession is closed")

    def _enter(self) -> None:
        with self._guard:
            self._check_open()
            self._busy += 1

    def _leave(self) -> None:
        with self._guard:
            self._busy -= 1
            last = self._closed and self._busy == 0
        if last and self._owns_store:
            self.store.close()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A read in a worker thread."""
        self._enter()
        try:
            return await _in_thread(lambda: fn(*args))
        finally:
            self._leave()

    async def _mutate(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A write in a worker thread, settled before any cancellation surfaces (see _settle)."""
        self._enter()
        abort: list[bool] = []  # non-empty once cancelled (a list: appending is atomic, and cheaper than an Event)

        def body() -> Any:
            if abort:  # cancelled before the worker began: nothing is written
                raise _Aborted
            return fn(*args)

        try:
            return await _settle(_in_thread(body), abort)
        finally:
            self._leave()

    def _encode_error(self, items: list[Any], error: InvalidInput) -> BaseException:
        """The SDK's own exception for an item json.dumps cannot serialize (TypeError), else ``error``."""
        import json

        for item in items:
            try:
                json.dumps(item)
            except TypeError as e:
                return e
            except (ValueError, RecursionError):  # e.g. a cycle: ours is a ValueError (InvalidInput) too
                pass
        return error

    # -- sync bodies (run in a worker thread) ---------------------------------------------------------

    def _get(self, limit: int | None) -> list[Any]:
        try:
            if limit is None or limit < 0:  # as SQLiteSession: no limit (a negative LIMIT is unlimited)
                items = self.store.items(self.stored_id)
            else:
                items = self.store.context(self.stored_id, limit)
        except NotFound:
            return []
        return [_unwrap(it.data) for it in items]

    def _add(self, items: list[Any]) -> None:
        try:
            self.store.append(self.stored_id, [_wrap(it) for it in items], check_items=False)
        except InvalidInput as e:
            raise self._encode_error(items, e) from None

    def _pop(self) -> Any | None:
        try:
            item = self.store.pop(self.stored_id)
        except NotFound:
            return None
        return None if item is None else _unwrap(item.data)

    def _clear(self) -> None:
        try:
            self.store.delete(self.stored_id)
        except NotFound:
            pass

    def _replace(self, items: list[Any], start: int = 1, expect_ids: list[str] | None = None,
                 prune: Callable[[Any], bool] | None = None) -> bool:
        if not items and start == 1 and expect_ids is None:  # the whole history by nothing: clear_session
            self._clear()
            return True
        try:
            self.store.replace_items(self.stored_id, [_wrap(it) for it in items], start=start, expect_ids=expect_ids,
                                     prune=None if prune is None else lambda data: prune(_unwrap(data)),
                                     check_items=False)
        except ConflictError:
            return False
        except InvalidInput as e:
            raise self._encode_error(items, e) from None
        return True

    # -- the Session protocol -------------------------------------------------------------------------

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[Any]:
        """The history, oldest first; with ``limit`` (default: session_settings.limit), the latest
        ``limit`` items (oldest first)."""
        self._check_open()
        if limit is None and self.session_settings is not None:
            limit = getattr(self.session_settings, "limit", None)
        return await self._run(self._get, limit)

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        """Append ``items`` in one transaction (the session is created on its first items)."""
        self._check_open()  # before the empty-list fast path, as SQLiteSession
        items = list(items)
        if not items:
            return
        await self._mutate(self._add, items)

    async def pop_item(self, *, wrapper: Any = None) -> Any | None:
        """Remove and return the most recent item, or None when there is none."""
        self._check_open()
        return await self._mutate(self._pop)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Delete every item of this session (the session itself goes too, until the next add_items)."""
        self._check_open()
        await self._mutate(self._clear)

    def close(self) -> _Closed:
        """Close the session: every later call is RuntimeError. The store (if made here) is closed once
        no call is running. Returns an awaitable, so ``await session.close()`` works as well."""
        with self._guard:
            self._closed = True
            idle = self._busy == 0
        if idle and self._owns_store:
            self.store.close()
        return _Closed()

    # -- the compaction hooks (openai-agents 0.24) ----------------------------------------------------

    async def _atomic_replace_items(self, items: list[Any]) -> bool:
        """Replace the whole history with ``items`` in one transaction (True); False for a subclass,
        which may transform items (as the SDK's backends do)."""
        if type(self) is not AgentStateSession:
            return False
        self._check_open()
        return await self._mutate(self._replace, list(items))

    async def _get_compaction_snapshot(self, limit: int, *,
                                       prune_prefix: Callable[[Any], bool] | None = None) -> Any:
        """The last ``limit`` items and a ``replace_suffix(start, output)`` that replaces them from index
        ``start`` on in one transaction if they are still the session's last items (else False),
        dropping first the leading run of older items ``prune_prefix`` says are expired."""
        if type(self) is not AgentStateSession:
            return None
        from agents.memory.session import _CompactionSnapshot

        self._check_open()

        def read() -> list[Any]:
            try:
                return self.store.context(self.stored_id, limit)
            except NotFound:
                return []

        rows = await self._run(read)
        complete = len(rows) < limit or rows[0].seq == 1

        async def replace_suffix(start: int, output: list[Any]) -> bool:
            expected = rows[start:]
            if not expected:
                return False
            self._check_open()
            return await self._mutate(self._replace, list(output), expected[0].seq, [r.id for r in expected],
                                      prune_prefix)

        return _CompactionSnapshot([_unwrap(r.data) for r in rows], complete, replace_suffix)
