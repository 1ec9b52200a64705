"""Sessions for a fleet: time to live, and sessions found by their metadata (``list(where=...)``).

A session's metadata stays one JSON object. Each top-level value that is a string, a number or a
boolean is also a row of ``session_tags`` (schema version 2), encoded by :func:`tag_value` so that one
text comparison is an exact typed match: ``"s:web"``, ``"n:42"``, ``"n:1.5"``, ``"b:true"``. Numbers
compare by value (``1`` and ``1.0`` are the same number); a string never equals a number or a boolean.
Nested values, lists and null are kept in the metadata but are not filterable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import InvalidInput
from ..names import short_repr
from ..sql import q_sessions as q

MAX_WHERE = 8  # conditions in one list(where=...): each is one join
MAX_TAG_VALUE = 1024  # characters of a filterable string value (longer ones are kept but not indexed)
TTL_ENV = "AGENTSTATE_SESSION_TTL"


def tag_value(value: Any) -> str | None:
    """The session_tags text of a filterable value, or None (not filterable)."""
    if isinstance(value, bool):
        return "b:true" if value else "b:false"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**63:
            return f"n:{int(value)}"
        return f"n:{value!r}"
    if isinstance(value, str):
        return f"s:{value}" if len(value) <= MAX_TAG_VALUE and "\x00" not in value else None
    return None


def tags_of(metadata: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(key, tag value) of every filterable top-level value of a metadata object."""
    if not metadata:
        return []
    out = []
    for key, value in metadata.items():
        tagged = tag_value(value)
        if tagged is not None and isinstance(key, str) and key and len(key) <= 256 and "\x00" not in key:
            out.append((key, tagged))
    return out


def check_where(where: Any) -> list[tuple[str, str]]:
    """(key, tag value) of a ``where`` mapping; InvalidInput for anything that cannot match a tag."""
    if not isinstance(where, dict):
        raise InvalidInput(f"where must be a mapping of metadata keys to values (got {type(where).__name__})")
    if not where:
        raise InvalidInput("where has no conditions", hint="leave it out to list every session")
    if len(where) > MAX_WHERE:
        raise InvalidInput(f"where has {len(where)} conditions, over the limit of {MAX_WHERE}")
    out = []
    for key, value in where.items():
        if not isinstance(key, str) or not key or len(key) > 256 or "\x00" in key:
            raise InvalidInput(f"where key {short_repr(key)} is not a metadata key (1 to 256 characters, no NUL)")
        tagged = tag_value(value)
        if tagged is None:
            raise InvalidInput(
                f"where[{short_repr(key)}] = {short_repr(value)} cannot be matched",
                hint="filterable values are top-level strings (up to 1024 characters), finite numbers and booleans",
            )
        out.append((key, tagged))
    return out


def parse_where(conditions: list[str]) -> dict[str, Any]:
    """The CLI's ``--where KEY=VALUE`` (VALUE a string) and ``--where KEY:=JSON`` (a number, boolean or
    string as JSON) into a ``where`` mapping. InvalidInput for a malformed condition."""
    from ..state.codec import parse_json

    where: dict[str, Any] = {}
    for cond in conditions:
        at = cond.find("=")
        typed = at > 0 and cond[at - 1] == ":"
        key, raw = (cond[: at - 1], cond[at + 1:]) if typed else (cond[:at], cond[at + 1:])
        if at < 0 or not key:
            raise InvalidInput(f"--where {short_repr(cond)} is not KEY=VALUE (or KEY:=JSON for a number or boolean)")
        value: Any = parse_json(raw, f"--where {key}") if typed else raw
        if key in where and where[key] != value:
            raise InvalidInput(f"--where gives {key!r} twice with different values: no session can match")
        where[key] = value
    return where


def check_ttl(ttl: Any, what: str = "ttl") -> float | None:
    """Seconds of a time to live (``"7d"``, ``"12h"``, seconds), None for none; it must be > 0."""
    if ttl is None:
        return None
    from ..duration import parse_duration

    seconds = parse_duration(ttl, what)
    if seconds <= 0:
        raise InvalidInput(f"invalid {what} {ttl!r}: a time to live must be more than 0 seconds")
    return seconds


def env_ttl() -> float | None:
    """The store-wide default TTL from AGENTSTATE_SESSION_TTL (unset or empty: none)."""
    value = os.environ.get(TTL_ENV)
    if not value:
        return None
    return check_ttl(value, TTL_ENV)


