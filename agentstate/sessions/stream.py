"""Export and import of one session as JSON lines (``SessionStore.export_lines`` / ``import_lines``), streamed:
peak memory does not grow with the session.

* Export reads the session in pages of PAGE items by seq (``ITEMS_AFTER``) inside one read transaction,
  so it is one snapshot (SQLite: one WAL snapshot; PostgreSQL: REPEATABLE READ), and yields a line at a time.
* Import validates every line first, outside the lock, spooling the items' stored text to an anonymous
  temporary file; then, in one transaction under the writer lock, it inserts them in batches of PAGE
  (executemany). All of it or, on any bad line or error, none of it.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, InvalidInput
from ..names import check_name

if TYPE_CHECKING:
    from .store import SessionInfo, SessionStore

PAGE = 1000


def export_lines(store: SessionStore, session_id: str) -> Iterator[bytes]:
    """See SessionStore.export_lines."""
    import orjson

    from ..sql import q_sessions as q
    from .store import EXPORT_TYPE

    sid = check_name(session_id, "session id")
    from .store import _utcnow

    now = _utcnow()
    with store.db.read() as tx:
        info = store._info(store._row(tx, sid, now))
        yield orjson.dumps({"type": EXPORT_TYPE, "version": 1, "session": info.to_dict()}) + b"\n"
        after = 0
        while True:
            rows = tx.run(q.ITEMS_AFTER, tenant=store.tenant, session_id=sid, after=after, limit=PAGE, now=now)
            for item in store._items(rows, sid):
                yield orjson.dumps(item.to_dict()) + b"\n"
            if len(rows) < PAGE:
                return
            after = int(rows[-1][0])


def import_lines(store: SessionStore, lines: Iterable[bytes | str], session_id: str | None = None) -> SessionInfo:
    """See SessionStore.import_lines."""
    import orjson

    from ..state.codec import encode_value, parse_json
    from .checks import _check_title, _is_timestamp, _title_from, encode_item
    from .store import EXPORT_TYPE

    header: dict[str, Any] | None = None
    first_title: str | None = None
    count = 0
    with tempfile.TemporaryFile(prefix="agentstate-import-") as spool:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            value = parse_json(line, f"line {n}")
            if n == 1 and isinstance(value, dict) and value.get("type") == EXPORT_TYPE:
                if value.get("version") != 1 or not isinstance(value.get("session"), dict):
                    raise InvalidInput(f"line {n}: not a version-1 agentstate session header")
                header = value["session"]
                continue
            if header is not None:
                if not (isinstance(value, dict) and isinstance(value.get("data"), dict)):
                    raise InvalidInput(f"line {n}: not an exported item (an object with \"data\")")
                data, iid, created = value["data"], value.get("id"), value.get("created_at")
                if not isinstance(iid, str) or not 0 < len(iid) <= 256 or "\x00" in iid:
                    iid = None
                if not isinstance(created, str) or not _is_timestamp(created):
                    created = None  # stamped under the lock, as an append's are
            else:
                data, iid, created = value, None, None
            text = encode_item(data, store.max_item_bytes, f"line {n}").decode()
            if first_title is None and data.get("role") == "user":
                first_title = _title_from([data])
            spool.write(orjson.dumps([iid or str(uuid.uuid4()), created, text]) + b"\n")
            count += 1
        if header is None and not count:
            raise InvalidInput("nothing to import: no items")
        sid = session_id or (header or {}).get("id") or str(uuid.uuid4())
        sid = check_name(sid, "session id")
        title = (header or {}).get("title")
        meta = (header or {}).get("metadata")
        try:
            _check_title(title)
        except InvalidInput as e:
            raise InvalidInput(f"the header's {e.message}") from None
        if meta is not None and not isinstance(meta, dict):
            raise InvalidInput("the header's metadata is not an object")
        created_at = (header or {}).get("created_at")
        if not isinstance(created_at, str) or not _is_timestamp(created_at):
            created_at = None
        meta_text = None if meta is None else encode_value(meta).decode()
        title = title if title is not None else first_title
        spool.seek(0)
        _write(store, sid, spool, count, title, meta_text, created_at)
    return store.get(sid)


def _write(store: SessionStore, sid: str, spool: Any, count: int, title: str | None, meta: str | None,
           created_at: str | None) -> None:
    """The import's one transaction: the session row, then the spooled items in batches of PAGE."""
    import orjson

    from ..sql import q_sessions as q
    from .store import _utcnow

    with store._write("sessions import", sid) as tx:
        if store._live_or_removed(tx, sid, _utcnow()) is not None:
            raise ConflictError(f"session {sid!r} already exists", hint="import it with --id NEW_ID", session_id=sid)
        now = _utcnow()  # under the lock
        store._insert(tx, sid, title, meta, now, created_at=created_at or now)
        seq = 0
        batch: list[dict[str, Any]] = []
        for line in spool:
            iid, created, text = orjson.loads(line)
            seq += 1
            batch.append({"tenant": store.tenant, "session_id": sid, "seq": seq, "id": iid, "now": created or now,
                          "data": text})
            if len(batch) == PAGE:
                tx.many(q.INSERT_ITEM, batch)
                tx.value(q.FLUSH)  # PostgreSQL sends its queued inserts now: the queue stays one batch
                batch = []
        if batch:
            tx.many(q.INSERT_ITEM, batch)
        if seq != count:
            raise AssertionError(f"the import spool holds {seq} items, not {count}")
        tx.run(q.UPDATE_SESSION_SEQ, tenant=store.tenant, id=sid, last_seq=count, now=now, title=None,
               version=store._next_version(tx, sid), added=count)
