"""The holder's liveness and start time through psutil (issue 16: psutil was declared but unused, and
hand-parsed /proc made ``lock status`` Linux-only), with the /proc semantics kept on Linux and psutil
imported only when a record is judged (never by an acquire: it costs ~20 ms to import)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agentstate.state import lock_record
from agentstate.state.lock import Lock


def proc_field_22(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[-1].split()[19]


def test_psutil_start_times_are_the_ticks_proc_gives() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (os.getpid(), os.getppid(), 1, child.pid):
            assert lock_record.process_start(pid) == proc_field_22(pid), pid
        assert lock_record._own_start(os.getpid()) == proc_field_22(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert lock_record.process_start(child.pid) is None


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch):
    """This process as on macOS: no /proc boot ID, PID namespace or stat; psutil only."""
    monkeypatch.setattr(lock_record, "_LINUX", False)
    monkeypatch.setattr(lock_record, "_identity", None)
    monkeypatch.setattr(lock_record, "_read_text", lambda path: pytest.fail(f"read {path}"))
    yield
    lock_record._identity = None


def test_lock_status_tells_live_dead_and_reused_holders_without_proc(tmp_path, elsewhere) -> None:
    import psutil

    me = lock_record.Holder.mine("apply")
    assert me.boot_id == f"boot-time:{psutil.boot_time():.0f}" and me.pid_namespace == "none"
    assert me.process_start == f"{psutil.Process().create_time():.6f}"
    assert me.alive() is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = lock_record.Holder(**{**me.to_dict(), "pid": child.pid})
    assert gone.alive() is False
    reused = lock_record.Holder(**{**me.to_dict(), "process_start": f"{float(me.process_start) - 1:.6f}"})
    assert reused.alive() is False
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        start = lock_record.process_start(zombie.pid)
        deadline = time.monotonic() + 10
        while lock_record.process_start(zombie.pid) is not None:  # exited, not reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert lock_record.Holder(**{**me.to_dict(), "pid": zombie.pid, "process_start": start}).alive() is False
    finally:
        zombie.wait()
    lk = Lock(tmp_path / "state.json.lock")
    lk.acquire(0)
    try:
        status = Lock(tmp_path / "state.json.lock").status()
        assert status["held"] and status["holder_alive"] is True and status["holder"]["pid_namespace"] == "none"
    finally:
        lk.release()


def test_acquire_does_not_import_psutil_status_does(tmp_path) -> None:
    code = ("import sys; from agentstate.state.lock import Lock; lk = Lock(sys.argv[1]); lk.acquire(0); "
            "a = 'psutil' in sys.modules; lk.release(); lk.acquire(0); s = Lock(sys.argv[1]).status(); "
            "print(a, 'psutil' in sys.modules, s['holder_alive'])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state.json.lock")], capture_output=True,
                       text=True, timeout=60)
    assert r.stdout == "False True True\n", r.stderr
