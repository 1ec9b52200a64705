"""Statements of the session store (tables in schema.py, version 2). Every one is scoped by tenant."""

from __future__ import annotations

from . import Stmt

_SESSION_COLS = "id, title, metadata, created_at, updated_at, item_count, last_seq, version"
_ITEM_COLS = "seq, id, created_at, data"

GET_SESSION = Stmt(both=f"SELECT {_SESSION_COLS} FROM sessions WHERE tenant = :tenant AND id = :id")

INSERT_SESSION = Stmt(both="""
    INSERT INTO sessions (tenant, id, title, metadata, created_at, updated_at, last_seq, item_count, version)
    VALUES (:tenant, :id, :title, :metadata, :created_at, :now, 0, 0, :version)""")

# After an append or a pop: the new last seq (the highest seq present), the item count changed by
# :added (an item deleted from the middle leaves a gap, so the two may differ), the time, the new
# version, and a title if none yet.
UPDATE_SESSION_SEQ = Stmt(both="""
    UPDATE sessions SET last_seq = :last_seq, item_count = item_count + :added, updated_at = :now, version = :version,
        title = COALESCE(title, :title)
    WHERE tenant = :tenant AND id = :id""")

# The next session version of the tenant (its session_counts row exists once it has had a session).
NEXT_VERSION = Stmt(both="""
    UPDATE session_counts SET clock = clock + 1 WHERE tenant = :tenant RETURNING clock""")

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

GET_ITEM_BY_ID = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id AND id = :item_id""")

# Newest first, before a seq (a page of items in descending order).
ITEMS_BEFORE = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id AND seq < :before
    ORDER BY seq DESC LIMIT :limit""")

# The highest seq left (0 for none): the session's last_seq after its last item is deleted.
MAX_SEQ = Stmt(both="""
    SELECT COALESCE(MAX(seq), 0) FROM session_items WHERE tenant = :tenant AND session_id = :session_id""")

UPDATE_METADATA = Stmt(both="""
    UPDATE sessions SET metadata = :metadata, updated_at = :now, version = :version
    WHERE tenant = :tenant AND id = :id""")

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

# replace_items (agentstate/sessions/replace.py): drop a tail and a leading run, then renumber what
# is left to 1..n in two steps (to negatives, then back shifted), so that no step ever collides with
# the primary key, whatever order the rows are updated in.
DELETE_ITEMS_FROM = Stmt(both="DELETE FROM session_items WHERE tenant = :tenant AND session_id = :session_id AND seq >= :first")

DELETE_ITEMS_UPTO = Stmt(both="DELETE FROM session_items WHERE tenant = :tenant AND session_id = :session_id AND seq <= :last")

NEGATE_SEQS = Stmt(both="UPDATE session_items SET seq = -seq WHERE tenant = :tenant AND session_id = :session_id")

UNNEGATE_SEQS = Stmt(both="""
    UPDATE session_items SET seq = -seq - :shift
    WHERE tenant = :tenant AND session_id = :session_id AND seq < 0""")
