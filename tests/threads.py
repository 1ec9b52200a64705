"""``all_at_once(work, n)``: ``work(0)`` .. ``work(n - 1)`` each in a thread of its own, started together and
joined; whatever any of them raised fails the test (the list of exceptions is the assertion's message)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def all_at_once(work: Callable[[int], object], n: int, timeout: float = 120) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - reported below, with the others
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert errors == [] and not any(t.is_alive() for t in threads), errors
