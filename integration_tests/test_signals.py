"""SIGTERM and SIGINT to a real `agentstate apply` (a cancelled CI job, a Ctrl-C).

The command must finish its write or abandon it before the rename over state.json, remove its
temp files, release the lock (its holder record blanked: the release ran, not only the exit),
print exactly one ``error:`` line saying which, and exit 143 (SIGTERM) or 130 (SIGINT).

* **At every syscall**: one clean `agentstate apply` is traced; then, for each syscall of the
  write path from the lock file's open to the acknowledgement on stdout, a run gets the signal
  delivered by strace on entry to that call (the call itself still runs), alternating SIGTERM
  and SIGINT. A signal on the rename over state.json or the directory fsync is held until the
  fsync is done ("completed"); anywhere before that rename the write is abandoned.
* **While waiting for the lock**: the test holds the flock; apply blocks in flock(2) (seen in
  /proc/PID/wchan); the signal ends the wait.
* **While writing a big state**: an ~11 MB store, the signal sent after a random delay.

After each run the state loads (old if abandoned, new if completed) and the next writer works.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from agentstate_integration import (
    AGENTSTATE_CLI,
    STATE,
    WRITE_PATH_TRACE,
    leftover_temps,
    load_state_alone,
    make_seeded_store,
    next_save_problems,
    parse_strace,
    rounds,
    run_strace,
    store_files,
    write_path,
    write_report_record,
)

from agentstate.state.store import StateStore

SIGS = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("SIGINT", 130)}
_cases: dict[str, int] = {}


def _apply(directory: Path, value: int = 3) -> list[str]:
    return [AGENTSTATE_CLI, "apply", "--set", f"counter={value}", "--dir", str(directory)]


def _lock_is_released(directory: Path) -> bool:
    """The kernel lock is free and the holder record was blanked (the release ran)."""
    path = directory / f"{STATE}.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return not path.read_bytes().strip()


def _judge(where: str, sig: int, proc_rc: int, stderr: str, directory: Path, before: dict, new: dict,
           old: dict | None) -> tuple[str, list[str]]:
    """Check one interrupted run; return ("abandoned"|"completed", violations)."""
    name, code = SIGS[sig]
    v: list[str] = []
    lines = stderr.splitlines()
    if proc_rc != code:
        v.append(f"{where}: exit {proc_rc}, expected {code}; stderr {stderr!r}")
    if len(lines) != 1 or not lines[0].startswith(f"error: interrupted by {name}"):
        return "?", v + [f"{where}: stderr is not one 'error: interrupted by {name}' line: {stderr!r}"]
    line = lines[0]
    outcome = "completed" if "after the write completed" in line else "abandoned"
    if outcome == "abandoned" and "abandoned before it replaced anything" not in line and "outside any write" not in line:
        v.append(f"{where}: the line says neither completed nor abandoned: {line}")
    if "Traceback" in stderr:
        v.append(f"{where}: traceback")
    if leftover_temps(directory):
        v.append(f"{where}: temp files left: {leftover_temps(directory)}")
    if not _lock_is_released(directory):
        v.append(f"{where}: the lock is held or its record was not blanked")
    alone = load_state_alone(directory / STATE)
    got = None if alone is None else alone.resources
    if outcome == "completed" and got != new:
        v.append(f"{where}: says completed, but state.json holds {got}")
    if outcome == "abandoned" and (got != old or store_files(directory)[STATE] != before[STATE]):
        v.append(f"{where}: says abandoned, but state.json changed (holds {got})")
    if outcome == "completed" and "is at serial" not in line:
        v.append(f"{where}: a completed write does not name its serial: {line}")
    v += [f"{where}: {p}" for p in next_save_problems(directory, 99)]  # the next writer works from what is there
    return outcome, v


# -- at every syscall of the write path -----------------------------------------------------------


def _points(work: Path) -> list[tuple[str, int, str]]:
    work.mkdir(parents=True)
    directory = make_seeded_store(work / "store")
    trace = work / "record.txt"
    proc = run_strace(_apply(directory), trace, trace=WRITE_PATH_TRACE)
    assert proc.returncode == 0, proc.stderr
    return [(c.name, when, c.line[:120]) for c, when in write_path(parse_strace(trace.read_text()), directory)]


def _signal_at(point: tuple[str, int, str], sig: int, work: Path) -> tuple[str, list[str]]:
    name, when, line = point
    work.mkdir(parents=True)
    directory = make_seeded_store(work / "store")
    before = store_files(directory)
    old = StateStore(directory).read().resources
    proc = run_strace(_apply(directory), work / "trace.txt", trace=name, seccomp=False,
                      inject=[f"{name}:signal={SIGS[sig][0]}:when={when}"])
    return _judge(f"{SIGS[sig][0]} at {name}#{when} ({line})", sig, proc.returncode, proc.stderr, directory, before,
                  {"counter": 3}, old)


def test_a_signal_at_every_syscall_finishes_or_abandons_the_write(tmp_path: Path) -> None:
    points = _points(tmp_path / "record")
    names = [p[0] for p in points]
    assert {"openat", "write", "fsync", "close"} <= set(names) and any("rename" in n for n in names), names
    jobs = [(p, signal.SIGTERM if i % 2 == 0 else signal.SIGINT) for i, p in enumerate(points)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ij: _signal_at(ij[1][0], ij[1][1], tmp_path / f"s{ij[0]:03d}"),
                                enumerate(jobs)))
    outcomes = [o for o, _ in results]
    violations = [x for _, vs in results for x in vs]
    # The rename over state.json is the dividing line: before it abandoned, from it on completed.
    rename_at = max(i for i, n in enumerate(names) if "rename" in n)
    for i, (outcome, _) in enumerate(results):
        want = "completed" if i >= rename_at else "abandoned"
        if outcome != want:
            violations.append(f"{jobs[i][0][0]}#{jobs[i][0][1]}: {outcome}, expected {want}")
    _cases["every_syscall"] = len(points)
    write_report_record("signals", cases=sum(_cases.values()), violations=len(violations), outcomes={
        "abandoned": outcomes.count("abandoned"), "completed": outcomes.count("completed")})
    assert not violations, "\n".join(violations)


# -- while waiting for the lock -------------------------------------------------------------------


def _wait_until_blocked_in_flock(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "lock" in Path(f"/proc/{pid}/wchan").read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError("apply never blocked in flock")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_waiting_for_the_lock(tmp_path: Path, sig: int) -> None:
    directory = make_seeded_store(tmp_path / "store")
    before = store_files(directory)
    old = StateStore(directory).read().resources
    fd = os.open(directory / f"{STATE}.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held by this test: apply must wait
    try:
        p = subprocess.Popen(_apply(directory), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, AGENTSTATE_LOCK_TIMEOUT="60"))
        _wait_until_blocked_in_flock(p.pid)
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert "(the lock was not acquired)" in err, err
    outcome, v = _judge(f"{SIGS[sig][0]} in flock", sig, p.returncode, err, directory, before, {"counter": 3}, old)
    assert outcome == "abandoned" and not v, v
    assert out == ""


# -- while writing a big state ------------------------------------------------------------------


def test_a_signal_at_a_random_moment_of_a_big_write(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    store = StateStore(seed)
    with store.transaction() as st:
        st.resources.update({f"agent.a{i:06d}": {"prompt": "x" * 200, "n": i} for i in range(50_000)})
        st.resources["counter"] = 2
    size = (seed / STATE).stat().st_size
    assert size > 10_000_000
    # How long one apply takes here, to spread the signals over its whole life.
    work = tmp_path / "timing"
    subprocess.run(["cp", "-a", str(seed), str(work)], check=True)
    t0 = time.monotonic()
    subprocess.run(_apply(work), check=True, capture_output=True)
    span = time.monotonic() - t0
    rng = random.Random(9)
    n = rounds(8, 40)
    violations: list[str] = []
    outcomes: list[str] = []
    new = None
    for k in range(n):
        directory = tmp_path / f"r{k:03d}"
        subprocess.run(["cp", "-a", str(seed), str(directory)], check=True)
        before = store_files(directory)
        old = StateStore(directory).read().resources
        if new is None:
            new = dict(old, counter=3)
        sig = signal.SIGTERM if k % 2 == 0 else signal.SIGINT
        delay = rng.uniform(0.0, 0.8) * span
        p = subprocess.Popen(_apply(directory), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # From the CLI's handlers on (before them, under load start-up alone can outlast a fixed share of
        # the timing run, and Python's defaults apply: death by SIGTERM, a SIGINT traceback).
        if _wait_until_sigterm_is_caught(p):
            time.sleep(delay)
            p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        where = f"{SIGS[sig][0]} after {delay * 1000:.0f} ms"
        if p.returncode == 0:  # finished before the signal arrived
            outcomes.append("finished")
            continue
        outcome, v = _judge(where, sig, p.returncode, err, directory, before, new, old)
        outcomes.append(outcome)
        violations += v
        subprocess.run(["rm", "-rf", str(directory)], check=True)
    _cases["big_write"] = n
    write_report_record("signals", cases=sum(_cases.values()), violations=len(violations))
    assert "abandoned" in outcomes, outcomes  # the signals did land inside the command
    assert not violations, "\n".join(violations)


# -- while a short command starts or exits ----------------------------------------------------------


def _one_interrupted_line(where: str, sig: int, proc: subprocess.CompletedProcess[str]) -> list[str]:
    name, code = SIGS[sig]
    lines = proc.stderr.splitlines()
    if proc.returncode == code and len(lines) == 1 and lines[0].startswith(f"error: interrupted by {name}"):
        return []
    return [f"{where}: {name}: exit {proc.returncode}, expected {code} and one line; stderr {proc.stderr[-800:]!r}"]


def _opens(cmd: list[str], work: Path) -> list[tuple[int, str]]:
    """(strace ``when=`` number, path) of every openat of a clean run of ``cmd``, traced the second time
    (the first may write the .pyc files, which changes what is opened)."""
    for k in range(2):
        proc = run_strace(cmd, work / f"opens{k}.txt", trace="openat")
        assert proc.returncode == 0, proc.stderr
    calls = [c for c in parse_strace((work / "opens1.txt").read_text()) if c.name == "openat"]
    return [(i + 1, c.args[1].strip('"')) for i, c in enumerate(calls)]


def _signal_on_open(cmd: list[str], when: int, sig: int, work: Path) -> subprocess.CompletedProcess[str]:
    return run_strace(cmd, work / "trace.txt", trace="openat", seccomp=False,
                      inject=[f"openat:signal={SIGS[sig][0]}:when={when}"])


def test_a_signal_while_the_command_module_loads_names_its_signal(tmp_path: Path) -> None:
    """The command's module is imported when the command is resolved, outside its run(): typer's main()
    turned a KeyboardInterrupt there into a silent exit 130, so SIGTERM came out as 130 with no message."""
    directory = make_seeded_store(tmp_path / "store")
    cmd = [AGENTSTATE_CLI, "show", "--dir", str(directory)]
    points = [(w, p) for w, p in _opens(cmd, tmp_path) if "agentstate/cli/" in p and "/state." in p.replace(
        "/__pycache__", "")]
    assert points, "show never opened agentstate/cli/state.py"
    violations = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        for when, path in points:
            violations += _one_interrupted_line(f"openat#{when} {path}", sig, _signal_on_open(cmd, when, sig, tmp_path))
    assert not violations, "\n".join(violations)


def test_a_signal_while_orjson_initialises_is_not_a_crash(tmp_path: Path) -> None:
    """orjson's module initialisation imports json (and more) without checking for errors: a KeyboardInterrupt
    raised in there was a SIGSEGV. The CLI loads it with the signals held: one line and 130/143 instead."""
    directory = make_seeded_store(tmp_path / "store")
    cmd = [AGENTSTATE_CLI, "show", "--dir", str(directory)]
    opens = _opens(cmd, tmp_path)
    first = next(i for i, (_, p) in enumerate(opens) if "/orjson/orjson" in p and p.endswith(".so"))
    points = list(opens[first:first + 8])  # the extension itself, then what its initialisation imports
    assert any("/json/" in p for _, p in points), points
    violations = []
    for when, path in points:
        for sig in (signal.SIGTERM, signal.SIGINT):
            violations += _one_interrupted_line(f"openat#{when} {path}", sig, _signal_on_open(cmd, when, sig, tmp_path))
    assert not violations, "\n".join(violations)


def test_a_signal_caught_while_the_cli_exits_is_dropped(tmp_path: Path) -> None:
    """A signal whose handler runs inside the last step's pthread_sigmask (it arrived just before) comes
    after the outcome was reported: it is dropped, not raised there as a traceback over exit 0."""
    directory = make_seeded_store(tmp_path / "store")
    script = (
        "import os, signal, sys\n"
        "from agentstate.cli import main\n"
        "from agentstate.state import signals\n"
        "real, block = signal.pthread_sigmask, signals.block\n"
        "def sending(how, mask):\n"
        "    os.kill(os.getpid(), int(sys.argv[1]))\n"
        "    return real(how, mask)\n"
        "def last_step():\n"
        "    signal.pthread_sigmask = sending\n"
        "    block()\n"
        "signals.block = last_step\n"
        "main(['show', '--dir', sys.argv[2]])\n"
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = subprocess.run([sys.executable, "-c", script, str(int(sig)), str(directory)], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0 and p.stderr == "" and "counter" in p.stdout, (sig, p.returncode, p.stderr)


def _wait_until_sigterm_is_caught(p: subprocess.Popen[str], timeout: float = 30.0) -> bool:
    """Wait until the process catches SIGTERM (SigCgt in /proc: the CLI installed its handlers); False if it
    exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            return False
        caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return True
        time.sleep(0.0005)
    return False


