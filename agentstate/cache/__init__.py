"""The Redis hot tier in front of a session store: tier.py (HotTier: the fenced read-through cache,
its doctor check and stats; the design is in its docstring) and scripts.py (its Lua)."""

from __future__ import annotations

_EXPORTS = {
    "HotTier": "tier",
    "LEASE_MS": "tier",
    "check_url": "tier",
    "health": "tier",
    "stats": "tier",
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
