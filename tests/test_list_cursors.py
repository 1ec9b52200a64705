"""List cursors reveal nothing beyond the caller's own rows (issue 15 item 11): a responses cursor was
base64 of the global seq, so two cursors told a tenant how many responses other tenants saved in
between. On every backend."""

from __future__ import annotations

import base64

import orjson
import pytest
from responses_raw import raw

import agentstate.responses.store as responses_module
from agentstate import ResponseStore, SessionStore


def decoded(cursor: str) -> list:
    return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """Set the time the next save is stamped with: ``clock.now = ...``."""
    class Clock:
        now = "2026-01-01T00:00:00.000000Z"

    monkeypatch.setattr(responses_module, "_utcnow", lambda: Clock.now)
    return Clock


def _pages(target: str, clock, others: int) -> tuple[list[str], dict[str, str]]:
    """Tenant a saves five responses, tenant b ``others`` before each; a's cursors (limit 2) and times."""
    times = {}
    with ResponseStore(target, tenant="a") as a, ResponseStore(target, tenant="b") as b:
        for i in range(5):
            clock.now = f"2026-01-01T00:00:{i:02d}.000000Z"
            for j in range(others):
                b.save({"id": f"b{i}-{j}"})
            times[f"r{i}"] = a.save({"id": f"r{i}"}).created_at
        cursors, page = [], a.list(limit=2)
        while page.next_cursor:
            cursors.append(page.next_cursor)
            page = a.list(limit=2, cursor=page.next_cursor)
    return cursors, times


def test_responses_cursor_bytes_do_not_depend_on_other_tenants(store_target: str, clock) -> None:
    alone, times = _pages(store_target, clock, 0)
    for table in ("responses", "response_chains"):
        raw(store_target, f"DELETE FROM {table}")
    crowded, _ = _pages(store_target, clock, 7)  # b saves 7 between each two of a's
    assert crowded == alone and len(alone) == 2
    assert [decoded(c) for c in alone] == [["responses", times["r3"], "r3"], ["responses", times["r1"], "r1"]]


def test_responses_paging_goes_on_when_the_cursor_row_was_evicted(store_target: str, clock) -> None:
    with ResponseStore(store_target, tenant="a") as a:
        for i in range(5):
            clock.now = f"2026-01-01T00:00:{i:02d}.000000Z"
            a.save({"id": f"r{i}"})
        first = a.list(limit=2)
        assert [r.id for r in first.items] == ["r4", "r3"]
        raw(store_target, "DELETE FROM responses WHERE id = 'r3'")
        second = a.list(limit=2, cursor=first.next_cursor)
        assert [r.id for r in second.items] == ["r2", "r1"]
        assert [r.id for r in a.list(limit=2, cursor=second.next_cursor).items] == ["r0"]


def test_session_cursors_hold_only_the_callers_own_row(store_target: str) -> None:
    with SessionStore(store_target, tenant="a") as a, SessionStore(store_target, tenant="b") as b:
        for i in range(3):
            a.create(f"s{i}")
            b.create(f"x{i}")
        page = a.list(limit=2)
        last = page.items[-1]
        assert decoded(page.next_cursor) == ["sessions", last.updated_at, last.id]
