"""Kill loop (library): a writer process commits in a loop and is SIGKILLed at random moments.

A writer (``writer.py``) commits forever: each transaction sets ``counter`` to the stored value
+ 1, and the value is printed only after the transaction returned (an acknowledgement). Each
round starts a writer (it continues from what is stored; a fork server forks it, so a round
costs a fork, not an interpreter start), waits for its "ready", sleeps a random 0-80 ms (a commit takes a few ms, most of it in fsync, so most kills
land inside a commit) and sends SIGKILL. Then, with A = the last acknowledged value (or the value last seen on
disk, which the writer built on):

* state.json copied ALONE into an empty directory (no backup) must load, holding A or A + 1;
* the whole store must load the same value from state.json (never from the backup);
* the acknowledgements must be consecutive, continuing from what was stored.

200 rounds normally (two stores killed in parallel, 100 rounds each), 1,000 with
AGENTSTATE_SLOW=1. AGENTSTATE_KILL_SEED=N replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agentstate_integration import PYTHON, SLOW, WRITER, check_after_kill, leftover_temps, write_report_record

MAX_DELAY = 0.080
LANES = 2


@dataclass
class LaneResult:
    rounds: int = 0
    acks: int = 0
    next_durable: int = 0  # kills after the commit was durable but before it was acknowledged
    temps_left: int = 0  # kills in the middle of a commit (a temp file was left behind)
    value: int = 0
    violations: list[str] = field(default_factory=list)


def _line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"writer server exited (status {proc.poll()})")
    return line.decode().strip()


def run_lane(directory: Path, rounds: int, rng: random.Random, *, in_place: bool = False) -> LaneResult:
    res = LaneResult()
    acked = 0  # last acknowledged value, or the value last verified on disk
    flags = ["--in-place"] if in_place else []
    server = subprocess.Popen([PYTHON, WRITER, "forkserver", str(directory), *flags], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert _line(server) == "server-ready"
        for r in range(rounds):
            server.stdin.write(b"go\n")
            server.stdin.flush()
            ready = _line(server).split()
            if ready[0] != "ready":
                res.violations.append(f"round {r}: writer did not start: {ready}")
                break
            time.sleep(rng.uniform(0, MAX_DELAY))
            os.kill(int(ready[1]), signal.SIGKILL)  # unreaped until the server's waitpid: the PID is ours
            acks = []
            while not (line := _line(server)).startswith("dead"):
                if line.isdigit():
                    acks.append(int(line))
                else:
                    res.violations.append(f"round {r}: writer said {line!r}")
            status = int(line.split()[1])
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                res.violations.append(f"round {r}: the writer ended by status {status}, not by SIGKILL")
            expected = list(range(acked + 1, acked + 1 + len(acks)))
            if acks != expected:
                res.violations.append(f"round {r}: acknowledgements {acks[:5]}... do not continue from {acked}")
            if acks:
                acked = acks[-1]
            res.rounds += 1
            res.acks += len(acks)
            if leftover_temps(directory):
                res.temps_left += 1
            value, violations = check_after_kill(directory, acked)
            res.violations += [f"round {r}: {v}" for v in violations]
            if value == acked + 1:
                res.next_durable += 1
            acked = value
            res.value = value
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()
    return res


def _run(tmp_path: Path, total: int, name: str) -> None:
    seed = int(os.environ.get("AGENTSTATE_KILL_SEED") or random.SystemRandom().randrange(2**32))
    per_lane = -(-total // LANES)
    with ThreadPoolExecutor(max_workers=LANES) as pool:
        lanes = list(pool.map(lambda i: run_lane(tmp_path / f"store{i}", per_lane, random.Random(seed + i)),
                              range(LANES)))
    rounds = sum(x.rounds for x in lanes)
    violations = [v for x in lanes for v in x.violations]
    write_report_record(name, cases=rounds, violations=len(violations), seed=seed,
                        acknowledged_commits=sum(x.acks for x in lanes),
                        killed_after_durable_before_ack=sum(x.next_durable for x in lanes),
                        killed_mid_commit_temp_left=sum(x.temps_left for x in lanes))
    assert not violations, f"seed {seed}:\n" + "\n".join(violations[:20])
    assert rounds == per_lane * LANES
    # The loop really committed, and some kills really landed inside a commit.
    assert all(x.acks > 0 for x in lanes), [x.acks for x in lanes]
    assert sum(x.temps_left + x.next_durable for x in lanes) > 0


def test_kill_loop(tmp_path: Path) -> None:
    """200 rounds; 1,000 with AGENTSTATE_SLOW=1."""
    _run(tmp_path, 1000 if SLOW else 200, "kill_loop")


def test_kill_loop_catches_an_unsafe_writer(tmp_path: Path) -> None:
    """Self-check: the same loop, with a writer that rewrites state.json in place, finds torn files."""
    unsafe = run_lane(tmp_path / "unsafe", 40, random.Random(), in_place=True)
    assert any("does not load" in v for v in unsafe.violations), unsafe.violations
