"""``Record``: the base of agentstate's small frozen value types (Item, SessionInfo, Page, Stmt).

It gives them what ``@dataclass(frozen=True)`` did (a repr of their fields, equality and hashing by
value within the class, ``FrozenInstanceError`` on assignment) without its start-up cost: a dataclass
generates its methods with ``exec`` when its class is made, about 1 ms a class, paid by every CLI
command that imports one. A subclass names its fields in ``_fields`` and writes its own ``__init__``,
which sets them with ``object.__setattr__`` (as a frozen dataclass's does)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any

__all__ = ["Record", "FrozenInstanceError"]

setattr_ = object.__setattr__


class Record:
    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickle/copy: rebuilt through __init__
        return (type(self), self._values())
