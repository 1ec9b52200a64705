"""SQL of the response store (``agentstate.responses``), SQLite and PostgreSQL side by side.

Tables (schema version 1, ``agentstate.sql.schema._RESPONSES_V1``):

``responses``        one row per stored response:
    seq          1 + the largest seq in the table at insert (writers are serialized, and the newest
                 row is never evicted, so a seq is never reused): list order, and the link the chain
                 walk follows (SQLite: the rowid, INTEGER PRIMARY KEY; PostgreSQL: BIGINT)
    tenant, id   unique together
    previous_id  the response's ``previous_response_id`` (NULL for a chain's root)
    previous_seq the seq of that previous response (NULL for a root)
    root_id      the id of the chain's root (a root's own id): a whole chain is ``tenant, root_id``
    depth        0 for a root, the previous response's depth + 1 otherwise (chain length - 1);
                 it bounds the chain walk, so a damaged database can never make it loop
    body         the exact bytes ``codec.encode_value`` made of the response, as TEXT (never
                 JSON/JSONB: key order and integer exactness must survive)
    created_at   ISO-8601 UTC text, microseconds, 'Z'
    deleted_at   the same, set by a soft delete; NULL while the response is live
``response_chains``  one row per chain (per root): ``last_used``, the tenant's LRU clock value of
    the chain's last save or read (a per-tenant counter: 1 + the tenant's largest).

Every statement is scoped by ``tenant = :tenant`` (except ``TENANTS``, doctor's list of the tenants
to check one by one). Each text serves both dialects (``Stmt(both=...)``: ``:name`` parameters,
turned into ``%(name)s`` for PostgreSQL); the chain walk is ``WITH RECURSIVE`` in both.
"""

from __future__ import annotations

from . import Stmt

# -- reads -----------------------------------------------------------------------------------

# One response and what a read needs to decide whether to record a use of its chain:
# (body, deleted_at, root_id, the chain's last_used, the tenant's newest last_used).
GET = Stmt(
    both="""SELECT r.body, r.deleted_at, r.root_id, c.last_used,
                     (SELECT MAX(last_used) FROM response_chains WHERE tenant = :tenant)
              FROM responses r
              LEFT JOIN response_chains c ON c.tenant = :tenant AND c.root_id = r.root_id
              WHERE r.tenant = :tenant AND r.id = :id""",
)

# The chain ending at :id in ONE query: walk previous_seq links from :id towards the root.
# The walk stops after depth + 1 steps (depth as recorded on :id, capped by :max_links), so a
# cycle or a wrong depth in a damaged database ends it; the caller checks that the rows form a
# whole chain (depth + 1 distinct rows, the last a root, the root :id records) and raises
# StateCorrupted otherwise. The anchor row (n = 0) also carries :id's root_id and depth, the
# chain's last_used and the tenant's newest (so a read learns in the same statement whether it
# must record a use); the other rows carry NULL there. Rows come in walk order (n = 0, 1, ...):
# no ORDER BY (a sort of every body costs a fifth of the query); the caller sorts by n, which is
# free on rows already in order.
# Rows: (n, id, previous_id, body, root_id, depth, last_used, newest).
CHAIN = Stmt(
    both="""WITH RECURSIVE walk(n, bound, previous_seq, id, previous_id, body, root_id, depth, last_used, newest) AS (
                SELECT 0, CASE WHEN s.depth < :max_links THEN s.depth + 1 ELSE :max_links END,
                       s.previous_seq, s.id, s.previous_id, s.body, s.root_id, s.depth,
                       (SELECT c.last_used FROM response_chains c WHERE c.tenant = :tenant AND c.root_id = s.root_id),
                       (SELECT MAX(m.last_used) FROM response_chains m WHERE m.tenant = :tenant)
                FROM responses s WHERE s.tenant = :tenant AND s.id = :id
                UNION ALL
                SELECT w.n + 1, w.bound, r.previous_seq, r.id, r.previous_id, r.body, NULL, NULL, NULL, NULL
                FROM walk w JOIN responses r ON r.seq = w.previous_seq AND r.tenant = :tenant
                WHERE w.n < w.bound
            )
            SELECT n, id, previous_id, body, root_id, depth, last_used, newest FROM walk""",
)

# The store's facts about one response: (previous_id, root_id, depth, created_at, deleted_at).
INFO = Stmt(
    both="""SELECT previous_id, root_id, depth, created_at, deleted_at FROM responses
            WHERE tenant = :tenant AND id = :id""",
)

