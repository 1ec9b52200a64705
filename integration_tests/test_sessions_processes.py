"""Sessions under real processes: 100 appenders at once, CLI appenders at once, and a SIGKILL loop.

* 100 processes each append 10 items (one append each) to one session, released together:
  1,000 items, seqs 1..1000, every process's items in its own order.
* 20 `agentstate sessions append` processes at once: 20 items, seqs 1..20.
* Kill loop: an appender that acknowledges each append on stdout is SIGKILLed at a random moment,
  200 rounds (1,000 with AGENTSTATE_SLOW=1). After each kill: every acknowledged append is present,
  every batch is whole (no partial append), seqs run 1..n with no gap, integrity_check is ok.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from agentstate_integration import AGENTSTATE_CLI, PYTHON, rounds, write_report_record
from procs import ForkServer, integrity, run_burst, seeded_rng

from agentstate import NotFound, SessionStore

APPENDER = str(Path(__file__).with_name("session_appender.py"))


def test_100_processes_append_to_one_session(tmp_path: Path) -> None:
    d = tmp_path / "store"
    writers, per = 100, 10
    run_burst([[PYTHON, APPENDER, "burst", str(d), "s", f"w{w}", str(per)] for w in range(writers)])
    store = SessionStore(str(d))
    items = store.items("s")
    assert [i.seq for i in items] == list(range(1, writers * per + 1))
    assert store.get("s").item_count == writers * per
    by_writer: dict[str, list[int]] = defaultdict(list)
    for it in items:
        by_writer[it.data["writer"]].append(it.data["i"])
    assert len(by_writer) == writers
    for w, seen in by_writer.items():
        assert seen == list(range(per)), (w, seen)
    assert len({i.id for i in items}) == len(items)
    store.close()
    assert integrity(d) == ["ok"]


def test_cli_appenders_at_once(tmp_path: Path) -> None:
    d = tmp_path / "store"
    n = 20
    procs = [subprocess.Popen([AGENTSTATE_CLI, "sessions", "append", "s", f'{{"type":"n","w":{w}}}', "--json",
                               "--dir", str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(n)]
    for p in procs:
        out, errs = p.communicate(timeout=120)
        assert p.returncode == 0 and errs == "", errs
    store = SessionStore(str(d))
    items = store.items("s")
    assert [i.seq for i in items] == list(range(1, n + 1))
    assert sorted(i.data["w"] for i in items) == list(range(n))
    store.close()


def test_kill_loop(tmp_path: Path) -> None:
    n_rounds = rounds(200, 1000)
    violations, stats = _kill_rounds(tmp_path / "store", n_rounds)
    write_report_record("sessions_kill_loop", n_rounds, len(violations), **stats)
    assert not violations, "\n".join(violations[:20])
    assert stats["acknowledged_appends"] > n_rounds // 4  # kills landed at varied moments, not all before any append


def test_kill_loop_catches_a_non_atomic_appender(tmp_path: Path) -> None:
    """Self-check: an appender that stores a batch one item per transaction is caught (a partial batch)."""
    violations, _ = _kill_rounds(tmp_path / "store", 150, unsafe=True, stop_at_first=True)
    assert any("partial" in v for v in violations), violations


def _kill_rounds(d: Path, n_rounds: int, unsafe: bool = False, stop_at_first: bool = True) -> tuple[list[str], dict]:
    rng = seeded_rng()
    server = ForkServer([PYTHON, APPENDER, "forkserver", str(d), "s", *(["--unsafe"] if unsafe else [])])
    store = SessionStore(str(d))
    violations: list[str] = []
    verified = 0  # seqs 1..verified checked
    acked_total = 0
    in_flight_kills = 0
    start = time.monotonic()
    try:
        for rnd in range(n_rounds):
            acked = {int(b): int(k) for b, k in server.kill_round(rnd, rng.uniform(0, 0.03))}
            acked_total += len(acked)
            # what the round left in the session
            try:
                new = store.items("s", after=verified)
            except NotFound:  # killed before its first append committed
                new = []
            seqs = [i.seq for i in new]
            if seqs != list(range(verified + 1, verified + 1 + len(new))):
                violations.append(f"round {rnd}: seqs after {verified} are {seqs[:10]}...")
            batches: dict[int, list] = defaultdict(list)
            for it in new:
                if it.data.get("round") != rnd:
                    violations.append(f"round {rnd}: item {it.seq} of round {it.data.get('round')} appeared late")
                    continue
                batches[it.data["batch"]].append(it)
            for b, k in acked.items():
                if b not in batches:
                    violations.append(f"round {rnd}: acknowledged batch {b} is missing")
                elif len(batches[b]) != k:
                    violations.append(f"round {rnd}: acknowledged batch {b} has {len(batches[b])} of {k} items")
            last_acked = max(acked) if acked else -1
            for b, its in batches.items():
                k = its[0].data["of"]
                if [i.data["i"] for i in its] != list(range(k)):
                    violations.append(f"round {rnd}: batch {b} is partial or out of order: "
                                      f"{[i.data['i'] for i in its]} of {k}")
                if [i.seq for i in its] != list(range(its[0].seq, its[0].seq + len(its))):
                    violations.append(f"round {rnd}: batch {b} is not contiguous")
                if b not in acked:
                    if b != last_acked + 1:
                        violations.append(f"round {rnd}: unacknowledged batch {b} after last ack {last_acked}")
                    in_flight_kills += 1
            if sorted(batches) != list(range(len(batches))):
                violations.append(f"round {rnd}: batches {sorted(batches)} have a hole")
            verified += len(new)
            if verified and store.get("s").item_count != verified:
                violations.append(f"round {rnd}: item_count {store.get('s').item_count} != {verified}")
            if rnd % 10 == 0 or rnd == n_rounds - 1:
                check = integrity(d)
                if check != ["ok"]:
                    violations.append(f"round {rnd}: integrity_check {check}")
            if violations and stop_at_first:
                break
    finally:
        server.stop()
        store.close()
    check = integrity(d)
    if check != ["ok"]:
        violations.append(f"integrity_check at the end: {check}")
    return violations, {"acknowledged_appends": acked_total, "committed_unacknowledged": in_flight_kills,
                        "items": verified, "seconds": round(time.monotonic() - start, 1)}


def test_sigterm_or_sigint_while_waiting_for_the_lock(tmp_path: Path) -> None:
    """A cancelled CI job (SIGTERM) or Ctrl-C (SIGINT) during `sessions append`: exit 143/130, one line
    saying the append was abandoned, nothing stored, no lock left behind."""
    from agentstate.state.lock import Lock

    d = tmp_path / "store"
    store = SessionStore(str(d))
    store.append("s", [{"type": "first"}])
    lock_path = str(d / "agentstate.db.lock")
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        lk = Lock(lock_path)
        lk.acquire(1, "holding for the test")
        try:
            p = subprocess.Popen([AGENTSTATE_CLI, "sessions", "append", "s", '{"type":"second"}', "--lock-timeout",
                                  "60", "--dir", str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until it has opened the lock file: it is waiting
                try:
                    fds = [os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{p.pid}/fd")]
                except OSError:
                    fds = []
                if lock_path in fds:
                    break
                time.sleep(0.02)
            time.sleep(0.1)
            p.send_signal(sig)
            out, err = p.communicate(timeout=60)
        finally:
            lk.release()
        assert p.returncode == code, (p.returncode, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "abandoned" in lines[0], err
        assert [i.data for i in store.items("s")] == [{"type": "first"}]
        probe = Lock(lock_path)
        probe.acquire(0, "probe")  # free: nobody kept it
        probe.release()
    store.close()
