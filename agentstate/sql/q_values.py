"""Doctor's scan of the stored JSON values (``agentstate.values_check``), both dialects: session items,
session metadata and response bodies, read in keyset batches per tenant (tenants listed first, as the
responses chain check does; every scan statement is scoped by :tenant)."""

from __future__ import annotations

from . import Stmt

SESSION_TENANTS = Stmt(both="SELECT DISTINCT tenant FROM sessions ORDER BY tenant")
RESPONSE_TENANTS = Stmt(both="SELECT DISTINCT tenant FROM responses ORDER BY tenant")

# Items after (:session_id, :seq), in primary-key order: (session_id, seq, data) rows.
ITEMS = Stmt(both="""
    SELECT session_id, seq, data FROM session_items
    WHERE tenant = :tenant AND (session_id > :session_id OR (session_id = :session_id AND seq > :seq))
    ORDER BY session_id, seq LIMIT :limit""")

# Sessions with metadata after :id: (id, metadata) rows.
METADATA = Stmt(both="""
    SELECT id, metadata FROM sessions
    WHERE tenant = :tenant AND id > :id AND metadata IS NOT NULL
    ORDER BY id LIMIT :limit""")

# Responses after :seq (index responses_recent): (seq, id, body) rows.
BODIES = Stmt(both="""
    SELECT seq, id, body FROM responses
    WHERE tenant = :tenant AND seq > :seq
    ORDER BY seq LIMIT :limit""")
