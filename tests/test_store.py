"""The store: transactions, injected I/O failures, recovery from the backup, modes, conflicts."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from backend_view import fingerprint, is_pg, stored
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstate import ConflictError, StateCorrupted, StateStore, StorageError
from agentstate.state import codec, fileio
from agentstate.state.fileio import OsFiles

SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"
TEMP_PREFIXES = fileio.temp_prefixes("state.json")


class FailingFiles(OsFiles):
    """The real file layer, except that one chosen call raises OSError.

    ``arm(op, nth, err)``: the ``nth`` (0-based) call of ``op`` from now on raises
    ``OSError(err)``. Calls on the lock file's fd are not counted and never fail (the lock
    is not what is under test). ``link_errno`` makes every link fail (no hard links here).
    """

    INJECTABLE = ("create", "write", "fsync", "fchmod", "close", "link", "rename", "fsync_dir")

    def __init__(self, link_errno: int | None = None) -> None:
        self.lock_fds: set[int] = set()
        self.link_errno = link_errno
        self.calls: list[str] = []
        self.disarm()

    def arm(self, op: str, nth: int, err: int) -> None:
        assert op in self.INJECTABLE
        self.armed: tuple[str, int, int] | None = (op, nth, err)
        self.seen = 0
        self.triggered = False

    def disarm(self) -> None:
        self.armed, self.seen, self.triggered = None, 0, False

    def _hit(self, op: str, fd: int | None = None) -> None:
        if fd is not None and fd in self.lock_fds:
            return
        self.calls.append(op)
        if self.armed and self.armed[0] == op:
            if self.seen == self.armed[1]:
                err = self.armed[2]
                self.armed, self.triggered = None, True
                raise OSError(err, os.strerror(err))
            self.seen += 1

    def open_rw(self, path: str, mode: int = 0o600, create: bool = True) -> int:
        fd = super().open_rw(path, mode, create)
        self.lock_fds.add(fd)
        return fd

    def create(self, path: str, mode: int = 0o600) -> int:
        self._hit("create")
        fd = super().create(path, mode)
        self.lock_fds.discard(fd)  # the number of a closed lock fd may be reused
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._hit("write", fd)
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._hit("fsync", fd)
        super().fsync(fd)

    def fchmod(self, fd: int, mode: int) -> None:
        self._hit("fchmod", fd)
        super().fchmod(fd, mode)

    def close(self, fd: int) -> None:
        self._hit("close", fd)
        super().close(fd)

    def link(self, src: str, dst: str) -> None:
        self._hit("link")
        if self.link_errno is not None:
            raise OSError(self.link_errno, os.strerror(self.link_errno))
        super().link(src, dst)

    def rename(self, src: str, dst: str) -> None:
        self._hit("rename")
        super().rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._hit("fsync_dir")
        super().fsync_dir(path)


def files_in(d: Path) -> dict[str, tuple[bytes, int, int]]:
    """name -> (bytes, mtime_ns, mode) of every file except the lock file."""
    if not d.exists():
        return {}
    out = {}
    for p in sorted(d.iterdir()):
        if p.name == "state.json.lock":
            continue
        s = p.lstat()
        out[p.name] = (p.read_bytes() if p.is_file() else b"<dir>", s.st_mtime_ns, stat.S_IMODE(s.st_mode))
    return out


def temps(d: Path) -> list[str]:
    return sorted(e for e in os.listdir(d) if e.startswith(TEMP_PREFIXES)) if d.exists() else []


def doc(serial: int, resources: dict[str, Any], lineage: str = "lineage-1") -> bytes:
    return codec.encode_document(
        serial=serial, lineage=lineage, updated_at="2024-01-01T00:00:00Z", resources_bytes=codec.encode_value(resources)
    )


class Boom(Exception):
    pass


# -- property: any sequence of transactions, failures and exceptions ------------------------------

keys = st.sampled_from(["a", "b", "c", "agent.x", "ü/ñ"])
values = st.one_of(st.integers(-5, 5), st.text(max_size=5), st.lists(st.integers(0, 3), max_size=3), st.none())
change = st.one_of(st.tuples(st.just("set"), keys, values), st.tuples(st.just("del"), keys, st.none()))
failure = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(FailingFiles.INJECTABLE), st.integers(0, 3), st.sampled_from([errno.ENOSPC, errno.EIO])),
)
step = st.tuples(st.lists(change, max_size=4), st.sampled_from([False, False, False, True]), failure)


@settings(max_examples=300 if SLOW else 40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=8), no_links=st.booleans())
def test_any_sequence_leaves_the_last_successful_commit(steps, no_links):
    root = Path(tempfile.mkdtemp(prefix="agentstate-prop-"))
    try:
        d = root / "store"  # does not exist yet: the first transaction creates it
        ff = FailingFiles(link_errno=errno.EPERM if no_links else None)
        store = StateStore(d, files=ff, lock_timeout=5)
        model: dict[str, Any] = {}
        serial = 0
        for changes, raise_inside, fail in steps:
            before = files_in(d)
            if fail:
                ff.arm(*fail)
            else:
                ff.disarm()
            want = dict(model)
            for kind, k, v in changes:
                if kind == "set":
                    want[k] = v
                else:
                    want.pop(k, None)
            outcome = "ok"
            try:
                with store.transaction() as state:
                    assert state.resources == model and state.serial == serial
                    for kind, k, v in changes:
                        if kind == "set":
                            state.resources[k] = v
                        else:
                            state.resources.pop(k, None)
                    if raise_inside:
                        raise Boom()
            except Boom:
                outcome = "raised"
            except StorageError as e:
                outcome = "failed"
                assert ff.triggered, f"StorageError without an injected failure: {e}"
                assert e.details["errno"] in ("ENOSPC", "EIO")
                if e.details.get("outcome") == "unknown":
                    # fail-stop after the rename: on this (crash-free) filesystem the new version is live
                    assert fail[0] == "fsync_dir" and "outcome is unknown" in e.message, e.message
                    outcome = "unknown"
            if outcome == "ok":
                assert not ff.triggered, "an injected failure was swallowed"
            committed = outcome in ("ok", "unknown") and want != model
            if committed:
                model, serial = want, serial + 1
                if outcome == "ok":  # after an unknown outcome the State is left as loaded
                    assert state.serial == serial
            got = StateStore(d).read()  # a fresh store over the real layer
            assert got.resources == model and got.serial == serial
            assert temps(d) == [], f"temp files left after {outcome}"
            if not committed and outcome != "failed":
                assert files_in(d) == before, "a transaction that commits nothing wrote something"
            ff.disarm()
    finally:
        shutil.rmtree(root)


# -- injected failures, one by one --------------------------------------------------------------


INJECTIONS = [(op, n) for op in FailingFiles.INJECTABLE for n in range(3)]


@pytest.mark.parametrize("no_links", [False, True], ids=["link", "copy"])
@pytest.mark.parametrize("op,nth", INJECTIONS)
def test_an_injected_failure_leaves_the_previous_version(tmp_path, op, nth, no_links):
    ff = FailingFiles(link_errno=errno.EPERM if no_links else None)
    store = StateStore(tmp_path / "s", files=ff, lock_timeout=5)
    with store.transaction() as s:
        s.resources["a"] = 1
    with store.transaction() as s:
        s.resources["a"] = 2
    (tmp_path / "s" / "state.json").chmod(0o640)  # the copy fallback then also calls fchmod
    ff.calls.clear()
    ff.arm(op, nth, errno.ENOSPC)
    try:
        with store.transaction() as s:
            s.resources["a"] = 3
    except StorageError as e:
        assert ff.triggered
        assert e.details["errno"] == "ENOSPC" and e.exit_code == 1 and "No space left" in str(e)
        expected = (2, {"a": 2})
        if op == "fsync_dir":  # after the rename: fail-stop, no roll-back, and the error says so
            assert "outcome is unknown" in e.message and "agentstate doctor" in e.message, e.message
            assert "unchanged" not in e.message
            expected = (3, {"a": 3})
        else:
            assert "unchanged" in e.message and "unknown" not in e.message, e.message
    else:
        assert not ff.triggered, f"{op} #{nth} failed silently"
        assert ff.calls.count(op) <= nth, "the failure was not injected but the call happened"
        expected = (3, {"a": 3})
    got = StateStore(tmp_path / "s").read()
    assert (got.serial, got.resources) == expected and got.source == "state"
    assert temps(tmp_path / "s") == []
    # The store still works afterwards.
    ff.disarm()
    with store.transaction() as s:
        s.resources["a"] = 4
    assert StateStore(tmp_path / "s").read().resources == {"a": 4}


def test_a_failed_directory_fsync_is_fail_stop(tmp_path, caplog):
    """No roll-back (a later fsync proves nothing about the earlier writes): one error that says the
    outcome is unknown and to run doctor; no restore or temp file; the next transaction re-verifies."""
    caplog.set_level(logging.DEBUG, logger="agentstate")
    ff = FailingFiles()
    store = StateStore(tmp_path / "s", files=ff)
    with store.transaction() as s:
        s.resources["a"] = 1
    ff.arm("fsync_dir", 0, errno.EIO)
    ff.calls.clear()
    with pytest.raises(StorageError) as ei:
        with store.transaction() as s:
            s.resources["a"] = 2
    e = ei.value
    assert e.exit_code == 1 and e.details["errno"] == "EIO" and e.details["outcome"] == "unknown"
    assert "fsync directory" in str(e) and "the new version may or may not survive a crash" in str(e)
    assert "run `agentstate doctor`" in str(e) and "unchanged" not in str(e) and "\n" not in str(e)
    assert ff.calls[-2:] == ["rename", "fsync_dir"]  # nothing was attempted after the failed fsync
    assert sorted(os.listdir(tmp_path / "s")) == ["state.json", "state.json.bak", "state.json.lock"]
    assert not any("put back" in r.getMessage() for r in caplog.records)
    # The next transaction loads and verifies what is on disk (here: the new version, visible).
    ff.calls.clear()
    with store.transaction() as s:
        assert (s.serial, s.resources) == (2, {"a": 2})
        s.resources["a"] = 3
    assert StateStore(tmp_path / "s").read().resources == {"a": 3}


def test_a_failed_temp_fsync_says_the_state_is_unchanged(tmp_path):
    ff = FailingFiles()
    store = StateStore(tmp_path / "s", files=ff)
    with store.transaction() as s:
        s.resources["a"] = 1
    before = files_in(tmp_path / "s")
    ff.arm("fsync", 0, errno.EIO)
    with pytest.raises(StorageError) as ei:
        with store.transaction() as s:
            s.resources["a"] = 2
    msg = str(ei.value)
    assert "fsync temp file" in msg and "discarded before it replaced anything" in msg and "unchanged" in msg
    assert "unknown" not in msg
    assert files_in(tmp_path / "s") == before and temps(tmp_path / "s") == []


def test_a_failed_first_commit_is_fail_stop_too(tmp_path):
    ff = FailingFiles()
    store = StateStore(tmp_path / "s", files=ff)
    with store.transaction():
        pass
    ff.arm("fsync_dir", 0, errno.EIO)
    with pytest.raises(StorageError, match="outcome is unknown"):
        with store.transaction() as s:
            s.resources["a"] = 1
    assert sorted(os.listdir(tmp_path / "s")) == ["state.json", "state.json.lock"]  # nothing removed
    assert StateStore(tmp_path / "s").read().resources == {"a": 1}


def test_copy_fallback_when_links_are_refused(tmp_path):
    ff = FailingFiles(link_errno=errno.EPERM)
    store = StateStore(tmp_path / "s", files=ff)
    for i in range(3):
        with store.transaction() as s:
            s.resources["a"] = i
    bak = codec.decode_document((tmp_path / "s" / "state.json.bak").read_bytes())
    assert (bak.serial, bak.resources) == (2, {"a": 1})
    assert os.stat(tmp_path / "s" / "state.json").st_ino != os.stat(tmp_path / "s" / "state.json.bak").st_ino
    assert ff.calls.count("link") >= 2 and ff.calls.count("fsync") >= 5


# -- serials, no-op transactions, exceptions, conflicts ----------------------------------------------


def test_serial_counts_changing_commits_only(store_target):
    store = StateStore(store_target)
    assert store.read().serial == 0
    with store.transaction() as s:
        s.resources["a"] = {"x": 1}
    lineage = store.read().lineage
    assert store.read().serial == 1
    before = fingerprint(store_target)
    for _ in range(3):
        with store.transaction() as s:
            s.resources["a"] = {"x": 1}  # same value: nothing changes
    with store.transaction() as s:
        s.resources = {"a": {"x": 1}}
    assert fingerprint(store_target) == before
    assert stored(store_target)[1] is None  # no previous version yet
    with store.transaction() as s:
        del s.resources["a"]
    st2 = store.read()
    assert (st2.serial, st2.resources, st2.lineage) == (2, {}, lineage)
    assert codec.decode_document(stored(store_target)[1]).serial == 1


def test_an_exception_in_the_block_saves_nothing_and_propagates(store_target):
    store = StateStore(store_target)
    with store.transaction() as s:
        s.resources["a"] = 1
    before = fingerprint(store_target)
    err = Boom("inside")
    with pytest.raises(Boom) as ei:
        with store.transaction() as s:
            s.resources["a"] = 2
            s.resources["b"] = 3
            raise err
    assert ei.value is err
    assert fingerprint(store_target) == before
    assert store.read().resources == {"a": 1}
    with store.transaction(lock_timeout=0):  # the lock was released
        pass


def test_expect_serial_mismatch_is_a_conflict_and_writes_nothing(store_target):
    store = StateStore(store_target)
    with store.transaction() as s:
        s.resources["a"] = 1
    before = fingerprint(store_target)
    ran = False
    with pytest.raises(ConflictError, match="serial 1, expected 0") as ei:
        with store.transaction(expect_serial=0) as s:
            ran = True
            s.resources["a"] = 2
    assert not ran and ei.value.exit_code == 5 and ei.value.details["serial"] == 1
    with pytest.raises(ConflictError, match="lineage"):
        with store.transaction(expect_lineage="someone-else"):
            pass
    assert fingerprint(store_target) == before
    with store.transaction(expect_serial=1, expect_lineage=store.read().lineage) as s:
        s.resources["a"] = 2
    assert store.read().serial == 2


def test_bad_resources_are_refused_before_anything_is_written(store_target):
    from agentstate import InvalidInput

    store = StateStore(store_target)
    with store.transaction() as s:
        s.resources["a"] = 1
    before = fingerprint(store_target)
    for bad in ({"a": float("nan")}, {"a": 2**64}, {"": 1}, {"a\n": 1}, {1: 2}, ["not", "a", "dict"]):
        with pytest.raises(InvalidInput):
            with store.transaction() as s:
                s.resources = bad
    assert fingerprint(store_target) == before
    if not is_pg(store_target):
        assert temps(Path(store_target)) == []


# -- read() never writes -----------------------------------------------------------------------


def test_read_never_writes(tmp_path):
    d = tmp_path / "s"
    assert StateStore(d).read().source == "new"
    assert not d.exists(), "read() of a missing store created it"
    d.mkdir()
    (d / "state.json").write_bytes(b"torn{")
    (d / "state.json.bak").write_bytes(doc(4, {"k": "v"}))
    (d / "state.json.tmp-abc").write_bytes(b"left by a killed writer")
    listing, dir_mtime = files_in(d), d.stat().st_mtime_ns
    for _ in range(2):
        got = StateStore(d).read()
        assert (got.serial, got.resources, got.source) == (4, {"k": "v"}, "backup")
    assert files_in(d) == listing and d.stat().st_mtime_ns == dir_mtime
    assert sorted(os.listdir(d)) == ["state.json", "state.json.bak", "state.json.tmp-abc"]  # no lock file either
    (d / "state.json.bak").write_bytes(b"also bad")
    listing = files_in(d)
    with pytest.raises(StateCorrupted):
        StateStore(d).read()
    assert files_in(d) == listing


# -- recovery from the backup ----------------------------------------------------------------------

BAD_PRIMARY = {
    "missing": None,
    "empty": b"",
    "torn": doc(5, {"k": "new", "more": list(range(20))})[:57],
    "bad checksum": doc(5, {"k": "new"}).replace(b'"new"', b'"wen"'),
    # the damaged file still shows a serial far above the backup's: it counts, not only backup + 2
    "bad checksum, serial 9": doc(9, {"k": "new"}).replace(b'"new"', b'"wen"'),
    "garbage": os.urandom(64),
    "wrong shape": b'{"checksum":"sha256:' + b"0" * 64 + b'",' + b"[]\n",
    "not an object": b"[1, 2, 3]\n",
    "valid checksum, negative serial": None,  # filled in below
    "format 1, wrong shape": b'{"format_version":1,"serial":"3","lineage":"l","resources":{}}',
}


def _checksummed(body: bytes) -> bytes:
    import hashlib

    return codec.PREFIX + hashlib.sha256(body).hexdigest().encode() + b'",' + body


BAD_PRIMARY["valid checksum, negative serial"] = _checksummed(
    b'"format_version":2,"serial":-5,"lineage":"lineage-1","updated_at":"t","resources":{}}\n'
)


def _claimed_serial(bad: bytes | None) -> int:
    try:
        serial = json.loads(bad or b"")["serial"]
    except (ValueError, KeyError, TypeError):
        return -1
    return serial if type(serial) is int else -1


@pytest.mark.parametrize("case", list(BAD_PRIMARY))
def test_recovery_from_backup(tmp_path, case, caplog):
    d = tmp_path / "s"
    d.mkdir(mode=0o700)
    bad = BAD_PRIMARY[case]
    if bad is not None:
        (d / "state.json").write_bytes(bad)
        os.chmod(d / "state.json", 0o600)
    (d / "state.json.bak").write_bytes(doc(4, {"k": "v", "n": 2**64 - 1}))
    caplog.set_level(logging.WARNING, logger="agentstate")
    got = StateStore(d).read()
    assert (got.serial, got.resources, got.lineage, got.source) == (4, {"k": "v", "n": 2**64 - 1}, "lineage-1", "backup")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "agentstate.store"]
    assert errors and str(d / "state.json") in errors[0].getMessage()
    assert any(r.levelno == logging.WARNING and "fallback" in r.getMessage() for r in caplog.records)

    # The next transaction persists the recovery, even without a change, and keeps the bad file.
    store = StateStore(d, lock_timeout=5)
    with store.transaction() as s:
        assert s.source == "backup" and s.resources == {"k": "v", "n": 2**64 - 1}
    after = StateStore(d).read()
    # The recovery never reuses a serial the lost file may have held: backup + 2, or above the
    # serial the damaged file still shows.
    serial = max(6, _claimed_serial(bad) + 1)
    assert (after.serial, after.resources, after.lineage, after.source) == (serial, {"k": "v", "n": 2**64 - 1},
                                                                           "lineage-1", "state")
    corrupt = [p for p in d.iterdir() if p.name.startswith("state.json.corrupt-")]
    if bad is None:
        assert corrupt == []
    else:
        assert len(corrupt) == 1 and corrupt[0].read_bytes() == bad
    assert codec.decode_document((d / "state.json.bak").read_bytes()).serial == 4  # backup untouched
    assert temps(d) == []
    caplog.clear()
    assert StateStore(d).read().serial == serial
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("which", ["state.json", "state.json.bak"])
def test_a_state_file_that_is_a_directory_is_named_and_nothing_is_added(tmp_path, which):
    d = tmp_path / "s"
    d.mkdir()
    (d / "state.json").write_bytes(b"torn")  # so that the backup is read too
    (d / "state.json.bak").write_bytes(doc(2, {"k": 1}))
    (d / which).unlink()
    (d / which).mkdir()
    before = files_in(d)
    store = StateStore(d, lock_timeout=5)
    for attempt in range(3):
        with pytest.raises(StorageError) as ei:
            with store.transaction() as s:
                s.resources["x"] = attempt
        e = ei.value
        assert e.exit_code == 1 and e.details["errno"] == "EISDIR"
        assert str(e).startswith(f"{d / which} is a directory, not a file; move it aside"), str(e)
        assert "empty" not in str(e)
        with pytest.raises(StorageError, match="is a directory, not a file"):
            store.read()
    assert files_in(d) == before  # no state.json.corrupt-*, nothing changed
    findings = {f["check"]: f for f in store.check()}
    assert findings["state" if which == "state.json" else "backup"]["ok"] is False
    assert "is a directory" in findings["state" if which == "state.json" else "backup"]["detail"]


@pytest.mark.parametrize("backup", [b"", b"garbage", doc(3, {"a": 1})[:-2], None])
def test_both_bad_is_state_corrupted_naming_both_files(tmp_path, backup):
    d = tmp_path / "s"
    d.mkdir()
    (d / "state.json").write_bytes(doc(4, {"a": 1})[:-1])
    if backup is not None:
        (d / "state.json.bak").write_bytes(backup)
    before = files_in(d)
    for attempt in (lambda: StateStore(d).read(), lambda: StateStore(d, lock_timeout=5).transaction().__enter__()):
        with pytest.raises(StateCorrupted) as ei:
            attempt()
        e = ei.value
        assert e.exit_code == 4
        assert [p for p, _ in e.tried] == [str(d / "state.json"), str(d / "state.json.bak")]
        assert str(d / "state.json") in e.message and str(d / "state.json.bak") in e.message
        assert all(r for _, r in e.tried)
    assert files_in(d) == before


def test_backup_without_state_file_and_empty_store(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    got = StateStore(d).read()
    assert (got.serial, got.resources, got.source) == (0, {}, "new")
    (d / "state.json.bak").write_bytes(b"bad")
    with pytest.raises(StateCorrupted, match="missing while a backup exists"):
        StateStore(d).read()


# -- temp files of killed writers ----------------------------------------------------------------


def test_temp_files_of_a_killed_writer_are_replaced_and_doctor_repair_removes_the_rest(tmp_path, caplog):
    d = tmp_path / "s"
    store = StateStore(d)
    with store.transaction() as s:
        s.resources["a"] = 1
    # What a writer killed before its renames leaves: the fixed temp names (replaced by the next writer)
    # and, from older versions, random ones (removed by doctor --repair and by a recovery).
    fixed = [os.path.basename(fileio.temp_name(store.state_path)),
             os.path.basename(fileio.temp_name(store.state_path, "bak.tmp"))]
    legacy = ["state.json.tmp-0123456789ab", "state.json.bak.tmp-abc", "state.json.restore-abc"]
    keep = ["notes.txt", "state.json.corrupt-20240101T000000Z-abcdef", "other.json.tmp-abc"]
    for name in fixed + legacy + keep:
        (d / name).write_bytes(b"x" * 10)
    assert fixed == ["state.json.tmp-new", "state.json.bak.tmp-new"]
    assert StateStore(d).read().resources == {"a": 1}
    assert set(fixed + legacy) <= set(os.listdir(d))  # read() does not clean
    caplog.set_level(logging.WARNING, logger="agentstate")
    with store.transaction() as s:
        s.resources["a"] = 2
    assert temps(d) == sorted(legacy)  # the fixed names were replaced and consumed
    assert any("temp file" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert store.read().resources == {"a": 2}
    store.repair()
    assert temps(d) == []
    assert set(keep) <= set(os.listdir(d))
    assert store.read().serial == 2


# -- permissions -----------------------------------------------------------------------------


@pytest.mark.parametrize("no_links", [False, True], ids=["link", "copy"])
def test_modes(tmp_path, no_links):
    old = os.umask(0o022)
    try:
        d = tmp_path / "s"
        store = StateStore(d, files=FailingFiles(link_errno=errno.EPERM if no_links else None))
        with store.transaction() as s:
            s.resources["a"] = 1
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert stat.S_IMODE((d / "state.json").stat().st_mode) == 0o600
        with store.transaction() as s:
            s.resources["a"] = 2
        for name in ("state.json", "state.json.bak", "state.json.lock"):
            assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
        os.chmod(d / "state.json", 0o644)
        with store.transaction() as s:
            s.resources["a"] = 3
        assert stat.S_IMODE((d / "state.json").stat().st_mode) == 0o644
        assert stat.S_IMODE((d / "state.json.bak").stat().st_mode) == 0o644
        with store.transaction() as s:
            s.resources["a"] = 4
        assert stat.S_IMODE((d / "state.json").stat().st_mode) == 0o644
        assert store.read().resources == {"a": 4}
    finally:
        os.umask(old)


def test_store_dir_whose_parent_is_missing_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="parent"):
        with StateStore(tmp_path / "no" / "such" / "dir").transaction():
            pass
    assert not (tmp_path / "no").exists()


def test_recovery_serial_counts_the_damaged_files_serial(tmp_path):
    """Backup at serial 5, a damaged state.json that still parses serial 9: the recovery is serial 10
    (backup + 2 would hand out 7, a number the lost file may already have given to other resources)."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "state.json.bak").write_bytes(doc(5, {"k": "old"}))
    (d / "state.json").write_bytes(doc(9, {"k": "lost"}).replace(b'"lost"', b'"tsol"'))  # checksum mismatch
    store = StateStore(d, lock_timeout=5)
    assert store.read().serial == 5  # served from the backup
    with store.transaction() as s:
        assert (s.source, s.serial) == ("backup", 5)
    got = store.read()
    assert (got.serial, got.resources, got.source) == (10, {"k": "old"}, "state")


