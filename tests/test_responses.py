"""Contract tests of the response store (issue 11), on every backend (``store_target``)."""

from __future__ import annotations

import logging
import math

import pytest
from jsonsame import same
from responses_raw import is_pg, raw, rows

from agentstate import ConflictError, InvalidInput, NotFound, ResponseStore, StateCorrupted
from agentstate.responses.check import check_responses


def _r(rid: str, prev: str | None = None, **extra) -> dict:
    out = {"id": rid, "object": "response"}
    if prev is not None:
        out["previous_response_id"] = prev
    out.update(extra)
    return out


def test_get_returns_exactly_what_was_saved(store_target: str) -> None:
    s = ResponseStore(store_target)
    resp = {"z": 1, "id": "resp_1", "a": [2**64 - 1, -(2**63), 0.1, -0.0, 1e300],
            "nested": {"b": None, "a": "é\u2603"},
            "previous_response_id": None, "output": [{"type": "message", "content": [{"text": "hi"}]}]}
    info = s.save(resp)
    got = s.get("resp_1")
    assert same(got, resp) and list(got) == list(resp)  # key order and exact numbers
    assert type(got) is dict and "created_at" not in got and "deleted_at" not in got
    assert info.id == "resp_1" and info.root_id == "resp_1" and info.depth == 0 and info.created_at.endswith("Z")
    assert same(s.get_for_chain("resp_1"), resp)
    stored = rows(store_target)
    assert len(stored) == 1 and stored[0][5].startswith('{"z":1,"id":"resp_1"')  # the codec's exact text


def test_chain_oldest_first_with_forks_and_soft_deleted_links(store_target: str) -> None:
    s = ResponseStore(store_target)
    s.save(_r("a"))
    s.save(_r("b", "a", n=1))
    s.save(_r("c", "b", n=2))
    s.save(_r("c2", "b", n=3))  # a fork: two answers to the same previous
    assert [r["id"] for r in s.chain("c")] == ["a", "b", "c"]
    assert [r["id"] for r in s.chain("c2")] == ["a", "b", "c2"]
    assert s.chain("a") == [_r("a")]
    s.delete("b")
    with pytest.raises(NotFound):
        s.get("b")
    assert s.get_for_chain("b") == _r("b", "a", n=1)
    assert [r["id"] for r in s.chain("c")] == ["a", "b", "c"]  # the deleted link still serves the chain
    s.save(_r("d", "b"))  # and can still be continued from
    assert [r["id"] for r in s.chain("d")] == ["a", "b", "d"]
    with pytest.raises(NotFound):
        s.delete("b")  # already deleted
    with pytest.raises(NotFound):
        s.delete("nope")
    with pytest.raises(NotFound):
        s.chain("nope")
    assert s.info("b").deleted_at is not None and s.info("c").deleted_at is None


def test_duplicate_id_is_a_conflict_and_changes_nothing(store_target: str) -> None:
    s = ResponseStore(store_target)
    s.save(_r("a", v=1))
    before = rows(store_target)
    with pytest.raises(ConflictError) as e:
        s.save(_r("a", v=2))
    assert e.value.exit_code == 5
    with pytest.raises(ConflictError):
        s.save_many([_r("x"), _r("x")])  # a duplicate inside one batch: the whole batch refused
    with pytest.raises(ConflictError, match="'a'"):
        s.save_many([_r("y"), _r("a", v=3)])  # one stored id in a batch: the whole batch refused
    assert rows(store_target) == before
    assert s.get("a") == _r("a", v=1)


def test_missing_previous_is_not_found_and_stores_nothing(store_target: str) -> None:
    s = ResponseStore(store_target)
    s.save(_r("a"))
    before = rows(store_target)
    with pytest.raises(NotFound) as e:
        s.save(_r("b", "ghost"))
    assert e.value.exit_code == 6 and "ghost" in str(e.value)
    with pytest.raises(NotFound):
        s.save_many([_r("b", "a"), _r("c", "ghost")])
    with pytest.raises(NotFound):
        s.save(_r("self", "self"))  # names itself: not stored yet, so a missing previous
    with pytest.raises(ConflictError):
        s.save(_r("a", "a"))
    assert rows(store_target) == before


def test_tenants_are_apart(store_target: str) -> None:
    alice, bob = ResponseStore(store_target, tenant="alice"), ResponseStore(store_target, tenant="bob")
    alice.save(_r("r1", who="alice"))
    with pytest.raises(NotFound):
        bob.get("r1")
    with pytest.raises(NotFound):
        bob.get_for_chain("r1")
    with pytest.raises(NotFound):
        bob.chain("r1")
    with pytest.raises(NotFound):
        bob.delete("r1")
    with pytest.raises(NotFound):
        bob.save(_r("r2", "r1"))  # another tenant's response is not a previous_response_id
    bob.save(_r("r1", who="bob"))  # the same id, apart
    assert alice.get("r1")["who"] == "alice" and bob.get("r1")["who"] == "bob"
    assert [r["id"] for r in bob.list().items] == ["r1"] and bob.list().total == 1
    default = ResponseStore(store_target)
    assert default.list().total == 0


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2],
        "resp",
        {"object": "response"},  # no id
        {"id": ""},
        {"id": ".hidden"},
        {"id": "a/b"},
        {"id": "x" * 129},
        {"id": 7},
        {"id": "a", "previous_response_id": 5},
        {"id": "a", "previous_response_id": "../x"},
        {"id": "a", "v": math.nan},
        {"id": "a", "v": [math.inf]},
        {"id": "a", "v": 2**64},
        {"id": "a", "v": {1: 2}},
        {"id": "a", "v": object()},
    ],
)
def test_bad_responses_are_invalid_input_and_store_nothing(store_target: str, bad) -> None:
    s = ResponseStore(store_target)
    with pytest.raises(InvalidInput) as e:
        s.save(bad)
    assert e.value.exit_code == 1
    assert rows(store_target) == []


