"""A session append on PostgreSQL in one round trip (issue 17): the session's own lock (writers of other
sessions never wait), then ``q_sessions.PG_APPEND`` (create-if-missing, compare, insert, bump, key) and
its commit, with the holder record in the same round trip (``sql/pg_batch.py``). An append without an
idempotency key to a session this store has seen exist without a time to live (``store._pg_paths``) is
``q_sessions.PG_APPEND_FAST`` alone (the same write without the function's call); when that statement
writes nothing (no row back), the function decides, in a second round trip. The same outcomes as
the SQLite path in store.py: items, or NotFound / ConflictError with nothing written, or the items of
an earlier append with the same key; None (nothing written) for a session with a time to live,
whose expiry the general path judges by the caller's clock."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import ConflictError
from ..sql import q_sessions as q
from . import store as _store  # loaded: only store.py imports this module (its _utcnow looked up per call)


def append(store: Any, db: Any, sid: str, ids: list[str], texts: list[str], datas: list[dict[str, Any]], *,
           expect_seq: int | None, expect_version: int | None, key: str | None, create: bool,
           title: str | None) -> list[Any] | None:
    """``store``'s append of ``texts`` (the items' stored JSON; ``datas`` the objects, ``ids`` their new
    ids) to session ``sid`` on ``db`` (``store.db``, a PostgreSQL Database)."""
    tenant = store.tenant
    params = {"tenant": tenant, "id": sid, "create": create, "key": key, "expect_seq": expect_seq,
              "expect_version": expect_version, "ids": ids, "datas": texts, "title": title,
              "item_ids": orjson.dumps(ids).decode() if key is not None else None, "now": _store._utcnow()}
    lock = db.resource("session", tenant, sid)
    if key is None and ids and store._pg_paths.get(sid) == "statement":  # found here without a time to live
        if len(ids) == 1:
            params["item_id"], params["item_data"] = ids[0], texts[0]
        rows = db.call("sessions append", lock, q.PG_APPEND_FAST_ONE if len(ids) == 1 else q.PG_APPEND_FAST,
                       params, store.lock_timeout)
        if rows:
            return _items(int(rows[0][0]), rows[0][1], ids, datas)
        store._pg_path(sid, None)  # nothing written: the function decides
    rows = db.call("sessions append", lock, q.PG_APPEND, params, store.lock_timeout)
    status, last, version, now, _new_version, first_seq, item_ids = rows[0]
    if status == "ok":  # the session exists, without a time to live
        store._pg_path(sid, "statement")
        return _items(int(last), now, ids, datas)
    if status == "expiring":  # a session with a time to live: the general path judges its expiry
        store._pg_path(sid, "general")
        return None
    last, version = int(last), int(version)
    if status == "missing":
        raise _store._not_found(sid)
    if status == "replay":
        with db.read() as tx:
            return store._replay(tx, sid, int(first_seq), orjson.loads(item_ids))
    if status == "seq":
        if version == 0:
            raise ConflictError(f"session {sid!r} does not exist yet (last seq 0), expected seq {expect_seq}",
                                hint="re-read the session and retry", last_seq=0)
        raise ConflictError(f"session {sid!r} is at seq {last}, expected {expect_seq}",
                            hint="another writer appended first; re-read the session and retry", last_seq=last)
    if status == "version":
        if version == 0:
            raise ConflictError(f"session {sid!r} does not exist (version 0), expected version {expect_version}",
                                hint="re-read the session and retry", version=0)
        raise ConflictError(f"session {sid!r} is at version {version}, expected {expect_version}",
                            hint="another writer changed it (an append or a pop); re-read the session and retry",
                            version=version)
    raise AssertionError(f"unexpected append status {status!r}")


def _items(last: int, now: str, ids: list[str], datas: list[dict[str, Any]]) -> list[Any]:
    item = _store.Item
    return [item(last + i, iid, now, data) for i, (iid, data) in enumerate(zip(ids, datas, strict=True), 1)]
