"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, start, stop.

    server = PgServer.start_new()      # initdb + start; RuntimeError (with the server log) if it cannot
    server.url                         # postgresql://agentstate@127.0.0.1:PORT/agentstate
    server.stop(); server.start()      # the same data and port again (restart tests)
    server.destroy()                   # stop and remove the data directory

Run as root, the server runs as the unprivileged system user ``agentstate-pg`` (created with
useradd when missing), since PostgreSQL refuses to run as root. It listens on 127.0.0.1 on a
free port and on a Unix socket in its temp dir, with trust authentication for the role
``agentstate`` (a superuser) and the server's defaults otherwise (fsync on: durability is tested).
initdb itself runs with --no-sync (a throwaway cluster), which keeps start-up to about a second.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PG_USER = "agentstate-pg"

_WATCHDOG = """
import os, shutil, subprocess, sys, time
pid, base, *stop = sys.argv[1:]
while os.path.exists(base):
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        pass  # alive, and not ours to signal
    except ProcessLookupError:
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        break
    time.sleep(1)
"""
ROLE = "agentstate"
DATABASE = "agentstate"


def pg_bindir() -> str:
    """The directory holding initdb and pg_ctl: $PG_BINDIR, then PATH, then /usr/lib/postgresql/N/bin."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return env
    found = shutil.which("pg_ctl")
    if found:
        return str(Path(os.path.realpath(found)).parent)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return str(Path(candidates[-1]).parent)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (`apt-get install -y postgresql`, "
        "as .ci/run does) or set PG_BINDIR"
    )


def _system_python() -> str:
    """A Python the server's user may run (the venv may sit in a directory it cannot enter)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True, capture_output=True,
        )
        pw = pwd.getpwnam(PG_USER)
    return pw.pw_uid, pw.pw_gid


