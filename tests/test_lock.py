"""Unit tests for agentstate.lock: durations, holder records, staleness decisions, in-process locking."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from agentstate import lock as lockmod
from agentstate.errors import ConflictError, InvalidInput, NotFound, StateLocked
from agentstate.lock import DEFAULT_STALE_AFTER, DEFAULT_TIMEOUT, Holder, Lock, parse_duration


def iso_ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def holder(**fields) -> Holder:
    base = Holder.mine("test")
    for k, v in fields.items():
        setattr(base, k, v)
    return base


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- parse_duration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1.5", 1.5), ("0", 0.0), ("30", 30.0), (" 1h ", 3600.0),
     (".25s", 0.25), (7, 7.0), (0.1, 0.1)],
)
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["junk", "", "-1", "-5s", "10 s s", "1d", "nan", "inf", "1e3", "ms", True,
                                  -0.5, float("nan"), float("inf")])
def test_parse_duration_rejects(text):
    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_defaults():
    assert DEFAULT_TIMEOUT == 30.0 and DEFAULT_STALE_AFTER == 300.0


# --- holder records ---------------------------------------------------------------------------------


def test_holder_round_trip():
    h = Holder.mine("apply", "flock")
    assert h.pid == os.getpid() and h.hostname == socket.gethostname() and h.operation == "apply"
    assert str(uuid.UUID(h.lock_id)) == h.lock_id
    assert h.acquired_at == h.heartbeat_at and h.acquired_at.endswith("Z")
    assert h.process_start == lockmod.process_start(os.getpid()) and h.process_start is not None
    data = h.to_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert Holder.parse(data) == h
    assert Holder.parse(data.decode()) == h
    assert set(h.to_dict()) == {"lock_id", "pid", "hostname", "operation", "acquired_at", "heartbeat_at", "version",
                                "boot_id", "pid_namespace", "process_start", "mode"}


def test_holder_parse_tolerates_old_and_future_records():
    h = Holder.parse(b'{"lock_id":"x","pid":12,"hostname":"h","acquired_at":"2020-01-01T00:00:00Z","new":1}')
    assert h is not None and h.pid == 12 and h.heartbeat_at == "2020-01-01T00:00:00Z" and h.mode is None
    assert h.extra == {"new": 1} and "new" not in h.to_dict()


@pytest.mark.parametrize("data", [None, b"", b"  \n", b"{", b"[]", b"null", b'{"pid":1}',
                                  b'{"lock_id":"x","pid":"12","hostname":"h"}', b'{"lock_id":"x","pid":true,"hostname":"h"}',
                                  b"\xff\xfe"])
def test_holder_parse_rejects_garbage(data):
    assert Holder.parse(data) is None


def test_describe_names_the_holder():
    h = holder(operation="apply", acquired_at=iso_ago(42))
    text = h.describe()
    for part in (f"PID {h.pid}", h.hostname, "apply", h.lock_id, h.acquired_at, "42s ago"):
        assert part in text


# --- staleness decisions ------------------------------------------------------------------------------


def test_live_holder_is_never_stale_even_when_old():
    h = holder(acquired_at=iso_ago(86400), heartbeat_at=iso_ago(86400))
    assert h.alive() is True and not h.stale(1.0) and h.stale_reason(1.0) is None


def test_dead_pid_is_stale():
    h = holder(pid=dead_pid(), process_start=None)
    assert h.alive() is False
    assert "gone" in h.stale_reason(300)


def test_zombie_is_stale():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while lockmod._pid_state(p.pid) != "zombie":  # exited, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        h = holder(pid=p.pid, process_start=None)
        assert h.alive() is False and "zombie" in h.stale_reason(300)
    finally:
        p.wait()


def test_reused_pid_is_stale():
    real = lockmod.process_start(os.getpid())
    h = holder(process_start=str(int(real) + 1))
    assert h.alive() is False and "reused" in h.stale_reason(300)
    assert holder(process_start=real).alive() is True


def test_other_host_old_heartbeat_is_stale_fresh_is_not():
    fresh = holder(hostname="elsewhere", boot_id=str(uuid.uuid4()), acquired_at=iso_ago(3600), heartbeat_at=iso_ago(1))
    assert fresh.alive() is None and not fresh.stale(300) and not fresh.stale(60)
    old = holder(hostname="elsewhere", boot_id=str(uuid.uuid4()), heartbeat_at=iso_ago(400))
    assert old.alive() is None and old.stale(300) and not old.stale(500)
    assert "heartbeat" in old.stale_reason(300)
    # Unknown boot ID: still decided by the heartbeat.
    assert holder(hostname="elsewhere", boot_id=None, heartbeat_at=iso_ago(400)).stale(300)
    assert not holder(hostname="elsewhere", boot_id=None, heartbeat_at="garbage").stale(300)


@pytest.mark.skipif(lockmod.boot_id() is None, reason="no boot ID on this platform")
def test_different_boot_id_on_this_host_is_stale():
    h = holder(boot_id=str(uuid.uuid4()), heartbeat_at=iso_ago(0))  # our own, live PID: but an earlier boot
    assert h.same_machine() is False and h.alive() is False
    assert "boot" in h.stale_reason(300)
    assert h.same_kernel() is False


@pytest.mark.skipif(lockmod.pid_namespace() is None, reason="no PID namespaces on this platform")
def test_other_pid_namespace_falls_back_to_heartbeat():
    h = holder(pid_namespace="pid:[1]", heartbeat_at=iso_ago(10))
    assert h.alive() is None and not h.stale(300) and h.stale(5)
    assert h.same_kernel() is True  # same boot: the kernel's flock covers it


# --- Lock in one process ---------------------------------------------------------------------------


@pytest.fixture(params=["auto", "soft"])
def mode(request):
    return request.param


def test_acquire_release_and_exclusive(tmp_path, mode, caplog):
    path = str(tmp_path / "state.json.lock")
    a, b = Lock(path, mode=mode), Lock(path, mode=mode)
    with caplog.at_level(logging.INFO, logger="agentstate.lock"):
        h = a.acquire(0, "first")
        assert Holder.parse(open(path, "rb").read()) == h
        assert h.mode == ("soft" if mode == "soft" else "flock")
        with pytest.raises(StateLocked) as e:
            b.acquire(0, "second")
        assert e.value.holder["lock_id"] == h.lock_id and e.value.exit_code == 3
        assert f"force-unlock {h.lock_id}" in str(e.value)
        with pytest.raises(RuntimeError):
            a.acquire(0)
        a.release()
        a.release()  # idempotent
        b.acquire(0, "second")
        b.release()
    text = caplog.text
    assert f"lock acquired by PID {os.getpid()}" in text
    assert "waiting for lock" in text and f"PID {os.getpid()}" in text
    assert "timed out after 0s" in text
    assert "lock released by PID" in text and "after holding it" in text
    if mode == "soft":
        assert not os.path.exists(path)
    else:
        assert open(path, "rb").read().strip() == b""  # a free lock has a blank record


def test_timeout_waits_about_that_long(tmp_path, mode):
    path = str(tmp_path / "state.json.lock")
    a = Lock(path, mode=mode)
    a.acquire(0)
    try:
        seen = []
        t0 = time.monotonic()
        with pytest.raises(StateLocked):
            Lock(path, mode=mode).acquire("300ms", on_wait=seen.append)
        elapsed = time.monotonic() - t0
        assert 0.29 <= elapsed < 2.0
        assert len(seen) == 1 and seen[0].lock_id == a.holder.lock_id  # told once, whom it waits for
    finally:
        a.release()


def test_waiter_gets_lock_when_released(tmp_path, mode):
    path = str(tmp_path / "state.json.lock")
    a = Lock(path, mode=mode)
    a.acquire(0)
    got = []

    def wait() -> None:
        b = Lock(path, mode=mode)
        got.append(b.acquire(10))
        b.release()

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    assert not got
    a.release()
    t.join(10)
    assert len(got) == 1 and got[0].operation == "transaction"


def test_unknown_mode_and_bad_timeout(tmp_path):
    with pytest.raises(InvalidInput):
        Lock(str(tmp_path / "l"), mode="nfs")
    with pytest.raises(InvalidInput):
        Lock(str(tmp_path / "l")).acquire("forever")


def test_status(tmp_path, mode):
    path = str(tmp_path / "state.json.lock")
    lk = Lock(path, mode=mode)
    st = lk.status()
    assert st["held"] is False and st["holder"] is None and st["stale"] is False
    h = lk.acquire(0)
    st = Lock(path, mode=mode).status()
    assert st["held"] is True and st["holder"]["lock_id"] == h.lock_id and st["holder_alive"] is True
    assert st["stale"] is False
    lk.release()
    assert Lock(path, mode=mode).status()["held"] is False


def test_force_unlock_rules(tmp_path, mode, caplog):
    path = str(tmp_path / "state.json.lock")
    with pytest.raises(NotFound):
        Lock(path, mode=mode).force_unlock("nope")
    lk = Lock(path, mode=mode)
    h = lk.acquire(0)
    other = Lock(path, mode=mode)
    with pytest.raises(ConflictError):
        other.force_unlock("not-" + h.lock_id)
    with pytest.raises(StateLocked):
        other.force_unlock(h.lock_id)  # alive on this host
    assert Holder.parse(open(path, "rb").read()).lock_id == h.lock_id
    with caplog.at_level(logging.WARNING, logger="agentstate.lock"):
        assert other.force_unlock(h.lock_id, force=True).lock_id == h.lock_id
    assert "force-unlocked" in caplog.text
    third = Lock(path, mode=mode)
    third.acquire(0)
    lk.release()  # the forced-out holder's release leaves the new holder alone
    assert Holder.parse(open(path, "rb").read()).lock_id == third.holder.lock_id
    assert not Lock(path, mode=mode).status()["stale"]
    third.release()


def test_soft_stale_record_broken_with_warning(tmp_path, caplog):
    path = tmp_path / "state.json.lock"
    stale = holder(pid=dead_pid(), mode="soft", acquired_at=iso_ago(42))
    path.write_bytes(stale.to_bytes())
    assert Lock(str(path), mode="soft").status()["stale"] is True
    with caplog.at_level(logging.WARNING, logger="agentstate.lock"):
        h = Lock(str(path), mode="soft").acquire(0)
    assert h.lock_id != stale.lock_id
    msg = [r.getMessage() for r in caplog.records if "stale lock broken" in r.getMessage()]
    assert msg and f"PID {stale.pid} on {stale.hostname}" in msg[0] and "acquired it 42s ago" in msg[0] and "gone" in msg[0]


def test_flock_leftover_record(tmp_path, caplog):
    """With the kernel lock free: a flock holder's record from this kernel is broken; others are respected."""
    path = tmp_path / "state.json.lock"
    leftover = holder(mode="flock", process_start="1")
    path.write_bytes(leftover.to_bytes())
    with caplog.at_level(logging.WARNING, logger="agentstate.lock"):
        lk = Lock(str(path), mode="flock")
        lk.acquire(0)
        lk.release()
    assert "stale lock broken" in caplog.text and "kernel released" in caplog.text
    # A live soft-mode holder (mixed modes): the kernel cannot vouch for it, so it is respected.
    live_soft = holder(mode="soft")
    path.write_bytes(live_soft.to_bytes())
    with pytest.raises(StateLocked):
        Lock(str(path), mode="flock").acquire(0.1)
    assert Lock(str(path)).status()["held"] is True
    assert path.read_bytes() == live_soft.to_bytes()


def test_soft_mode_takes_over_an_empty_lock_file(tmp_path):
    path = tmp_path / "state.json.lock"
    path.write_bytes(b"")  # a free flock-mode lock file
    lk = Lock(str(path), mode="soft")
    lk.acquire(0)
    assert Holder.parse(path.read_bytes()).lock_id == lk.holder.lock_id
    lk.release()


def test_heartbeat_refreshes_record(tmp_path, mode):
    path = tmp_path / "state.json.lock"
    lk = Lock(str(path), mode=mode, stale_after=0.5)
    h = lk.acquire(0)
    first = h.heartbeat_at
    try:
        deadline = time.monotonic() + 5
        while Holder.parse(path.read_bytes()).heartbeat_at == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        rec = Holder.parse(path.read_bytes())
        assert rec.lock_id == h.lock_id and rec.acquired_at == h.acquired_at and rec.heartbeat_at > first
    finally:
        lk.release()


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
