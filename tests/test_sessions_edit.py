"""SessionStore's item-level calls (agentstate/sessions_edit.py) on every backend: delete_item keeps
the other items' seqs, get_item, item_page both orders, update_metadata, start, list_after."""

from __future__ import annotations

import pytest

from agentstate import ConflictError, InvalidInput, NotFound, SessionStore


def _texts(items) -> list[str]:
    return [it.data["content"] for it in items]


def test_delete_item_keeps_the_other_seqs(store_target: str) -> None:
    s = SessionStore(store_target, tenant="t")
    items = s.append("c", [{"role": "user", "content": str(i)} for i in range(5)])
    gone = s.delete_item("c", items[2].id)
    assert gone == items[2]
    assert [(it.seq, it.data["content"]) for it in s.items("c")] == [(1, "0"), (2, "1"), (4, "3"), (5, "4")]
    assert s.get("c").item_count == 4
    # the last one: its seq is free again, like pop
    s.delete_item("c", items[4].id)
    assert s.append("c", [{"role": "user", "content": "new"}])[0].seq == 5
    assert s.pop("c").data["content"] == "new"
    assert s.pop("c").seq == 4 and s.pop("c").seq == 2  # pop steps over the gap
    assert s.get("c").item_count == 1
    assert s.append("c", [{"role": "user", "content": "after"}])[0].seq == 2
    with pytest.raises(NotFound):
        s.delete_item("c", items[2].id)
    with pytest.raises(NotFound):
        s.delete_item("nope", items[0].id)
    with pytest.raises(InvalidInput):
        s.delete_item("c", "")
    assert SessionStore(store_target, tenant="other").append("c", [{"role": "user", "content": "o"}])
    with pytest.raises(NotFound):  # another tenant's item
        SessionStore(store_target, tenant="other").delete_item("c", items[0].id)
    assert _texts(s.items("c")) == ["0", "after"]


def test_get_item_and_pages(store_target: str) -> None:
    s = SessionStore(store_target, tenant="t")
    items = s.append("c", [{"role": "user", "content": str(i)} for i in range(7)])
    assert s.get_item("c", items[3].id) == items[3]
    with pytest.raises(NotFound):
        s.get_item("c", "missing")
    with pytest.raises(NotFound, match="session"):
        s.get_item("other", items[3].id)
    page, more = s.item_page("c", 3, order="asc")
    assert _texts(page) == ["0", "1", "2"] and more
    page, more = s.item_page("c", 3, after_id=page[-1].id, order="asc")
    assert _texts(page) == ["3", "4", "5"] and more
    page, more = s.item_page("c", 3, after_id=page[-1].id, order="asc")
    assert _texts(page) == ["6"] and not more
    page, more = s.item_page("c", 4, order="desc")
    assert _texts(page) == ["6", "5", "4", "3"] and more
    page, more = s.item_page("c", 4, after_id=page[-1].id, order="desc")
    assert _texts(page) == ["2", "1", "0"] and not more
    with pytest.raises(InvalidInput):
        s.item_page("c", 0)
    with pytest.raises(InvalidInput):
        s.item_page("c", 3, order="up")
    with pytest.raises(NotFound):
        s.item_page("c", 3, after_id="missing")


def test_update_metadata_start_and_list_after(store_target: str) -> None:
    s = SessionStore(store_target, tenant="t")
    info = s.start("a", [{"role": "user", "content": "first words"}], {"k": "v"})
    assert info.metadata == {"k": "v"} and info.item_count == 1 and info.title == "first words"
    with pytest.raises(ConflictError):
        s.start("a", [{"role": "user", "content": "again"}])
    with pytest.raises(InvalidInput):  # nothing is created by a bad item
        s.start("b", [{"role": "user", "content": ""}])
    with pytest.raises(NotFound):
        s.get("b")
    assert s.start("empty").item_count == 0
    assert s.update_metadata("a", {"x": "y"}).metadata == {"x": "y"}
    assert s.get("a").metadata == {"x": "y"}
    assert s.update_metadata("a", None).metadata is None
    with pytest.raises(NotFound):
        s.update_metadata("nope", {})
    with pytest.raises(InvalidInput):
        s.update_metadata("a", ["x"])  # type: ignore[arg-type]
    first = s.list(1)
    rest = s.list_after(first.items[0].id, 10)
    assert [i.id for i in first.items + rest.items] == [i.id for i in s.list(10).items]


def test_item_edits_are_writes_that_bump_the_version(store_target: str) -> None:
    """delete_item and update_metadata change the session: a version read before no longer matches, and
    their stamps are taken under the lock (updated_at never goes backwards)."""
    store = SessionStore(store_target)
    items = store.append("v", [{"type": "n", "i": i} for i in range(3)])
    v0 = store.get("v")
    store.delete_item("v", items[1].id)
    v1 = store.get("v")
    assert v1.version > v0.version and v1.updated_at >= v0.updated_at and v1.item_count == 2
    store.update_metadata("v", {"k": "x"})
    v2 = store.get("v")
    assert v2.version > v1.version and v2.updated_at >= v1.updated_at and v2.metadata == {"k": "x"}
    with pytest.raises(ConflictError):
        store.append("v", [{"type": "late"}], expect_version=v1.version)
    assert [i.seq for i in store.items("v")] == [1, 3]
    store.close()
