"""agentstate.state.lock: holder records, liveness, the kernel's flock as the only authority, waiting, status and
force-unlock. Other holders are real processes; nothing of the lock is mocked."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from agentstate.errors import ConflictError, InvalidInput, NotFound, StateLocked, StorageError
from agentstate.state import lock as lockmod
from agentstate.state.lock import DEFAULT_TIMEOUT, RECORD_BLOCK, Holder, Lock, parse_duration
from agentstate.state.lock_record import padded
from tests.test_lock_interrupts import added_fds, free_here

HOLD = """
import sys
from agentstate.state.lock import Lock
lk = Lock(sys.argv[1])
h = lk.acquire(30, sys.argv[2])
print(h.lock_id, flush=True)
sys.stdin.read()
lk.release()
"""


class Other:
    """Another process holding the lock at ``path`` until ``stop()`` (or ``kill()``)."""

    def __init__(self, path: Path, operation: str = "holder") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), operation], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.lock_id = self.proc.stdout.readline().strip()
        assert self.lock_id, "holder did not start"
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.kill()
        self.stop()


@pytest.fixture
def other():
    started: list[Other] = []

    def start(path: Path, operation: str = "holder") -> Other:
        started.append(Other(path, operation))
        return started[-1]

    yield start
    for o in started:
        o.kill()


def holder(**fields) -> Holder:
    base = Holder.mine("test")
    for k, v in fields.items():
        setattr(base, k, v)
    return base


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


def threads() -> set[int]:
    return {t.ident for t in threading.enumerate()}


def blank(size: int = RECORD_BLOCK) -> bytes:
    return b" " * (size - 1) + b"\n"


# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1.5", 1.5), ("0", 0.0), ("30", 30.0), (" 1h ", 3600.0),
     (".25s", 0.25), (7, 7.0), (0.1, 0.1)],
)
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["junk", "", "-1", "-5s", "10 s s", "1y", "nan", "inf", "1e3", "ms", True,
                                  -0.5, float("nan"), float("inf")])
def test_parse_duration_rejects(text):
    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_default_timeout_and_bad_timeout(tmp_path):
    assert DEFAULT_TIMEOUT == 30.0
    with pytest.raises(InvalidInput):
        Lock(tmp_path / "l").acquire("forever")
    assert not (tmp_path / "l").exists()  # refused before anything was created


# --- holder records -----------------------------------------------------------------------------


def test_holder_round_trip():
    h = Holder.mine("apply")
    assert h.pid == os.getpid() and h.hostname == socket.gethostname() and h.operation == "apply"
    assert str(uuid.UUID(h.lock_id)) == h.lock_id and h.acquired_at.endswith("Z")
    assert h.process_start == lockmod.process_start(os.getpid()) and h.process_start is not None
    assert h.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert h.pid_namespace == os.readlink("/proc/self/ns/pid")
    assert Holder.parse(h.to_bytes()) == h and Holder.parse(h.to_bytes().decode()) == h
    assert Holder.parse(h.to_bytes() + b" " * 300 + b"\n") == h  # as padded in the lock file
    assert set(h.to_dict()) == {"lock_id", "pid", "hostname", "operation", "acquired_at", "version", "boot_id",
                                "pid_namespace", "process_start"}


def test_holder_parse_keeps_unknown_fields():
    h = Holder.parse(b'{"lock_id":"x","pid":12,"hostname":"h","acquired_at":"2020-01-01T00:00:00Z",'
                     b'"heartbeat_at":"2020-01-01T00:00:00Z","mode":"soft"}')
    assert h is not None and h.pid == 12 and h.operation == "?" and h.boot_id is None
    assert h.extra == {"heartbeat_at": "2020-01-01T00:00:00Z", "mode": "soft"} and "mode" not in h.to_dict()


@pytest.mark.parametrize("data", [None, b"", b"  \n", blank(), b"{", b"[]", b"null", b'{"pid":1}',
                                  b'{"lock_id":"x","pid":"12","hostname":"h"}',
                                  b'{"lock_id":"x","pid":true,"hostname":"h"}',
                                  b"\xff\xfe"])
def test_holder_parse_rejects_blank_and_garbage(data):
    assert Holder.parse(data) is None


def test_describe_names_the_holder():
    h = holder(operation="apply")
    for part in (f"PID {h.pid}", h.hostname, "apply", h.lock_id, f"since {h.acquired_at}", "ago"):
        assert part in h.describe()


def test_alive_only_answers_for_this_kernel_and_pid_namespace():
    assert holder().alive() is True
    assert holder(pid=dead_pid()).alive() is False
    real = lockmod.process_start(os.getpid())
    assert holder(process_start=str(int(real) + 1)).alive() is False  # the PID was reused
    assert holder(pid_namespace="pid:[1]").alive() is None  # another namespace: its PIDs mean nothing here
    assert holder(boot_id=str(uuid.uuid4())).alive() is None  # another host, or an earlier boot
    assert holder(boot_id=None).alive() is None


def test_zombie_is_not_alive():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        h = holder(pid=p.pid, process_start=lockmod.process_start(p.pid))
        deadline = time.monotonic() + 10
        while lockmod.process_start(p.pid) is not None:  # exited, not yet reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert Path(f"/proc/{p.pid}").exists() and h.alive() is False
    finally:
        p.wait()


# --- the lock file ----------------------------------------------------------------------------------


def test_lock_file_is_created_once_0600_and_blank_when_free(tmp_path, caplog):
    path = tmp_path / "state.json.lock"
    lk = Lock(path)
    caplog.set_level(logging.INFO, logger="agentstate.lock")
    h = lk.acquire(0, "first")
    ino = path.stat().st_ino
    assert path.stat().st_mode & 0o777 == 0o600
    data = path.read_bytes()
    assert len(data) == RECORD_BLOCK and data.endswith(b"\n") and Holder.parse(data) == h
    assert lk.held and lk.holder == h
    with pytest.raises(RuntimeError):
        lk.acquire(0)
    lk.release()
    lk.release()  # idempotent
    assert path.read_bytes() == blank() and not lk.held
    for _ in range(3):
        with Lock(path) as again:
            assert again.held
    assert path.stat().st_ino == ino and path.read_bytes() == blank()  # never unlinked, never replaced
    assert sorted(os.listdir(tmp_path)) == ["state.json.lock"]
    text = caplog.text
    assert f"acquired by PID {os.getpid()} (first" in text and "after holding it" in text and "ms" in text


def test_long_records_pad_to_the_next_block_and_never_leave_a_tail(tmp_path):
    path = tmp_path / "state.json.lock"
    lk = Lock(path)
    long = lk.acquire(0, "x" * 700)
    assert path.stat().st_size == 2 * RECORD_BLOCK and Holder.parse(path.read_bytes()) == long
    lk.release()
    assert path.read_bytes() == blank(2 * RECORD_BLOCK)
    short = lk.acquire(0, "y")
    assert path.stat().st_size == 2 * RECORD_BLOCK and Holder.parse(path.read_bytes()) == short
    lk.release()


def test_symlink_at_the_lock_path_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    (tmp_path / "state.json.lock").symlink_to(target)
    with pytest.raises(StorageError) as e:
        Lock(tmp_path / "state.json.lock").acquire(0)
    assert "state.json.lock" in str(e.value) and e.value.exit_code == 1
    assert target.read_bytes() == b"keep"


def test_a_directory_or_fifo_at_the_lock_path_is_one_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "state.json.lock").mkdir()
    os.mkfifo(tmp_path / "fifo")
    earlier = dict(lockmod._fds)  # kept descriptors of stores earlier tests left behind
    for path in (tmp_path / "d" / "state.json.lock", tmp_path / "fifo"):
        lk = Lock(path)
        for call in (lambda: lk.acquire(0), lk.status, lambda: lk.force_unlock("x")):  # noqa: B023 - called now
            with pytest.raises(StorageError) as e:
                call()
            assert str(path) in e.value.message and e.value.exit_code == 1
    assert (tmp_path / "d" / "state.json.lock").is_dir() and not added_fds(earlier)


def test_a_lock_file_that_cannot_be_opened_is_one_error_said_once(tmp_path):
    lk = Lock(tmp_path / "missing" / "x.lock")  # a directory that does not exist: ENOENT at the open
    with pytest.raises(StorageError) as e:
        lk.acquire(0)
    msg = e.value.message
    assert msg.startswith(f"cannot open the lock file {lk.path}: ") and "ENOENT" in msg
    assert msg.count("unchanged") == 1 and msg.count(lk.path) == 1  # not wrapped again by acquire()
    assert not lk.held and not (tmp_path / "missing").exists()


def test_a_full_disk_at_the_holder_record_is_one_error_and_no_warning(tmp_path, caplog):
    """Every pwrite fails (a full disk: the record, then its blanking): the acquire's error is the one
    thing said; the failed blanking is logged at debug level only."""
    import errno as errno_mod

    from agentstate.state.fileio import OsFiles

    class Full(OsFiles):
        def pwrite(self, fd, data, offset):
            raise OSError(errno_mod.ENOSPC, os.strerror(errno_mod.ENOSPC))

    lk = Lock(tmp_path / "x.lock", files=Full())
    with caplog.at_level(logging.DEBUG, logger="agentstate"):
        with pytest.raises(StorageError) as e:
            lk.acquire(0)
    assert "ENOSPC" in e.value.message and e.value.message.count("unchanged") == 1 and not lk.held
    records = [r for r in caplog.records if "could not blank" in r.getMessage()]
    assert records and all(r.levelno == logging.DEBUG for r in records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    lk2 = Lock(tmp_path / "x.lock")  # free: the kernel released it with the descriptor
    lk2.acquire(0)
    lk2.release()


def test_a_lock_file_grown_huge_is_cut_back_and_never_read_or_written_whole(tmp_path, caplog):
    """A lock file of 1 GiB (sparse; by hand or damage): status reads at most 64 KiB of it, and the next
    acquire cuts it back under the lock instead of padding its record (and then the blank) to 1 GiB."""
    path = tmp_path / "x.lock"
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    lk = Lock(path)
    assert lk.status()["held"] is False
    with caplog.at_level(logging.WARNING, logger="agentstate"):
        lk.acquire(0)
    try:
        assert path.stat().st_size <= 4096 and path.read_bytes().startswith(b"{")
    finally:
        lk.release()
    assert path.stat().st_size <= 4096 and not path.read_bytes().strip()
    assert any("far more than a holder record" in r.getMessage() for r in caplog.records)


def test_filesystem_type_is_read_from_mountinfo(tmp_path):
    fs = lockmod._filesystem(str(tmp_path))
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,TARGET", "--target", str(tmp_path)], capture_output=True,
                       text=True, check=True)
    assert fs is not None and list(fs) == r.stdout.split(None, 1)[0:1] + [r.stdout.split(None, 1)[1].strip()]
    assert fs[0] not in lockmod.UNSHARED_FLOCK
    lockmod.check_filesystem(str(tmp_path / "state.json.lock"))  # a local filesystem: accepted


# --- exclusion, waiting and timeouts ---------------------------------------------------------------


def test_another_process_excludes_us_and_the_error_names_it(tmp_path, other, caplog):
    path = tmp_path / "state.json.lock"
    o = other(path, "long-agent-run")
    seen = []
    with caplog.at_level(logging.INFO, logger="agentstate.lock"), pytest.raises(StateLocked) as e:
        Lock(path).acquire(0, on_wait=seen.append)
    err = e.value
    assert err.exit_code == 3 and err.holder["lock_id"] == o.lock_id and err.holder["pid"] == o.pid
    msg = str(err)
    for part in (f"PID {o.pid}", socket.gethostname(), "long-agent-run", "since"):
        assert part in msg
    assert "--lock-timeout" in msg and "freed the instant it exits" in msg
    assert f"agentstate lock status --dir {tmp_path}" in msg
    assert "force-unlock" not in msg  # it would be refused while the holder holds the lock
    assert len(seen) == 1 and seen[0].lock_id == o.lock_id
    assert "waiting for lock" in caplog.text and "timed out after 0s" in caplog.text
    o.stop()
    with Lock(path):  # free again
        pass
    o2 = other(tmp_path / "agentstate.db.lock")
    with pytest.raises(StateLocked) as e:
        Lock(tmp_path / "agentstate.db.lock").acquire(0)
    assert f"agentstate lock status --dir {tmp_path}" in str(e.value)  # it shows the database's lock too
    o2.stop()
    o3 = other(tmp_path / "other.lock")
    with pytest.raises(StateLocked) as e:
        Lock(tmp_path / "other.lock").acquire(0)
    assert "agentstate lock status" not in str(e.value)  # only a store's own locks have that command
    o3.stop()


@pytest.mark.parametrize("where", ["main", "thread"])
def test_timeout_waits_about_that_long_and_leaves_no_timer(tmp_path, other, where):
    path = tmp_path / "state.json.lock"
    other(path)
    box: dict = {}

    def attempt() -> None:
        t0 = time.monotonic()
        try:
            Lock(path).acquire("300ms")
        except StateLocked as e:
            box["err"] = e
        box["elapsed"] = time.monotonic() - t0

    if where == "main":
        attempt()
    else:
        t = threading.Thread(target=attempt)
        t.start()
        t.join(10)
    assert isinstance(box["err"], StateLocked) and 0.29 <= box["elapsed"] < 2.0
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("where", ["main", "thread"])
def test_waiter_gets_the_lock_when_the_holder_releases(tmp_path, other, where, caplog):
    path = tmp_path / "state.json.lock"
    o = other(path)
    box: dict = {}

    def wait() -> None:
        lk = Lock(path)
        box["holder"] = lk.acquire(20, "waiter")
        box["at"] = time.monotonic()
        lk.release()

    threading.Timer(0.3, o.stop).start()
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="agentstate.lock"):
        if where == "main":
            wait()
        else:
            t = threading.Thread(target=wait)
            t.start()
            t.join(20)
    assert box["holder"].operation == "waiter" and 0.25 < box["at"] - t0 < 5
    assert "after waiting" in caplog.text
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_someone_elses_alarm_is_left_alone(tmp_path, other):
    """A program that uses SIGALRM itself keeps its handler and its timer; the wait polls instead."""
    path = tmp_path / "state.json.lock"
    other(path)
    rang = []
    mine = lambda signum, frame: rang.append(signum)  # noqa: E731
    previous = signal.signal(signal.SIGALRM, mine)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(StateLocked):
            Lock(path).acquire(0.3)
        assert signal.getsignal(signal.SIGALRM) is mine
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0.3 < left < 0.75
        deadline = time.monotonic() + 5
        while not rang:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert rang == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_blocked_sigalrm_falls_back_to_polling(tmp_path, other):
    path = tmp_path / "state.json.lock"
    o = other(path)
    safety = threading.Timer(5, o.stop)  # a wait the timer cannot interrupt would end here, too late
    safety.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        t0 = time.monotonic()
        with pytest.raises(StateLocked):
            Lock(path).acquire(0.3)
        assert time.monotonic() - t0 < 2
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
        safety.cancel()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_ctrl_c_while_waiting_leaves_nothing_behind(tmp_path, other):
    path = tmp_path / "state.json.lock"
    other(path)
    gc.collect()
    fds, ours = open_fds(), dict(lockmod._fds)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Lock(path).acquire(10)
    assert time.monotonic() - t0 < 5
    assert not open_fds() - fds and not added_fds(ours)
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("where, rounds", [("main", 200), ("thread", 50)])
def test_timed_out_waiters_leave_no_thread_and_no_descriptor(tmp_path, other, where, rounds):
    path = tmp_path / "state.json.lock"
    other(path)
    Lock(path).status()  # warm up what is read once (mountinfo)
    box: dict = {}

    def attempts() -> None:
        gc.collect()  # a file object of an earlier test closed by the collector mid-loop is not ours
        before = (threads(), open_fds(), set(lockmod._fds), threading.active_count())
        for _ in range(rounds):
            with pytest.raises(StateLocked):
                Lock(path).acquire(0.02)
        after = (threads(), open_fds(), set(lockmod._fds), threading.active_count())
        box["left"] = [a - b for a, b in zip(after[:3], before[:3], strict=True)]  # threads, descriptors: new and still there
        box["counts"] = (before[3], after[3])

    if where == "main":
        attempts()
    else:
        t = threading.Thread(target=attempts)
        t.start()
        t.join(60)
    assert box["left"] == [set(), set(), set()]
    assert box["counts"][1] <= box["counts"][0]  # today's old lock: 201 threads after 200 timeouts


# --- status and force-unlock ------------------------------------------------------------------------


def test_status_asks_the_kernel_and_writes_nothing(tmp_path, other):
    path = tmp_path / "state.json.lock"
    st = Lock(path).status()
    assert st == {"path": str(path), "held": False, "holder": None, "last_holder": None, "holder_alive": None,
                  "stale": False, "next": None}
    assert not path.exists()  # status creates nothing
    o = other(path, "apply")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    st = Lock(path).status()
    assert st["held"] is True and st["holder"]["lock_id"] == o.lock_id and st["holder_alive"] is True
    assert st["last_holder"] is None and st["stale"] is False
    assert f"PID {o.pid}" in st["next"] and "freed the instant it exits" in st["next"]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    o.kill()  # SIGKILL: the kernel frees the lock, the record stays
    st = Lock(path).status()
    assert st["held"] is False and st["holder"] is None and st["last_holder"]["pid"] == o.pid
    assert st["stale"] is True and st["holder_alive"] is False
    assert f"agentstate force-unlock {o.lock_id} --dir {tmp_path}" in st["next"]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    db = tmp_path / "agentstate.db.lock"  # another lock file: the CLI's force-unlock is the store's only
    other(db).kill()
    st = Lock(db).status()
    assert st["stale"] is True and "next writer overwrites" in st["next"] and "force-unlock" not in st["next"]


def test_stale_record_is_overwritten_with_a_warning(tmp_path, other, caplog):
    path = tmp_path / "state.json.lock"
    o = other(path, "killed-run")
    o.kill()
    with caplog.at_level(logging.WARNING, logger="agentstate.lock"):
        h = Lock(path).acquire(0)
    assert Holder.parse(path.read_bytes()) == h
    msg = [r.getMessage() for r in caplog.records if "stale lock record" in r.getMessage()]
    assert msg and f"PID {o.pid} on {socket.gethostname()}" in msg[0] and "killed-run" in msg[0]


def test_force_unlock_never_touches_a_held_lock(tmp_path, other):
    path = tmp_path / "state.json.lock"
    with pytest.raises(NotFound):
        Lock(path).force_unlock("nope")
    assert not path.exists()
    o = other(path, "apply")
    before = (path.read_bytes(), path.stat().st_ino)
    for lock_id, force in ((o.lock_id, False), (o.lock_id, True), ("not-" + o.lock_id, True)):
        with pytest.raises(StateLocked) as e:
            Lock(path).force_unlock(lock_id, force=force)
        assert e.value.exit_code == 3 and e.value.holder["pid"] == o.pid
        assert f"PID {o.pid}" in str(e.value) and "freed the instant it exits" in str(e.value)
        assert (path.read_bytes(), path.stat().st_ino) == before
    with pytest.raises(StateLocked):
        Lock(path).acquire(0)  # still exclusive
    o.stop()
    with pytest.raises(NotFound):  # free, blank record: nothing to clear
        Lock(path).force_unlock(o.lock_id)


def test_force_unlock_clears_a_stale_record_only_with_its_id(tmp_path, other, caplog):
    path = tmp_path / "state.json.lock"
    o = other(path)
    o.kill()
    ino, data = path.stat().st_ino, path.read_bytes()
    with pytest.raises(ConflictError) as e:
        Lock(path).force_unlock(str(uuid.uuid4()))
    assert e.value.exit_code == 5 and path.read_bytes() == data
    with caplog.at_level(logging.WARNING, logger="agentstate.lock"):
        cleared = Lock(path).force_unlock(o.lock_id)
    assert cleared.pid == o.pid and cleared.lock_id == o.lock_id
    assert path.read_bytes() == blank() and path.stat().st_ino == ino
    assert "stale lock record cleared" in caplog.text
    with pytest.raises(NotFound):
        Lock(path).force_unlock(o.lock_id)


def test_store_threads_count_exactly(tmp_path):
    from agentstate import StateStore

    store = StateStore(tmp_path / "s", lock_timeout=30)

    def work() -> None:
        for _ in range(10):
            with store.transaction() as state:
                state.resources["n"] = state.resources.get("n", 0) + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.read().resources["n"] == 40


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf"), -0.5])
def test_acquire_refuses_a_float_timeout_that_is_not_a_finite_non_negative_number(tmp_path, bad) -> None:
    """Parsed seconds skip the duration parser; a float that no parser would return still goes through it."""
    from agentstate.errors import InvalidInput

    lk = Lock(str(tmp_path / "x.lock"))
    with pytest.raises(InvalidInput, match="lock timeout"):
        lk.acquire(bad)
    assert not lk.held
    lk.acquire(0.5)
    lk.release()


# -- keep=True: a writer lock that keeps its descriptor between acquisitions --------------------------------
# free_here (test_lock_interrupts): the kernel's answer on a separate open file description.


def test_a_kept_descriptor_is_unlocked_between_acquisitions_and_closed_by_close(tmp_path):
    path = tmp_path / "agentstate.db.lock"
    before = open_fds()
    lk = Lock(path, keep=True)
    for _ in range(3):
        lk.acquire(1, "append")
        assert not free_here(path)
        assert Lock(path).read_holder().operation == "append"
        kept = open_fds() - before
        lk.release()
        assert open_fds() - before == kept and len(kept) == 1  # the same descriptor, still open
        assert free_here(path) and Lock(path).read_holder() is None  # but unlocked and blanked
    lk.close()
    assert not open_fds() - before and lk._kept == -1
    lk.close()  # twice: a no-op
    lk.acquire(1)  # and usable again (a new descriptor)
    lk.release()
    lk.close()
    assert not open_fds() - before


def test_a_kept_descriptor_of_a_replaced_lock_file_is_not_what_is_locked(tmp_path):
    """The lock file replaced between two acquisitions (by hand): the kept descriptor names the old
    inode, so the next acquire locks the file the path names now, as every other process does."""
    path = tmp_path / "agentstate.db.lock"
    lk = Lock(path, keep=True)
    lk.acquire(1)
    lk.release()
    path.unlink()
    path.write_bytes(b"")
    os.chmod(path, 0o600)
    lk.acquire(1)
    try:
        assert not free_here(path)
    finally:
        lk.release()
        lk.close()


def test_the_filesystem_cache_is_not_trusted_for_a_reused_device_number(tmp_path):
    """An unmounted filesystem's device number goes to the next one mounted (tmpfs, FUSE: one pool of
    anonymous numbers): a cached verdict whose mount point no longer holds the directory is read again."""
    from agentstate.state import lock_fs

    dev = os.stat(tmp_path).st_dev
    real = lock_fs.filesystem(str(tmp_path))
    lock_fs._fs_cache[dev] = ("fuse.gone", str(tmp_path / "elsewhere"))  # what an earlier mount left
    try:
        assert lock_fs.filesystem(str(tmp_path)) == real
    finally:
        lock_fs._fs_cache[dev] = real


@pytest.mark.parametrize("how", ["renamed-over", "renamed-away", "directory-renamed"])
def test_a_kept_descriptor_whose_name_changed_is_checked_again(tmp_path, how):
    """A kept descriptor is trusted by the name /proc/self/fd/N shows for it (no stat, see
    Lock._unmoved); any change of that name sends the acquire back to the stat check, which locks the
    file the path names now (a new one where the old inode was renamed away or over)."""
    d = tmp_path / "store"
    d.mkdir()
    path = d / "agentstate.db.lock"
    lk = Lock(path, keep=True)
    lk.acquire(1)
    lk.release()
    assert lk._name == str(path)  # tmp_path is on a local filesystem here
    if how == "renamed-over":
        (d / "new").write_bytes(b"")
        os.replace(d / "new", path)
    elif how == "renamed-away":
        os.replace(path, d / "old.lock")
    else:
        os.rename(d, tmp_path / "moved")
        d.mkdir()
    lk.acquire(1)
    try:
        assert not free_here(path)  # the file at the path is what is held
        assert Lock(path).read_holder() is not None
    finally:
        lk.release()
        lk.close()


def test_a_kept_descriptor_writes_over_a_longer_stale_record_whole(tmp_path):
    """Another holder's longer record, left by a crash, is read (and logged) and written over to its
    full length, although the kept descriptor's fast path knows only the size this Lock last wrote."""
    path = tmp_path / "agentstate.db.lock"
    lk = Lock(path, keep=True)
    lk.acquire(1)
    lk.release()
    long_record = Holder.mine("x" * 600)
    path.write_bytes(padded(long_record.to_bytes(), 1024))  # as a holder that died leaves it
    me = lk.acquire(1)
    try:
        assert path.stat().st_size == 1024
        assert Lock(path).read_holder().lock_id == me.lock_id  # parses: nothing of the old one is left
    finally:
        lk.release()
        lk.close()
    assert Lock(path).read_holder() is None and path.read_bytes().strip() == b""


