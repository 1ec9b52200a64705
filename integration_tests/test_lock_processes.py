"""The store lock with real processes: exclusivity, SIGKILLed holders, timeouts, stale records, force-unlock.

Holders are real processes (integration_tests/lock_holder.py); the CLI runs as the `agentstate`
console script.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentstate import StateStore
from agentstate.codec import decode_document
from agentstate.errors import StateLocked
from agentstate.lock import Holder, Lock, process_start

HERE = Path(__file__).resolve().parent
HOLDER = str(HERE / "lock_holder.py")
AGENTSTATE = str(Path(sys.executable).parent / "agentstate")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    env.update(extra)
    return env


class Holding:
    """A lock_holder.py process that holds the lock until stopped."""

    def __init__(self, store_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, HOLDER, str(store_dir), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env or _env(),
        )
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"holder did not start: {self.proc.stderr.read()}")
        self.record = json.loads(line)
        self.pid = self.proc.pid
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

    def start(store_dir: Path, *args: str, env: dict[str, str] | None = None) -> Holding:
        h = Holding(store_dir, *args, env=env)
        started.append(h)
        return h

    yield start
    for h in started:
        h.cleanup()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTSTATE, *args], capture_output=True, text=True, env=env or _env(), timeout=timeout)


def try_lock(store_dir: Path, mode: str | None = None, stale_after: float = 300.0) -> bool:
    """Whether a fresh lock can be taken right now (one attempt), from this process."""
    lk = Lock(str(store_dir / "state.json.lock"), mode=mode, stale_after=stale_after)
    try:
        lk.acquire(0, "probe")
    except StateLocked:
        return False
    lk.release()
    return True


def write_record(store_dir: Path, **fields) -> bytes:
    store_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    record = {
        "lock_id": str(uuid.uuid4()),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "operation": "apply",
        "acquired_at": now.isoformat().replace("+00:00", "Z"),
        "heartbeat_at": now.isoformat().replace("+00:00", "Z"),
        "version": "0.1.0",
        "boot_id": None,
        "pid_namespace": None,
        "process_start": None,
        "mode": "soft",
    }
    record.update(fields)
    data = json.dumps(record).encode() + b"\n"
    (store_dir / "state.json.lock").write_bytes(data)
    return data


def iso_ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


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


@pytest.mark.parametrize("mode", ["auto", "soft"])
def test_processes_increment_counter_exactly(tmp_path, mode):
    n, m = (10, 50) if mode == "auto" else (4, 25)
    d = tmp_path / "store"
    env = _env(AGENTSTATE_LOCK_MODE=mode)
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(d), str(m), f"w{i}"], env=env, stderr=subprocess.PIPE)
        for i in range(n)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    state = StateStore(d).read()
    assert state.resources["counter"] == n * m
    assert state.serial == n * m  # every transaction saved exactly once
    assert state.source == "state"
    decode_document((d / "state.json").read_bytes())  # valid, checksum verified
    assert sorted(os.listdir(d)) == sorted(["state.json", "state.json.bak"] + (["state.json.lock"] if mode == "auto"
                                                                                 else []))


@pytest.mark.parametrize("mode", [None, "soft"])
def test_threads_increment_counter_exactly(tmp_path, mode):
    store = StateStore(tmp_path / "s", lock_timeout=60, lock_mode=mode)
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
    assert store.read().resources["counter"] == 6 * 25
    assert store.read().serial == 6 * 25


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
    h = holders(d, "--transaction")
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env())
    try:
        # The waiter logs one line when its wait starts.
        first = ""
        while "waiting for lock" not in first:
            first = waiter.stderr.readline()
            assert first, "the waiter ended without waiting"
        assert f"PID {h.pid}" in first, first
        killed_at = time.monotonic()
        os.kill(h.pid, signal.SIGKILL)
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, err
    delay = float(out.strip()) - killed_at  # CLOCK_MONOTONIC is system-wide
    assert delay < 1.0, f"next writer waited {delay:.3f}s after the SIGKILL"
    # The killed holder's record was broken, with a WARNING naming it.
    assert "WARNING" in err and "stale lock broken" in err and f"PID {h.pid}" in err, err
    assert socket.gethostname() in err
    # The killed transaction saved nothing; the waiter's did.
    assert StateStore(d).read().resources == {"counter": 1}


def test_kernel_lock_is_freed_when_holder_dies_even_if_record_stays(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    h.kill()
    st = StateStore(d).lock_status()
    assert st["held"] is False
    assert st["last_holder"]["pid"] == h.pid and st["holder_alive"] is False
    r = cli("lock", "status", "--json", "--dir", str(d))
    assert r.returncode == 0 and json.loads(r.stdout)["held"] is False
    assert try_lock(d)


# --- timeouts -------------------------------------------------------------------------------------


def test_cli_times_out_after_lock_timeout_naming_the_holder(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    t0 = time.monotonic()
    r = cli("apply", "--set", "a=1", "--lock-timeout", "1s", "--dir", str(d))
    elapsed = time.monotonic() - t0
    assert r.returncode == 3, r.stderr
    assert 0.9 <= elapsed < 3.0, elapsed
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"PID {h.pid}" in r.stderr and socket.gethostname() in r.stderr and "holder" in r.stderr
    assert f"agentstate force-unlock {h.lock_id}" in r.stderr
    assert not (d / "state.json").exists()  # nothing written
    assert Holder.parse((d / "state.json.lock").read_bytes()).lock_id == h.lock_id


def test_cli_lock_timeout_from_env_json_error_and_zero(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    t0 = time.monotonic()
    r = cli("apply", "--set", "a=1", "--json", "--dir", str(d), env=_env(AGENTSTATE_LOCK_TIMEOUT="300ms"))
    elapsed = time.monotonic() - t0
    assert r.returncode == 3 and elapsed < 3.0
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "locked" and err["exit_code"] == 3 and err["holder"]["pid"] == h.pid
    t0 = time.monotonic()
    r = cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d))
    assert r.returncode == 3 and time.monotonic() - t0 < 3.0
    r = cli("apply", "--set", "a=1", "--lock-timeout", "soon", "--dir", str(d))
    assert r.returncode in (1, 2) and "soon" in r.stderr and "lock" in r.stderr
    h.stop()
    r = cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d))
    assert r.returncode == 0, r.stderr


# --- stale records (soft mode: no working flock) ------------------------------------------------


def test_soft_lock_left_by_dead_pid_is_broken_with_warning(tmp_path, holders):
    d = tmp_path / "s"
    env = _env(AGENTSTATE_LOCK_MODE="soft")
    h = holders(d, env=env)
    h.kill()  # its record stays: soft mode has no kernel lock to free
    assert Holder.parse((d / "state.json.lock").read_bytes()).pid == h.pid
    r = cli("apply", "--set", "a=1", "--log-level", "warning", "--lock-timeout", "5s", "--dir", str(d), env=env)
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "stale lock broken" in r.stderr
    assert f"PID {h.pid}" in r.stderr and socket.gethostname() in r.stderr and "process is gone" in r.stderr
    assert " ago" in r.stderr  # its age
    assert StateStore(d).read().resources == {"a": 1}
    assert not (d / "state.json.lock").exists()  # released


def test_soft_lock_with_reused_pid_is_stale(tmp_path):
    d = tmp_path / "s"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real = process_start(sleeper.pid)
        assert real is not None
        write_record(d, pid=sleeper.pid, process_start=str(int(real) + 12345), boot_id=None)
        env = _env(AGENTSTATE_LOCK_MODE="soft")
        r = cli("apply", "--set", "a=1", "--log-level", "warning", "--lock-timeout", "5s", "--dir", str(d), env=env)
        assert r.returncode == 0, r.stderr
        assert "stale lock broken" in r.stderr and f"PID {sleeper.pid}" in r.stderr and "reused" in r.stderr
        # The same live process with its true start time is a live holder: never broken.
        data = write_record(d, pid=sleeper.pid, process_start=real, acquired_at=iso_ago(3600),
                            heartbeat_at=iso_ago(3600))
        r = cli("apply", "--set", "a=2", "--lock-timeout", "500ms", "--dir", str(d), env=env)
        assert r.returncode == 3 and f"PID {sleeper.pid}" in r.stderr
        assert (d / "state.json.lock").read_bytes() == data
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("mode", ["soft", "auto"])
def test_other_host_holder_with_fresh_heartbeat_is_not_broken(tmp_path, mode):
    d = tmp_path / "s"
    env = _env(AGENTSTATE_LOCK_MODE=mode)
    data = write_record(d, hostname="build-host-7", pid=4242, boot_id=str(uuid.uuid4()), mode=mode.replace("auto",
                        "flock"), acquired_at=iso_ago(3600), heartbeat_at=iso_ago(0))
    # Held for an hour (longer than the default 5m threshold), but its heartbeat is fresh.
    r = cli("apply", "--set", "a=1", "--lock-timeout", "1s", "--dir", str(d), env=env)
    assert r.returncode == 3, r.stderr
    assert "PID 4242 on build-host-7" in r.stderr
    assert (d / "state.json.lock").read_bytes() == data
    # Same through the API with a short stale threshold: heartbeat age 0-2s < 5s.
    store = StateStore(d, stale_after=5, lock_mode=None if mode == "auto" else mode)
    with pytest.raises(StateLocked) as e:
        with store.transaction(lock_timeout=0.5):
            pass
    assert e.value.holder["hostname"] == "build-host-7"
    assert (d / "state.json.lock").read_bytes() == data
    st = store.lock_status()
    assert st["held"] and st["holder_alive"] is None and not st["stale"]
    # Once its heartbeat is older than the threshold, it is broken with a WARNING.
    write_record(d, hostname="build-host-7", pid=4242, boot_id=str(uuid.uuid4()), mode=mode.replace("auto", "flock"),
                 acquired_at=iso_ago(3600), heartbeat_at=iso_ago(600))
    r = cli("apply", "--set", "a=1", "--lock-timeout", "5s", "--dir", str(d), env=env)
    assert r.returncode == 0, r.stderr
    assert "stale lock broken" in r.stderr and "PID 4242 on build-host-7" in r.stderr and "heartbeat" in r.stderr


def test_live_holder_older_than_threshold_keeps_lock_and_heartbeats(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d, "--mode", "soft", "--stale-after", "0.5", "--hold", "0")
    first = h.record["heartbeat_at"]
    store = StateStore(d, stale_after=0.5, lock_mode="soft")
    time.sleep(0.8)  # older than the threshold
    with pytest.raises(StateLocked):
        with store.transaction(lock_timeout=1.2):
            pass
    record = Holder.parse((d / "state.json.lock").read_bytes())
    assert record.lock_id == h.lock_id  # not broken
    assert record.heartbeat_at > first  # refreshed by the holder's heartbeat thread
    assert record.acquired_at == h.record["acquired_at"]
    h.stop()
    assert h.readline() == "released"
    assert try_lock(d, mode="soft")


# --- force-unlock and status ---------------------------------------------------------------------


def test_force_unlock_refuses_wrong_id_and_live_holder(tmp_path, holders):
    d = tmp_path / "s"
    h = holders(d)
    r = cli("lock", "status", "--json", "--dir", str(d))
    st = json.loads(r.stdout)
    assert st["held"] and st["holder"]["lock_id"] == h.lock_id and st["holder_alive"] is True
    r = cli("lock", "status", "--dir", str(d))
    assert f"PID {h.pid}" in r.stdout and "alive" in r.stdout and f"force-unlock {h.lock_id}" in r.stdout

    r = cli("force-unlock", str(uuid.uuid4()), "--dir", str(d))
    assert r.returncode == 5 and "mismatch" in r.stderr
    assert not try_lock(d)
    r = cli("force-unlock", h.lock_id, "--dir", str(d))
    assert r.returncode == 3 and "alive" in r.stderr
    assert not try_lock(d)
    assert Holder.parse((d / "state.json.lock").read_bytes()).lock_id == h.lock_id

    r = cli("force-unlock", h.lock_id, "--force", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    assert try_lock(d)  # the holder keeps only a lock on the removed file
    r = cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d))
    assert r.returncode == 0, r.stderr


def test_force_unlock_of_dead_holders_record(tmp_path, holders):
    soft = _env(AGENTSTATE_LOCK_MODE="soft")
    d = tmp_path / "soft"
    h = holders(d, env=soft)
    h.kill()
    r = cli("force-unlock", h.lock_id, "--dir", str(d), env=soft)
    assert r.returncode == 0, r.stderr
    assert not (d / "state.json.lock").exists()
    r = cli("force-unlock", h.lock_id, "--dir", str(d), env=soft)
    assert r.returncode == 6

    d = tmp_path / "flock"
    h = holders(d)
    h.kill()
    r = cli("force-unlock", h.lock_id, "--json", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["holder"]["pid"] == h.pid
    assert (d / "state.json.lock").read_bytes() == b""
    st = json.loads(cli("lock", "status", "--json", "--dir", str(d)).stdout)
    assert st["held"] is False and st["last_holder"] is None


# --- fork safety --------------------------------------------------------------------------------


@pytest.mark.parametrize("child_exit", ["release", "exit"])
def test_forked_child_never_releases_parents_lock(tmp_path, holders, child_exit):
    d = tmp_path / "s"
    h = holders(d, "--fork", "--child-exit", child_exit)
    assert h.readline().startswith("forked ")  # the child has released and exited
    assert not try_lock(d)
    assert Holder.parse((d / "state.json.lock").read_bytes()).lock_id == h.lock_id
    r = cli("apply", "--set", "a=1", "--lock-timeout", "0", "--dir", str(d))
    assert r.returncode == 3 and f"PID {h.pid}" in r.stderr
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