def test_the_yielded_state_is_a_snapshot_except_its_resources(tmp_path):
    from agentstate import InvalidInput

    store = StateStore(tmp_path / "s")
    with store.transaction() as s:
        s.resources["a"] = 1
    lineage = store.read().lineage
    before = files_in(tmp_path / "s")
    for field, value in (("serial", 0), ("lineage", "x"), ("updated_at", "then"), ("source", "new"),
                         ("format_version", 9), ("changed", True), ("other", 1)):
        with pytest.raises(InvalidInput, match="read-only|no attribute") as ei:
            with store.transaction() as s:
                s.resources["a"] = 2
                setattr(s, field, value)
        assert ei.value.exit_code == 1 and "resources" in str(ei.value)
    with pytest.raises(InvalidInput):
        with store.transaction() as s:
            del s.serial
    assert files_in(tmp_path / "s") == before  # the failed blocks saved nothing
    with store.transaction() as s:
        s.resources = {"b": 2}  # resources may be replaced wholesale
        assert s.serial == 1 and not s.changed
    assert (s.serial, s.lineage, s.changed) == (2, lineage, True)  # the committed version, after the block
    got = store.read()
    assert (got.serial, got.lineage, got.resources) == (2, lineage, {"b": 2})


@pytest.mark.parametrize("bad", ["", "a\n", "tab\there", "del\x7f", "c1\x85", "x" * 257, "nul\x00"])
@pytest.mark.parametrize("values", ["plain", "escapes"])
def test_bulk_address_check_finds_one_bad_address_among_many(tmp_path, bad, values):
    """Addresses are checked in bulk (on the encoded bytes); one bad one among thousands is still
    refused, whether or not the values hold the bytes that send the check to its exact path."""
    from agentstate import InvalidInput

    store = StateStore(tmp_path / "s")
    value = {"text": "line\nwith \"quotes\" \\ ©°\x7f\x85"} if values == "escapes" else {"n": 1}
    many = {f"agent.a{i:05d}": value for i in range(3000)}
    with store.transaction() as s:  # valid addresses, any values: accepted
        s.resources.update(many)
        s.resources["x" * 256] = 1
    before = files_in(tmp_path / "s")
    with pytest.raises(InvalidInput, match="address"):
        with store.transaction() as s:
            s.resources.update({f"new.b{i:05d}": value for i in range(3000)})
            s.resources[bad] = 1
    assert files_in(tmp_path / "s") == before


