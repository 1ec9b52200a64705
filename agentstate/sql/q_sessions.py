"""Statements of the session store (tables in schema.py, version 2). Every one is scoped by tenant."""

from __future__ import annotations

from . import Stmt

_SESSION_COLS = "id, title, metadata, created_at, updated_at, item_count, last_seq, version"
_ITEM_COLS = "seq, id, created_at, data"

GET_SESSION = Stmt(both=f"SELECT {_SESSION_COLS} FROM sessions WHERE tenant = :tenant AND id = :id")

INSERT_SESSION = Stmt(both="""
    INSERT INTO sessions (tenant, id, title, metadata, created_at, updated_at, last_seq, item_count, version)
    VALUES (:tenant, :id, :title, :metadata, :created_at, :now, 0, 0, :version)""")

# After an append or a pop: the new last seq (== item count), the time, the new version, and a title if none yet.
UPDATE_SESSION_SEQ = Stmt(both="""
    UPDATE sessions SET last_seq = :last_seq, item_count = :last_seq, updated_at = :now, version = :version,
        title = COALESCE(title, :title)
    WHERE tenant = :tenant AND id = :id""")

# The next session version of the tenant (its session_counts row exists once it has had a session).
# PostgreSQL (schema version 3): a sequence instead, so that a write to one session never touches a row
# every writer of the tenant shares; it never repeats a value either.
NEXT_VERSION = Stmt(sqlite="""
    UPDATE session_counts SET clock = clock + 1 WHERE tenant = :tenant RETURNING clock""",
                    postgres="SELECT nextval('session_versions')")

# PostgreSQL: a whole append in one statement, run by pg_batch once the session's lock is held (so its
# snapshot sees every earlier append of the session): read the session and the idempotency key, decide,
# and only when the decision is 'ok' create the session if missing (counted in session_counts; appends to
# an existing session never touch a row shared by the tenant), insert the items at last + 1.., bump the
# session (last seq, version from the sequence, updated_at, title if none) and record the key.
# The time is the server's, taken under the lock, never before the session's updated_at.
# Returns one row: (status, last seq before, version before, now, new version, key's first_seq, key's
# item_ids); status is ok, missing (and create is false), replay (the key was seen), seq or version (the
# expectation failed). Nothing is written unless it is ok.
PG_APPEND = Stmt(postgres="""
    WITH s AS (
        SELECT last_seq, version, updated_at FROM sessions WHERE tenant = %(tenant)s AND id = %(id)s
    ), k AS (
        SELECT first_seq, item_ids FROM session_appends
        WHERE tenant = %(tenant)s AND session_id = %(id)s AND key = %(key)s::text
    ), st AS (
        SELECT CASE
                WHEN NOT EXISTS (SELECT FROM s) AND NOT %(create)s THEN 'missing'
                WHEN EXISTS (SELECT FROM k) THEN 'replay'
                WHEN %(expect_seq)s::bigint IS NOT NULL
                     AND %(expect_seq)s::bigint <> coalesce((SELECT last_seq FROM s), 0) THEN 'seq'
                WHEN %(expect_version)s::bigint IS NOT NULL
                     AND %(expect_version)s::bigint <> coalesce((SELECT version FROM s), 0) THEN 'version'
                ELSE 'ok' END AS status,
            coalesce((SELECT last_seq FROM s), 0) AS last,
            coalesce((SELECT version FROM s), 0) AS version,
            EXISTS (SELECT FROM s) AS found,
            greatest(to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                     (SELECT updated_at FROM s)) AS now
    ), go AS (
        SELECT last, found, now, CASE WHEN %(n)s::bigint > 0 OR NOT found THEN nextval('session_versions') END AS v
        FROM st WHERE status = 'ok'
    ), counted AS (
        INSERT INTO session_counts (tenant, sessions) SELECT %(tenant)s, 1 FROM go WHERE NOT found
        ON CONFLICT (tenant) DO UPDATE SET sessions = session_counts.sessions + 1
    ), created AS (
        INSERT INTO sessions (tenant, id, title, metadata, created_at, updated_at, last_seq, item_count, version)
        SELECT %(tenant)s, %(id)s, %(title)s::text, NULL, now, now, %(n)s::bigint, %(n)s::bigint, v
        FROM go WHERE NOT found
    ), bumped AS (
        UPDATE sessions SET last_seq = go.last + %(n)s::bigint, item_count = go.last + %(n)s::bigint,
            updated_at = go.now, version = go.v, title = COALESCE(sessions.title, %(title)s::text)
        FROM go WHERE go.found AND go.v IS NOT NULL AND sessions.tenant = %(tenant)s AND sessions.id = %(id)s
    ), stored AS (
        INSERT INTO session_items (tenant, session_id, seq, id, created_at, data)
        SELECT %(tenant)s, %(id)s, go.last + o.n, o.id, go.now, o.data
        FROM go, unnest(%(ids)s::text[], %(datas)s::text[]) WITH ORDINALITY AS o(id, data, n)
    ), keyed AS (
        INSERT INTO session_appends (tenant, session_id, key, first_seq, item_ids, created_at)
        SELECT %(tenant)s, %(id)s, %(key)s::text, go.last + 1, %(item_ids)s::text, go.now
        FROM go WHERE %(key)s::text IS NOT NULL
    )
    SELECT st.status, st.last, st.version, st.now, (SELECT v FROM go), k.first_seq, k.item_ids
    FROM st LEFT JOIN k ON true""")

