"""The CLI contract, in process with typer's CliRunner: commands, flags, exit codes, JSON shapes, errors.

Real subprocesses (argv bytes, permissions, a lock held by another process, imports, TTYs) are in
integration_tests/test_cli_subprocess.py; concurrency in integration_tests/test_cli_concurrent.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from backend_view import fingerprint, is_pg
from typer.testing import CliRunner

import agentstate
from agentstate.cli import app

runner = CliRunner()


def run(args: list[str], input: str | bytes | None = None, env: dict | None = None):
    env = {"AGENTSTATE_DIR": None, "AGENTSTATE_LOCK_TIMEOUT": None, "AGENTSTATE_LOG_LEVEL": None,
           "AGENTSTATE_LOG_FORMAT": None, **(env or {})}
    return runner.invoke(app, args, input=input, env=env)


def snapshot(d: Path, mtimes: bool = True) -> dict[str, tuple[bytes, int]] | None:
    """Every file in the store directory: bytes and mtime. None if the directory does not exist.

    Commands that take the lock write the holder record into state.json.lock and empty it again,
    so its mtime moves; ``mtimes=False`` compares bytes only (the contract: every stored byte).
    """
    if not d.exists():
        return None
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns if mtimes else 0) for p in sorted(d.iterdir())}


def assert_one_error_line(r, code: int) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 5, lines
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def assert_json_error(r, code: int, name: str) -> dict:
    assert_one_error_line(r, code)
    doc = json.loads(r.stdout)
    assert set(doc) == {"error"}
    err = doc["error"]
    assert err["code"] == name and err["exit_code"] == code and err["message"], err
    return err


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    r = run(["apply", "--dir", str(d), "--set", "a=1", "--set", 'b={"x": [1, 2]}', "--set", "c=hello"])
    assert r.exit_code == 0, r.stderr
    return d


@pytest.fixture
def at(store_target: str) -> list[str]:
    """The location options of a store on every backend (``--dir D`` or ``--url URL``), seeded like ``store``."""
    opt = ["--url", store_target] if is_pg(store_target) else ["--dir", store_target]
    r = run(["apply", *opt, "--set", "a=1", "--set", 'b={"x": [1, 2]}', "--set", "c=hello"])
    assert r.exit_code == 0, r.stderr
    return opt


def doc_at(at: list[str]) -> dict:
    r = run(["show", *at, "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def write_spec(tmp_path: Path, resources, name: str = "spec.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"resources": resources}))
    return p


def doc(d: Path) -> dict:
    r = run(["show", "--dir", str(d), "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


# -- version, help, usage errors ----------------------------------------------------------------


def test_version_and_help() -> None:
    r = run(["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"agentstate {agentstate.__version__}"
    r = run(["--help"])
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    for piece in ("0 success", "2 usage error", "3 lock not acquired", "4 state corrupted", "5 conflict",
                  "6 not found", "apply", "plan", "show", "list", "rm", "lock", "force-unlock", "doctor"):
        assert piece in text, piece
    for cmd in (["apply"], ["plan"], ["show"], ["list"], ["rm"], ["lock", "status"], ["force-unlock"], ["doctor"],
                ["lock"]):
        r = run([*cmd, "--help"])
        assert r.exit_code == 0, cmd
        assert "6 not found" in " ".join(r.stdout.split()), cmd
    apply_help = " ".join(run(["apply", "--help"]).stdout.split())
    for opt in ("--set", "--delete", "--expect-serial", "--lock-timeout", "--dir", "--json", "--log-level",
                "--log-format", "-v"):
        assert opt in apply_help, opt
    show_help = " ".join(run(["show", "--help"]).stdout.split())
    assert "--lock-timeout" not in show_help and "--dir" in show_help


@pytest.mark.parametrize(
    "args",
    [
        [],  # no command: one error line, not the help page
        ["lock"],
        ["bogus"],
        ["show", "--bogus"],
        ["plan"],  # missing argument
        ["rm"],
        ["force-unlock"],
        ["lock", "bogus"],
        ["lock", "status", "--bogus"],
        ["apply", "--set", "a=1", "--lock-timeout", "soon"],
        ["apply", "--set", "a=1", "--lock-timeout", "-1"],
        ["rm", "a", "--lock-timeout", "1 fortnight"],
        ["doctor", "--repair", "--lock-timeout", "x"],
        ["apply", "--set", "a=1", "--expect-serial", "one"],
        ["apply"],  # nothing to apply
        ["show", "--log-level", "loud"],
        ["show", "--log-format", "xml"],
        ["show", "--log-level"],  # option missing its value
        ["show", "a", "b"],  # extra argument
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    d = tmp_path / "s"
    r = run([*args, "--dir", str(d)] if args and args[0] not in ("bogus", "lock") else args)
    line = assert_one_error_line(r, 2)
    assert r.stdout == ""
    assert "--help" in line or "use" in line or "must" in line or "invalid" in line or "nothing" in line, line
    assert not d.exists()


def test_usage_error_with_json_also_prints_json(tmp_path: Path) -> None:
    r = run(["show", "--json", "--bogus"])
    assert assert_json_error(r, 2, "usage")["message"].startswith("No such option")
    r = run(["apply", "--json", "--dir", str(tmp_path), "--set", "a=1", "--lock-timeout", "later"])
    assert "--lock-timeout" in assert_json_error(r, 2, "usage")["message"]


def test_bad_lock_timeout_from_env_is_a_usage_error_for_writers_only(store: Path) -> None:
    before = snapshot(store)
    r = run(["apply", "--dir", str(store), "--set", "z=1"], env={"AGENTSTATE_LOCK_TIMEOUT": "eventually"})
    assert "eventually" in assert_one_error_line(r, 2)
    r = run(["show", "--dir", str(store), "--json"], env={"AGENTSTATE_LOCK_TIMEOUT": "eventually"})
    assert r.exit_code == 0
    assert snapshot(store) == before


def test_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "envstore"
    r = run(["apply", "--set", "k=1"], env={"AGENTSTATE_DIR": str(d)})
    assert r.exit_code == 0, r.stderr
    assert json.loads(run(["list", "--json"], env={"AGENTSTATE_DIR": str(d)}).stdout) == ["k"]
    monkeypatch.chdir(tmp_path)  # the default is ./.agentstate (also when AGENTSTATE_DIR is empty)
    assert run(["apply", "--set", "d=1"]).exit_code == 0
    assert run(["apply", "--set", "e=1"], env={"AGENTSTATE_DIR": ""}).exit_code == 0
    assert agentstate.StateStore(tmp_path / ".agentstate").read().resources == {"d": 1, "e": 1}
    assert "--dir" in assert_one_error_line(run(["apply", "--set", "f=1", "--dir", ""]), 2)


# -- apply --------------------------------------------------------------------------------------


def test_apply_spec_is_declarative(tmp_path: Path, at: list[str]) -> None:
    spec = write_spec(tmp_path, {"a": 1, "b": {"x": [1, 3]}, "d": [True, None, 1.5]})
    r = run(["apply", str(spec), *at, "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"serial": 2, "created": ["d"], "updated": ["b"], "deleted": ["c"]}
    assert list(json.loads(r.stdout)) == ["serial", "created", "updated", "deleted"]
    assert doc_at(at)["resources"] == {"a": 1, "b": {"x": [1, 3]}, "d": [True, None, 1.5]}


def test_apply_human_summary(tmp_path: Path, store: Path) -> None:
    spec = write_spec(tmp_path, {"a": 2, "n": "new"})
    r = run(["apply", str(spec), "--dir", str(store)])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[:4] == ['+ n = "new"', "~ a: 1 -> 2", '- b (was {"x":[1,2]})', '- c (was "hello")']
    assert "1 created, 1 updated, 2 deleted" in lines[-1] and "serial 2" in lines[-1]


def test_apply_from_stdin(at: list[str]) -> None:
    r = run(["apply", "-", *at, "--json"], input='{"resources": {"only": {"k": "v"}}}')
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"serial": 2, "created": ["only"], "updated": [], "deleted": ["a", "b", "c"]}


def test_set_and_delete_leave_the_rest_alone(at: list[str]) -> None:
    r = run(["apply", *at, "--set", "a=2", "--set", "new=not json {", "--set", "n=null",
             "--set", "s=\"quoted\"", "--set", "e=", "--set", "w=hello world", "--delete", "c",
             "--delete", "never-was", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"serial": 2, "created": ["e", "n", "new", "s", "w"], "updated": ["a"],
                                    "deleted": ["c"]}
    # A VALUE that does not look like JSON is a plain string; JSON values keep their type.
    assert doc_at(at)["resources"] == {"a": 2, "b": {"x": [1, 2]}, "new": "not json {", "n": None, "s": "quoted",
                                       "e": "", "w": "hello world"}


def test_set_keeps_64_bit_integers_exact(at: list[str]) -> None:
    r = run(["apply", *at, "--set", f"u={2**64 - 1}", "--set", f"i={-(2**63)}",
             "--set", "f=1.0", "--set", "t=true"])
    assert r.exit_code == 0, r.stderr
    res = doc_at(at)["resources"]
    assert res["u"] == 2**64 - 1 and res["i"] == -(2**63)
    assert res["f"] == 1.0 and isinstance(res["f"], float) and res["t"] is True


def test_set_type_change_is_an_update(store: Path) -> None:
    r = run(["apply", "--dir", str(store), "--set", "a=1.0", "--json"])  # 1 -> 1.0 is a change
    assert json.loads(r.stdout)["updated"] == ["a"]
    r = run(["apply", "--dir", str(store), "--set", "a=true", "--json"])
    assert json.loads(r.stdout)["updated"] == ["a"]


def test_apply_that_changes_nothing_writes_nothing(tmp_path: Path, store: Path) -> None:
    before = snapshot(store)
    spec = write_spec(tmp_path, {"c": "hello", "b": {"x": [1, 2]}, "a": 1})
    for args in (["apply", str(spec)], ["apply", "--set", "a=1"], ["apply", "--delete", "zz"],
                 ["apply", "--set", "c=hello", "--expect-serial", "1"]):
        r = run([*args, "--dir", str(store), "--json"])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout) == {"serial": 1, "created": [], "updated": [], "deleted": []}
        assert snapshot(store) == before, args
    r = run(["apply", str(spec), "--dir", str(store)])
    assert r.stdout.strip() == "No changes; serial 1."


def test_noop_apply_on_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    d = tmp_path / "none"
    spec = write_spec(tmp_path, {})
    r = run(["apply", str(spec), "--dir", str(d), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["serial"] == 0
    assert run(["apply", "--delete", "x", "--dir", str(d)]).exit_code == 0
    assert not d.exists()


def test_expect_serial(at: list[str]) -> None:
    r = run(["apply", *at, "--set", "a=5", "--expect-serial", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["serial"] == 2
    before = fingerprint(at[1])
    r = run(["apply", *at, "--set", "a=6", "--expect-serial", "1", "--json"])
    err = assert_json_error(r, 5, "conflict")
    assert "serial 2" in err["message"] and err["serial"] == 2
    assert fingerprint(at[1]) == before
    r = run(["rm", "a", *at, "--expect-serial", "7"])
    assert_one_error_line(r, 5)
    assert fingerprint(at[1]) == before


def test_apply_spec_and_set_together(tmp_path: Path, at: list[str]) -> None:
    spec = write_spec(tmp_path, {"a": 1, "x": 1})
    r = run(["apply", str(spec), "--set", "x=2", "--delete", "a", *at, "--json"])
    assert json.loads(r.stdout) == {"serial": 2, "created": ["x"], "updated": [], "deleted": ["a", "b", "c"]}
    assert doc_at(at)["resources"] == {"x": 2}


# -- bad input: exit 1, one line, nothing stored changes -------------------------------------------

BAD_SPECS = {
    "malformed": b'{"resources": {"a": 1',
    "not-an-object": b"[1, 2]",
    "string": b'"resources"',
    "resources-not-object": b'{"resources": [1]}',
    "resources-null": b'{"resources": null}',
    "no-resources": b'{"resource": {}}',
    "unknown-field": b'{"resources": {}, "extra": 1}',
    "nan": b'{"resources": {"a": NaN}}',
    "infinity": b'{"resources": {"a": Infinity}}',
    "big-int": b'{"resources": {"a": 18446744073709551616}}',
    "big-negative-int": b'{"resources": {"a": [-9223372036854775809]}}',
    "deep-10000": b'{"resources": {"a": ' + b"[" * 10000 + b"]" * 10000 + b"}}",
    "deep-300": b'{"resources": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}",
    "bad-utf8": b'{"resources": {"a": "\xff\xfe"}}',
    "bad-utf8-key": b'{"resources": {"\xc3\x28": 1}}',
    "lone-surrogate": b'{"resources": {"a": "\\ud800"}}',
    "empty": b"",
    "whitespace": b" \n\t ",
    "control-char-address": b'{"resources": {"a\\u0007b": 1}}',
    "newline-address": b'{"resources": {"a\\nb": 1}}',
    "empty-address": b'{"resources": {"": 1}}',
    "long-address": b'{"resources": {"' + b"x" * 257 + b'": 1}}',
    "trailing-garbage": b'{"resources": {}} x',
}


@pytest.mark.parametrize("name", sorted(BAD_SPECS))
@pytest.mark.parametrize("command", ["apply", "plan"])
def test_bad_spec_refused(tmp_path: Path, store: Path, name: str, command: str) -> None:
    spec = tmp_path / "bad.json"
    spec.write_bytes(BAD_SPECS[name])
    before = snapshot(store)
    r = run([command, str(spec), "--dir", str(store)])
    assert_one_error_line(r, 1)
    assert r.stdout == ""
    r = run([command, str(spec), "--dir", str(store), "--json"])
    assert_json_error(r, 1, "invalid_input")
    r = run([command, "-", "--dir", str(store)], input=BAD_SPECS[name])
    assert_one_error_line(r, 1)
    assert snapshot(store) == before


def test_big_int_is_refused_not_rounded(tmp_path: Path, store: Path) -> None:
    spec = tmp_path / "big.json"
    spec.write_bytes(b'{"resources": {"a": 123456789012345678901234567890}}')
    line = assert_one_error_line(run(["apply", str(spec), "--dir", str(store)]), 1)
    assert "64-bit" in line
    assert doc(store)["resources"]["a"] == 1


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_spec(tmp_path: Path, store: Path, what: str) -> None:
    path = tmp_path / "nope.json" if what == "missing" else tmp_path
    before = snapshot(store)
    line = assert_one_error_line(run(["apply", str(path), "--dir", str(store)]), 1)
    assert str(path) in line
    assert snapshot(store) == before


BAD_ADDRESSES = ["", "a\x00b", "tab\there", "nl\n", "del\x7f", "c1\x85", "x" * 257]


@pytest.mark.parametrize("address", BAD_ADDRESSES, ids=range(len(BAD_ADDRESSES)))
def test_bad_addresses_refused_everywhere(store: Path, address: str) -> None:
    before = snapshot(store)
    for args in (["apply", "--set", f"{address}=1"], ["apply", "--delete", address], ["show", address],
                 ["rm", address], ["rm", "a", address]):
        r = run([*args, "--dir", str(store)])
        line = assert_one_error_line(r, 1)
        assert "address" in line, (args, line)
    assert snapshot(store) == before


def test_address_limits(store: Path) -> None:
    ok = "é" * 256  # 256 characters (512 bytes) is allowed
    assert run(["apply", "--set", f"{ok}=1", "--dir", str(store)]).exit_code == 0
    assert run(["show", ok, "--dir", str(store), "--json"]).stdout.strip() == "1"
    assert run(["apply", "--set", "a.b/c:d[0] e=1", "--dir", str(store)]).exit_code == 0


@pytest.mark.parametrize(
    "item",
    ["noequals", f"a={2**64}", f"a={-(2**63) - 1}", "a=" + "[" * 10000 + "]" * 10000, "a=" + "[" * 300 + "]" * 300,
     "a=" + '{"k":' * 300 + "1" + "}" * 300, "a=1e400", 'a={"x": [-1e999]}', "a=\udcff"],
    ids=["no-equals", "big", "small", "deep-10000", "deep-300", "deep-objects", "inf", "nested-inf", "surrogate"],
)
def test_bad_set_refused(store: Path, item: str) -> None:
    """JSON that cannot be stored exactly is refused, never kept as a string (only non-JSON text is)."""
    before = snapshot(store)
    assert_one_error_line(run(["apply", "--set", item, "--dir", str(store)]), 1)
    assert snapshot(store) == before
    assert doc(store)["resources"] == {"a": 1, "b": {"x": [1, 2]}, "c": "hello"}


# -- plan ---------------------------------------------------------------------------------------


def test_plan_writes_nothing(tmp_path: Path, store: Path) -> None:
    spec = write_spec(tmp_path, {"a": 2, "b": {"x": [1, 2]}, "n": 1})
    before = snapshot(store)
    r = run(["plan", str(spec), "--dir", str(store), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"serial": 1, "created": ["n"], "updated": ["a"], "deleted": ["c"]}
    r = run(["plan", str(spec), "--dir", str(store)])
    assert r.stdout.splitlines() == ["+ n = 1", "~ a: 1 -> 2", '- c (was "hello")',
                                     "Plan: 1 created, 1 updated, 1 deleted (state at serial 1)."]
    assert snapshot(store) == before
    missing = tmp_path / "missing-store"
    r = run(["plan", str(spec), "--dir", str(missing), "--json"])
    assert json.loads(r.stdout) == {"serial": 0, "created": ["a", "b", "n"], "updated": [], "deleted": []}
    assert not missing.exists()


def test_reads_work_while_locked_and_writes_time_out(tmp_path: Path, store: Path) -> None:
    spec = write_spec(tmp_path, {"a": 9})
    lk = agentstate.StateStore(store).lock()
    holder = lk.acquire(0, "long-agent-run")
    try:
        before = snapshot(store)
        assert json.loads(run(["plan", str(spec), "--dir", str(store), "--json"]).stdout)["updated"] == ["a"]
        assert doc(store)["resources"]["a"] == 1
        assert run(["show", "a", "--dir", str(store)]).exit_code == 0
        assert run(["list", "--dir", str(store)]).exit_code == 0
        assert run(["doctor", "--dir", str(store)]).exit_code == 0
        st = json.loads(run(["lock", "status", "--dir", str(store), "--json"]).stdout)
        assert st["held"] is True and st["holder"]["lock_id"] == holder.lock_id and st["holder_alive"] is True
        text = run(["lock", "status", "--dir", str(store)]).stdout
        assert "long-agent-run" in text and holder.lock_id in text and "holder process: alive" in text
        assert f"next: wait for PID {os.getpid()}" in text
        for args in (["apply", str(spec)], ["apply", "--set", "z=1"], ["rm", "a"], ["doctor", "--repair"]):
            r = run([*args, "--dir", str(store), "--lock-timeout", "0", "--json"])
            err = assert_json_error(r, 3, "locked")
            assert err["holder"]["lock_id"] == holder.lock_id
            assert "long-agent-run" in r.stderr and f"stop PID {os.getpid()}" in r.stderr, r.stderr
            assert "force-unlock" not in r.stderr  # it would not help: the holder is alive
        r = run(["apply", "--set", "z=1", "--dir", str(store), "--lock-timeout", "300ms"])
        assert_one_error_line(r, 3)
        # force-unlock: a held lock is never removed, whatever the ID, with or without --force.
        for force in ([], ["--force"], ["not-the-id"]):
            lock_id = force[0] if force and not force[0].startswith("-") else holder.lock_id
            r = run(["force-unlock", lock_id, *[f for f in force if f.startswith("-")], "--dir", str(store),
                     "--json"])
            err = assert_json_error(r, 3, "locked")
            assert str(os.getpid()) in err["message"] and err["holder"]["lock_id"] == holder.lock_id
        assert snapshot(store) == before
        assert json.loads(run(["lock", "status", "--dir", str(store), "--json"]).stdout)["held"] is True
    finally:
        lk.release()
    assert run(["apply", "--set", "z=1", "--dir", str(store), "--lock-timeout", "0"]).exit_code == 0


# -- show, list, rm -----------------------------------------------------------------------------


def test_show_json_document_and_value(at: list[str]) -> None:
    d = doc_at(at)
    assert d["serial"] == 1 and d["resources"] == {"a": 1, "b": {"x": [1, 2]}, "c": "hello"}
    assert isinstance(d["lineage"], str) and len(d["lineage"]) == 36 and d["updated_at"]
    assert d["format_version"] == 2
    r = run(["show", "b", *at, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"x": [1, 2]}
    assert json.loads(run(["show", "c", *at, "--json"]).stdout) == "hello"


def test_show_plain_for_people(store: Path) -> None:
    r = run(["show", "--dir", str(store)])
    assert r.exit_code == 0
    assert "serial: 1" in r.stdout and '  b = {"x":[1,2]}' in r.stdout and "\x1b[" not in r.stdout
    r = run(["show", "b", "--dir", str(store)])
    assert json.loads(r.stdout) == {"x": [1, 2]}


def test_show_of_a_missing_store(tmp_path: Path) -> None:
    d = tmp_path / "nothing"
    r = run(["show", "--dir", str(d), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout) | {"updated_at": None} == {"format_version": 2, "serial": 0, "lineage": None,
                                                          "updated_at": None, "resources": {}}
    assert run(["list", "--dir", str(d), "--json"]).stdout.strip() == "[]"
    assert run(["list", "--dir", str(d)]).stdout == ""
    assert not d.exists()


def test_show_missing_address_is_6(at: list[str]) -> None:
    err = assert_json_error(run(["show", "zz", *at, "--json"]), 6, "not_found")
    assert "zz" in err["message"]
    line = assert_one_error_line(run(["show", "zz", *at]), 6)
    assert "agentstate list" in line


def test_list(at: list[str]) -> None:
    assert run(["list", *at]).stdout == "a\nb\nc\n"
    assert json.loads(run(["list", *at, "--json"]).stdout) == ["a", "b", "c"]


def test_rm(at: list[str]) -> None:
    r = run(["rm", "a", "c", *at, "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"serial": 2, "created": [], "updated": [], "deleted": ["a", "c"]}
    assert doc_at(at)["resources"] == {"b": {"x": [1, 2]}}
    before = fingerprint(at[1])
    err = assert_json_error(run(["rm", "b", "zz", *at, "--json"]), 6, "not_found")
    assert err["addresses"] == ["zz"]
    assert fingerprint(at[1]) == before  # all or nothing: b stays
    r = run(["rm", "b", *at])
    assert r.exit_code == 0 and r.stdout.splitlines() == ['- b (was {"x":[1,2]})', "Removed 1 resource; serial 3."]


# -- corrupted, newer format, doctor ---------------------------------------------------------------


def test_corrupted_without_backup_is_4(store: Path) -> None:
    state = store / "state.json"
    data = bytearray(state.read_bytes())
    data[-5] ^= 1
    state.write_bytes(bytes(data))
    before = snapshot(store)
    for args in (["show"], ["show", "a"], ["list"], ["apply", "--set", "q=1"], ["rm", "a"]):
        r = run([*args, "--dir", str(store), "--json"])
        err = assert_json_error(r, 4, "corrupted")
        assert err["tried"] and "checksum" in err["message"], err
    r = run(["doctor", "--dir", str(store)])
    assert r.exit_code == 4 and "BAD  state" in r.stdout
    assert snapshot(store) == before
    r = run(["doctor", "--repair", "--dir", str(store)])  # takes the lock: bytes unchanged
    assert_one_error_line(r, 4)
    assert {k: v[0] for k, v in before.items()} == {k: v[0] for k, v in snapshot(store).items()}


def test_doctor_reports_and_repairs(tmp_path: Path, store: Path) -> None:
    assert run(["apply", "--set", "a=2", "--dir", str(store)]).exit_code == 0  # now there is a backup
    r = run(["doctor", "--dir", str(store), "--json"])
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["ok"] is True and {f["check"] for f in out["findings"]} >= {"state", "backup", "lock", "temp files"}
    (store / "state.json").write_bytes(b'{"checksum":"sha256:0000')  # torn
    (store / "state.json.tmp-deadbeef").write_bytes(b"partial")
    before = snapshot(store)
    r = run(["doctor", "--dir", str(store)])
    assert r.exit_code == 1
    assert "BAD  state" in r.stdout and "BAD  temp files" in r.stdout and "--repair" in r.stdout
    assert snapshot(store) == before  # doctor alone changes nothing
    r = run(["doctor", "--repair", "--dir", str(store), "--json"])
    assert r.exit_code == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["repaired_serial"] == doc(store)["serial"]
    assert not (store / "state.json.tmp-deadbeef").exists()
    assert list(store.glob("state.json.corrupt-*"))
    assert doc(store)["resources"]["a"] == 1  # the backup's content (serial 1), rewritten
    assert run(["doctor", "--dir", str(store)]).exit_code == 0


def test_newer_format_is_a_conflict(store: Path) -> None:
    (store / "state.json").write_bytes(b'{"format_version": 9, "serial": 1, "lineage": "x", "resources": {}}\n')
    before = snapshot(store)
    for args in (["show"], ["apply", "--set", "q=1"], ["list"]):
        r = run([*args, "--dir", str(store), "--json"])
        err = assert_json_error(r, 5, "format_too_new")
        assert err["format_version"] == 9
    assert snapshot(store) == before


def test_force_unlock_clears_the_record_of_a_killed_holder(store: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, os, signal, agentstate\n"
            "lk = agentstate.StateStore(sys.argv[1]).lock()\n"
            "h = lk.acquire(0, 'doomed')\n"
            "print(h.lock_id, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=60)
    assert p.returncode == -9, p.stderr
    lock_id = p.stdout.strip()
    st = json.loads(run(["lock", "status", "--dir", str(store), "--json"]).stdout)
    assert st["held"] is False and st["last_holder"]["lock_id"] == lock_id and st["stale"] is True
    text = run(["lock", "status", "--dir", str(store)]).stdout
    assert text.startswith("free") and "doomed" in text and f"agentstate force-unlock {lock_id}" in text
    assert_one_error_line(run(["force-unlock", "not-the-id", "--dir", str(store)]), 5)
    r = run(["force-unlock", lock_id, "--dir", str(store)])
    assert r.exit_code == 0 and r.stdout.startswith("unlocked: cleared the stale record"), r.stdout + r.stderr
    assert json.loads(run(["lock", "status", "--dir", str(store), "--json"]).stdout)["last_holder"] is None
    assert_one_error_line(run(["force-unlock", lock_id, "--dir", str(store)]), 6)


def test_force_unlock_without_a_lock_is_6(store: Path) -> None:
    assert_one_error_line(run(["force-unlock", "some-id", "--dir", str(store)]), 6)
    r = run(["lock", "status", "--dir", str(store)])
    assert r.exit_code == 0 and r.stdout.startswith("free")


# -- I/O errors, internal errors, logging -------------------------------------------------------


def test_store_under_a_file_is_an_io_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"not a dir")
    for args in (["apply", "--set", "a=1"], ["show"], ["list"], ["rm", "a"], ["lock", "status"],
                 ["force-unlock", "x"], ["doctor", "--repair"]):
        r = run([*args, "--dir", str(f / "store"), "--json"])
        err = assert_json_error(r, 1, "io_error")
        assert str(f) in err["message"], (args, err)
    assert f.read_bytes() == b"not a dir"


def test_internal_error_is_one_line_unless_debug(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agentstate.state.planner

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(agentstate.state.planner, "apply", boom)
    r = run(["apply", "--set", "a=3", "--dir", str(store)])
    line = assert_one_error_line(r, 1)
    assert "kaboom" in line and "--debug" in line
    r = run(["apply", "--set", "a=3", "--dir", str(store), "--debug"])
    assert r.exit_code == 1 and "Traceback" in r.stderr and r.stderr.splitlines()[-1].startswith("error:")


def test_a_signal_outside_a_commands_run_names_its_signal(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while the command is being resolved (its module imported, its options parsed) is outside
    run(): typer's own main() turned any KeyboardInterrupt there into a silent exit 130, so a SIGTERM
    came out as exit 130 with no message. RootGroup reports it: exit 143, one line (and JSON with --json)."""
    import signal

    from agentstate.cli.common import RootGroup
    from agentstate.state import signals
    from agentstate.state.signals import Interruption

    monkeypatch.setattr(signals, "_last_commit", [])  # the fixture's apply ran in this process
    for sig, code, name in ((signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")):
        def landing(self, ctx, args, sig=sig):
            raise Interruption(sig)

        monkeypatch.setattr(RootGroup, "resolve_command", landing)
        line = assert_one_error_line(run(["show", "--dir", str(store)]), code)
        assert line.startswith(f"error: interrupted by {name} outside any write"), line
        err = assert_json_error(run(["show", "--dir", str(store), "--json"]), code, "interrupted")
        assert err["signal"] == sig and err["outcome"] == "abandoned", err


def test_a_signal_python_reraised_as_a_runtime_error_names_its_signal(store: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11 re-raises an exception from ``__set_name__`` as a RuntimeError (its cause): a SIGTERM
    landing while a class statement runs (a lazily imported module's dataclass) must still be exit 143,
    not an internal error."""
    import signal

    import agentstate.state.open
    from agentstate.state import signals
    from agentstate.state.signals import Interruption

    monkeypatch.setattr(signals, "_last_commit", [])  # the fixture's apply ran in this process

    class Landing:
        def __set_name__(self, owner, name):
            raise Interruption(signal.SIGTERM)

    def open_state(*a, **k):
        type("Late", (), {"field": Landing()})
        raise AssertionError("unreachable")

    monkeypatch.setattr(agentstate.state.open, "open_state", open_state)
    line = assert_one_error_line(run(["show", "--dir", str(store)]), 143)
    assert line.startswith("error: interrupted by SIGTERM outside any write"), line


def test_log_format_json(store: Path) -> None:
    r = run(["apply", "--set", "a=7", "--dir", str(store), "-v", "--log-format", "json"])
    assert r.exit_code == 0
    records = [json.loads(line) for line in r.stderr.splitlines()]
    messages = [rec["message"] for rec in records]
    assert any(m.startswith("lock ") and " acquired by PID " in m for m in messages), messages
    assert any(m.startswith("lock ") and " released by PID " in m for m in messages), messages
    assert all(rec["level"] == "info" and rec["logger"].startswith("agentstate") for rec in records)
    r = run(["apply", "--set", "a=8", "--dir", str(store), "--log-level", "INFO"])
    assert "agentstate: INFO: lock " in r.stderr and " acquired by PID " in r.stderr
    r = run(["apply", "--set", "a=9", "--dir", str(store)])  # default: warnings only
    assert r.stderr == ""



# -- global options, declared once: before or after the command ----------------------------------------


def test_global_options_before_and_after_the_command(store: Path, tmp_path: Path) -> None:
    assert run(["--dir", str(store), "list"]).stdout == "a\nb\nc\n"
    assert json.loads(run(["--dir", str(store), "--json", "list"]).stdout) == ["a", "b", "c"]
    assert json.loads(run(["--json", "show", "c", "--dir", str(store)]).stdout) == "hello"
    st = json.loads(run(["--dir", str(store), "lock", "--json", "status"]).stdout)
    assert st["held"] is False
    # given twice: the one after the command wins
    assert run(["--dir", str(tmp_path / "elsewhere"), "list", "--dir", str(store)]).stdout == "a\nb\nc\n"
    r = run(["--dir", str(store), "--lock-timeout", "5s", "apply", "--set", "g=1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["created"] == ["g"]
    for cmd in (["apply", "--set", "g=2"], ["show"]):  # a bad option is refused even where it is not used
        line = assert_one_error_line(run(["--lock-timeout", "soon", *cmd, "--dir", str(store)]), 2)
        assert line.startswith("error: --lock-timeout:"), line


def test_verbosity_flags(store: Path) -> None:
    r = run(["show", "-v", "--dir", str(store)])  # -v is a flag, not an option taking a level
    assert r.exit_code == 0 and "serial: 1" in r.stdout
    r = run(["apply", "--set", "a=5", "--dir", str(store), "-v"])
    assert r.exit_code == 0 and "INFO" in r.stderr and "DEBUG" not in r.stderr
    r = run(["-vv", "apply", "--set", "a=6", "--dir", str(store)])
    assert r.exit_code == 0 and "DEBUG" in r.stderr
    r = run(["-v", "apply", "--set", "a=7", "--dir", str(store), "-v"])  # counts add up
    assert r.exit_code == 0 and "DEBUG" in r.stderr
    r = run(["apply", "--set", "a=8", "--dir", str(store), "--log-level", "info"])
    assert "INFO" in r.stderr and "DEBUG" not in r.stderr


@pytest.mark.parametrize("args", [
    ["apply", "--delete", "--dir", "{d}"],
    ["apply", "--set", "--json", "--dir", "{d}"],
    ["rm", "a", "--expect-serial", "--json", "--dir", "{d}"],
    ["--dir", "--json", "list"],
    ["show", "--dir", "--json"],
    ["lock", "status", "--dir", "-v"],
])
def test_an_option_value_that_looks_like_an_option_is_refused(store: Path, args: list[str]) -> None:
    before = snapshot(store)
    r = run([a.replace("{d}", str(store)) for a in args])
    line = assert_one_error_line(r, 2)
    assert "needs a value" in line and "looks like an option" in line, line
    assert snapshot(store) == before


def test_an_option_value_starting_with_a_dash_needs_the_equals_form(store: Path) -> None:
    r = run(["apply", "--set=-x=1", "--dir", str(store), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["created"] == ["-x"]
    r = run(["apply", "--delete=-x", "--dir", str(store), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["deleted"] == ["-x"]
    assert run(["apply", "-", "--dir", str(store)], input='{"resources": {}}').exit_code == 0  # "-" alone is stdin


def test_url_and_dir_are_exclusive(store: Path) -> None:
    line = assert_one_error_line(run(["list", "--dir", str(store), "--url", "postgresql://nowhere/db"]), 2)
    assert "--dir" in line and "--url" in line
    line = assert_one_error_line(run(["--url", "postgresql://x/db", "show", "--dir", str(store)]), 2)
    assert "--url" in line
    line = assert_one_error_line(run(["list"], env={"AGENTSTATE_DIR": str(store),
                                                    "AGENTSTATE_URL": "postgresql://x/db"}), 2)
    assert "AGENTSTATE_DIR" in line and "AGENTSTATE_URL" in line
    # an option beats the other's variable
    r = run(["list", "--dir", str(store)], env={"AGENTSTATE_URL": "postgresql://x/db"})
    assert r.exit_code == 0 and r.stdout == "a\nb\nc\n"
    assert_one_error_line(run(["list", "--url", ""]), 2)


@pytest.mark.parametrize("var,value,args", [
    ("AGENTSTATE_LOCK_TIMEOUT", "abc", ["apply", "--set", "z=1"]),
    ("AGENTSTATE_LOCK_TIMEOUT", "-5s", ["rm", "a"]),
    ("AGENTSTATE_LOG_LEVEL", "loud", ["show"]),
    ("AGENTSTATE_LOG_FORMAT", "xml", ["list"]),
])
def test_a_bad_environment_variable_is_named_exit_2(store: Path, var: str, value: str, args: list[str]) -> None:
    before = snapshot(store)
    r = run([*args, "--dir", str(store), "--json"], env={var: value})
    err = assert_json_error(r, 2, "usage")
    assert err["message"].startswith(f"{var}") and value in err["message"], err
    assert snapshot(store) == before
    # the option itself, when given, wins over the variable and is named when bad
    option = "--" + var.removeprefix("AGENTSTATE_").lower().replace("_", "-")
    line = assert_one_error_line(run([*args, "--dir", str(store), option, "bogus"]), 2)
    assert option in line and var not in line, line


@pytest.mark.parametrize("url,env,named", [
    ("postgresql://127.0.0.1:1/db", {"AGENTSTATE_PG_SCHEMA": "x;drop"}, "AGENTSTATE_PG_SCHEMA: "),
    ("postgresql://127.0.0.1:1/db?schema=a%00b", {}, "PostgreSQL schema name"),
    ("postgresql://u:p@[::1", {}, "the PostgreSQL URL is not valid"),
    ("postgresql://127.0.0.1:1/db?statement_timeout=zz", {}, "statement_timeout"),
])
def test_a_bad_postgresql_url_or_schema_is_a_usage_error_before_connecting(url, env, named) -> None:
    """Port 1: nothing listens there, so an exit 2 (not 1, "cannot connect") means it was refused first."""
    for args in (["sessions", "list", "--url", url], ["show", "--url", url], ["list"]):
        line = assert_one_error_line(run(args, env={**env, "AGENTSTATE_URL": url}), 2)
        assert named in line and "cannot connect" not in line, line


def test_an_endless_or_huge_input_is_one_error_not_all_memory(store: Path, monkeypatch) -> None:
    """/dev/zero never ends and has no newline: every reader stops at the input limit (256 MiB; 1 MiB
    here) with one line, exit 1, nothing changed. Before, each command read until the OOM killer came."""
    from agentstate.cli import inputs

    monkeypatch.setattr(inputs, "INPUT_LIMIT", 1 << 20)
    before = snapshot(store, mtimes=False)
    for args in (["apply", "/dev/zero"], ["plan", "/dev/zero"], ["sessions", "import", "/dev/zero"],
                 ["responses", "import", "/dev/zero"], ["responses", "save", "/dev/zero"]):
        line = assert_one_error_line(run([*args, "--dir", str(store)]), 1)
        assert "/dev/zero" in line and "over 1 MiB" in line, line
    big = b"x" * ((1 << 20) + 10)
    for args in (["apply", "-"], ["sessions", "append", "s", "-"], ["sessions", "import", "-"],
                 ["responses", "save", "-"]):
        line = assert_one_error_line(run([*args, "--dir", str(store)], input=big), 1)
        assert "over 1 MiB" in line and "stdin" in line or "spec -" in line, line
    assert snapshot(store, mtimes=False) == before
    ok = b'{"role": "user", "content": "' + b"y" * ((1 << 20) - 40) + b'"}\n'  # just under: still read
    r = run(["sessions", "append", "s", "-", "--dir", str(store)], input=ok)
    assert "over 1 MiB" not in r.stderr, r.stderr


def test_bad_tenant_setting_is_exit_2(store: Path) -> None:
    from agentstate.cli.common import Opts, UsageError

    opts = Opts({"g_tenant": "../etc"})
    with pytest.raises(UsageError, match="--tenant"):
        _ = opts.tenant
    assert Opts({}).tenant == "default"
    before = snapshot(store)
    line = assert_one_error_line(run(["sessions", "list", "--tenant", "../etc", "--dir", str(store)]), 2)
    assert line.startswith("error: --tenant:")
    line = assert_one_error_line(run(["sessions", "list", "--dir", str(store)], env={"AGENTSTATE_TENANT": "a b"}), 2)
    assert line.startswith("error: AGENTSTATE_TENANT:")
    assert run(["list", "--dir", str(store)], env={"AGENTSTATE_TENANT": "a b"}).exit_code == 0  # not used here
    assert snapshot(store) == before


def test_unknown_command_suggests(store: Path) -> None:
    line = assert_one_error_line(run(["lst"]), 2)
    assert "'list'" in line


# -- --set: JSON when it looks like JSON ------------------------------------------------------------------


@pytest.mark.parametrize("item", [
    'cfg={"a":1,}', "x=NaN", "x=nan", "x=-NaN", "x=Infinity", "x=-Infinity", "x=inf", "x=True", "x=NULL",
    "x=None", "x=1.2.3", "x=[1,", 'x="unterminated', "x=01", "x=+1", "x=.5", "x=-", "x={a: 1}", "x=[1,2]]",
    'x={"k":1,"k":2}', 'x=[{"k":{"j":1,"j":1}}]',
])
def test_set_value_that_looks_like_json_must_be_json(store: Path, item: str) -> None:
    before = snapshot(store)
    r = run(["apply", "--set", item, "--dir", str(store), "--json"])
    err = assert_json_error(r, 1, "invalid_input")
    assert "JSON" in err["message"] or "twice" in err["message"], err
    assert snapshot(store) == before


def test_set_plain_words_are_strings_and_the_rule_is_in_help(store: Path) -> None:
    r = run(["apply", "--dir", str(store), "--set", "w=hello", "--set", "v=v1.2", "--set", "u=http://x:1/y",
             "--set", "t=trueish", "--set", "sp= leading space", "--set", "k=true", "--set", "q=\"1.2.3\""])
    assert r.exit_code == 0, r.stderr
    res = doc(store)["resources"]
    assert res["w"] == "hello" and res["v"] == "v1.2" and res["u"] == "http://x:1/y" and res["t"] == "trueish"
    assert res["sp"] == " leading space" and res["k"] is True and res["q"] == "1.2.3"
    text = " ".join(run(["apply", "--help"]).stdout.replace("│", " ").split())
    assert "VALUE is JSON when it looks like JSON" in text and "Anything else is a plain string" in text


# -- duplicate keys ---------------------------------------------------------------------------------------

DUPLICATES = {
    "top": b'{"resources": {}, "resources": {"a": 1}}',
    "resources": b'{"resources": {"a": 1, "a": 2}}',
    "deep": b'{"resources": {"a": {"b": [1, {"c": 1, "d": 2, "c": 3}]}}}',
    "escaped": b'{"resources": {"a": 1, "\\u0061": 2}}',
    "colon-in-strings": b'{"resources": {"u": "http://h:1", "u": "x:y"}}',
    "spaced": b'{"resources" : {"k" : 1 , "k" : 1}}',
}


@pytest.mark.parametrize("name", sorted(DUPLICATES))
@pytest.mark.parametrize("command", ["apply", "plan"])
def test_duplicate_keys_are_refused(tmp_path: Path, store: Path, name: str, command: str) -> None:
    spec = tmp_path / "dup.json"
    spec.write_bytes(DUPLICATES[name])
    before = snapshot(store)
    err = assert_json_error(run([command, str(spec), "--dir", str(store), "--json"]), 1, "invalid_input")
    assert "twice" in err["message"], err
    assert snapshot(store) == before


def test_keys_and_colons_that_are_not_duplicates_pass(tmp_path: Path, store: Path) -> None:
    spec = tmp_path / "ok.json"
    spec.write_bytes(b'{"resources": {"u": "http://h:1/a:b", "a:b": {"c": "d:e", "\\"k:": ["x:", {"y": ":"}]},'
                     b' "a\\\\": {"a\\\\": 1}, "e": {}, "f": [{}, {"k": {"k": {"k": 1}}}]}}')
    r = run(["apply", str(spec), "--dir", str(store), "--json"])
    assert r.exit_code == 0, r.stderr
    assert doc(store)["resources"]["a:b"] == {"c": "d:e", '"k:': ["x:", {"y": ":"}]}


# -- what commands say ------------------------------------------------------------------------------------


def test_show_a_string_without_quotes(store: Path) -> None:
    assert run(["show", "c", "--dir", str(store)]).stdout == "hello\n"
    assert run(["show", "c", "--dir", str(store), "--json"]).stdout == '"hello"\n'
    assert json.loads(run(["show", "a", "--dir", str(store)]).stdout) == 1


def test_plan_shows_old_and_new_values(tmp_path: Path, store: Path) -> None:
    spec = write_spec(tmp_path, {"a": 1, "b": {"x": [1, 3]}, "big": "x" * 500})
    lines = run(["plan", str(spec), "--dir", str(store)]).stdout.splitlines()
    assert lines[0].startswith('+ big = "xxx') and lines[0].endswith("...") and len(lines[0]) < 140
    assert lines[1:] == ['~ b: {"x":[1,2]} -> {"x":[1,3]}', '- c (was "hello")',
                         "Plan: 1 created, 1 updated, 1 deleted (state at serial 1)."]


def test_doctor_repair_reports_what_it_did(store: Path) -> None:
    r = run(["doctor", "--repair", "--dir", str(store)])
    assert r.exit_code == 0 and "nothing to repair" in r.stdout and "repaired:" not in r.stdout
    out = json.loads(run(["doctor", "--repair", "--dir", str(store), "--json"]).stdout)
    assert out["actions"] == [] and out["repaired_serial"] is None and out["ok"] is True
    assert run(["apply", "--set", "a=2", "--dir", str(store)]).exit_code == 0  # backup at serial 1
    (store / "state.json").write_bytes(b"garbage")
    (store / "state.json.tmp-0a1b2c3d").write_bytes(b"partial")
    r = run(["doctor", "--repair", "--dir", str(store)])
    assert r.exit_code == 0, r.stdout + r.stderr
    repaired = [line for line in r.stdout.splitlines() if line.startswith("repaired:")]
    assert len(repaired) == 2, r.stdout
    assert "restored state.json from the backup (serial 1) as serial" in repaired[0]
    assert "state.json.corrupt-" in repaired[0]
    assert repaired[1] == "repaired: removed 1 stray temp file: state.json.tmp-0a1b2c3d"
    assert "nothing" not in r.stdout
    r = run(["doctor", "--repair", "--dir", str(store), "--json"])
    assert json.loads(r.stdout)["actions"] == []
    missing = store.parent / "never-made"
    r = run(["doctor", "--repair", "--dir", str(missing)])
    assert r.exit_code == 0 and "nothing to repair" in r.stdout and not missing.exists()


def test_doctor_verdicts_come_from_the_library(store: Path) -> None:
    from agentstate import doctor
    from agentstate.state.store import StateStore

    s = StateStore(store)
    assert doctor.diagnose(s).exit_code == 0
    (store / "state.json").write_bytes(b"garbage")  # no backup yet: nothing valid left
    report = doctor.diagnose(s)
    assert report.exit_code == 4 and report.unrecoverable
    assert run(["doctor", "--dir", str(store)]).exit_code == 4
