"""The `agentstate` console script in real processes: every command and exit code, bad input from
files and from argv bytes, permissions, a lock held by another process, SIGINT, JSON logs, lazy
imports, terminal rendering and broken pipes.

Every error case checks: the exit code, exactly one `error:` line on stderr, no traceback, and
every file in the store directory byte-for-byte (and mtime) as it was.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "agentstate")
SETPRIV = shutil.which("setpriv")

HOLDER = r"""
import json, sys
from agentstate.state.store import StateStore
lk = StateStore(sys.argv[1]).lock()
h = lk.acquire(0, "long-agent-run")
print(json.dumps(h.to_dict()), flush=True)
sys.stdin.read()  # hold until the test closes stdin (or kills us)
lk.release()
"""


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    e.update(extra)
    return e


def cli(*args: str | bytes, input: bytes | None = None, timeout: float = 60, prefix: list[str] | None = None,
        **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*(prefix or []), CLI, *args], input=input, capture_output=True, timeout=timeout,
                          env=kw.pop("env", None) or env(), **kw)


def snapshot(d: Path, mtimes: bool = True) -> dict[str, tuple[bytes, int]] | None:
    """Every file in the store directory with its bytes and mtime (a writer that takes the lock writes
    its holder record into state.json.lock and empties it again: ``mtimes=False`` compares bytes only)."""
    if not d.exists():
        return None
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns if mtimes else 0) for p in sorted(d.iterdir())}


def error_line(r: subprocess.CompletedProcess[bytes], code: int) -> str:
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode == code, (r.returncode, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    return lines[0]


def json_error(r: subprocess.CompletedProcess[bytes], code: int, name: str) -> dict:
    error_line(r, code)
    err = json.loads(r.stdout)["error"]
    assert err["code"] == name and err["exit_code"] == code and err["message"], err
    return err


def ok_json(r: subprocess.CompletedProcess[bytes]):
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    assert ok_json(cli("apply", "--dir", str(d), "--set", "a=1", "--set", "b=[1,2]", "--json"))["serial"] == 1
    return d


# -- the happy path of every command ------------------------------------------------------------


def test_every_command(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    assert cli("--version").stdout.decode().startswith("agentstate ")
    r = subprocess.run([sys.executable, "-m", "agentstate", "--version"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(b"agentstate ")
    helptext = b" ".join(cli("--help").stdout.split())
    assert b"6 not found" in helptext and b"2 usage error" in helptext
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"resources": {"agent.a": {"model": "x"}, "agent.b": [1, 2]}}))
    assert ok_json(cli("plan", str(spec), "--dir", d, "--json")) == {
        "serial": 0, "created": ["agent.a", "agent.b"], "updated": [], "deleted": []}
    assert not Path(d).exists()
    r = cli("apply", str(spec), "--dir", d)
    assert r.returncode == 0 and r.stdout.decode().splitlines() == [
        '+ agent.a = {"model":"x"}', "+ agent.b = [1,2]", "Apply complete: 2 created, 0 updated, 0 deleted; serial 1."]
    out = ok_json(cli("apply", "-", "--dir", d, "--json", input=b'{"resources": {"agent.a": {"model": "y"}}}'))
    assert out == {"serial": 2, "created": [], "updated": ["agent.a"], "deleted": ["agent.b"]}
    out = ok_json(cli("apply", "--dir", d, "--set", "note=hello world", "--set", "n=42", "--json"))
    assert out == {"serial": 3, "created": ["n", "note"], "updated": [], "deleted": []}
    document = ok_json(cli("show", "--dir", d, "--json"))
    assert document["serial"] == 3 and isinstance(document["lineage"], str)
    assert document["resources"] == {"agent.a": {"model": "y"}, "n": 42, "note": "hello world"}
    assert ok_json(cli("show", "agent.a", "--dir", d, "--json")) == {"model": "y"}
    assert cli("list", "--dir", d).stdout == b"agent.a\nn\nnote\n"
    assert ok_json(cli("list", "--dir", d, "--json")) == ["agent.a", "n", "note"]
    assert ok_json(cli("rm", "n", "note", "--dir", d, "--json"))["deleted"] == ["n", "note"]
    assert ok_json(cli("lock", "status", "--dir", d, "--json"))["held"] is False
    doctor = ok_json(cli("doctor", "--dir", d, "--json"))
    assert doctor["ok"] is True
    assert ok_json(cli("doctor", "--repair", "--dir", d, "--json"))["ok"] is True
    # AGENTSTATE_DIR and the ./.agentstate default
    assert ok_json(cli("list", "--json", env=env(AGENTSTATE_DIR=d))) == ["agent.a"]
    assert cli("apply", "--set", "x=1", cwd=tmp_path).returncode == 0
    assert (tmp_path / ".agentstate" / "state.json").exists()
    # global options before the command, as well as after it
    assert cli("--dir", d, "list").stdout == b"agent.a\n"
    assert ok_json(cli("--json", "--dir", d, "show", "agent.a")) == {"model": "y"}
    assert cli("--dir", d, "show", "agent.a", "-v").returncode == 0


# -- every error exit code ----------------------------------------------------------------------

SPECS = {
    "malformed": b'{"resources": {',
    "not-an-object": b"[]",
    "resources-not-object": b'{"resources": "x"}',
    "nan": b'{"resources":{"a":NaN}}',
    "big-int": b'{"resources":{"a":123456789012345678901234567890}}',
    "deep": b'{"resources":{"a":' + b"[" * 10000 + b"]" * 10000 + b"}}",
    "invalid-utf8": b'{"resources":{"a":"caf\xe9"}}',
    "empty": b"",
    "control-char-address": b'{"resources":{"x\\u001by":1}}',
}


@pytest.mark.parametrize("name", list(SPECS))
def test_bad_spec_file(tmp_path: Path, store: Path, name: str) -> None:
    spec = tmp_path / f"{name}.json"
    spec.write_bytes(SPECS[name])
    before = snapshot(store)
    line = error_line(cli("apply", str(spec), "--dir", str(store)), 1)
    if name == "big-int":
        assert "64-bit" in line  # refused, never rounded
    json_error(cli("plan", "-", "--dir", str(store), "--json", input=SPECS[name]), 1, "invalid_input")
    assert snapshot(store) == before


def test_missing_spec_file(tmp_path: Path, store: Path) -> None:
    before = snapshot(store)
    line = error_line(cli("apply", str(tmp_path / "nope.json"), "--dir", str(store)), 1)
    assert "nope.json" in line and "does not exist" in line
    assert snapshot(store) == before


def test_argv_bytes_that_are_not_utf8(tmp_path: Path, store: Path) -> None:
    """Addresses from argv are refused when not UTF-8; a file or directory name need not be UTF-8."""
    before = snapshot(store)
    for args in ([b"apply", b"--set", b"caf\xe9=1"], [b"apply", b"--delete", b"\xff"], [b"show", b"a\xff"],
                 [b"rm", b"\xfe\xff"], [b"apply", b"--set", b"a=\xff", b"--json"]):
        r = cli(*args, b"--dir", os.fsencode(store))
        assert "UTF-8" in error_line(r, 1), args
        if b"--json" in args:
            assert json.loads(r.stdout)["error"]["code"] == "invalid_input"
    assert snapshot(store) == before
    r = cli("apply", os.fsdecode(b"missing-\xff.json"), "--dir", str(store), "--json")
    assert "missing-" in json_error(r, 1, "invalid_input")["message"]
    # A spec whose file name is not UTF-8, applied to a store whose directory name is not UTF-8.
    spec = os.path.join(os.fsencode(tmp_path), b"spec-\xff.json")
    with open(spec, "wb") as f:
        f.write(b'{"resources": {"k": 1}}')
    odd = os.path.join(os.fsencode(tmp_path), b"store-\xfe")
    assert ok_json(cli(b"apply", spec, b"--dir", odd, b"--json"))["created"] == ["k"]
    doctor = ok_json(cli(b"doctor", b"--dir", odd, b"--json"))
    assert doctor["ok"] is True and "store-" in doctor["findings"][0]["path"]
    assert cli(b"show", b"--dir", odd).returncode == 0
    assert cli(b"lock", b"status", b"--dir", odd).returncode == 0


@pytest.mark.parametrize(
    "args",
    [["apply", "--set", "a\x01b=1"], ["show", "line\nbreak"], ["rm", ""], ["apply", "--delete", "x" * 257],
     ["rm", "a", "esc\x1b[31m"]],
    ids=["set-control", "show-newline", "rm-empty", "delete-too-long", "rm-escape"],
)
def test_bad_argv_address(store: Path, args: list[str]) -> None:
    before = snapshot(store)
    assert "address" in error_line(cli(*args, "--dir", str(store)), 1)
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "args",
    [[], ["lock"], ["nope"], ["show", "--nope"], ["plan"], ["lock", "status", "--nope"],
     ["apply", "--set", "a=2", "--lock-timeout", "forever"], ["show", "--log-level", "chatty"],
     ["apply", "--expect-serial", "x", "--set", "a=2"]],
)
def test_usage_errors(store: Path, args: list[str]) -> None:
    before = snapshot(store)
    r = cli(*args, env=env(AGENTSTATE_DIR=str(store)))
    line = error_line(r, 2)
    assert r.stdout == b"" and len(line) > 20
    assert snapshot(store) == before


def test_usage_error_json(store: Path) -> None:
    r = cli("list", "--json", "--nope", env=env(AGENTSTATE_DIR=str(store)))
    assert json_error(r, 2, "usage")["message"]


def test_not_found_conflict_corrupt(store: Path) -> None:
    before = snapshot(store)
    assert "zz" in json_error(cli("show", "zz", "--dir", str(store), "--json"), 6, "not_found")["message"]
    assert json_error(cli("rm", "a", "zz", "--dir", str(store), "--json"), 6, "not_found")["addresses"] == ["zz"]
    err = json_error(cli("apply", "--set", "a=2", "--expect-serial", "0", "--dir", str(store), "--json"), 5,
                     "conflict")
    assert err["serial"] == 1
    assert snapshot(store) == before
    (store / "state.json").write_bytes(b'{"format_version":3,"serial":9,"lineage":"x","resources":{}}\n')
    before = snapshot(store)
    json_error(cli("apply", "--set", "a=2", "--dir", str(store), "--json"), 5, "format_too_new")
    json_error(cli("show", "--dir", str(store), "--json"), 5, "format_too_new")
    assert snapshot(store) == before
    (store / "state.json").write_bytes(b"\x00" * 100)  # no backup: nothing valid left
    before = snapshot(store)
    for args in (["show"], ["list"], ["apply", "--set", "c=1"], ["rm", "a"]):
        json_error(cli(*args, "--dir", str(store), "--json"), 4, "corrupted")
    r = cli("doctor", "--dir", str(store))
    assert r.returncode == 4 and b"BAD  state" in r.stdout
    assert snapshot(store) == before


def test_damaged_state_served_from_backup_then_repaired(store: Path) -> None:
    assert cli("apply", "--set", "a=2", "--dir", str(store)).returncode == 0
    (store / "state.json").write_bytes(b"")  # an empty state.json: the backup (a=1) is served
    r = cli("show", "a", "--dir", str(store), "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == 1
    assert b"corruption detected" in r.stderr and b"fallback used" in r.stderr
    r = cli("doctor", "--dir", str(store))
    assert r.returncode == 1 and b"BAD  state" in r.stdout and b"--repair" in r.stdout
    r = cli("doctor", "--repair", "--dir", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"recovery persisted" in r.stderr
    assert cli("doctor", "--dir", str(store)).returncode == 0


# -- permissions ------------------------------------------------------------------------------


def _as_unprivileged(args: list[str]) -> list[str]:
    """Run as `nobody` when we are root (root ignores permission bits); as ourselves otherwise."""
    if os.geteuid() != 0:
        return []
    assert SETPRIV, "setpriv (util-linux) is needed to drop root for the permission test"
    return [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def test_unwritable_store_directory() -> None:
    """chmod 0555 on the store directory: writes fail with exit 1 and change nothing; reads work.

    As root the commands run as `nobody` through setpriv, in a world-readable temp directory."""
    base = Path(tempfile.mkdtemp(prefix="agentstate-perm-"))
    try:
        base.chmod(0o755)
        d = base / "store"
        assert ok_json(cli("apply", "--dir", str(d), "--set", "a=1", "--json"))["serial"] == 1
        for p in d.iterdir():
            p.chmod(0o666)  # the lock file and state are writable: only the directory is not
        d.chmod(0o555)
        prefix = _as_unprivileged([])
        before = snapshot(d, mtimes=False)
        e = env(HOME=str(base), PYTHONDONTWRITEBYTECODE="1")
        r = cli("apply", "--dir", str(d), "--set", "b=2", "--json", prefix=prefix, env=e)
        err = json_error(r, 1, "io_error")
        assert "EACCES" in err["message"] or "ermission" in err["message"], err
        r = cli("rm", "a", "--dir", str(d), prefix=prefix, env=e)
        error_line(r, 1)
        assert ok_json(cli("show", "--dir", str(d), "--json", prefix=prefix, env=e))["resources"] == {"a": 1}
        assert snapshot(d, mtimes=False) == before
        assert not [p for p in d.iterdir() if ".tmp-" in p.name]
    finally:
        if (base / "store").exists():
            (base / "store").chmod(0o755)
        shutil.rmtree(base)


def test_store_path_under_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "plain-file"
    f.write_bytes(b"x")
    r = cli("apply", "--set", "a=1", "--dir", str(f / "store"))
    assert str(f) in error_line(r, 1)
    assert f.read_bytes() == b"x"


# -- the lock held by another process --------------------------------------------------------------


def _hold(d: Path) -> tuple[subprocess.Popen, dict]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env())
    line = p.stdout.readline()
    assert line, p.stderr.read()
    return p, json.loads(line)


def test_lock_held_by_another_process(tmp_path: Path, store: Path) -> None:
    p, holder = _hold(store)
    try:
        before = snapshot(store)
        spec = tmp_path / "spec.json"
        spec.write_text('{"resources": {"a": 5}}')
        # Readers take no lock.
        assert ok_json(cli("plan", str(spec), "--dir", str(store), "--json"))["updated"] == ["a"]
        assert ok_json(cli("show", "--dir", str(store), "--json"))["serial"] == 1
        assert cli("list", "--dir", str(store)).returncode == 0
        st = ok_json(cli("lock", "status", "--dir", str(store), "--json"))
        assert st["held"] and st["holder"]["pid"] == p.pid and st["holder_alive"] is True
        # Writers time out with exit 3 and name the holder.
        t0 = time.monotonic()
        r = cli("apply", "--set", "a=2", "--dir", str(store), "--lock-timeout", "500ms", "--json")
        assert time.monotonic() - t0 >= 0.5
        err = json_error(r, 3, "locked")
        assert err["holder"]["lock_id"] == holder["lock_id"]
        line = r.stderr.decode()
        assert str(p.pid) in line and "long-agent-run" in line and f"stop PID {p.pid}" in line
        assert "force-unlock" not in line  # it could not help while the holder lives
        error_line(cli("rm", "a", "--dir", str(store), "--lock-timeout", "0"), 3)
        for args in (["wrong-id"], [holder["lock_id"]], [holder["lock_id"], "--force"]):
            line = error_line(cli("force-unlock", *args, "--dir", str(store)), 3)  # never while it is held
            assert str(p.pid) in line
        assert snapshot(store) == before
        # SIGKILL: the kernel releases the flock; the stale record is shown, then removed by force-unlock.
        p.kill()
        p.wait(10)
        st = ok_json(cli("lock", "status", "--dir", str(store), "--json"))
        assert st["held"] is False and st["last_holder"]["lock_id"] == holder["lock_id"]
        error_line(cli("force-unlock", "wrong-id", "--dir", str(store)), 5)
        assert ok_json(cli("force-unlock", holder["lock_id"], "--dir", str(store), "--json"))["unlocked"] is True
        error_line(cli("force-unlock", holder["lock_id"], "--dir", str(store)), 6)
        assert ok_json(cli("apply", "--set", "a=2", "--dir", str(store), "--lock-timeout", "0", "--json"))[
            "serial"] == 2
    finally:
        p.kill()
        p.wait(10)


def test_waiting_writer_gets_the_lock_when_released(store: Path) -> None:
    p, _ = _hold(store)
    try:
        w = subprocess.Popen([CLI, "apply", "--set", "w=1", "--dir", str(store), "--lock-timeout", "30s", "--json",
                              "-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
        _wait_for(w, b"waiting for lock")
        p.stdin.close()  # the holder releases
        out, err = w.communicate(timeout=30)
        assert w.returncode == 0, err
        assert json.loads(out)["created"] == ["w"]
    finally:
        p.kill()
        p.wait(10)


def _wait_for(proc: subprocess.Popen, needle: bytes, timeout: float = 20) -> bytes:
    """Read proc's stderr until ``needle`` shows up (the stream stays readable afterwards)."""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while needle not in buf:
        assert time.monotonic() < deadline, buf
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, buf
            buf += chunk
    return buf


