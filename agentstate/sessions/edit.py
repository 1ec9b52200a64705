"""Single-item reads and edits of a session, by item id (what an HTTP API addresses): a mixin of SessionStore.

    sessions.get_item("chat-1", item_id)
    sessions.item_page("chat-1", limit=20, after_id=None, order="desc")   # (items, has_more)
    sessions.delete_item("chat-1", item_id)       # the other items keep their seqs
    sessions.update_metadata("chat-1", {"topic": "x"})

Deleting an item from the middle leaves a gap in the seqs: ``last_seq`` is always the highest seq
present (so the next append continues after it) and ``item_count`` the number of items. Deleting the
last item frees its seq, as ``pop`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound
from ..names import check_name

if TYPE_CHECKING:
    from .store import Item, SessionInfo

_ORDERS = ("asc", "desc")
MAX_PAGE = 10_000


def _check_item_id(item_id: Any) -> str:
    if not isinstance(item_id, str) or not 0 < len(item_id) <= 256 or "\x00" in item_id:
        raise InvalidInput(f"item id {str(item_id)[:60]!r} is not valid", hint="an item id is 1 to 256 characters")
    return item_id


def _item_not_found(session_id: str, item_id: str) -> NotFound:
    return NotFound(f"item {item_id[:80]!r} not found in session {session_id!r}", session_id=session_id,
                    item_id=item_id[:80])


class ItemEdits:
    """Methods of SessionStore that address one item by its id, and the session's metadata."""

    tenant: str
    db: Any
    lock_timeout: Any

    def get_item(self, session_id: str, item_id: str) -> Item:
        """The item with id ``item_id``; NotFound if the session or the item does not exist."""
        from ..sql import q_sessions as q

        sid = check_name(session_id, "session id")
        iid = _check_item_id(item_id)
        with self.db.read() as tx:
            rows = tx.run(q.GET_ITEM_BY_ID, tenant=self.tenant, session_id=sid, item_id=iid)
            if not rows:
                self._row(tx, sid)  # type: ignore[attr-defined] - NotFound for the session first
                raise _item_not_found(sid, iid)
        return self._items(rows, sid)[0]  # type: ignore[attr-defined]

    def item_page(self, session_id: str, limit: int = 20, after_id: str | None = None,
                  order: str = "asc") -> tuple[list[Item], bool]:
        """One page of items in ``order`` ("asc": oldest first, "desc": newest first), starting after the
        item ``after_id`` (in that order), and whether more follow. NotFound for a missing session or
        ``after_id``."""
        from ..sql import q_sessions as q
        from .store import _utcnow

        sid = check_name(session_id, "session id")
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit {limit!r} is not valid", hint=f"a limit is an integer from 1 to {MAX_PAGE}")
        if order not in _ORDERS:
            raise InvalidInput(f"order {str(order)[:20]!r} is not valid", hint="order is asc or desc")
        with self.db.read() as tx:
            last = int(self._row(tx, sid)[6])  # type: ignore[attr-defined]
            if after_id is None:
                pivot = 0 if order == "asc" else last + 1
            else:
                row = tx.one(q.GET_ITEM_BY_ID, tenant=self.tenant, session_id=sid, item_id=_check_item_id(after_id))
                if row is None:
                    raise _item_not_found(sid, after_id)
                pivot = int(row[0])
            if order == "asc":
                rows = tx.run(q.ITEMS_AFTER, tenant=self.tenant, session_id=sid, after=pivot, limit=limit + 1,
                              now=_utcnow())
            else:
                rows = tx.run(q.ITEMS_BEFORE, tenant=self.tenant, session_id=sid, before=pivot, limit=limit + 1)
        return self._items(rows[:limit], sid), len(rows) > limit  # type: ignore[attr-defined]

    def delete_item(self, session_id: str, item_id: str) -> Item:
        """Delete one item by id in one transaction and return it; the other items keep their seqs.
        NotFound if the session or the item does not exist (nothing changes then). A write like any other:
        stamped under the lock, and the session gets a new version."""
        from ..sql import q_sessions as q

        sid = check_name(session_id, "session id")
        iid = _check_item_id(item_id)
        with self._write("sessions delete-item", sid) as tx:  # type: ignore[attr-defined]
            row = self._row(tx, sid)  # type: ignore[attr-defined]
            last = int(row[6])
            rows = tx.run(q.GET_ITEM_BY_ID, tenant=self.tenant, session_id=sid, item_id=iid)
            if not rows:
                raise _item_not_found(sid, iid)
            item = self._items(rows, sid)[0]  # type: ignore[attr-defined]  # decoded before: a damaged one is refused
            tx.run(q.DELETE_ITEM, tenant=self.tenant, session_id=sid, seq=item.seq)
            if item.seq == last:
                last = int(tx.value(q.MAX_SEQ, tenant=self.tenant, session_id=sid) or 0)
            tx.run(q.UPDATE_SESSION_SEQ, tenant=self.tenant, id=sid, last_seq=last,
                   now=self._now_after(row), title=None, version=self._next_version(tx, sid, int(row[7])), added=-1)  # type: ignore
        return item

    def list_after(self, after_id: str, limit: int = 50) -> Any:
        """The page of ``list`` that follows the session ``after_id`` (where it is now in the order);
        NotFound if it does not exist."""
        from ..page import encode_cursor

        info = self.get(after_id)  # type: ignore[attr-defined]
        return self.list(limit, cursor=encode_cursor("sessions", [info.updated_at, info.id]))  # type: ignore

    def start(self, session_id: str, items: Any = (), metadata: dict[str, Any] | None = None) -> SessionInfo:
        """A new session holding ``items`` and ``metadata``, in one transaction (ConflictError if the id
        exists): what creating a conversation with its first items is."""
        import uuid

        from ..errors import ConflictError
        from ..sql import q_sessions as q
        from ..state.codec import encode_value
        from .checks import _title_from
        from .store import _utcnow

        sid = check_name(session_id, "session id")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidInput(f"metadata must be a JSON object (got {type(metadata).__name__})")
        datas, encoded = self._encode_all(list(items))  # type: ignore[attr-defined]
        meta = None if metadata is None else encode_value(metadata).decode()
        with self._write("sessions create", sid) as tx:  # type: ignore[attr-defined]
            now = _utcnow()  # under the lock
            if self._live_or_removed(tx, sid, now) is not None:  # type: ignore[attr-defined]
                raise ConflictError(f"session {sid!r} already exists", session_id=sid)
            version = self._insert(tx, sid, _title_from(datas), meta, now)  # type: ignore[attr-defined]
            if encoded:
                tx.many(q.INSERT_ITEM, [{"tenant": self.tenant, "session_id": sid, "seq": seq, "id": str(uuid.uuid4()),
                                         "now": now, "data": data.decode()} for seq, data in enumerate(encoded, 1)])
                tx.run(q.UPDATE_SESSION_SEQ, tenant=self.tenant, id=sid, last_seq=len(encoded), now=now, title=None,
                       version=self._next_version(tx, sid, version), added=len(encoded))  # type: ignore[attr-defined]
        return self.get(sid)  # type: ignore[attr-defined]