def test_a_kept_descriptor_is_checked_by_stat_off_a_local_filesystem(tmp_path, monkeypatch):
    """Where a name can change on another host (a filesystem not in LOCAL_NAMES), every acquire asks stat."""
    path = tmp_path / "agentstate.db.lock"
    monkeypatch.setattr(lockmod, "names_are_local", lambda p: False)
    calls = []
    real = Lock._same_inode
    monkeypatch.setattr(Lock, "_same_inode", lambda self, fd: calls.append(fd) or real(self, fd))
    lk = Lock(path, keep=True)
    for _ in range(3):
        lk.acquire(1)
        lk.release()
    lk.close()
    assert len(calls) == 3 and lk._name is None


def test_a_forked_child_never_reuses_its_parents_kept_descriptor(tmp_path):
    """A kept descriptor shares its open file description with the child's copy: a child locking that
    copy would "hold" the lock its parent holds. The copy is closed at the fork; the child opens its own."""
    path = tmp_path / "agentstate.db.lock"
    lk = Lock(path, keep=True)
    lk.acquire(1)
    lk.release()  # kept
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait until the parent holds it, then try once
        os.close(w)
        os.read(r, 1)
        try:
            lk.acquire(0)
            code = 1  # got it while the parent holds it: the bug
        except StateLocked:
            code = 0
        except BaseException:  # noqa: BLE001
            code = 2
        os._exit(code)
    os.close(r)
    lk.acquire(1)
    try:
        os.write(w, b"x")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(w)
        lk.release()
        lk.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_database_keeps_at_most_two_writer_descriptors_and_close_closes_them(tmp_path):
    from agentstate import SessionStore

    s = SessionStore(tmp_path / "store")
    threads = [threading.Thread(target=lambda i=i: [s.append(f"t{i}", [{"n": k}]) for k in range(20)])
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lock_path = str(tmp_path / "store" / "agentstate.db.lock")

    def lock_fds() -> list[int]:
        found = []
        for fd in open_fds():
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == lock_path:
                    found.append(fd)
            except FileNotFoundError:  # the listing's own descriptor, closed since
                pass
        return found

    assert 1 <= len(lock_fds()) <= 2
    assert free_here(lock_path)
    s.close()
    assert lock_fds() == []


def test_a_state_store_keeps_one_writer_descriptor_and_close_closes_it(tmp_path):
    from agentstate import StateStore

    store = StateStore(tmp_path / "s")
    lock_path = str(tmp_path / "s" / "state.json.lock")

    def lock_fds() -> int:
        n = 0
        for fd in open_fds():
            try:
                n += os.readlink(f"/proc/self/fd/{fd}") == lock_path
            except FileNotFoundError:  # the listing's own descriptor, closed since
                pass
        return n

    def bump(store: StateStore) -> None:
        for _ in range(10):
            with store.transaction() as st:
                st.resources["n"] = st.resources.get("n", 0) + 1

    threads = [threading.Thread(target=bump, args=(store,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read().resources["n"] == 40
    assert lock_fds() == 1 and free_here(lock_path)
    store.close()
    assert lock_fds() == 0
    bump(store)  # still usable
    del store
    gc.collect()
    assert lock_fds() == 0  # a collected store closes its descriptor
