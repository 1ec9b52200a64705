"""Run the reliability tests and regenerate docs/reliability.md.

    .venv/bin/python integration_tests/report.py            # normal variants (a few minutes)
    AGENTSTATE_SLOW=1 .venv/bin/python integration_tests/report.py   # the long variants

Each test file runs in its own pytest process with AGENTSTATE_REPORT_DIR pointing at a temp
directory; every test writes a JSON record there ({"test", "cases", "violations", ...}). The
table in docs/reliability.md is built from those records only: a test that did not run or
wrote no record is shown as such, never with invented numbers. Exit status 1 if any test
failed or found a violation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (record name, test file, what it does)
TESTS = [
    ("kill_loop", "integration_tests/test_kill_loop.py",
     "Writer process committing in a loop, SIGKILLed at random moments; state.json alone and the "
     "store must hold the last acknowledged version or the next (cases = kills)"),
    ("cli_kill_loop", "integration_tests/test_cli_kill_loop.py",
     "`agentstate apply --set counter=N` processes killed with kill -9 at random moments, two "
     "in three while holding the lock; same check (cases = rounds)"),
    ("strace_faults", "integration_tests/test_strace_faults.py",
     "`strace -e inject=` errors into each write, fsync, open, rename and link of a real save "
     "(ENOSPC, EIO, EACCES, EROFS, EPERM): one `error:` line, exit 1, no temp files; before the "
     "rename files byte-identical and \"unchanged\", a failed directory fsync fail-stop (\"outcome "
     "unknown\", no roll-back); link EPERM falls back to a copy (the spare's link: no spare) "
     "(cases = injected faults)"),
    ("syscall_order", "integration_tests/test_syscall_order.py",
     "strace -y trace of a save: temp fsynced before rename, directory fsynced after the last "
     "rename and before success, state.json never opened for writing or renamed away, backup by "
     "link+rename, the old backup kept as the spare and the spare reused only through the temp name "
     "(cases = traced scenarios)"),
    ("kill_every_syscall", "integration_tests/test_kill_every_syscall.py",
     "A save re-run once per syscall with `inject=NAME:signal=SIGKILL:when=K`: old or new "
     "version after every kill, next writer cleans up (cases = kill points)"),
    ("signals", "integration_tests/test_signals.py",
     "SIGTERM/SIGINT to `agentstate apply` at every syscall (strace `signal=`), in a lock wait, and "
     "at random moments of an 11 MB write: exit 143/130, one line saying completed or abandoned, "
     "state old or new accordingly, no temp files, lock released (cases = signals)"),
    ("powerloss", "tests/test_powerloss.py",
     "Simulated power loss (CrashFS) after every file operation of a save: every crash state "
     "loads the old or the new version"),
    ("fuzz", "tests/test_fuzz.py",
     "Corrupted, torn and random state files: the loader never returns wrong data"),
]


def run_tests(report_dir: Path) -> dict[str, dict]:
    env = dict(os.environ, AGENTSTATE_REPORT_DIR=str(report_dir))
    runs: dict[str, dict] = {}
    for name, path, _ in TESTS:
        if not (ROOT / path).exists():
            runs[name] = {"result": "not run (file missing)", "seconds": None}
            continue
        print(f"running {path} ...", flush=True)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - start
        tail = proc.stdout.strip().splitlines()[-1:] or [""]
        result = "passed" if proc.returncode == 0 else f"FAILED (pytest exit {proc.returncode})"
        print(f"  {result} in {seconds:.0f}s: {tail[0]}", flush=True)
        runs[name] = {"result": result, "seconds": seconds, "summary": tail[0]}
    return runs


def _extras(record: dict) -> str:
    parts = []
    for key, value in sorted(record.items()):
        if key in ("test", "cases", "violations", "slow", "violation_list"):
            continue
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            text = ", ".join(value)
        elif isinstance(value, (dict, list)):
            text = json.dumps(value, sort_keys=True)
        else:
            text = str(value)
        if len(text) > 600:
            text = text[:597] + "..."
        parts.append(f"{key}: {text}")
    return "; ".join(parts).replace("|", "\\|")


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
        return out[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "not found"


def render(report_dir: Path, runs: dict[str, dict]) -> str:
    slow = os.environ.get("AGENTSTATE_SLOW") == "1"
    lines = [
        "# Reliability tests",
        "",
        "Generated by `.venv/bin/python integration_tests/report.py` (add `AGENTSTATE_SLOW=1` for the long",
        "variants: 1,000-round kill loops). Do not edit by hand: rerun the command. Every number below",
        "comes from a JSON record the test wrote while running (`AGENTSTATE_REPORT_DIR`).",
        "",
        f"- Generated: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Mode: {'slow (AGENTSTATE_SLOW=1)' if slow else 'normal'}",
        f"- Machine: {platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; {_tool_version(['strace', '-V'])}",
        "",
        "| Test | File | What it checks | Cases | Violations | Result |",
        "|---|---|---|---:|---:|---|",
    ]
    details = []
    for name, path, what in TESTS:
        run = runs.get(name, {"result": "not run"})
        record_path = report_dir / f"{name}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        if record is None:
            cases = violations = "not run" if run["result"].startswith("not run") else "no record"
        else:
            cases, violations = f"{record['cases']:,}", f"{record['violations']:,}"
            extra = _extras(record)
            if extra:
                details.append(f"- **{name}**: {extra}")
        result = run["result"]
        if run.get("seconds") is not None:
            result += f" ({run['seconds']:.0f} s)"
        lines.append(f"| {name} | `{path}` | {what} | {cases} | {violations} | {result} |")
    lines += ["", "## Details from the records", ""] + (details or ["(none)"])
    lines += [
        "",
        "## How the tests work",
        "",
        "- **Kill loops.** A value is *acknowledged* only after `transaction()` returned (library: the",
        "  writer prints it; CLI: exit status 0). After each SIGKILL, `state.json` is copied alone into an",
        "  empty directory (no backup to fall back on) and loaded; it must hold the last acknowledged",
        "  value A or A + 1 (a commit can be durable before it is acknowledged). The value found becomes",
        "  the new A, since later writers build on it. The whole store must load the same value from",
        "  `state.json`. The library loop forks each writer from a fork server (a round costs a fork,",
        "  not an interpreter start); the CLI loop starts `agentstate` each round.",
        "- **strace fault injection.** One clean save is traced first to find the calls to fail",
        "  (strace counts `when=N` per syscall and per task; the main thread does all store I/O). Each",
        "  run's own trace must show exactly the intended call marked `(INJECTED)`.",
        "- **Syscall order.** Parsed from `strace -f -y` output (fd paths from the `-y` annotations) for",
        "  an update, a first save, and a save over a corrupted `state.json`.",
        "- **Kill at every syscall.** Kill points are the writer main thread's openat, flock, write,",
        "  pwrite64, ftruncate, fsync, fdatasync, close, rename*, link*, unlink* calls from the `openat` of",
        "  `state.json.lock` to the acknowledgement on stdout. strace delivers SIGKILL on entry to the",
        "  call, so the call itself never runs: every prefix of the protocol is tested.",
        "- **Power loss and fuzzing** are in-process tests over a simulated disk (`tests/crashfs.py`)",
        "  and over generated file contents; see those files' docstrings.",
        "",
        "## Bugs these tests found (fixed in `agentstate/fileio.py`)",
        "",
        "- After a commit failed at the rename over `state.json`, `state.json` and `state.json.bak` were",
        "  two names of one inode. The next save's `rename(state.json.bak.tmp-*, state.json.bak)` then",
        "  succeeded without doing anything (POSIX: renaming between two links of one file is a no-op)",
        "  and left `state.json.bak.tmp-*` behind. Found by the strace fault tests' follow-up save; the",
        "  temp name is now removed.",
        "- A failed directory fsync used to be rolled back (the previous version put back through",
        "  `state.json.restore-*`), and the roll-back reported \"unchanged\" even when its own fsync",
        "  failed. It is now fail-stop: nothing is rolled back and the error says the outcome is unknown",
        "  (a later fsync proves nothing about the earlier writes); the directory-fsync fault checks it.",
        "- A SIGINT/SIGTERM that struck right after the temp file's `openat`, its `close`, or the backup's",
        "  `linkat` had returned (before Python bound the result) left `state.json.tmp-*` or",
        "  `state.json.bak.tmp-*` behind. Found by the signal-at-every-syscall test; the commit now",
        "  removes its temp names on any exception before the rename.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"))
    parser.add_argument("--records", help="render from an existing records directory instead of running the tests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentstate-report-") as tmp:
        report_dir = Path(args.records or tmp)
        if args.records:
            runs = {name: {"result": "recorded"} for name, _, _ in TESTS}
        else:
            runs = run_tests(report_dir)
        text = render(report_dir, runs)
        found = sum(json.loads(p.read_text()).get("violations", 0) for p in report_dir.glob("*.json"))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    failed = [n for n, r in runs.items() if r["result"].startswith("FAILED")]
    return 1 if failed or found else 0


if __name__ == "__main__":
    sys.exit(main())
