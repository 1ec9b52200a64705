"""The Redis hot tier in front of a session store (``SessionStore(..., cache="redis://HOST:PORT/DB")``).

The durable store (a directory or PostgreSQL) stays the source of truth: every write commits there
first. Redis holds, per hot session, its info and its last ``hot_items`` items, for ``hot_ttl`` after
the last use. ``get``, ``context`` and ``items`` of the tail are answered by Redis alone when the
session is hot; a miss reads the durable store and promotes.

A read never misses an acknowledged append, whatever dies or races (scripts.py has the Lua):

* every write, once it holds the store's writer lock and before its commit, takes a lease (a token
  in the session's lease set, ending ``LEASE_MS`` later) and bumps the session's generation, which
  invalidates the entry; after the commit (and after a failed write) it bumps the generation again and
  drops its lease, and only then returns. A read is a hit only on an entry built at the current
  generation; otherwise it reads the durable store.
* a promotion notes the generation (refused while a lease is live), reads the durable store, and
  installs only if the generation is unchanged and no lease is live: a writer that committed after the
  promotion's read bumped the generation before its commit, so the stale read cannot be installed; one
  that committed before it is in the read.
* a writer killed between its commit and its second bump leaves its lease, under which nothing is
  promoted, so every reader goes to the durable store until it ends (``LEASE_MS``): an item it
  committed without acknowledging is not hidden beyond that.
* the entry is its own key, stamped with the generation it was built at; a hit is plain commands in
  one round trip (the entry, the generation, the TTLs refreshed, the read counted) and is valid only if
  the stamps agree. Every bump also deletes the entry. A lost generation (FLUSHALL, a restart, eviction)
  restarts at a random value: an entry never matches a generation it was not built at.

Redis down, slow or flushed: each call has a short socket timeout; a failure logs one warning per
outage and the call goes to the durable store; for ``RETRY_S`` after a failure no read tries Redis (a
write's fence always does: skipping it would leave other processes an entry without the write). A
write never fails because of the cache. A write whose fence could not reach Redis remembers the session
and invalidates it when Redis answers again. Run the hot tier's Redis without persistence (``save ""``,
``appendonly no``; a restart then starts empty): an entry restored from a snapshot may predate a write
made while Redis was away.

The ``redis`` client (``pip install 'agentstate[cache]'``) is imported only when a cache URL is given.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidInput
from ..logs import getLogger

log = getLogger("agentstate.cache")

LEASE_MS = 2000  # a write in flight keeps readers on the durable store at most this long if its writer dies
TIMEOUT_S = 0.1  # socket (connect, read, write) timeout of one Redis call
RETRY_S = 1.0  # after a failure, Redis is not tried again for this long
MAX_ENTRY_BYTES = 4 << 20  # a bigger window is not cached
SCHEMES = ("redis://", "rediss://", "unix://")

__all__ = ["HotTier", "check_url", "health", "stats"]


def check_url(url: Any) -> str:
    """The cache URL if it is one (redis://, rediss:// or unix://), else InvalidInput."""
    if not isinstance(url, str) or not url.lower().startswith(SCHEMES):
        raise InvalidInput(f"cache URL {url!r} is not redis://HOST:PORT/DB, rediss://... or unix:///PATH?db=N")
    return url


def _client(url: str) -> Any:
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise InvalidInput("a cache URL needs the redis client",
                           hint="install it with: pip install 'agentstate[cache]'") from None
    return redis.Redis.from_url(check_url(url), socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)


def store_key(target: str) -> str:
    """A short name of the durable store in key names: every process must name the store the same way
    (a directory by its real path; a URL by its host, port, database and schema)."""
    from ..names import is_url

    if is_url(target):
        from urllib.parse import urlsplit

        from ..sql.pg_conn import split_url

        dsn, schema = split_url(target)
        u = urlsplit(dsn)
        ident = f"pg|{(u.hostname or '').lower()}|{u.port or 5432}|{u.path.lstrip('/')}|{schema}"
    else:
        ident = "dir|" + os.path.realpath(target)
    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _init() -> str:
    """A fresh generation: random, so a counter recreated after a loss never repeats an old value."""
    return str(secrets.randbits(52))


class HotTier:
    """One SessionStore's view of the cache (thread-safe: the redis client pools connections)."""

    def __init__(self, url: str, store: Any, *, hot_ttl: float | str = "10m", hot_items: int = 50) -> None:
        from ..duration import parse_duration

        self.url = check_url(url)
        seconds = parse_duration(hot_ttl, "hot_ttl")
        if seconds < 0.001:
            raise InvalidInput(f"invalid hot_ttl {hot_ttl!r}: must be at least 1ms")
        if type(hot_items) is not int or not 1 <= hot_items <= 10_000:
            raise InvalidInput(f"hot_items {hot_items!r} is not an integer from 1 to 10000")
        self.hot_ttl_ms = int(seconds * 1000)
        self.hot_items = hot_items
        self.store = store
        self.prefix = f"agentstate:{store_key(store.target)}:{store.tenant.encode().hex()}:"
        self.redis = _client(url)
        from . import scripts

        self._begin = self.redis.register_script(scripts.BEGIN_PROMOTE)
        self._install = self.redis.register_script(scripts.INSTALL)
        self._fence_begin = self.redis.register_script(scripts.FENCE_BEGIN)
        self._fence_end = self.redis.register_script(scripts.FENCE_END)
        self._invalidate = self.redis.register_script(scripts.INVALIDATE)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False
        self._pending: set[str] = set()  # sessions written while Redis was away: invalidate on its return

    def __repr__(self) -> str:
        return f"HotTier({self.url!r}, hot_ttl_ms={self.hot_ttl_ms}, hot_items={self.hot_items})"

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001 - closing never fails a caller
            pass

    # -- keys and calls -----------------------------------------------------------------------------------

    def _keys(self, sid: str) -> list[str]:
        """The session's generation hash, lease set and entry, and the tenant's counters."""
        p = self.prefix
        return [f"{p}s:{sid}", f"{p}l:{sid}", f"{p}e:{sid}", f"{p}stats"]

    def _pairs(self, sids: Iterable[str]) -> list[str]:
        """INVALIDATE's keys: each session's generation hash and entry."""
        return [k for sid in sids for k in (f"{self.prefix}s:{sid}", f"{self.prefix}e:{sid}")]

    def _call(self, fn: Any, *args: Any, writing: bool = False, **kwargs: Any) -> Any:
        """``fn(...)`` against Redis, or _AWAY if Redis is away: failing now, or (for a read) failed less than
        RETRY_S ago. A write's fence always tries (one short timeout): skipping it while Redis answers
        other processes would leave them an entry without this write."""
        if self._down and not writing and time.monotonic() < self._down_until:
            return _AWAY
        try:
            if self._pending:
                self._flush_pending()
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any Redis failure: the durable store answers
            from redis.exceptions import RedisError

            if not isinstance(e, (RedisError, OSError)):
                raise
            with self._lock:
                if not self._down:
                    log.warning("cache %s unavailable (%s: %s): reading and writing the durable store only "
                                "until it answers again", _shown(self.url), type(e).__name__, e)
                self._down = True
                self._down_until = time.monotonic() + RETRY_S
            return _AWAY
        if self._down:
            with self._lock:
                if self._down:
                    log.info("cache %s answers again", _shown(self.url))
                self._down = False
        return result

    def _flush_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        try:
            if pending:
                self._invalidate(keys=self._pairs(pending), args=[_init(), self.hot_ttl_ms])
        except BaseException:
            with self._lock:
                self._pending |= pending
            raise

    # -- writes -------------------------------------------------------------------------------------------

    @contextmanager
    def fence(self, sid: str) -> Iterator[None]:
        """Around one write's durable transaction, entered once the writer holds the lock: the lease and the
        first bump before the body (and so before the commit), the second bump and the lease's end after the
        commit, or after the failure."""
        h, lease, e, _ = self._keys(sid)
        token = secrets.token_hex(8)
        if self._call(self._fence_begin, keys=[h, lease, e], args=[token, LEASE_MS, _init(), self.hot_ttl_ms],
                      writing=True) is _AWAY:
            self._remember(sid)
        try:
            yield
        finally:
            from ..state import signals

            with signals.critical(outcome=None):  # a SIGINT/SIGTERM waits for the second bump (one short call)
                if self._call(self._fence_end, keys=[h, lease, e], args=[token, _init(), self.hot_ttl_ms],
                              writing=True) is _AWAY:
                    self._remember(sid)

    def _remember(self, sid: str) -> None:
        with self._lock:
            self._pending.add(sid)

    def invalidate(self, sids: list[str]) -> None:
        """After a write that removed sessions (prune)."""
        if sids and self._call(self._invalidate, keys=self._pairs(sids),
                               args=[_init(), self.hot_ttl_ms], writing=True) is _AWAY:
            for sid in sids:
                self._remember(sid)

    # -- reads --------------------------------------------------------------------------------------------

    def _fetch(self, sid: str) -> bytes | None:
        """One round trip of plain commands, sent as one packed write on a pooled connection (the client's
        pipeline object costs about as much again as the round trip): the entry and the generation, both
        TTLs refreshed, the tenant's read counted. The entry if it was built at the current generation, else
        None. No lease check is needed: a write bumps the generation as it takes its lease, and nothing
        installs while a lease lives, so an entry built at the current generation was built after the last
        write began and its lease ended, or before none."""
        h, _, e, stats = (k.encode("utf-8", "surrogateescape") for k in self._keys(sid))
        ttl = b"%d" % self.hot_ttl_ms
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([_pack((b"GETEX", e, b"PX", ttl), (b"HGET", h, b"gen"), (b"PEXPIRE", h, ttl),
                                            (b"HINCRBY", stats, b"reads", b"1"))])
            got = conn.read_response()
            gen = conn.read_response()
            conn.read_response()
            conn.read_response()
        except BaseException:
            conn.disconnect()  # a reply may be left unread: this connection is not reused as it is
            raise
        finally:
            pool.release(conn)
        if got is None or gen is None or not got.startswith(gen + b" "):
            return None
        return got[len(gen) + 1:]

    def _hot(self, sid: str, kind: str, param: int) -> Any:
        """The entry (info row, item rows) on a hit; else MISS (promote), DURABLE (read the durable store)."""
        got = self._call(self._fetch, sid)
        if got is _AWAY:
            return _DURABLE
        if got is None:
            return _MISS  # counted by BEGIN_PROMOTE
        head = got.index(b"\n")
        n, count = got[:head].split()
        if not _covers_counts(kind, param, int(n), int(count)):
            self._call(self.redis.hincrby, self._keys(sid)[3], "misses", 1)
            return _DURABLE
        import orjson

        entry = orjson.loads(memoryview(got)[head + 1:])
        return entry["row"], entry["items"]

    def _promote(self, sid: str) -> tuple[list, list] | None:
        """Read the durable store (info and window) and install it unless a write began meanwhile; the rows
        read, or None when Redis is away or a write is in flight (read the durable store instead)."""
        import orjson

        from ..sql import q_sessions as q

        h, lease, e, stats = self._keys(sid)
        gen = self._call(self._begin, keys=[h, lease, stats], args=[_init(), self.hot_ttl_ms])
        if gen is _AWAY or gen is None:
            return None
        store = self.store
        now = _now()
        with store.db.read() as tx:
            row = list(store._row(tx, sid, now))
            items = tx.run(q.LAST_ITEMS, tenant=store.tenant, session_id=sid, limit=self.hot_items, now=now)
        # The item's stored JSON goes in as it is (no second encoding), so a hit parses the entry once.
        entry = b"".join((b'{"row":', orjson.dumps(row), b',"items":[', b",".join(
            b"[%d,%s,%s,%s]" % (seq, orjson.dumps(iid), orjson.dumps(created), data.encode())
            for seq, iid, created, data in reversed(items)), b"]}"))
        if len(entry) <= MAX_ENTRY_BYTES:
            self._call(self._install, keys=[h, lease, stats, e],
                       args=[gen, b"%s %d %d\n%s" % (gen, len(items), int(row[5]), entry), self.hot_ttl_ms])
        got = orjson.loads(entry)
        return got["row"], got["items"]

    def _entry(self, sid: str, kind: str, param: int) -> tuple[list, list] | None:
        got = self._hot(sid, kind, param)
        if got is _MISS:
            got = self._promote(sid)
            if got is not None and not _covers(got, kind, param):
                return None
        if got is _DURABLE or got is None:
            return None
        row = got[0]
        from ..sessions.where import is_expired

        if is_expired(row[8], _now()):
            from ..sessions.store import _not_found

            raise _not_found(sid)
        return got

    def get(self, sid: str) -> Any:
        got = self._entry(sid, "g", 0)
        return self.store._get(sid) if got is None else self.store._info(tuple(got[0]))

    def context(self, sid: str, limit: int) -> list[Any]:
        got = self._entry(sid, "c", limit)
        if got is None:
            return self.store._context(sid, limit)
        return _items(got[1][-limit:] if limit else [])

    def show(self, sid: str, last: int) -> tuple[Any, list[Any]]:
        got = self._entry(sid, "c", last)
        if got is None:
            return self.store._show(sid, last)
        return self.store._info(tuple(got[0])), _items(got[1][-last:] if last else [])

    def items(self, sid: str, after: int, limit: int) -> list[Any]:
        got = self._entry(sid, "i", after)
        if got is None:
            return self.store._items_after(sid, after, limit)
        return _items([r for r in got[1] if r[0] > after][:limit])


def _pack(*commands: tuple[bytes, ...]) -> bytes:
    """Commands in RESP (arrays of bulk strings), for one write: the client's packer costs a hit more than
    the round trip does."""
    out = []
    for cmd in commands:
        out.append(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _items(rows: list[list]) -> list[Any]:
    from ..sessions import Item

    return [Item(seq, iid, created, data) for seq, iid, created, data in rows]


def _covers(got: tuple[list, list], kind: str, param: int) -> bool:
    return _covers_counts(kind, param, len(got[1]), int(got[0][5]))


def _covers_counts(kind: str, param: int, n: int, count: int) -> bool:
    """Whether a window of the last ``n`` of ``count`` items answers the read: context(param), items after
    seq ``param``, or get."""
    if kind == "c":
        return param <= n or n >= count
    if kind == "i":
        return param >= count - n
    return True


def _now() -> str:
    from ..sessions.store import _utcnow

    return _utcnow()


def _shown(url: str) -> str:
    from ..names import redact_url

    return redact_url(url) if "@" in url else url


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_AWAY, _MISS, _DURABLE = _Marker("AWAY"), _Marker("MISS"), _Marker("DURABLE")


# -- health and stats (doctor, `sessions cache stats`) ----------------------------------------------------------


def health(url: str) -> dict[str, Any]:
    """Doctor's finding for a cache URL: reachable, its version, round trip, memory and persistence."""
    try:
        client = _client(url)
    except InvalidInput as e:
        return {"check": "cache", "ok": False, "detail": str(e)}
    try:
        t0 = time.perf_counter()
        client.ping()
        rtt = time.perf_counter() - t0
        info = client.info()
        try:
            conf = {**client.config_get("save"), **client.config_get("appendonly")}
        except Exception:  # noqa: BLE001 - CONFIG may be disabled (managed Redis): persistence unknown
            conf = {}
    except Exception as e:  # noqa: BLE001 - reported, never raised
        return {"check": "cache", "ok": False, "url": _shown(url),
                "detail": f"{_shown(url)} does not answer: {type(e).__name__}: {e}"}
    finally:
        client.close()
    detail = (f"{_shown(url)}: redis {info.get('redis_version')}, ping {rtt * 1e3:.2f} ms, "
              f"{info.get('used_memory_human')} used, maxmemory-policy {info.get('maxmemory_policy')}")
    if conf.get("save") or conf.get("appendonly") == "yes":
        detail += "; persistence is on (run the hot tier without it: a restored snapshot may be stale)"
    return {"check": "cache", "ok": True, "url": _shown(url), "detail": detail,
            "redis_version": info.get("redis_version"), "ping_ms": round(rtt * 1e3, 3)}


def stats(url: str, target: str) -> list[dict[str, Any]]:
    """Per tenant of the store: hits, misses, promotions and cached session keys."""
    client = _client(url)
    base = f"agentstate:{store_key(target)}:"
    try:
        out: dict[str, dict[str, Any]] = {}
        for key in client.scan_iter(match=base + "*", count=1000):
            rest = key.decode("utf-8", "surrogateescape")[len(base):]
            tenant_hex, _, kind = rest.partition(":")
            try:
                tenant = bytes.fromhex(tenant_hex).decode()
            except ValueError:
                continue
            row = out.setdefault(tenant, {"tenant": tenant, "hits": 0, "misses": 0, "promotions": 0, "keys": 0})
            if kind == "stats":
                counts = {k.decode(): int(v) for k, v in client.hgetall(key).items()}
                row["misses"], row["promotions"] = counts.get("misses", 0), counts.get("promotions", 0)
                row["hits"] = max(0, counts.get("reads", 0) - row["misses"])
            elif kind.startswith("e:"):  # a session with a cached entry
                row["keys"] += 1
        for row in out.values():
            reads = row["hits"] + row["misses"]
            row["hit_rate"] = round(row["hits"] / reads, 4) if reads else None
        return sorted(out.values(), key=lambda r: r["tenant"])
    finally:
        client.close()
