"""Worker-side protocol of the integration tests' worker processes (response_saver.py, session_appender.py,
pg_worker.py; the test side is procs.py).

* ``say(line)``: one write(2) to stdout, so an acknowledgement is never half printed when the worker is killed
* ``wait_for_go()``: print "ready" and wait for one line on stdin (a burst worker's start)
* ``serve(child)``: print "server-ready"; for each "go R" line on stdin fork a child running ``child(R)``
  and, when it has died, print "dead R <wait status>". The server never opens the database itself
  (the caller preloads modules before calling it), so no child inherits a connection.
* ``main(**modes)``: ``sys.argv[1]`` names the mode; its function gets the rest of argv as a list
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def wait_for_go() -> None:
    say("ready")
    sys.stdin.readline()


def serve(child: Callable[[int], None]) -> None:
    say("server-ready")
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "go":
            continue
        rnd = int(parts[1])
        pid = os.fork()
        if pid == 0:
            try:
                child(rnd)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        say(f"dead {rnd} {status}")


def main(**modes: Callable[[list[str]], None]) -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode not in modes:
        raise SystemExit(f"unknown mode {mode}")
    modes[mode](args)
