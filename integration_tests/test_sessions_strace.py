"""Fault injection into a real session append: `agentstate sessions append` under `strace -e inject=...`.

A clean append is traced first (``strace -f -y``) to find every write (pwrite64/write) and every
fsync/fdatasync the process makes on ``agentstate.db``, ``agentstate.db-wal`` and (when it creates
the database) ``agentstate.db-journal``, in two cases: an existing database, and a fresh store where
the append also creates the file, switches it to WAL and runs the schema migration. Then each of
those calls is made to fail in its own run (ENOSPC on a write, EIO on an fsync), counted with
strace's per-task ``when=N``:

* a fault up to the commit (the WAL's frames, all before the writer lock is released): exit 1,
  exactly one ``error:`` line on stderr, no traceback, and nothing stored: the session reads
  exactly as before;
* a fault on the sync that makes the commit durable (the WAL's fdatasync, the first sync after the
  lock's release): exit 1, one ``error:`` line saying the outcome is unknown and pointing to
  ``agentstate doctor``; the append is committed, so it reads as stored;
* a fault after that (the checkpoint SQLite runs when the process closes the database): the append
  was acknowledged (exit 0) and must be there.

Either way the database then opens, passes ``PRAGMA integrity_check``, and the next append works
with the next seq (no gap). Each run's trace must show exactly the intended call marked
``(INJECTED)``, so a miscounted ``when=`` fails the test instead of testing nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from agentstate_integration import (
    AGENTSTATE_CLI,
    SLOW,
    main_thread,
    occurrence,
    parse_strace,
    run_strace,
    write_report_record,
)
from procs import integrity

from agentstate import NotFound, SessionStore

STRACE_BIN = shutil.which("strace") or "/usr/bin/strace"

TRACE = "openat,write,pwrite64,fsync,fdatasync,ftruncate,close,unlink"
DB = "agentstate.db"


def _cli(directory: Path, text: str) -> list[str]:
    return [AGENTSTATE_CLI, "sessions", "append", "s", "--content", text, "--dir", str(directory)]


def _items(directory: Path) -> list[dict]:
    """The session's items ([] when it, or the whole store, does not exist)."""
    store = SessionStore(str(directory))
    try:
        return [i.to_dict() for i in store.items("s")]
    except NotFound:
        return []
    finally:
        store.close()


