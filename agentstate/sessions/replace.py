"""SessionStore.replace_items: rewrite the tail of a session's history in one transaction.

What a compaction needs: the last items (those a summary replaces) give way to new ones, and
optionally a leading run of expired items goes too, all or nothing under the writer lock, so a
crash or a concurrent reader sees the old history or the new one, never a cleared session. Seqs stay
1..n with no gap: what is kept in between is renumbered (agentstate.sql.q_sessions NEGATE_SEQS).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, InvalidInput

if TYPE_CHECKING:
    from .store import Item, SessionStore

_PRUNE_BATCH = 100


def replace_items(store: SessionStore, session_id: str, items: Any, *, start: int = 1,
                  expect_ids: list[str] | None = None, prune: Callable[[dict[str, Any]], bool] | None = None,
                  check_items: bool = True) -> list[Item]:
    """Replace the items from seq ``start`` on with ``items`` in one transaction; returns them as stored.

    ``expect_ids``: the ids the items from ``start`` to the end must have (else ConflictError and
    nothing changes), so a replacement computed from a read is not applied over a newer history.
    ``prune``: called with the data of the items before ``start``, oldest first; the leading run it
    returns True for is deleted too. A missing session is created (``start`` 1, nothing expected).
    ``check_items=False`` skips the message-shape checks (as for append)."""
    import orjson

    from ..names import check_name
    from ..sql import q_sessions as q
    from .checks import _check_seq, _title_from
    from .store import Item, _utcnow

    sid = check_name(session_id, "session id")
    datas, encoded = store._encode_all(items, check_items)
    if _check_seq(start, "start") < 1:
        raise InvalidInput("start 0 is not valid", hint="start is a seq >= 1")
    if expect_ids is not None and (not isinstance(expect_ids, list) or not all(isinstance(i, str) for i in expect_ids)):
        raise InvalidInput("expect_ids must be a list of item ids")
    records = [(str(uuid.uuid4()), data.decode()) for data in encoded]
    scope = {"tenant": store.tenant, "session_id": sid}
    with store._write("sessions replace", sid) as tx:
        row = store._live_or_removed(tx, sid, _utcnow())
        now = store._now_after(row)  # under the lock, never before the session's updated_at
        last = 0 if row is None else int(row[6])
        if start > last + 1 or expect_ids is not None and (
            len(expect_ids) != last - start + 1
            or [r[1] for r in tx.run(q.ITEMS_RANGE, **scope, first=start, last=last)] != expect_ids
        ):
            raise ConflictError(f"session {sid!r} is at seq {last}: its items from seq {start} are not the expected "
                                "ones", hint="another writer changed it; re-read the session and retry", last_seq=last)
        if row is None:
            store._insert(tx, sid, None, None, now)
        tx.run(q.DELETE_ITEMS_FROM, **scope, first=start)
        kept = start - 1
        dropped = 0
        while prune is not None and dropped < kept:
            batch = tx.run(q.ITEMS_AFTER, **scope, after=dropped, limit=min(_PRUNE_BATCH, kept - dropped),
                           now=now)
            run = 0
            for _seq, _iid, _created, data in batch:
                if not prune(orjson.loads(data)):
                    break
                run += 1
            dropped += run
            if run < len(batch) or not batch:
                break
        if dropped:
            tx.run(q.DELETE_ITEMS_UPTO, **scope, last=dropped)
            tx.run(q.NEGATE_SEQS, **scope)
            tx.run(q.UNNEGATE_SEQS, **scope, shift=dropped)
        base = kept - dropped
        if records:
            tx.many(q.INSERT_ITEM, [{**scope, "seq": base + i, "id": iid, "now": now, "data": data}
                                    for i, (iid, data) in enumerate(records, 1)])
        tx.run(q.UPDATE_SESSION_SEQ, tenant=store.tenant, id=sid, last_seq=base + len(records), now=now,
               title=_title_from(datas), version=store._next_version(tx, sid),
               added=base + len(records) - (0 if row is None else int(row[5])))
    return [Item(base + i, iid, now, data) for i, ((iid, _), data) in enumerate(zip(records, datas, strict=True), 1)]
