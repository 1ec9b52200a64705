"""SIGKILL a real save at every syscall it makes, one run per kill point.

A save (``writer.py once DIR counter V``: one transaction) is traced once with ``strace -f -y``
over the syscalls that touch the store: openat, flock, write, pwrite64, ftruncate, fsync,
fdatasync, close, rename/renameat/renameat2, link/linkat, unlink/unlinkat. The kill points are
every such call of the writer's main thread from the ``openat`` of ``state.json.lock`` up to and
including the ``write`` of the acknowledgement to stdout (everything before the lock file is
opened is interpreter start-up and touches nothing). Then the save is re-run once per point
under ``strace -e inject=NAME:signal=SIGKILL:when=K``: the kernel kills the writer on entry to
the K-th NAME call, before the call runs, so every prefix of the protocol is a crash state.

After every kill: the run must really have died by SIGKILL on the intended call (checked in its
own trace); state.json copied alone into an empty directory must load as the old or the new
version (or be absent when there was no old one); the store as a whole must load the old or the
new version; when state.json is new, the backup must be the old version; and the next writer
must clean up, save, and leave no temp file. Each scenario must see both outcomes.

Scenarios: an update (valid state.json + backup), the first save into a missing directory, and
an update where state.json and its backup are one inode (what a commit that failed at its last rename
leaves).
"""

from __future__ import annotations

import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from agentstate_integration import (
    BACKUP,
    PYTHON,
    STATE,
    WRITE_PATH_TRACE,
    WRITER,
    load_state_alone,
    main_thread,
    make_seeded_store,
    next_save_problems,
    parse_strace,
    run_strace,
    store_files,
    write_path,
    write_report_record,
)

from agentstate.state.store import StateStore

FD_CALLS = ("flock", "write", "pwrite64", "ftruncate", "fsync", "fdatasync", "close")

_results: dict[str, dict[str, int]] = {}


@dataclass(frozen=True)
class KillPoint:
    name: str
    when: int
    target: str  # the call's path(s) with random suffixes and the directory normalised


def _shape(c, directory: str) -> str:
    paths = [c.fd_path(0)] if c.name in FD_CALLS else list(c.paths())
    text = " ".join(p or "" for p in paths).replace(directory, "DIR")
    text = re.sub(r"pipe:\[\d+\]", "pipe", re.sub(r"/proc/\d+/", "/proc/PID/", text))
    return re.sub(r"-[0-9a-f]{6,}\b", "-X", re.sub(r"corrupt-\d{8}T\d{6}Z", "corrupt-T", text))


def _prepare(scenario: str, directory: Path) -> None:
    if scenario == "first save":
        return
    make_seeded_store(directory)
    if scenario == "backup is state's inode":
        (directory / BACKUP).unlink()
        os.link(directory / STATE, directory / BACKUP)
    if scenario == "spare reused":  # a third save keeps the backup before last as state.json.spare
        with StateStore(directory).transaction() as state:
            state.resources["counter"] = 5
        assert (directory / (STATE + ".spare")).exists()


def _writer(directory: Path) -> list[str]:
    return [PYTHON, WRITER, "once", str(directory), "counter", "3"]


def kill_points(scenario: str, work: Path) -> list[KillPoint]:
    work.mkdir(parents=True)
    directory = work / "store"
    _prepare(scenario, directory)
    trace = work / "record.txt"
    proc = run_strace(_writer(directory), trace, trace=WRITE_PATH_TRACE)
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), proc.stderr
    real = os.path.realpath(directory)
    return [KillPoint(c.name, when, _shape(c, real)) for c, when in write_path(parse_strace(trace.read_text()), real)]


def _kill_at(scenario: str, point: KillPoint, work: Path) -> tuple[str, list[str]]:
    """Run the save killed at ``point``; return ("old"|"new", violations)."""
    work.mkdir(parents=True)
    directory = work / "store"
    _prepare(scenario, directory)
    before = store_files(directory)
    old = StateStore(directory).read().resources
    trace = work / "trace.txt"
    proc = run_strace(_writer(directory), trace, trace=point.name, seccomp=False,
                      inject=[f"{point.name}:signal=SIGKILL:when={point.when}"])
    v: list[str] = []
    where = f"{point.name}#{point.when} ({point.target})"
    if proc.returncode != -signal.SIGKILL:
        return "?", [f"{where}: not killed (exit {proc.returncode}, stdout {proc.stdout!r})"]
    calls = main_thread(parse_strace(trace.read_text()))
    last = [c for c in calls if c.name == point.name]
    real = os.path.realpath(directory)
    if len(last) != point.when or last[-1].ret != "?" or _shape(last[-1], real) != point.target:
        v.append(f"{where}: killed elsewhere: {last[-1].line if last else 'no call'}")
    if proc.stdout:
        v.append(f"{where}: acknowledged although killed: {proc.stdout!r}")

    try:
        alone = load_state_alone(directory / STATE)
    except Exception as e:  # a torn or invalid state.json
        return "?", v + [f"{where}: state.json by itself does not load: {e}"]
    alone_res = None if alone is None else alone.resources
    if alone_res == {"counter": 3}:
        outcome = "new"
        if before[STATE] is not None and store_files(directory)[BACKUP] != before[STATE]:
            v.append(f"{where}: state.json is new but the backup is not the previous version")
    elif (alone is None and before[STATE] is None) or (
        alone_res == old and (directory / STATE).read_bytes() == before[STATE]
    ):
        outcome = "old"
    else:
        return "?", v + [f"{where}: state.json by itself is neither old nor new: {alone_res}"]
    store = StateStore(directory)
    loaded = store.read()
    if loaded.resources != (old if outcome == "old" else {"counter": 3}) or loaded.source not in ("state", "new"):
        v.append(f"{where}: the store loads {loaded.resources} from {loaded.source}, state.json alone is {outcome}")
    v += [f"{where}: {p}" for p in next_save_problems(directory, 4)]  # the next writer cleans up and saves
    bad = [f for f in store.check() if not f["ok"]]
    if bad:
        v.append(f"{where}: doctor finds problems after the next save: {bad}")
    return outcome, v


@pytest.mark.parametrize("scenario", ["update", "spare reused", "first save", "backup is state's inode"])
def test_kill_at_every_syscall(scenario: str, tmp_path: Path) -> None:
    points = kill_points(scenario, tmp_path / "record")
    names = {p.name for p in points}
    assert {"openat", "write", "fsync", "rename", "close"} <= names, points  # the protocol's calls are covered
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ip: _kill_at(scenario, ip[1], tmp_path / f"k{ip[0]:03d}"), enumerate(points)))
    outcomes = [o for o, _ in results]
    violations = [x for _, vs in results for x in vs]
    if "old" not in outcomes or "new" not in outcomes:
        violations.append(f"expected both old and new outcomes, got {outcomes}")
    _results[scenario] = {"cases": len(points), "violations": len(violations),
                          "old": outcomes.count("old"), "new": outcomes.count("new")}
    write_report_record("kill_every_syscall", cases=sum(r["cases"] for r in _results.values()),
                        violations=sum(r["violations"] for r in _results.values()), scenarios=_results)
    assert not violations, "\n".join(violations)

