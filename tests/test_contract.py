"""One contract for every command group (issue 16): the same exit code for a bad option, the same JSON
shape for the same act, --tenant only where it means something, both locks in `lock status`, and the
commands and flags each group is expected to have. Every test runs the CLI as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

MAX_INT = 2**63 - 1


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    env.update(extra)
    return env


def run(target: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess:
    where = ["--url", target] if target.startswith("postgres") else ["--dir", target]
    return subprocess.run([sys.executable, "-m", "agentstate", *args, *where], input=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env or _env(), timeout=120)


def ok(target: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    r = run(target, *args, stdin=stdin)
    assert r.returncode == 0, (args, r.stderr)
    return r


def js(target: str, *args: str, stdin: str | None = None) -> object:
    return json.loads(ok(target, *args, "--json", stdin=stdin).stdout)


def one_error(r: subprocess.CompletedProcess, code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# -- bad option values: exit 2 everywhere -------------------------------------------------------------

BAD_OPTIONS = [
    ["sessions", "list", "--limit", "0"],
    ["sessions", "list", "--limit", "10001"],
    ["responses", "list", "--limit=-5"],
    ["sessions", "show", "s", "--last=-1"],
    ["sessions", "show", "s", "--last", "99999999999999999999"],
    ["sessions", "append", "s", "{}", "--expect-seq=-1"],
    ["sessions", "append", "s", "{}", "--expect-seq", str(MAX_INT + 1)],
    ["apply", "--set", "a=1", "--expect-serial=-1"],
    ["rm", "a", "--expect-serial", "99999999999999999999"],
    ["responses", "save", "-", "--max-responses=-1"],
    ["responses", "save", "-", "--max-item-bytes", "0"],
    ["sessions", "prune", "--older-than", "soon"],
    ["sessions", "append", "s", "{}", "--ttl", "soon"],
    ["sessions", "append", "s", "{}", "--ttl", "0"],
    ["sessions", "create", "--id", "t", "--ttl", "-5s"],
    ["sessions", "list", "--where", "nokey"],
    ["sessions", "list", "--where", "n:=notjson"],
    ["sessions", "list", "--where", "k" * 300 + "=v"],
]


@pytest.mark.parametrize("args", BAD_OPTIONS, ids=lambda a: " ".join(a[:3]))
def test_bad_option_values_exit_2_and_change_nothing(store_target: str, args: list[str]) -> None:
    ok(store_target, "sessions", "append", "s", "--content", "hi")
    before = js(store_target, "sessions", "show", "s")
    r = run(store_target, *args, stdin='{"id": "r"}')
    line = one_error(r, 2)
    assert args[-1].split("=")[0].lstrip("-") in line or "--" in line
    assert js(store_target, "sessions", "show", "s") == before


def test_every_integer_option_has_a_range_within_bigint() -> None:
    """Checked once, by the parser: every integer option of every command has both bounds."""
    from typer.main import get_command

    from agentstate.cli import app
    from agentstate.cli.common import RootGroup

    root = get_command(app)
    seen = []

    def walk(cmd: object, ctx: object) -> None:
        for p in getattr(cmd, "params", []):
            t = getattr(p, "type", None)
            if type(t).__name__ in ("IntParamType", "IntRange") and not getattr(p, "count", False):  # -v -v
                assert type(t).__name__ == "IntRange" and t.min is not None and t.max is not None, (cmd, p.name)
                assert t.max <= MAX_INT
                seen.append(p.name)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub, ctx)

    from agentstate.cli.common import click

    ctx = click.Context(root)
    for name in RootGroup.registry:
        walk(root.get_command(ctx, name), ctx)
    assert {"limit", "last", "expect_seq", "expect_serial", "max_responses", "max_item_bytes"} <= set(seen)


def test_library_limits_refuse_before_sql(tmp_path: Path) -> None:
    from agentstate import ResponseStore, SessionStore, StateStore
    from agentstate.errors import InvalidInput
    from agentstate.state.planner import apply

    s = SessionStore(tmp_path)
    s.append("s", [{"role": "user", "content": "x"}])
    for call in (lambda: s.show("s", last=MAX_INT + 1), lambda: s.items("s", limit=10**20),
                 lambda: s.append("s", [{}], expect_seq=MAX_INT + 1), lambda: s.context("s", limit=-1),
                 lambda: ResponseStore(tmp_path, max_responses=MAX_INT + 1),
                 lambda: apply(StateStore(tmp_path), sets=[("a", 1)], expect_serial=-1),
                 lambda: s.create(title="t" * 201)):
        with pytest.raises(InvalidInput):
            call()
    assert s.show("s", last=MAX_INT)[1][0].data["content"] == "x"


# -- one JSON shape for one act ---------------------------------------------------------------------


def test_rm_reports_deleted_ids_in_every_group(store_target: str) -> None:
    ok(store_target, "apply", "--set", "a=1", "--set", "b=2")
    assert js(store_target, "rm", "a", "b")["deleted"] == ["a", "b"]
    for sid in ("s1", "s2"):
        ok(store_target, "sessions", "append", sid, "--content", "x")
    assert js(store_target, "sessions", "rm", "s1", "s2") == {"deleted": ["s1", "s2"]}
    for rid in ("r1", "r2"):
        ok(store_target, "responses", "save", "-", stdin=json.dumps({"id": rid}))
    assert js(store_target, "responses", "rm", "r1") == {"deleted": ["r1"]}
    assert js(store_target, "responses", "rm", "r2") == {"deleted": ["r2"]}


def test_save_and_append_have_one_shape_whatever_the_count(store_target: str) -> None:
    one = js(store_target, "responses", "save", "-", stdin='{"id": "a"}')
    many = js(store_target, "responses", "save", "-", stdin='[{"id": "b"}, {"id": "c", "previous_response_id": "b"}]')
    assert set(one) == set(many) == {"saved"} and len(one["saved"]) == 1 and len(many["saved"]) == 2
    assert set(one["saved"][0]) == set(many["saved"][1])
    one = js(store_target, "sessions", "append", "s", "{}")
    many = js(store_target, "sessions", "append", "s", "{}", "{}")
    assert set(one) == set(many) == {"session_id", "items"} and [len(one["items"]), len(many["items"])] == [1, 2]


def test_the_stored_payload_is_under_data_everywhere(store_target: str) -> None:
    ok(store_target, "sessions", "append", "s", '{"role": "user", "content": "q"}')
    assert js(store_target, "sessions", "show", "s")["items"][0]["data"] == {"role": "user", "content": "q"}
    ok(store_target, "responses", "save", "-", stdin='{"id": "r1", "z": 1}')
    ok(store_target, "responses", "save", "-", stdin='{"id": "r2", "previous_response_id": "r1"}')
    got = js(store_target, "responses", "get", "r1")
    assert got["data"] == {"id": "r1", "z": 1} and got["id"] == "r1" and got["deleted_at"] is None
    assert [x["data"]["id"] for x in js(store_target, "responses", "chain", "r2")["responses"]] == ["r1", "r2"]
    assert [x["data"]["id"] for x in js(store_target, "responses", "list")["responses"]] == ["r2", "r1"]
    # without --json, get still prints the response exactly as saved
    assert json.loads(ok(store_target, "responses", "get", "r1").stdout) == {"id": "r1", "z": 1}


# -- --tenant and the state document ------------------------------------------------------------------


@pytest.mark.parametrize("args", [["show"], ["list"], ["apply", "--set", "a=1"], ["plan", "--set", "a=1"],
                                  ["rm", "a"], ["lock", "status"], ["doctor"], ["force-unlock", "x"],
                                  ["migrate"]])
def test_tenant_is_refused_on_state_commands(tmp_path: Path, args: list[str]) -> None:
    d = str(tmp_path / "s")
    line = one_error(run(d, *args, "--tenant", "alice"), 2)
    assert "--tenant" in line and "shared by the whole store" in line
    assert not (tmp_path / "s" / "state.json").exists()


def test_agentstate_tenant_does_not_affect_state_commands(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    for tenant in ("alice", "not a valid tenant!"):
        r = run(d, "apply", "--set", f"who={tenant[:5]}", env=_env(AGENTSTATE_TENANT=tenant))
        assert r.returncode == 0, r.stderr
    assert json.loads(run(d, "show", "--json", env=_env(AGENTSTATE_TENANT="bob")).stdout)["resources"] == {
        "who": "not a"}


# -- locks ------------------------------------------------------------------------------------------


def test_lock_status_shows_both_locks(store_target: str) -> None:
    ok(store_target, "sessions", "append", "s", "--content", "x")
    st = js(store_target, "lock", "status")
    assert st["held"] is False and st["database"]["held"] is False
    text = ok(store_target, "lock", "status").stdout
    assert "database lock (sessions, responses): free" in text
    if not store_target.startswith("postgres"):
        assert st["path"].endswith("state.json.lock") and st["database"]["path"].endswith("agentstate.db.lock")


def test_a_sessions_lock_timeout_names_lock_status(tmp_path: Path) -> None:
    from agentstate.state.lock import Lock

    d = tmp_path / "s"
    ok(str(d), "sessions", "append", "s", "--content", "x")
    with Lock(str(d / "agentstate.db.lock")) as _held:
        r = run(str(d), "sessions", "append", "s", "--content", "y", "--lock-timeout", "0")
        line = one_error(r, 3)
        assert f"agentstate lock status --dir {d}" in line
        st = js(str(d), "lock", "status")
        assert st["held"] is False and st["database"]["held"] is True


# -- the commands and flags each group has ----------------------------------------------------------


def test_sessions_pop_rm_prune_export(store_target: str, tmp_path: Path) -> None:
    ok(store_target, "sessions", "append", "s", "--content", "one")
    ok(store_target, "sessions", "append", "s", "--content", "two")
    popped = js(store_target, "sessions", "pop", "s")
    assert popped["session_id"] == "s" and [i["data"]["content"] for i in popped["items"]] == ["two"]
    assert js(store_target, "sessions", "pop", "s")["items"][0]["seq"] == 1
    assert js(store_target, "sessions", "pop", "s")["items"] == []
    one_error(run(store_target, "sessions", "pop", "ghost"), 6)
    ok(store_target, "sessions", "append", "t", "--content", "x")
    line = one_error(run(store_target, "sessions", "rm", "s", "ghost", "t"), 6)  # all or nothing
    assert "ghost" in line
    assert js(store_target, "sessions", "list")["total"] == 2
    assert js(store_target, "sessions", "prune", "--older-than", "0", "--dry-run") == {
        "would_delete": ["s", "t"], "dry_run": True}
    line = one_error(run(store_target, "sessions", "prune", "--older-than", "0"), 2)
    assert "--yes" in line and "nothing was deleted" in line
    assert js(store_target, "sessions", "list")["total"] == 2
    out = tmp_path / "t.jsonl"
    assert ok(store_target, "sessions", "export", "t", "-o", str(out)).stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes() == ok(store_target, "sessions", "export", "t").stdout.encode()
    assert js(store_target, "sessions", "prune", "--older-than", "0s", "--yes") == {"deleted": ["s", "t"]}


def test_export_to_a_device_or_fifo_writes_to_it_and_never_replaces_it(store_target: str, tmp_path: Path) -> None:
    """-o FILE replaces a regular file whole (temp + rename); a device or a FIFO is written to as it is. It
    used to be renamed over: `-o /dev/full` succeeded and left a regular file where the device was."""
    import threading

    assert os.geteuid() == 0, "this test makes a device node (CI runs as root)"
    ok(store_target, "sessions", "append", "t", "--content", "x")
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o600, os.makedev(1, 7))  # /dev/full's numbers: every write is ENOSPC
    for args in (["sessions", "export", "t"], ["responses", "export"]):
        assert "ENOSPC" in one_error(run(store_target, *args, "-o", str(full)), 1)
        assert stat.S_ISCHR(full.stat().st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert ok(store_target, "sessions", "export", "t", "-o", str(fifo)).stdout == ""
    reader.join(30)
    assert got == [ok(store_target, "sessions", "export", "t").stdout.encode()]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    (tmp_path / "dir").mkdir()
    assert "directory" in one_error(run(store_target, "sessions", "export", "t", "-o", str(tmp_path / "dir")), 1)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp file left


def test_responses_list_deleted_prune_export_import(store_target: str, tmp_path: Path) -> None:
    for body in ('{"id": "a"}', '{"id": "b", "previous_response_id": "a"}', '{"id": "c"}'):
        ok(store_target, "responses", "save", "-", stdin=body)
    ok(store_target, "responses", "rm", "c")
    assert [x["id"] for x in js(store_target, "responses", "list")["responses"]] == ["b", "a"]
    page = js(store_target, "responses", "list", "--include-deleted")
    assert [(x["id"], x["deleted_at"] is not None) for x in page["responses"]] == [
        ("c", True), ("b", False), ("a", False)] and page["total"] == 3
    line = one_error(run(store_target, "responses", "get", "c"), 6)
    assert "--include-deleted" in line
    exported = ok(store_target, "responses", "export").stdout
    lines = [json.loads(x) for x in exported.splitlines()]
    assert lines[0]["type"] == "agentstate.responses" and [x["id"] for x in lines[1:]] == ["a", "b", "c"]
    f = tmp_path / "r.jsonl"
    f.write_text(exported)
    one_error(run(store_target, "responses", "import", str(f)), 5)  # the ids are taken: nothing imported
    env = None
    r = run(store_target, "responses", "import", str(f), "--tenant", "copy", "--json", env=env)
    assert r.returncode == 0 and [x["id"] for x in json.loads(r.stdout)["saved"]] == ["a", "b", "c"], r.stderr
    r = run(store_target, "responses", "list", "--include-deleted", "--tenant", "copy", "--json")
    assert [(x["id"], x["deleted_at"] is not None) for x in json.loads(r.stdout)["responses"]] == [
        ("c", True), ("b", False), ("a", False)]
    one_error(run(store_target, "responses", "prune"), 2)  # says what to prune
    one_error(run(store_target, "responses", "prune", "--older-than", "0"), 2)  # needs --yes
    assert js(store_target, "responses", "prune", "--deleted", "--dry-run") == {"would_delete": ["c"],
                                                                                "dry_run": True}
    assert js(store_target, "responses", "prune", "--deleted") == {"deleted": ["c"]}
    assert js(store_target, "responses", "prune", "--older-than", "30d") == {"deleted": []}
    assert js(store_target, "responses", "prune", "--older-than", "0", "--yes") == {"deleted": ["a", "b"]}
    assert js(store_target, "responses", "list", "--include-deleted")["total"] == 0


def test_plan_takes_set_and_delete_like_apply(store_target: str) -> None:
    ok(store_target, "apply", "--set", "a=1", "--set", "b=2")
    p = js(store_target, "plan", "--set", "a=5", "--set", "c=x", "--delete", "b")
    assert (p["created"], p["updated"], p["deleted"]) == (["c"], ["a"], ["b"])
    assert js(store_target, "show")["resources"] == {"a": 1, "b": 2}  # plan writes nothing
    one_error(run(store_target, "plan"), 2)


@pytest.mark.parametrize("cmd", ["get", "chain", "list", "rm"])
def test_max_responses_is_offered_only_where_it_acts(tmp_path: Path, cmd: str) -> None:
    args = ["responses", cmd] + ([] if cmd == "list" else ["r"])
    one_error(run(str(tmp_path), *args, "--max-responses", "3"), 2)
    help_text = subprocess.run([sys.executable, "-m", "agentstate", *args[:2], "--help"], capture_output=True,
                               text=True, env=_env()).stdout
    assert "--max-responses" not in help_text


# -- messages name the real cause --------------------------------------------------------------------


def test_export_to_a_full_stdout_is_about_stdout(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    ok(d, "sessions", "append", "s", "--content", "x")
    for args in (["sessions", "export", "s"], ["responses", "export"]):
        with open("/dev/full", "w") as full:
            r = run(d, *args, stdout=full)
        line = one_error(r, 1)
        assert "stdout" in line and "--dir" not in line and "stored state" not in line


def test_session_and_response_errors_do_not_mention_the_state(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    for args, stdin in ((["sessions", "append", "s", "{bad"], None), (["responses", "save", "-"], "{bad"),
                        (["sessions", "create", "--title", "t" * 201], None)):
        line = one_error(run(d, *args, stdin=stdin), 1)
        assert "stored state" not in line and "nothing was changed" in line


def test_a_lost_connection_while_committing_points_to_the_group() -> None:
    import psycopg

    from agentstate.sql.pg_conn import server_error

    e = psycopg.OperationalError("server closed the connection unexpectedly")
    for op, command in (("sessions import", "agentstate sessions show ID"),
                        ("responses save", "agentstate responses get ID"), ("apply", "agentstate show")):
        err = server_error(e, doing=f"writing ({op})", where="pg", committing=True)
        assert f"`{command}`" in str(err), str(err)


def test_migrate_refuses_a_directory(tmp_path: Path) -> None:
    line = one_error(run(str(tmp_path / "s"), "migrate"), 2)
    assert "PostgreSQL" in line
    assert not (tmp_path / "s").exists()


def test_help_lists_every_environment_variable_and_doctor_says_what_it_checks() -> None:
    def help_of(*args: str) -> str:
        return " ".join(subprocess.run([sys.executable, "-m", "agentstate", *args, "--help"], capture_output=True,
                                       text=True, env=_env(COLUMNS="200")).stdout.split())

    root = help_of()
    import re

    used = set(re.findall(r"AGENTSTATE_[A-Z_]+", "".join(
        p.read_text() for p in (Path(__file__).parent.parent / "agentstate").rglob("*.py"))))
    for var in sorted(used):
        assert var in root, var
    doctor = help_of("doctor")
    for word in ("state.json.bak", "agentstate.db", "integrity", "response chains", "--repair"):
        assert word in doctor, word


def test_a_session_title_is_at_most_200_characters(store_target: str) -> None:
    ok(store_target, "sessions", "create", "--id", "ok", "--title", "t" * 200)
    line = one_error(run(store_target, "sessions", "create", "--id", "long", "--title", "t" * 100_000), 1)
    assert "200" in line
    assert [s["id"] for s in js(store_target, "sessions", "list")["sessions"]] == ["ok"]
