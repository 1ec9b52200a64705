"""Responses under real processes: 10 savers at once, and a SIGKILL loop with a cap.

* 10 processes each save a chain of 50 responses (one save each), released together: all 500 are
  stored and every chain rebuilds whole, in order.
* Kill loop: a saver that acknowledges each save on stdout (every third save is a batch of two) is
  SIGKILLed at a random moment, 50 rounds (500 with AGENTSTATE_SLOW=1), with max_responses=30 so
  that saves also evict. After each kill: every acknowledged response of the round is there, its
  chain has no hole and rebuilds whole (at most the one save in flight committed unacknowledged,
  never half a batch); every earlier chain is either exactly as it was or wholly evicted, never cut;
  the cap holds (or one chain is left alone over it). integrity_check and doctor's chain check pass.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from pathlib import Path

from agentstate_integration import PYTHON, rounds, write_report_record
from procs import ForkServer, integrity, run_burst, seeded_rng

from agentstate import ResponseStore
from agentstate.responses.check import check_responses

SAVER = str(Path(__file__).with_name("response_saver.py"))
CAP = 30


def _stored(directory: Path) -> list[str]:
    path = directory / "agentstate.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM responses ORDER BY seq")]
    except sqlite3.OperationalError as e:  # the schema is not there yet: nothing stored
        assert "no such table" in str(e)
        return []
    finally:
        conn.close()


def test_10_processes_save_chains_at_once(tmp_path: Path) -> None:
    d = tmp_path / "store"
    writers, per = 10, 50
    run_burst([[PYTHON, SAVER, "burst", str(d), f"w{w}", str(per)] for w in range(writers)])
    ids = _stored(d)
    assert len(ids) == len(set(ids)) == writers * per
    store = ResponseStore(str(d))
    for w in range(writers):
        chain = store.chain(f"w{w}-{per - 1}")
        assert [r["id"] for r in chain] == [f"w{w}-{b}" for b in range(per)]
        assert all(r["output"][0]["n"] == b for b, r in enumerate(chain))
    page, seen = store.list(limit=10_000), set()
    assert page.total == writers * per and len({r["id"] for r in page.items} | seen) == writers * per
    store.close()
    assert integrity(d) == ["ok"]
    assert all(f["ok"] for f in check_responses(str(d)))


def _by_round(ids: list[str]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = defaultdict(set)
    for i in ids:
        r, b = i[1:].split("-")
        out[int(r)].add(int(b))
    return out


def test_kill_loop(tmp_path: Path) -> None:
    n_rounds = rounds(50, 500)
    violations, stats = _kill_rounds(tmp_path / "store", n_rounds)
    write_report_record("responses_kill_loop", n_rounds, len(violations), **stats)
    assert not violations, "\n".join(violations[:20])
    # kills landed at varied moments, and the cap was at work
    assert stats["acknowledged_saves"] > n_rounds // 2 and stats["evicted_chains"] > 0, stats


def test_kill_loop_catches_a_non_atomic_batch(tmp_path: Path) -> None:
    """Self-check: a saver that stores a batch as two saves is caught (half a batch after a kill)."""
    violations, _ = _kill_rounds(tmp_path / "store", 150, unsafe=True)
    assert any("unacknowledged" in v for v in violations), violations


def _kill_rounds(d: Path, n_rounds: int, unsafe: bool = False) -> tuple[list[str], dict]:
    rng = seeded_rng()
    server = ForkServer([PYTHON, SAVER, "forkserver", str(d), str(CAP), *(["--unsafe"] if unsafe else [])])
    store = ResponseStore(str(d))
    violations: list[str] = []
    kept: dict[int, set[int]] = {}  # earlier rounds' chains as they were left
    acked_total = unacked_committed = evicted_chains = 0
    start = time.monotonic()
    try:
        for rnd in range(n_rounds):
            acks = server.kill_round(rnd, rng.uniform(0, 0.2))  # a first save in a fresh child takes ~0.1 s
            acked = {int(b) for bs in acks for b in bs}
            acked_total += len(acked)
            now = _by_round(_stored(d))
            mine = now.get(rnd, set())
            if not acked <= mine:
                violations.append(f"round {rnd}: acknowledged {sorted(acked - mine)} missing")
            if mine != set(range(len(mine))):
                violations.append(f"round {rnd}: the chain has a hole: {sorted(mine)}")
            extra = len(mine) - len(acked)
            # the save in flight may have committed: one response, or a batch (b % 3 == 2: b and b+1) whole
            top = max(mine, default=-1)
            if not (extra == 0 or (extra == 1 and (top % 3 == 1 or top == 0)) or (extra == 2 and top % 3 == 0 < top)):
                violations.append(f"round {rnd}: {extra} unacknowledged responses committed: {sorted(mine)}")
            unacked_committed += extra > 0
            if mine:
                chain = [r["id"] for r in store.chain(f"r{rnd}-{max(mine)}")]
                if chain != [f"r{rnd}-{b}" for b in range(len(mine))]:
                    violations.append(f"round {rnd}: chain rebuilt as {chain}")
            for old, had in list(kept.items()):
                left = now.get(old, set())
                if left == set():
                    del kept[old]
                    evicted_chains += 1
                elif left != had:
                    violations.append(f"round {rnd}: chain of round {old} was cut: {sorted(left)} of {sorted(had)}")
            total = sum(len(v) for v in now.values())
            if total > CAP and len(now) > 1:
                violations.append(f"round {rnd}: {total} responses in {len(now)} chains, over the cap {CAP}")
            if mine:
                kept[rnd] = mine
            if rnd % 10 == 0 and integrity(d) != ["ok"]:
                violations.append(f"round {rnd}: integrity_check {integrity(d)}")
            if violations:
                break
    finally:
        server.stop()
        store.close()
    if integrity(d) != ["ok"]:
        violations.append(f"integrity_check at the end: {integrity(d)}")
    bad = [f for f in check_responses(str(d)) if not f["ok"]]
    if bad:
        violations.append(f"doctor's chain check: {bad}")
    return violations, {"acknowledged_saves": acked_total, "committed_unacknowledged": unacked_committed,
                        "evicted_chains": evicted_chains, "seconds": round(time.monotonic() - start, 1)}
