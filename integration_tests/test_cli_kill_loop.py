"""Kill loop (CLI): `agentstate apply --set counter=N --dir D` processes SIGKILLed at random moments.

Each round runs ``agentstate apply --set counter=N`` with N = A + 1, where A is the last
acknowledged value (exit status 0) or the value last seen on disk, and kills it with SIGKILL
(kill -9) at a random moment unless it finished first:

* two rounds in three are aimed at the transaction: the parent polls the lock file until the
  holder record names this process (it holds the lock), then kills at once (half of these) or
  after a random 0-40 ms more (so some runs finish first);
* one round in three is killed at a uniformly random time over the whole run (start-up included).

After each round, state.json copied ALONE into an empty directory must load and hold A or A + 1,
and the whole store must load the same value from state.json. An exit other than 0 or SIGKILL is
a violation too. 200 rounds normally (two stores, 100 rounds each, run side by side),
1,000 with AGENTSTATE_SLOW=1. AGENTSTATE_KILL_SEED=N replays a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agentstate_integration import AGENTSTATE_CLI, SLOW, check_after_kill, write_report_record

LANES = 2
AIMED_EXTRA = 0.040


@dataclass
class LaneResult:
    rounds: int = 0
    acked: int = 0  # runs that finished (exit 0) before the kill
    killed: int = 0
    aimed_hits: int = 0  # kills sent while this process held the lock
    next_durable: int = 0  # killed after the commit was durable, before exit 0
    violations: list[str] = field(default_factory=list)


def _holder_pid(lock_path: Path) -> int | None:
    try:
        return int(json.loads(lock_path.read_bytes())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, empty (free) or being rewritten


def run_lane(directory: Path, rounds: int, rng: random.Random) -> LaneResult:
    res = LaneResult()
    lock_path = directory / "state.json.lock"
    durations = [0.7]
    acked = 0
    for r in range(rounds):
        n = acked + 1
        start = time.monotonic()
        proc = subprocess.Popen([AGENTSTATE_CLI, "apply", "--set", f"counter={n}", "--dir", str(directory),
                                 "--lock-timeout", "60s"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        aimed = rng.random() < 2 / 3
        try:
            if aimed:
                deadline = start + 60
                while proc.poll() is None and time.monotonic() < deadline and _holder_pid(lock_path) != proc.pid:
                    time.sleep(0.0005)
                if proc.poll() is None:
                    # Half the aimed kills land at once (the lock is held for a millisecond or two, so a
                    # random wait alone would almost never find it still held); the rest wait up to 40 ms,
                    # so some of those runs finish first.
                    time.sleep(0 if rng.random() < 0.5 else rng.uniform(0, AIMED_EXTRA))
                    res.aimed_hits += _holder_pid(lock_path) == proc.pid
            else:
                limit = start + rng.uniform(0, 1.2 * statistics.median(durations))
                while proc.poll() is None and time.monotonic() < limit:
                    time.sleep(0.001)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # unreaped: the PID is still this process
        finally:
            _, err = proc.communicate()
        res.rounds += 1
        if proc.returncode == 0:
            durations.append(time.monotonic() - start)
            res.acked += 1
            acked = n
        elif proc.returncode == -signal.SIGKILL:
            res.killed += 1
        else:
            res.violations.append(f"round {r}: exit {proc.returncode}: {err.decode(errors='replace').strip()}")
        value, violations = check_after_kill(directory, acked)
        res.violations += [f"round {r}: {v}" for v in violations]
        if value == acked + 1:
            res.next_durable += 1
        acked = value
    return res


def _run(tmp_path: Path, total: int) -> None:
    seed = int(os.environ.get("AGENTSTATE_KILL_SEED") or random.SystemRandom().randrange(2**32))
    per_lane = -(-total // LANES)
    for i in range(LANES):
        (tmp_path / f"store{i}").mkdir()
    with ThreadPoolExecutor(max_workers=LANES) as pool:
        lanes = list(pool.map(lambda i: run_lane(tmp_path / f"store{i}", per_lane, random.Random(seed + i)),
                              range(LANES)))
    violations = [v for x in lanes for v in x.violations]
    write_report_record("cli_kill_loop", cases=sum(x.rounds for x in lanes), violations=len(violations), seed=seed,
                        finished_before_kill=sum(x.acked for x in lanes), killed=sum(x.killed for x in lanes),
                        killed_holding_the_lock=sum(x.aimed_hits for x in lanes),
                        killed_after_durable_before_exit=sum(x.next_durable for x in lanes))
    assert not violations, f"seed {seed}:\n" + "\n".join(violations[:20])
    assert sum(x.rounds for x in lanes) == per_lane * LANES
    # Both kinds of round happened: some runs were killed while holding the lock, some finished.
    assert sum(x.killed for x in lanes) > 0 and sum(x.acked for x in lanes) > 0
    assert sum(x.aimed_hits for x in lanes) > 0


def test_cli_kill_loop(tmp_path: Path) -> None:
    """200 rounds; 1,000 with AGENTSTATE_SLOW=1."""
    _run(tmp_path, 1000 if SLOW else 200)