# A page of live responses, newest first, strictly older than :before (a seq).
# (:all = 1: soft-deleted ones too.)
LIST_PAGE = Stmt(
    both="""SELECT seq, id, previous_id, root_id, depth, created_at, body, deleted_at FROM responses
              WHERE tenant = :tenant AND (deleted_at IS NULL OR :all = 1) AND seq < :before
              ORDER BY seq DESC LIMIT :limit""",
)

# A list cursor is the (created_at, id) of the last response of a page, never a seq (seqs are global:
# two cursors would tell how many responses other tenants saved in between). The next page starts
# below that response's seq, found here: (seq,), or no row if it was evicted meanwhile ...
LIST_ANCHOR = Stmt(
    both="SELECT seq FROM responses WHERE tenant = :tenant AND id = :id AND created_at = :created_at",
)

# ... and then the page holds the responses created strictly before it (newest first, as LIST_PAGE).
# (seq IS NOT NULL, true of every row, is the predicate of PostgreSQL's responses_recent from schema
# version 7: stated, so that the index can give the order.)
LIST_OLDER = Stmt(
    both="""SELECT seq, id, previous_id, root_id, depth, created_at, body, deleted_at FROM responses
              WHERE tenant = :tenant AND (deleted_at IS NULL OR :all = 1) AND created_at < :created_at
                AND seq IS NOT NULL
              ORDER BY seq DESC LIMIT :limit""",
)

COUNT_LIVE = Stmt(
    both="SELECT COUNT(*) FROM responses WHERE tenant = :tenant AND deleted_at IS NULL",
)

# Every stored response of the tenant, soft-deleted included (what max_responses caps; every save under a
# cap counts). The predicate (see LIST_OLDER) lets PostgreSQL count on responses_recent, its smallest index.
COUNT_ALL = Stmt(
    both="SELECT COUNT(*) FROM responses WHERE tenant = :tenant AND seq IS NOT NULL",
)

# -- writes (inside db.write()) -----------------------------------------------------------------

# The chain facts of the response a new one names as previous: (root_id, depth, seq).
LINK = Stmt(
    both="SELECT root_id, depth, seq FROM responses WHERE tenant = :tenant AND id = :id",
)

# The seq the next response gets (seqs are global: 1 + the largest; writers are serialized).
NEXT_SEQ = Stmt(both="SELECT COALESCE(MAX(seq), 0) + 1 FROM responses")

# PostgreSQL (schema version 3): :n seqs from a sequence (writers of different chains run at once, so
# "1 + the largest" would collide); never reused, ascending in the order drawn.
NEXT_SEQS = Stmt(postgres="SELECT nextval('response_seqs') FROM generate_series(1, %(n)s)")

# One id of the JSON array :ids that is taken in the tenant, or no row (a batch save's check).
ANY_EXISTING = Stmt(
    sqlite="""SELECT id FROM responses
              WHERE tenant = :tenant AND id IN (SELECT value FROM json_each(:ids)) LIMIT 1""",
    postgres="""SELECT id FROM responses
                WHERE tenant = %(tenant)s AND id IN (SELECT json_array_elements_text(%(ids)s::json)) LIMIT 1""",
)

# Store a response (seq from NEXT_SEQ); returns the seq, or no row when the id is taken in the
# tenant (nothing changed). A batch runs it with executemany after ANY_EXISTING found no taken id.
INSERT = Stmt(
    both="""INSERT INTO responses (seq, tenant, id, previous_id, previous_seq, root_id, depth, body, created_at)
            VALUES (:seq, :tenant, :id, :previous_id, :previous_seq, :root_id, :depth, :body, :created_at)
            ON CONFLICT (tenant, id) DO NOTHING RETURNING seq""",
)

# Mark the chain :root_id used now: its last_used becomes 1 + the tenant's newest (the row is
# created for a new chain).
TOUCH_CHAIN = Stmt(
    both="""INSERT INTO response_chains (tenant, root_id, last_used)
              VALUES (:tenant, :root_id,
                      (SELECT COALESCE(MAX(last_used), 0) + 1 FROM response_chains WHERE tenant = :tenant))
              ON CONFLICT (tenant, root_id) DO UPDATE SET last_used = excluded.last_used""",
)

# A read's use of a chain that still exists (an evicted chain is not brought back).
MARK_USED = Stmt(
    both="""UPDATE response_chains
              SET last_used = (SELECT MAX(last_used) + 1 FROM response_chains WHERE tenant = :tenant)
              WHERE tenant = :tenant AND root_id = :root_id
                AND last_used < (SELECT MAX(last_used) FROM response_chains WHERE tenant = :tenant)""",
)

# The :limit least recently used chains: (root_id,) rows, least recent first.
LRU_CHAINS = Stmt(
    both="""SELECT root_id FROM response_chains WHERE tenant = :tenant
            ORDER BY last_used, root_id LIMIT :limit""",
)

