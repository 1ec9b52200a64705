"""The response store: OpenAI Responses-API objects kept durably, chained by ``previous_response_id``.

    responses = agentstate.ResponseStore(".agentstate", tenant="default", max_responses=0)
    responses.save({"id": "resp_1", "output": [...]})
    responses.save({"id": "resp_2", "previous_response_id": "resp_1", "output": [...]})
    responses.chain("resp_2")          # [resp_1, resp_2], oldest first

Responses live in the store's ``agentstate.db`` (or a PostgreSQL URL), beside sessions, under the
same writer lock and tenant rules. ``get`` returns exactly what was saved (the stored text is the
codec's bytes, parsed back with key order and integer exactness); the store's own facts
(created_at, deleted_at, the chain's last use) live in other columns and are never injected.

Chains: a response names at most one previous response, which must already exist in the tenant,
so chains are trees of roots and their descendants. ``chain`` rebuilds one in a single recursive
query bounded by the recorded depth; a cycle or a missing link in a damaged database ends it with
``StateCorrupted``.

The cap (``max_responses=N``): after a save takes the tenant over N stored responses (soft-deleted
ones count: they still serve chains), whole chains (a root and everything descended from it) are
evicted, least recently used first, never the chain just saved to, until at most N are left or only
that chain is. A chain is used when one of its responses is saved, or read by ``get``,
``get_for_chain`` or ``chain`` (``list`` is browsing, not use).

How reads record use (the LRU clock lives in the database, shared by every process): a read does
not write on every call. When the chain it read is not
already the tenant's most recently used, the use is queued in this ResponseStore and written, in
read order, by its next save (in the same transaction, before any eviction, so within one process
the order is exact), by ``close()``, or by a later read once ``USE_FLUSH_INTERVAL`` seconds have
passed since the last write (at most one small write per second from reads; the lock is waited for
at most ``USE_LOCK_WAIT`` seconds, else the uses stay queued). So another process's eviction sees a
read at most about a second late; reading one conversation again and again costs nothing.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import AgentStateError, ConflictError, InvalidInput, NotFound, StateCorrupted, StateLocked, StorageError
from ..logs import getLogger
from ..names import check_name, check_tenant, shown
from ..page import Page, check_limit, decode_cursor, encode_cursor
from ..sql import q_responses as q
from ..state.codec import encode_value

log = getLogger("agentstate.responses")

DEFAULT_MAX_ITEM_BYTES = 1 << 20
MAX_CHAIN = 10_000_000  # links; a chain is never longer (a save that would make it so is refused)
USE_LOCK_WAIT = 0.5  # seconds a read waits for the writer lock to record queued uses, before keeping them
USE_FLUSH_INTERVAL = 1.0  # seconds: reads write their queued uses at most this often
_NO_CURSOR = 2**63 - 1
_CURSOR_KIND = "responses"
EXPORT_TYPE = "agentstate.responses"


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray, memoryview)) else value


def _loads(body: Any, tenant: str, rid: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise StateCorrupted(
            f"the stored body of response {rid!r} (tenant {tenant!r}) is not valid JSON: {e}",
            hint="run `agentstate doctor`; the database was changed by something other than agentstate",
            response_id=rid, tenant=tenant,
        ) from None


def _loads_all(rows: list[tuple], tenant: str) -> list[Any]:
    """The bodies (column 3) of ``rows``, parsed in one call (each is a JSON object's text)."""
    try:
        values = orjson.loads("[" + ",".join([_text(r[3]) for r in rows]) + "]")
        if len(values) == len(rows):  # a damaged body such as '1,2' parses as two: look at each
            return values
    except orjson.JSONDecodeError:
        pass
    return [_loads(r[3], tenant, r[1]) for r in rows]  # finds the damaged one and names it


@dataclass(frozen=True)
class ResponseInfo:
    """The store's facts about one response (never part of the response itself)."""

    id: str
    tenant: str
    previous_response_id: str | None
    root_id: str
    depth: int
    created_at: str
    deleted_at: str | None = None
    evicted: list[str] = field(default_factory=list)  # save(): roots of the chains it evicted

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "previous_response_id": self.previous_response_id,
            "root_id": self.root_id,
            "depth": self.depth,
            "created_at": self.created_at,
            "deleted_at": self.deleted_at,
            "evicted": list(self.evicted),
        }


