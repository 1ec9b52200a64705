"""Bounded descriptors whatever the thread churn (issue 15, item 5, SQLite).

A store shared by short-lived threads (how AgentStateSession is used under asyncio: each call in a
fresh worker thread) used to keep every finished thread's connection open: 300 calls, 600 descriptors.
Here 1,000 calls from 1,000 threads, each started after the previous one ended, and then 1,000 from
threads running 8 at a time: the process's open descriptors come back to where they were (within a
small constant: the pool's few idle connections).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from agentstate import ResponseStore, SessionStore


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _churn(call, n: int = 1000, at_once: int = 1) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            call(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    for start in range(0, n, at_once):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(start, min(n, start + at_once))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]


def test_session_store_descriptors_bounded_under_thread_churn(tmp_path: Path) -> None:
    store = SessionStore(str(tmp_path / "store"))
    store.append("s", [{"type": "seed"}])
    before = _fds()
    _churn(lambda i: store.append("s", [{"type": "x", "i": i}]) if i % 2 else store.context("s", limit=2))
    assert _fds() - before <= 12, (before, _fds())
    _churn(lambda i: store.items("s", limit=1) if i % 3 else store.append("t", [{"i": i}]), at_once=8)
    assert _fds() - before <= 12, (before, _fds())
    assert len(store.items("s")) == 501 and len(store.items("t")) == 334
    store.close()
    assert _fds() <= before


def test_response_store_descriptors_bounded_under_thread_churn(tmp_path: Path) -> None:
    store = ResponseStore(str(tmp_path / "store"))
    store.save({"id": "r0"})
    before = _fds()
    _churn(lambda i: store.save({"id": f"r{i + 1}"}) if i % 2 else store.get("r0"))
    assert _fds() - before <= 12, (before, _fds())
    _churn(lambda i: store.get("r0"), at_once=8)
    assert _fds() - before <= 12, (before, _fds())
    store.close()
    assert _fds() <= before