# Evict a whole chain: its responses (ids returned) and its chains row.
EVICT_RESPONSES = Stmt(
    both="DELETE FROM responses WHERE tenant = :tenant AND root_id = :root_id RETURNING id",
)
EVICT_CHAIN = Stmt(
    both="DELETE FROM response_chains WHERE tenant = :tenant AND root_id = :root_id",
)

# Soft delete: returns the seq, or no row when missing or already deleted.
SOFT_DELETE = Stmt(
    both="""UPDATE responses SET deleted_at = :now
              WHERE tenant = :tenant AND id = :id AND deleted_at IS NULL RETURNING seq""",
)

# -- doctor (``agentstate.responses.check``): per tenant, at most :limit findings each ------------

TENANTS = Stmt(both="SELECT DISTINCT tenant FROM responses ORDER BY tenant")

# The same walk bounded by :max_links only (doctor passes the tenant's count + 1), so that a cycle
# is walked round until a response repeats even where the recorded depths are wrong.
WALK = Stmt(both=CHAIN.sqlite.replace("CASE WHEN s.depth < :max_links THEN s.depth + 1 ELSE :max_links END",
                                      "CAST(:max_links AS BIGINT)"))
assert WALK.sqlite != CHAIN.sqlite

# Links that lead nowhere: a previous_id without the matching previous_seq row (same tenant, that
# seq, that id), or only one of the two set. Rows: (id, previous_id).
BROKEN_LINKS = Stmt(
    both="""SELECT r.id, r.previous_id FROM responses r
            WHERE r.tenant = :tenant AND (
                (r.previous_id IS NULL) <> (r.previous_seq IS NULL)
                OR (r.previous_id IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM responses p
                    WHERE p.tenant = :tenant AND p.seq = r.previous_seq AND p.id = r.previous_id)))
            ORDER BY r.seq LIMIT :limit""",
)

# Rows whose recorded chain facts disagree with their link: a root must have depth 0 and
# root_id = id; any other row the depth of its previous + 1 and the same root_id. (When every
# link exists and these hold, no cycle can exist: depth falls by one along every link; doctor
# walks each row found here with CHAIN to tell a cycle from a wrong depth.)
# Rows: (id, previous_id, depth, root_id, previous's depth, previous's root_id).
BAD_FACTS = Stmt(
    both="""SELECT r.id, r.previous_id, r.depth, r.root_id, p.depth, p.root_id FROM responses r
            LEFT JOIN responses p ON p.tenant = :tenant AND p.seq = r.previous_seq
            WHERE r.tenant = :tenant AND (
                (r.previous_id IS NULL AND (r.depth <> 0 OR r.root_id <> r.id))
                OR (p.seq IS NOT NULL AND (r.depth <> p.depth + 1 OR r.root_id <> p.root_id)))
            ORDER BY r.seq LIMIT :limit""",
)

# Roots of responses with no chains row (such a chain would never be evicted): (root_id,).
MISSING_CHAIN_ROWS = Stmt(
    both="""SELECT DISTINCT r.root_id FROM responses r
            WHERE r.tenant = :tenant AND NOT EXISTS
                (SELECT 1 FROM response_chains c WHERE c.tenant = :tenant AND c.root_id = r.root_id)
            ORDER BY r.root_id LIMIT :limit""",
)

# -- list --include-deleted, prune, export (``ResponseStore.list/prune/export_lines``) ---------------

# Chains (roots) whose newest response was saved before :cutoff (reads do not count: only saves).
STALE_CHAINS = Stmt(
    both="""SELECT root_id FROM responses WHERE tenant = :tenant
              GROUP BY root_id HAVING MAX(created_at) < :cutoff ORDER BY root_id""",
)

# Chains (roots) every response of which is soft-deleted: no live response can reach them any more.
DEAD_CHAINS = Stmt(
    both="""SELECT root_id FROM responses WHERE tenant = :tenant
              GROUP BY root_id HAVING COUNT(deleted_at) = COUNT(*) ORDER BY root_id""",
)

# The ids of one chain, oldest first (what prune would delete, for --dry-run).
CHAIN_IDS = Stmt(
    both="SELECT id FROM responses WHERE tenant = :tenant AND root_id = :root_id ORDER BY seq",
)

# Every response of the tenant, oldest first (so a previous response comes before the ones naming it):
# (id, previous_id, created_at, deleted_at, body).
EXPORT_ALL = Stmt(
    both="""SELECT id, previous_id, created_at, deleted_at, body FROM responses
              WHERE tenant = :tenant AND seq IS NOT NULL ORDER BY seq""",  # (the predicate: LIST_OLDER)
)
