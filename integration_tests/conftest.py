"""Shared helpers for the integration tests: real processes, real SIGKILLs, real strace.

Test modules import these as ``from agentstate_integration import ...``: this conftest
registers itself under that name, because with several directories holding a
``conftest.py`` (and no ``__init__.py``) ``import conftest`` may find another one.

Names meant for other test files:

* ``PYTHON``, ``AGENTSTATE_CLI``, ``WRITER`` (integration_tests/writer.py), ``STRACE``
* ``SLOW`` / ``rounds(normal, slow)``: AGENTSTATE_SLOW=1 selects the long variants
* ``write_report_record(name, cases, violations, **extra)``: JSON record for docs/reliability.md
* ``leftover_temps(dir)``, ``load_state_alone(state_path)``, ``store_files(dir)``, ``make_seeded_store(dir)``,
  ``check_after_kill(dir, acked)``, ``next_save_problems(dir, value)``
* ``parse_strace(text)`` -> list of ``Syscall``; ``run_strace(cmd, ...)``; ``WRITE_PATH_TRACE`` and
  ``write_path(calls, dir)``: the syscalls of a state write, from the lock file's open to the acknowledgement
* fixture ``seeded_store``: a store directory whose state.json (counter=2, serial 2) and
  state.json.bak (counter=1, serial 1) are both valid and different
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentstate.state.store import State, StateStore

PYTHON = sys.executable
AGENTSTATE_CLI = str(Path(sys.executable).parent / "agentstate")
WRITER = str(Path(__file__).with_name("writer.py"))
STRACE = shutil.which("strace") or "/usr/bin/strace"
SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"

sys.modules.setdefault("agentstate_integration", sys.modules[__name__])

STATE = "state.json"
BACKUP = "state.json.bak"
# What a writer may leave behind when killed (a later writer removes them under the lock).
TEMP_PATTERNS = ("*.tmp-*", "*.bak.tmp-*", "*.restore-*")


def rounds(normal: int, slow: int) -> int:
    return slow if SLOW else normal


def write_report_record(name: str, cases: int, violations: int, **extra: object) -> None:
    """Write {"test", "cases", "violations", ...} to $AGENTSTATE_REPORT_DIR/<name>.json, if that is set."""
    directory = os.environ.get("AGENTSTATE_REPORT_DIR")
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    record = {"test": name, "cases": cases, "violations": violations, "slow": SLOW, **extra}
    with open(os.path.join(directory, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def leftover_temps(directory: str | os.PathLike[str]) -> list[str]:
    d = Path(directory)
    return sorted({p.name for pattern in TEMP_PATTERNS for p in d.glob(pattern)})


def store_files(directory: str | os.PathLike[str]) -> dict[str, bytes | None]:
    """The bytes of state.json and state.json.bak (None when missing)."""
    out: dict[str, bytes | None] = {}
    for name in (STATE, BACKUP):
        p = Path(directory) / name
        out[name] = p.read_bytes() if p.exists() else None
    return out


def load_state_alone(state_path: str | os.PathLike[str]) -> State | None:
    """Load the state path BY ITSELF: copy only that file into a fresh directory (no backup) and read it.

    Returns None when the file does not exist; raises (StateCorrupted) when it is not a valid version.
    """
    src = Path(state_path)
    if not src.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="agentstate-alone-") as fresh:
        shutil.copyfile(src, Path(fresh) / STATE)
        state = StateStore(fresh).read()
        if state.source != "state":  # cannot happen without a backup, but say so if it does
            raise AssertionError(f"{src} alone loaded from {state.source!r}")
        return state


def make_seeded_store(directory: str | os.PathLike[str]) -> Path:
    """Save counter=1 then counter=2: state.json is serial 2, state.json.bak serial 1, both valid."""
    store = StateStore(directory)
    for value in (1, 2):
        with store.transaction() as state:
            state.resources["counter"] = value
    files = store_files(directory)
    assert files[STATE] is not None and files[BACKUP] is not None and files[STATE] != files[BACKUP]
    return Path(directory)


def check_after_kill(directory: str | os.PathLike[str], acked: int, key: str = "counter") -> tuple[int, list[str]]:
    """After a writer was killed: state.json by itself, and the whole store, must hold ``acked`` or ``acked + 1``.

    ``acked`` is the last acknowledged value (or the last value verified on disk, which later
    writers build on). Returns the value found on disk (0 for no state yet) and the violations.
    """
    directory = Path(directory)
    try:
        alone = load_state_alone(directory / STATE)
    except Exception as e:  # a torn, partial or invalid state.json
        return acked, [f"state.json by itself does not load ({type(e).__name__}: {e}); last ack {acked}"]
    value = 0 if alone is None else alone.resources.get(key)
    violations = []
    if not isinstance(value, int) or value not in (acked, acked + 1):
        violations.append(f"state.json by itself holds {key}={value!r}, last ack {acked}")
        value = acked if not isinstance(value, int) else value
    try:
        full = StateStore(directory).read()
    except Exception as e:
        return value, violations + [f"the store does not load ({type(e).__name__}: {e})"]
    if full.resources.get(key, 0) != value or full.source not in ("state", "new"):
        violations.append(f"the store loads {key}={full.resources.get(key)!r} from {full.source}, "
                          f"state.json alone holds {value!r}")
    return value, violations


def next_save_problems(directory: str | os.PathLike[str], value: int, lock_timeout: float = 10) -> list[str]:
    """The next writer after a disturbed one: a transaction setting counter=``value`` must land in state.json
    and leave no temp file behind. Returns what went wrong (nothing: [])."""
    directory = Path(directory)
    with StateStore(directory, lock_timeout=lock_timeout).transaction() as state:
        state.resources["counter"] = value
    problems = []
    if leftover_temps(directory):
        problems.append(f"temp files left after the next save: {leftover_temps(directory)}")
    alone = load_state_alone(directory / STATE)
    if alone is None or alone.resources.get("counter") != value:
        problems.append(f"the next save did not land: state.json holds {alone and alone.resources}")
    return problems


@pytest.fixture
def seeded_store(tmp_path: Path) -> Path:
    """A store whose state.json holds counter=2 (serial 2) and whose backup holds counter=1 (serial 1)."""
    return make_seeded_store(tmp_path / "store")


# --- strace -----------------------------------------------------------------------------------


@dataclass
class Syscall:
    """One line of ``strace -f -y`` output."""

    tid: int
    name: str
    args: list[str]
    ret: str  # "0", "3", "-1", "?"
    ret_path: str | None  # the -y annotation of a returned fd
    error: str | None  # "ENOSPC" ...
    injected: bool
    line: str = field(repr=False)

    def fd_path(self, i: int) -> str | None:
        """The path of the fd in argument ``i`` (from the -y annotation ``3</dir/file>``)."""
        if i >= len(self.args):
            return None
        m = re.fullmatch(r"(?:-?\d+|AT_FDCWD)<(.*)>", self.args[i].strip())
        return m.group(1) if m else None

    def str_arg(self, i: int) -> str | None:
        """Argument ``i`` as a string when it is a quoted one (paths of openat, rename, link...)."""
        if i >= len(self.args):
            return None
        m = re.fullmatch(r'"((?:[^"\\]|\\.)*)"(?:\.\.\.)?', self.args[i].strip())
        if not m:
            return None
        return m.group(1).encode("latin-1", "backslashreplace").decode("unicode_escape")

    @property
    def ok(self) -> bool:
        return self.error is None and self.ret not in ("?", "-1")

    # openat(dirfd, path, flags[, mode]); rename(old, new); renameat(dfd, old, dfd, new[, flags]);
    # link(old, new); linkat(dfd, old, dfd, new, flags); unlink(path); unlinkat(dfd, path, flags)
    def paths(self) -> tuple[str | None, ...]:
        """The path arguments (joined to a -y annotated dirfd when relative)."""
        positions = {
            "openat": (1,), "open": (0,), "rename": (0, 1), "renameat": (1, 3), "renameat2": (1, 3),
            "link": (0, 1), "linkat": (1, 3), "unlink": (0,), "unlinkat": (1,),
        }.get(self.name, ())
        out = []
        for i in positions:
            p = self.str_arg(i)
            if p is not None and not p.startswith("/") and self.name.endswith("at") and i > 0:
                base = self.fd_path(i - 1)
                p = os.path.join(base, p) if base else p
            out.append(p)
        return tuple(out)


_LINE = re.compile(r"^(?P<tid>\d+)\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>.*)$")
_RET = re.compile(r"^(?P<val>-?\d+|\?|0x[0-9a-fA-F]+)(?:<(?P<path>.*?)>)?(?:\s+(?P<err>E[A-Z0-9]+))?")


def _split_args(text: str) -> list[str]:
    """Split strace's argument text at top-level commas (quotes, brackets and <path> annotations respected)."""
    out, depth, cur, i, n = [], 0, [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            cur.append(text[i : j + 1])
            i = j + 1
            continue
        if c == "<" and cur and (cur[-1][-1:].isalnum()):
            j = text.index(">", i)
            cur.append(text[i : j + 1])
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur or out:
        out.append("".join(cur).strip())
    return out


def parse_strace(text: str) -> list[Syscall]:
    """Parse ``strace -f -y -o FILE`` output; joins ``<unfinished ...>`` / ``<... resumed>`` pairs."""
    calls: list[Syscall] = []
    pending: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        m = re.match(r"^(\d+)\s+(.*)$", line)
        if not m:
            continue
        tid, rest = m.groups()
        if rest.endswith("<unfinished ...>"):
            pending[tid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        r = re.match(r"^<\.\.\. (\w+) resumed>\s?(.*)$", rest)
        if r:
            head = pending.pop(tid, f"{r.group(1)}(")
            rest = head + r.group(2)
        mm = _LINE.match(f"{tid} {rest}")
        if not mm:
            continue  # signals, exits, "+++ killed by ..."
        rm = _RET.match(mm.group("ret"))
        calls.append(
            Syscall(
                tid=int(tid),
                name=mm.group("name"),
                args=_split_args(mm.group("args")),
                ret=rm.group("val") if rm else mm.group("ret"),
                ret_path=rm.group("path") if rm else None,
                error=rm.group("err") if rm else None,
                injected="(INJECTED)" in mm.group("ret"),
                line=line,
            )
        )
    return calls


def main_thread(calls: list[Syscall]) -> list[Syscall]:
    """The calls of the first traced task (the process strace started): injection counts are per task."""
    if not calls:
        return []
    tid = calls[0].tid
    return [c for c in calls if c.tid == tid]


# The syscalls a libc may use for each file operation (this one uses rename and linkat).
RENAMES = ("rename", "renameat", "renameat2")
LINKS = ("link", "linkat")
UNLINKS = ("unlink", "unlinkat")


def occurrence(calls: list[Syscall], index: int) -> int:
    """1-based count of ``calls[index].name`` among ``calls[: index + 1]`` (strace's ``when=`` number)."""
    name = calls[index].name
    return sum(1 for c in calls[: index + 1] if c.name == name)


# What a state write does to files (traced to find the points where a kill, signal or fault goes).
WRITE_PATH_TRACE = ("openat,flock,write,pwrite64,ftruncate,fsync,fdatasync,close,rename,renameat,renameat2,link,linkat,"
                    "unlink,unlinkat")


def write_path(calls: list[Syscall], directory: str | os.PathLike[str]) -> list[tuple[Syscall, int]]:
    """The main thread's calls of one state write, each with its ``when=`` number: from the open of the
    store's lock file to the first write to stdout (the acknowledgement), both included."""
    calls = main_thread(calls)
    lock = f"{os.path.realpath(directory)}/{STATE}.lock"
    start = next(i for i, c in enumerate(calls) if c.name == "openat" and c.paths()[0] == lock)
    end = next(i for i, c in enumerate(calls) if c.name == "write" and c.args[0].startswith("1<"))
    return [(calls[i], occurrence(calls, i)) for i in range(start, end + 1)]


def run_strace(
    cmd: list[str],
    trace_file: Path,
    *,
    trace: str,
    inject: list[str] | tuple[str, ...] = (),
    seccomp: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` under ``strace -f -qq -y -e trace=TRACE [-e inject=...]``, the trace going to ``trace_file``.

    ``--seccomp-bpf`` stops the tracee only at traced syscalls (much faster), but strace then
    cannot deliver an injected signal, so kill injection passes ``seccomp=False``.
    """
    args = [STRACE, "-f", "-qq", "-y", "-o", str(trace_file), "-e", f"trace={trace}"]
    if seccomp:
        args.append("--seccomp-bpf")
    for spec in inject:
        args += ["-e", f"inject={spec}"]
    return subprocess.run(
        args + cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
