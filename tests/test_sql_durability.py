"""The SQLite write's durability point (agentstate.sql.durable): a COMMIT runs with
synchronous=NORMAL, then the writer releases its lock and fdatasyncs the WAL, and only then returns.

* the sync is of the live WAL, after the lock is free (the next writer is not kept waiting by it), and
  before the call returns;
* a failed sync is one StorageError with outcome "unknown" naming doctor, never a success and never
  "nothing was changed": the write is committed, and the next one goes on with the next seq;
* every call of a group commit (threads of one process) gets that same error, none a success;
* the WAL's descriptor is opened at a connection's first commit and kept with it: closed with the
  connection, after a failed sync (the next write opens it afresh), and in a forked child.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from agentstate import SessionStore, StorageError
from agentstate.sql import group
from agentstate.state.fileio import OsFiles
from agentstate.state.lock import Lock


class Watched(OsFiles):
    """Records each datasync: the file's name, whether the writer lock was free, whether it failed."""

    def __init__(self, lock_path: str, fail: bool = False) -> None:
        self.lock_path, self.fail = lock_path, fail
        self.syncs: list[tuple[str, bool]] = []
        self.opens: list[str] = []

    def open_sync(self, path: str) -> int:
        self.opens.append(os.path.basename(path))
        return super().open_sync(path)

    def datasync(self, fd: int) -> None:
        probe = os.open(self.lock_path, os.O_RDWR)
        try:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
            except BlockingIOError:
                free = False
        finally:
            os.close(probe)  # drops the probe's flock, if it got it
        self.syncs.append((os.readlink(f"/proc/self/fd/{fd}"), free))
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        super().datasync(fd)


def _store(tmp_path: Path, fail: bool = False) -> tuple[SessionStore, Watched]:
    s = SessionStore(tmp_path / "store")
    s.append("s", [{"type": "zero"}])  # the database exists, migrated
    w = Watched(s.db.lock_path, fail)
    s.db.files = w
    return s, w


def test_an_append_syncs_the_live_wal_after_the_lock_is_free_and_before_it_returns(tmp_path: Path) -> None:
    s, w = _store(tmp_path)
    with s:
        s.append("s", [{"type": "one"}])
        assert len(w.syncs) == 1, w.syncs  # the one durability point of the append
        name, free = w.syncs[0]
        assert name == os.path.realpath(s.db.path + "-wal") and free, w.syncs
        s.append("s", [{"type": "two"}], expect_seq=2)
        assert len(w.syncs) == 2


def test_a_failed_sync_is_an_unknown_outcome_never_success_and_the_next_write_goes_on(tmp_path: Path) -> None:
    s, w = _store(tmp_path, fail=True)
    with s:
        with pytest.raises(StorageError) as e:
            s.append("s", [{"type": "unsure"}])
        assert e.value.details["outcome"] == "unknown" and e.value.details["errno"] == "EIO"
        assert "the outcome is unknown" in e.value.message and "agentstate doctor" in e.value.message
        assert "nothing was changed" not in e.value.message
        assert [i.data["type"] for i in s.items("s")] == ["zero", "unsure"]  # committed: it is there
        w.fail = False
        assert [i.seq for i in s.append("s", [{"type": "next"}])] == [3]
    with SessionStore(tmp_path / "store") as fresh:  # another opener sees the same
        assert [i.data["type"] for i in fresh.items("s")] == ["zero", "unsure", "next"]


def test_a_wal_that_cannot_be_opened_for_its_sync_is_an_unknown_outcome(tmp_path: Path) -> None:
    s, _ = _store(tmp_path)

    class NoOpen(OsFiles):
        def open_sync(self, path: str) -> int:
            raise OSError(errno.EMFILE, "Too many open files")

    s.db.files = NoOpen()
    with s, pytest.raises(StorageError) as e:
        s.append("s", [{"type": "unsure"}])
    assert e.value.details["outcome"] == "unknown" and e.value.details["errno"] == "EMFILE"


