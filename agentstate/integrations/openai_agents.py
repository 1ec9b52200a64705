"""The OpenAI Agents SDK's Session protocol on agentstate sessions.

    from agents import Agent, Runner
    from agentstate.integrations.openai_agents import AgentStateSession

    session = AgentStateSession("chat-42", dir=".agentstate", tenant="alice")
    result = await Runner.run(agent, "Hello", session=session)

Implements the protocol structurally (``session_id``, ``session_settings``, async ``get_items(limit)``,
``add_items(items)``, ``pop_item()``, ``clear_session()``), so neither this module nor ``import
agentstate`` imports the SDK. Each ``add_items`` batch is one append: one transaction, all or none,
safe with any number of processes writing the same session. The history is readable with
``agentstate sessions show chat-42``.

The calls run in a worker thread (``asyncio.to_thread``), as the SDK's own SQLiteSession does, so
the event loop never waits on the disk or on the writer lock.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..errors import NotFound
from ..names import check_name
from ..sessions.store import SessionStore

__all__ = ["AgentStateSession"]


class AgentStateSession:
    """One conversation of the Agents SDK, stored as the agentstate session ``session_id``.

    ``dir`` is the store (a directory or a postgresql:// URL; default as for SessionStore). Pass
    ``store`` to share one SessionStore (and its connections) between many sessions.
    ``session_settings`` (the SDK's SessionSettings or a dict) gives a default ``limit`` for get_items.
    """

    def __init__(
        self,
        session_id: str,
        dir: str | os.PathLike[str] | None = None,
        tenant: str = "default",
        *,
        store: SessionStore | None = None,
        session_settings: Any = None,
        lock_timeout: float | str | None = None,
    ) -> None:
        self.session_id = check_name(session_id, "session id")
        self.store = store if store is not None else SessionStore(dir, tenant=tenant, lock_timeout=lock_timeout)
        self.session_settings = session_settings

    def __repr__(self) -> str:
        return f"AgentStateSession({self.session_id!r}, store={self.store!r})"

    def _default_limit(self) -> int | None:
        settings = self.session_settings
        if settings is None:
            return None
        if isinstance(settings, dict):
            return settings.get("limit")
        return getattr(settings, "limit", None)

    # -- sync bodies (run in a worker thread) ---------------------------------------------------------

    def _get(self, limit: int | None) -> list[dict[str, Any]]:
        try:
            if limit is None or limit < 0:  # as SQLiteSession: no limit (a negative LIMIT is unlimited)
                items = self.store.items(self.session_id)
            else:
                items = self.store.context(self.session_id, limit)
        except NotFound:
            return []
        return [it.data for it in items]

    def _pop(self) -> dict[str, Any] | None:
        try:
            item = self.store.pop(self.session_id)
        except NotFound:
            return None
        return None if item is None else item.data

    def _clear(self) -> None:
        try:
            self.store.delete(self.session_id)
        except NotFound:
            pass

    # -- the Session protocol -------------------------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[Any]:
        """The history, oldest first; with ``limit``, the latest ``limit`` items (oldest first)."""
        if limit is None:
            limit = self._default_limit()
        return await asyncio.to_thread(self._get, limit)

    async def add_items(self, items: list[Any]) -> None:
        """Append ``items`` in one transaction (the session is created on its first items)."""
        items = list(items)
        if not items:
            return
        await asyncio.to_thread(self.store.append, self.session_id, items)

    async def pop_item(self) -> Any | None:
        """Remove and return the most recent item, or None when there is none."""
        return await asyncio.to_thread(self._pop)

    async def clear_session(self) -> None:
        """Delete every item of this session (the session itself goes too, until the next add_items)."""
        await asyncio.to_thread(self._clear)

    def close(self) -> None:
        self.store.close()
