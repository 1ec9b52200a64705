"""The state store on PostgreSQL: ``StateStore("postgresql://...")`` gives one of these.

The same document as on disk: ``state_documents.data`` holds the bytes state.json would hold (the
checksummed codec: serial, lineage, updated_at, resources), ``previous`` the version before it, as
state.json.bak does. Reads, recovery from the previous version and serials follow agentstate/store.py
exactly, so ``doctor`` and recovery mean the same thing on both backends.

A transaction is one PostgreSQL transaction in two messages (agentstate/sql/pg_state.py): the holder
record published, BEGIN, the state advisory lock taken within ``lock_timeout`` (else StateLocked, exit
3, naming the holder) and the row read; then, after the caller's block, the new version written,
COMMIT (which frees the lock), and the wait for that COMMIT's WAL flush, so a return means durable. A
holder killed mid-transaction loses its connection, hence its lock and its uncommitted
change, at once. Server trouble (unreachable, authentication, a dropped connection, disk full) is one
StorageError (exit 1); nothing is half-written, and the next call reconnects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..duration import parse_duration
from ..errors import InvalidInput
from ..logs import getLogger
from ..sql import pg, q_state
from . import codec
from .store import State, StateStore, _salvaged_serial, _utcnow, check_expected

log = getLogger("agentstate.store")


class _Snapshot:
    """What a save is computed from (the caller's State never feeds it)."""

    __slots__ = ("state", "serial", "lineage", "source", "resources_bytes", "order", "keys", "damaged")

    def __init__(self, state: State, resources_bytes: bytes | memoryview | None, damaged: bytes | None) -> None:
        self.state = state
        self.serial, self.lineage, self.source = state.serial, state.lineage, state.source
        self.resources_bytes = resources_bytes
        self.damaged = damaged  # data that did not verify (recovered from previous)
        self.order: tuple[str, ...] = ()
        self.keys: frozenset[str] = frozenset()


def _set(state: State, **fields: Any) -> None:
    setter = getattr(state, "_set", None)
    if setter is not None:
        setter(**fields)
    else:
        for k, v in fields.items():
            object.__setattr__(state, k, v)


class PgStateStore(StateStore):
    """A state store in a PostgreSQL schema. ``StateStore(url)`` builds one; see the module docstring."""

    def __init__(
        self,
        path: str | None = None,
        *,
        lock_timeout: float | str | None = None,
        files: Any = None,
    ) -> None:
        if not pg.is_url(path):
            raise InvalidInput(f"{path!r} is not a postgresql:// URL")
        self.connector = pg.Connector(path)
        self.url = path
        self.path = path  # as given (the CLI and doctor pass it on); repr() hides a password
        self.schema = self.connector.schema
        self.state_path = f"{self.connector.where} schema {self.schema}: state_documents.data"
        self.backup_path = f"{self.connector.where} schema {self.schema}: state_documents.previous"
        self.lock_path = f"{self.connector.where} schema {self.schema}: advisory lock"
        if lock_timeout is None:
            lock_timeout = os.environ.get("AGENTSTATE_LOCK_TIMEOUT") or 30.0
        self.lock_timeout = parse_duration(lock_timeout, "lock timeout")
        self.files = None

    def __repr__(self) -> str:
        return f"StateStore({pg.redact(self.path)!r})"

    _MISSING = "missing while a previous version exists"
    _LEFT_AS_THEY_ARE = "the rows were left as they are; restore the document from a copy, or reset it to start anew"

    # -- reading -------------------------------------------------------------------------

    def read(self, *, quiet: bool = False) -> State:
        rows = self.connector.query("reading the state", q_state.READ, lock_timeout=self.lock_timeout)
        return self._load(rows[0] if rows else None, quiet=quiet).state

    def _load(self, row: tuple | None, *, quiet: bool = False) -> _Snapshot:  # type: ignore[override]
        data, previous = (row or (None, None))
        data = bytes(data) if data is not None else None
        problems: list[tuple[str, str]] = []
        if data is not None:
            try:
                doc = codec.decode_document(data)
            except codec.CorruptDocument as e:
                problems.append((self.state_path, str(e)))
            else:
                return self._snapshot(doc, "state", None)
        if callable(previous):  # a transaction reads the previous version only when it is needed (pg_state)
            previous = previous()
        previous = bytes(previous) if previous is not None else None
        if data is None and previous is None:
            import uuid

            return _Snapshot(State(resources={}, serial=0, lineage=str(uuid.uuid4()), source="new"), b"{}", None)
        doc = self._backup_doc(data is None, previous, problems, quiet=quiet)
        return self._snapshot(doc, "backup", data)

    @staticmethod
    def _snapshot(doc: codec.Decoded, source: str, damaged: bytes | None) -> _Snapshot:
        state = State(doc.resources, doc.serial, doc.lineage, doc.updated_at, doc.format_version, source)
        rb = None
        if source == "state":
            rb = doc.resources_bytes if doc.resources_bytes is not None else codec.encode_value(doc.resources)
        return _Snapshot(state, rb, damaged)

    # -- writing -------------------------------------------------------------------------

    def lock(self, *, operation: str = "transaction"):
        raise InvalidInput("a PostgreSQL store has no lock file; its transactions take an advisory lock",
                           hint="use transaction(), lock_status() or force_unlock()")

    @contextmanager
    def transaction(
        self,
        lock_timeout: float | str | None = None,
        *,
        operation: str = "transaction",
        expect_serial: int | None = None,
        expect_lineage: str | None = None,
        on_wait: Callable[[Any], None] | None = None,
    ) -> Iterator[State]:
        """Lock, load, yield the State, save it if it changed, commit. An exception saves nothing."""
        from ..sql import pg_state
        from . import signals

        timeout = self.lock_timeout if lock_timeout is None else parse_duration(lock_timeout, "lock timeout")
        state: State | None = None
        saved = [False]
        with signals.guarded():
            try:
                with pg_state.state_transaction(self.connector, operation, pg.LOCK_STATE, timeout, on_wait,
                                                f"state ({self.schema})") as tx:
                    rows = tx.first_rows
                    snap = self._load(rows[0] if rows else None)
                    state = snap.state
                    check_expected(state, expect_serial, expect_lineage)
                    if snap.source == "state":
                        snap.order = tuple(state.resources)
                        snap.keys = frozenset(snap.order)
                    yield state
                    fields = self._save(tx, snap, state)
                    saved[0] = fields is not None
                if fields is not None:  # committed
                    _set(state, **fields)
                    if snap.source == "backup":
                        log.warning("recovery persisted: %s restored from %s as serial %d", self.state_path,
                                    self.backup_path, fields["serial"])
            except KeyboardInterrupt as e:
                committed = getattr(e, "outcome", None) == "committed"
                raise signals.interrupted(
                    e, "write", committed="the new version was committed" if committed else None,
                    locked=state is not None,  # the state is loaded only once the lock is held
                ) from None

    def _save(self, tx: Any, snap: _Snapshot, state: State) -> dict[str, Any] | None:  # type: ignore[override]
        """Write the caller's resources as the next version if they changed: the new fields, or None."""
        resources = state.resources
        if not isinstance(resources, dict):
            raise InvalidInput("resources must be a JSON object (a dict)")
        resources_bytes = codec.encode_value(resources)
        addresses = tuple(resources)
        same_addresses = addresses == snap.order
        if (resources_bytes != snap.resources_bytes and not same_addresses and snap.resources_bytes is not None
                and len(resources_bytes) == len(snap.resources_bytes) and resources.keys() == snap.keys):
            resources_bytes = codec.encode_value({k: resources[k] for k in snap.order})
        if resources_bytes == snap.resources_bytes and snap.source != "backup":
            log.debug("transaction changed nothing; nothing written")
            return None
        if not same_addresses:
            for address in resources.keys() - snap.keys:
                codec.check_address(address)
        serial = snap.serial + 1
        if snap.source == "backup":
            # As on disk: the damaged version most likely held serial + 1 (or more); never reuse a number.
            serial = max(snap.serial + 2, _salvaged_serial(snap.damaged) + 1)
        updated_at = _utcnow()
        data = codec.encode_document(serial=serial, lineage=snap.lineage, updated_at=updated_at,
                                     resources_bytes=resources_bytes)
        tx.save(data, keep_previous=snap.source == "backup")  # sent with the COMMIT
        return {"serial": serial, "updated_at": updated_at, "format_version": codec.FORMAT_VERSION, "changed": True}

    # -- lock management and checks ---------------------------------------------------------

    def lock_status(self) -> dict[str, Any]:
        status = pg.lock_status(self.connector, pg.LOCK_STATE)
        status["path"] = self.lock_path
        return status

    def force_unlock(self, lock_id: str, *, force: bool = False) -> dict[str, Any]:
        return pg.force_unlock(self.connector, pg.LOCK_STATE, lock_id)

    def check(self) -> list[dict[str, Any]]:
        """Doctor's findings: the current and previous versions and the state lock ("store" instead, when
        the schema does not exist yet or the server cannot be read). The schema itself, its version and
        the sessions lock are the database's findings (``agentstate.sql.check(url)``)."""
        base = pg.check(self.connector, purposes=(pg.LOCK_STATE,))
        if not base or not base[0]["ok"] or "does not exist" in base[0]["detail"]:
            return [{**f, "check": "store"} for f in base[:1]]
        findings = base[1:]  # the lock

        def add(check: str, ok: bool, detail: str, **extra: Any) -> None:
            findings.append({"check": check, "ok": ok, "detail": detail, **extra})

        rows = self.connector.query("checking the state", q_state.READ)
        if not rows:  # the migration creates it: deleted since
            add("state", False, f"{self.state_path}: the row (state_documents, name 'state') is missing: the "
                "document was deleted; the next write starts a new one at serial 1", path=self.state_path)
            return findings
        data, previous = rows[0]
        for name, blob, where in (("state", data, self.state_path), ("backup", previous, self.backup_path)):
            if blob is None:
                ok = name == "backup" or previous is None
                add(name, ok, f"{where} is empty", path=where)
                continue
            try:
                doc = codec.decode_document(bytes(blob))
            except codec.CorruptDocument as e:
                add(name, False, f"{where}: {e}", path=where)
            else:
                add(name, True, f"{where}: valid, serial {doc.serial}, {len(doc.resources)} resources", path=where,
                    serial=doc.serial)
        return findings

    def repair(self, lock_timeout: float | str | None = None) -> State:
        with self.transaction(lock_timeout, operation="repair") as state:
            pass
        return state

    def close(self) -> None:
        self.connector.close_all()
