"""The state store: a directory holding state.json, state.json.bak and state.json.lock.

``read()`` takes no lock and never writes. ``transaction()`` locks, loads (recovering from
the backup if it must), yields the State, and saves it atomically if it changed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..duration import parse_duration
from ..errors import ConflictError, InvalidInput, StateCorrupted, StorageError
from ..logs import getLogger
from ..names import DEFAULT_DIR, default_dir, is_url  # noqa: F401 - re-exported
from . import codec, fileio, signals
from .fileio import OsFiles
from .lock_pool import LockPool

log = getLogger("agentstate.store")

STATE_NAME = "state.json"


_FIELDS = ("serial", "lineage", "updated_at", "format_version", "source", "changed")


class State:
    """One version of the state. Inside a transaction, change ``resources`` (the dict, or assign
    a new one): it is the only mutable part. ``serial``, ``lineage``, ``updated_at``,
    ``format_version``, ``source`` and ``changed`` are read-only (assigning one raises
    InvalidInput); after a changing transaction they describe the committed version."""

    __slots__ = ("resources", "_serial", "_lineage", "_updated_at", "_format_version", "_source", "_changed")

    def __init__(self, resources: dict[str, Any], serial: int, lineage: str, updated_at: str | None = None,
                 format_version: int = codec.FORMAT_VERSION, source: str = "state", changed: bool = False) -> None:
        put = object.__setattr__
        put(self, "resources", resources)
        put(self, "_serial", serial)
        put(self, "_lineage", lineage)
        put(self, "_updated_at", updated_at)
        put(self, "_format_version", format_version)
        put(self, "_source", source)
        put(self, "_changed", changed)

    def _set(self, **fields: Any) -> None:
        for k, v in fields.items():
            object.__setattr__(self, "_" + k, v)

    serial = property(lambda self: self._serial, doc="The version number: one more on every changing save.")
    lineage = property(lambda self: self._lineage, doc="The store's UUID, fixed by its first save.")
    updated_at = property(lambda self: self._updated_at, doc="RFC 3339 UTC time of the save.")
    format_version = property(lambda self: self._format_version, doc="The format found on disk.")
    source = property(lambda self: self._source, doc='Where it was loaded from: "state", "backup" or "new".')
    changed = property(lambda self: self._changed, doc="True once a transaction saved a new version.")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "resources":
            object.__setattr__(self, name, value)
            return
        if name in _FIELDS:
            raise InvalidInput(f"State.{name} is read-only: a transaction changes resources only; "
                               "serial, lineage and updated_at are set by the save")
        raise InvalidInput(f"State has no attribute {name!r} to set; a transaction changes resources only")

    def __delattr__(self, name: str) -> None:
        raise InvalidInput(f"State.{name} cannot be deleted")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in ("resources", *_FIELDS[:-1]))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"State(serial={self.serial}, lineage={self.lineage!r}, updated_at={self.updated_at!r}, "
                f"source={self.source!r}, resources=<{len(self.resources)} entries>)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": codec.FORMAT_VERSION,
            "serial": self.serial,
            "lineage": self.lineage,
            "updated_at": self.updated_at,
            "resources": self.resources,
        }


@dataclass
class _Loaded:
    """A load, and the snapshot a save is computed from: the caller's State never feeds it."""

    state: State  # what the caller gets (and may change: resources only)
    resources_bytes: bytes | memoryview | None  # resources as encoded in the file, to see if anything changed
    previous: fileio.Previous  # what state.json holds now
    problems: list[tuple[str, str]]
    order: tuple[str, ...] = ()  # addresses as loaded (already checked), in the file's order
    serial: int = 0  # as loaded
    lineage: str = ""
    source: str = "state"


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_serial(state: State, expect_serial: int | None) -> None:
    """ConflictError unless ``state`` is at ``expect_serial`` (None: anything goes)."""
    if expect_serial is not None and state.serial != expect_serial:
        raise ConflictError(
            f"state is at serial {state.serial}, expected {expect_serial}",
            hint="the state moved on; re-read it and retry",
            serial=state.serial,
        )


def check_expected(state: State, expect_serial: int | None, expect_lineage: str | None) -> None:
    """A transaction's preconditions: ConflictError unless ``state`` is at ``expect_serial`` and of
    ``expect_lineage`` (None: anything goes)."""
    check_serial(state, expect_serial)
    if expect_lineage is not None and state.lineage != expect_lineage:
        raise ConflictError(
            f"state has lineage {state.lineage}, expected {expect_lineage}",
            hint="this is a different store",
            lineage=state.lineage,
        )


