"""Property test: any interleaving of create/append/pop/delete/prune across two tenants equals a
simple in-memory model (dict of tenant -> session id -> list of items), on every backend."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstate import ConflictError, InvalidInput, NotFound, SessionStore

SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"
IDS = ["s1", "s2", "s3"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
good_item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                           "content": st.text(min_size=1, max_size=12).filter(lambda t: t.strip() != "")}),
    st.dictionaries(st.sampled_from(["type", "n", "x", "call_id"]), json_leaf, max_size=3),
)
bad_item = st.sampled_from([{"role": "user", "content": " "}, {"role": "nobody", "content": "x"},
                            {"x": float("nan")}, {"x": 2**64}])

op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(IDS)),
    st.tuples(st.just("append"), st.sampled_from(IDS), st.lists(good_item, max_size=4), st.booleans(),
              st.one_of(st.none(), st.integers(0, 4))),
    st.tuples(st.just("append_bad"), st.sampled_from(IDS), st.lists(good_item, max_size=2), bad_item),
    st.tuples(st.just("pop"), st.sampled_from(IDS)),
    st.tuples(st.just("delete"), st.sampled_from(IDS)),
    st.tuples(st.just("prune"), st.sampled_from(["all", "none"])),
)
ops = st.lists(st.tuples(st.sampled_from([0, 1]), op), max_size=25)


@settings(max_examples=300 if SLOW else 40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(program=ops)
def test_sessions_match_the_model(store_target: str, program: list) -> None:
    run = uuid.uuid4().hex[:10]
    stores = [SessionStore(store_target, tenant=f"a{run}"), SessionStore(store_target, tenant=f"b{run}")]
    model: list[dict[str, list[dict]]] = [{}, {}]
    try:
        for t, (name, *args) in program:
            s, m = stores[t], model[t]
            if name == "create":
                sid = args[0]
                if sid in m:
                    with pytest.raises(ConflictError):
                        s.create(sid)
                else:
                    s.create(sid)
                    m[sid] = []
            elif name == "append":
                sid, items, create, expect = args
                exists = sid in m
                last = len(m[sid]) if exists else 0
                if not exists and not create:
                    with pytest.raises(NotFound):
                        s.append(sid, items, create=create, expect_seq=expect)
                elif expect is not None and expect != last:
                    with pytest.raises(ConflictError):
                        s.append(sid, items, create=create, expect_seq=expect)
                else:
                    added = s.append(sid, items, create=create, expect_seq=expect)
                    assert [i.seq for i in added] == list(range(last + 1, last + 1 + len(items)))
                    m.setdefault(sid, []).extend(items)
            elif name == "append_bad":
                sid, items, bad = args
                with pytest.raises(InvalidInput):
                    s.append(sid, [*items, bad])
            elif name == "pop":
                sid = args[0]
                if sid not in m:
                    with pytest.raises(NotFound):
                        s.pop(sid)
                else:
                    popped = s.pop(sid)
                    if m[sid]:
                        expected = m[sid].pop()
                        assert popped is not None and popped.data == expected and popped.seq == len(m[sid]) + 1
                    else:
                        assert popped is None
            elif name == "delete":
                sid = args[0]
                if sid not in m:
                    with pytest.raises(NotFound):
                        s.delete(sid)
                else:
                    s.delete(sid)
                    del m[sid]
            elif name == "prune":
                if args[0] == "all":
                    assert sorted(s.prune(0)) == sorted(m)
                    m.clear()
                else:
                    assert s.prune("3650d") == []
            # after every step, both tenants equal the model
            for store, mod in zip(stores, model, strict=True):
                page = store.list(limit=50)
                assert page.total == len(mod)
                assert sorted(x.id for x in page.items) == sorted(mod)
                for sid, items in mod.items():
                    got = store.items(sid)
                    assert [i.seq for i in got] == list(range(1, len(items) + 1))
                    assert [i.data for i in got] == items
                    assert store.get(sid).item_count == len(items)
                for sid in set(IDS) - set(mod):
                    with pytest.raises(NotFound):
                        store.get(sid)
    finally:
        for s in stores:
            s.close()
