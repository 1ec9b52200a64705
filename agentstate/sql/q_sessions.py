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

# PostgreSQL: a whole append in one statement, the function agentstate_append (schema.py, version 3): it
# takes the session's lock, then (each statement of a function sees what is committed when it starts, so
# every earlier append of the session) reads the session and the idempotency key, decides, and only when
# the decision is 'ok' creates the session if missing (counted in session_counts; appends to an existing
# session never touch a row the tenant's writers share), inserts the items at last + 1.., bumps the session
# (last seq, version from the sequence, updated_at, title if none) and records the key. The time is the
# server's, taken under the lock, never before the session's updated_at. Run in its own transaction
# (pg_batch.locked_call): one statement, in one round trip with the holder record.
# Returns one row: (status, last seq before, version before, now, new version, key's first_seq, key's
# item_ids); status is ok, missing (and create is false), replay (the key was seen), seq or version (the
# expectation failed). Nothing is written unless it is ok. The arguments travel as one JSON object
# (pg_batch.locked_call): binding thirteen parameters and two lists costs the driver more client time
# than the server spends on the whole write.
PG_APPEND = Stmt(postgres="""
    SELECT f.* FROM (SELECT %(args)s::jsonb AS a) AS x, LATERAL agentstate_append(
        (a->>'classid')::integer, (a->>'objid')::integer, a->>'tenant', a->>'id',
        (a->>'create')::boolean, a->>'key', (a->>'expect_seq')::bigint, (a->>'expect_version')::bigint,
        ARRAY(SELECT e FROM jsonb_array_elements_text(a->'ids') WITH ORDINALITY AS t(e, i) ORDER BY i),
        ARRAY(SELECT e FROM jsonb_array_elements_text(a->'datas') WITH ORDINALITY AS t(e, i) ORDER BY i),
        a->>'title', a->>'item_ids') AS f""")

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
