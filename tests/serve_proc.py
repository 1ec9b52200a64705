"""A real ``agentstate serve`` subprocess for the tests: a free loopback port, an HS256 secret file,
tokens minted for any tenant, and the store directory to look at afterwards."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

CLI = [sys.executable, "-m", "agentstate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProc:
    def __init__(self, tmp: Path, *, store: Path | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.store = store or tmp / "store"
        self.secret_file = tmp / "jwt-secret"
        if not self.secret_file.exists():
            self.secret_file.write_text(secrets.token_hex(32) + "\n")
        self.secret = self.secret_file.read_text().strip()
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = tmp / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServeProc:
        self.port = free_port()
        args = [*CLI, "serve", "--dir", str(self.store), "--port", str(self.port),
                "--jwt-secret-file", str(self.secret_file), *self.extra]
        env = dict(os.environ, **(self.env or {}))
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("server did not start: " + self.log.read_text()[-2000:])

    def token(self, sub: Any = "alice", *, exp_in: float = 3600, key: str | None = None, alg: str = "HS256",
              **claims: Any) -> str:
        payload = {"sub": sub, "exp": int(time.time() + exp_in), **claims}
        if sub is None:
            del payload["sub"]
        return jwt.encode(payload, key or self.secret, algorithm=alg)

    def headers(self, sub: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub)}"}

    def client(self, sub: str = "alice", **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, headers=self.headers(sub), **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.logf.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.logf.close()


def store_bytes(store: Path) -> dict[str, list[tuple]]:
    """Everything the store holds: every row of every table of its agentstate.db, read through a
    read-only connection (files' bytes change when SQLite checkpoints its WAL, which is not a change
    of what is stored), plus any other file's bytes."""
    import sqlite3

    out: dict[str, list[tuple]] = {}
    if not store.exists():
        return out
    db = store / "agentstate.db"
    if db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            for t in tables:
                out[t] = sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
        finally:
            conn.close()
    for p in sorted(store.rglob("*")):
        if p.is_file() and not p.name.startswith("agentstate.db"):
            out[str(p.relative_to(store))] = [(p.read_bytes(),)]
    return out