def expires_at(now: str, ttl: float | None) -> str | None:
    """``now`` (an agentstate timestamp) plus ``ttl`` seconds, as a timestamp; None when no ttl. A TTL
    past the representable future means never."""
    if ttl is None:
        return None
    start = datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    try:
        return (start + timedelta(seconds=ttl)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    except (OverflowError, ValueError):
        return None


def is_expired(expires: str | None, now: str) -> bool:
    return expires is not None and expires <= now


def _meta_text(metadata: Any) -> str | None:
    from ..state.codec import encode_value

    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a JSON object (got {type(metadata).__name__})")
    return None if metadata is None else encode_value(metadata).decode()


def _now() -> str:
    from . import store

    return store._utcnow()  # looked up at each call: one clock for the store (tests replace it)


class FleetMixin:
    """SessionStore's expiry, metadata index and hot-tier fence (agentstate.sessions)."""

    tenant: str
    lock_timeout: Any
    default_ttl: float | None
    _hot: Any
    db: Any
    _info: Any

    @property
    def hot(self) -> Any:
        """The Redis hot tier (agentstate.cache.HotTier), or None without a cache URL."""
        return self._hot

    def _live_or_removed(self, tx: Any, sid: str, now: str) -> tuple | None:
        """In a write: the session's row, or None; an expired one is removed here (the write noticed it)."""
        row = tx.one(q.GET_SESSION, tenant=self.tenant, id=sid)
        if row is not None and row[8] is not None and row[8] <= now:  # is_expired
            tx.run(q.DELETE_SESSION, tenant=self.tenant, id=sid)
            tx.run(q.ADD_SESSIONS, tenant=self.tenant, delta=-1)
            return None
        return row

    def _set_tags(self, tx: Any, sid: str, metadata: str | None, updated_at: str, expires: str | None,
                  fresh: bool = False) -> None:
        import orjson

        if not fresh:
            tx.run(q.DELETE_TAGS, tenant=self.tenant, session_id=sid)
        tags = tags_of(None if metadata is None else orjson.loads(metadata))
        if tags:
            tx.many(q.INSERT_TAG, [{"tenant": self.tenant, "session_id": sid, "key": k, "value": v,
                                    "now": updated_at, "expires_at": expires} for k, v in tags])

    def _ttl(self, ttl: Any) -> float | None:
        return self.default_ttl if ttl is None else check_ttl(ttl)

    @contextmanager
    def _write(self, operation: str, *sids: str) -> Iterator[Any]:
        """A write transaction: on PostgreSQL holding the locks of sessions ``sids`` only (writers of other
        sessions never wait for it), on SQLite the database's one writer lock; with a hot tier, each of
        ``sids`` is fenced from once the lock is held until after the commit (agentstate.cache)."""
        kw: dict[str, Any] = {}
        if self.db.dialect == "postgres":
            kw["locks"] = [self.db.resource("session", self.tenant, sid) for sid in sids]
        if self._hot is None:
            with self.db.write(operation, self.lock_timeout, **kw) as tx:
                yield tx
            return
        with ExitStack() as after_commit:
            with self.db.write(operation, self.lock_timeout, **kw) as tx:
                for sid in sids:
                    after_commit.enter_context(self._hot.fence(sid))
                yield tx

    def _list_where(self, tx: Any, conds: list[tuple[str, str]], limit: int, after: tuple | None,
                    now: str) -> tuple[list[tuple], int]:
        first, nxt, count = q.where_statements(len(conds))
        params: dict[str, Any] = {"tenant": self.tenant, "now": now}
        for i, (k, v) in enumerate(conds):
            params[f"k{i}"], params[f"v{i}"] = k, v
        total = int(tx.value(count, **params) or 0)
        if after is None:
            return tx.run(first, limit=limit + 1, **params), total
        return tx.run(nxt, limit=limit + 1, updated_at=after[0], id=after[1], **params), total

    def update_metadata(self, session_id: str, metadata: dict[str, Any] | None) -> Any:
        """Replace the session's metadata (None clears it) and its filterable values; NotFound if missing.
        A write like any other: stamped under the lock, and the session gets a new version."""
        from ..names import check_name
        sid = check_name(session_id, "session id")
        meta = _meta_text(metadata)
        with self._write("sessions update", sid) as tx:
            row = self._row(tx, sid, _now())  # type: ignore[attr-defined]
            now = self._now_after(row)  # type: ignore[attr-defined]
            tx.run(q.SET_METADATA, tenant=self.tenant, id=sid, metadata=meta, now=now,
                   version=self._next_version(tx, sid, int(row[7])))  # type: ignore[attr-defined]
            self._set_tags(tx, sid, meta, now, row[8])
            row = self._row(tx, sid, now)  # type: ignore[attr-defined]
        return self._info(row)

