"""Lazy public names for a package's ``__init__``: a name's module is imported on first use.

    __getattr__, __dir__, __all__ = exports(__name__, {"StateStore": "store", ...})
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``names`` maps a public name to the submodule (relative to ``package``) that defines it."""
    public = sorted(names)

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__, public