class _OpensUrls(type):
    """``StateStore(url)``: compatibility only, through the one opener (agentstate.state.open.open_state)."""

    def __call__(cls, path: Any = None, *args: Any, **kwargs: Any) -> Any:
        if cls is StateStore and path is not None and is_url(path):
            from .open import open_state

            return open_state(path, *args, **kwargs)
        return super().__call__(path, *args, **kwargs)


class StateStore(metaclass=_OpensUrls):
    """A store directory. ``StateStore(path)``; path may be a str or a Path.

    A ``postgresql://`` (or ``postgres://``) URL gives the PostgreSQL store (agentstate/state/pgstore.py), built by open_state()."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float | str | None = None,
        files: OsFiles | None = None,
    ) -> None:
        self.path = os.fspath(path if path is not None else default_dir())
        self.state_path = os.path.join(self.path, STATE_NAME)
        self.backup_path = self.state_path + ".bak"
        self.lock_path = self.state_path + ".lock"
        self._dir_ok = False  # the directory was found or created by a transaction of this object
        if lock_timeout is None:
            lock_timeout = os.environ.get("AGENTSTATE_LOCK_TIMEOUT") or 30.0
        self.lock_timeout = parse_duration(lock_timeout, "lock timeout")
        self.files = files or OsFiles()
        # An idle writer Lock that keeps its lock-file descriptor open between transactions (at most one
        # is kept: a second concurrent transaction's is closed). close() or the collection of this object
        # closes it.
        self._locks = LockPool(self.lock_path, self.files, 1)
        weakref.finalize(self, self._locks.close)

    def __repr__(self) -> str:
        return f"StateStore({self.path!r})"

    def close(self) -> None:
        """Close the lock-file descriptor kept between transactions (the store stays usable)."""
        self._locks.close()

    # -- reading -------------------------------------------------------------------------

    def read(self, *, quiet: bool = False) -> State:
        """The current state, verified; recovered in memory from the backup if needed. Never writes.

        ``quiet`` skips the ERROR/WARNING logs of a fallback to the backup."""
        primary = self._read_file(self.state_path)
        if primary is not None:  # the usual case, without what a transaction needs of _load
            try:
                doc = codec.decode_document(primary)
            except codec.CorruptDocument:
                pass  # _load reads it again and says why
            else:
                return State(doc.resources, doc.serial, doc.lineage, doc.updated_at, doc.format_version)
        return self._load(quiet=quiet).state

    def _read_file(self, path: str) -> bytes | None:
        try:
            return self.files.read(path)
        except IsADirectoryError:
            # Not damage agentstate can repair (nor evidence to keep): say what it is, touch nothing.
            raise StorageError(
                f"{path} is a directory, not a file; move it aside (agentstate changed nothing)",
                errno="EISDIR", path=path,
            ) from None
        except fileio.NotRegularFile:
            raise StorageError(
                f"{path} is not a regular file (a FIFO or a device); move it aside (agentstate changed nothing)",
                errno="EINVAL", path=path,
            ) from None
        except OSError as e:
            raise fileio.io_error("read", path, e) from None

    def _load(self, *, quiet: bool = False) -> _Loaded:
        problems: list[tuple[str, str]] = []
        primary = self._read_file(self.state_path)
        if primary is not None:
            try:
                doc = codec.decode_document(primary)
            except codec.CorruptDocument as e:
                problems.append((self.state_path, str(e)))
            else:
                return self._loaded(doc, "state", primary, fileio.Previous(True, True, primary), problems)
        backup = self._read_file(self.backup_path)
        if primary is None and backup is None:
            import uuid

            state = State(resources={}, serial=0, lineage=str(uuid.uuid4()), source="new")
            return _Loaded(state, b"{}", fileio.Previous(False, False), problems, serial=0,
                           lineage=state.lineage, source="new")
        doc = self._backup_doc(primary is None, backup, problems, quiet=quiet)
        return self._loaded(doc, "backup", None, fileio.Previous(primary is not None, False, primary), problems)

    # What the fallback says (the PostgreSQL store words it for its rows).
    _MISSING = "missing while a backup exists"
    _LEFT_AS_THEY_ARE = "the files were left as they are; restore one from a copy, or move them aside to start anew"

    def _backup_doc(self, primary_missing: bool, backup: bytes | None, problems: list[tuple[str, str]], *,
                    quiet: bool) -> codec.Decoded:
        """The backup's document once the current version is missing or did not verify (``problems`` says
        why), the fallback logged; StateCorrupted naming every problem when the backup does not verify either."""
        if primary_missing:
            problems.append((self.state_path, self._MISSING))
        if backup is None:
            problems.append((self.backup_path, "missing"))
        else:
            try:
                doc = codec.decode_document(backup)
            except codec.CorruptDocument as e:
                problems.append((self.backup_path, str(e)))
            else:
                if not quiet:  # quiet: a caller that goes on to lock and repair reports it then
                    for path, reason in problems:
                        log.error("corruption detected in %s: %s", path, reason)
                    log.warning(
                        "fallback used: serving serial %d from %s; the next write (or `agentstate doctor "
                        "--repair`) restores %s",
                        doc.serial, self.backup_path, self.state_path,
                    )
                return doc
        tried = "; ".join(f"{p}: {r}" for p, r in problems)
        raise StateCorrupted(f"no valid state: {tried}", hint=self._LEFT_AS_THEY_ARE, tried=problems)

    @staticmethod
    def _loaded(doc: codec.Decoded, source: str, raw: bytes | None, previous: fileio.Previous,
                problems: list[tuple[str, str]]) -> _Loaded:
        state = State(doc.resources, doc.serial, doc.lineage, doc.updated_at, doc.format_version, source)
        rb = None
        if source == "state":  # an older format is upgraded on the next save that changes something
            rb = doc.resources_bytes if doc.resources_bytes is not None else codec.encode_value(doc.resources)
        return _Loaded(state, rb, previous, problems, serial=doc.serial, lineage=doc.lineage, source=source)

    # -- writing -------------------------------------------------------------------------

    def lock(self, *, operation: str = "transaction"):
        """An unacquired Lock for this store (see agentstate.lock.Lock)."""
        from .lock import Lock

        return Lock(self.lock_path, files=self.files)

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
        """Lock, load, yield the State, save it atomically if it changed, unlock.

        An exception inside the block saves nothing and propagates.
        """
        timeout = self.lock_timeout if lock_timeout is None else parse_duration(lock_timeout, "lock timeout")
        state: State | None = None
        locked = committed = False
        lk = None
        done: list[bool] = []  # True once the save is durable (set with signals held: see _save)
        with signals.guarded():  # SIGINT/SIGTERM: finish or abandon, clean up, unlock, then Interrupted
            try:
                if not self._dir_ok:  # once per store object: a stat on every transaction otherwise
                    fileio.ensure_dir(self.files, self.path)
                    self._dir_ok = True
                lk = self._locks.take()
                try:  # acquire inside: a signal right after it returns still ends in release()
                    lk.acquire(timeout, operation, on_wait)  # StateLocked, or StorageError naming the problem
                    locked = True
                    # Everything is re-read and re-verified under the lock: nothing from an earlier
                    # transaction (or an earlier failed fsync) is trusted.
                    loaded = self._load()
                    if loaded.source == "backup":  # a writer died, or worse: clean up as doctor --repair does
                        fileio.remove_temps(self.files, self.path, STATE_NAME)
                    state = loaded.state
                    check_expected(state, expect_serial, expect_lineage)
                    if loaded.source == "state":
                        loaded.order = tuple(state.resources)
                    yield state
                    committed = self._save(loaded, state, done)
                finally:
                    with signals.critical(outcome=None):
                        lk.release()
                    self._locks.give(lk)
            except KeyboardInterrupt as e:
                signals.release_cut_short(lk)  # a signal at the start of the finally above, before its release
                committed = committed or bool(done) or getattr(e, "outcome", None) == "committed"
                raise signals.interrupted(
                    e, "write", committed=f"{self.state_path} is at serial {state.serial}" if committed and state else None,
                    locked=locked,
                ) from None

    def _save(self, loaded: _Loaded, state: State, done: list[bool]) -> bool:
        """Write the caller's resources as the next version, if they changed; True if written (and
        ``done`` gets True the moment it is durable, signals held)."""
        if not isinstance(state.resources, dict):
            raise InvalidInput("resources must be a JSON object (a dict)")
        resources = state.resources
        resources_bytes = codec.encode_raw(resources)
        old = loaded.resources_bytes
        new_addresses = False
        if resources_bytes != old or loaded.source == "backup":
            if len(resources) != len(loaded.order) or tuple(resources) != loaded.order:  # added, removed, moved
                if (old is not None and len(resources_bytes) == len(old) and len(resources) == len(loaded.order)
                        and resources.keys() == set(loaded.order)):
                    # Deleting and re-adding an address only moves it: encode in the file's order to see.
                    resources_bytes = codec.encode_raw({k: resources[k] for k in loaded.order})
                else:
                    new_addresses = True
        if resources_bytes == old and loaded.source != "backup":
            codec.check_floats(resources, resources_bytes)  # a NaN where a null was is still refused
            log.debug("transaction changed nothing; nothing written")
            return False
        serial = loaded.serial + 1  # from the snapshot: the caller's State cannot set it
        if loaded.source == "backup":
            # The lost state.json most likely held serial + 1 (or more): never hand a number out twice,
            # or a client still holding it could pass --expect-serial against different resources.
            serial = max(loaded.serial + 2, _salvaged_serial(loaded.previous.data) + 1)
        updated_at = _utcnow()
        digest = codec.Digest(codec.document_head(serial, loaded.lineage, updated_at), resources_bytes)
        try:  # the checks run while a large state is hashed on another core
            codec.check_floats(resources, resources_bytes)
            if new_addresses:
                codec.check_addresses(resources.keys(), resources_bytes)
        finally:
            digest.wait()
        data = digest.parts()

        def durable() -> None:  # with signals held, right after the directory fsync: a signal from here on
            state._set(serial=serial, updated_at=updated_at, format_version=codec.FORMAT_VERSION, changed=True)
            signals.note_committed(f"{self.state_path} is at serial {serial}")
            done.append(True)  # is reported as after this commit (transaction's except)

        fileio.commit(self.files, self.state_path, data, loaded.previous, on_durable=durable)
        if loaded.source == "backup":
            log.warning("recovery persisted: %s restored from backup as serial %d", self.state_path, serial)
        return True

    # -- lock management and checks ---------------------------------------------------------

    def lock_status(self) -> dict[str, Any]:
        return self.lock().status()

    def force_unlock(self, lock_id: str, *, force: bool = False) -> dict[str, Any]:
        """Clear a stale lock record (see Lock.force_unlock); ``force`` adds nothing: a held lock is never removed."""
        return self.lock().force_unlock(lock_id, force=force).to_dict()

    def check(self) -> list[dict[str, Any]]:
        """Doctor's findings: one dict per check with "check", "ok", "detail"."""
        from .lock import Holder

        findings: list[dict[str, Any]] = []

        def add(check: str, ok: bool, detail: str, **extra: Any) -> None:
            findings.append({"check": check, "ok": ok, "detail": detail, **extra})

        if not os.path.isdir(self.path):
            if os.path.lexists(self.path) or not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                add("store", False, f"{self.path} cannot be a store: it or its parent is not a directory")
            else:
                add("store", True, f"{self.path} does not exist yet (an empty store)")
            return findings
        for name, path in (("state", self.state_path), ("backup", self.backup_path)):
            try:
                data = self._read_file(path)
            except StorageError as e:  # e.g. a directory in its place
                add(name, False, e.message, path=path)
                continue
            if data is None:
                # A missing state file is bad only when a backup exists (it will be restored from it).
                ok = name == "backup" or not os.path.lexists(self.backup_path)
                add(name, ok, f"{path} is missing", path=path)
                continue
            try:
                doc = codec.decode_document(data)
            except codec.CorruptDocument as e:
                add(name, False, f"{path}: {e}", path=path)
            else:
                add(name, True, f"{path}: valid, serial {doc.serial}, {len(doc.resources)} resources", path=path,
                    serial=doc.serial)
        try:
            status = self.lock().status()
        except StorageError as e:  # no working flock here: nothing can write this store safely
            add("lock", False, e.message)
        else:
            record = status["holder"] or status["last_holder"]
            holder = Holder.parse(__import__("orjson").dumps(record)) if record else None
            if status["held"]:
                add("lock", True, f"held by {holder.describe() if holder else 'a process writing its record'}")
            elif holder is not None:
                add("lock", True, f"free; a stale record of {holder.describe()} remains (harmless: the next "
                    "writer overwrites it)")
            else:
                add("lock", True, "free")
        strays = [e for e in self.files.listdir(self.path) if e.startswith(fileio.temp_prefixes(STATE_NAME))]
        add("temp files", not strays, f"{len(strays)} stray temp file(s)" + (f": {', '.join(strays)}" if strays else ""),
            files=strays)
        corrupt = [e for e in self.files.listdir(self.path) if e.startswith(STATE_NAME + ".corrupt-")]
        if corrupt:
            add("kept corrupt files", True, f"{len(corrupt)} corrupted file(s) kept as evidence: {', '.join(corrupt)}")
        return findings

    def repair(self, lock_timeout: float | str | None = None) -> State:
        """Persist a recovery: under the lock, clean temp files and rewrite state.json if it is not valid."""
        with self.transaction(lock_timeout, operation="repair") as state:
            fileio.remove_temps(self.files, self.path, STATE_NAME)  # names older versions used, too
        return state


def _salvaged_serial(damaged: bytes | None) -> int:
    """The serial a damaged state file claims, if it still parses that far; else -1."""
    import orjson

    try:
        serial = orjson.loads(damaged or b"")["serial"]
    except Exception:  # noqa: BLE001 - damaged bytes may fail in any way
        return -1
    return serial if type(serial) is int else -1