def test_a_signal_at_a_random_moment_of_a_short_command(tmp_path: Path) -> None:
    """show, list, apply and sessions append, each sent SIGTERM or SIGINT at a random moment once its handlers
    are in (before that, Python's defaults apply: death by SIGTERM, a KeyboardInterrupt traceback at start-up):
    exit 0 (it finished first) or one `error: interrupted by ...` line and 130/143; never a crash, never a
    silent exit, never 130 for SIGTERM."""
    directory = make_seeded_store(tmp_path / "store")
    commands = {
        "show": ["show"], "list": ["list"], "apply": ["apply", "--set", "counter=7"],
        "sessions append": ["sessions", "append", "s1", '{"role": "user", "content": "hi"}'],
    }
    spans = {}
    for name, args in commands.items():
        t0 = time.monotonic()
        subprocess.run([AGENTSTATE_CLI, *args, "--dir", str(directory)], check=True, capture_output=True)
        spans[name] = time.monotonic() - t0
    rng = random.Random(int(os.environ.get("AGENTSTATE_SIGNAL_SEED", "11")))
    n = rounds(40, 400)
    violations: list[str] = []
    outcomes = {"finished": 0, "interrupted": 0}
    for k in range(n):
        name = rng.choice(sorted(commands))
        sig = signal.SIGTERM if k % 2 == 0 else signal.SIGINT
        delay = rng.uniform(0, 0.8) * spans[name]
        p = subprocess.Popen([AGENTSTATE_CLI, *commands[name], "--dir", str(directory)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        if _wait_until_sigterm_is_caught(p):
            time.sleep(delay)
            p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        if p.returncode == 0:
            outcomes["finished"] += 1
            continue
        outcomes["interrupted"] += 1
        violations += _one_interrupted_line(f"{name} after {delay * 1000:.0f} ms",
                                            sig, subprocess.CompletedProcess(p.args, p.returncode, out, err))
        if leftover_temps(directory) or not _lock_is_released(directory):
            violations.append(f"{name}: temp files left or the lock not released")
    _cases["short_commands"] = n
    write_report_record("signals", cases=sum(_cases.values()), violations=len(violations))
    assert outcomes["interrupted"], outcomes  # the signals did land inside the commands
    assert not violations, "\n".join(violations)
