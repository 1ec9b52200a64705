"""Statements of the state store on PostgreSQL (agentstate/pgstate.py). PostgreSQL only: on disk the
state document is a file (agentstate/store.py). Tables in schema.py (version 1, ``_PG_ONLY_V1``).

``state_documents`` has one row, ``name = 'state'``, created by the migration: ``data`` holds the
document's bytes exactly as state.json would (the checksummed codec), ``previous`` the version before
it, as state.json.bak would. Writers serialize on the state advisory lock (agentstate/sql/pg_lock.py);
the read runs as its own statement once the lock is held, so it sees the last committed version. (No
row lock: it would cost a WAL flush even for a transaction that changes nothing.)
"""

from __future__ import annotations

from binascii import hexlify

READ = "SELECT data, previous FROM state_documents WHERE name = 'state'"

# keep_previous: when saving a recovery from ``previous`` (data was damaged), previous stays the good
# version it is, as state.json.bak does on disk; otherwise the current version becomes the previous one.
#
# An upsert: if the row is missing (someone ran DELETE FROM state_documents), the read under the lock
# found no document, so this write starts a new one and re-inserts the row; it can never change no row
# and still report success. (Doctor reports a missing row.)
SAVE = """
    INSERT INTO state_documents AS d (name, data, previous, updated_at)
    VALUES ('state', %(data)s, NULL, now())
    ON CONFLICT (name) DO UPDATE
    SET previous = CASE WHEN %(keep_previous)s THEN d.previous ELSE d.data END,
        data = EXCLUDED.data, updated_at = now()"""

# After a state transaction that wrote, committed with synchronous_commit off (pg_state.py): a transaction
# of its own that commits synchronously, so that the call returns only once the WAL is on disk up to its
# commit record, which follows the state transaction's. setval writes WAL on every call (the sequence's
# page; nextval only every 32 values), and a transaction that wrote no WAL would not wait for a flush.
# The sequence is schema version 8's; its value means nothing.
FLUSH = "SELECT setval('state_flushes', 1)"

# The same read and save with the document as hex digits, for the simple-protocol messages of
# pg_state.py (values written into the text): encode/decode(..., 'hex'), whatever bytea_output and
# standard_conforming_strings say; the hex digits and a boolean literal need no escaping.
# The previous version is read only when ``data`` is missing or does not verify (PREVIOUS_HEX, under the
# same lock): a large document's transaction moves it once, not twice.
READ_HEX = "SELECT encode(data, 'hex'), previous IS NOT NULL FROM state_documents WHERE name = 'state'"
PREVIOUS_HEX = "SELECT encode(previous, 'hex') FROM state_documents WHERE name = 'state'"
_SAVE_HEX = {keep: tuple(part.encode() for part in SAVE.replace("%(keep_previous)s", "true" if keep else "false")
                         .split("%(data)s")) for keep in (False, True)}


def save_hex(data: bytes, keep_previous: bool) -> bytes:
    """SAVE's text with ``data`` and ``keep_previous`` written in."""
    head, tail = _SAVE_HEX[keep_previous]
    return b"".join((head, b"decode('", hexlify(data), b"', 'hex')", tail))
