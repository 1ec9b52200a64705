"""Issue 17 on PostgreSQL, schema version 7: an append updates its session row in place (a HOT update: no
new index entries, no heap growth between vacuums), because sessions_recent indexes the minute of
updated_at (the generated column ``recent``), not updated_at itself, and so do its tags' rows (session_tags,
for the metadata filters); a lookup of one session (or one response) takes its unique key even on a table the planner has no statistics for; list pages, and prune
selects, exactly as they did by (updated_at, id), across minutes and within one."""

from __future__ import annotations

import calendar
import time

import pytest
from pgserver import schema_at_version, schema_conn
from pgserver import schema_sql as sql

from agentstate import SessionStore
from agentstate.sql.pg import split_url
from agentstate.sql.schema import SCHEMA_VERSION

U = {"role": "user", "content": "hi"}


def updates(url: str, table: str, at_least: int) -> tuple[int, int]:
    """(updates, of which HOT) of the schema's ``table``, once the statistics collector has ``at_least``
    (the backends flush their counts when they end; the collector may take a moment)."""
    _, schema = split_url(url)
    deadline = time.monotonic() + 20
    while True:
        row = sql(url, "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = %s "
                  "AND relname = %s", (schema, table))
        got = (int(row[0][0]), int(row[0][1])) if row else (0, 0)
        if got[0] >= at_least or time.monotonic() > deadline:
            return got


def test_appends_update_the_session_row_in_place(pg_schema_url):
    with SessionStore(pg_schema_url) as s:
        s.append("a", [U])  # creates the row
        for _ in range(60):
            s.append("a", [U])
        s.append("b", [U], idempotency_key="k1")  # the general path too
        for i in range(20):
            s.append("b", [U], idempotency_key=f"k{i + 2}")
    upd, hot = updates(pg_schema_url, "sessions", 80)
    assert upd >= 80
    # Not all: a minute's turn during the test makes one update per session non-HOT, and so does a full
    # page when another connection's snapshot keeps the old versions from being pruned. Before schema
    # version 7 none was.
    assert hot >= 0.8 * upd, f"{hot} of {upd} updates were HOT"
    assert sql(pg_schema_url, "SELECT id, recent = left(updated_at, 16) FROM sessions ORDER BY id") == [
        ("a", True), ("b", True)]


def test_appends_update_a_sessions_tags_in_place_too(pg_schema_url):
    """An append to a session with metadata moves its tags' copy of updated_at (session_tags_find's
    order): those updates are HOT too, as the session row's."""
    with SessionStore(pg_schema_url) as s:
        s.create("m", metadata={"agent": "a1", "team": "x"})
        for _ in range(40):
            s.append("m", [U])
        assert [i.id for i in s.list(where={"agent": "a1"}).items] == ["m"]
    upd, hot = updates(pg_schema_url, "session_tags", 80)
    assert upd >= 80 and hot >= 0.8 * upd, f"{hot} of {upd} updates were HOT"
    assert sql(pg_schema_url, "SELECT key, recent = left(updated_at, 16) FROM session_tags ORDER BY key") == [
        ("agent", True), ("team", True)]


def test_one_session_is_looked_up_by_its_primary_key_on_a_new_table(pg_schema_url):
    """Before any ANALYZE, the planner's estimates tie between the primary key and a recency index
    that starts with tenant: it used to take the latter, reading every session of the tenant per append."""
    with SessionStore(pg_schema_url) as s:
        s.append("a", [U])
        for i in range(30):
            s.create(f"s{i}")
    assert sql(pg_schema_url, "SELECT last_analyze, last_autoanalyze FROM pg_stat_user_tables "
               "WHERE relname = 'sessions' AND schemaname = %s", (split_url(pg_schema_url)[1],)) == [(None, None)]
    for query in ("SELECT * FROM sessions WHERE tenant = $1 AND id = $2",
                  "UPDATE sessions SET last_seq = last_seq + 1 WHERE tenant = $1 AND id = $2 AND expires_at IS NULL",
                  "SELECT 1 FROM ONLY sessions x WHERE tenant = $1 AND id = $2 FOR KEY SHARE OF x"):
        with schema_conn(pg_schema_url) as conn:
            conn.execute("SET plan_cache_mode = force_generic_plan")  # as a function's cached plan is
            conn.execute(f"PREPARE q(text, text) AS {query}")
            conn.execute("BEGIN")
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN EXECUTE q('default', 'a')").fetchall())
            conn.execute("ROLLBACK")
        assert "sessions_pkey" in plan and "sessions_recent" not in plan, plan


def test_one_response_is_looked_up_by_its_unique_key_on_a_new_table(pg_schema_url):
    """The same tie on responses: a lookup by (tenant, id) took responses_by_root (every response of
    the tenant); from schema version 7 the tenant-first indexes are partial, so it cannot."""
    from agentstate import ResponseStore

    with ResponseStore(pg_schema_url) as r:
        r.save({"id": "r0", "output": []})
        for i in range(1, 30):
            r.save({"id": f"r{i}", "previous_response_id": f"r{i - 1}", "output": []})
        assert [x["id"] for x in r.chain("r29")][:2] == ["r0", "r1"]
        assert [x["id"] for x in r.list(limit=3).items] == ["r29", "r28", "r27"]
    with schema_conn(pg_schema_url) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE q(text, text) AS SELECT root_id, depth, seq FROM responses WHERE tenant = $1 AND id = $2")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN EXECUTE q('default', 'r3')").fetchall())
    assert "responses_tenant_id_key" in plan, plan


