"""agentstate: crash-safe local state for AI-agent tooling and CI pipelines.

    import agentstate
    store = agentstate.StateStore(".agentstate")
    with store.transaction(lock_timeout=30.0) as state:
        state.resources["agent.a"] = {"model": "x"}
    print(store.read().serial)

Names are imported on first use, so the CLI starts without loading what it does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import exports
from ._version import __version__

_EXPORTS = {
    "AgentStateError": "errors",
    "ConflictError": "errors",
    "FormatTooNew": "errors",
    "InvalidInput": "errors",
    "NotFound": "errors",
    "Interrupted": "errors",
    "StateCorrupted": "errors",
    "StateLocked": "errors",
    "StorageError": "errors",
    "State": "state.store",
    "StateStore": "state.store",
    "open_state": "state.open",
    "Plan": "state.planner",
    "apply": "state.planner",
    "plan": "state.planner",
    "remove": "state.planner",
    "Item": "sessions.values",
    "Page": "page",
    "ResponseInfo": "responses.store",
    "ResponseStore": "responses.store",
    "SessionInfo": "sessions.values",
    "SessionStore": "sessions.store",
}

__all__ = [
    "AgentStateError",
    "ConflictError",
    "FormatTooNew",
    "Interrupted",
    "InvalidInput",
    "Item",
    "NotFound",
    "Page",
    "ResponseInfo",
    "ResponseStore",
    "Plan",
    "State",
    "StateCorrupted",
    "StateLocked",
    "SessionInfo",
    "SessionStore",
    "StateStore",
    "StorageError",
    "__version__",
    "apply",
    "open_state",
    "plan",
    "remove",
]

if TYPE_CHECKING:
    from .errors import (
        AgentStateError,
        ConflictError,
        FormatTooNew,
        Interrupted,
        InvalidInput,
        NotFound,
        StateCorrupted,
        StateLocked,
        StorageError,
    )
    from .page import Page
    from .responses.store import ResponseInfo, ResponseStore
    from .sessions.store import SessionStore
    from .sessions.values import Item, SessionInfo
    from .state.open import open_state
    from .state.planner import Plan, apply, plan, remove
    from .state.store import State, StateStore


__getattr__ = exports(__name__, _EXPORTS)[0]


def __dir__() -> list[str]:
    return __all__
