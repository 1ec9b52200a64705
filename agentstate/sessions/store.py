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
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ConflictError, InvalidInput, NotFound
from ..names import check_name, check_tenant, shown
from ..page import Page, check_limit, decode_cursor, encode_cursor

MAX_ITEM_BYTES = 1 << 20
ROLES = ("system", "developer", "user", "assistant", "tool")
TITLE_CHARS = 50
MAX_TITLE_CHARS = 200  # a title given or imported is at most this long (InvalidInput beyond)
MAX_SEQ = 2**63 - 1  # the largest integer both SQL engines store: seqs, limits and expect_seq stay within
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
    version: int = 0  # changes on every write to the session (see append(expect_version=))

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
    from ..state.codec import encode_value

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
    if title is not None and len(title) > MAX_TITLE_CHARS:
        raise InvalidInput(f"title is {len(title)} characters long; at most {MAX_TITLE_CHARS} are allowed")
    return title


def _check_seq(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise InvalidInput(f"{what} {value!r:.40} is not valid", hint=f"{what} is an integer from 0 to {MAX_SEQ}")
    return value


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found", hint="see `agentstate sessions list`",
                    session_id=session_id)


def _damaged(message: str, **details: Any) -> Exception:
    """A stored value that does not decode: corruption by something other than agentstate (exit 4)."""
    from ..errors import StateCorrupted

    return StateCorrupted(message, hint="run `agentstate doctor`; the database was changed by something other than "
                          "agentstate", **details)


# -- the store ---------------------------------------------------------------------------------------------


