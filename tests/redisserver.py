"""A throwaway redis-server for the tests (Debian's ``redis-server`` package; .ci/run installs it).

    server = RedisServer.start_new()   # a fresh server on a free loopback port and a Unix socket
    server.url                         # redis://127.0.0.1:PORT/0
    server.unix_url                    # unix:///tmp/.../redis.sock?db=0
    server.stop(); server.start()      # stopped and started again on the same port (empty: no persistence)
    server.destroy()

It runs without persistence (``save ""``, ``appendonly no``), as the hot tier's Redis should, and dies
with the process that started it (a watchdog process kills it when that process is gone), so none outlives
its test run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def redis_server_bin() -> str:
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)
    if not found:
        raise RuntimeError("redis-server not found: install it (`apt-get install -y redis-server`, as .ci/run does) "
                           "or set REDIS_SERVER")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WATCHDOG = """
import os, signal, sys, time
parent, child = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
while alive(child):
    if not alive(parent):
        os.kill(child, signal.SIGKILL)
        break
    time.sleep(0.5)
"""


class RedisServer:
    def __init__(self, base: str, port: int) -> None:
        self.base = base
        self.port = port
        self.sock = os.path.join(base, "redis.sock")
        self.log = os.path.join(base, "redis.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.sock}?db=0"

    @classmethod
    def start_new(cls) -> RedisServer:
        server = cls(tempfile.mkdtemp(prefix="agentstate-redis-"), _free_port())
        server.start()
        return server

    def start(self) -> None:
        for _ in range(3):
            self.proc = subprocess.Popen(
                [redis_server_bin(), "--port", str(self.port), "--bind", "127.0.0.1", "--unixsocket", self.sock,
                 "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", self.base,
                 "--logfile", self.log, "--daemonize", "no", "--protected-mode", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.proc.pid)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
            if self._wait_ready(10.0):
                return
            self.stop()
            self.port = _free_port()  # taken between choosing and binding: choose another
        raise RuntimeError(f"test redis-server did not start:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
