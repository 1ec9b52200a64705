"""Property test: any sequence of save/delete/get/get_for_chain/chain/list, over two tenants and with
a cap, gives the same results as a simple in-memory model of the response store, and no chain ever
comes back cut (each starts at a root and every link names the one before).

Each example uses two fresh tenant names in one store (``store_target``), so examples are apart and
the test runs unchanged on every backend.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonsame import same
from responses_raw import rows

from agentstate import ConflictError, NotFound, ResponseStore

SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"
IDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
_example = itertools.count()


@dataclass
class _Tenant:
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {"body", "prev", "root", "deleted"}
    order: list[str] = field(default_factory=list)  # ids in save order
    last_used: dict[str, int] = field(default_factory=dict)  # root -> clock


class Model:
    """What the store should do, in a few lines of plain Python."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.tenants: dict[str, _Tenant] = {}

    def t(self, tenant: str) -> _Tenant:
        return self.tenants.setdefault(tenant, _Tenant())

    def _use(self, t: _Tenant, root: str, always: bool) -> None:
        newest = max(t.last_used.values(), default=0)
        if always or t.last_used[root] < newest:
            t.last_used[root] = newest + 1

    def save(self, tenant: str, body: dict[str, Any]) -> Any:
        t = self.t(tenant)
        rid, prev = body["id"], body.get("previous_response_id")
        if prev is not None and prev not in t.responses:
            return NotFound
        if rid in t.responses:
            return ConflictError
        root = rid if prev is None else t.responses[prev]["root"]
        t.responses[rid] = {"body": body, "prev": prev, "root": root, "deleted": False}
        t.order.append(rid)
        t.last_used.setdefault(root, 0)
        self._use(t, root, always=True)
        evicted = []
        while self.cap and len(t.responses) > self.cap:
            others = [r for r in t.last_used if r != root]
            if not others:
                break
            victim = min(others, key=lambda r: (t.last_used[r], r))
            for i in [i for i, v in t.responses.items() if v["root"] == victim]:
                del t.responses[i]
                t.order.remove(i)
            del t.last_used[victim]
            evicted.append(victim)
        return evicted

    def get(self, tenant: str, rid: str, deleted_ok: bool) -> Any:
        t = self.t(tenant)
        r = t.responses.get(rid)
        if r is None or (r["deleted"] and not deleted_ok):
            return NotFound
        self._use(t, r["root"], always=False)
        return r["body"]

    def chain(self, tenant: str, rid: str) -> Any:
        t = self.t(tenant)
        if rid not in t.responses:
            return NotFound
        out, cur = [], rid
        while cur is not None:
            out.append(t.responses[cur]["body"])
            cur = t.responses[cur]["prev"]
        self._use(t, t.responses[rid]["root"], always=False)
        return out[::-1]

    def delete(self, tenant: str, rid: str) -> Any:
        r = self.t(tenant).responses.get(rid)
        if r is None or r["deleted"]:
            return NotFound
        r["deleted"] = True
        return [rid]  # the ids deleted, as ResponseStore.delete(*ids) returns them

    def listing(self, tenant: str) -> list[str]:
        t = self.t(tenant)
        return [i for i in reversed(t.order) if not t.responses[i]["deleted"]]


values = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
                   st.text(max_size=8), st.booleans(), st.none())
payloads = st.dictionaries(st.text(max_size=5).filter(lambda k: k not in ("id", "previous_response_id")), values,
                           max_size=3)
tenant_idx = st.integers(0, 1)
ids = st.sampled_from(IDS)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("save"), tenant_idx, ids, st.one_of(st.none(), ids), payloads),
        st.tuples(st.just("save"), tenant_idx, ids, st.one_of(st.none(), ids), payloads),
        st.tuples(st.just("delete"), tenant_idx, ids),
        st.tuples(st.just("get"), tenant_idx, ids),
        st.tuples(st.just("get_for_chain"), tenant_idx, ids),
        st.tuples(st.just("chain"), tenant_idx, ids),
        st.tuples(st.just("list"), tenant_idx),
    ),
    min_size=1,
    max_size=40,
)


def _outcome(fn, *args) -> Any:
    try:
        return fn(*args)
    except (NotFound, ConflictError) as e:
        return type(e)


def _whole(chain: list[dict[str, Any]]) -> bool:
    if not chain or chain[0].get("previous_response_id") is not None:
        return False
    return all(chain[i].get("previous_response_id") == chain[i - 1]["id"] for i in range(1, len(chain)))


def _run(target: str, cap: int, script: list[tuple]) -> None:
    n = next(_example)
    tenants = [f"m{n}.a", f"m{n}.b"]
    stores = [ResponseStore(target, tenant=t, max_responses=cap) for t in tenants]
    model = Model(cap)
    for op in script:
        kind, tenant = op[0], op[1]
        store, name = stores[tenant], tenants[tenant]
        if kind == "save":
            _, _, rid, prev, payload = op
            body = {"id": rid, **({"previous_response_id": prev} if prev is not None else {}), **payload}
            want = model.save(name, body)
            got = _outcome(store.save, body)
            if isinstance(want, list):
                assert not isinstance(got, type) and got.evicted == want, (op, got, want)
            else:
                assert got is want, (op, got, want)
        elif kind == "delete":
            assert _outcome(store.delete, op[2]) == model.delete(name, op[2]), op
        elif kind in ("get", "get_for_chain"):
            want = model.get(name, op[2], kind == "get_for_chain")
            got = _outcome(getattr(store, kind), op[2])
            assert got is want if want is NotFound else same(got, want), (op, got, want)
        elif kind == "chain":
            want = model.chain(name, op[2])
            got = _outcome(store.chain, op[2])
            if want is NotFound:
                assert got is NotFound, op
            else:
                assert same(got, want) and _whole(got), (op, got, want)
        else:
            page = store.list(limit=100)
            assert [r["id"] for r in page.items] == model.listing(name) and page.total == len(page.items), op
    # At the end: exactly the model's responses are stored, and every one's chain is whole.
    for store, name in zip(stores, tenants, strict=True):
        t = model.t(name)
        assert {r[1] for r in rows(target) if r[0] == name} == set(t.responses)
        for rid in t.responses:
            chain = store.chain(rid)
            assert _whole(chain) and chain[-1]["id"] == rid
        store.close()


@settings(max_examples=300 if SLOW else 30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(cap=st.sampled_from([0, 1, 2, 3, 5, 8]), script=ops)
def test_any_sequence_matches_the_model(store_target: str, cap: int, script: list[tuple]) -> None:
    _run(store_target, cap, script)
