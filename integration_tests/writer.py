"""A writer process for the integration tests (run as a subprocess, killed with SIGKILL).

    python writer.py loop DIR               print "ready <pid>", then forever: one transaction
                                            that sets "counter" to the stored value + 1, and
                                            print the new value once the transaction returned
    python writer.py forkserver DIR [--in-place]
                                            load everything once and print "server-ready"; for
                                            each "go" line on stdin fork a child that runs
                                            ``loop`` (its lines go to the same stdout), and when
                                            that child has died print "dead <wait status>".
                                            --in-place: a deliberately unsafe file layer that
                                            rewrites state.json in place (the kill loop's self-check)
    python writer.py once DIR KEY VALUE     one transaction setting KEY to VALUE (JSON, else a
                                            string); print "ok <serial>" once it returned

A printed value is written (one write(2), unbuffered) only after ``transaction()`` returned,
so it is an acknowledged commit. The fork server makes a kill-loop round cost a fork instead
of an interpreter start: the children are ordinary processes, each killed by a real SIGKILL,
and "dead" is printed after waitpid(), so every acknowledgement of that child precedes it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from agentstate.state.fileio import OsFiles
from agentstate.state.store import StateStore


class InPlaceFiles(OsFiles):
    """Deliberately unsafe: "renames" the new state over state.json by rewriting it in place, in two
    halves with a pause between. The kill loop must catch this (torn state.json)."""

    def rename(self, src: str, dst: str) -> None:
        if os.path.basename(dst) != "state.json" or not os.path.exists(dst):
            return super().rename(src, dst)
        data = self.read(src) or b""
        fd = os.open(dst, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, data[: len(data) // 2])
            time.sleep(0.005)
            os.write(fd, data[len(data) // 2 :])
        finally:
            os.close(fd)
        os.unlink(src)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line, no buffering


def commit_forever(store: StateStore) -> None:
    _say(f"ready {os.getpid()}")
    while True:
        with store.transaction(operation="kill-loop") as state:
            value = state.resources.get("counter", 0) + 1
            state.resources["counter"] = value
        _say(str(value))


def _warm_up(store: StateStore) -> None:
    with store.transaction(operation="warm-up"):
        pass  # changes nothing, writes nothing: only loads the lazily imported code


def forkserver(directory: str, in_place: bool = False) -> None:
    store = StateStore(directory, lock_timeout=60, files=InPlaceFiles() if in_place else None)
    _warm_up(store)
    _say("server-ready")
    for line in sys.stdin:
        if line.strip() != "go":
            continue
        pid = os.fork()
        if pid == 0:
            try:
                commit_forever(store)
            except BaseException as e:  # report, then wait for the SIGKILL: only the test ends a child
                _say(f"error {type(e).__name__}: {e}")
                while True:
                    signal.pause()
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        _say(f"dead {status}")


def once(directory: str, key: str, raw: str) -> None:
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    store = StateStore(directory, lock_timeout=60)
    with store.transaction(operation="once") as state:
        state.resources[key] = value
    _say(f"ok {state.serial}")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "loop":
        store = StateStore(argv[1], lock_timeout=60)
        _warm_up(store)
        commit_forever(store)
    elif len(argv) in (2, 3) and argv[0] == "forkserver" and argv[2:] in ([], ["--in-place"]):
        forkserver(argv[1], in_place=argv[2:] == ["--in-place"])
    elif len(argv) == 4 and argv[0] == "once":
        once(argv[1], argv[2], argv[3])
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