def test_ctrl_c_while_waiting(store: Path) -> None:
    p, _ = _hold(store)
    try:
        before = snapshot(store)
        w = subprocess.Popen([CLI, "apply", "--set", "w=1", "--dir", str(store), "--lock-timeout", "60s",
                              "-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
        seen = _wait_for(w, b"waiting for lock")
        w.send_signal(signal.SIGINT)
        _, rest = w.communicate(timeout=20)
        err = (seen + rest).decode()
        assert w.returncode == 130, err
        errors = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in err
        assert snapshot(store) == before
    finally:
        p.kill()
        p.wait(10)


# -- logs, imports, terminals, pipes ---------------------------------------------------------------


def test_log_format_json_lines(store: Path) -> None:
    r = cli("apply", "--set", "a=3", "--dir", str(store), "-v", "--log-format", "json")
    assert r.returncode == 0
    records = [json.loads(line) for line in r.stderr.decode().splitlines()]
    msgs = [x["message"] for x in records]
    assert any(" acquired by PID " in m for m in msgs) and any(" released by PID " in m for m in msgs), msgs
    assert {"ts", "level", "logger", "pid", "message"} <= set(records[0])
    r = cli("apply", "--set", "a=4", "--dir", str(store), env=env(AGENTSTATE_LOG_LEVEL="info",
                                                                   AGENTSTATE_LOG_FORMAT="json"))
    assert all(json.loads(line)["level"] == "info" for line in r.stderr.decode().splitlines())
    # An error with JSON logs: the error line stays one plain `error:` line.
    r = cli("show", "zz", "--dir", str(store), "--log-format", "json", "-v")
    assert error_line(r, 6).startswith("error: no resource")


def _stale_record(store: Path) -> int:
    """A writer SIGKILLed while it held the store's lock: its holder record stays in state.json.lock."""
    code = ("import os, signal, sys\nfrom agentstate.state.lock import Lock\n"
            "Lock(sys.argv[1]).acquire(0, operation='killed-run')\nos.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, "-c", code, str(store / "state.json.lock")], capture_output=True,
                       timeout=60, env=env())
    assert p.returncode == -signal.SIGKILL, p.stderr
    return int(json.loads((store / "state.json.lock").read_bytes())["pid"])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_warning_of_a_command_uses_the_configured_format(store: Path, fmt: str) -> None:
    """``logging`` loads only at a command's first record (machine reads never load it): the handler the
    options asked for is in place by then, at the default level as at -v."""
    pid = _stale_record(store)
    r = cli("apply", "--set", "c=1", "--dir", str(store), *(["--log-format", "json"] if fmt == "json" else []))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1, lines  # the default level: the warning only, once
    if fmt == "json":
        record = json.loads(lines[0])
        assert record["level"] == "warning" and record["logger"] == "agentstate.lock", record
        message = record["message"]
    else:
        assert lines[0].startswith("agentstate: WARNING: "), lines
        message = lines[0]
    assert "stale lock record overwritten" in message and f"PID {pid} " in message and "killed-run" in message


@pytest.mark.parametrize("args", [["show", "--json"], ["show", "a", "--json"], ["list", "--json"]])
def test_machine_reads_do_not_import_what_they_do_not_use(store: Path, args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-X", "importtime", CLI, *args, "--dir", str(store)], capture_output=True,
                       timeout=60, env=env())
    assert r.returncode == 0, r.stderr
    full = {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines() if line.startswith("import time:")}
    modules = {m.split(".")[0] for m in full}
    assert "typer" in modules and "agentstate" in modules  # the trace is real
    assert not modules & {"rich", "psutil", "sqlite3", "_sqlite3", "psycopg", "logging"}, sorted(modules)
    assert "agentstate.state.lock" not in full
    assert not any(m.startswith("agentstate.cli.") and m not in ("agentstate.cli.common", "agentstate.cli.output",
                                                                 "agentstate.cli.running",
                                                                 "agentstate.cli.state")
                   for m in full), sorted(full)  # only the command's own group is imported


def test_apply_json_does_not_import_rich(store: Path) -> None:
    code = ("import sys; sys.argv = ['agentstate', 'apply', '--set', 'z=1', '--json', '--dir', sys.argv[1]]\n"
            "from agentstate.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'psutil')), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, timeout=60, env=env())
    assert r.stderr.decode().strip() == "0 []", r.stderr
    assert json.loads(r.stdout)["created"] == ["z"]


def _in_pty(args: list[str]) -> bytes:
    master, slave = pty.openpty()
    p = subprocess.Popen([CLI, *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                         env=env(COLUMNS="100", TERM="xterm-256color"))
    os.close(slave)
    out = b""
    while True:
        try:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(30) == 0, out
    return out


def test_show_on_a_terminal_uses_rich(store: Path) -> None:
    out = _in_pty(["show", "--dir", str(store)]).decode()
    assert "address" in out and "value" in out and any(c in out for c in "│┃┏━╇"), out
    plain = cli("show", "--dir", str(store)).stdout.decode()
    assert "serial: 1" in plain and not any(c in plain for c in "│┃┏━") and "\x1b[" not in plain
    value = _in_pty(["show", "b", "--dir", str(store)]).decode()
    assert "1" in value and "2" in value


def test_broken_pipe_is_quiet(store: Path) -> None:
    spec = {"resources": {f"k{i:05d}": i for i in range(20000)}}
    assert cli("apply", "-", "--dir", str(store), input=json.dumps(spec).encode()).returncode == 0
    p = subprocess.Popen([CLI, "list", "--dir", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env())
    assert p.stdout.readline() == b"k00000\n"
    p.stdout.close()  # the reader goes away, like `agentstate list | head -1`
    err = p.stderr.read()
    p.wait(30)
    assert b"Traceback" not in err and b"Exception ignored" not in err, err
