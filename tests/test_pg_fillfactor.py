"""Schema version 8 on PostgreSQL: the rows every write rewrites (the state document's, a session's on
each append, its tags' copies of updated_at) stay on their page. Without a fill-factor reserve, rows of
about 0.8 to 2 KB could leave too little room for their next version on a page that PostgreSQL did not
yet prune: the version went to a new page, and the heap grew by a page every few writes until a vacuum
(agentstate/sql/schema.py, docs/format.md). Each test below grew its table to 67-101 pages on schema
version 7; the heap's size is read directly (no statistics to wait for)."""

from __future__ import annotations

import random

import pytest
from pgserver import schema_at_version
from pgserver import schema_sql as sql

from agentstate import SessionStore, StateStore
from agentstate.sql.pg import split_url
from agentstate.sql.schema import SCHEMA_VERSION

TABLES = ("state_documents", "sessions", "session_tags")
# One page is what each test leaves; the slack is for another backend's snapshot (an autovacuum ANALYZE
# of some other table, say) that keeps a few of the dead versions from being pruned for a moment.
# Schema version 7 left 67-101 pages.
MOST_PAGES = 12
U = {"role": "user", "content": "hi"}


def _heap(url: str, table: str) -> tuple[int, str | None]:
    """(pages of ``table``'s heap, its reloptions)."""
    _, schema = split_url(url)
    (pages, options), = sql(url, "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, "
                            "array_to_string(c.reloptions, ',') FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = %s", (table, schema))
    return pages, options


@pytest.mark.parametrize("records", [4, 12, 24])  # documents of ~1, 3 and 6 KB
def test_the_state_documents_row_stays_on_its_page(pg_schema_url, records):
    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        st.resources.update({f"agent.a{i:06d}": {
            "kind": "agent", "model": f"model-{i % 17}", "n": i, "temperature": 0.25 + (i % 4) / 10,
            "tags": ["worker", f"shard-{i % 8}", "v2"],
            "config": {"retries": 3, "timeout_s": 30, "prompt": f"task {i} " + "x" * 90}} for i in range(records)})
    for n in range(400):
        with store.transaction() as st:
            st.resources["counter"] = n
    pages, options = _heap(pg_schema_url, "state_documents")
    assert pages <= MOST_PAGES, f"state_documents grew to {pages} pages in 400 transactions"
    assert options == "fillfactor=75"
    assert store.read().resources["counter"] == 399


def _text(chars: int, alphabet: str) -> str:
    rng = random.Random(chars)
    return "".join(rng.choice(alphabet) for _ in range(chars))


@pytest.mark.parametrize("metadata", [
    {"note": _text(1500, "abcdefghij klmnopqrstuvwxyz")},  # 1.5 KB, not filterable (over 1,024 characters)
    {"note": _text(1000, "abcdefghij klmnopqrstuvwxyz")},  # filterable: a tag row of its own too
    {"note": _text(600, "éàüößçñ一二三四五六七八九十")},  # 600 characters, ~1.4 KB of UTF-8: a tag row as large
], ids=["1500-ascii", "1000-ascii-tagged", "600-multibyte-tagged"])
def test_appends_keep_a_session_with_metadata_on_its_page(pg_schema_url, metadata):
    with SessionStore(pg_schema_url) as s:
        s.create("a", metadata=metadata)
        for _ in range(400):
            s.append("a", [U])
        assert s.get("a").item_count == 400
        assert s.get("a").metadata == metadata
    for table in ("sessions", "session_tags"):
        pages, options = _heap(pg_schema_url, table)
        assert pages <= MOST_PAGES, f"{table} grew to {pages} pages in 400 appends"
        assert options == "fillfactor=75"


def test_a_version_7_schema_is_given_the_fillfactor(pg_schema_url):
    schema_at_version(pg_schema_url, 7)
    assert [_heap(pg_schema_url, t)[1] for t in TABLES] == [None, None, None]
    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        st.resources["a"] = 1
    assert [_heap(pg_schema_url, t)[1] for t in TABLES] == ["fillfactor=75"] * 3
    assert sql(pg_schema_url, "SELECT max(version) FROM schema_migrations") == [(SCHEMA_VERSION,)]
    assert store.read().resources == {"a": 1}
