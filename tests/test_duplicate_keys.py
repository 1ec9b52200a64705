"""A key given twice in one JSON object is refused wherever JSON text comes in (issue 15): state values
already were; session items (append arguments and stdin lines, `sessions import`, the library's
``import_lines``), `--metadata` and `responses save` collapsed them silently. Same message everywhere,
exit 1, nothing stored."""

from __future__ import annotations

import json

import pytest
from responses_raw import is_pg
from typer.testing import CliRunner

from agentstate import ResponseStore, SessionStore
from agentstate.cli import app
from agentstate.errors import InvalidInput

runner = CliRunner()
DUP = '{"role": "user", "content": "hi", "content": "bye"}'
MESSAGE = "not valid: the key 'content' appears twice in one object"
HINT = "each key may appear once in an object"


def run(target: str, *args: str, input: str | None = None):
    env = {"AGENTSTATE_DIR": None, "AGENTSTATE_URL": None, "AGENTSTATE_TENANT": None, "AGENTSTATE_LOG_LEVEL": None}
    where = ["--url", target] if is_pg(target) else ["--dir", target]
    return runner.invoke(app, [*args, *where], input=input, env=env)


def refused(r, what: str) -> None:
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {what} is {MESSAGE}; {HINT}", r.stderr


def sessions(target: str) -> list[str]:
    s = SessionStore(target)
    try:
        return [i.id for i in s.list().items]
    finally:
        s.close()


def test_session_items_metadata_and_imports_refuse_duplicate_keys(store_target: str, tmp_path) -> None:
    refused(run(store_target, "sessions", "append", "s1", DUP), "ITEM_JSON 1")
    refused(run(store_target, "sessions", "append", "s1", "-", input='{"role": "user", "content": "ok"}\n' + DUP),
            "stdin line 2")
    refused(run(store_target, "sessions", "create", "--id", "s2", "--metadata", '{"content": 1, "content": 2}'),
            "--metadata")
    export = tmp_path / "e.jsonl"
    export.write_text(json.dumps({"session": {"id": "s3", "title": None, "metadata": None,
                                              "created_at": "2026-01-01T00:00:00.000000Z"}}) + "\n" + DUP + "\n")
    r = run(store_target, "sessions", "import", str(export))
    assert r.exit_code == 1 and "line 2 is " + MESSAGE in r.stderr, r.stderr
    assert sessions(store_target) == []
    s = SessionStore(store_target)
    try:
        with pytest.raises(InvalidInput, match="appears twice"):
            s.import_lines([DUP.encode()])
        with pytest.raises(InvalidInput, match="appears twice"):
            s.import_lines([DUP])
        assert s.list().items == []
    finally:
        s.close()


def test_responses_save_refuses_duplicate_keys(store_target: str, tmp_path) -> None:
    f = tmp_path / "r.json"
    f.write_text('{"id": "resp_1", "output": [], "output": [{"type": "message"}]}')
    r = run(store_target, "responses", "save", str(f))
    assert r.exit_code == 1 and r.stderr == f"error: {f} is not valid: the key 'output' appears twice in one object; {HINT}\n"
    r = run(store_target, "responses", "save", "-", input='[{"id": "resp_2", "a": {"b": 1, "b": 1}}]')
    assert r.exit_code == 1 and r.stderr == f"error: stdin is not valid: the key 'b' appears twice in one object; {HINT}\n"
    with ResponseStore(store_target) as rs:
        assert rs.list().items == []


def test_state_values_keep_the_same_message(tmp_path) -> None:
    spec = tmp_path / "s.json"
    spec.write_text('{"resources": {"a": {"content": 1, "content": 2}}}')
    r = run(str(tmp_path / "st"), "apply", str(spec))
    assert r.exit_code == 1 and r.stderr == f"error: spec {spec} is {MESSAGE}; {HINT}\n", r.stderr
