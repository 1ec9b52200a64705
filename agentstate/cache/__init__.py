"""The Redis hot tier in front of a session store: tier.py (HotTier: the fenced read-through cache,
its doctor check and stats; the design is in its docstring) and scripts.py (its Lua)."""

from __future__ import annotations

from .._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "HotTier": "tier",
    "LEASE_MS": "tier",
    "check_url": "tier",
    "health": "tier",
    "stats": "tier",
})
