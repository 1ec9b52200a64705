"""Test-side helpers for the worker processes of the integration tests (response_saver.py, session_appender.py).

* ``integrity(directory)``: ``PRAGMA integrity_check`` of the directory's agentstate.db, read-only
* ``run_burst(commands)``: start workers that print "ready", release them together, wait for "done"
* ``ForkServer(command)``: a ``forkserver`` worker driven line by line (see worker.py);
  ``kill_round(rnd, delay)`` starts a child, SIGKILLs it after ``delay`` seconds and returns its acks
* ``seeded_rng()``: a random.Random seeded from AGENTSTATE_SEED (random when unset or 0)
"""

from __future__ import annotations

import os
import queue
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

DB = "agentstate.db"


def integrity(directory: Path) -> list[str]:
    """``PRAGMA integrity_check`` of ``directory/agentstate.db`` opened read-only; ["ok"] when there is no
    database yet (nothing can be damaged, and opening it must not create it)."""
    path = Path(directory) / DB
    if not path.exists():
        return ["ok"]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def seeded_rng() -> random.Random:
    return random.Random(int(os.environ.get("AGENTSTATE_SEED", "0")) or None)


def run_burst(commands: list[list[str]], timeout: float = 300) -> None:
    """Start every command; each prints "ready", then all get "go" together; each must print "done", exit 0."""
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:  # release them together
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, errs = p.communicate(timeout=timeout)
            assert p.returncode == 0 and out.strip() == "done", errs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


class ForkServer:
    """A worker in ``forkserver`` mode: it prints "server-ready", then forks a child for each "go R"."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.next()
        assert line == "server-ready", line

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def next(self, timeout: float = 60) -> str:
        line = self.lines.get(timeout=timeout)
        assert line != "EOF", self.proc.stderr.read()
        return line

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill_round(self, rnd: int, delay: float) -> list[list[str]]:
        """Start child ``rnd``, SIGKILL it ``delay`` seconds after it said "ready", and return the fields
        after "ack R" of every acknowledgement it printed before it died."""
        self.send(f"go {rnd}")
        line = self.next()
        assert line.startswith(f"ready {rnd} "), line
        time.sleep(delay)
        os.kill(int(line.split()[2]), signal.SIGKILL)
        acks: list[list[str]] = []
        while True:
            line = self.next()
            fields = line.split()
            if fields[0] == "dead":
                assert int(fields[1]) == rnd, line
                return acks
            assert fields[0] == "ack" and int(fields[1]) == rnd, line
            acks.append(fields[2:])

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