INSERT_ITEM = Stmt(both="""
    INSERT INTO session_items (tenant, session_id, seq, id, created_at, data)
    VALUES (:tenant, :session_id, :seq, :id, :now, :data)""")

# Oldest first, after a seq; :limit is a large number for "all".
ITEMS_AFTER = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id AND seq > :after
    ORDER BY seq LIMIT :limit""")

# Newest first (context() reverses them): a walk down the primary key from its end, never a scan.
LAST_ITEMS = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id
    ORDER BY seq DESC LIMIT :limit""")

ITEMS_RANGE = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id AND seq BETWEEN :first AND :last
    ORDER BY seq""")

GET_ITEM = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id AND seq = :seq""")

DELETE_ITEM = Stmt(both="DELETE FROM session_items WHERE tenant = :tenant AND session_id = :session_id AND seq = :seq")

# The items and idempotency keys go with the session (ON DELETE CASCADE).
DELETE_SESSION = Stmt(both="DELETE FROM sessions WHERE tenant = :tenant AND id = :id")

# list()'s total: kept up to date by every write that creates or deletes sessions (ADD_SESSIONS).
COUNT_SESSIONS = Stmt(both="SELECT sessions FROM session_counts WHERE tenant = :tenant")

ADD_SESSIONS = Stmt(both="""
    INSERT INTO session_counts (tenant, sessions) VALUES (:tenant, :delta)
    ON CONFLICT (tenant) DO UPDATE SET sessions = session_counts.sessions + :delta""")

# Sent between import batches: on PostgreSQL it flushes the queued inserts (the queue stays small).
FLUSH = Stmt(both="SELECT 1")

# What doctor compares session_counts with.
COUNT_SESSIONS_SLOW = Stmt(both="SELECT COUNT(*) FROM sessions WHERE tenant = :tenant")

# Most recently updated first; the keyset (updated_at, id) is the cursor.
LIST_FIRST = Stmt(both=f"""
    SELECT {_SESSION_COLS} FROM sessions WHERE tenant = :tenant
    ORDER BY updated_at DESC, id DESC LIMIT :limit""")

LIST_AFTER = Stmt(both=f"""
    SELECT {_SESSION_COLS} FROM sessions
    WHERE tenant = :tenant AND updated_at <= :updated_at AND (updated_at < :updated_at OR id < :id)
    ORDER BY updated_at DESC, id DESC LIMIT :limit""")

STALE_SESSIONS = Stmt(both="""
    SELECT id FROM sessions WHERE tenant = :tenant AND updated_at < :cutoff
    ORDER BY updated_at, id""")

GET_APPEND_KEY = Stmt(both="""
    SELECT first_seq, item_ids FROM session_appends
    WHERE tenant = :tenant AND session_id = :session_id AND key = :key""")

INSERT_APPEND_KEY = Stmt(both="""
    INSERT INTO session_appends (tenant, session_id, key, first_seq, item_ids, created_at)
    VALUES (:tenant, :session_id, :key, :first_seq, :item_ids, :now)""")
