"""Bulk work on a tenant's responses: prune whole chains, export and import as JSON lines
(``ResponseStore.prune`` / ``export_lines`` / ``import_lines``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import InvalidInput
from .store import EXPORT_TYPE, _text

if TYPE_CHECKING:
    from .store import ResponseInfo, ResponseStore


def prune(store: ResponseStore, older_than: float | int | str | None = None, *, deleted: bool = False,
          dry_run: bool = False) -> list[str]:
    """See ResponseStore.prune."""
    from ..duration import parse_duration
    from ..sql import q_responses as q

    if older_than is None and not deleted:
        raise InvalidInput("prune needs older_than, deleted=True or both: nothing says what to prune")
    cutoff = None
    if older_than is not None:
        seconds = parse_duration(older_than, "age")
        try:
            cutoff = (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(
                timespec="microseconds").replace("+00:00", "Z")
        except (OverflowError, ValueError):  # older than any representable time: nothing is that old
            cutoff = None
            if not deleted:
                return []

    def roots(tx: Any) -> list[str]:
        found: dict[str, None] = {}
        if cutoff is not None:
            found.update(dict.fromkeys(r[0] for r in tx.run(q.STALE_CHAINS, tenant=store.tenant, cutoff=cutoff)))
        if deleted:
            found.update(dict.fromkeys(r[0] for r in tx.run(q.DEAD_CHAINS, tenant=store.tenant)))
        return sorted(found)

    if dry_run:
        with store.db.read() as tx:
            return [r[0] for root in roots(tx) for r in tx.run(q.CHAIN_IDS, tenant=store.tenant, root_id=root)]
    gone: list[str] = []
    with store._write("responses prune") as tx:
        found = roots(tx)
        if found and tx.dialect == "postgres":  # lock those chains, then keep the ones still to prune
            store._lock_chains(tx, found)
            found = [r for r in roots(tx) if r in set(found)]
        for root in found:
            gone += [r[0] for r in tx.run(q.EVICT_RESPONSES, tenant=store.tenant, root_id=root)]
            tx.run(q.EVICT_CHAIN, tenant=store.tenant, root_id=root)
    return gone

def export_lines(store: ResponseStore) -> Iterator[bytes]:
    """See ResponseStore.export_lines."""
    from ..sql import q_responses as q

    with store.db.read() as tx:
        rows = tx.run(q.EXPORT_ALL, tenant=store.tenant)
    yield orjson.dumps({"type": EXPORT_TYPE, "version": 1, "tenant": store.tenant}) + b"\n"
    for rid, previous, created, deleted_at, body in rows:
        head = orjson.dumps({"id": rid, "previous_response_id": previous, "created_at": _text(created),
                             "deleted_at": None if deleted_at is None else _text(deleted_at)})
        yield head[:-1] + b',"data":' + _text(body).encode("utf-8") + b"}\n"  # the body exactly as stored

def import_lines(store: ResponseStore, lines: Iterable[bytes | str]) -> list[ResponseInfo]:
    """See ResponseStore.import_lines."""
    from ..state.codec import parse_json

    datas: list[Any] = []
    gone: set[str] = set()
    exported = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        value = parse_json(line, f"line {n}")
        if not datas and not exported and isinstance(value, dict) and value.get("type") == EXPORT_TYPE:
            if value.get("version") != 1:
                raise InvalidInput(f"line {n}: not a version-1 agentstate responses header")
            exported = True
            continue
        if exported:
            if not (isinstance(value, dict) and isinstance(value.get("data"), dict)):
                raise InvalidInput(f"line {n}: not an exported response (an object with \"data\")")
            if value.get("deleted_at") is not None:
                gone.add(value["data"].get("id"))
            value = value["data"]
        datas.append(value)
    if not datas:
        raise InvalidInput("nothing to import: no responses")
    return store.save_many(datas, _deleted=gone)
