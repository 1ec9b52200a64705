"""``Page``: one page of a listing (sessions, responses), and its opaque cursor strings.

    page = store.list(limit=50)
    for x in page.items: ...
    more = store.list(limit=50, cursor=page.next_cursor) if page.next_cursor else None

A cursor is the position after the page's last item, as URL-safe base64 of a small JSON array
tagged with the listing's kind, so a cursor from one listing handed to another (or edited)
is refused with ``InvalidInput`` instead of silently paging somewhere else. The position is made
of that last item's own values (sessions: updated_at and id; responses: created_at and id),
never of a store-wide counter: a cursor tells its holder nothing beyond the rows it was shown
(a global sequence would let a tenant count the other tenants' writes between two pages).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from ._record import Record, setattr_
from .errors import InvalidInput

T = TypeVar("T")

MAX_LIMIT = 10_000


class Page(Record, Generic[T]):
    """``items`` in listing order; ``next_cursor`` is None on the last page; ``total`` counts every
    item the listing covers (all pages)."""

    __slots__ = ("items", "next_cursor", "total")
    _fields = __slots__
    __match_args__ = __slots__
    items: list[T]
    next_cursor: str | None
    total: int

    def __init__(self, items: list[T] | None = None, next_cursor: str | None = None, total: int = 0) -> None:
        setattr_(self, "items", [] if items is None else items)
        setattr_(self, "next_cursor", next_cursor)
        setattr_(self, "total", total)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def check_limit(limit: Any) -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit {limit!r} is not valid", hint=f"a limit is an integer from 1 to {MAX_LIMIT}")
    return limit


def encode_cursor(kind: str, position: list[Any]) -> str:
    import base64  # here, as in decode_cursor: base64 (struct, binascii) is not for every command's start-up

    import orjson

    raw = orjson.dumps([kind, *position])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: Any, types: tuple[type, ...]) -> list[Any]:
    """The position ``encode_cursor(kind, position)`` made; InvalidInput if ``cursor`` is anything else.

    ``types`` gives the exact type of each element of the position."""
    import base64
    import binascii

    import orjson

    bad = InvalidInput(f"cursor {str(cursor)[:60]!r} is not valid", hint="pass a next_cursor this listing returned")
    if type(cursor) is not str or not 0 < len(cursor) <= 1024:
        raise bad
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if type(value) is not list or len(value) != len(types) + 1 or value[0] != kind:
        raise bad
    position = value[1:]
    if any(type(v) is not t for v, t in zip(position, types, strict=True)):
        raise bad
    return position
