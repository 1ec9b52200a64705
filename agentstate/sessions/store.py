"""Sessions: crash-safe conversation history that many processes can append to at once.

    sessions = agentstate.SessionStore(".agentstate", tenant="alice")
    sessions.append("chat-1", [{"role": "user", "content": "Hi"}])
    for item in sessions.context("chat-1", limit=20): ...

Sessions live in the store's SQLite database ``agentstate.db`` (or on PostgreSQL for a URL): see
``agentstate.sql``. Every writing call is one transaction under the store's writer lock; seqs run
1, 2, 3... per session with no gap or duplicate, and a pop frees its seq for the next append. Every
write to a session also gives it a new ``version`` (never repeated for that session id), which
``append(expect_version=)`` compares: unlike ``expect_seq`` it detects a pop followed by an append.
The times a write stamps (``created_at``, ``updated_at``) are taken under the lock, once it is held,
and a session's ``updated_at`` never goes backwards.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ..errors import ConflictError, InvalidInput, NotFound
from ..names import check_name, check_tenant, shown
from ..page import Page, check_limit, decode_cursor, encode_cursor
from ..sql import q_sessions as q
from ..sql import stats
from .checks import (  # noqa: F401 - MAX_ITEM_BYTES and encode_item are re-exported
    MAX_ITEM_BYTES,
    MAX_SEQ,
    _check_seq,
    _check_title,
    _is_timestamp,
    _text_of,
    _title_from,
    encode_item,
)
from .edit import ItemEdits
from .values import Item, SessionInfo
from .where import FleetMixin, _meta_text, expires_at

EXPORT_TYPE = "agentstate.session"
_new_id: Any = None  # state.lock_record._uuid4, imported by the first append
_pg_append: Any = None  # pg_append.append, imported by the first append to a PostgreSQL store
_ALL = 1 << 62  # "no limit" for LIMIT :limit in both dialects

__all__ = ["Item", "MAX_ITEM_BYTES", "Page", "SessionInfo", "SessionStore", "encode_item"]


_second: tuple[int, str] = (-1, "")  # the last whole second formatted (one tuple: threads read it atomically)


def _utcnow() -> str:
    """UTC now, "2026-01-02T03:04:05.678901Z" (the seconds part formatted once a second)."""
    global _second
    ns = time.time_ns()
    s, us = divmod(ns // 1000, 1_000_000)
    cached = _second
    if cached[0] != s:
        cached = _second = (s, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)))
    return f"{cached[1]}.{us:06d}Z"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found", hint="see `agentstate sessions list`",
                    session_id=session_id)


def _damaged(message: str, **details: Any) -> Exception:
    """A stored value that does not decode: corruption by something other than agentstate (exit 4)."""
    from ..errors import StateCorrupted

    return StateCorrupted(message, hint="run `agentstate doctor`; the database was changed by something other than "
                          "agentstate", **details)


# -- the store ---------------------------------------------------------------------------------------------


class SessionStore(FleetMixin, ItemEdits):
    """The sessions of one tenant in a store (a directory, or a postgresql:// URL)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        tenant: str | None = None,
        lock_timeout: float | str | None = None,
        max_item_bytes: int = MAX_ITEM_BYTES,
        default_ttl: float | str | None = None,
        cache: str | None = None,
        hot_ttl: float | str = "10m",
        hot_items: int = 50,
    ) -> None:
        """``default_ttl``: a time to live for every session this store creates or appends to (opt-in; env
        AGENTSTATE_SESSION_TTL). ``cache``: a Redis URL (redis://HOST:PORT/DB or unix:///PATH?db=N; env
        AGENTSTATE_CACHE) for the hot tier (agentstate.cache), holding each hot session's info and last
        ``hot_items`` items for ``hot_ttl`` after its last use."""
        from ..names import default_dir
        from ..sql import is_url
        from .where import check_ttl, env_ttl

        self.tenant = check_tenant(tenant)
        if path is None:
            path = os.environ.get("AGENTSTATE_URL") or default_dir()
        self.target = path if is_url(path) else os.fspath(path)
        if type(max_item_bytes) is not int or max_item_bytes < 1:
            raise InvalidInput(f"max_item_bytes {max_item_bytes!r} is not a positive integer")
        self.max_item_bytes = max_item_bytes
        if lock_timeout is not None:  # refused here, as StateStore refuses it, not at the first write
            from ..duration import parse_duration

            lock_timeout = parse_duration(lock_timeout, "lock timeout")
        self.lock_timeout = lock_timeout
        self.default_ttl = env_ttl() if default_ttl is None else check_ttl(default_ttl, "default_ttl")
        self._db: Any = None
        self._hot: Any = None
        # PostgreSQL: how this store last found each session it appended to (pg_append.py): "statement", it
        # exists without a time to live (its appends: q_sessions.PG_APPEND_FAST); "general", it has one (the
        # general path below). A hint, bounded: a session not in it goes to the function, which decides.
        self._pg_paths: dict[str, str] = {}
        cache = os.environ.get("AGENTSTATE_CACHE") or None if cache is None else cache
        if cache:
            from ..cache import HotTier

            self._hot = HotTier(cache, self, hot_ttl=hot_ttl, hot_items=hot_items)

    def __repr__(self) -> str:
        return f"SessionStore({shown(self.target)!r}, tenant={self.tenant!r})"

    @property
    def db(self) -> Any:
        if self._db is None:
            from ..sql import open_database

            self._db = open_database(self.target, lock_timeout=self.lock_timeout)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._hot is not None:
            self._hot.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows -> objects ----------------------------------------------------------------------------------

    def _info(self, row: tuple) -> SessionInfo:
        sid, title, metadata, created_at, updated_at, item_count, _last, version, expires = row[:9]
        try:
            meta = None if metadata is None else orjson.loads(metadata)
        except orjson.JSONDecodeError as e:
            raise _damaged(f"the stored metadata of session {sid!r} (tenant {self.tenant!r}) is not valid JSON: {e}",
                           tenant=self.tenant, session_id=sid) from None
        return SessionInfo(sid, self.tenant, title, meta, created_at, updated_at, int(item_count), int(version),
                           expires)

    def _items(self, rows: Iterable[tuple], sid: str) -> list[Item]:
        try:
            return [Item(int(seq), iid, created_at, orjson.loads(data)) for seq, iid, created_at, data in rows]
        except orjson.JSONDecodeError:
            pass
        for seq, _iid, _created_at, data in rows:  # name the damaged one
            try:
                orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise _damaged(f"the stored item {int(seq)} of session {sid!r} (tenant {self.tenant!r}) is not "
                               f"valid JSON: {e}", tenant=self.tenant, session_id=sid, seq=int(seq)) from None
        raise AssertionError("unreachable")

    def _row(self, tx: Any, session_id: str, now: str | None = None) -> tuple:
        """The session's row; NotFound if there is none or it has expired."""
        from .where import is_expired

        row = tx.one(q.GET_SESSION, tenant=self.tenant, id=session_id)
        if row is None or is_expired(row[8], now or _utcnow()):
            raise _not_found(session_id)
        return row

    def _insert(self, tx: Any, sid: str, title: str | None, metadata: str | None, now: str,
                expires: str | None = None, created_at: str | None = None) -> int:
        """A new session row, counted in session_counts (as every insert must be), with its metadata's tags;
        its version."""
        tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=1)
        version = self._next_version(tx, sid)
        tx.run(q.INSERT_SESSION, tenant=self.tenant, id=sid, title=title, metadata=metadata, now=now,
               created_at=created_at or now, version=version)
        if expires is not None:
            tx.run(q.SET_EXPIRES, tenant=self.tenant, id=sid, expires_at=expires)
        if metadata is not None:
            self._set_tags(tx, sid, metadata, now, expires, fresh=True)
        return version

    def _next_version(self, tx: Any, sid: str, current: int | None = None) -> int:
        """The version a write gives session ``sid``, never one the id had before: ``current`` + 1 when
        the caller holds the session's row (SQLite: no row the tenant's writers share is written), else
        from the tenant's clock (q_sessions.NEXT_VERSION), above the session's own. PostgreSQL: its
        sequence, always."""
        if current is not None and tx.dialect == "sqlite":
            return current + 1
        return int(tx.value(q.NEXT_VERSION, tenant=self.tenant, id=sid))

    @staticmethod
    def _now_after(row: tuple | None) -> str:
        """The time a write stamps: now (taken under the lock), never before the session's updated_at."""
        now = _utcnow()
        return now if row is None or row[4] <= now else row[4]

    def _encode_all(self, items: Any, check: bool = True) -> tuple[list[dict[str, Any]], list[bytes]]:
        if isinstance(items, dict):
            items = [items]
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise InvalidInput(f"items must be a list of JSON objects (got {type(items).__name__})")
        items = list(items)
        encoded = [encode_item(it, self.max_item_bytes, f"item {i + 1}", check) for i, it in enumerate(items)]
        return items, encoded

    # -- writing ------------------------------------------------------------------------------------------

    def create(self, session_id: str | None = None, title: str | None = None,
               metadata: dict[str, Any] | None = None, *, ttl: float | str | None = None) -> SessionInfo:
        """A new empty session (a UUID unless ``session_id`` is given); an existing id is ConflictError.
        ``ttl`` ("7d", "12h", seconds): the session expires that long after its last append."""
        from .where import expires_at

        sid = str(uuid.uuid4()) if session_id is None else check_name(session_id, "session id")
        _check_title(title)
        meta = _meta_text(metadata)
        seconds = self._ttl(ttl)
        with self._write("sessions create", sid) as tx:
            now = _utcnow()  # under the lock
            expires = expires_at(now, seconds)
            if self._live_or_removed(tx, sid, now) is not None:
                raise ConflictError(f"session {sid!r} already exists", session_id=sid)
            version = self._insert(tx, sid, title, meta, now, expires)
        return SessionInfo(sid, self.tenant, title, metadata, now, now, 0, version, expires)

    def append(self, session_id: str, items: Any, *, expect_seq: int | None = None,
               expect_version: int | None = None, idempotency_key: str | None = None,
               create: bool = True, check_items: bool = True, ttl: float | str | None = None) -> list[Item]:
        """Append ``items`` (JSON objects) in one transaction; returns them as stored.

        A missing session is created unless ``create=False`` (NotFound). ``expect_seq=N`` appends only if
        the session's last seq is N; ``expect_version=V`` only if the session's version is still V (as
        read in SessionInfo.version; 0: the session does not exist): any write since, a pop included,
        changed it. Else ConflictError. A repeated ``idempotency_key`` returns the items of the first
        append and stores nothing. ``check_items=False`` stores any JSON object (no message shape checks:
        for adapters whose framework stores what it likes), still strict JSON and size-limited. ``ttl``
        (or the store's default_ttl) sets the session to expire that long from now (an expired session
        is gone: this append starts a new one)."""
        sid = check_name(session_id, "session id")
        seconds = self._ttl(ttl)
        datas, encoded = self._encode_all(items, check_items)
        if expect_seq is not None:
            _check_seq(expect_seq, "expect_seq")
        if expect_version is not None:
            _check_seq(expect_version, "expect_version")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 256 or "\x00" in idempotency_key
        ):
            raise InvalidInput("idempotency_key must be a string of 1 to 256 characters (no NUL)")
        texts = [data.decode() for data in encoded]
        return self._append(sid, texts, datas, expect_seq=expect_seq, expect_version=expect_version,
                            key=idempotency_key, create=create, title=_title_from(datas), ttl=seconds)

    def _append(self, sid: str, texts: list[str], datas: list[dict[str, Any]], *, expect_seq: int | None,
                expect_version: int | None, key: str | None, create: bool, title: str | None,
                ttl: float | None = None) -> list[Item]:
        """The write behind append: ``texts`` are the items' stored JSON text, ``datas`` the objects."""
        global _new_id, _pg_append
        if _new_id is None:  # lock_record (socket, random) is not for a reader's start-up: on the first write
            from ..state.lock_record import _uuid4 as _new_id

        ids = [_new_id() for _ in texts]  # str(uuid.uuid4()) at a fifth of its cost
        db = self.db
        if db.dialect == "postgres" and self._hot is None and ttl is None and self._pg_paths.get(sid) != "general":
            if _pg_append is None:  # one round trip, holding this session's lock only
                from .pg_append import append as _pg_append

            fast = _pg_append(self, db, sid, ids, texts, datas, expect_seq=expect_seq, expect_version=expect_version,
                              key=key, create=create, title=title)
            if fast is not None:  # None: a session with a time to live, appended below
                if fast and fast[0].id == ids[0]:  # not a replay of an earlier append
                    stats.appended()
                return fast
        replayed: list[bool] = []

        def work(tx: Any) -> list[Item]:
            now = _utcnow()  # under the lock: after every write this one waited for
            row = self._live_or_removed(tx, sid, now)  # an expired session is removed: this starts anew
            if row is not None and row[4] > now:  # never before the session's updated_at (_now_after)
                now = row[4]
            if tx.dialect == "postgres":  # a time to live after this write: the general path next time too
                self._pg_path(sid, "general" if ttl is not None or (row is not None and row[8] is not None) else None)
            if row is None:
                if not create:
                    raise _not_found(sid)
                if expect_seq not in (None, 0):
                    raise ConflictError(f"session {sid!r} does not exist yet (last seq 0), expected seq {expect_seq}",
                                        hint="re-read the session and retry", last_seq=0)
                if expect_version not in (None, 0):
                    raise ConflictError(f"session {sid!r} does not exist (version 0), expected version "
                                        f"{expect_version}", hint="re-read the session and retry", version=0)
                version = self._insert(tx, sid, None, None, now)
                last = 0
            else:
                last, version = int(row[6]), int(row[7])
                if key is not None:
                    seen = tx.one(q.GET_APPEND_KEY, tenant=self.tenant, session_id=sid, key=key)
                    if seen is not None:
                        replayed.append(True)
                        return self._replay(tx, sid, int(seen[0]), orjson.loads(seen[1]))
                if expect_seq is not None and expect_seq != last:
                    raise ConflictError(f"session {sid!r} is at seq {last}, expected {expect_seq}",
                                        hint="another writer appended first; re-read the session and retry",
                                        last_seq=last)
                if expect_version is not None and expect_version != version:
                    raise ConflictError(f"session {sid!r} is at version {version}, expected {expect_version}",
                                        hint="another writer changed it (an append or a pop); re-read the "
                                        "session and retry", version=version)
            if texts:
                tx.many(q.INSERT_ITEM, [
                    {"tenant": self.tenant, "session_id": sid, "seq": last + i, "id": iid, "now": now, "data": data}
                    for i, (iid, data) in enumerate(zip(ids, texts, strict=True), 1)
                ])
            if texts or row is None:
                tx.run(q.UPDATE_SESSION_SEQ, tenant=self.tenant, id=sid, last_seq=last + len(texts), now=now,
                       title=title, version=self._next_version(tx, sid, version), added=len(texts))
                if row is not None and row[2] is not None:  # tags come from metadata only: none without it
                    tx.run(q.TOUCH_TAGS, tenant=self.tenant, session_id=sid, now=now)
            if ttl is not None:
                expires = expires_at(now, ttl)
                tx.run(q.SET_EXPIRES, tenant=self.tenant, id=sid, expires_at=expires)
                tx.run(q.SET_TAGS_EXPIRES, tenant=self.tenant, session_id=sid, expires_at=expires)
            if key is not None:
                tx.run(q.INSERT_APPEND_KEY, tenant=self.tenant, session_id=sid, key=key, first_seq=last + 1,
                       item_ids=orjson.dumps(ids).decode(), now=now)
            return [Item(last + i, iid, now, data) for i, (iid, data) in enumerate(zip(ids, datas, strict=True), 1)]

        # SQLite: concurrent appends of this process share one transaction (group commit, sql/group.py).
        # With a hot tier each write is fenced on its own (the fence ends after its own commit).
        grouped = getattr(self.db, "grouped", None) if self._hot is None else None
        if grouped is not None:
            stored = grouped("sessions append", work, self.lock_timeout)
        else:
            with self._write("sessions append", sid) as tx:
                stored = work(tx)
        if not replayed:
            stats.appended()
        return stored

    def _pg_path(self, sid: str, path: str | None) -> None:
        """Remember how session ``sid`` is appended to on PostgreSQL (``_pg_paths``; None: forget it)."""
        paths = self._pg_paths
        paths.pop(sid, None)
        if path is not None:
            if len(paths) >= 4096:
                paths.pop(next(iter(paths), None), None)  # the longest remembered
            paths[sid] = path

    def _replay(self, tx: Any, sid: str, first_seq: int, ids: list[str]) -> list[Item]:
        """The items an earlier append with the same key stored (those still there)."""
        if not ids:
            return []
        rows = tx.run(q.ITEMS_RANGE, tenant=self.tenant, session_id=sid, first=first_seq,
                      last=first_seq + len(ids) - 1)
        return [it for it in self._items(rows, sid) if it.id == ids[it.seq - first_seq]]

    def replace_items(self, session_id: str, items: Any, *, start: int = 1, expect_ids: list[str] | None = None,
                      prune: Any = None, check_items: bool = True) -> list[Item]:
        """Replace the items from seq ``start`` on (all by default) with ``items`` in one transaction, e.g.
        a history by its compaction; see agentstate.sessions.replace."""
        from .replace import replace_items

        return replace_items(self, session_id, items, start=start, expect_ids=expect_ids, prune=prune,
                             check_items=check_items)

    def pop(self, session_id: str) -> Item | None:
        """Remove and return the last item (its seq is free again), or None when the session is empty."""
        sid = check_name(session_id, "session id")
        with self._write("sessions pop", sid) as tx:
            row = self._row(tx, sid)
            last = int(row[6])
            if last == 0:
                return None
            now = self._now_after(row)
            item = self._items(tx.run(q.GET_ITEM, tenant=self.tenant, session_id=sid, seq=last), sid)[0]  # before
            tx.run(q.DELETE_ITEM, tenant=self.tenant, session_id=sid, seq=last)  # a damaged one is refused
            # the next last seq: last - 1, unless delete_item left a gap below it
            below = int(tx.value(q.MAX_SEQ, tenant=self.tenant, session_id=sid) or 0)
            tx.run(q.UPDATE_SESSION_SEQ, tenant=self.tenant, id=sid, last_seq=below, now=now,
                   title=None, version=self._next_version(tx, sid, int(row[7])), added=-1)
            tx.run(q.TOUCH_TAGS, tenant=self.tenant, session_id=sid, now=now)
        return item

    def delete(self, *session_ids: str) -> list[str]:
        """Delete the sessions and all their items in one transaction, all or nothing: NotFound (and
        nothing deleted) if any does not exist. Returns the ids deleted (each once, in the order given)."""
        if not session_ids:
            raise InvalidInput("delete needs at least one session id")
        sids = list(dict.fromkeys(check_name(s, "session id") for s in session_ids))
        try:
            with self._write("sessions delete", *sids) as tx:
                now = _utcnow()
                for sid in sids:
                    self._row(tx, sid, now)  # an expired session is not there to delete (prune removes it)
                    if tx.execute(q.DELETE_SESSION, tenant=self.tenant, id=sid) == 0:
                        raise _not_found(sid)  # rolls back the ones deleted before it
                tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=-len(sids))
        finally:
            if self._hot is not None:
                self._hot.invalidate(sids)
        return sids

    def prune(self, older_than: float | int | str | None = None, *, dry_run: bool = False) -> list[str]:
        """Delete whole sessions that have expired, and those not updated for ``older_than`` (seconds, or
        "30d", "12h"...) when given; their ids. ``dry_run=True``: the ids it would delete now, deleting
        nothing (no lock taken)."""
        from ..duration import parse_duration
        cutoff = ""  # no session is older than that: expired ones only
        if older_than is not None:
            seconds = parse_duration(older_than, "age")
            try:  # taken before the lock wait: the earlier cutoff spares, never deletes, what was written meanwhile
                cutoff = _iso(datetime.now(UTC) - timedelta(seconds=seconds))
            except (OverflowError, ValueError):  # older than any representable time: nothing is that old
                cutoff = ""
        if dry_run:
            with self.db.read() as tx:
                return [r[0] for r in tx.run(q.STALE_SESSIONS, tenant=self.tenant, cutoff=cutoff, now=_utcnow())]
        with self._write("sessions prune") as tx:
            now = _utcnow()
            ids = [r[0] for r in tx.run(q.STALE_SESSIONS, tenant=self.tenant, cutoff=cutoff, now=now)]
            if ids and tx.dialect == "postgres":  # lock those sessions, then keep the ones still stale
                tx.lock(*[self.db.resource("session", self.tenant, sid) for sid in ids])
                still = {r[0] for r in tx.run(q.STALE_SESSIONS, tenant=self.tenant, cutoff=cutoff, now=now)}
                ids = [sid for sid in ids if sid in still]
            for sid in ids:
                tx.run(q.DELETE_SESSION, tenant=self.tenant, id=sid)
            if ids:
                tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=-len(ids))
        if self._hot is not None:
            self._hot.invalidate(ids)
        return ids

    # -- reading ------------------------------------------------------------------------------------------

    def get(self, session_id: str) -> SessionInfo:
        sid = check_name(session_id, "session id")
        if self._hot is not None:
            return self._hot.get(sid)
        return self._get(sid)

    def _get(self, sid: str) -> SessionInfo:
        with self.db.read() as tx:
            return self._info(self._row(tx, sid))

    def items(self, session_id: str, limit: int | None = None, after: int | None = None) -> list[Item]:
        """Items oldest first: those after seq ``after`` (default: from the start), at most ``limit``."""
        sid = check_name(session_id, "session id")
        after = 0 if after is None else _check_seq(after, "after")
        limit = _ALL if limit is None else _check_seq(limit, "limit")
        if self._hot is not None:
            return self._hot.items(sid, after, limit)
        return self._items_after(sid, after, limit)

    def _items_after(self, sid: str, after: int, limit: int) -> list[Item]:
        now = _utcnow()
        with self.db.read() as tx:
            rows = tx.run(q.ITEMS_AFTER, tenant=self.tenant, session_id=sid, after=after, limit=limit,
                          now=now) if limit else []
            if not rows:  # no items: is there a session at all? (one query less in the common case)
                self._row(tx, sid, now)
            return self._items(rows, sid)

    def context(self, session_id: str, limit: int = 20) -> list[Item]:
        """The last ``limit`` items, oldest first (what a model's context window gets)."""
        sid = check_name(session_id, "session id")
        _check_seq(limit, "limit")
        if self._hot is not None:
            return self._hot.context(sid, limit)
        return self._context(sid, limit)

    def _context(self, sid: str, limit: int) -> list[Item]:
        now = _utcnow()
        with self.db.read() as tx:
            rows = tx.run(q.LAST_ITEMS, tenant=self.tenant, session_id=sid, limit=limit, now=now) if limit else []
            if not rows:  # no items: is there a session at all? (one query less in the common case)
                self._row(tx, sid, now)
        rows.reverse()
        return self._items(rows, sid)

    def show(self, session_id: str, last: int | None = None) -> tuple[SessionInfo, list[Item]]:
        """The session and its items (all, or the last ``last``), from one snapshot."""
        sid = check_name(session_id, "session id")
        if last is not None:
            _check_seq(last, "last")
            if self._hot is not None:
                return self._hot.show(sid, last)
        return self._show(sid, last)

    def _show(self, sid: str, last: int | None) -> tuple[SessionInfo, list[Item]]:
        now = _utcnow()
        with self.db.read() as tx:
            info = self._info(self._row(tx, sid, now))
            if last is None:
                rows = tx.run(q.ITEMS_AFTER, tenant=self.tenant, session_id=sid, after=0, limit=_ALL, now=now)
            elif last == 0:
                rows = []
            else:
                rows = tx.run(q.LAST_ITEMS, tenant=self.tenant, session_id=sid, limit=last, now=now)
                rows.reverse()
        return info, self._items(rows, sid)

    def list(self, limit: int = 50, cursor: str | None = None,
             where: dict[str, Any] | None = None) -> Page[SessionInfo]:
        """Sessions most recently updated first; with ``where`` ({"agent_id": "a1", ...}: top-level metadata
        values, all must match) only the matching ones, through an index. Paging with ``next_cursor``
        never repeats or skips a session that did not change meanwhile; ``total`` counts the matches."""
        from .where import check_where

        check_limit(limit)
        conds = None if where is None else check_where(where)
        now = _utcnow()
        after = None if cursor is None else decode_cursor("sessions", cursor, (str, str))
        with self.db.read() as tx:
            if conds is not None:
                rows, total = self._list_where(tx, conds, limit, after, now)
            else:
                if after is None:
                    rows = tx.run(q.LIST_FIRST, tenant=self.tenant, limit=limit + 1, now=now)
                else:
                    rows = tx.run(q.LIST_AFTER, tenant=self.tenant, updated_at=after[0], id=after[1],
                                  limit=limit + 1, now=now)
                total = int(tx.value(q.COUNT_SESSIONS, tenant=self.tenant) or 0)
                if total:  # expired sessions not removed yet are not counted
                    total -= int(tx.value(q.COUNT_EXPIRED, tenant=self.tenant, now=now) or 0)
        more = len(rows) > limit
        infos = [self._info(r) for r in rows[:limit]]
        nxt = encode_cursor("sessions", [infos[-1].updated_at, infos[-1].id]) if more and infos else None
        return Page(infos, nxt, total)

    # -- export / import ----------------------------------------------------------------------------------

    def export_lines(self, session_id: str) -> Iterator[bytes]:
        """The session as JSON lines: a header {"type": "agentstate.session", "version": 1, "session": {...}},
        then one {"seq", "id", "created_at", "data"} line per item, oldest first. One snapshot, read in
        pages while the lines are consumed (memory does not grow with the session); close the iterator
        if you stop early."""
        from .stream import export_lines

        return export_lines(self, session_id)

    def import_lines(self, lines: Iterable[bytes | str], session_id: str | None = None) -> SessionInfo:
        """A new session from exported JSON lines (or from lines that are each one item), in one
        transaction. The id is ``session_id``, else the exported one, else a new UUID; an existing id is
        ConflictError. Titles, metadata and item ids and times are kept. ``lines`` is read once (a file
        object is fine): every line is checked before the lock is taken; memory does not grow with it."""
        from .stream import import_lines

        return import_lines(self, lines, session_id)