class PgServer:
    def __init__(self, base: str, port: int, user: tuple[int, int] | None) -> None:
        self.base = base
        self.data = os.path.join(base, "data")
        self.sockdir = os.path.join(base, "sock")
        self.log = os.path.join(base, "server.log")
        self.port = port
        self.user = user
        self.bindir = pg_bindir()

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kw: dict = {}
        if self.user is not None:
            kw = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=self.base, **kw,
        )

    def _fail(self, what: str, proc: subprocess.CompletedProcess | None = None) -> RuntimeError:
        detail = ""
        if proc is not None:
            detail += (proc.stdout or "") + (proc.stderr or "")
        try:
            detail += Path(self.log).read_text()[-3000:]
        except OSError:
            pass
        return RuntimeError(f"test PostgreSQL server: {what} failed:\n{detail}")

    @classmethod
    def start_new(cls) -> PgServer:
        user = _server_user()
        base = tempfile.mkdtemp(prefix="agentstate-pg-")
        os.makedirs(os.path.join(base, "sock"))
        if user is not None:
            for path in (base, os.path.join(base, "sock")):
                os.chown(path, *user)
        os.chmod(base, 0o755)  # the socket directory must be reachable by the tests (root or not)
        server = cls(base, _free_port(), user)
        proc = server._run("initdb", "-D", server.data, "-U", ROLE, "--auth=trust", "--no-sync",
                           "-E", "UTF8", "--locale=C", "--no-instructions")
        if proc.returncode != 0:
            raise server._fail("initdb", proc)
        with open(os.path.join(server.data, "postgresql.conf"), "a") as f:
            f.write(
                "\n# agentstate test server\n"
                f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
                f"unix_socket_directories = '{server.sockdir}'\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
                "log_min_messages = warning\nlog_min_error_statement = panic\n"
            )
        server.start()
        try:
            server._watch()
            import psycopg

            with psycopg.connect(server.admin_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        except BaseException:
            server.destroy()
            raise
        return server

    def _watch(self) -> None:
        """A watchdog process: if this process dies without destroy() (SIGKILL), it stops the server and
        removes its directory, so no throwaway server outlives its test run."""
        kw: dict = {}
        if self.user is not None:
            kw = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        subprocess.Popen(
            [_system_python(), "-c", _WATCHDOG, str(os.getpid()), self.base,
             os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/", **kw,
        )

    def start(self) -> None:
        for _ in range(3):
            proc = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "start")
            if proc.returncode == 0:
                return
            # The port may have been taken between choosing it and binding it: choose another.
            if "could not bind" in Path(self.log).read_text(errors="replace") or "in use" in proc.stdout + proc.stderr:
                self.port = _free_port()
                conf = os.path.join(self.data, "postgresql.conf")
                with open(conf, "a") as f:
                    f.write(f"port = {self.port}\n")
                continue
            raise self._fail("pg_ctl start", proc)
        raise self._fail("pg_ctl start (no free port)")

    def stop(self, mode: str = "fast") -> None:
        proc = self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")
        if proc.returncode != 0 and "not running" not in proc.stdout + proc.stderr:
            raise self._fail("pg_ctl stop", proc)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", self.data, "status").returncode == 0

    def destroy(self) -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def wait_ready(self, timeout: float = 10.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def schema_url(base_url: str, schema: str) -> str:
    """``base_url`` naming the PG schema ``schema`` (the ``?schema=`` parameter agentstate strips)."""
    return f"{base_url}{'&' if '?' in base_url else '?'}schema={schema}"


def schema_conn(url: str) -> Any:
    """A new autocommit psycopg connection whose search_path is the PG schema an agentstate ``url`` names."""
    import psycopg

    from agentstate.sql.pg import split_url

    conninfo, schema = split_url(url)
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute(f'SET search_path TO "{schema}"')
    return conn


def schema_sql(url: str, statement: str, params: tuple | dict = ()) -> list[tuple]:
    """Run one statement in the PG schema an agentstate ``url`` names (autocommit, a connection of its
    own): its rows, or [] for a statement that returns none."""
    with schema_conn(url) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


class RawHolder:
    """Holds agentstate's ``purpose`` advisory lock on a plain connection (as a writer would), until
    ``commit(statement, params)`` runs a statement in that transaction and commits it (``conn``: that
    connection, for more statements before it)."""

    def __init__(self, url: str, purpose: int | tuple[str, str, str]) -> None:
        """``purpose``: a purpose lock (LOCK_STATE), or a resource lock (kind, tenant, name), e.g.
        ("session", "default", "s") or ("response chain", "default", root id)."""
        from agentstate.sql.pg import split_url
        from agentstate.sql.pg_conn import lock_key
        from agentstate.sql.pg_lock import resource_in

        self.conninfo, schema = split_url(url)
        self.conn = schema_conn(url)
        self.conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        key = (lock_key(schema), purpose) if isinstance(purpose, int) else resource_in(schema, *purpose)[:2]
        self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)

    def wait_for_a_waiter(self, timeout: float = 10) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while time.monotonic() < deadline:
                n = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                if n.fetchone()[0]:
                    return
                time.sleep(0.02)
        raise AssertionError("no writer waited for the lock")

    def commit(self, statement: str, params: tuple = ()) -> None:
        self.conn.execute(statement, params)
        self.conn.execute("COMMIT")
        self.conn.close()


def schema_at_version(url: str, version: int) -> None:
    """Create the PG schema an agentstate ``url`` names as an older agentstate left it: migrations 1 to
    ``version`` applied and recorded, nothing else (for the tests of a later migration)."""
    import psycopg

    from agentstate.sql.pg import split_url
    from agentstate.sql.schema import MIGRATIONS

    conninfo, schema = split_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    schema_sql(url, "CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
               "applied_at timestamptz NOT NULL DEFAULT now())")
    for v in range(version):
        for statement in MIGRATIONS[v]["postgres"]:
            schema_sql(url, statement)
        schema_sql(url, "INSERT INTO schema_migrations (version) VALUES (%s)", (v + 1,))
