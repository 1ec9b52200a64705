"""The values a session store returns: ``Item`` (one stored item) and ``SessionInfo`` (a session's row).
Plain frozen classes (agentstate._record.Record): a dataclass would cost every command's start-up ~1 ms
each."""

from __future__ import annotations

from typing import Any

from .._record import Record, setattr_

__all__ = ["Item", "SessionInfo"]


class Item(Record):
    """One stored item: ``seq`` (1, 2, 3... in the session), a unique ``id``, ``created_at``, ``data``."""

    __slots__ = ("seq", "id", "created_at", "data")
    _fields = __slots__
    __match_args__ = __slots__
    seq: int
    id: str
    created_at: str
    data: dict[str, Any]

    def __init__(self, seq: int, id: str, created_at: str, data: dict[str, Any]) -> None:  # noqa: A002 - the field's name
        setattr_(self, "seq", seq)
        setattr_(self, "id", id)
        setattr_(self, "created_at", created_at)
        setattr_(self, "data", data)

    @property
    def role(self) -> str | None:
        role = self.data.get("role")
        return role if isinstance(role, str) else None

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "created_at": self.created_at, "data": self.data}


class SessionInfo(Record):
    """A session's row: ``version`` changes on every write to it (see append(expect_version=));
    ``expires_at`` None: it lives until deleted or pruned."""

    __slots__ = ("id", "tenant", "title", "metadata", "created_at", "updated_at", "item_count", "version",
                 "expires_at")
    _fields = __slots__
    __match_args__ = __slots__
    id: str
    tenant: str
    title: str | None
    metadata: dict[str, Any] | None
    created_at: str
    updated_at: str
    item_count: int
    version: int
    expires_at: str | None

    def __init__(self, id: str, tenant: str, title: str | None, metadata: dict[str, Any] | None,  # noqa: A002
                 created_at: str, updated_at: str, item_count: int, version: int = 0,
                 expires_at: str | None = None) -> None:
        setattr_(self, "id", id)
        setattr_(self, "tenant", tenant)
        setattr_(self, "title", title)
        setattr_(self, "metadata", metadata)
        setattr_(self, "created_at", created_at)
        setattr_(self, "updated_at", updated_at)
        setattr_(self, "item_count", item_count)
        setattr_(self, "version", version)
        setattr_(self, "expires_at", expires_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "title": self.title,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "item_count": self.item_count,
            "version": self.version,
            "expires_at": self.expires_at,
        }
