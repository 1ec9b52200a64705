"""Statements of the session store (tables in schema.py, versions 1 to 3). Every one is scoped by tenant.

A session is live while ``expires_at`` is NULL or later than ``:now``; reads filter on that (an expired
session is gone for every read at once), writes see the row and remove it (sessions/where.py)."""

from __future__ import annotations

import functools

from . import Stmt, _to_pyformat

_SESSION_COLS = "id, title, metadata, created_at, updated_at, item_count, last_seq, version, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at > :now)"
# In an item query: the session of the items is not expired (one primary-key probe).
_ITEMS_LIVE = """NOT EXISTS (SELECT 1 FROM sessions s WHERE s.tenant = :tenant AND s.id = :session_id
                      AND s.expires_at <= :now)"""
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

# The next version of session :id from the tenant's clock (its session_counts row exists once it has had a
# session): above the clock and above the session's own version (an existing session's writes advance
# its version only: sessions/store.py _next_version; a deleted one's last version is folded into the
# clock by the trigger of schema version 6). PostgreSQL (schema version 3): a sequence instead, so that a
# write to one session never touches a row every writer of the tenant shares; it never repeats a value.
NEXT_VERSION = Stmt(sqlite="""
    UPDATE session_counts
    SET clock = MAX(clock, COALESCE((SELECT version FROM sessions WHERE tenant = :tenant AND id = :id), 0)) + 1
    WHERE tenant = :tenant RETURNING clock""",
                    postgres="SELECT nextval('session_versions')")

# PostgreSQL: a whole append in one statement, the function agentstate_append (schema.py, versions 4 to 6): it
# takes the session's lock, then (each statement of a function sees what is committed when it starts, so
# every earlier append of the session) reads the session and the idempotency key, decides, and only when
# the decision is 'ok' creates the session if missing (counted in session_counts; appends to an existing
# session never touch a row the tenant's writers share), inserts the items at last + 1.., bumps the session
# (last seq, version from the sequence, updated_at, title if none) and records the key. The time is the
# writer's (``now``, schema version 5: every path stamps with the client's clock), never before the
# session's updated_at. The common case (no key, items to add, the session there without a time to live,
# its expectations met) is one UPDATE ... RETURNING, then the items (version 6). From version 9 agentstate
# sends that case as PG_APPEND_FAST instead for a session it has found so before (SessionStore._pg_paths);
# this function takes the rest: a key, a session the process has not seen yet, and whatever PG_APPEND_FAST
# wrote nothing for. Run in its own transaction (pg_batch.locked_call): one statement, in one round trip
# with the holder record.
# Returns one row: (status, last seq before, version before, now, new version, key's first_seq, key's
# item_ids); status is ok, missing (and create is false), replay (the key was seen), seq or version (the
# expectation failed); the version before is NULL when ok (not read). Nothing is written unless it is ok.
# Typed parameters, each cast (version 6; versions 4 and 5 took one JSON object, cheaper for psycopg to
# bind than twelve typed parameters and two lists, dearer for the server to unpack): in the common case
# (pg_batch.locked_call) a prepared statement, planned once per connection, its parameters sent as text by
# libpq without psycopg's adaptation.
PG_APPEND = Stmt(postgres="""
    SELECT * FROM agentstate_append(%(classid)s::integer, %(objid)s::integer, %(tenant)s::text, %(id)s::text,
        %(create)s::boolean, %(key)s::text, %(expect_seq)s::bigint, %(expect_version)s::bigint, %(ids)s::text[],
        %(datas)s::text[], %(title)s::text, %(item_ids)s::text, %(now)s::text)""")

