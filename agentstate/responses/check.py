"""Doctor's check of the response chains in a store's database: broken links and cycles.

``check_responses(target)`` -> findings ``{"check", "ok", "detail", ...}`` (the shape of every doctor
check). It reads one snapshot, takes no lock and writes nothing. A healthy database gives one ok
finding; a damaged one (edited or corrupted by something other than agentstate) gives one finding
per problem found, at most ``LIMIT`` per kind and tenant:

* a broken link: a response whose previous_response_id names a response that is not stored;
* a cycle: previous_response_id links that loop (``chain`` would refuse them with StateCorrupted);
* wrong chain facts (depth, root) that would make eviction cut a chain;
* a chain without its LRU row (it would never be evicted).
"""

from __future__ import annotations

import os
from typing import Any

CHECK = "responses chains"
LIMIT = 20


def check_responses(target: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    from ..sql import read_check

    return read_check(target, CHECK, _check, empty="no responses stored", reading="the responses")


def _check(tx: Any) -> list[dict[str, Any]]:
    from ..sql import q_responses as q
    from .store import MAX_CHAIN, chain_problem, walk_order

    findings: list[dict[str, Any]] = []
    total = 0
    tenants = [t for (t,) in tx.run(q.TENANTS)]

    def bad(tenant: str, detail: str, **extra: Any) -> None:
        findings.append({"check": CHECK, "ok": False, "detail": f"tenant {tenant!r}: {detail}", "tenant": tenant,
                         **extra})

    for tenant in tenants:
        count = int(tx.value(q.COUNT_ALL, tenant=tenant) or 0)
        total += count
        for rid, previous in tx.run(q.BROKEN_LINKS, tenant=tenant, limit=LIMIT):
            bad(tenant, f"broken chain link: response {rid!r} names previous_response_id {previous!r}, "
                "which is not stored", response_id=rid, problem="broken_link")
        reported: set[str] = set()
        for rid, _prev, depth, root, _pdepth, _proot in tx.run(q.BAD_FACTS, tenant=tenant, limit=LIMIT):
            walk = tx.run(q.WALK, tenant=tenant, id=rid, max_links=min(count + 1, MAX_CHAIN))
            problem = chain_problem(walk_order(walk)) if walk else None
            if problem and "cycle" in problem:
                loop = frozenset(r[1] for r in walk)
                if reported & loop:
                    continue  # the same cycle, found from another of its members
                reported |= loop
                bad(tenant, f"cycle: the chain of response {rid!r} has {problem}", response_id=rid, problem="cycle")
            else:
                bad(tenant, f"response {rid!r} records depth {depth} and root {root!r}, which do not match its "
                    "chain" + (f" ({problem})" if problem else ""), response_id=rid, problem="chain_facts")
        for (root,) in tx.run(q.MISSING_CHAIN_ROWS, tenant=tenant, limit=LIMIT):
            bad(tenant, f"the chain rooted at {root!r} has no LRU record (it would never be evicted)",
                response_id=root, problem="missing_chain_row")
    if not findings:
        findings.append({"check": CHECK, "ok": True,
                         "detail": f"{total} response(s) in {len(tenants)} tenant(s): every chain whole, no cycle"
                         if total else "no responses stored"})
    return findings
