"""The write protocol's syscall order, read from a real strace of `agentstate apply`.

One save per scenario is traced with ``strace -f -y`` (fd -> path annotations) and the
trace is checked for the properties the crash-safety argument rests on:

* the temp file is created O_CREAT|O_EXCL, all its writes come before its fsync, the fsync
  before its close, the close before the rename over state.json;
* the store directory is fsynced after the last rename and before the command prints success;
* state.json is never opened for writing (no O_WRONLY/O_RDWR/O_TRUNC/O_CREAT), never written,
  truncated, renamed away or unlinked: the path always names a complete version;
* the backup is made by link(state.json -> state.json.bak.tmp-*) + rename(-> state.json.bak),
  before the new state is renamed in (and never by writing state.json.bak);
* a corrupted state.json is linked aside as state.json.corrupt-*, the backup left alone.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest
from agentstate_integration import (
    AGENTSTATE_CLI,
    BACKUP,
    LINKS,
    RENAMES,
    STATE,
    UNLINKS,
    Syscall,
    parse_strace,
    run_strace,
    store_files,
    write_report_record,
)

from agentstate.state.store import StateStore

TRACE = "openat,write,pwrite64,fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat,ftruncate,close,flock"
WRITES = ("write", "pwrite64", "ftruncate", "fsync", "fdatasync")

_results: dict[str, int] = {}


def _flags(c: Syscall) -> set[str]:
    return set(c.args[2].split("|")) if c.name == "openat" and len(c.args) > 2 else set()


def _first(calls: list[Syscall], pred) -> int | None:
    return next((i for i, c in enumerate(calls) if pred(c)), None)


def check_save_order(calls: list[Syscall], directory: str, scenario: str) -> list[str]:
    """Every property above; returns the violations (empty when the trace is right)."""
    v: list[str] = []
    state = os.path.join(directory, STATE)
    backup = os.path.join(directory, BACKUP)
    lock = state + ".lock"

    # The live path is never opened for writing, written, truncated, renamed away or unlinked.
    for c in calls:
        if c.name == "openat" and c.paths()[0] == state and _flags(c) & {"O_WRONLY", "O_RDWR", "O_TRUNC", "O_CREAT"}:
            v.append(f"state.json opened for writing: {c.line}")
        if c.name in WRITES and c.fd_path(0) == state:
            v.append(f"state.json written/truncated in place: {c.line}")
        if c.name in RENAMES and c.paths()[0] == state:
            v.append(f"state.json renamed away: {c.line}")
        if c.name in UNLINKS and c.paths()[0] == state:
            v.append(f"state.json unlinked: {c.line}")
        if c.name == "openat" and c.paths()[0] == backup and _flags(c) & {"O_WRONLY", "O_RDWR", "O_TRUNC", "O_CREAT"}:
            v.append(f"state.json.bak written in place: {c.line}")
        if c.error is not None and c.name not in ("openat",):
            v.append(f"unexpected failing call: {c.line}")

    # Exactly one rename puts a new version at the state path, from a temp file.
    into_state = [i for i, c in enumerate(calls) if c.name in RENAMES and c.paths()[1] == state]
    if len(into_state) != 1:
        return v + [f"expected one rename over state.json, found {len(into_state)}"]
    r = into_state[0]
    tmp = calls[r].paths()[0] or ""
    if not fnmatch.fnmatch(os.path.basename(tmp), "state.json.tmp-*"):
        v.append(f"state.json replaced from {tmp!r}, not a state.json.tmp-* file")
    spare = state + ".spare"
    created = _first(calls, lambda c: c.name == "openat" and c.paths()[0] == tmp and c.ok)
    reused = _first(calls, lambda c: c.name in RENAMES and c.paths() == (spare, tmp) and c.ok)
    if reused is not None:  # the spare inode, opened (never created, never through a symlink), renamed to tmp
        created = _first(calls, lambda c: c.name == "openat" and c.paths()[0] == spare and c.ok)
        if created is None or not created < reused:
            return v + [f"the spare was renamed to {tmp} but never opened before"]
        if "O_NOFOLLOW" not in _flags(calls[created]) or _flags(calls[created]) & {"O_CREAT", "O_TRUNC"}:
            v.append(f"spare not opened O_NOFOLLOW without O_CREAT/O_TRUNC: {calls[created].line}")
        if scenario != "spare reused":
            v.append("the spare was reused in a scenario without one")
    elif created is None:
        return v + [f"temp file {tmp} never created"]
    elif not {"O_CREAT", "O_EXCL"} <= _flags(calls[created]):
        v.append(f"temp file not created O_CREAT|O_EXCL: {calls[created].line}")
    elif scenario == "spare reused":
        v.append("the spare was not reused")
    on_tmp = [i for i, c in enumerate(calls) if c.fd_path(0) in (tmp, spare) and i > created]
    writes = [i for i in on_tmp if calls[i].name in ("write", "pwrite64")]
    fsyncs = [i for i in on_tmp if calls[i].name in ("fsync", "fdatasync")]
    closes = [i for i in on_tmp if calls[i].name == "close"]
    if not writes:
        v.append("nothing written to the temp file")
    if not fsyncs:
        v.append("temp file never fsynced")
    elif writes and max(writes) > fsyncs[0]:
        v.append("a write to the temp file came after its fsync")
    if not closes:
        v.append("temp file never closed")
    if fsyncs and not fsyncs[0] < r:
        v.append("temp file renamed over state.json before it was fsynced")
    if closes and not closes[0] < r:
        v.append("temp file renamed over state.json while still open")
    written = sum(int(calls[i].ret) for i in writes if calls[i].ok)
    final = Path(state).read_bytes()
    if written != len(final):
        v.append(f"{written} bytes written to the temp file, but state.json has {len(final)}")

    # The directory is fsynced after the last rename and before success is printed.
    last_rename = max(i for i, c in enumerate(calls) if c.name in RENAMES)
    dir_fsyncs = [i for i, c in enumerate(calls) if c.name in ("fsync", "fdatasync") and c.fd_path(0) == directory]
    success = _first(calls, lambda c: c.name == "write" and c.args and c.args[0].startswith("1<"))
    after = [i for i in dir_fsyncs if i > last_rename]
    if not after:
        v.append("the directory is not fsynced after the last rename")
    elif success is None:
        v.append("the command never printed success")
    elif not after[0] < success:
        v.append("success was printed before the directory fsync")

    # The lock is taken (flock LOCK_EX) before the temp file exists, released after the dir fsync.
    # Its holder record is for people and is not fsynced (docs/format.md section 5).
    lock_taken = _first(calls, lambda c: c.name == "flock" and c.fd_path(0) == lock and "LOCK_EX" in c.args[1]
                        and c.ok)
    if lock_taken is None or lock_taken > created:
        v.append("the lock was not taken before the temp file was created")
    if any(c.name in ("fsync", "fdatasync") and c.fd_path(0) == lock for c in calls):
        v.append("the lock record was fsynced (it is not needed for correctness and costs a disk flush)")
    release = _first(calls, lambda c: c.name == "flock" and c.fd_path(0) == lock and "LOCK_UN" in c.args[1])
    if release is None or (after and release < after[0]):
        v.append("the lock was released before the directory fsync")

    # Keeping the previous version.
    links = [i for i, c in enumerate(calls) if c.name in LINKS]
    # The old backup keeps a name (the next spare) before it is replaced, so that nothing is freed.
    spare_links = [i for i in links if calls[i].paths() == (backup, spare)]
    links = [i for i in links if i not in spare_links]
    bak_replaced = _first(calls, lambda c: c.name in RENAMES and c.paths()[1] == backup)
    if len(spare_links) > 1 or (spare_links and (bak_replaced is None or spare_links[0] > bak_replaced)):
        v.append("the old backup was not linked to state.json.spare once, before it was replaced")
    if scenario in ("valid previous", "spare reused") and not spare_links:
        v.append("the old backup was not kept as the next spare")
    if scenario in ("valid previous", "spare reused"):
        bak_renames = [i for i, c in enumerate(calls) if c.name in RENAMES and c.paths()[1] == backup]
        if len(links) != 1 or len(bak_renames) != 1:
            v.append(f"backup: expected one link and one rename to state.json.bak, got {len(links)} and "
                     f"{len(bak_renames)}")
        else:
            src, dst = calls[links[0]].paths()
            if src != state or not fnmatch.fnmatch(os.path.basename(dst or ""), "state.json.bak.tmp-*"):
                v.append(f"backup link is not state.json -> state.json.bak.tmp-*: {calls[links[0]].line}")
            if calls[bak_renames[0]].paths()[0] != dst:
                v.append("the renamed backup is not the linked file")
            if not links[0] < bak_renames[0] < r:
                v.append("backup not made by link then rename before the new state is renamed in")
        if any(c.name == "openat" and fnmatch.fnmatch(os.path.basename(c.paths()[0] or ""), "state.json.bak*")
               for c in calls):
            v.append("the backup was written (copied) although link() works here")
    elif scenario == "corrupt previous":
        if len(links) != 1:
            v.append(f"corrupt previous: expected one link, got {len(links)}")
        else:
            src, dst = calls[links[0]].paths()
            kept = links[0]
            if src == state and dst is not None and not fnmatch.fnmatch(os.path.basename(dst), "state.json.corrupt-*"):
                # linked to a temp name first, then renamed to state.json.corrupt-*
                moved = _first(calls, lambda c: c.name in RENAMES and c.paths()[0] == dst)
                if moved is not None:
                    kept, dst = moved, calls[moved].paths()[1]
            if src != state or not fnmatch.fnmatch(os.path.basename(dst or ""), "state.json.corrupt-*"):
                v.append(f"corrupt state.json not linked aside as state.json.corrupt-*: {calls[links[0]].line}")
            elif not kept < r:
                v.append("corrupt state.json linked aside after it was replaced")
        if any(c.name in RENAMES and c.paths()[1] == backup for c in calls):
            v.append("the backup was replaced while the state file was corrupt")
    elif scenario == "first save":
        if links:
            v.append("first save made a link although there was nothing to keep")
    return v


def _prepare(scenario: str, tmp_path: Path, seeded_store: Path) -> tuple[Path, dict]:
    if scenario == "first save":
        return tmp_path / "fresh", {"state.json": None, "state.json.bak": None}
    if scenario == "spare reused":  # a third save: the backup before last is state.json.spare
        with StateStore(seeded_store).transaction() as st:
            st.resources["counter"] = 5
        assert (seeded_store / "state.json.spare").exists()
    if scenario == "corrupt previous":
        state = seeded_store / STATE
        state.write_bytes(state.read_bytes()[:100])  # torn
    return seeded_store, store_files(seeded_store)


@pytest.mark.parametrize("scenario", ["valid previous", "spare reused", "first save", "corrupt previous"])
def test_save_syscall_order(scenario: str, tmp_path: Path, seeded_store: Path) -> None:
    directory, before = _prepare(scenario, tmp_path, seeded_store)
    trace = tmp_path / "trace.txt"
    proc = run_strace([AGENTSTATE_CLI, "apply", "--set", "counter=3", "--dir", str(directory)], trace, trace=TRACE)
    assert proc.returncode == 0, proc.stderr
    assert StateStore(directory).read().resources == {"counter": 3}
    real = os.path.realpath(directory)
    calls = parse_strace(trace.read_text())
    assert any(c.name == "openat" and c.paths()[0] == os.path.join(real, STATE) for c in calls) or before[STATE] is None
    violations = check_save_order(calls, real, scenario)
    _results[scenario] = len(violations)
    write_report_record("syscall_order", cases=len(_results), violations=sum(_results.values()),
                        scenarios=sorted(_results))
    assert not violations, "\n".join(violations)


def test_checker_catches_a_bad_order(tmp_path: Path, seeded_store: Path) -> None:
    """The checker is not vacuous: a trace where the rename comes before the fsync is flagged."""
    trace = tmp_path / "trace.txt"
    proc = run_strace([AGENTSTATE_CLI, "apply", "--set", "counter=3", "--dir", str(seeded_store)], trace, trace=TRACE)
    assert proc.returncode == 0, proc.stderr
    real = os.path.realpath(seeded_store)
    calls = parse_strace(trace.read_text())
    tmp_fsync = next(i for i, c in enumerate(calls) if c.name == "fsync" and ".tmp-" in (c.fd_path(0) or "")
                     and ".bak.tmp-" not in (c.fd_path(0) or ""))
    dir_fsync = max(i for i, c in enumerate(calls) if c.name == "fsync" and c.fd_path(0) == real)
    reordered = [c for i, c in enumerate(calls) if i not in (tmp_fsync, dir_fsync)]
    violations = check_save_order(reordered, real, "valid previous")
    assert any("never fsynced" in x for x in violations)
    assert any("directory is not fsynced" in x for x in violations)
    truncating = parse_strace(trace.read_text().replace(
        f'"{real}/state.json", O_RDONLY|O_NONBLOCK|O_CLOEXEC', f'"{real}/state.json", O_WRONLY|O_TRUNC|O_CLOEXEC'))
    assert any("opened for writing" in x for x in check_save_order(truncating, real, "valid previous"))
