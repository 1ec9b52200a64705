"""Statements of the state store on PostgreSQL (agentstate/pgstate.py). PostgreSQL only: on disk the
state document is a file (agentstate/store.py). Tables in schema.py (version 1, ``_PG_ONLY_V1``).

``state_documents`` has one row, ``name = 'state'``, created by the migration: ``data`` holds the
document's bytes exactly as state.json would (the checksummed codec), ``previous`` the version before
it, as state.json.bak would. A writer holds the state advisory lock (agentstate/sql/pg.py) and also
locks the row, so a program that edits the row without agentstate still serializes with writers.
"""

from __future__ import annotations

READ = "SELECT data, previous FROM state_documents WHERE name = 'state'"

READ_FOR_UPDATE = READ + " FOR UPDATE"

# keep_previous: when saving a recovery from ``previous`` (data was damaged), previous stays the good
# version it is, as state.json.bak does on disk; otherwise the current version becomes the previous one.
SAVE = """
    UPDATE state_documents
    SET previous = CASE WHEN %(keep_previous)s THEN previous ELSE data END,
        data = %(data)s, updated_at = now()
    WHERE name = 'state'"""