class StoredResponse(dict):
    """A listed response: the dict exactly as saved (equal to it), with the store's facts beside it
    as attributes (``.id``, ``.created_at``, ``.info``), never inside it."""

    __slots__ = ("info",)

    def __init__(self, data: dict[str, Any], info: ResponseInfo) -> None:
        super().__init__(data)
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def created_at(self) -> str:
        return self.info.created_at

    @property
    def previous_response_id(self) -> str | None:
        return self.info.previous_response_id

    def to_dict(self) -> dict[str, Any]:
        """For ``list --json``: the facts, and the response as saved under "data" (the key every stored
        payload sits under: session items too)."""
        out = self.info.to_dict()
        del out["evicted"]
        out["data"] = dict(self)
        return out


def check_response(response: Any, max_item_bytes: int) -> tuple[str, str | None, bytes]:
    """(id, previous_response_id, the exact bytes to store) of a response; InvalidInput if it is bad."""
    if not isinstance(response, dict):
        raise InvalidInput(f"a response must be a JSON object, not {type(response).__name__}")
    if "id" not in response:
        raise InvalidInput('a response must have an "id"', hint="give it the Responses API id, e.g. \"resp_...\"")
    rid = check_name(response["id"], "response id")
    previous = response.get("previous_response_id")
    if previous is not None:
        previous = check_name(previous, "previous_response_id")
    body = encode_value(response)
    if len(body) > max_item_bytes:
        raise InvalidInput(
            f"response {rid!r} is {len(body)} bytes encoded; the limit is {max_item_bytes}",
            hint="raise max_item_bytes (--max-item-bytes) if such responses are expected",
        )
    return rid, previous, body


def _check_count(value: Any, what: str, minimum: int) -> int:
    if type(value) is not int or not minimum <= value <= 2**63 - 1:
        raise InvalidInput(f"{what} must be an integer from {minimum} to {2**63 - 1}, not {value!r:.40}")
    return value


def _damaged(tenant: str, rid: str, why: str) -> StateCorrupted:
    return StateCorrupted(
        f"the chain of response {rid!r} (tenant {tenant!r}) is damaged: {why}",
        hint="run `agentstate doctor`; the database was changed by something other than agentstate",
        response_id=rid,
        tenant=tenant,
    )