# -- SIGINT / SIGTERM inside a transaction (library use; the CLI's are in integration_tests/test_signals.py) ---


def test_sigterm_in_the_block_abandons_the_write_and_restores_the_handlers(tmp_path):
    import signal

    from agentstate import Interrupted

    store = StateStore(tmp_path / "s")
    with store.transaction() as s:
        s.resources["a"] = 1
    before = files_in(tmp_path / "s")
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a plain Python program
    try:
        with pytest.raises(Interrupted) as ei:
            with store.transaction() as s:
                s.resources["a"] = 2
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs at the next bytecode
                    pass
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored after the transaction
    finally:
        signal.signal(signal.SIGTERM, previous)
    e = ei.value
    assert e.exit_code == 143 and e.outcome == "abandoned" and e.to_dict()["signal"] == signal.SIGTERM
    assert "interrupted by SIGTERM" in e.message and "unchanged" in e.message and "lock is released" in e.message
    assert files_in(tmp_path / "s") == before and temps(tmp_path / "s") == []
    with store.transaction(lock_timeout=0):
        pass


def test_a_signal_during_the_rename_is_held_until_the_directory_fsync(tmp_path):
    import signal

    from agentstate import Interrupted

    class SignalOnRename(OsFiles):
        armed = False

        def rename(self, src: str, dst: str) -> None:
            super().rename(src, dst)
            if self.armed and dst.endswith("state.json"):
                os.kill(os.getpid(), signal.SIGINT)
                self.after = True

        def fsync_dir(self, path: str) -> None:
            self.fsynced_after_rename = getattr(self, "after", False)
            super().fsync_dir(path)

    files = SignalOnRename()
    store = StateStore(tmp_path / "s", files=files)
    with store.transaction() as s:
        s.resources["a"] = 1
    files.after, files.armed = False, True
    with pytest.raises(Interrupted) as ei:
        with store.transaction() as s:
            s.resources["a"] = 2
    e = ei.value
    assert e.exit_code == 130 and e.outcome == "committed" and files.fsynced_after_rename
    assert "after the write completed" in e.message and "serial 2" in e.message
    assert StateStore(tmp_path / "s").read().resources == {"a": 2} and temps(tmp_path / "s") == []
    assert s.serial == 2  # the State reports the committed version