def test_every_call_of_a_group_commit_gets_the_failed_sync_alike(tmp_path: Path) -> None:
    s, w = _store(tmp_path, fail=True)
    lk = Lock(s.db.lock_path)
    lk.acquire(5, "test")  # the first call leads and waits; the others queue behind it: one batch
    out: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            out[i] = s.append(f"s{i}", [{"type": "doomed", "i": i}])
        except StorageError as e:
            out[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    threads[0].start()
    while not any(len(g.queue) == 1 for g in group._groups.values()):
        threading.Event().wait(0.001)
    for t in threads[1:]:
        t.start()
    while not any(len(g.queue) == 4 for g in group._groups.values()):
        threading.Event().wait(0.001)
    lk.release()
    for t in threads:
        t.join(30)
    assert len(w.syncs) == 1, w.syncs  # one batch, one sync
    assert all(isinstance(x, StorageError) for x in out.values()), out
    assert {x.details["outcome"] for x in out.values()} == {"unknown"}
    assert len({x.message for x in out.values()}) == 1
    w.fail = False
    with s:
        assert all([i.data["type"] for i in s.items(f"s{k}")] == ["doomed"] for k in range(4))


def _wal_fds(db_path: str) -> list[int]:
    """This process's descriptors open on ``db_path``'s WAL."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == os.path.realpath(db_path + "-wal"):
                out.append(int(name))
        except OSError:
            pass
    return out


def test_the_wal_descriptor_is_kept_with_its_connection_and_closed_with_it(tmp_path: Path) -> None:
    s, w = _store(tmp_path)
    s.append("s", [{"type": "one"}])
    open_after_one = _wal_fds(s.db.path)  # SQLite's own and the one kept
    s.append("s", [{"type": "two"}])
    s.append("s", [{"type": "three"}])
    assert w.opens == ["agentstate.db-wal"], w.opens  # opened once (this file layer's first commit), kept
    assert len(w.syncs) == 3 and {name for name, _ in w.syncs} == {os.path.realpath(s.db.path + "-wal")}
    assert _wal_fds(s.db.path) == open_after_one and len(open_after_one) == 2  # none more per write
    s.close()
    assert _wal_fds(s.db.path) == []  # closed with the connections
    with SessionStore(tmp_path / "store") as fresh:
        assert [i.data["type"] for i in fresh.items("s")] == ["zero", "one", "two", "three"]


def test_after_a_failed_sync_the_next_write_opens_the_wal_afresh(tmp_path: Path) -> None:
    s, w = _store(tmp_path)
    with s:
        s.append("s", [{"type": "one"}])
        w.fail = True
        with pytest.raises(StorageError) as e:
            s.append("s", [{"type": "unsure"}])
        assert e.value.details["outcome"] == "unknown"
        w.fail = False
        s.append("s", [{"type": "two"}])
        assert w.opens == ["agentstate.db-wal", "agentstate.db-wal"], w.opens  # the failed one was closed
        s.append("s", [{"type": "three"}])
        assert len(w.opens) == 2 and len(w.syncs) == 4


def test_a_forked_child_closes_its_copy_of_the_kept_descriptor_and_writes_on(tmp_path: Path) -> None:
    s, w = _store(tmp_path)
    s.append("s", [{"type": "parent"}])
    assert len(w.opens) == 1
    pid = os.fork()
    if pid == 0:  # the child: its first write forgets the parent's connections and their descriptors
        code = 1
        try:
            s.append("s", [{"type": "child"}])
            code = 0 if len(w.opens) == 2 else 2  # its own connection opened its own
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    s.append("s", [{"type": "parent again"}])  # the parent's kept descriptor is still its own
    assert len(w.opens) == 1
    with s:
        assert [i.data["type"] for i in s.items("s")] == ["zero", "parent", "child", "parent again"]