class ResponseStore:
    """Responses of one tenant in a store directory (``agentstate.db``) or a PostgreSQL URL."""

    def __init__(
        self,
        target: str | os.PathLike[str] | None = None,
        tenant: str = "default",
        max_responses: int = 0,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        *,
        lock_timeout: float | str | None = None,
    ) -> None:
        from ..sql import is_url

        self.tenant = check_tenant(tenant)
        self.max_responses = _check_count(max_responses, "max_responses", 0)
        self.max_item_bytes = _check_count(max_item_bytes, "max_item_bytes", 1)
        if target is None:
            from ..names import default_dir

            target = default_dir()
        if not isinstance(target, (str, os.PathLike)):
            raise InvalidInput(f"a store is a directory or a postgresql:// URL, not {type(target).__name__}")
        self.target = target if is_url(target) else os.fspath(target)
        if lock_timeout is not None:  # refused here, as StateStore refuses it, not at the first write
            from ..duration import parse_duration

            lock_timeout = parse_duration(lock_timeout, "lock timeout")
        self._lock_timeout = lock_timeout
        self._db: Any = None
        self._pending: OrderedDict[str, None] = OrderedDict()  # roots read but not yet marked used
        self._flushed_at = time.monotonic()

    def __repr__(self) -> str:
        return f"ResponseStore({shown(self.target)!r}, tenant={self.tenant!r}, max_responses={self.max_responses})"

    @property
    def db(self) -> Any:
        if self._db is None:
            from ..sql import open_database

            self._db = open_database(self.target, lock_timeout=self._lock_timeout)
        return self._db

    def close(self) -> None:
        """Record pending uses (best effort) and close the database connections."""
        if self._db is None:
            return
        if self._pending:
            try:
                with self._write("responses use", USE_LOCK_WAIT) as tx:
                    roots = self._flush_uses(tx)
                self._flushed(roots)
            except AgentStateError as e:
                log.info("could not record %d response chain use(s) at close: %s", len(self._pending), e)
        self._db.close()
        self._db = None

    def _write(self, operation: str, lock_timeout: Any = None, evicting: bool = False) -> Any:
        """A write transaction. PostgreSQL: no schema-wide lock; the writer takes the locks of the chains it
        writes (``_lock_chains``), and of the tenant's eviction when ``evicting``. SQLite: its one writer lock."""
        if self.db.dialect != "postgres":
            return self.db.write(operation=operation, lock_timeout=lock_timeout)
        locks = [self.db.resource("response eviction", self.tenant)] if evicting else []
        return self.db.write(operation=operation, lock_timeout=lock_timeout, locks=locks)

    def _lock_chains(self, tx: Any, roots: Any, wait: bool = True) -> bool:
        if tx.dialect != "postgres":
            return True
        return tx.lock(*[self.db.resource("response chain", self.tenant, r) for r in roots], wait=wait)

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------------------

    def save(self, response: dict[str, Any]) -> ResponseInfo:
        """Store ``response`` (a JSON object with "id", optionally "previous_response_id").

        ConflictError if the id exists in the tenant; NotFound if previous_response_id does not (or
        was evicted); InvalidInput for anything that is not a valid response. Nothing is stored
        then. With ``max_responses`` set, may evict other whole chains (``.evicted`` says which)."""
        return self.save_many([response])[0]

    def save_many(self, responses: Any, *, _deleted: set[str] | frozenset[str] = frozenset()) -> list[ResponseInfo]:
        """Store several responses in one transaction, all or none (e.g. an imported conversation);
        each may name an earlier one of the batch as its previous. Eviction runs once, after the
        batch, and spares every chain the batch saved to."""
        if isinstance(responses, dict) or not isinstance(responses, (list, tuple)):
            raise InvalidInput("save_many takes a list of responses")
        checked = [check_response(r, self.max_item_bytes) for r in responses]
        if not checked:
            return []
        tenant = self.tenant
        batch_ids = [rid for rid, _, _ in checked]
        if len(set(batch_ids)) != len(batch_ids):
            dup = next(i for n, i in enumerate(batch_ids) if i in batch_ids[:n])
            raise self._conflict(dup)
        infos: list[ResponseInfo] = []
        touched: OrderedDict[str, None] = OrderedDict()
        evicted: list[tuple[str, int]] = []
        with self._write("responses save", evicting=bool(self.max_responses)) as tx:
            if tx.dialect == "postgres":  # the chains it writes to, locked before anything is decided
                known = {rid: rid for rid, previous, _ in checked if previous is None}
                for rid, previous, _ in checked:
                    if previous is not None:
                        link = tx.one(q.LINK, tenant=tenant, id=previous) if previous not in known else None
                        known[rid] = known.get(previous) or (link[0] if link else previous)
                self._lock_chains(tx, set(known.values()))
            now = _utcnow()  # under the lock: after every save this one waited for
            if len(checked) > 1:  # one query for the whole batch (a single save learns it from its INSERT)
                taken = tx.value(q.ANY_EXISTING, tenant=tenant, ids=orjson.dumps(batch_ids).decode())
                if taken is not None:
                    raise self._conflict(taken)
            if tx.dialect == "postgres":
                seqs = iter([int(r[0]) for r in tx.run(q.NEXT_SEQS, n=len(checked))])
            else:
                first = int(tx.value(q.NEXT_SEQ))
                seqs = iter(range(first, first + len(checked)))
            links: dict[str, tuple[str, int, int]] = {}  # id -> (root, depth, seq), the batch's own first
            new_rows: list[dict[str, Any]] = []
            for rid, previous, body in checked:
                seq = next(seqs)
                if previous is None:
                    root, depth, previous_seq = rid, 0, None
                else:
                    link = links.get(previous) or tx.one(q.LINK, tenant=tenant, id=previous)
                    if link is None:
                        raise NotFound(
                            f"previous_response_id {previous!r} of response {rid!r} is not stored "
                            f"(tenant {tenant!r}); nothing was saved",
                            hint="save the previous response first; an evicted chain cannot be continued",
                            response_id=previous,
                        )
                    root, depth, previous_seq = link[0], int(link[1]) + 1, link[2]
                    if depth >= MAX_CHAIN:
                        raise InvalidInput(f"the chain of {previous!r} already holds {MAX_CHAIN} responses, the limit")
                links[rid] = (root, depth, seq)
                new_rows.append({"seq": seq, "tenant": tenant, "id": rid, "previous_id": previous,
                                 "previous_seq": previous_seq, "root_id": root, "depth": depth,
                                 "body": body.decode("utf-8"), "created_at": now})
                touched.pop(root, None)
                touched[root] = None
                infos.append(ResponseInfo(id=rid, tenant=tenant, previous_response_id=previous, root_id=root,
                                          depth=depth, created_at=now))
            if len(new_rows) == 1:
                if tx.one(q.INSERT, **new_rows[0]) is None:
                    raise self._conflict(new_rows[0]["id"])
            else:
                tx.many(q.INSERT, new_rows)
            for rid in _deleted & set(batch_ids):  # import_lines: soft-deleted when exported
                tx.run(q.SOFT_DELETE, tenant=tenant, id=rid, now=now)
            if _deleted:
                infos = [replace(i, deleted_at=now) if i.id in _deleted else i for i in infos]
            used = self._flush_uses(tx)
            for root in touched:
                tx.run(q.TOUCH_CHAIN, tenant=tenant, root_id=root)
            if self.max_responses:
                evicted = self._evict(tx, keep=touched)
        self._flushed(used)
        for chain_root, count in evicted:
            log.info("evicted response chain %r (%d response(s)) of tenant %r: over max_responses=%d",
                     chain_root, count, tenant, self.max_responses)
        if evicted:
            infos[-1] = replace(infos[-1], evicted=[r for r, _ in evicted])
        return infos

    def _evict(self, tx: Any, keep: Any) -> list[tuple[str, int]]:
        """Inside the save: evict least recently used whole chains (never one in ``keep``) until the
        tenant holds at most max_responses, or only chains in ``keep`` are left."""
        tenant, cap = self.tenant, self.max_responses
        count = int(tx.value(q.COUNT_ALL, tenant=tenant))
        evicted: list[tuple[str, int]] = []
        while count > cap:
            candidates = tx.run(q.LRU_CHAINS, tenant=tenant, limit=len(keep) + 1)
            root = next((r for (r,) in candidates if r not in keep), None)
            if root is None:
                break
            if not self._lock_chains(tx, [root], wait=False):  # being written now: not the least recently used
                keep = {*keep, root}
                continue
            gone = tx.run(q.EVICT_RESPONSES, tenant=tenant, root_id=root)
            tx.run(q.EVICT_CHAIN, tenant=tenant, root_id=root)
            count -= len(gone)
            evicted.append((root, len(gone)))
        return evicted

    def delete(self, *response_ids: str) -> list[str]:
        """Soft delete, in one transaction, all or nothing: hidden from ``get`` and ``list``, still part of
        chains. NotFound (nothing deleted) if any is missing or already deleted. Returns the ids deleted."""
        if not response_ids:
            raise InvalidInput("delete needs at least one response id")
        rids = list(dict.fromkeys(check_name(r, "response id") for r in response_ids))
        with self._write("responses delete") as tx:
            now = _utcnow()
            for rid in rids:
                if tx.one(q.SOFT_DELETE, tenant=self.tenant, id=rid, now=now) is None:
                    raise self._not_found(rid, deleted=tx.one(q.LINK, tenant=self.tenant, id=rid) is not None)
        return rids

    def _conflict(self, rid: str) -> ConflictError:
        return ConflictError(
            f"response {rid!r} already exists (tenant {self.tenant!r}); nothing was saved",
            hint="response ids are unique; give the new response its own id",
            response_id=rid,
        )

    def _not_found(self, rid: str, deleted: bool = False) -> NotFound:
        if deleted:
            return NotFound(f"response {rid!r} was deleted (tenant {self.tenant!r})", response_id=rid,
                            hint="`agentstate responses get --include-deleted` (get_for_chain) still reads it")
        return NotFound(f"response {rid!r} not found (tenant {self.tenant!r})", response_id=rid)

    # -- reads -----------------------------------------------------------------------------------------

    def get(self, response_id: str) -> dict[str, Any]:
        """The response exactly as saved; NotFound if missing or soft-deleted."""
        return self._get(response_id, include_deleted=False)

    def get_for_chain(self, response_id: str) -> dict[str, Any]:
        """The response exactly as saved, soft-deleted included; NotFound if missing (or evicted)."""
        return self._get(response_id, include_deleted=True)

    def _get(self, response_id: str, include_deleted: bool) -> dict[str, Any]:
        rid = check_name(response_id, "response id")
        with self.db.read() as tx:
            row = tx.one(q.GET, tenant=self.tenant, id=rid)
        if row is None or (row[1] is not None and not include_deleted):
            raise self._not_found(rid, deleted=row is not None)
        body, _deleted_at, root, last_used, newest = row
        self._used(root, last_used, newest)
        return _loads(body, self.tenant, rid)

    def chain(self, response_id: str) -> list[dict[str, Any]]:
        """[root, ..., response_id], oldest first, soft-deleted links included, in one query.

        NotFound if response_id is missing; StateCorrupted if the chain has a cycle or a missing
        link (a damaged database)."""
        rid = check_name(response_id, "response id")
        with self.db.read() as tx:
            rows = tx.run(q.CHAIN, tenant=self.tenant, id=rid, max_links=MAX_CHAIN)
        if not rows:
            raise self._not_found(rid)
        rows = walk_order(rows)
        problem = chain_problem(rows)
        if problem:
            raise _damaged(self.tenant, rid, problem)
        start = rows[-1]
        self._used(start[4], start[6], start[7])
        return _loads_all(rows, self.tenant)

    def info(self, response_id: str) -> ResponseInfo:
        """The store's facts about a response (soft-deleted included); does not count as a use."""
        rid = check_name(response_id, "response id")
        with self.db.read() as tx:
            row = tx.one(q.INFO, tenant=self.tenant, id=rid)
        if row is None:
            raise self._not_found(rid)
        return ResponseInfo(id=rid, tenant=self.tenant, previous_response_id=row[0], root_id=row[1],
                            depth=int(row[2]), created_at=_text(row[3]), deleted_at=row[4])

    def list(self, limit: int = 50, cursor: str | None = None, *,
             include_deleted: bool = False) -> Page[StoredResponse]:
        """Live (not deleted) responses, newest first; ``Page(items, next_cursor, total)``.
        ``include_deleted=True``: soft-deleted ones too (``.info.deleted_at`` set), counted in total."""
        limit = check_limit(limit)
        # The cursor is the (created_at, id) of the page's last response: the caller's own row, seen on
        # that page, so it tells nothing about other tenants (a global seq would count their saves).
        after = None if cursor is None else decode_cursor(_CURSOR_KIND, cursor, (str, str))
        with self.db.read() as tx:
            every = 1 if include_deleted else 0
            before = _NO_CURSOR
            if after is not None:
                anchor = tx.one(q.LIST_ANCHOR, tenant=self.tenant, created_at=after[0], id=after[1])
                before = None if anchor is None else int(anchor[0])
            if before is None:  # that response was evicted meanwhile: go on with those created before it
                rows = tx.run(q.LIST_OLDER, tenant=self.tenant, created_at=after[0], all=every, limit=limit + 1)
            else:
                rows = tx.run(q.LIST_PAGE, tenant=self.tenant, before=before, all=every, limit=limit + 1)
            total = int(tx.value(q.COUNT_ALL if include_deleted else q.COUNT_LIVE, tenant=self.tenant) or 0)
        more = len(rows) > limit
        rows = rows[:limit]
        items = [
            StoredResponse(_loads(body, self.tenant, rid),
                           ResponseInfo(id=rid, tenant=self.tenant, previous_response_id=prev, root_id=root,
                                        depth=int(depth), created_at=_text(created),
                                        deleted_at=None if deleted is None else _text(deleted)))
            for _seq, rid, prev, root, depth, created, body, deleted in rows
        ]
        next_cursor = encode_cursor(_CURSOR_KIND, [items[-1].created_at, items[-1].id]) if more and items else None
        return Page(items=items, next_cursor=next_cursor, total=total)

    # -- prune, export, import (responses/stream.py) ---------------------------------------------------

    def prune(self, older_than: float | int | str | None = None, *, deleted: bool = False,
              dry_run: bool = False) -> list[str]:
        """Delete whole chains, for good, in one transaction: those whose newest response was saved more
        than ``older_than`` ago (seconds, or "30d", "12h"...; reads do not count), and with
        ``deleted=True`` those whose every response is soft-deleted. Never a part of a chain. Returns the
        ids of the responses deleted (``dry_run=True``: that would be deleted now; nothing is, no lock)."""
        from .stream import prune

        return prune(self, older_than, deleted=deleted, dry_run=dry_run)

    def export_lines(self) -> Iterator[bytes]:
        """The tenant's responses as JSON lines, from one snapshot: a header {"type": "agentstate.responses",
        "version": 1, "tenant": ...}, then one {"id", "previous_response_id", "created_at", "deleted_at",
        "data"} line per response, oldest first (a previous response before the ones naming it)."""
        from .stream import export_lines

        return export_lines(self)

    def import_lines(self, lines: Iterable[bytes | str]) -> list[ResponseInfo]:
        """Save exported responses (or JSON lines that are each one response) into this tenant, in one
        transaction (``save_many``: all or none; an id already stored is ConflictError). Soft-deleted
        ones stay soft-deleted; times are those of the import."""
        from .stream import import_lines

        return import_lines(self, lines)

    # -- use of chains (the LRU clock) ---------------------------------------------------------------------

    def _used(self, root: str, last_used: Any, newest: Any) -> None:
        """A read of chain ``root``: queue its use unless it already is the tenant's most recently used
        (and nothing is queued before it); write the queue if the last write is a while ago."""
        if last_used is not None and newest is not None and last_used >= newest and not self._pending:
            return
        self._pending[root] = None
        self._pending.move_to_end(root)
        if time.monotonic() - self._flushed_at < USE_FLUSH_INTERVAL:
            return
        try:
            with self._write("responses use", USE_LOCK_WAIT) as tx:
                roots = self._flush_uses(tx)
            self._flushed(roots)
        except (StateLocked, StorageError) as e:
            self._flushed_at = time.monotonic()  # try again a while later
            log.debug("use of response chain(s) %s stays queued: %s", list(self._pending), e)

    def _flush_uses(self, tx: Any) -> list[str]:
        """Inside a write: record the queued uses, in read order; returns them, for ``_flushed``
        once the transaction committed (a rolled-back write keeps them queued)."""
        roots = list(self._pending)
        for root in roots:
            tx.run(q.MARK_USED, tenant=self.tenant, root_id=root)
        return roots

    def _flushed(self, roots: list[str]) -> None:
        for root in roots:
            self._pending.pop(root, None)
        self._flushed_at = time.monotonic()


