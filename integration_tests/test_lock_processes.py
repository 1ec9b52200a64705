"""The store lock with real processes: exclusivity, SIGKILLed holders, timeouts, a lock file replaced under a
waiter, the release order (strace), a holder in another PID namespace, force-unlock, flock failures, forks.

Holders are real processes (integration_tests/lock_holder.py); the CLI runs as the `agentstate` console script.
The kernel's flock is the only authority: nothing here may end with two holders, or with a lock file that
agentstate unlinked or replaced.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from agentstate_integration import STRACE, parse_strace, rounds, run_strace
from tinyfuse import TYPE as FUSE_TYPE
from tinyfuse import TinyFuse

from agentstate import StateStore
from agentstate.errors import StateLocked, StorageError
from agentstate.state.codec import decode_document
from agentstate.state.lock import RECORD_BLOCK, Holder, Lock

HERE = Path(__file__).resolve().parent
HOLDER = str(HERE / "lock_holder.py")
AGENTSTATE = str(Path(sys.executable).parent / "agentstate")
BLANK = b" " * (RECORD_BLOCK - 1) + b"\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    env.update(extra)
    return env


class Holding:
    """A lock_holder.py process (optionally under ``prefix``, e.g. unshare) holding the lock until stopped."""

    def __init__(self, store_dir: Path, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, HOLDER, str(store_dir), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"holder did not start: {self.proc.stderr.read()}")
        self.record = json.loads(line)
        self.pid = self.record["pid"]  # as the holder sees itself (another namespace: another number)
        self.lock_id = self.record["lock_id"]

    def readline(self) -> str:
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def cleanup(self) -> None:
        self.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass


@pytest.fixture
def holders():
    started: list[Holding] = []

    def start(store_dir: Path, *args: str, prefix: tuple[str, ...] = ()) -> Holding:
        h = Holding(store_dir, *args, prefix=prefix)
        started.append(h)
        return h

    yield start
    for h in started:
        h.cleanup()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTSTATE, *args], capture_output=True, text=True, env=env or _env(), timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess, code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def try_lock(store_dir: Path) -> bool:
    """Whether a fresh lock can be taken right now (one attempt), from this process."""
    lk = Lock(store_dir / "state.json.lock")
    try:
        lk.acquire(0, "probe")
    except StateLocked:
        return False
    lk.release()
    return True


def findmnt(path: Path) -> tuple[str, str]:
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,TARGET", "--target", str(path)], capture_output=True,
                         text=True, check=True).stdout
    fstype, target = out.split(None, 1)
    return fstype, target.strip()


# --- exclusivity ------------------------------------------------------------------------------

WORKER = """
import sys
from agentstate import StateStore
store = StateStore(sys.argv[1], lock_timeout=120)
for _ in range(int(sys.argv[2])):
    with store.transaction() as state:
        state.resources["counter"] = state.resources.get("counter", 0) + 1
        state.resources["last"] = sys.argv[3]
"""


def test_processes_increment_counter_exactly(tmp_path):
    n, m = 10, rounds(50, 300)
    d = tmp_path / "store"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(d), str(m), f"w{i}"], env=_env(), stderr=subprocess.PIPE)
        for i in range(n)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    state = StateStore(d).read()
    assert state.resources["counter"] == n * m
    assert state.serial == n * m  # every transaction saved exactly once
    decode_document((d / "state.json").read_bytes())  # valid, checksum verified
    assert sorted(os.listdir(d)) == ["state.json", "state.json.bak", "state.json.lock", "state.json.spare"]
    assert (d / "state.json.lock").read_bytes() == BLANK


def test_threads_increment_counter_exactly(tmp_path):
    store = StateStore(tmp_path / "s", lock_timeout=60)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                with store.transaction() as state:
                    state.resources["counter"] = state.resources.get("counter", 0) + 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert store.read().resources["counter"] == 6 * 25 and store.read().serial == 6 * 25


# --- a holder that dies -------------------------------------------------------------------------

WAITER = """
import sys, time
from agentstate import StateStore, logs
logs.configure("info")
store = StateStore(sys.argv[1])
with store.transaction(lock_timeout=20) as state:
    t = time.monotonic()
    state.resources["counter"] = state.resources.get("counter", 0) + 1