def _at(url: str, stamps: dict[str, str]) -> None:
    for sid, at in stamps.items():
        sql(url, "UPDATE sessions SET updated_at = %s WHERE id = %s", (at, sid))


def test_list_pages_by_updated_at_and_id_across_minutes_and_within_one(pg_schema_url):
    stamps = {
        "a": "2026-03-01T10:00:00.000000Z", "b": "2026-03-01T10:00:59.999999Z",
        "c": "2026-03-01T10:00:59.999999Z", "d": "2026-03-01T10:01:00.000000Z",
        "e": "2026-03-01T10:01:30.000000Z", "f": "2026-03-01T09:59:59.999999Z",
        "g": "2026-03-02T00:00:00.000000Z", "h": "2026-03-01T10:00:30.000000Z",
        "i": "2026-03-01T10:00:30.000000Z", "j": "2025-12-31T23:59:59.999999Z",
    }
    with SessionStore(pg_schema_url) as s:
        for sid in stamps:
            s.create(sid)
        _at(pg_schema_url, stamps)
        expected = sorted(stamps, key=lambda sid: (stamps[sid], sid), reverse=True)
        for limit in (1, 2, 3, 4, 50):
            seen, cursor = [], None
            while True:
                page = s.list(limit=limit, cursor=cursor)
                seen += [info.id for info in page.items]
                assert page.total == len(stamps)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert seen == expected, limit
        # an append moves its session to the front, in place (recent follows updated_at)
        s.append("j", [U])
        assert s.list(limit=1).items[0].id == "j"
        assert sql(pg_schema_url, "SELECT recent FROM sessions WHERE id = 'a'") == [("2026-03-01T10:00",)]


def test_prune_cuts_in_the_middle_of_a_minute(pg_schema_url):
    stamps = {"f": "2001-03-01T09:59:59.999999Z", "a": "2001-03-01T10:00:00.000000Z",
              "b": "2001-03-01T10:00:29.900000Z", "h": "2001-03-01T10:00:31.000000Z",
              "i": "2001-03-01T10:00:59.000000Z", "d": "2001-03-01T10:01:00.000000Z", "g": "2001-03-02T00:00:00.000000Z"}
    with SessionStore(pg_schema_url) as s:
        for sid in stamps:
            s.create(sid)
        _at(pg_schema_url, stamps)
        age = time.time() - calendar.timegm((2001, 3, 1, 10, 0, 30, 0, 0, 0)) - 0.5  # cutoff 10:00:30.5 (and a bit)
        assert sorted(s.prune(older_than=age, dry_run=True)) == ["a", "b", "f"]
        assert sorted(s.prune(older_than=age)) == ["a", "b", "f"]
        assert [i.id for i in s.list().items] == ["g", "d", "i", "h"]


def test_a_version_6_schema_gets_the_minute_column_and_lists_as_before(pg_schema_url):
    schema_at_version(pg_schema_url, 6)
    _, schema = split_url(pg_schema_url)
    sql(pg_schema_url, "INSERT INTO sessions (tenant, id, created_at, updated_at, version) VALUES "
        "('default', 'old', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', 1), "
        "('default', 'older', '2025-01-01T00:00:00.000000Z', '2025-01-01T00:05:00.000000Z', 2)")
    sql(pg_schema_url, "INSERT INTO session_counts (tenant, sessions) VALUES ('default', 2)")
    with SessionStore(pg_schema_url) as s:
        assert [i.id for i in s.list().items] == ["old", "older"]
        s.append("older", [U])
        assert [i.id for i in s.list().items] == ["older", "old"]
    assert sql(pg_schema_url, "SELECT id, recent FROM sessions WHERE id = 'old'") == [("old", "2026-01-01T00:00")]
    assert sql(pg_schema_url, "SELECT max(version) FROM schema_migrations") == [(SCHEMA_VERSION,)]
    (definition,), = sql(pg_schema_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'sessions_recent' "
                         "AND schemaname = %s", (schema,))
    assert definition.endswith("USING btree (tenant, recent DESC) WHERE (recent IS NOT NULL)"), definition


@pytest.mark.parametrize("same_minute", [True, False])
def test_many_sessions_in_one_minute_still_page_exactly(pg_schema_url, same_minute):
    """A minute holds many sessions (a burst): the page is sorted within it, nothing repeated or lost;
    the same through a metadata filter (session_tags_find, which orders by its own copy of the time)."""
    with SessionStore(pg_schema_url) as s:
        ids = [f"s{i:03d}" for i in range(120)]
        for i, sid in enumerate(ids):
            s.create(sid, metadata={"agent": "a", "parity": i % 2})
        stamps = {sid: (f"2026-05-05T05:05:{i % 60:02d}.{i:06d}Z" if same_minute
                        else f"2026-05-05T05:{i % 60:02d}:00.000000Z") for i, sid in enumerate(ids)}
        _at(pg_schema_url, stamps)
        for sid, at in stamps.items():
            sql(pg_schema_url, "UPDATE session_tags SET updated_at = %s WHERE session_id = %s", (at, sid))
        expected = sorted(ids, key=lambda sid: (stamps[sid], sid), reverse=True)
        for where, want in ((None, expected), ({"agent": "a"}, expected),
                            ({"agent": "a", "parity": 1}, [sid for sid in expected if int(sid[1:]) % 2])):
            seen, cursor = [], None
            while True:
                page = s.list(limit=7, cursor=cursor, where=where)
                assert page.total == len(want)
                seen += [info.id for info in page.items]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert seen == want, where
