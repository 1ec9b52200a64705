"""Fault injection into a real save: `agentstate responses save` under `strace -e inject=...`.

A clean save (of a response continuing a chain, with a cap that makes it evict another chain) is
traced first (``strace -f -y``) to find the writes and fsyncs it makes on ``agentstate.db`` and its
WAL before it releases the writer lock. Then two of them fail, each in its own run:

* ENOSPC on the first write of the transaction's pages to the WAL;
* EIO on the fsync that makes the commit durable (the last sync before the lock is released).

Each must give exit 1, exactly one ``error:`` line, no traceback, and nothing changed: the same
responses stored (the chain that would have been evicted still whole). The database then passes
``PRAGMA integrity_check`` and doctor's chain check, and the same save then succeeds. Each run's
trace must show exactly the intended call marked ``(INJECTED)``.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from agentstate_integration import (
    AGENTSTATE_CLI,
    main_thread,
    occurrence,
    parse_strace,
    run_strace,
    write_report_record,
)
from procs import integrity

from agentstate import ResponseStore
from agentstate.responses.check import check_responses

TRACE = "openat,write,pwrite64,fsync,fdatasync,ftruncate,close,unlink"
DB = "agentstate.db"
NEW = '{"id": "b2", "previous_response_id": "b1", "output": [{"type": "message", "text": "three"}]}'


def _cli(directory: Path, body: Path) -> list[str]:
    return [AGENTSTATE_CLI, "responses", "save", str(body), "--max-responses", "3", "--dir", str(directory)]


def _stored(directory: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{directory / DB}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT tenant, id, previous_id, body, deleted_at FROM responses ORDER BY seq").fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("template") / "store"
    store = ResponseStore(str(d))
    store.save_many([{"id": "a1"}, {"id": "a2", "previous_response_id": "a1"}])  # evicted by the save of b2
    store.save({"id": "b1"})
    store.close()
    return d


def _target(path: str | None) -> bool:
    return bool(path) and (path.endswith("/" + DB) or path.endswith("/" + DB + "-wal"))


def test_enospc_on_write_and_eio_on_fsync(template: Path, tmp_path: Path) -> None:
    body = tmp_path / "b2.json"
    body.write_text(NEW)
    d = tmp_path / "discover" / "store"
    shutil.copytree(template, d)
    trace = tmp_path / "discover" / "trace.txt"
    r = run_strace(_cli(d, body), trace, trace=TRACE)
    assert r.returncode == 0, r.stderr
    assert [x[1] for x in _stored(d)] == ["b1", "b2"]  # the clean save evicted chain a
    calls = main_thread(parse_strace(trace.read_text()))
    released = next(i for i, c in enumerate(calls)
                    if c.name == "pwrite64" and (c.fd_path(0) or "").endswith(".lock") and '"   ' in c.line)
    writes = [i for i, c in enumerate(calls[:released])
              if c.name in ("write", "pwrite64") and (c.fd_path(0) or "").endswith(DB + "-wal")]
    syncs = [i for i, c in enumerate(calls[:released]) if c.name in ("fsync", "fdatasync") and _target(c.fd_path(0))]
    assert writes and syncs, [c.line for c in calls[:released]]
    cases = [(calls[writes[0]].name, occurrence(calls, writes[0]), "ENOSPC"),
             (calls[syncs[-1]].name, occurrence(calls, syncs[-1]), "EIO")]
    before = _stored(template)
    violations: list[str] = []
    for k, (name, when, errno) in enumerate(cases):
        d = tmp_path / f"case{k}" / "store"
        shutil.copytree(template, d)
        trace = d.parent / "trace.txt"
        r = run_strace(_cli(d, body), trace, trace=TRACE, inject=[f"{name}:error={errno}:when={when}"])
        label = f"{errno} on {name}#{when}"
        injected = [c for c in parse_strace(trace.read_text()) if c.injected]
        if len(injected) != 1 or not _target(injected[0].fd_path(0)):
            violations.append(f"{label}: the trace shows {len(injected)} injected calls: {[c.line for c in injected]}")
            continue
        lines = r.stderr.splitlines()
        print(label, r.returncode, r.stderr.strip())
        if r.returncode != 1 or len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in r.stderr:
            violations.append(f"{label}: exit {r.returncode}, stderr {r.stderr!r}")
        if _stored(d) != before:
            violations.append(f"{label}: the failed save changed what is stored: {[x[1] for x in _stored(d)]}")
        if integrity(d) != ["ok"]:
            violations.append(f"{label}: integrity_check {integrity(d)}")
        if not all(f["ok"] for f in check_responses(str(d))):
            violations.append(f"{label}: doctor's chain check {check_responses(str(d))}")
        again = subprocess.run(_cli(d, body), capture_output=True, text=True, timeout=60)
        if again.returncode != 0 or [x[1] for x in _stored(d)] != ["b1", "b2"]:
            violations.append(f"{label}: the save after the fault: exit {again.returncode} {again.stderr!r}")
    write_report_record("responses_strace_faults", len(cases), len(violations))
    assert not violations, "\n".join(violations)
