"""Conversation sessions: the store (store.py) and the checks on what goes in (checks.py).
"""

from __future__ import annotations

_EXPORTS = {
    "Item": "store",
    "SessionInfo": "store",
    "SessionStore": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