@pytest.fixture(scope="module", params=["existing", "fresh"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """"existing": a database holding a session of two items; "fresh": no store yet, so the traced
    append also creates the file, switches it to WAL and runs the schema migration."""
    d = tmp_path_factory.mktemp(f"template-{request.param}") / "store"
    if request.param == "existing":
        for text in ("one", "two"):
            r = subprocess.run(_cli(d, text), capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
    return d


def _target(path: str | None) -> bool:
    return bool(path) and path.endswith(("/" + DB, "/" + DB + "-wal", "/" + DB + "-journal"))


def _copy(template: Path, d: Path) -> None:
    d.parent.mkdir(parents=True, exist_ok=True)
    if template.exists():
        shutil.copytree(template, d)


@pytest.fixture(scope="module")
def plan(template: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int, str, str]]:
    """(syscall, when, path, phase) for the writes and fsyncs of the database, its WAL and (when it
    is created) its rollback journal in a clean append; phase is "before" (the lock's release),
    "settle" (the WAL's sync right after it) or "after". A fresh store makes many page writes: unless
    AGENTSTATE_SLOW=1, every fsync and the first and last two writes to each file are kept."""
    d = tmp_path_factory.mktemp("discover") / "store"
    _copy(template, d)
    trace = d.parent / "trace.txt"
    r = run_strace(_cli(d, "three"), trace, trace=TRACE)
    assert r.returncode == 0, r.stderr
    calls = main_thread(parse_strace(trace.read_text()))
    lock_blanked = next(i for i, c in enumerate(calls)
                        if c.name == "pwrite64" and (c.fd_path(0) or "").endswith(".lock") and '"   ' in c.line)
    out = []
    for i, c in enumerate(calls):
        if c.name in ("write", "pwrite64", "fsync", "fdatasync") and _target(c.fd_path(0)):
            settle = (i > lock_blanked and c.name.endswith("sync")
                      and not any(x[3] == "settle" for x in out))
            phase = "before" if i < lock_blanked else "settle" if settle else "after"
            out.append((c.name, occurrence(calls, i), c.fd_path(0), phase))
    names = {n for n, *_ in out}
    assert {"pwrite64", "fdatasync"} <= names or {"pwrite64", "fsync"} <= names, out
    settles = [x for x in out if x[3] == "settle"]
    assert len(settles) == 1 and settles[0][2].endswith("-wal"), out  # the append's one durability point
    said = next(i for i, c in enumerate(calls) if c.name == "write" and (c.fd_path(0) or "").startswith("pipe:"))
    synced = next(i for i, c in enumerate(calls) if i > lock_blanked and c.name.endswith("sync"))
    assert lock_blanked < synced < said, (lock_blanked, synced, said)  # acknowledged only once durable
    assert any(phase == "before" for *_, phase in out)
    if not SLOW:
        keep = []
        for path in {p for _, _, p, _ in out}:
            writes = [x for x in out if x[2] == path and not x[0].endswith("sync")]
            keep += writes[:2] + writes[-2:]
        out = [x for x in out if x[0].endswith("sync") or x in keep]
    return out


def test_every_write_and_fsync_fault(template: Path, plan: list, tmp_path: Path) -> None:
    before_items = _items(template)
    violations: list[str] = []
    cases = 0
    for k, (name, when, path, phase) in enumerate(plan):
        errno = "EIO" if name.endswith("sync") else "ENOSPC"
        d = tmp_path / f"case{k}" / "store"
        _copy(template, d)
        trace = d.parent / "trace.txt"
        r = run_strace(_cli(d, "three"), trace, trace=TRACE, inject=[f"{name}:error={errno}:when={when}"])
        cases += 1
        label = f"{name}#{when} on {Path(path).name} ({phase})"
        injected = [c for c in parse_strace(trace.read_text()) if c.injected]
        if len(injected) != 1 or not _target(injected[0].fd_path(0)):
            violations.append(f"{label}: the trace shows {len(injected)} injected calls: "
                              f"{[c.line for c in injected]}")
            continue
        lines = r.stderr.splitlines()
        items = _items(d)
        stored = [i["data"] for i in before_items] + [{"role": "user", "content": "three"}]
        if phase == "before":
            if r.returncode != 1 or len(lines) != 1 or not lines[0].startswith("error: "):
                violations.append(f"{label}: exit {r.returncode}, stderr {r.stderr!r}")
            if items != before_items:
                violations.append(f"{label}: failed append changed the session: {len(items)} items")
        elif phase == "settle":
            if (r.returncode != 1 or len(lines) != 1 or not lines[0].startswith("error: ")
                    or "the outcome is unknown" not in lines[0] or "agentstate doctor" not in lines[0]):
                violations.append(f"{label}: exit {r.returncode}, stderr {r.stderr!r}")
            if [i["data"] for i in items] != stored:
                violations.append(f"{label}: the committed append is not there")
        else:
            if r.returncode != 0 or r.stderr:
                violations.append(f"{label}: a fault after the commit failed the append: {r.stderr!r}")
            if [i["data"] for i in items] != stored:
                violations.append(f"{label}: the acknowledged append is not there")
        if "Traceback" in r.stderr:
            violations.append(f"{label}: traceback")
        if integrity(d) != ["ok"]:
            violations.append(f"{label}: integrity_check {integrity(d)}")
        after = subprocess.run(_cli(d, "four"), capture_output=True, text=True, timeout=60)
        if after.returncode != 0:
            violations.append(f"{label}: the next append failed: {after.stderr!r}")
        else:
            seqs = [i["seq"] for i in _items(d)]
            if seqs != list(range(1, len(seqs) + 1)):
                violations.append(f"{label}: seqs after the next append: {seqs}")
    write_report_record(f"sessions_strace_faults_{template.parent.name.split('-')[1].rstrip('0123456789')}",
                        cases, len(violations))
    assert not violations, "\n".join(violations)
    assert cases >= 4


CHILD = r"""
import os, sys, time
from agentstate import SessionStore, StorageError
s = SessionStore(sys.argv[1])
s.get("s")  # connection open
if sys.argv[2] == "append":
    try:
        s.append("s", [{"type": "doomed"}])
        print("appended", flush=True)
    except StorageError as e:
        print(e.details.get("outcome") or "failed", flush=True)
print("pid", os.getpid(), flush=True)
time.sleep(120)
"""


def test_failed_wal_fsync_then_every_process_killed(tmp_path: Path) -> None:
    """EIO on each sync of the WAL in a long-lived process's append, while another process keeps the
    database open (so closing does not remove the WAL); then both are SIGKILLed before anyone writes
    again. One inside the COMMIT (a new WAL's header) fails it: the append is reported as failed, so it
    must not appear when the next process opens the database (the WAL's unpublished commit frames are
    written over before the lock is released). The one after the COMMIT (the write's durability sync)
    reports the outcome unknown: the append is committed, so it does appear."""
    import os
    import signal
    import sys

    child = tmp_path / "child.py"
    child.write_text(CHILD)
    template = tmp_path / "template"
    SessionStore(str(template)).append("s", [{"type": "one"}])

    def start(d: Path, mode: str, inject: list[str], trace: Path | None = None):
        args = [STRACE_BIN, "-f", "-qq", "-y", "-o", str(trace or os.devnull), "-e", "trace=fdatasync,fsync",
                "--seccomp-bpf"]
        for spec in inject:
            args += ["-e", f"inject={spec}"]
        p = subprocess.Popen(args + [sys.executable, str(child), str(d), mode], stdout=subprocess.PIPE, text=True)
        result = p.stdout.readline().strip() if mode == "append" else ""
        pid = int(p.stdout.readline().split()[1])
        return p, pid, result

    def kill(p, pid) -> None:
        os.kill(pid, signal.SIGKILL)
        p.wait(timeout=60)

    # which fsyncs of the WAL does the appender make (with the other process holding the database open)?
    d = tmp_path / "discover"
    shutil.copytree(template, d)
    holder = start(d, "hold", [])
    trace = tmp_path / "trace.txt"
    a = start(d, "append", [], trace)
    assert a[2] == "appended"
    kill(*a[:2])
    kill(*holder[:2])
    calls = main_thread(parse_strace(trace.read_text()))
    wal = [(c.name, occurrence(calls, i)) for i, c in enumerate(calls) if (c.fd_path(0) or "").endswith("-wal")]
    assert wal, [c.line for c in calls]
    outcomes = []
    for name, when in wal:
        d = tmp_path / f"case-{name}-{when}"
        shutil.copytree(template, d)
        holder = start(d, "hold", [])
        a = start(d, "append", [f"{name}:error=EIO:when={when}"])
        kill(*a[:2])
        kill(*holder[:2])
        items = [i["data"] for i in _items(d)]
        outcomes.append(a[2])
        if a[2] == "failed":
            assert items == [{"type": "one"}], (name, when, items)
        else:
            assert a[2] == "unknown" and items == [{"type": "one"}, {"type": "doomed"}], (name, when, a[2], items)
        assert integrity(d) == ["ok"]
    assert outcomes[-1] == "unknown" and outcomes.count("unknown") == 1, outcomes  # the last sync: after the COMMIT
