"""A failed append never comes back (issue 15, item 1): one long-lived process appends once, then appends
again with EIO injected (strace) on that commit's WAL sync and on a later sync: the checkpoint SQLite runs
when the connection closes, or the very next sync of the WAL.

The process reports what it was told (appended / failed / outcome unknown) and reads the session itself,
then after closing the store, and then a new process reads it. An append reported as failed ("nothing was
changed") must never be read, by the same process or any other: SQLite may have left the failed commit's
frames in the WAL past the last published frame, and whoever rebuilds the WAL index from the file (the next
opener after a close whose checkpoint failed) would find them. An outcome reported as unknown may go either
way, but must say so and point to doctor. Each run's trace must show the intended calls ``(INJECTED)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from agentstate_integration import main_thread, occurrence, parse_strace, run_strace
from procs import integrity

from agentstate import SessionStore

CHILD = r"""
import json, os, sys
from agentstate import SessionStore, StorageError
d = sys.argv[1]
s = SessionStore(d)
s.append("s", [{"type": "one"}])
os.write(1, b"MARK\n")
report = {}
try:
    s.append("s", [{"type": "doomed"}])
    report["outcome"] = "appended"
except StorageError as e:
    report["outcome"] = e.details.get("outcome") or "failed"
    report["message"] = e.message
report["same"] = [i.data["type"] for i in s.items("s")]
s.close()
report["closed"] = [i.data["type"] for i in s.items("s")]
s.close()
print(json.dumps(report), flush=True)
"""

SYNCS = ("fsync", "fdatasync")


def _types(d: Path) -> list[str]:
    with SessionStore(str(d)) as s:
        return [i.data["type"] for i in s.items("s")]


@pytest.fixture(scope="module")
def syncs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int, int]:
    """(syscall name, when= of the doomed append's WAL sync, when= of the main file's sync at close)."""
    base = tmp_path_factory.mktemp("discover")
    child = base / "child.py"
    child.write_text(CHILD)
    d = base / "store"
    with SessionStore(str(d)) as s:  # closed: the child's connection is then the last one
        s.append("s", [{"type": "zero"}])
    trace = base / "trace.txt"
    r = run_strace([sys.executable, str(child), str(d)], trace, trace="write,fsync,fdatasync")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["outcome"] == "appended"
    calls = main_thread(parse_strace(trace.read_text()))
    mark = next(i for i, c in enumerate(calls) if c.name == "write" and "MARK" in c.line)
    after = [(i, c) for i, c in enumerate(calls) if i > mark and c.name in SYNCS]
    commit_i, commit = after[0]
    assert (commit.fd_path(0) or "").endswith("agentstate.db-wal"), commit.line
    close_i = next(i for i, c in after if (c.fd_path(0) or "").endswith("/agentstate.db") and c.name == commit.name)
    return commit.name, occurrence(calls, commit_i), occurrence(calls, close_i)


def _run(tmp_path: Path, inject: str) -> tuple[dict, str, list[str], int]:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    d = tmp_path / "store"
    with SessionStore(str(d)) as s:  # closed: the child's connection is then the last one
        s.append("s", [{"type": "zero"}])
    trace = tmp_path / "trace.txt"
    r = run_strace([sys.executable, str(child), str(d)], trace, trace="fsync,fdatasync", inject=[inject])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    injected = [c for c in parse_strace(trace.read_text()) if c.injected]
    return json.loads(r.stdout.splitlines()[-1]), str(d), [c.line for c in injected], len(injected)


@pytest.mark.parametrize("variant", ["commit-and-close-checkpoint", "commit-and-next-wal-sync"])
def test_failed_append_never_comes_back(syncs: tuple[str, int, int], variant: str, tmp_path: Path) -> None:
    name, commit, close = syncs
    if variant == "commit-and-close-checkpoint":
        spec = f"{name}:error=EIO:when={commit}..{close}+{close - commit}"
    else:
        spec = f"{name}:error=EIO:when={commit}..{commit + 1}"
    report, d, lines, count = _run(tmp_path, spec)
    assert count == 2, (spec, lines)
    assert report["outcome"] in ("failed", "unknown"), report
    fresh = _types(Path(d))
    if report["outcome"] == "failed":
        assert report["message"].endswith("nothing was changed"), report
        assert report["same"] == ["zero", "one"], (spec, report)
        assert report["closed"] == ["zero", "one"], (spec, report)
        assert fresh == ["zero", "one"], (spec, fresh)
    else:
        assert "outcome is unknown" in report["message"] and "agentstate doctor" in report["message"], report
        assert fresh in (["zero", "one"], ["zero", "one", "doomed"]), fresh
    assert integrity(Path(d)) == ["ok"]
    with SessionStore(d) as s:  # the next append takes the next seq, no gap
        s.append("s", [{"type": "next"}])
        assert [i.seq for i in s.items("s")] == list(range(1, len(fresh) + 2))
