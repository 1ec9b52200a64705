"""Conversation sessions: the store (store.py) and the checks on what goes in (checks.py).
"""

from __future__ import annotations

from .._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "Item": "store",
    "SessionInfo": "store",
    "SessionStore": "store",
})