# PostgreSQL, the common append (no idempotency key, at least one item; schema version 9) in one statement,
# without the function's call: it takes the session's lock (the InitPlan, a one-time filter run before the
# row is read: a waiter holds no page of the table), then updates the session if it exists, has no time to
# live and meets the expectations, inserts the items after its last seq, and for a session with metadata
# sets its tags' updated_at (agentstate_touch_tags, which sees tags committed while the statement waited).
# The UPDATE writes the row's latest version (a row changed since the statement's snapshot is rechecked
# against its new values), so the seqs follow every append committed before the lock. One row (the last
# seq before, updated_at, the new version, the tags flag) when it appended; none when it wrote nothing: the
# caller then calls PG_APPEND, which decides (creates, refuses, or sends a session with a time to live on).
# PG_APPEND_FAST_ONE: the same for one item.
_APPEND_FAST = """
    WITH u AS (
        UPDATE sessions s SET last_seq = s.last_seq + {n}, item_count = s.item_count + {n},
            updated_at = greatest(%(now)s::text, s.updated_at), version = nextval('session_versions'),
            title = COALESCE(s.title, %(title)s::text)
        WHERE s.tenant = %(tenant)s::text AND s.id = %(id)s::text AND s.expires_at IS NULL
            AND (%(expect_seq)s::bigint IS NULL OR s.last_seq = %(expect_seq)s::bigint)
            AND (%(expect_version)s::bigint IS NULL OR s.version = %(expect_version)s::bigint)
            AND (SELECT true FROM pg_advisory_xact_lock(%(classid)s::integer, %(objid)s::integer))
        RETURNING s.last_seq - {n} AS last, s.updated_at, s.version, s.metadata IS NOT NULL AS tagged),
    added AS (
        INSERT INTO session_items (tenant, session_id, seq, id, created_at, data)
        SELECT %(tenant)s::text, %(id)s::text, {items})
    SELECT u.last, u.updated_at, u.version,
        CASE WHEN u.tagged THEN agentstate_touch_tags(%(tenant)s::text, %(id)s::text, u.updated_at) END
    FROM u"""
PG_APPEND_FAST = Stmt(postgres=_APPEND_FAST.format(
    n="cardinality(%(ids)s::text[])", items="u.last + o.ord, o.item_id, u.updated_at, o.item_data FROM u, "
    "unnest(%(ids)s::text[], %(datas)s::text[]) WITH ORDINALITY AS o(item_id, item_data, ord)"))
# One item (the usual append) as two text parameters: no arrays to parse, no set-returning unnest to run
# (~8 us of server CPU per append, /tmp/s32/fnvar.py).
PG_APPEND_FAST_ONE = Stmt(postgres=_APPEND_FAST.format(
    n="1", items="u.last + 1, %(item_id)s::text, u.updated_at, %(item_data)s::text FROM u"))

INSERT_ITEM = Stmt(both="""
    INSERT INTO session_items (tenant, session_id, seq, id, created_at, data)
    VALUES (:tenant, :session_id, :seq, :id, :now, :data)""")

# Oldest first, after a seq; :limit is a large number for "all".
ITEMS_AFTER = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id AND seq > :after AND {_ITEMS_LIVE}
    ORDER BY seq LIMIT :limit""")

# Newest first (context() reverses them): a walk down the primary key from its end, never a scan.
LAST_ITEMS = Stmt(both=f"""
    SELECT {_ITEM_COLS} FROM session_items
    WHERE tenant = :tenant AND session_id = :session_id AND {_ITEMS_LIVE}
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

# Most recently updated first; the keyset (updated_at, id) is the cursor. PostgreSQL (schema version 7):
# sessions_recent indexes (tenant, recent), recent being the minute of updated_at (left(updated_at, 16)),
# so that an append's update of the row is HOT; ordering by recent first is the same order (a text's
# prefix never sorts after that of a greater text), and lets the index give it minute by minute (its
# predicate, recent IS NOT NULL, is stated or implied by recent <= ...: schema.py _PG_V7).
_LIVE_PG = _to_pyformat(_LIVE)
_MINUTE = 16  # recent = left(updated_at, 16) (schema.py _PG_V7): a time's minute, as the cursor's is taken

LIST_FIRST = Stmt(both=f"""
    SELECT {_SESSION_COLS} FROM sessions WHERE tenant = :tenant AND {_LIVE}
    ORDER BY updated_at DESC, id DESC LIMIT :limit""", postgres=f"""
    SELECT {_SESSION_COLS} FROM sessions WHERE tenant = %(tenant)s AND recent IS NOT NULL AND {_LIVE_PG}
    ORDER BY recent DESC, updated_at DESC, id DESC LIMIT %(limit)s""")

LIST_AFTER = Stmt(both=f"""
    SELECT {_SESSION_COLS} FROM sessions
    WHERE tenant = :tenant AND updated_at <= :updated_at AND (updated_at < :updated_at OR id < :id) AND {_LIVE}
    ORDER BY updated_at DESC, id DESC LIMIT :limit""", postgres=f"""
    SELECT {_SESSION_COLS} FROM sessions
    WHERE tenant = %(tenant)s AND recent <= left(%(updated_at)s, {_MINUTE}) AND updated_at <= %(updated_at)s
        AND (updated_at < %(updated_at)s OR id < %(id)s) AND {_LIVE_PG}
    ORDER BY recent DESC, updated_at DESC, id DESC LIMIT %(limit)s""")

