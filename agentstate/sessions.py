"""Sessions: crash-safe conversation history that many processes can append to at once.

    sessions = agentstate.SessionStore(".agentstate", tenant="alice")
    sessions.append("chat-1", [{"role": "user", "content": "Hi"}])
    for item in sessions.context("chat-1", limit=20): ...

Sessions live in the store's SQLite database ``agentstate.db`` (or on PostgreSQL for a URL): see
``agentstate.sql``. Every writing call is one transaction under the store's writer lock; seqs run
1, 2, 3... per session with no gap or duplicate, and a pop frees its seq for the next append.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ConflictError, InvalidInput, NotFound
from .names import check_name, check_tenant, shown
from .page import Page, check_limit, decode_cursor, encode_cursor
from .sessions_where import FleetMixin, _meta_text

MAX_ITEM_BYTES = 1 << 20
ROLES = ("system", "developer", "user", "assistant", "tool")
TITLE_CHARS = 50
EXPORT_TYPE = "agentstate.session"
_TEXT_PARTS = ("text", "input_text", "output_text")
_ALL = 1 << 62  # "no limit" for LIMIT :limit in both dialects

__all__ = ["Item", "MAX_ITEM_BYTES", "Page", "SessionInfo", "SessionStore", "encode_item"]


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Item:
    """One stored item: ``seq`` (1, 2, 3... in the session), a unique ``id``, ``created_at``, ``data``."""

    seq: int
    id: str
    created_at: str
    data: dict[str, Any]

    @property
    def role(self) -> str | None:
        role = self.data.get("role")
        return role if isinstance(role, str) else None

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "created_at": self.created_at, "data": self.data}


@dataclass(frozen=True)
class SessionInfo:
    id: str
    tenant: str
    title: str | None
    metadata: dict[str, Any] | None
    created_at: str
    updated_at: str
    item_count: int
    expires_at: str | None = None  # None: lives until deleted or pruned

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "title": self.title,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "item_count": self.item_count,
            "expires_at": self.expires_at,
        }


# -- validation --------------------------------------------------------------------------------------------


def _text_of(content: Any) -> str | None:
    """The text of a message's content (a string, or the text parts of a list), or None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(texts) if texts else None
    return None


def _check_message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role is None and "role" not in item:
        return
    if role not in ROLES:
        raise InvalidInput(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if "content" not in item or item["content"] is None:
        if role == "assistant":  # e.g. a chat-completions tool call: no content
            return
        raise InvalidInput(f"{where}: a {role} message needs content")
    content = item["content"]
    if isinstance(content, str):
        if not content.strip():
            raise InvalidInput(f"{where}: the message's text content is empty")
        return
    if not isinstance(content, list):
        raise InvalidInput(f"{where}: content must be a string or a list of content parts")
    if not content:
        raise InvalidInput(f"{where}: the message's content is an empty list")
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise InvalidInput(f"{where}: content part {i} is not an object")
        if part.get("type") in _TEXT_PARTS or ("type" not in part and "text" in part):
            text = part.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"{where}: content part {i} has empty text")


def encode_item(value: Any, max_bytes: int = MAX_ITEM_BYTES, where: str = "item") -> bytes:
    """The stored bytes of one item: a strict-JSON object, a valid message if it has a role, at most
    ``max_bytes`` encoded. InvalidInput otherwise."""
    from .codec import encode_value

    if not isinstance(value, dict):
        raise InvalidInput(f"{where} is not a JSON object (got {type(value).__name__})")
    _check_message(value, where)
    try:
        data = encode_value(value)
    except InvalidInput as e:
        raise InvalidInput(f"{where}: {e.message}", hint=e.hint) from None
    if len(data) > max_bytes:
        raise InvalidInput(f"{where} is {len(data)} bytes encoded, over the limit of {max_bytes}",
                           hint="split it, or raise max_item_bytes")
    return data


def _title_from(items: list[dict[str, Any]]) -> str | None:
    """The first user message's text cut at TITLE_CHARS (NUL characters dropped: no backend stores them)."""
    for item in items:
        if item.get("role") == "user":
            text = _text_of(item.get("content"))
            if text and "\x00" in text:
                text = text.replace("\x00", "")
            if text and text.strip():
                return text[:TITLE_CHARS]
    return None


def _check_title(title: Any) -> str | None:
    if title is not None and not isinstance(title, str):
        raise InvalidInput(f"title must be a string (got {type(title).__name__})")
    if title is not None and "\x00" in title:
        raise InvalidInput("title must not contain NUL characters")
    return title


def _check_seq(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidInput(f"{what} {value!r} is not valid", hint=f"{what} is an integer >= 0")
    return value


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found", hint="see `agentstate sessions list`",
                    session_id=session_id)