print(t, flush=True)
"""


def test_sigkilled_holder_delays_next_writer_less_than_a_second(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d, "--transaction", "--hold", "0")
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env())
    try:
        first = ""
        while "waiting for lock" not in first:  # the waiter logs one line when its wait starts
            first = waiter.stderr.readline()
            assert first, "the waiter ended without waiting"
        assert f"PID {h.pid}" in first, first
        killed_at = time.monotonic()
        os.kill(h.proc.pid, signal.SIGKILL)
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, err
    delay = float(out.strip()) - killed_at  # CLOCK_MONOTONIC is system-wide
    assert delay < 1.0, f"next writer waited {delay:.3f}s after the SIGKILL"
    # The killed holder's record was overwritten, with a WARNING naming it.
    assert "WARNING" in err and "stale lock record overwritten" in err
    assert f"PID {h.pid} on {socket.gethostname()}" in err
    assert "after waiting" in err  # the hand-off is logged
    assert StateStore(d).read().resources == {"counter": 1}  # the killed transaction saved nothing


def test_kernel_lock_is_freed_when_holder_dies_even_if_record_stays(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    h.kill()
    st = StateStore(d).lock_status()
    assert st["held"] is False and st["stale"] is True
    assert st["last_holder"]["pid"] == h.pid and st["holder_alive"] is False
    r = cli("lock", "status", "--json", "--dir", str(d))
    assert r.returncode == 0 and json.loads(r.stdout)["held"] is False
    assert try_lock(d)


# --- timeouts -------------------------------------------------------------------------------------


def test_cli_times_out_after_lock_timeout_naming_the_holder(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    t0 = time.monotonic()
    line = one_error_line(cli("apply", "--set", "a=1", "--lock-timeout", "1s", "--dir", str(d)), 3)
    assert 0.9 <= time.monotonic() - t0 < 3.0
    for part in (f"PID {h.pid}", socket.gethostname(), "holder", "since", "--lock-timeout", "lock status",
                 "freed the instant it exits"):
        assert part in line, line
    assert "force-unlock" not in line  # it would be refused: the holder holds the lock
    assert not (d / "state.json").exists()  # nothing written
    assert Holder.parse((d / "state.json.lock").read_bytes()).lock_id == h.lock_id


def test_cli_lock_timeout_from_env_json_error_and_zero(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    t0 = time.monotonic()
    r = cli("apply", "--set", "a=1", "--json", "--dir", str(d), env=_env(AGENTSTATE_LOCK_TIMEOUT="300ms"))
    assert r.returncode == 3 and time.monotonic() - t0 < 3.0
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "locked" and err["exit_code"] == 3 and err["holder"]["pid"] == h.pid
    t0 = time.monotonic()
    r = cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d))
    assert r.returncode == 3 and time.monotonic() - t0 < 3.0
    h.stop()
    r = cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d))
    assert r.returncode == 0, r.stderr


# --- a lock file replaced or unlinked under a waiter ---------------------------------------------

LOCK_WAITER = """
import os, sys
from agentstate import logs
from agentstate.state.lock import Lock
logs.configure("info")
lk = Lock(sys.argv[1])
lk.acquire(60, "waiter")
print("acquired", os.fstat(lk._fd).st_ino, flush=True)
sys.stdin.read()
lk.release()
"""


def blocked_in_flock(pid: int) -> None:
    """Wait until ``pid`` is blocked in flock (/proc/locks lists a waiter as "N: -> FLOCK ... PID ...")."""
    deadline = time.monotonic() + 20
    while not any(f.split()[1] == "->" and f.split()[5] == str(pid) for f in Path("/proc/locks").read_text()
                  .splitlines()):
        assert time.monotonic() < deadline, "the waiter never blocked in flock"
        time.sleep(0.01)


def _readline_within(stream, seconds: float) -> str | None:
    ready, _, _ = select.select([stream], [], [], seconds)
    return stream.readline().strip() if ready else None


@pytest.mark.parametrize("how", ["unlinked", "replaced"])
def test_waiter_on_a_replaced_lock_file_never_holds_a_dead_inode(tmp_path, holders, how):
    """A waiter blocked on inode 1 while the path comes to name inode 2 (held by B) must not take inode 1's
    lock as the store's when A lets go of it: it re-checks the path and waits for B."""
    d = tmp_path / "s"
    path = d / "state.json.lock"
    a = holders(d)
    waiter = subprocess.Popen([sys.executable, "-c", LOCK_WAITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        blocked_in_flock(waiter.pid)
        ino = path.stat().st_ino
        if how == "unlinked":
            path.unlink()
        else:
            (d / "new").write_bytes(b"")
            os.rename(d / "new", path)
        b = holders(d)  # locks the file now at the path
        assert path.stat().st_ino != ino
        a.stop()  # frees the old inode the waiter is blocked on
        assert _readline_within(waiter.stdout, 1.0) is None, "the waiter holds a lock while B holds the store's"
        assert not try_lock(d)
        b.stop()
        line = _readline_within(waiter.stdout, 10.0)
        assert line is not None and line.startswith("acquired ")
        assert int(line.split()[1]) == path.stat().st_ino  # the inode at the path, not the dead one
        waiter.stdin.close()
        err = waiter.stderr.read()
        assert waiter.wait(10) == 0, err
        assert "replaced while waiting" in err
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(10)
        for f in (waiter.stdin, waiter.stdout, waiter.stderr):
            f.close()


# --- the release order --------------------------------------------------------------------------

ACQUIRE_RELEASE = """
import sys
from agentstate.state.lock import Lock
lk = Lock(sys.argv[1])
lk.acquire(5, "traced")
lk.release()
"""


def test_syscalls_of_acquire_and_release(tmp_path):
    """open (O_NOFOLLOW, 0600), flock, write the record, blank it, unlock, close: no fsync, no unlink, no rename."""
    path = tmp_path / "state.json.lock"
    trace = tmp_path / "trace"
    proc = run_strace([sys.executable, "-c", ACQUIRE_RELEASE, str(path)], trace,
                      trace="openat,open,flock,pwrite64,write,fsync,fdatasync,close,unlink,unlinkat,rename,renameat,"
                            "renameat2,ftruncate")
    assert proc.returncode == 0, proc.stderr
    calls = [c for c in parse_strace(trace.read_text()) if str(path) in c.line]
    opened = [c for c in calls if c.name in ("openat", "open")]
    assert len(opened) == 1 and "O_NOFOLLOW" in opened[0].line and "O_CREAT" in opened[0].line
    assert "0600" in opened[0].line
    seq = [(c.name, "blank" if c.name == "pwrite64" and '"     ' in c.line else
            "record" if c.name == "pwrite64" else c.args[1] if c.name == "flock" else "") for c in calls[1:]]
    assert seq == [("flock", "LOCK_EX|LOCK_NB"), ("pwrite64", "record"), ("pwrite64", "blank"),
                   ("flock", "LOCK_UN"), ("close", "")], seq
    assert path.read_bytes() == BLANK


OBSERVER = """
import fcntl, os, select, sys
path = sys.argv[1]
handovers = dirty = 0
while not select.select([sys.stdin], [], [], 0)[0]:  # until the test closes our stdin
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocked: we get it the instant the holder unlocks
        handovers += 1
        if os.pread(fd, 4096, 0).strip():
            dirty += 1
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
print(handovers, dirty)
"""

CYCLER = """
import sys
from agentstate.state.lock import Lock
lk = Lock(sys.argv[1])
for _ in range(int(sys.argv[2])):
    lk.acquire(30, "cycler")
    lk.release()
"""


def test_record_is_blank_whenever_the_lock_changes_hands(tmp_path):
    """An observer that takes the flock the instant a holder unlocks must always find a blank record. The
    holders run under strace, which stops them at each pwrite: a holder that unlocked before blanking would
    be caught with its record still there."""
    path = tmp_path / "state.json.lock"
    with Lock(path):  # create the file
        pass
    observer = subprocess.Popen([sys.executable, "-c", OBSERVER, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    cyclers = [subprocess.Popen([STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64", sys.executable, "-c",
                                 CYCLER, str(path), str(rounds(300, 3000))], env=_env()) for _ in range(2)]
    for c in cyclers:
        assert c.wait(120) == 0
    out, _ = observer.communicate("", timeout=30)
    handovers, dirty = map(int, out.split())
    assert handovers >= 50, f"only {handovers} hand-overs observed"
    assert dirty == 0, f"{dirty} of {handovers} hand-overs showed a holder's record"


# --- another PID namespace ------------------------------------------------------------------------

UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


def test_holder_in_another_pid_namespace_is_never_unlocked(tmp_path, holders):
    """Its PID means nothing here (it is 1 in its namespace), but the kernel's flock covers it: force-unlock
    refuses (exit 3), with or without force, and the lock file is never unlinked."""
    d = tmp_path / "s"
    path = d / "state.json.lock"
    h = holders(d, prefix=UNSHARE)
    assert h.record["pid_namespace"] != os.readlink("/proc/self/ns/pid")
    before = (path.read_bytes(), path.stat().st_ino)
    st = StateStore(d).lock_status()
    assert st["held"] is True and st["holder"]["lock_id"] == h.lock_id and st["holder_alive"] is None
    assert f"PID {h.pid}" in st["next"] and "another host or PID namespace" in st["next"]
    line = one_error_line(cli("force-unlock", h.lock_id, "--dir", str(d)), 3)
    assert f"PID {h.pid} on {socket.gethostname()}" in line and "freed the instant it exits" in line
    assert "another host or PID namespace" in line  # `kill 1` here would hit another process
    with pytest.raises(StateLocked):
        StateStore(d).force_unlock(h.lock_id, force=True)
    assert (path.read_bytes(), path.stat().st_ino) == before  # never unlinked, never cleared
    assert not try_lock(d)
    one_error_line(cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d)), 3)
    h.stop()
    assert h.readline() == "released"
    assert try_lock(d) and path.stat().st_ino == before[1]


# --- force-unlock and status ---------------------------------------------------------------------


def test_force_unlock_refuses_a_live_holder(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d, "--hold", "0")
    st = json.loads(cli("lock", "status", "--json", "--dir", str(d)).stdout)
    assert st["held"] and st["holder"]["lock_id"] == h.lock_id and st["holder_alive"] is True
    r = cli("lock", "status", "--dir", str(d))
    assert f"PID {h.pid}" in r.stdout and "alive" in r.stdout and "freed the instant it exits" in r.stdout
    for lock_id in (h.lock_id, str(uuid.uuid4())):
        line = one_error_line(cli("force-unlock", lock_id, "--dir", str(d)), 3)
        assert f"PID {h.pid}" in line
        assert not try_lock(d)
    assert Holder.parse((d / "state.json.lock").read_bytes()).lock_id == h.lock_id


def test_force_unlock_clears_a_dead_holders_record(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    h.kill()
    ino = (d / "state.json.lock").stat().st_ino
    one_error_line(cli("force-unlock", str(uuid.uuid4()), "--dir", str(d)), 5)
    r = cli("force-unlock", h.lock_id, "--json", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["holder"]["pid"] == h.pid
    assert (d / "state.json.lock").read_bytes() == BLANK and (d / "state.json.lock").stat().st_ino == ino
    st = json.loads(cli("lock", "status", "--json", "--dir", str(d)).stdout)
    assert st["held"] is False and st["last_holder"] is None and st["stale"] is False
    one_error_line(cli("force-unlock", h.lock_id, "--dir", str(d)), 6)


# --- where flock does not work ------------------------------------------------------------------


@pytest.mark.parametrize("err", ["ENOLCK", "EOPNOTSUPP", "EINVAL"])
def test_flock_failure_refuses_with_one_line_naming_the_filesystem(tmp_path, err):
    d = tmp_path / "s"
    d.mkdir()
    proc = subprocess.run([STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "trace=flock", "-e",
                           f"inject=flock:error={err}", AGENTSTATE, "apply", "--set", "a=1", "--dir", str(d)],
                          capture_output=True, text=True, env=_env(), timeout=60)
    line = one_error_line(proc, 1)
    fstype, mount = findmnt(d)
    assert f"({errno.errorcode[getattr(errno, err)]})" in line and f"the {fstype} filesystem at {mount}" in line, line
    assert "local filesystem" in line and "postgresql://" in line
    assert not (d / "state.json").exists()  # never runs unlocked


def test_a_fuse_filesystem_is_refused_before_anything_is_created(tmp_path):
    """A real FUSE mount (integration_tests/tinyfuse.py): its flock would be local to this host."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with TinyFuse(str(mnt)) as fs:
        line = one_error_line(cli("apply", "--set", "a=1", "--dir", str(mnt)), 1)
        assert f"the {FUSE_TYPE} filesystem at {mnt} does not share flock locks" in line, line
        assert "local filesystem" in line and "postgresql://" in line
        one_error_line(cli("lock", "status", "--dir", str(mnt)), 1)
        with pytest.raises(StorageError):
            Lock(mnt / "agentstate.db.lock").acquire(0)
        ops = list(fs.ops)
    assert ops and not {8, 9, 35} & set(ops)  # no MKNOD, MKDIR or CREATE reached the filesystem


# --- fork safety --------------------------------------------------------------------------------


@pytest.mark.parametrize("child_exit", ["release", "exit"])
def test_forked_child_never_releases_parents_lock(tmp_path, holders, child_exit):
    d = tmp_path / "s"
    h = holders(d, "--fork", "--child-exit", child_exit)
    forked = h.readline().split()
    assert forked[0] == "forked" and forked[2] == "0"  # the child's release() returned quietly, and it exited
    assert not try_lock(d)
    assert Holder.parse((d / "state.json.lock").read_bytes()).lock_id == h.lock_id  # not blanked by the child
    one_error_line(cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d)), 3)
    h.stop()
    assert h.readline() == "released"
    assert try_lock(d)


def test_forked_child_does_not_keep_dead_parents_lock(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d, "--fork", "--child-exit", "sleep")
    child = int(h.readline().split()[1])
    try:
        assert not try_lock(d)
        h.kill()  # the parent dies; its forked child lives on
        os.kill(child, 0)
        assert try_lock(d)  # the child dropped its copy of the lock descriptor
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
