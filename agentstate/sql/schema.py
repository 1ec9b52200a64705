"""Schema versions of agentstate.db (and of the PostgreSQL schema).

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``: a dict of statement lists per
dialect. SQLite records the version in ``PRAGMA user_version``; PostgreSQL in a table
``schema_migrations(version, applied_at)``. Migrations run under the writer lock (SQLite) or an
advisory lock (PostgreSQL), each in its own transaction. A database whose version is newer than
``SCHEMA_VERSION`` is refused with FormatTooNew and never touched.

Version 1 holds the tables of sessions and of responses (nothing had shipped before it).
Version 2 adds ``sessions.version`` (changes on every write to the session: ``append(expect_version=)``
detects a pop followed by an append, which ``expect_seq`` cannot) and ``session_counts.clock`` (the
tenant's counter those versions are drawn from, so a version is never repeated for a session id, even
across a delete and a re-create).
Version 3 (PostgreSQL only; SQLite just records the number) adds the sequences ``session_versions`` and
``response_seqs``: writers of different sessions and chains no longer share a lock (issue 17).
Versions 4 to 6 (on PostgreSQL) create and replace the append function ``agentstate_append``;
version 6 also makes ``sessions_expiry`` partial there. On SQLite, version 6 adds the trigger
``sessions_retire_version`` (an append to an existing session no longer bumps the tenant's clock).
Version 7 (PostgreSQL) indexes the minute of ``updated_at`` (``recent``), so appends update in place;
version 8 (PostgreSQL) sets fillfactor 75 on the tables whose rows are rewritten (state, sessions, tags)
and adds the sequence ``state_flushes`` (the flush after a state transaction, q_state.FLUSH).

Timestamps are ISO-8601 UTC text with microseconds and a 'Z' (``2026-01-02T03:04:05.123456Z``), so
text order is time order. JSON payloads are TEXT holding the exact bytes of ``codec.encode_value``.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatTooNew

# --- the file (SQLite) -----------------------------------------------------------------------------------

# A new database's page size. An append writes about four pages (its item's row, its seq index, the
# session's row, the recency index), each a whole WAL frame that the commit's sync must put on disk: at
# 2 KiB that is about 8 KiB less per append than at SQLite's default 4 KiB, with items up to ~100 KB
# written and read as fast, and a 1 MB item ~1.2x slower (1 KiB pages would save 4 KiB more, but make
# a 1 MB item 1.4x slower to write and 1.7x to read: docs/performance.md). A database keeps the page
# size it was created with.
PAGE_SIZE = 2048
WAL_CHECKPOINT_BYTES = 4 << 20  # SQLite's own auto-checkpoint (1,000 pages of 4 KiB), kept at any page size


def file_pragmas(conn: Any, page_size: int | None = None) -> None:
    """Per SQLite connection: the WAL's auto-checkpoint at WAL_CHECKPOINT_BYTES whatever the page size
    (``page_size``: the database's, else read), so smaller pages do not checkpoint more often."""
    import sqlite3

    try:
        size = page_size or conn.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error:  # not a database, say: reported where it was, by the statement that needs one
        return
    if size != 4096:
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, WAL_CHECKPOINT_BYTES // size):d}")


# --- version 1: sessions ------------------------------------------------------------------------------

_SESSIONS_V1 = [
    # One row per session. last_seq is the highest seq present (0 when empty), item_count the number
    # of items (less than last_seq once an item was deleted from the middle: delete_item keeps the
    # others' seqs). An append reads this row, never the history.
    """CREATE TABLE sessions (
        tenant     TEXT NOT NULL,
        id         TEXT NOT NULL,
        title      TEXT,
        metadata   TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_seq   BIGINT NOT NULL DEFAULT 0,
        item_count BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, id)
    )""",
    "CREATE INDEX sessions_recent ON sessions (tenant, updated_at DESC, id DESC)",
    """CREATE TABLE session_items (
        tenant     TEXT NOT NULL,
        session_id TEXT NOT NULL,
        seq        BIGINT NOT NULL,
        id         TEXT NOT NULL,
        created_at TEXT NOT NULL,
        data       TEXT NOT NULL,
        PRIMARY KEY (tenant, session_id, seq),
        FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
    )""",
    # Idempotency keys of appends: the ids of the items the first append stored.
    """CREATE TABLE session_appends (
        tenant     TEXT NOT NULL,
        session_id TEXT NOT NULL,
        key        TEXT NOT NULL,
        first_seq  BIGINT NOT NULL,
        item_ids   TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (tenant, session_id, key),
        FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
    )""",
    # The number of sessions per tenant, kept by the writes that create and delete sessions, so that
    # list()'s total costs one row, not a count over every session.
    """CREATE TABLE session_counts (
        tenant   TEXT NOT NULL PRIMARY KEY,
        sessions BIGINT NOT NULL
    )""",
]

# --- version 1: responses (the responses store adds its tables here) -----------------------------------

def _responses_v1(seq_type: str) -> list[str]:
    # One row per response (statements and column meanings: agentstate/sql/q_responses.py). body is
    # the exact codec bytes; root_id names the chain (its root's id), so a whole chain is evicted by
    # (tenant, root_id); depth bounds the chain walk, which follows previous_seq (the previous
    # response's seq). seq is global and never reused; in SQLite it is the rowid (INTEGER PRIMARY
    # KEY), so each step of the walk is one integer b-tree search.
    return [
        f"""CREATE TABLE responses (
            seq         {seq_type} PRIMARY KEY,
            tenant      TEXT NOT NULL,
            id          TEXT NOT NULL,
            previous_id TEXT,
            previous_seq BIGINT,
            root_id     TEXT NOT NULL,
            depth       BIGINT NOT NULL,
            body        TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            deleted_at  TEXT,
            UNIQUE (tenant, id)
        )""",
        "CREATE INDEX responses_recent ON responses (tenant, seq)",
        "CREATE INDEX responses_by_root ON responses (tenant, root_id)",
        # One row per chain: the tenant's LRU clock value of its last save or read (max_responses).
        """CREATE TABLE response_chains (
            tenant    TEXT NOT NULL,
            root_id   TEXT NOT NULL,
            last_used BIGINT NOT NULL,
            PRIMARY KEY (tenant, root_id)
        )""",
        "CREATE INDEX response_chains_lru ON response_chains (tenant, last_used)",
    ]


_RESPONSES_V1 = {"sqlite": _responses_v1("INTEGER"), "postgres": _responses_v1("BIGINT")}

# --- version 1: PostgreSQL only (agentstate/sql/pg.py, agentstate/pgstate.py) ----------------------------
# The state document (one row: the checksummed codec bytes and the previous version, as state.json and
# state.json.bak on disk) and the published lock holders (UNLOGGED: for people, not for correctness).

_PG_ONLY_V1 = [
    """CREATE TABLE state_documents (
        name       TEXT PRIMARY KEY,
        data       BYTEA,
        previous   BYTEA,
        updated_at TIMESTAMPTZ
    )""",
    "INSERT INTO state_documents (name) VALUES ('state')",
    """CREATE UNLOGGED TABLE lock_holders (
        backend_pid INTEGER PRIMARY KEY,
        lock_key    INTEGER NOT NULL,
        lock_id     TEXT NOT NULL,
        host        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        operation   TEXT NOT NULL,
        version     TEXT NOT NULL,
        since       TIMESTAMPTZ NOT NULL
    )""",
]

# --- version 2: session versions (both dialects) -----------------------------------------------------------
# Existing sessions start at version 1 and the tenant clocks at 1, so every later write draws 2 or more
# and version 0 keeps meaning "no such session" (append(expect_version=0)).

_SESSIONS_V2 = [
    "ALTER TABLE sessions ADD COLUMN version BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE session_counts ADD COLUMN clock BIGINT NOT NULL DEFAULT 0",
    "UPDATE sessions SET version = 1",
    "UPDATE session_counts SET clock = 1",
]

# --- version 3: session expiry and sessions found by metadata (agentstate/sessions/where.py) -----------------
# sessions.expires_at: NULL = never; a session whose expires_at <= now is gone for every read (the
# statements filter on it) and its rows are removed by prune or by the next write that notices it.
# session_tags: one row per filterable top-level metadata value (a string, number or boolean, encoded
# by sessions/where.py tag_value: "s:text", "n:42", "b:true"), with the session's updated_at and expires_at
# copied in, so that a filter walks session_tags_find in list order and counts its matches from the
# index alone. Rows of metadata written before this version are
# indexed here (strings, booleans and integers; other numbers are indexed when the metadata is next set).

_FLEET_COMMON = [
    "ALTER TABLE sessions ADD COLUMN expires_at TEXT",
    "CREATE INDEX sessions_expiry ON sessions (tenant, expires_at)",
    """CREATE TABLE session_tags (
        tenant     TEXT NOT NULL,
        session_id TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        expires_at TEXT,
        PRIMARY KEY (tenant, session_id, key),
        FOREIGN KEY (tenant, session_id) REFERENCES sessions (tenant, id) ON DELETE CASCADE
    )""",
    "CREATE INDEX session_tags_find ON session_tags (tenant, key, value, updated_at DESC, session_id DESC, expires_at)",
]

_FLEET = {
    "sqlite": _FLEET_COMMON + ["""
        INSERT INTO session_tags (tenant, session_id, key, value, updated_at, expires_at)
        SELECT s.tenant, s.id, j.key,
               CASE j.type WHEN 'text' THEN 's:' || j.atom WHEN 'true' THEN 'b:true' WHEN 'false' THEN 'b:false'
                           ELSE 'n:' || CAST(j.atom AS TEXT) END,
               s.updated_at, s.expires_at
        FROM sessions s, json_each(s.metadata) j
        WHERE s.metadata IS NOT NULL AND j.type IN ('text', 'true', 'false', 'integer')"""],
    "postgres": _FLEET_COMMON + ["""
        INSERT INTO session_tags (tenant, session_id, key, value, updated_at, expires_at)
        SELECT s.tenant, s.id, j.key,
               CASE jsonb_typeof(j.value) WHEN 'string' THEN 's:' || (j.value #>> '{}')
                                          WHEN 'boolean' THEN 'b:' || (j.value #>> '{}')
                                          ELSE 'n:' || (j.value #>> '{}') END,
               s.updated_at, s.expires_at
        FROM sessions s, jsonb_each(s.metadata::jsonb) j
        WHERE s.metadata IS NOT NULL AND (jsonb_typeof(j.value) IN ('string', 'boolean')
              OR jsonb_typeof(j.value) = 'number' AND (j.value #>> '{}') ~ '^-?[0-9]+$')"""],
}

# --- version 4: PostgreSQL writers of different sessions and chains run at once (issue 17) -------------
# Session versions come from a sequence (never repeated, so still never seen twice by a session id, even
# across a delete and a re-create; session_counts.clock stays for SQLite only), and response seqs too
# (1 + the largest needs every saver serialized). Both start above every value already given out.
# SQLite keeps its single writer (one disk) and changes nothing.

# A session append in one statement (q_sessions.PG_APPEND says what it does). A function, because each of
# its statements takes a new snapshot: the ones after the lock see every append committed before it. Its
# steps are small statements whose plans plpgsql keeps (cheaper than one statement of many CTEs).
# #variable_conflict use_column: a name that is both a column and a variable means the column.
_PG_APPEND_FN = """CREATE FUNCTION agentstate_append(
    p_classid integer, p_objid integer,
    p_tenant text, p_id text, p_create boolean, p_key text, p_expect_seq bigint, p_expect_version bigint,
    p_ids text[], p_datas text[], p_title text, p_item_ids text)
RETURNS TABLE (o_status text, o_last bigint, o_version bigint, o_now text, o_new_version bigint,
               o_first_seq bigint, o_item_ids text)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_n bigint := coalesce(array_length(p_ids, 1), 0);
    v_last bigint := 0;
    v_version bigint := 0;
    v_updated text;
    v_expires text;
    v_found boolean;
    v_now text;
    v_new bigint;
    v_first bigint;
    v_item_ids text;
BEGIN
    PERFORM pg_advisory_xact_lock(p_classid, p_objid);  -- waits up to the caller's lock_timeout
    SELECT s.last_seq, s.version, s.updated_at, s.expires_at INTO v_last, v_version, v_updated, v_expires
        FROM sessions s WHERE s.tenant = p_tenant AND s.id = p_id;
    v_found := FOUND;
    IF v_found AND v_expires IS NOT NULL THEN
        -- a session with a time to live (version 3): its expiry is judged by the caller's clock, on the
        -- general path (sessions/store.py); nothing is written here
        o_status := 'expiring'; o_last := v_last; o_version := v_version; RETURN NEXT;
        RETURN;
    END IF;
    IF NOT v_found THEN
        v_last := 0;
        v_version := 0;
    END IF;
    v_now := greatest(to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), v_updated);
    IF NOT v_found AND NOT p_create THEN
        o_status := 'missing'; o_last := v_last; o_version := v_version; o_now := v_now; RETURN NEXT;
        RETURN;
    END IF;
    IF v_found AND p_key IS NOT NULL THEN
        SELECT a.first_seq, a.item_ids INTO v_first, v_item_ids FROM session_appends a
            WHERE a.tenant = p_tenant AND a.session_id = p_id AND a.key = p_key;
        IF FOUND THEN
            o_status := 'replay'; o_last := v_last; o_version := v_version; o_now := v_now;
            o_first_seq := v_first; o_item_ids := v_item_ids; RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    IF p_expect_seq IS NOT NULL AND p_expect_seq <> v_last THEN
        o_status := 'seq'; o_last := v_last; o_version := v_version; o_now := v_now; RETURN NEXT;
        RETURN;
    END IF;
    IF p_expect_version IS NOT NULL AND p_expect_version <> v_version THEN
        o_status := 'version'; o_last := v_last; o_version := v_version; o_now := v_now; RETURN NEXT;
        RETURN;
    END IF;
    IF v_n > 0 OR NOT v_found THEN
        v_new := nextval('session_versions');
    END IF;
    IF NOT v_found THEN
        INSERT INTO session_counts (tenant, sessions) VALUES (p_tenant, 1)
            ON CONFLICT (tenant) DO UPDATE SET sessions = session_counts.sessions + 1;
        INSERT INTO sessions (tenant, id, title, metadata, created_at, updated_at, last_seq, item_count, version)
            VALUES (p_tenant, p_id, p_title, NULL, v_now, v_now, v_n, v_n, v_new);
    ELSIF v_n > 0 THEN
        UPDATE sessions s SET last_seq = v_last + v_n, item_count = s.item_count + v_n, updated_at = v_now,
                version = v_new, title = COALESCE(s.title, p_title)
            WHERE s.tenant = p_tenant AND s.id = p_id;
        UPDATE session_tags t SET updated_at = v_now WHERE t.tenant = p_tenant AND t.session_id = p_id;
    END IF;
    IF v_n > 0 THEN
        INSERT INTO session_items (tenant, session_id, seq, id, created_at, data)
            SELECT p_tenant, p_id, v_last + o.ord, o.item_id, v_now, o.item_data
            FROM unnest(p_ids, p_datas) WITH ORDINALITY AS o(item_id, item_data, ord);
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO session_appends (tenant, session_id, key, first_seq, item_ids, created_at)
            VALUES (p_tenant, p_id, p_key, v_last + 1, p_item_ids, v_now);
    END IF;
    o_status := 'ok'; o_last := v_last; o_version := v_version; o_now := v_now; o_new_version := v_new;
    RETURN NEXT;
END
$fn$"""

_PG_V4 = [
    "CREATE SEQUENCE session_versions AS BIGINT",
    "SELECT setval('session_versions', GREATEST(1, (SELECT MAX(clock) FROM session_counts),"
    " (SELECT MAX(version) FROM sessions)))",
    "CREATE SEQUENCE response_seqs AS BIGINT",
    "SELECT setval('response_seqs', COALESCE((SELECT MAX(seq) FROM responses), 0) + 1, false)",
    _PG_APPEND_FN,
]

# --- version 5: one clock for every write (PostgreSQL only) --------------------------------------------
# The append function takes the writer's time (p_now) instead of reading the server's clock, so every
# path stamps with the same (the client's) clock, never before the session's updated_at, as SQLite and
# the general path do: expiry (a ttl counted from the last write) then means the same on both.
_PG_V5 = [
    "DROP FUNCTION agentstate_append(integer, integer, text, text, boolean, text, bigint, bigint, text[], text[], text, text)",
    _PG_APPEND_FN.replace(
        "p_ids text[], p_datas text[], p_title text, p_item_ids text)",
        "p_ids text[], p_datas text[], p_title text, p_item_ids text, p_now text)").replace(
        """v_now := greatest(to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), v_updated);""",
        "v_now := greatest(p_now, v_updated);"),
]

# --- version 6, SQLite: an append to an existing session writes no row the tenant's writers share -----
# A write to an existing session sets version = its version + 1 (q_sessions.NEXT_VERSION is for new
# sessions and the rare paths that do not hold the row): the tenant's clock is no longer bumped by every
# write, so it must still cover every version a deleted session had, or a re-created one could see a
# version again. This trigger does that for every delete, whichever path deletes. The version number
# also keeps agentstate releases that bump the clock on every write (and would draw a version below a
# session's own) from writing to the database.
_SQLITE_V6 = [
    """CREATE TRIGGER sessions_retire_version AFTER DELETE ON sessions FOR EACH ROW BEGIN
        UPDATE session_counts SET clock = MAX(clock, OLD.version) WHERE tenant = OLD.tenant;
    END""",
]

# --- version 6, PostgreSQL: less server work per append ----------------------------------------------------
# The function takes typed parameters (the statement binds them directly: no JSON object to unpack) and
# returns one row through OUT parameters (not a set, so no tuplestore). The common case (no idempotency
# key, at least one item) is one UPDATE ... RETURNING of the session row, its expectations in the WHERE,
# then the items: no separate read; anything else (a missing or expiring session, an expectation that
# fails, a key) falls through to the general path, unchanged, which reads the row first. session_tags is
# touched only for a session with metadata (tags come from metadata only, as on SQLite). sessions_expiry
# becomes partial (the rows with a time to live: every query that uses it compares expires_at, so its
# NULLs are never looked up), so that an append to a session without one inserts one index entry fewer.
_PG_APPEND_FN_V6 = """CREATE FUNCTION agentstate_append(
    p_classid integer, p_objid integer,
    p_tenant text, p_id text, p_create boolean, p_key text, p_expect_seq bigint, p_expect_version bigint,
    p_ids text[], p_datas text[], p_title text, p_item_ids text, p_now text,
    OUT o_status text, OUT o_last bigint, OUT o_version bigint, OUT o_now text, OUT o_new_version bigint,
    OUT o_first_seq bigint, OUT o_item_ids text)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_n bigint := coalesce(array_length(p_ids, 1), 0);
    v_last bigint := 0;
    v_version bigint := 0;
    v_updated text;
    v_expires text;
    v_tagged boolean;
    v_found boolean;
    v_now text;
    v_new bigint;
    v_first bigint;
    v_item_ids text;
BEGIN
    PERFORM pg_advisory_xact_lock(p_classid, p_objid);  -- waits up to the caller's lock_timeout
    IF p_key IS NULL AND v_n > 0 THEN
        -- the common case in one statement: an existing session without a time to live whose
        -- expectations (if any) hold; o_version (the version before) is not read on this path
        UPDATE sessions s SET last_seq = s.last_seq + v_n, item_count = s.item_count + v_n,
                updated_at = greatest(p_now, s.updated_at), version = nextval('session_versions'),
                title = COALESCE(s.title, p_title)
            WHERE s.tenant = p_tenant AND s.id = p_id AND s.expires_at IS NULL
                AND (p_expect_seq IS NULL OR s.last_seq = p_expect_seq)
                AND (p_expect_version IS NULL OR s.version = p_expect_version)
            RETURNING s.last_seq - v_n, s.updated_at, s.version, s.metadata IS NOT NULL
            INTO v_last, v_now, v_new, v_tagged;
        IF FOUND THEN
            IF v_tagged THEN
                UPDATE session_tags t SET updated_at = v_now WHERE t.tenant = p_tenant AND t.session_id = p_id;
            END IF;
            INSERT INTO session_items (tenant, session_id, seq, id, created_at, data)
                SELECT p_tenant, p_id, v_last + o.ord, o.item_id, v_now, o.item_data
                FROM unnest(p_ids, p_datas) WITH ORDINALITY AS o(item_id, item_data, ord);
            o_status := 'ok'; o_last := v_last; o_now := v_now; o_new_version := v_new;
            RETURN;
        END IF;
    END IF;
    SELECT s.last_seq, s.version, s.updated_at, s.expires_at, s.metadata IS NOT NULL
        INTO v_last, v_version, v_updated, v_expires, v_tagged
        FROM sessions s WHERE s.tenant = p_tenant AND s.id = p_id;
    v_found := FOUND;
    IF v_found AND v_expires IS NOT NULL THEN
        -- a session with a time to live (version 3): its expiry is judged by the caller's clock, on the
        -- general path (sessions/store.py); nothing is written here
        o_status := 'expiring'; o_last := v_last; o_version := v_version;
        RETURN;
    END IF;
    IF NOT v_found THEN
        v_last := 0;
        v_version := 0;
    END IF;
    v_now := greatest(p_now, v_updated);
    IF NOT v_found AND NOT p_create THEN
        o_status := 'missing'; o_last := v_last; o_version := v_version; o_now := v_now;
        RETURN;
    END IF;
    IF v_found AND p_key IS NOT NULL THEN
        SELECT a.first_seq, a.item_ids INTO v_first, v_item_ids FROM session_appends a
            WHERE a.tenant = p_tenant AND a.session_id = p_id AND a.key = p_key;
        IF FOUND THEN
            o_status := 'replay'; o_last := v_last; o_version := v_version; o_now := v_now;
            o_first_seq := v_first; o_item_ids := v_item_ids;
            RETURN;
        END IF;
    END IF;
    IF p_expect_seq IS NOT NULL AND p_expect_seq <> v_last THEN
        o_status := 'seq'; o_last := v_last; o_version := v_version; o_now := v_now;
        RETURN;
    END IF;
    IF p_expect_version IS NOT NULL AND p_expect_version <> v_version THEN
        o_status := 'version'; o_last := v_last; o_version := v_version; o_now := v_now;
        RETURN;
    END IF;
    IF v_n > 0 OR NOT v_found THEN
        v_new := nextval('session_versions');
    END IF;
    IF NOT v_found THEN
        INSERT INTO session_counts (tenant, sessions) VALUES (p_tenant, 1)
            ON CONFLICT (tenant) DO UPDATE SET sessions = session_counts.sessions + 1;
        INSERT INTO sessions (tenant, id, title, metadata, created_at, updated_at, last_seq, item_count, version)
            VALUES (p_tenant, p_id, p_title, NULL, v_now, v_now, v_n, v_n, v_new);
    ELSIF v_n > 0 THEN
        UPDATE sessions s SET last_seq = v_last + v_n, item_count = s.item_count + v_n, updated_at = v_now,
                version = v_new, title = COALESCE(s.title, p_title)
            WHERE s.tenant = p_tenant AND s.id = p_id;
        IF v_tagged THEN
            UPDATE session_tags t SET updated_at = v_now WHERE t.tenant = p_tenant AND t.session_id = p_id;
        END IF;
    END IF;
    IF v_n > 0 THEN
        INSERT INTO session_items (tenant, session_id, seq, id, created_at, data)
            SELECT p_tenant, p_id, v_last + o.ord, o.item_id, v_now, o.item_data
            FROM unnest(p_ids, p_datas) WITH ORDINALITY AS o(item_id, item_data, ord);
    END IF;
    IF p_key IS NOT NULL THEN
        INSERT INTO session_appends (tenant, session_id, key, first_seq, item_ids, created_at)
            VALUES (p_tenant, p_id, p_key, v_last + 1, p_item_ids, v_now);
    END IF;
    o_status := 'ok'; o_last := v_last; o_version := v_version; o_now := v_now; o_new_version := v_new;
END
$fn$"""

_PG_V6 = [
    "DROP FUNCTION agentstate_append(integer, integer, text, text, boolean, text, bigint, bigint, text[], text[], text, text,"
    " text)",
    _PG_APPEND_FN_V6,
    "DROP INDEX sessions_expiry",
    "CREATE INDEX sessions_expiry ON sessions (tenant, expires_at) WHERE expires_at IS NOT NULL",
]

# --- version 7, PostgreSQL: an append updates its session row in place (a HOT update) ---------------------
# PostgreSQL writes a new version of a row on every UPDATE; it can keep it on the same page without new
# index entries (a heap-only tuple) only if no indexed column changed. Every append moves updated_at,
# which sessions_recent indexed: each append added an entry to both of the table's indexes, the dead ones
# piling up between vacuums, and the heap grew with them (a few hundred pages a second at 16 writers).
# sessions_recent now indexes the minute of updated_at (a generated column, `recent`), which an append
# changes at most once a minute per session: the others are HOT. list orders by (recent, updated_at,
# id), the same order as (updated_at, id) (a prefix of a text never sorts after that of a greater one),
# and walks the index by minute, sorting each minute's sessions (q_sessions.LIST_FIRST). The index is
# partial on `recent IS NOT NULL`, true of every row (updated_at is NOT NULL), so that the planner never
# takes it for a lookup of one session by (tenant, id): on a table it has no statistics for yet, it took
# the recency index for those (a tie in its estimates), reading every session of the tenant per append.
# The queries that page by recency state the predicate. The new column rewrites the table once. The
# responses table had the same tie: a lookup by (tenant, id) took responses_by_root, reading every
# response of the tenant; its two tenant-first indexes become partial the same way (every query that
# uses them compares seq or root_id, or states the predicate). session_tags, whose rows an append to a
# session with metadata touches (their copy of updated_at), gets the same minute column and index
# (session_tags_find keeps expires_at, so a filter's count stays one index range). SQLite updates its
# index entries in place and plans by its own rules: nothing changes there.
_PG_V7 = [
    "ALTER TABLE sessions ADD COLUMN recent TEXT GENERATED ALWAYS AS (left(updated_at, 16)) STORED",
    "DROP INDEX sessions_recent",
    "CREATE INDEX sessions_recent ON sessions (tenant, recent DESC) WHERE recent IS NOT NULL",
    "DROP INDEX responses_recent",
    "CREATE INDEX responses_recent ON responses (tenant, seq) WHERE seq IS NOT NULL",
    "DROP INDEX responses_by_root",
    "CREATE INDEX responses_by_root ON responses (tenant, root_id) WHERE root_id IS NOT NULL",
    "ALTER TABLE session_tags ADD COLUMN recent TEXT GENERATED ALWAYS AS (left(updated_at, 16)) STORED",
    "DROP INDEX session_tags_find",
    "CREATE INDEX session_tags_find ON session_tags (tenant, key, value, recent DESC, expires_at)"
    " WHERE recent IS NOT NULL",
]

# --- version 8, PostgreSQL: rows rewritten in place stay on their page; the state transaction's flush ------
# Every state transaction writes a new version of state_documents' one row, and every append one of its
# session's row (and of its tags' rows). A read frees a page's dead versions (prunes it) only when less
# is free on it than the table's fill-factor reserve, and never less than a tenth of the page (819
# bytes). A row of about 0.8 to 2 KB could leave more than that free and yet too little for its next
# version: the next version then went to a new page (and, for sessions and tags, new entries in every
# index), the old page was never read again, and the heap grew until a vacuum. Measured on PostgreSQL 15
# (docs/format.md): a 1 KB state document grew its table by 250 pages a thousand transactions; a session
# with 1.5 KB of metadata made one append in four a non-HOT update; a 600-character tag value as many.
# At fillfactor 75 the reserve is 2,048 bytes, more than any row kept on its page takes (PostgreSQL's
# toaster brings a row down to 2,032 bytes, plus its 4-byte line pointer): a page with that much free
# always takes the next version, and one with less is pruned first. The fillfactor also leaves a
# quarter of a page for the updates of the rows inserted into it.
#
# state_flushes: the sequence whose setval makes the flush after a state transaction (q_state.FLUSH).
_PG_V8 = [
    "ALTER TABLE state_documents SET (fillfactor = 75)",
    "ALTER TABLE sessions SET (fillfactor = 75)",
    "ALTER TABLE session_tags SET (fillfactor = 75)",
    "CREATE SEQUENCE state_flushes AS BIGINT",
]

# --- version 9, PostgreSQL: the common append as one statement of its own (q_sessions.PG_APPEND_FAST) ---------
# Measured on one connection (docs/performance.md): the call of the plpgsql function cost ~25 us of server CPU
# per append more than the same lock, UPDATE and INSERT as one statement of data-modifying CTEs (the
# function's call, and an executor start for each statement it runs). That statement's snapshot is taken
# before it waits for the session's lock, which its UPDATE does not mind (it updates the row's latest
# version, PostgreSQL's read-committed recheck) but a read of other rows would: the session_tags rows of a
# session with metadata are updated by agentstate_touch_tags, whose UPDATE takes its own snapshot (a
# volatile function's statements each do), after the lock, and so sees tags committed during the wait.
_PG_V9 = ["""CREATE FUNCTION agentstate_touch_tags(p_tenant text, p_id text, p_at text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    UPDATE session_tags t SET updated_at = p_at WHERE t.tenant = p_tenant AND t.session_id = p_id;
    RETURN true;
END
$fn$"""]

MIGRATIONS: list[dict[str, list[str]]] = [
    {"sqlite": _SESSIONS_V1 + _RESPONSES_V1["sqlite"],
     "postgres": _SESSIONS_V1 + _RESPONSES_V1["postgres"] + _PG_ONLY_V1},
    {"sqlite": _SESSIONS_V2, "postgres": _SESSIONS_V2},
    _FLEET,
    {"sqlite": [], "postgres": _PG_V4},
    {"sqlite": [], "postgres": _PG_V5},
    {"sqlite": _SQLITE_V6, "postgres": _PG_V6},
    {"sqlite": [], "postgres": _PG_V7},
    {"sqlite": [], "postgres": _PG_V8},
    {"sqlite": [], "postgres": _PG_V9},
]

SCHEMA_VERSION = len(MIGRATIONS)


def too_new(version: int, where: str) -> FormatTooNew:
    return FormatTooNew(
        f"{where} has schema version {version}, newer than this agentstate understands ({SCHEMA_VERSION})",
        hint="upgrade agentstate; the database was left untouched",
        schema_version=version,
    )