STALE_SESSIONS = Stmt(both="""
    SELECT id FROM sessions WHERE tenant = :tenant AND (updated_at < :cutoff OR expires_at <= :now)
    ORDER BY updated_at, id""", postgres=f"""
    SELECT id FROM sessions WHERE tenant = %(tenant)s
        AND ((recent <= left(%(cutoff)s, {_MINUTE}) AND updated_at < %(cutoff)s) OR expires_at <= %(now)s)
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

# -- expiry (schema version 3) ----------------------------------------------------------------------------

# list()'s total is session_counts less the expired sessions not removed yet (an index range on expires_at).
COUNT_EXPIRED = Stmt(both="SELECT COUNT(*) FROM sessions WHERE tenant = :tenant AND expires_at <= :now")

SET_EXPIRES = Stmt(both="UPDATE sessions SET expires_at = :expires_at WHERE tenant = :tenant AND id = :id")

# ...and its copy in the session's tags (what a filter counts by).
SET_TAGS_EXPIRES = Stmt(both="""
    UPDATE session_tags SET expires_at = :expires_at WHERE tenant = :tenant AND session_id = :session_id""")

# -- metadata and its index (session_tags; values encoded by sessions/where.py tag_value) ---------------------

SET_METADATA = Stmt(both="""
    UPDATE sessions SET metadata = :metadata, updated_at = :now, version = :version
    WHERE tenant = :tenant AND id = :id""")

INSERT_TAG = Stmt(both="""
    INSERT INTO session_tags (tenant, session_id, key, value, updated_at, expires_at)
    VALUES (:tenant, :session_id, :key, :value, :now, :expires_at)""")

DELETE_TAGS = Stmt(both="DELETE FROM session_tags WHERE tenant = :tenant AND session_id = :session_id")

# Every write that moves a session's updated_at moves its tags' copy with it (the list order of a filter).
TOUCH_TAGS = Stmt(both="UPDATE session_tags SET updated_at = :now WHERE tenant = :tenant AND session_id = :session_id")


@functools.cache  # one set per n, kept for good: the engines cache a statement's text by its identity
def where_statements(n: int) -> tuple[Stmt, Stmt, Stmt]:
    """(first page, next page, count) of the sessions matching ``n`` >= 1 conditions ``:k0 = :v0``...

    The first condition drives: a walk of session_tags_find in list order (updated_at, id descending,
    the same keyset cursor as LIST_*); each further condition is one primary-key probe of session_tags;
    the session row is one more probe, for the rows of the page only. Expiry is read from the tags' copy,
    so the count of one condition is a range of session_tags_find and nothing else."""
    if n < 1:
        raise ValueError("where_statements needs at least one condition")
    cols = ", ".join(f"s.{c.strip()}" for c in _SESSION_COLS.split(","))
    joins = "".join(
        f"\n    JOIN session_tags t{i} ON t{i}.tenant = t0.tenant AND t{i}.session_id = t0.session_id"
        f" AND t{i}.key = :k{i} AND t{i}.value = :v{i}"
        for i in range(1, n)
    )
    where = """
    WHERE t0.tenant = :tenant AND t0.key = :k0 AND t0.value = :v0
      AND (t0.expires_at IS NULL OR t0.expires_at > :now)"""
    body = f"""
    FROM session_tags t0{joins}
    JOIN sessions s ON s.tenant = t0.tenant AND s.id = t0.session_id{where}"""
    order = "\n    ORDER BY t0.updated_at DESC, t0.session_id DESC LIMIT :limit"
    after = ("\n      AND t0.updated_at <= :updated_at"
             " AND (t0.updated_at < :updated_at OR t0.session_id < :id)")
    # PostgreSQL (schema version 7): session_tags_find indexes the minute (recent), as sessions_recent does
    # (LIST_FIRST); its predicate stated, the minute first in the order, and bounded by the cursor's.
    count = f"SELECT COUNT(*) FROM session_tags t0{joins}{where}"
    predicate = "\n      AND t0.recent IS NOT NULL"
    pg_body = body + predicate
    pg_order = "\n    ORDER BY t0.recent DESC, t0.updated_at DESC, t0.session_id DESC LIMIT :limit"
    pg_after = f"\n      AND t0.recent <= left(:updated_at, {_MINUTE})" + after
    return (Stmt(both=f"SELECT {cols}{body}{order}", postgres=_to_pyformat(f"SELECT {cols}{pg_body}{pg_order}")),
            Stmt(both=f"SELECT {cols}{body}{after}{order}",
                 postgres=_to_pyformat(f"SELECT {cols}{pg_body}{pg_after}{pg_order}")),
            Stmt(both=count, postgres=_to_pyformat(count + predicate)))
