"""SIGINT and SIGTERM at every syscall of `agentstate sessions append` and `agentstate responses save`
(issue 15, item 2): the one ``error:`` line and the exit code say what happened.

One clean run of each is traced; then for each syscall from the open of ``agentstate.db.lock`` to the
acknowledgement on stdout, a run gets the signal delivered by strace on entry to that call (alternating
SIGTERM and SIGINT). The line must say "interrupted by SIG..." and either that the write completed (then
the item is stored) or that it was abandoned / arrived outside any write before anything was written
(then it is not). A signal while the writer lock is released after the COMMIT used to say "abandoned"
although the item was stored. Once one point reports completed, every later one must too.
"""

from __future__ import annotations

import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from agentstate_integration import AGENTSTATE_CLI, main_thread, occurrence, parse_strace, run_strace

from agentstate import ResponseStore, SessionStore

SIGS = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("SIGINT", 130)}
TRACE = "openat,flock,write,pwrite64,fsync,fdatasync,close,ftruncate,unlink"
DB = "agentstate.db"


def _seed(d: Path) -> None:
    d.parent.mkdir(parents=True, exist_ok=True)
    with SessionStore(str(d)) as s:
        s.append("s", [{"type": "one"}])
    with ResponseStore(str(d)) as r:
        r.save({"id": "r1"})


def _stored(d: Path, kind: str) -> bool:
    conn = sqlite3.connect(f"file:{d / DB}?mode=ro", uri=True)
    try:
        if kind == "sessions":
            return conn.execute("SELECT COUNT(*) FROM session_items WHERE session_id = 's'").fetchone()[0] == 2
        return conn.execute("SELECT COUNT(*) FROM responses WHERE id = 'r2'").fetchone()[0] == 1
    finally:
        conn.close()


def _cmd(kind: str, d: Path) -> list[str]:
    if kind == "sessions":
        return [AGENTSTATE_CLI, "sessions", "append", "s", "--content", "two", "--dir", str(d)]
    body = d.parent / "r2.json"
    body.write_text('{"id": "r2", "previous_response_id": "r1"}')
    return [AGENTSTATE_CLI, "responses", "save", str(body), "--dir", str(d)]


def _points(kind: str, work: Path) -> list[tuple[str, int, str]]:
    d = work / "store"
    _seed(d)
    trace = work / "trace.txt"
    r = run_strace(_cmd(kind, d), trace, trace=TRACE)
    assert r.returncode == 0, r.stderr
    calls = main_thread(parse_strace(trace.read_text()))
    lock = f"{d.resolve()}/{DB}.lock"
    start = next(i for i, c in enumerate(calls) if c.name == "openat" and c.paths()[0] == lock)
    end = next(i for i, c in enumerate(calls) if c.name == "write" and c.args[0].startswith("1<"))
    return [(calls[i].name, occurrence(calls, i), calls[i].line[:120]) for i in range(start, end + 1)]


def _signal_at(kind: str, point: tuple[str, int, str], sig: int, work: Path) -> tuple[str, list[str]]:
    name, when, line = point
    d = work / "store"
    _seed(d)
    sname, code = SIGS[sig]
    r = run_strace(_cmd(kind, d), work / "trace.txt", trace=name, seccomp=False,
                   inject=[f"{name}:signal={sname}:when={when}"])
    where = f"{sname} at {name}#{when} ({line})"
    lines = r.stderr.splitlines()
    if r.returncode == 0:  # the signal landed after the acknowledgement was written: the run is a success
        return "completed", [] if _stored(d, kind) else [f"{where}: exit 0 but nothing stored"]
    v = []
    if r.returncode != code:
        v.append(f"{where}: exit {r.returncode}, expected {code}; stderr {r.stderr!r}")
    if len(lines) != 1 or not lines[0].startswith(f"error: interrupted by {sname}"):
        return "?", v + [f"{where}: stderr is not one 'interrupted' line: {r.stderr!r}"]
    completed = "completed" in lines[0]
    if completed != _stored(d, kind):
        v.append(f"{where}: says {'completed' if completed else 'abandoned'}, but the item is "
                 f"{'' if _stored(d, kind) else 'not '}stored: {lines[0]}")
    return ("completed" if completed else "abandoned"), v


@pytest.mark.parametrize("kind", ["sessions", "responses"])
def test_a_signal_at_every_syscall_says_what_happened(kind: str, tmp_path: Path) -> None:
    points = _points(kind, tmp_path / "record")
    assert any(n in ("fsync", "fdatasync") for n, *_ in points), points
    jobs = [(i, p, signal.SIGTERM if i % 2 == 0 else signal.SIGINT) for i, p in enumerate(points)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda j: _signal_at(kind, j[1], j[2], tmp_path / f"p{j[0]:03d}"), jobs))
    violations = [x for _, vs in results for x in vs]
    outcomes = [o for o, _ in results]
    if "completed" in outcomes:
        first = outcomes.index("completed")
        violations += [f"{points[i]}: {o} after an earlier point completed"
                       for i, o in enumerate(outcomes) if i > first and o != "completed"]
    assert not violations, "\n".join(violations)
    assert "abandoned" in outcomes and "completed" in outcomes, outcomes
