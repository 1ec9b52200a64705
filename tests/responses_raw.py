"""Raw access to the responses tables of a store (a directory's agentstate.db or a PostgreSQL schema),
bypassing agentstate: to look at what is stored and to damage it on purpose in tests.

``raw(target, sql, **params)`` runs one statement written with ``:name`` parameters and returns its
rows (``[]`` for none); ``rows(target)`` is every responses row as (tenant, id, previous_id, root_id,
depth, body, deleted_at), in seq order.
"""

from __future__ import annotations

import os
import re
from typing import Any


def is_pg(target: Any) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def raw(target: str, sql: str, **params: Any) -> list[tuple]:
    if is_pg(target):
        from pgserver import schema_conn

        text = re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql)
        with schema_conn(target) as conn:
            cur = conn.execute(text, params or None)
            return cur.fetchall() if cur.description is not None else []
    import sqlite3

    path = os.path.join(target, "agentstate.db")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    try:
        cur = conn.execute(sql, params)
        return cur.fetchall()
    finally:
        conn.close()


def rows(target: str) -> list[tuple]:
    try:
        return raw(target, "SELECT tenant, id, previous_id, root_id, depth, body, deleted_at FROM responses "
                           "ORDER BY seq")
    except Exception as e:  # no database or no table yet: nothing stored
        if isinstance(e, FileNotFoundError) or "no such table" in str(e) or "does not exist" in str(e):
            return []
        raise
