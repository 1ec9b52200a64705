"""Fault injection into a real save: `agentstate apply --set counter=3` under `strace -e inject=...`.

First one clean save is traced (``strace -f -y``) to find every call of the write protocol
after the lock file is opened, and which syscall this libc uses for os.rename / os.link.
Then each call is made to fail in its own run, counting with strace's per-task ``when=N``:

* ``write`` ENOSPC, each write to the temp file; ``pwrite64`` ENOSPC on the lock record
* ``fsync`` EIO: the temp-file fsync, the directory fsync (the lock record is not fsynced)
* ``openat`` EACCES and EROFS on the temp file's open
* ``rename`` (or renameat/renameat2) EACCES and EROFS, each rename
* ``link`` EPERM (no hard links: the backup must be copied and the save must succeed) and EIO; for the
  first link (the old backup to ``state.json.spare``, the next save's spare) EPERM means no spare (the
  save succeeds, no spare is left) and EIO fails the save with nothing replaced

Every failing run must exit 1 with exactly one ``error:`` line on stderr naming the injected
errno (nothing else on stderr; never a traceback) and leave no temp file. A failure before the
rename over state.json leaves state.json byte-identical and says the state is unchanged; the
backup is byte-identical too when the failure came before the backup rename, and holds the
previous state.json when it came after. A failed directory fsync (after that rename) is
fail-stop: nothing is rolled back, the line says the outcome is unknown and to run
`agentstate doctor`, and never that the state is unchanged. The trace of each run must show
exactly the intended call(s) marked (INJECTED), so a miscounted ``when=`` fails the test
instead of testing nothing. Afterwards the next writer re-verifies the store and a normal save
must work.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from agentstate_integration import (
    AGENTSTATE_CLI,
    BACKUP,
    LINKS,
    RENAMES,
    STATE,
    Syscall,
    leftover_temps,
    load_state_alone,
    main_thread,
    make_seeded_store,
    next_save_problems,
    occurrence,
    parse_strace,
    run_strace,
    store_files,
    write_report_record,
)

from agentstate.state.store import StateStore

SPARE = STATE + ".spare"
DISCOVER = "openat,write,pwrite64,fsync,fdatasync,ftruncate,rename,renameat,renameat2,link,linkat,unlink,unlinkat,close"


@dataclass(frozen=True)
class Fault:
    label: str
    inject: tuple[str, ...]  # strace inject specs
    targets: tuple[str, ...]  # glob of the injected call's path (basename), one per inject spec
    errno: str
    expect: str  # "unchanged", "backup-replaced", "success", "unknown" (fail-stop after the rename)


def _call_path(c: Syscall) -> str:
    if c.name in ("write", "pwrite64", "fsync", "fdatasync", "ftruncate", "close"):
        return c.fd_path(0) or ""
    return (c.paths() or ("",))[0] or ""


def _cli(directory: Path) -> list[str]:
    return [AGENTSTATE_CLI, "apply", "--set", "counter=3", "--dir", str(directory)]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_seeded_store(tmp_path_factory.mktemp("template") / "store")


@pytest.fixture(scope="module")
def faults(template: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Fault]:
    """Trace one clean save and derive one fault per protocol call."""
    work = tmp_path_factory.mktemp("discover")
    directory = work / "store"
    shutil.copytree(template, directory)
    trace = work / "trace.txt"
    proc = run_strace(_cli(directory), trace, trace=DISCOVER)
    assert proc.returncode == 0, proc.stderr
    calls = main_thread(parse_strace(trace.read_text()))
    real = os.path.realpath(directory)
    lock = os.path.join(real, STATE + ".lock")
    start = next(i for i, c in enumerate(calls) if c.name == "openat" and c.paths()[0] == lock)

    out: list[Fault] = []
    counts: dict[str, int] = {}
    renames: list[tuple[str, int, str]] = []
    fsyncs: list[tuple[int, str]] = []
    links: list[tuple[str, int]] = []
    for i in range(start, len(calls)):
        c = calls[i]
        k = occurrence(calls, i)
        path = _call_path(c)
        base = os.path.basename(path)
        counts[c.name] = counts.get(c.name, 0) + 1
        if c.name == "write" and fnmatch.fnmatch(base, "state.json.tmp-*"):
            out.append(Fault(f"write#{k} temp ENOSPC", (f"write:error=ENOSPC:when={k}",), ("state.json.tmp-*",),
                             "ENOSPC", "unchanged"))
        elif c.name == "pwrite64" and path == lock and k == 1:  # the record; a later one blanks it on release
            out.append(Fault(f"pwrite64#{k} lock record ENOSPC", (f"pwrite64:error=ENOSPC:when={k}",),
                             ("state.json.lock",), "ENOSPC", "unchanged"))
        elif c.name == "fsync":
            what = "lock record" if path == lock else "directory" if path == real else "temp file"
            fsyncs.append((k, what))
            out.append(Fault(f"fsync#{k} {what} EIO", (f"fsync:error=EIO:when={k}",),
                             (base if what != "temp file" else "state.json.tmp-*",), "EIO",
                             "unknown" if what == "directory" else "unchanged"))
        elif c.name == "openat" and fnmatch.fnmatch(base, "state.json.tmp-*"):
            for err in ("EACCES", "EROFS"):
                out.append(Fault(f"openat#{k} temp {err}", (f"openat:error={err}:when={k}",), ("state.json.tmp-*",),
                                 err, "unchanged"))
        elif c.name in RENAMES:
            dst = os.path.basename(c.paths()[1] or "")
            renames.append((c.name, k, dst))
            for err in ("EACCES", "EROFS"):
                out.append(Fault(f"{c.name}#{k} -> {dst} {err}", (f"{c.name}:error={err}:when={k}",),
                                 ("state.json.bak.tmp-*" if dst == BACKUP else "state.json.tmp-*",), err,
                                 "unchanged" if dst == BACKUP else "backup-replaced"))
        elif c.name in LINKS and os.path.basename(c.paths()[1] or "") == SPARE:
            # the old backup kept as the next spare: without links the save goes on (and frees the old
            # backup, as a plain replace does); an I/O error fails it before anything was replaced
            links.append((c.name, k, SPARE))
            out.append(Fault(f"{c.name}#{k} -> spare EPERM (no spare)", (f"{c.name}:error=EPERM:when={k}",),
                             (BACKUP,), "EPERM", "no-spare"))
            out.append(Fault(f"{c.name}#{k} -> spare EIO", (f"{c.name}:error=EIO:when={k}",), (BACKUP,), "EIO",
                             "unchanged"))
        elif c.name in LINKS:
            links.append((c.name, k, os.path.basename(c.paths()[1] or "")))
            out.append(Fault(f"{c.name}#{k} EPERM (copy fallback)", (f"{c.name}:error=EPERM:when={k}",),
                             ("state.json",), "EPERM", "success"))
            out.append(Fault(f"{c.name}#{k} EIO", (f"{c.name}:error=EIO:when={k}",), ("state.json",), "EIO",
                             "unchanged"))
    # The protocol as documented: 2 fsyncs (temp file, directory), 2 renames, 2 links (the old backup
    # to the spare's name, the state to the backup's temp name), no unlink.
    assert [w for _, w in fsyncs] == ["temp file", "directory"], fsyncs
    assert [d for _, _, d in renames] == [BACKUP, STATE], renames
    assert [d for _, _, d in links] == [SPARE, "state.json.bak.tmp-new"], links
    assert counts.get("unlink", 0) + counts.get("unlinkat", 0) == 0
    return out


def _check(f: Fault, directory: Path, trace: Path, proc, before: dict[str, bytes | None]) -> list[str]:
    v: list[str] = []
    calls = parse_strace(trace.read_text())
    injected = [c for c in calls if c.injected]
    if len(injected) != len(f.inject):
        return [f"{len(injected)} call(s) injected, expected {len(f.inject)}: {[c.line for c in injected]}"]
    for c, pattern in zip(injected, f.targets, strict=True):
        if not fnmatch.fnmatch(os.path.basename(_call_path(c)), pattern):
            v.append(f"injected into the wrong call (wanted {pattern}): {c.line}")
    after = store_files(directory)
    temps = leftover_temps(directory)
    if temps:
        v.append(f"temp files left: {temps}")
    lines = proc.stderr.splitlines()
    if "Traceback" in proc.stderr:
        v.append(f"traceback on stderr: {proc.stderr}")
    if f.expect in ("success", "no-spare"):  # the save went on: a copied backup, or no spare
        if proc.returncode != 0:
            v.append(f"exit {proc.returncode}, expected success: {proc.stderr}")
        state = load_state_alone(directory / STATE)
        if state is None or state.resources != {"counter": 3}:
            v.append(f"state.json is not the new version: {state}")
        if after[BACKUP] != before[STATE]:
            v.append("the backup is not the previous state.json")
        if f.expect == "no-spare" and (directory / SPARE).exists():
            v.append("a spare exists although its link failed")
        if f.expect == "success" and not any(
                c.name == "openat" and fnmatch.fnmatch(os.path.basename(_call_path(c)), "state.json.bak.tmp-*")
                for c in calls):
            v.append("the backup was not copied after link() failed")
        return v
    if proc.returncode != 1:
        v.append(f"exit code {proc.returncode}, expected 1")
    errors = [ln for ln in lines if ln.startswith("error:")]
    others = [ln for ln in lines if not ln.startswith("error:")]
    if len(errors) != 1 or not lines or lines[-1] != errors[0] or others:
        v.append(f"stderr is not exactly one error line: {proc.stderr!r}")
    elif f"({f.errno})" not in errors[0]:
        v.append(f"the error line does not name {f.errno}: {errors[0]}")
    if f.expect == "unknown":
        # Fail-stop: no roll-back (the renamed file stays), and the line claims no more than is known.
        state = load_state_alone(directory / STATE)
        if state is None or state.resources != {"counter": 3}:
            v.append(f"state.json should still be the renamed new version (no roll-back): {state}")
        if after[BACKUP] != before[STATE]:
            v.append("state.json.bak is not the previous state.json")
        if errors and ("unchanged" in errors[0] or "outcome is unknown" not in errors[0]
                       or "may or may not survive a crash" not in errors[0] or "agentstate doctor" not in errors[0]):
            v.append(f"the error does not say exactly that the outcome is unknown: {errors[0]}")
        return v
    if after[STATE] != before[STATE]:
        v.append("state.json changed")
    if f.expect == "unchanged" and after[BACKUP] != before[BACKUP]:
        v.append("state.json.bak changed although the failure came before the backup rename")
    if f.expect == "backup-replaced" and after[BACKUP] != before[STATE]:
        v.append("state.json.bak is neither unchanged nor the previous state.json")
    if errors and "unchanged" not in errors[0]:
        v.append(f"the error does not say the stored state is unchanged: {errors[0]}")
    return v


def _run_fault(f: Fault, template: Path, work: Path) -> list[str]:
    directory = work / "store"
    shutil.copytree(template, directory)
    before = store_files(directory)
    trace = work / "trace.txt"
    names = sorted({spec.split(":")[0] for spec in f.inject} | {"openat"})
    proc = run_strace(_cli(directory), trace, trace=",".join(names), inject=f.inject)
    violations = _check(f, directory, trace, proc, before)
    # Whatever happened, the next writer must find a valid store and be able to save.
    if StateStore(directory).read().source != "state":
        violations.append("the store does not load from state.json afterwards")
    return violations + next_save_problems(directory, 4)


def test_injected_faults(faults: list[Fault], template: Path, tmp_path: Path) -> None:
    labels = [f.label for f in faults]
    # each write to the temp file, pwrite64 (lock record), 2 fsyncs, openat x 2 errnos,
    # 2 renames x 2 errnos, 2 links x 2 errnos
    writes = sum(1 for label in labels if label.startswith("write#"))
    assert writes >= 1 and len(faults) == 13 + writes, labels
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ix: _run_fault(ix[1], template, _mkdir(tmp_path / f"f{ix[0]:02d}")),
                                 enumerate(faults)))
    failed = {f.label: v for f, v in zip(faults, results, strict=True) if v}
    write_report_record("strace_faults", cases=len(faults), violations=sum(len(v) for v in failed.values()),
                        faults=labels)
    assert not failed, "\n".join(f"{label}: {'; '.join(v)}" for label, v in failed.items())


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p
