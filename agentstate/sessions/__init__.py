"""Conversation sessions: the store (store.py), what it returns (values.py) and the checks on what goes in
(checks.py).
"""

from __future__ import annotations

from .._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "Item": "values",
    "SessionInfo": "values",
    "SessionStore": "store",
})
