"""`agentstate sessions ...` in process (typer's CliRunner), on every backend: flags, JSON shapes,
exit codes, one error line, nothing stored on bad input."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from agentstate import SessionStore
from agentstate.cli import app

runner = CliRunner()


def where(target: str) -> list[str]:
    return ["--url", target] if target.startswith("postgres") else ["--dir", target]


class Cli:
    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, *args: str, input: str | None = None, env: dict | None = None, code: int = 0):
        env = {"AGENTSTATE_DIR": None, "AGENTSTATE_URL": None, "AGENTSTATE_TENANT": None,
               "AGENTSTATE_LOCK_TIMEOUT": None, "AGENTSTATE_LOG_LEVEL": None, **(env or {})}
        r = runner.invoke(app, ["sessions", *args, *where(self.target)], input=input, env=env)
        assert r.exit_code == code, (args, r.exit_code, r.stdout, r.stderr)
        if code:
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
            assert "Traceback" not in r.stdout + r.stderr
        return r

    def json(self, *args: str, **kw):
        r = self(*args, "--json", **kw)
        return json.loads(r.stdout) if r.exit_code == 0 else None

    def view(self, tenant: str = "default") -> dict:
        """Everything stored for the tenant: id -> (info dict, [item dicts])."""
        s = SessionStore(self.target, tenant=tenant)
        try:
            out = {}
            for info in s.list(limit=10000).items:
                out[info.id] = (info.to_dict(), [i.to_dict() for i in s.items(info.id)])
            return out
        finally:
            s.close()


@pytest.fixture
def cli(store_target: str) -> Cli:
    return Cli(store_target)


def test_create_json_is_the_session_info(cli: Cli) -> None:
    doc = cli.json("create", "--id", "c1", "--title", "Trip")
    assert doc["id"] == "c1" and doc["title"] == "Trip" and doc["item_count"] == 0
    assert set(doc) == {"id", "tenant", "title", "metadata", "created_at", "updated_at", "item_count", "version",
                        "expires_at"}
    doc = cli.json("create")
    assert len(doc["id"]) == 36 and doc["title"] is None
    r = cli("create")
    assert len(r.stdout.strip()) == 36
    cli("create", "--id", "c1", code=5)
    cli("create", "--id", "bad/id", code=1)


def test_append_forms_and_show(cli: Cli) -> None:
    doc = cli.json("append", "s", '{"role":"system","content":"rules"}', '{"type":"function_call","name":"f"}')
    assert [i["seq"] for i in doc["items"]] == [1, 2]
    cli("append", "s", "--role", "assistant", "--content", "hi there")
    cli("append", "s", "--content", "a user message")
    cli("append", "s", "-", input='{"role":"user","content":"from stdin"}\n\n{"type":"x","n":1}\n')
    shown = cli.json("show", "s")
    assert set(shown) == {"session", "items"}
    assert shown["session"]["id"] == "s" and shown["session"]["item_count"] == 6
    assert shown["session"]["title"] == "a user message"
    assert [set(i) for i in shown["items"]] == [{"seq", "id", "created_at", "data"}] * 6
    assert [i["seq"] for i in shown["items"]] == [1, 2, 3, 4, 5, 6]
    assert shown["items"][2]["data"] == {"role": "assistant", "content": "hi there"}
    assert shown["items"][3]["data"] == {"role": "user", "content": "a user message"}
    assert shown["items"][5]["data"] == {"type": "x", "n": 1}
    last = cli.json("show", "s", "--last", "2")
    assert [i["seq"] for i in last["items"]] == [5, 6]
    text = cli("show", "s").stdout
    assert "from stdin" in text and "rules" in text


def test_expect_seq_and_idempotency_key(cli: Cli) -> None:
    cli("append", "s", "--content", "one", "--expect-seq", "0")
    cli("append", "s", "--content", "stale", "--expect-seq", "0", code=5)
    first = cli.json("append", "s", "--content", "two", "--idempotency-key", "k")
    again = cli.json("append", "s", "--content", "two", "--idempotency-key", "k")
    assert first == again
    assert cli.view()["s"][0]["item_count"] == 2


BAD = [
    ('{"role":"user","content":"   "}',),
    ('{"role":"wizard","content":"x"}',),
    ("[1,2]",),
    ('{"x": NaN}',),
    ('{"x": 1e999}',),
    ('{"x": 18446744073709551616}',),
    ("{bad json",),
    ('"a string"',),
]


@pytest.mark.parametrize("bad", [b[0] for b in BAD])
def test_bad_input_is_one_error_line_and_nothing_stored(cli: Cli, bad: str) -> None:
    cli("append", "s", "--content", "kept")
    before = cli.view()
    cli("append", "s", '{"role":"user","content":"fine"}', bad, code=1)
    cli("append", "new", bad, code=1)
    cli("append", "s", "-", input='{"role":"user","content":"fine"}\n' + bad + "\n", code=1)
    assert cli.view() == before


def test_usage_errors_exit_2(cli: Cli) -> None:
    cli("append", "s", code=2)  # nothing to append
    cli("append", "s", "--role", "user", code=2)  # --role without --content
    cli("show", "s", "--last", "x", code=2)
    cli("frobnicate", code=2)
    assert cli.view() == {}


def test_missing_session_exits_6(cli: Cli) -> None:
    for args in (("show", "nope"), ("rm", "nope"), ("export", "nope"), ("append", "nope", "--content", "x",
                                                                          "--no-create")):
        r = cli(*args, code=6)
        assert "nope" in r.stderr
    r = cli("show", "nope", "--json", code=6)
    assert json.loads(r.stdout)["error"]["exit_code"] == 6
    assert cli.view() == {}


def test_list_pages_with_cursor(cli: Cli) -> None:
    for i in range(5):
        cli("append", f"s{i}", "--content", f"message {i}")
    page = cli.json("list", "--limit", "2")
    assert set(page) == {"sessions", "next_cursor", "total"}
    assert page["total"] == 5 and [s["id"] for s in page["sessions"]] == ["s4", "s3"]
    seen = [s["id"] for s in page["sessions"]]
    while page["next_cursor"]:
        page = cli.json("list", "--limit", "2", "--cursor", page["next_cursor"])
        seen += [s["id"] for s in page["sessions"]]
    assert seen == ["s4", "s3", "s2", "s1", "s0"]
    cli("list", "--cursor", "not-a-cursor", code=1)
    cli("list", "--limit", "0", code=2)
    assert "5 of 5" in cli("list").stdout


def test_rm_and_prune(cli: Cli) -> None:
    cli("append", "a", "--content", "x")
    cli("append", "b", "--content", "y")
    assert cli.json("rm", "a") == {"deleted": ["a"]}
    assert cli.json("prune", "--older-than", "30d")["deleted"] == []
    cli("prune", "--older-than", "soon", code=2)
    assert cli.json("prune", "--older-than", "0", "--yes")["deleted"] == ["b"]
    assert cli.view() == {}


def test_export_import(cli: Cli, tmp_path) -> None:
    cli("create", "--id", "src", "--title", "T")
    cli("append", "src", '{"role":"user","content":"q"}', '{"role":"assistant","content":"a"}')
    exported = cli("export", "src").stdout
    lines = exported.splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["session"]["id"] == "src"
    f = tmp_path / "s.jsonl"
    f.write_text(exported)
    cli("import", str(f), code=5)  # src exists
    doc = cli.json("import", str(f), "--id", "copy")
    assert doc["id"] == "copy" and doc["item_count"] == 2 and doc["title"] == "T"
    view = cli.view()
    assert view["copy"][1] == view["src"][1]
    cli.json("import", "-", "--id", "piped", input=exported)
    cli("import", str(tmp_path / "missing.jsonl"), code=1)
    f.write_text(exported + '{"seq":3,"data":{"role":"user","content":""}}\n')
    cli("import", str(f), "--id", "bad", code=1)
    assert "bad" not in cli.view()


def test_tenant_option_and_env(cli: Cli) -> None:
    cli("append", "s", "--content", "alice", "--tenant", "alice")
    cli("append", "s", "--content", "bob", env={"AGENTSTATE_TENANT": "bob"})
    assert cli.json("show", "s", "--tenant", "alice")["items"][0]["data"]["content"] == "alice"
    assert cli.json("show", "s", env={"AGENTSTATE_TENANT": "bob"})["items"][0]["data"]["content"] == "bob"
    cli("show", "s", code=6)  # the default tenant has none
    assert cli.json("list", "--tenant", "carol")["total"] == 0
    cli("list", "--tenant", "../x", code=2)


def test_lock_timeout_names_the_holder(tmp_path) -> None:
    from agentstate.state.lock import Lock

    d = tmp_path / "store"
    cli = Cli(str(d))
    cli("append", "s", "--content", "x")
    lk = Lock(os.path.join(d, "agentstate.db.lock"))
    lk.acquire(1, "holding for the test")
    try:
        r = cli("append", "s", "--content", "y", "--lock-timeout", "0.2", code=3)
        assert str(os.getpid()) in r.stderr and "holding for the test" in r.stderr
        cli.json("show", "s")  # readers take no lock
    finally:
        lk.release()
    assert cli.view()["s"][0]["item_count"] == 1


def test_doctor_checks_the_database(tmp_path) -> None:
    d = tmp_path / "store"
    cli = Cli(str(d))
    cli("append", "s", "--content", "x")
    r = runner.invoke(app, ["doctor", "--dir", str(d), "--json"], env={"AGENTSTATE_DIR": None})
    assert r.exit_code == 0, r.stdout
    checks = {f["check"]: f for f in json.loads(r.stdout)["findings"]}
    assert checks["database integrity"]["ok"] and checks["database schema"]["ok"] and checks["database lock"]["ok"]
    (d / "agentstate.db").write_bytes(b"not a database" * 500)
    for extra in ("agentstate.db-wal", "agentstate.db-shm"):
        if (d / extra).exists():
            (d / extra).unlink()
    r = runner.invoke(app, ["doctor", "--dir", str(d)], env={"AGENTSTATE_DIR": None})
    assert r.exit_code == 1 and "BAD" in r.stdout and "agentstate.db" in r.stdout
    cli("show", "s", code=4)  # a damaged database: exit 4, one line


def test_expect_version(cli: Cli) -> None:
    """Issue 15, item 9: --expect-version detects a pop followed by an append (exit 5), --expect-seq does not."""
    cli("append", "s", "--content", "one")
    seen = cli.json("show", "s")["session"]
    store = SessionStore(cli.target)
    try:
        store.pop("s")
        store.append("s", [{"role": "user", "content": "other"}])
    finally:
        store.close()
    r = cli("append", "s", "--content", "stale", "--expect-version", str(seen["version"]), code=5)
    assert "version" in r.stderr
    assert [i["data"]["content"] for i in cli.view()["s"][1]] == ["other"]
    now = cli.json("show", "s")["session"]["version"]
    cli("append", "s", "--content", "fresh", "--expect-version", str(now))
    assert [i["data"]["content"] for i in cli.view()["s"][1]] == ["other", "fresh"]
