"""Stored Responses-API objects: the store (store.py) and doctor's chain checks (check.py).
"""

from __future__ import annotations

from .._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "ResponseInfo": "store",
    "ResponseStore": "store",
})