class SessionStore:
    """The sessions of one tenant in a store (a directory, or a postgresql:// URL)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        tenant: str | None = None,
        lock_timeout: float | str | None = None,
        max_item_bytes: int = MAX_ITEM_BYTES,
    ) -> None:
        from ..names import default_dir
        from ..sql import is_url

        self.tenant = check_tenant(tenant)
        if path is None:
            path = os.environ.get("AGENTSTATE_URL") or default_dir()
        self.target = path if is_url(path) else os.fspath(path)
        if type(max_item_bytes) is not int or max_item_bytes < 1:
            raise InvalidInput(f"max_item_bytes {max_item_bytes!r} is not a positive integer")
        self.max_item_bytes = max_item_bytes
        self.lock_timeout = lock_timeout
        self._db: Any = None

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

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows -> objects ----------------------------------------------------------------------------------

    def _info(self, row: tuple) -> SessionInfo:
        import orjson

        sid, title, metadata, created_at, updated_at, item_count, _last, version = row
        try:
            meta = None if metadata is None else orjson.loads(metadata)
        except orjson.JSONDecodeError as e:
            raise _damaged(f"the stored metadata of session {sid!r} (tenant {self.tenant!r}) is not valid JSON: {e}",
                           tenant=self.tenant, session_id=sid) from None
        return SessionInfo(sid, self.tenant, title, meta, created_at, updated_at, int(item_count), int(version))

    def _items(self, rows: Iterable[tuple], sid: str) -> list[Item]:
        import orjson

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

    def _write(self, operation: str, *sids: str) -> Any:
        """A write transaction: on PostgreSQL holding the locks of sessions ``sids`` only (writers of other
        sessions never wait for it); on SQLite the database's one writer lock."""
        if self.db.dialect == "postgres":
            return self.db.write(operation, self.lock_timeout,
                                 locks=[self.db.resource("session", self.tenant, sid) for sid in sids])
        return self.db.write(operation, self.lock_timeout)

    def _row(self, tx: Any, session_id: str) -> tuple:
        from ..sql import q_sessions as q

        row = tx.one(q.GET_SESSION, tenant=self.tenant, id=session_id)
        if row is None:
            raise _not_found(session_id)
        return row

    def _insert(self, tx: Any, sid: str, title: str | None, metadata: str | None, now: str,
                created_at: str | None = None) -> int:
        """A new session row, counted in session_counts (as every insert must be); its version."""
        from ..sql import q_sessions as q

        tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=1)
        version = self._next_version(tx)
        tx.run(q.INSERT_SESSION, tenant=self.tenant, id=sid, title=title, metadata=metadata, now=now,
               created_at=created_at or now, version=version)
        return version

    def _next_version(self, tx: Any) -> int:
        """The tenant's next session version (its clock only grows, so no session id sees one twice)."""
        from ..sql import q_sessions as q

        return int(tx.value(q.NEXT_VERSION, tenant=self.tenant))

    @staticmethod
    def _now_after(row: tuple | None) -> str:
        """The time a write stamps: now (taken under the lock), never before the session's updated_at."""
        now = _utcnow()
        return now if row is None or row[4] <= now else row[4]

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
               metadata: dict[str, Any] | None = None) -> SessionInfo:
        """A new empty session (a UUID unless ``session_id`` is given); an existing id is ConflictError."""
        from ..sql import q_sessions as q
        from ..state.codec import encode_value

        sid = str(uuid.uuid4()) if session_id is None else check_name(session_id, "session id")
        _check_title(title)
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidInput(f"metadata must be a JSON object (got {type(metadata).__name__})")
        meta = None if metadata is None else encode_value(metadata).decode()
        with self._write("sessions create", sid) as tx:
            if tx.one(q.GET_SESSION, tenant=self.tenant, id=sid) is not None:
                raise ConflictError(f"session {sid!r} already exists", session_id=sid)
            now = _utcnow()
            version = self._insert(tx, sid, title, meta, now)
        return SessionInfo(sid, self.tenant, title, metadata, now, now, 0, version)

    def append(self, session_id: str, items: Any, *, expect_seq: int | None = None,
               expect_version: int | None = None, idempotency_key: str | None = None,
               create: bool = True) -> list[Item]:
        """Append ``items`` (JSON objects) in one transaction; returns them as stored.

        A missing session is created unless ``create=False`` (NotFound). ``expect_seq=N`` appends only if
        the session's last seq is N; ``expect_version=V`` only if the session's version is still V (as
        read in SessionInfo.version; 0: the session does not exist): any write since, a pop included,
        changed it. Else ConflictError. A repeated ``idempotency_key`` returns the items of the first
        append and stores nothing."""
        sid = check_name(session_id, "session id")
        datas, encoded = self._encode_all(items)
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
                            key=idempotency_key, create=create, title=_title_from(datas))

    def _append(self, sid: str, texts: list[str], datas: list[dict[str, Any]], *, expect_seq: int | None,
                expect_version: int | None, key: str | None, create: bool, title: str | None) -> list[Item]:
        """The write behind append: ``texts`` are the items' stored JSON text, ``datas`` the objects."""
        import orjson

        from ..sql import q_sessions as q

        ids = [str(uuid.uuid4()) for _ in texts]
        if self.db.dialect == "postgres":  # one round trip, holding this session's lock only
            from .pg_append import append

            return append(self, sid, ids, texts, datas, expect_seq=expect_seq, expect_version=expect_version,
                          key=key, create=create, title=title)
        with self.db.write("sessions append", self.lock_timeout) as tx:
            row = tx.one(q.GET_SESSION, tenant=self.tenant, id=sid)
            now = self._now_after(row)  # under the lock: after every write this one waited for
            if row is None:
                if not create:
                    raise _not_found(sid)
                if expect_seq not in (None, 0):
                    raise ConflictError(f"session {sid!r} does not exist yet (last seq 0), expected seq {expect_seq}",
                                        hint="re-read the session and retry", last_seq=0)
                if expect_version not in (None, 0):
                    raise ConflictError(f"session {sid!r} does not exist (version 0), expected version "
                                        f"{expect_version}", hint="re-read the session and retry", version=0)
                self._insert(tx, sid, None, None, now)
                last = 0
            else:
                last, version = int(row[6]), int(row[7])
                if key is not None:
                    seen = tx.one(q.GET_APPEND_KEY, tenant=self.tenant, session_id=sid, key=key)
                    if seen is not None:
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
                       title=title, version=self._next_version(tx))
            if key is not None:
                tx.run(q.INSERT_APPEND_KEY, tenant=self.tenant, session_id=sid, key=key, first_seq=last + 1,
                       item_ids=orjson.dumps(ids).decode(), now=now)
        return [Item(last + i, iid, now, data) for i, (iid, data) in enumerate(zip(ids, datas, strict=True), 1)]

    def _replay(self, tx: Any, sid: str, first_seq: int, ids: list[str]) -> list[Item]:
        """The items an earlier append with the same key stored (those still there)."""
        from ..sql import q_sessions as q

        if not ids:
            return []
        rows = tx.run(q.ITEMS_RANGE, tenant=self.tenant, session_id=sid, first=first_seq,
                      last=first_seq + len(ids) - 1)
        return [it for it in self._items(rows, sid) if it.id == ids[it.seq - first_seq]]

    def pop(self, session_id: str) -> Item | None:
        """Remove and return the last item (its seq is free again), or None when the session is empty."""
        from ..sql import q_sessions as q

        sid = check_name(session_id, "session id")
        with self._write("sessions pop", sid) as tx:
            row = self._row(tx, sid)
            last = int(row[6])
            if last == 0:
                return None
            item = self._items(tx.run(q.GET_ITEM, tenant=self.tenant, session_id=sid, seq=last), sid)[0]  # before
            tx.run(q.DELETE_ITEM, tenant=self.tenant, session_id=sid, seq=last)  # a damaged one is refused
            tx.run(q.UPDATE_SESSION_SEQ, tenant=self.tenant, id=sid, last_seq=last - 1, now=self._now_after(row),
                   title=None, version=self._next_version(tx))
        return item

    def delete(self, *session_ids: str) -> list[str]:
        """Delete the sessions and all their items in one transaction, all or nothing: NotFound (and
        nothing deleted) if any does not exist. Returns the ids deleted (each once, in the order given)."""
        from ..sql import q_sessions as q

        if not session_ids:
            raise InvalidInput("delete needs at least one session id")
        sids = list(dict.fromkeys(check_name(s, "session id") for s in session_ids))
        with self._write("sessions delete", *sids) as tx:
            for sid in sids:
                if tx.execute(q.DELETE_SESSION, tenant=self.tenant, id=sid) == 0:
                    raise _not_found(sid)  # rolls back the ones deleted before it
            tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=-len(sids))
        return sids

    def prune(self, older_than: float | int | str, *, dry_run: bool = False) -> list[str]:
        """Delete whole sessions not updated for ``older_than`` (seconds, or "30d", "12h"...); their ids.
        ``dry_run=True``: the ids it would delete now, deleting nothing (no lock taken)."""
        from ..duration import parse_duration
        from ..sql import q_sessions as q

        seconds = parse_duration(older_than, "age")
        try:  # taken before the lock wait: the earlier cutoff spares, never deletes, what was written meanwhile
            cutoff = _iso(datetime.now(UTC) - timedelta(seconds=seconds))
        except (OverflowError, ValueError):  # older than any representable time: nothing is that old
            return []
        if dry_run:
            with self.db.read() as tx:
                return [r[0] for r in tx.run(q.STALE_SESSIONS, tenant=self.tenant, cutoff=cutoff)]
        with self._write("sessions prune") as tx:
            ids = [r[0] for r in tx.run(q.STALE_SESSIONS, tenant=self.tenant, cutoff=cutoff)]
            if ids and tx.dialect == "postgres":  # lock those sessions, then keep the ones still stale
                tx.lock(*[self.db.resource("session", self.tenant, sid) for sid in ids])
                still = {r[0] for r in tx.run(q.STALE_SESSIONS, tenant=self.tenant, cutoff=cutoff)}
                ids = [sid for sid in ids if sid in still]
            for sid in ids:
                tx.run(q.DELETE_SESSION, tenant=self.tenant, id=sid)
            if ids:
                tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=-len(ids))
        return ids

    # -- reading ------------------------------------------------------------------------------------------

    def get(self, session_id: str) -> SessionInfo:
        sid = check_name(session_id, "session id")
        with self.db.read() as tx:
            return self._info(self._row(tx, sid))

    def items(self, session_id: str, limit: int | None = None, after: int | None = None) -> list[Item]:
        """Items oldest first: those after seq ``after`` (default: from the start), at most ``limit``."""
        from ..sql import q_sessions as q

        sid = check_name(session_id, "session id")
        after = 0 if after is None else _check_seq(after, "after")
        limit = _ALL if limit is None else _check_seq(limit, "limit")
        with self.db.read() as tx:
            rows = tx.run(q.ITEMS_AFTER, tenant=self.tenant, session_id=sid, after=after, limit=limit) if limit else []
            if not rows:  # no items: is there a session at all? (one query less in the common case)
                self._row(tx, sid)
            return self._items(rows, sid)

    def context(self, session_id: str, limit: int = 20) -> list[Item]:
        """The last ``limit`` items, oldest first (what a model's context window gets)."""
        from ..sql import q_sessions as q

        sid = check_name(session_id, "session id")
        _check_seq(limit, "limit")
        with self.db.read() as tx:
            rows = tx.run(q.LAST_ITEMS, tenant=self.tenant, session_id=sid, limit=limit) if limit else []
            if not rows:  # no items: is there a session at all? (one query less in the common case)
                self._row(tx, sid)
        rows.reverse()
        return self._items(rows, sid)

    def show(self, session_id: str, last: int | None = None) -> tuple[SessionInfo, list[Item]]:
        """The session and its items (all, or the last ``last``), from one snapshot."""
        from ..sql import q_sessions as q

        sid = check_name(session_id, "session id")
        if last is not None:
            _check_seq(last, "last")
        with self.db.read() as tx:
            info = self._info(self._row(tx, sid))
            if last is None:
                rows = tx.run(q.ITEMS_AFTER, tenant=self.tenant, session_id=sid, after=0, limit=_ALL)
            elif last == 0:
                rows = []
            else:
                rows = tx.run(q.LAST_ITEMS, tenant=self.tenant, session_id=sid, limit=last)
                rows.reverse()
        return info, self._items(rows, sid)

    def list(self, limit: int = 50, cursor: str | None = None) -> Page[SessionInfo]:
        """Sessions most recently updated first. Paging with ``next_cursor`` never repeats or skips a
        session that did not change meanwhile."""
        from ..sql import q_sessions as q

        check_limit(limit)
        with self.db.read() as tx:
            if cursor is None:
                rows = tx.run(q.LIST_FIRST, tenant=self.tenant, limit=limit + 1)
            else:
                updated_at, sid = decode_cursor("sessions", cursor, (str, str))
                rows = tx.run(q.LIST_AFTER, tenant=self.tenant, updated_at=updated_at, id=sid, limit=limit + 1)
            total = int(tx.value(q.COUNT_SESSIONS, tenant=self.tenant) or 0)
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


def _is_timestamp(value: str) -> bool:
    """An ISO timestamp as agentstate writes them (UTC, microseconds, 'Z'), so text order is time order."""
    if len(value) != 27 or not value.endswith("Z"):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True