def test_a_handler_the_program_installed_is_called_and_an_ignored_signal_stays_ignored(tmp_path):
    import signal

    seen = []
    old_term = signal.signal(signal.SIGTERM, lambda n, f: seen.append(n))
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = StateStore(tmp_path / "s")
        with store.transaction() as s:
            s.resources["a"] = 1
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        assert seen == [signal.SIGTERM]
        assert store.read().resources == {"a": 1}
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 17, 5 << 20])
def test_the_file_layer_reads_a_whole_file_of_any_size(tmp_path, size):
    """OsFiles.read: one read for a small file (no fstat), else the whole size from the start again
    (no concatenation); every byte, in order, at each boundary of the 64 KiB first read."""
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    assert OsFiles().read(str(path)) == data
    assert OsFiles().read(str(tmp_path / "missing")) is None


def test_the_file_layer_reads_what_a_file_grew_to_while_read(tmp_path, monkeypatch):
    """A file that grows between the size asked and the read that follows is still read to its end."""
    path = tmp_path / "f"
    data = os.urandom(200_000)
    path.write_bytes(data[:100_000])
    real_fstat = os.fstat

    def fstat(fd):  # the file grows right after its size was taken
        st = real_fstat(fd)
        with open(path, "ab") as f:
            f.write(data[100_000:])
        return st

    monkeypatch.setattr(os, "fstat", fstat)
    assert OsFiles().read(str(path)) == data


@pytest.mark.parametrize("name", ["state.json", "state.json.bak"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_device_at_a_state_path_is_one_error_never_a_hang(tmp_path: Path, name: str, kind: str) -> None:
    """A FIFO with no writer blocked every reader's open forever; /dev/zero (a symlink to it) was read until
    memory ran out. Now: opened without blocking, refused as not a regular file, left where it is."""
    import subprocess
    import sys

    d = tmp_path / "s"
    d.mkdir(mode=0o700)
    if kind == "fifo":
        os.mkfifo(d / name)
    else:
        os.symlink("/dev/zero", d / name)
    for args in (["show"], ["apply", "--set", "a=1"]):
        proc = subprocess.run([sys.executable, "-m", "agentstate", *args, "--dir", str(d)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and "is not a regular file" in proc.stderr and name in proc.stderr
    assert (stat.S_ISFIFO(os.lstat(d / name).st_mode) if kind == "fifo" else os.path.islink(d / name))
    assert sorted(p.name for p in d.iterdir() if p.name != "state.json.lock") == [name]
