"""Doctor's scan of every stored JSON value in a store's database: session items, session metadata and
response bodies that no longer decode (the database was changed by something other than agentstate;
reading them is StateCorrupted, exit 4, naming the row).

``check_values(target)`` -> findings ``{"check", "ok", "detail", ...}`` (the shape of every doctor check):
one ok finding, or one per damaged value (at most ``LIMIT`` per kind and tenant). One snapshot, no
lock, nothing written; both engines (SQLite and PostgreSQL), values decoded as the read paths decode
them (orjson), in batches of ``BATCH`` rows.
"""

from __future__ import annotations

import os
from typing import Any

CHECK = "database values"
LIMIT = 20
BATCH = 1000


def check_values(target: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    from .sql import read_check

    return read_check(target, CHECK, _scan, empty="no sessions or responses stored", reading="the stored values")


def _bad(text: Any) -> str | None:
    """Why ``text`` does not decode, or None."""
    import orjson

    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return str(e)
    return None


def _scan(tx: Any) -> list[dict[str, Any]]:
    from .sql import q_values as q

    findings: list[dict[str, Any]] = []
    counts = {"items": 0, "metadata": 0, "responses": 0}

    def bad(tenant: str, detail: str, **extra: Any) -> None:
        findings.append({"check": CHECK, "ok": False, "tenant": tenant, "detail": f"tenant {tenant!r}: {detail}",
                         **extra})

    for (tenant,) in tx.run(q.SESSION_TENANTS):
        found, sid, seq = 0, "", 0
        while rows := tx.run(q.ITEMS, tenant=tenant, session_id=sid, seq=seq, limit=BATCH):
            counts["items"] += len(rows)
            sid, seq = rows[-1][0], rows[-1][1]
            for item_sid, item_seq, data in rows:
                why = _bad(data)
                if why is not None and found < LIMIT:
                    found += 1
                    bad(tenant, f"item {int(item_seq)} of session {item_sid!r} is not valid JSON: {why}",
                        session_id=item_sid, seq=int(item_seq), problem="item")
        found, sid = 0, ""
        while rows := tx.run(q.METADATA, tenant=tenant, id=sid, limit=BATCH):
            counts["metadata"] += len(rows)
            sid = rows[-1][0]
            for meta_sid, meta in rows:
                why = _bad(meta)
                if why is not None and found < LIMIT:
                    found += 1
                    bad(tenant, f"the metadata of session {meta_sid!r} is not valid JSON: {why}",
                        session_id=meta_sid, problem="metadata")
    for (tenant,) in tx.run(q.RESPONSE_TENANTS):
        found, seq = 0, 0
        while rows := tx.run(q.BODIES, tenant=tenant, seq=seq, limit=BATCH):
            counts["responses"] += len(rows)
            seq = rows[-1][0]
            for _seq, rid, body in rows:
                why = _bad(body)
                if why is not None and found < LIMIT:
                    found += 1
                    bad(tenant, f"the body of response {rid!r} is not valid JSON: {why}", response_id=rid,
                        problem="response")
    if not findings:
        findings.append({"check": CHECK, "ok": True,
                         "detail": f"{counts['items']} session item(s), {counts['metadata']} session metadata and "
                                   f"{counts['responses']} response(s): every one valid JSON"})
    return findings