def walk_order(rows: list[tuple]) -> list[tuple]:
    """The rows of the chain walk (n, id, previous_id, body, root_id, depth, last_used, newest),
    root first. They arrive in walk order (n = 0, 1, ...), so the sort only checks that."""
    rows.sort(key=_walk_step)
    rows.reverse()
    return rows


def _walk_step(row: tuple) -> int:
    return row[0]


def chain_problem(rows: list[tuple]) -> str | None:
    """Why the rows of the chain walk, root first (``walk_order``), are not one whole chain; None when
    they are. The last row (the walk's start) carries the recorded root_id and depth."""
    start = rows[-1]
    depth, root = int(start[5]), start[4]
    ids = [r[1] for r in rows]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for i in reversed(ids):  # from the start of the walk towards the root
            if i in seen:
                return f"a cycle of previous_response_id links through {i!r}"
            seen.add(i)
    top = rows[0]
    if top[2] is not None:
        if len(rows) > min(depth + 1, MAX_CHAIN):  # the walk ran into its bound
            return f"the chain is longer than its recorded depth {depth}"
        return f"response {top[1]!r} names previous_response_id {top[2]!r}, which is missing"
    if len(rows) != depth + 1:
        return f"the chain has {len(rows)} links but its recorded depth is {depth}"
    if top[1] != root:
        return f"the chain's root is {top[1]!r}, but response {start[1]!r} records root {root!r}"
    return None