def test_size_cap_and_bad_parameters(store_target: str) -> None:
    s = ResponseStore(store_target, max_item_bytes=100)
    s.save({"id": "small", "t": "x" * 50})
    with pytest.raises(InvalidInput, match="limit is 100"):
        s.save({"id": "big", "t": "x" * 200})
    assert [r[1] for r in rows(store_target)] == ["small"]
    assert ResponseStore(store_target, max_item_bytes=10_000).save({"id": "big", "t": "x" * 200}).id == "big"
    for kwargs in ({"tenant": "../x"}, {"tenant": ""}, {"max_responses": -1}, {"max_responses": True},
                   {"max_item_bytes": 0}, {"max_responses": "3"}):
        with pytest.raises(InvalidInput):
            ResponseStore(store_target, **kwargs)
    for bad_id in ("", "a b", None, ".x"):
        for call in (s.get, s.get_for_chain, s.chain, s.delete, s.info):
            with pytest.raises(InvalidInput):
                call(bad_id)


def test_list_pages_newest_first_without_deleted(store_target: str) -> None:
    s = ResponseStore(store_target)
    s.save_many([_r(f"r{i:02d}", f"r{i - 1:02d}" if i % 3 else None) for i in range(20)])
    s.delete("r05")
    s.delete("r17")
    seen, cursor, added = [], None, 0
    while True:
        page = s.list(limit=6, cursor=cursor)
        assert page.total == 18 + added and len(page.items) <= 6
        seen += [r["id"] for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        s.save(_r(f"new{len(seen)}"))  # newer responses never show up in later pages
        added += 1
    assert seen == [f"r{i:02d}" for i in reversed(range(20)) if i not in (5, 17)]
    item = s.list(limit=1).items[0]
    assert item == s.get(item.id) and item.created_at.endswith("Z") and "created_at" not in item
    assert item.to_dict()["data"] == s.get(item.id)
    for bad in ("garbage", "WyJzZXNzaW9ucyIsNV0", 5):
        with pytest.raises(InvalidInput):
            s.list(cursor=bad)
    for bad in (0, -1, 10_001, 2.5, "5"):
        with pytest.raises(InvalidInput):
            s.list(limit=bad)
    assert ResponseStore(store_target, tenant="empty").list().items == []


def _ids(target: str, tenant: str = "default") -> set[str]:
    return {r[1] for r in rows(target) if r[0] == tenant}


def test_cap_evicts_least_recently_used_whole_chains(store_target: str, caplog) -> None:
    s = ResponseStore(store_target, max_responses=6)
    s.save_many([_r("a1"), _r("a2", "a1"), _r("a3", "a2")])  # chain a: 3
    s.save_many([_r("b1"), _r("b2", "b1")])  # chain b: 2
    s.save(_r("c1"))  # chain c: 1 -> 6 in all, at the cap
    assert len(rows(store_target)) == 6
    s.get("a2")  # a read makes chain a the most recently used: b is now the least
    with caplog.at_level(logging.INFO, logger="agentstate.responses"):
        info = s.save(_r("c2", "c1"))  # 7 > 6: evict b (whole)
    assert info.evicted == ["b1"]
    assert _ids(store_target) == {"a1", "a2", "a3", "c1", "c2"}
    assert any("evicted response chain 'b1' (2 response(s))" in r.getMessage() for r in caplog.records)
    for gone in ("b1", "b2"):
        with pytest.raises(NotFound):
            s.get_for_chain(gone)
    with pytest.raises(NotFound):
        s.save(_r("b3", "b2"))  # an evicted chain cannot be continued
    s.chain("c2")  # c used
    s.delete("a3")  # soft-deleted responses still count: they serve chains
    s.save_many([_r("d1"), _r("d2", "d1")])  # 7 > 6: a is least recently used -> evicted whole (3)
    assert _ids(store_target) == {"c1", "c2", "d1", "d2"}
    # Never the chain just saved to: one long chain may exceed the cap alone.
    s.save_many([_r("e1")] + [_r(f"e{i}", f"e{i - 1}") for i in range(2, 10)])
    assert _ids(store_target) == {f"e{i}" for i in range(1, 10)}
    assert [r["id"] for r in s.chain("e9")] == [f"e{i}" for i in range(1, 10)]
    # Other tenants are never touched by this tenant's cap.
    other = ResponseStore(store_target, tenant="other")
    other.save_many([_r(f"o{i}") for i in range(10)])
    s.save(_r("e10", "e9"))
    assert len(_ids(store_target, "other")) == 10


def test_reads_count_as_use(store_target: str) -> None:
    s = ResponseStore(store_target, max_responses=2)
    s.save(_r("x"))
    s.save(_r("y"))
    for _ in range(3):
        s.get("x")  # x becomes most recently used once; the repeats find it already so
    s.save(_r("z"))  # evicts y, not x
    assert _ids(store_target) == {"x", "z"}
    s.chain("x")
    s.save(_r("w"))
    assert _ids(store_target) == {"x", "w"}
    s.get_for_chain("x")
    s.save(_r("v"))
    assert _ids(store_target) == {"x", "v"}
    s.list()  # listing is browsing, not use
    s.save(_r("u"))
    assert _ids(store_target) == {"v", "u"}


def test_long_chain_rebuilds_in_one_query(store_target: str) -> None:
    n = 10_000
    s = ResponseStore(store_target)
    s.save_many([_r("m0", k=0)] + [_r(f"m{i}", f"m{i - 1}", k=i) for i in range(1, n)])
    statements: list[str] = []
    if not is_pg(store_target):
        s.get("m0")  # opens the connection (one, idle in the pool: the next call takes it)
        assert len(s.db._idle) == 1
        s.db._idle[0].set_trace_callback(statements.append)
    chain = s.chain(f"m{n - 1}")
    assert len(chain) == n and [r["k"] for r in chain] == list(range(n))
    assert chain[0] == _r("m0", k=0) and chain[-1]["previous_response_id"] == f"m{n - 2}"
    if not is_pg(store_target):
        queries = [q for q in statements if "responses" in q]
        assert len(queries) == 1 and "WITH RECURSIVE" in queries[0], statements


def _damage(target: str, sql: str, **params) -> None:
    raw(target, sql, **params)


def test_cycle_and_missing_link_in_a_damaged_database(store_target: str) -> None:
    s = ResponseStore(store_target)
    s.save_many([_r("a"), _r("b", "a"), _r("c", "b"), _r("d", "c")])
    s.save_many([_r("p"), _r("q", "p")])
    assert all(f["ok"] for f in check_responses(store_target))
    # A cycle: a's link points at c (as if the database had been edited), so c -> b -> a -> c ...
    seq_c = raw(store_target, "SELECT seq FROM responses WHERE id = 'c'")[0][0]
    _damage(store_target, "UPDATE responses SET previous_id = 'c', previous_seq = :s, depth = 3 WHERE id = 'a'",
            s=seq_c)
    with pytest.raises(StateCorrupted, match="cycle") as e:
        s.chain("d")
    assert e.value.exit_code == 4
    # A missing link: p's row is gone.
    _damage(store_target, "DELETE FROM responses WHERE id = 'p'")
    with pytest.raises(StateCorrupted, match="missing"):
        s.chain("q")
    findings = [f for f in check_responses(store_target) if not f["ok"]]
    text = " ".join(f["detail"] for f in findings)
    assert "cycle" in text and "'q'" in text and "'p'" in text, findings
    assert all(set(f) >= {"check", "ok", "detail"} for f in findings)


def test_missing_store_reads_as_empty(tmp_path) -> None:
    s = ResponseStore(str(tmp_path / "none"))
    with pytest.raises(NotFound):
        s.get("a")
    assert s.list().items == [] and s.list().total == 0
    assert not (tmp_path / "none").exists()  # reads create nothing


def test_a_damaged_body_is_state_corrupted(store_target: str) -> None:
    s = ResponseStore(store_target)
    s.save_many([_r("a"), _r("b", "a"), _r("c", "b")])
    raw(store_target, "UPDATE responses SET body = '{broken' WHERE id = 'b'")
    for call in (s.get, s.get_for_chain):
        with pytest.raises(StateCorrupted, match="'b'"):
            call("b")
    with pytest.raises(StateCorrupted, match="'b'"):
        s.chain("c")
    assert s.get("a") == _r("a")


def test_a_read_in_another_process_counts_once_recorded(store_target: str) -> None:
    """Reads queue their use: another store (process) sees it after close(), or after a later read
    once a second has passed; until then its eviction may not."""
    import time

    from agentstate.responses.store import USE_FLUSH_INTERVAL

    writer = ResponseStore(store_target, max_responses=2)
    writer.save(_r("x"))
    writer.save(_r("y"))
    reader = ResponseStore(store_target)
    reader.get("x")
    reader.close()  # records the use
    writer.save(_r("z"))  # evicts y (least recently used), not x
    assert _ids(store_target) == {"x", "z"}
    reader = ResponseStore(store_target)
    reader.chain("x")  # queued
    time.sleep(USE_FLUSH_INTERVAL + 0.1)
    reader.get("x")  # a read a second later writes the queue
    writer.save(_r("w"))  # evicts z, not x
    assert _ids(store_target) == {"x", "w"}
    reader.close()
    writer.close()
