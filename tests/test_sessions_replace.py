"""SessionStore.replace_items (what the Agents SDK's compaction uses), on both backends: one
transaction, seqs stay 1..n, a stale expectation changes nothing, and append(check_items=False)."""

from __future__ import annotations

import pytest

from agentstate import ConflictError, InvalidInput, NotFound, SessionStore


def texts(store: SessionStore, sid: str) -> list[tuple[int, str]]:
    return [(i.seq, i.data["t"]) for i in store.items(sid)]


def test_replace_tail_with_expectation_and_prune(store_target: str) -> None:
    store = SessionStore(store_target)
    stored = store.append("s", [{"t": f"h{i}"} for i in range(6)])
    ids = [i.id for i in stored]
    with pytest.raises(ConflictError):  # not the current tail: nothing changes
        store.replace_items("s", [{"t": "x"}], start=4, expect_ids=ids[3:5])
    with pytest.raises(ConflictError):
        store.replace_items("s", [{"t": "x"}], start=4, expect_ids=[ids[3], ids[5], ids[4]])
    assert texts(store, "s") == [(i + 1, f"h{i}") for i in range(6)]
    new = store.replace_items("s", [{"t": "sum"}], start=4, expect_ids=ids[3:],
                              prune=lambda d: d["t"] in ("h0", "h2"))  # h1 stops the run: only h0 goes
    assert [(i.seq, i.data["t"]) for i in new] == [(3, "sum")]
    assert texts(store, "s") == [(1, "h1"), (2, "h2"), (3, "sum")]
    assert store.get("s").item_count == 3
    store.append("s", [{"t": "next"}])
    assert store.pop("s").data["t"] == "next"
    assert texts(store, "s")[-1] == (3, "sum")
    store.replace_items("s", [{"t": "all"}, {"t": "new"}])  # the whole history
    assert texts(store, "s") == [(1, "all"), (2, "new")]
    store.replace_items("s", [], prune=lambda d: True)
    assert store.items("s") == [] and store.get("s").item_count == 0
    store.close()


def test_replace_creates_and_refuses(store_target: str) -> None:
    store = SessionStore(store_target)
    assert [i.seq for i in store.replace_items("fresh", [{"t": "a"}])] == [1]
    with pytest.raises(ConflictError):  # beyond the end
        store.replace_items("fresh", [{"t": "b"}], start=3)
    with pytest.raises(InvalidInput):  # a message shape the store refuses, unless check_items=False
        store.replace_items("fresh", [{"role": "user", "content": ""}])
    assert texts(store, "fresh") == [(1, "a")]
    store.replace_items("fresh", [{"role": "user", "content": ""}], check_items=False)
    assert store.items("fresh")[0].data == {"role": "user", "content": ""}
    with pytest.raises(NotFound):
        store.items("other")
    store.close()


def test_append_check_items_false(store_target: str) -> None:
    store = SessionStore(store_target)
    odd = [{"role": "assistant", "content": []}, {"role": "wizard", "content": " "}, {"role": "user"}]
    with pytest.raises(InvalidInput):
        store.append("o", odd)
    store.append("o", odd, check_items=False)
    assert [i.data for i in store.items("o")] == odd
    with pytest.raises(InvalidInput):  # still strict JSON
        store.append("o", [{"x": float("nan")}], check_items=False)
    store.close()


def test_replace_is_a_write_that_bumps_the_version(store_target: str) -> None:
    """A replace changes the session: expect_version read before it no longer matches (issue 15 item 9)."""
    store = SessionStore(store_target)
    store.append("s", [{"t": "a"}, {"t": "b"}])
    before = store.get("s")
    store.replace_items("s", [{"t": "c"}], start=2)
    after = store.get("s")
    assert after.version > before.version and after.updated_at >= before.updated_at
    with pytest.raises(ConflictError):
        store.append("s", [{"t": "late"}], expect_version=before.version)
    assert texts(store, "s") == [(1, "a"), (2, "c")]
    store.close()
