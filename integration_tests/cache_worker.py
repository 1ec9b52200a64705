"""Workers of the hot tier's kill loop (integration_tests/test_cache_kill_loop.py).

    python cache_worker.py writers TARGET CACHE_URL SLOT
        a fork server (worker.serve): for each "go R" it forks a writer that prints "ready R <pid>" and then
        appends batches through the cache, forever, each to one of 8 sessions: batch b holds 1 + b % 3 items
        {"type": "note", "slot", "round": R, "batch": b, "i"}; after each append returned it prints
        "ack R SESSION LAST_SEQ LAST_ID". It is SIGKILLed at a random moment.
    python cache_worker.py reader TARGET CACHE_URL
        for each line "check SESSION SEQ ID" on stdin: context(SESSION, 20) through the cache, which must hold
        that acknowledged item (or end after it), in seq order with no gap, each round's batches in order.
        Prints "bad <why>" for a violation, "error <why>" if a call failed, and "done <checks>" at EOF.
        With AGENTSTATE_TEST_SLOW_PROMOTE=MS, every 4th promotion waits MS ms between its durable read and
        its install, as one on a slow link would: the window a write must be fenced against, made wide.
        (Not every one: a reader that waits on each would fall behind the acknowledgements, and a check of an
        old one is answered even by a stale entry.)
"""

from __future__ import annotations

import os
import random
import sys
import time

from worker import main, say, serve

SESSIONS = 8
TENANT = "fleet"


def _unfenced() -> None:
    """The kill loop's self-check (AGENTSTATE_TEST_UNFENCED=1): writers that skip the fence, as a naive cache
    would (it only drops the entry after the commit), must be caught serving reads without their appends."""
    from contextlib import contextmanager

    from agentstate.cache import HotTier

    @contextmanager
    def fence(self, sid):  # type: ignore[no-untyped-def]
        yield
        self.redis.delete(self._keys(sid)[2])  # after the commit, but a promotion may have read before it

    HotTier.fence = fence  # type: ignore[method-assign]


def _writer(target: str, cache: str, slot: str, rnd: int) -> None:
    from agentstate import SessionStore

    if os.environ.get("AGENTSTATE_TEST_UNFENCED") == "1":
        _unfenced()
    store = SessionStore(target, tenant=TENANT, cache=cache, hot_items=20)
    rng = random.Random(rnd * 31 + int(slot))
    store.list(limit=1)  # the database connection, before the clock starts
    try:
        store.hot.redis.ping()  # and Redis's
    except Exception:  # noqa: BLE001 - Redis may be stopped on purpose
        pass
    say(f"ready {rnd} {os.getpid()}")
    b = 0
    while True:
        sid = f"s{rng.randrange(SESSIONS)}"
        k = 1 + b % 3
        items = [{"type": "note", "slot": slot, "round": rnd, "batch": b, "i": i} for i in range(k)]
        out = store.append(sid, items)
        say(f"ack {rnd} {sid} {out[-1].seq} {out[-1].id}")
        b += 1


def writers(target: str, cache: str, slot: str) -> None:
    import orjson  # noqa: F401 - loaded once here, so a child does not pay for it
    import redis  # noqa: F401

    from agentstate import cache as _cache  # noqa: F401
    from agentstate import sql  # noqa: F401
    from agentstate.sessions import store as sessions  # noqa: F401

    serve(lambda rnd: _writer(target, cache, slot, rnd))


def problems(items: list, seq: int, iid: str) -> list[str]:
    seqs = [i.seq for i in items]
    out = []
    if not seqs or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        out.append(f"seqs not consecutive: {seqs}")
    if not seqs or seqs[-1] < seq:
        out.append(f"missing acknowledged seq {seq}: context ends at {seqs[-1] if seqs else None}")
    by_seq = {i.seq: i for i in items}
    if seq in by_seq and by_seq[seq].id != iid:
        out.append(f"seq {seq} is {by_seq[seq].id}, acknowledged as {iid}")
    last: dict[tuple, tuple] = {}
    for it in items:
        key = (it.data.get("slot"), it.data.get("round"))
        pos = (it.data.get("batch"), it.data.get("i"))
        if key in last and last[key] >= pos:
            out.append(f"out of order: {key} {last[key]} then {pos}")
        last[key] = pos
    return out


def reader(target: str, cache: str) -> None:
    from agentstate import SessionStore

    store = SessionStore(target, tenant=TENANT, cache=cache, hot_items=20)
    slow = float(os.environ.get("AGENTSTATE_TEST_SLOW_PROMOTE", "0")) / 1000
    if slow:
        install = store.hot._install
        promotions = [0]

        def slow_install(*args, **kwargs):  # type: ignore[no-untyped-def]
            promotions[0] += 1
            if promotions[0] % 4 == 0:
                time.sleep(slow)  # after the durable read, before the install
            return install(*args, **kwargs)

        store.hot._install = slow_install
    checks = 0
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 4 or parts[0] != "check":
            continue
        _, sid, seq, iid = parts
        try:
            items = store.context(sid, 20)
        except Exception as e:  # noqa: BLE001 - reported to the test
            say(f"error {sid} {type(e).__name__}: {e}")
            continue
        checks += 1
        for p in problems(items, int(seq), iid):
            say(f"bad {sid} {p}")
    say(f"done {checks}")


if __name__ == "__main__":
    main(writers=lambda a: writers(a[0], a[1], a[2]), reader=lambda a: reader(a[0], a[1]))
