"""agentstate: crash-safe local state for AI-agent tooling and CI pipelines.

    import agentstate
    store = agentstate.StateStore(".agentstate")
    with store.transaction(lock_timeout=30.0) as state:
        state.resources["agent.a"] = {"model": "x"}
    print(store.read().serial)
"""

from ._version import __version__
from .errors import (
    AgentStateError,
    ConflictError,
    FormatTooNew,
    InvalidInput,
    NotFound,
    StateCorrupted,
    StateLocked,
    StorageError,
)
from .planner import Plan, apply, plan, remove
from .store import State, StateStore

__all__ = [
    "AgentStateError",
    "ConflictError",
    "FormatTooNew",
    "InvalidInput",
    "NotFound",
    "Plan",
    "State",
    "StateCorrupted",
    "StateLocked",
    "StateStore",
    "StorageError",
    "__version__",
    "apply",
    "plan",
    "remove",
]
