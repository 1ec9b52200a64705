"""Issue 15 item 2 on PostgreSQL: a SIGINT/SIGTERM after (or during) the COMMIT is never reported as
"nothing written". strace delivers the signal on entry to the send that carries the COMMIT (the send
still runs; the write path holds the signal until the reply is read): the one line says the write
completed, exit 130/143, and it is stored. And a signal at a random moment of a long `sessions import`:
the line's outcome matches what is stored (all rows, or none)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agentstate_integration import STRACE, rounds

from agentstate import ResponseStore, SessionStore, StateStore

CLI = str(Path(sys.executable).parent / "agentstate")
SIGS = {signal.SIGINT: ("SIGINT", 130), signal.SIGTERM: ("SIGTERM", 143)}


def _commit_send(cmd: list[str], trace: Path, stdin: str | None) -> int:
    """The number (1-based, among sendto calls) of the last send carrying a COMMIT."""
    proc = subprocess.run([STRACE, "-f", "-qq", "-s", "1000000", "-o", str(trace), "-e", "trace=sendto", *cmd],
                          capture_output=True, text=True, timeout=120, input=stdin)
    assert proc.returncode == 0, proc.stderr
    sends = [line for line in trace.read_text().splitlines() if " sendto(" in line]
    commits = [n for n, line in enumerate(sends, 1) if "COMMIT" in line]
    assert commits, sends
    return commits[-1]


CASES = {
    "sessions append": (lambda url, n: [CLI, "sessions", "append", "s", "--content", f"m{n}", "--url", url], None,
                        lambda url, n: any(i.data.get("content") == f"m{n}" for i in SessionStore(url).items("s"))),
    "responses save": (lambda url, n: [CLI, "responses", "save", "-", "--url", url],
                       lambda n: json.dumps({"id": f"r{n}", "output": []}),
                       lambda url, n: _has_response(url, f"r{n}")),
    "apply": (lambda url, n: [CLI, "apply", "--set", f"k{n}={n}", "--url", url], None,
              lambda url, n: StateStore(url).read().resources.get(f"k{n}") == n),
}


def _has_response(url: str, rid: str) -> bool:
    try:
        ResponseStore(url).get(rid)
    except Exception:  # noqa: BLE001 - NotFound
        return False
    return True


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_on_the_send_that_carries_the_commit_reports_the_commit(pg_schema_url, tmp_path, case, sig):
    argv, stdin, stored = CASES[case]
    url = pg_schema_url
    assert subprocess.run([CLI, "sessions", "append", "s", "--content", "first", "--url", url],
                          capture_output=True).returncode == 0  # the schema exists: no migration in the trace
    when = _commit_send(argv(url, 1), tmp_path / "clean.trace", stdin and stdin(1))
    assert stored(url, 1)
    name, code = SIGS[sig]
    proc = subprocess.run([STRACE, "-f", "-qq", "-o", str(tmp_path / "sig.trace"), "-e", "trace=sendto",
                           "-e", f"inject=sendto:signal={name}:when={when}", *argv(url, 2)],
                          capture_output=True, text=True, timeout=120, input=stdin and stdin(2))
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), proc.stderr
    assert proc.returncode == code, proc.stderr
    assert stored(url, 2), proc.stderr
    assert "nothing was written" not in lines[0] and "abandoned" not in lines[0], lines[0]
    assert "completed" in lines[0], lines[0]


def test_a_signal_at_a_random_moment_of_a_long_import_reports_what_is_stored(pg_schema_url, tmp_path):
    url = pg_schema_url
    lines = 20_000
    src = tmp_path / "items.jsonl"
    src.write_text("".join(json.dumps({"role": "user", "content": f"item {n}"}) + "\n" for n in range(lines)))
    clean = subprocess.run([CLI, "sessions", "import", str(src), "--id", "clean", "--url", url],
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    rng = random.Random(15)
    outcomes: dict[str, int] = {}
    for n in range(rounds(6, 30)):
        sig = rng.choice(list(SIGS))
        sid = f"imp{n}"
        p = subprocess.Popen([CLI, "sessions", "import", str(src), "--id", sid, "--url", url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 4.0))
        p.send_signal(sig)
        _, err = p.communicate(timeout=300)
        try:
            count = SessionStore(url).get(sid).item_count
        except Exception:  # noqa: BLE001 - NotFound: nothing stored
            count = 0
        assert count in (0, lines), count
        if p.returncode == 0:
            outcome = "finished before the signal"
            assert count == lines
        elif p.returncode < 0:  # killed by the default handler: the signal came before the CLI's start-up
            outcome = "before start-up"
            assert count == 0 and p.returncode == -sig
        else:
            errs = err.splitlines()
            assert len(errs) == 1 and errs[0].startswith("error: interrupted"), err
            assert p.returncode == SIGS[sig][1], err
            if "completed" in errs[0]:
                outcome = "completed"
                assert count == lines, errs[0]
            elif "unknown" in errs[0]:
                outcome = "unknown"
            else:
                outcome = "abandoned"
                assert count == 0, errs[0]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print("import outcomes:", outcomes)
