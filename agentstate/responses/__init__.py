"""Stored Responses-API objects: the store (store.py) and doctor's chain checks (check.py).
"""

from __future__ import annotations

_EXPORTS = {
    "ResponseInfo": "store",
    "ResponseStore": "store",
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