# -- the store ---------------------------------------------------------------------------------------------


class SessionStore(FleetMixin):
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
        from .sessions_where import check_ttl, env_ttl
        from .sql import is_url
        from .store import default_dir

        self.tenant = check_tenant(tenant)
        if path is None:
            path = os.environ.get("AGENTSTATE_URL") or default_dir()
        self.target = path if is_url(path) else os.fspath(path)
        if type(max_item_bytes) is not int or max_item_bytes < 1:
            raise InvalidInput(f"max_item_bytes {max_item_bytes!r} is not a positive integer")
        self.max_item_bytes = max_item_bytes
        self.lock_timeout = lock_timeout
        self.default_ttl = env_ttl() if default_ttl is None else check_ttl(default_ttl, "default_ttl")
        self._db: Any = None
        self._hot: Any = None
        cache = os.environ.get("AGENTSTATE_CACHE") or None if cache is None else cache
        if cache:
            from .cache import HotTier

            self._hot = HotTier(cache, self, hot_ttl=hot_ttl, hot_items=hot_items)

    def __repr__(self) -> str:
        return f"SessionStore({shown(self.target)!r}, tenant={self.tenant!r})"

    @property
    def db(self) -> Any:
        if self._db is None:
            from .sql import open_database

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
        import orjson

        sid, title, metadata, created_at, updated_at, item_count, _last, expires = row[:8]
        return SessionInfo(sid, self.tenant, title, None if metadata is None else orjson.loads(metadata),
                           created_at, updated_at, int(item_count), expires)

    @staticmethod
    def _items(rows: Iterable[tuple]) -> list[Item]:
        import orjson

        return [Item(int(seq), iid, created_at, orjson.loads(data)) for seq, iid, created_at, data in rows]

    def _encode_all(self, items: Any) -> tuple[list[dict[str, Any]], list[bytes]]:
        if isinstance(items, dict):
            items = [items]
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise InvalidInput(f"items must be a list of JSON objects (got {type(items).__name__})")
        items = list(items)
        encoded = [encode_item(it, self.max_item_bytes, f"item {i + 1}") for i, it in enumerate(items)]
        return items, encoded

    # -- writing ------------------------------------------------------------------------------------------

    def create(self, session_id: str | None = None, title: str | None = None,
               metadata: dict[str, Any] | None = None, *, ttl: float | str | None = None) -> SessionInfo:
        """A new empty session (a UUID unless ``session_id`` is given); an existing id is ConflictError.
        ``ttl`` ("7d", "12h", seconds): the session expires that long after its last append."""
        from .sessions_where import expires_at

        sid = str(uuid.uuid4()) if session_id is None else check_name(session_id, "session id")
        _check_title(title)
        meta = _meta_text(metadata)
        seconds = self._ttl(ttl)
        with self._write(sid, "sessions create") as tx:
            now = _utcnow()
            expires = expires_at(now, seconds)
            if self._live_or_removed(tx, sid, now) is not None:
                raise ConflictError(f"session {sid!r} already exists", session_id=sid)
            self._insert(tx, sid, title, meta, now, expires)
        return SessionInfo(sid, self.tenant, title, metadata, now, now, 0, expires)

    def append(self, session_id: str, items: Any, *, expect_seq: int | None = None,
               idempotency_key: str | None = None, create: bool = True,
               ttl: float | str | None = None) -> list[Item]:
        """Append ``items`` (JSON objects) in one transaction; returns them as stored.

        A missing session is created unless ``create=False`` (NotFound). ``expect_seq=N`` appends only if
        the session's last seq is N (else ConflictError). A repeated ``idempotency_key`` returns the items
        of the first append and stores nothing. ``ttl`` (or the store's default_ttl) sets the session to
        expire that long from now (an expired session is gone: this append starts a new one)."""
        sid = check_name(session_id, "session id")
        seconds = self._ttl(ttl)
        datas, encoded = self._encode_all(items)
        if expect_seq is not None:
            _check_seq(expect_seq, "expect_seq")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 256 or "\x00" in idempotency_key
        ):
            raise InvalidInput("idempotency_key must be a string of 1 to 256 characters (no NUL)")
        now = _utcnow()
        records = [(str(uuid.uuid4()), now, data.decode()) for data in encoded]
        return self._append(sid, records, datas, expect_seq=expect_seq, key=idempotency_key, create=create,
                            title=_title_from(datas), now=now, ttl=seconds)

    def _append(self, sid: str, records: list[tuple[str, str, str]], datas: list[dict[str, Any]], *,
                expect_seq: int | None, key: str | None, create: bool, title: str | None, now: str,
                new_session: tuple[str | None, str | None, str] | None = None,
                ttl: float | None = None) -> list[Item]:
        """The one write behind append and import. ``records`` = (item id, created_at, data text)."""
        import orjson

        from .sessions_where import expires_at
        from .sql import q_sessions as q

        operation = "sessions import" if new_session else "sessions append"
        with self._write(sid, operation) as tx:
            row = self._live_or_removed(tx, sid, now)
            if new_session is not None:
                if row is not None:
                    raise ConflictError(f"session {sid!r} already exists", hint="import it with --id NEW_ID",
                                        session_id=sid)
                ititle, imeta, icreated = new_session
                self._insert(tx, sid, ititle, imeta, icreated)
                last = 0
            elif row is None:
                if not create:
                    raise _not_found(sid)
                if expect_seq not in (None, 0):
                    raise ConflictError(f"session {sid!r} does not exist yet (last seq 0), expected seq {expect_seq}",
                                        hint="re-read the session and retry", last_seq=0)
                self._insert(tx, sid, None, None, now)
                last = 0
            else:
                last = int(row[6])
                if key is not None:
                    seen = tx.one(q.GET_APPEND_KEY, tenant=self.tenant, session_id=sid, key=key)
                    if seen is not None:
                        return self._replay(tx, sid, int(seen[0]), orjson.loads(seen[1]))
                if expect_seq is not None and expect_seq != last:
                    raise ConflictError(f"session {sid!r} is at seq {last}, expected {expect_seq}",
                                        hint="another writer appended first; re-read the session and retry",
                                        last_seq=last)
            if records:
                tx.many(q.INSERT_ITEM, [
                    {"tenant": self.tenant, "session_id": sid, "seq": last + i, "id": iid, "now": created,
                     "data": data}
                    for i, (iid, created, data) in enumerate(records, 1)
                ])
            if records or row is None:
                tx.run(q.UPDATE_SESSION_SEQ, tenant=self.tenant, id=sid, last_seq=last + len(records), now=now,
                       title=title)
                tx.run(q.TOUCH_TAGS, tenant=self.tenant, session_id=sid, now=now)
            if ttl is not None:
                expires = expires_at(now, ttl)
                tx.run(q.SET_EXPIRES, tenant=self.tenant, id=sid, expires_at=expires)
                tx.run(q.SET_TAGS_EXPIRES, tenant=self.tenant, session_id=sid, expires_at=expires)
            if key is not None:
                tx.run(q.INSERT_APPEND_KEY, tenant=self.tenant, session_id=sid, key=key, first_seq=last + 1,
                       item_ids=orjson.dumps([r[0] for r in records]).decode(), now=now)
        return [Item(last + i, iid, created, data)
                for i, ((iid, created, _), data) in enumerate(zip(records, datas, strict=True), 1)]

    def _replay(self, tx: Any, sid: str, first_seq: int, ids: list[str]) -> list[Item]:
        """The items an earlier append with the same key stored (those still there)."""
        from .sql import q_sessions as q

        if not ids:
            return []
        rows = tx.run(q.ITEMS_RANGE, tenant=self.tenant, session_id=sid, first=first_seq,
                      last=first_seq + len(ids) - 1)
        return [it for it in self._items(rows) if it.id == ids[it.seq - first_seq]]

    def pop(self, session_id: str) -> Item | None:
        """Remove and return the last item (its seq is free again), or None when the session is empty."""
        from .sql import q_sessions as q

        sid = check_name(session_id, "session id")
        with self._write(sid, "sessions pop") as tx:
            now = _utcnow()
            last = int(self._row(tx, sid, now)[6])
            if last == 0:
                return None
            rows = tx.run(q.GET_ITEM, tenant=self.tenant, session_id=sid, seq=last)
            tx.run(q.DELETE_ITEM, tenant=self.tenant, session_id=sid, seq=last)
            tx.run(q.UPDATE_SESSION_SEQ, tenant=self.tenant, id=sid, last_seq=last - 1, now=now, title=None)
            tx.run(q.TOUCH_TAGS, tenant=self.tenant, session_id=sid, now=now)
        return self._items(rows)[0]

    def delete(self, session_id: str) -> None:
        """Delete the session and all its items in one transaction (NotFound if it does not exist)."""
        from .sql import q_sessions as q

        sid = check_name(session_id, "session id")
        with self._write(sid, "sessions delete") as tx:
            self._row(tx, sid)  # an expired session is not there to delete (prune removes it)
            if tx.execute(q.DELETE_SESSION, tenant=self.tenant, id=sid) == 0:
                raise _not_found(sid)
            tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=-1)

    def prune(self, older_than: float | int | str | None = None) -> list[str]:
        """Delete whole sessions that have expired, and those not updated for ``older_than`` (seconds, or
        "30d", "12h"...) when given; their ids."""
        from .duration import parse_duration
        from .sql import q_sessions as q

        cutoff = ""  # no session is older than that: expired ones only
        if older_than is not None:
            seconds = parse_duration(older_than, "age")
            try:
                cutoff = _iso(datetime.now(UTC) - timedelta(seconds=seconds))
            except (OverflowError, ValueError):  # older than any representable time: nothing is that old
                cutoff = ""
        with self.db.write("sessions prune", self.lock_timeout) as tx:
            ids = [r[0] for r in tx.run(q.STALE_SESSIONS, tenant=self.tenant, cutoff=cutoff, now=_utcnow())]
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
        from .sql import q_sessions as q

        now = _utcnow()
        with self.db.read() as tx:
            rows = tx.run(q.ITEMS_AFTER, tenant=self.tenant, session_id=sid, after=after, limit=limit,
                          now=now) if limit else []
            if not rows:  # no items: is there a session at all? (one query less in the common case)
                self._row(tx, sid, now)
            return self._items(rows)

    def context(self, session_id: str, limit: int = 20) -> list[Item]:
        """The last ``limit`` items, oldest first (what a model's context window gets)."""

        sid = check_name(session_id, "session id")
        _check_seq(limit, "limit")
        if self._hot is not None:
            return self._hot.context(sid, limit)
        return self._context(sid, limit)

    def _context(self, sid: str, limit: int) -> list[Item]:
        from .sql import q_sessions as q

        now = _utcnow()
        with self.db.read() as tx:
            rows = tx.run(q.LAST_ITEMS, tenant=self.tenant, session_id=sid, limit=limit, now=now) if limit else []
            if not rows:  # no items: is there a session at all? (one query less in the common case)
                self._row(tx, sid, now)
        rows.reverse()
        return self._items(rows)

    def show(self, session_id: str, last: int | None = None) -> tuple[SessionInfo, list[Item]]:
        """The session and its items (all, or the last ``last``), from one snapshot."""
        sid = check_name(session_id, "session id")
        if last is not None:
            _check_seq(last, "last")
            if self._hot is not None:
                return self._hot.show(sid, last)
        return self._show(sid, last)

    def _show(self, sid: str, last: int | None) -> tuple[SessionInfo, list[Item]]:
        from .sql import q_sessions as q

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
        return info, self._items(rows)

    def list(self, limit: int = 50, cursor: str | None = None,
             where: dict[str, Any] | None = None) -> Page[SessionInfo]:
        """Sessions most recently updated first; with ``where`` ({"agent_id": "a1", ...}: top-level metadata
        values, all must match) only the matching ones, through an index. Paging with ``next_cursor``
        never repeats or skips a session that did not change meanwhile; ``total`` counts the matches."""
        from .sessions_where import check_where
        from .sql import q_sessions as q

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
        then one {"seq", "id", "created_at", "data"} line per item, oldest first (one snapshot)."""
        import orjson

        info, items = self.show(session_id)
        yield orjson.dumps({"type": EXPORT_TYPE, "version": 1, "session": info.to_dict()}) + b"\n"
        for item in items:
            yield orjson.dumps(item.to_dict()) + b"\n"

    def import_lines(self, lines: Iterable[bytes | str], session_id: str | None = None) -> SessionInfo:
        """A new session from exported JSON lines (or from lines that are each one item), in one
        transaction. The id is ``session_id``, else the exported one, else a new UUID; an existing id is
        ConflictError. Titles, metadata and item ids and times are kept."""
        from .codec import encode_value, parse_json

        header: dict[str, Any] | None = None
        records: list[tuple[str, str, str]] = []
        datas: list[dict[str, Any]] = []
        now = _utcnow()
        for n, line in enumerate(lines, 1):
            if isinstance(line, bytes) and not line.strip() or isinstance(line, str) and not line.strip():
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
                    iid = str(uuid.uuid4())
                if not isinstance(created, str) or not _is_timestamp(created):
                    created = now
            else:
                data, iid, created = value, str(uuid.uuid4()), now
            records.append((iid, created, encode_item(data, self.max_item_bytes, f"line {n}").decode()))
            datas.append(data)
        if header is None and not records:
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
            created_at = now
        meta_text = None if meta is None else encode_value(meta).decode()
        title = title if title is not None else _title_from(datas)
        self._append(sid, records, datas, expect_seq=None, key=None, create=True, title=None, now=now,
                     new_session=(title, meta_text, created_at))
        return self.get(sid)


def _is_timestamp(value: str) -> bool:
    """An ISO timestamp as agentstate writes them (UTC, microseconds, 'Z'), so text order is time order."""
    if len(value) != 27 or not value.endswith("Z"):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True

