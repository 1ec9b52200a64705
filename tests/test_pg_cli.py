"""The CLI on a PostgreSQL store: the lock explains itself (status, exit 3 naming the holder,
force-unlock ending the holder's session), --url and AGENTSTATE_URL, and the other groups' commands."""

from __future__ import annotations

import json
import os
import socket

from state_holder import StateHolder
from typer.testing import CliRunner

from agentstate import StorageError
from agentstate.cli import app
from agentstate.sql.schema import SCHEMA_VERSION

runner = CliRunner()


def run(args: list[str], env: dict | None = None):
    env = {"AGENTSTATE_DIR": None, "AGENTSTATE_URL": None, "AGENTSTATE_LOCK_TIMEOUT": None, **(env or {})}
    return runner.invoke(app, args, env=env)


def one_error_line(r, code: int) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_url_from_the_environment_and_exclusive_with_dir(pg_schema_url, tmp_path):
    assert run(["apply", "--set", "a=1"], env={"AGENTSTATE_URL": pg_schema_url}).exit_code == 0
    r = run(["show", "--json"], env={"AGENTSTATE_URL": pg_schema_url})
    assert r.exit_code == 0 and json.loads(r.stdout)["resources"] == {"a": 1}
    one_error_line(run(["show", "--url", pg_schema_url, "--dir", str(tmp_path)]), 2)
    assert not list(tmp_path.iterdir())


def test_lock_status_timeout_and_force_unlock_on_postgres(pg_schema_url):
    with StateHolder(pg_schema_url, "long-agent-run") as holder:
        st = json.loads(run(["lock", "status", "--url", pg_schema_url, "--json"]).stdout)
        assert st["held"] and st["holder"]["operation"] == "long-agent-run" and st["holder"]["pid"] == os.getpid()
        lock_id = st["holder"]["lock_id"]
        text = run(["lock", "status", "--url", pg_schema_url]).stdout
        assert "long-agent-run" in text and lock_id in text
        r = run(["apply", "--set", "z=1", "--url", pg_schema_url, "--lock-timeout", "200ms", "--json"])
        line = one_error_line(r, 3)
        for part in ("long-agent-run", lock_id, str(os.getpid()), socket.gethostname(),
                     f"agentstate force-unlock {lock_id} --url"):
            assert part in line
        err = json.loads(r.stdout)["error"]
        assert err["code"] == "locked" and err["holder"]["lock_id"] == lock_id
        one_error_line(run(["force-unlock", "not-the-id", "--url", pg_schema_url]), 5)
        r = run(["force-unlock", lock_id, "--url", pg_schema_url])
        assert r.exit_code == 0, r.stderr
        assert "ended the PostgreSQL session" in r.stdout and lock_id in r.stdout
        holder.release()
        assert len(holder.errors) == 1 and isinstance(holder.errors[0], StorageError)
    assert json.loads(run(["lock", "status", "--url", pg_schema_url, "--json"]).stdout)["held"] is False
    one_error_line(run(["force-unlock", lock_id, "--url", pg_schema_url]), 6)
    assert run(["apply", "--set", "z=1", "--url", pg_schema_url, "--lock-timeout", "0"]).exit_code == 0
    assert json.loads(run(["show", "--url", pg_schema_url, "--json"]).stdout)["resources"] == {"z": 1}


def test_doctor_on_postgres(pg_schema_url):
    assert run(["apply", "--set", "a=1", "--url", pg_schema_url]).exit_code == 0
    assert run(["apply", "--set", "a=2", "--url", pg_schema_url]).exit_code == 0
    r = run(["doctor", "--url", pg_schema_url])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "serial 2" in r.stdout and "serial 1" in r.stdout and f"version {SCHEMA_VERSION}" in r.stdout
