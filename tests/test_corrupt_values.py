"""A stored item, session metadata or response body that is not valid JSON (the database edited by hand)
is corruption: StateCorrupted, exit 4, one line naming the session and seq (or the response), pointing
to doctor; doctor finds it; nothing changes. On every backend (issue 15)."""

from __future__ import annotations

import json

import pytest
from responses_raw import is_pg, raw
from typer.testing import CliRunner

from agentstate import ResponseStore, SessionStore, values_check
from agentstate.cli import app
from agentstate.errors import StateCorrupted

runner = CliRunner()


def run(target: str, *args: str):
    env = {"AGENTSTATE_DIR": None, "AGENTSTATE_URL": None, "AGENTSTATE_TENANT": None, "AGENTSTATE_LOG_LEVEL": None}
    where = ["--url", target] if is_pg(target) else ["--dir", target]
    return runner.invoke(app, [*args, *where], env=env)


def corrupt(r, *needles: str) -> None:
    assert r.exit_code == 4, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "agentstate doctor" in r.stderr and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], r.stderr


def doctor(target: str) -> list[dict]:
    r = run(target, "doctor", "--json")
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    return [f for f in json.loads(r.stdout)["findings"] if not f["ok"]]


@pytest.fixture
def sessions(store_target: str):
    s = SessionStore(store_target, tenant="t1")
    s.create("s1", metadata={"k": 1})
    s.append("s1", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                    {"role": "user", "content": "c"}])
    yield s
    s.close()


def test_a_damaged_item_is_corruption_naming_session_and_seq(store_target: str, sessions: SessionStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert raw(store_target, "SELECT COUNT(*) FROM session_items")[0][0] == 3
    raw(store_target, "UPDATE session_items SET data = '{bad' WHERE seq = 2")
    for call in (lambda: sessions.show("s1"), lambda: sessions.items("s1"), lambda: sessions.context("s1", 2)):
        with pytest.raises(StateCorrupted, match=r"item 2 of session 's1' \(tenant 't1'\) is not valid JSON") as e:
            call()
        assert e.value.details["seq"] == 2 and e.value.details["session_id"] == "s1"
    corrupt(run(store_target, "sessions", "show", "s1", "--tenant", "t1"), "item 2 of session 's1'")
    corrupt(run(store_target, "sessions", "export", "s1", "--tenant", "t1"), "item 2 of session 's1'")
    raw(store_target, "UPDATE session_items SET data = '[1,' WHERE seq = 3")
    with pytest.raises(StateCorrupted, match="item 3 of session 's1'"):
        sessions.pop("s1")  # refused before the pop: the damaged item is still there
    assert raw(store_target, "SELECT COUNT(*) FROM session_items")[0][0] == 3
    monkeypatch.setattr(values_check, "BATCH", 1)  # the scan goes on from batch to batch
    found = doctor(store_target)
    assert [(f["check"], f.get("session_id"), f.get("seq")) for f in found] == [
        ("database values", "s1", 2), ("database values", "s1", 3)], found
    assert "item 2 of session 's1' is not valid JSON" in found[0]["detail"]


def test_damaged_metadata_is_corruption(store_target: str, sessions: SessionStore) -> None:
    raw(store_target, "UPDATE sessions SET metadata = '{\"k\":' WHERE id = 's1'")
    with pytest.raises(StateCorrupted, match="metadata of session 's1'"):
        sessions.get("s1")
    corrupt(run(store_target, "sessions", "list", "--tenant", "t1"), "metadata of session 's1'")
    assert [f.get("problem") for f in doctor(store_target)] == ["metadata"]


def test_a_damaged_response_is_corruption_and_doctor_finds_it(store_target: str) -> None:
    with ResponseStore(store_target) as rs:
        rs.save({"id": "r1", "output": []})
        rs.save({"id": "r2", "previous_response_id": "r1", "output": []})
        rs.save({"id": "r3", "output": []})
    raw(store_target, "UPDATE responses SET body = '{bad' WHERE id = 'r1'")
    raw(store_target, "UPDATE responses SET body = '1,2' WHERE id = 'r3'")  # two values where one was
    for args in (["get", "r1"], ["chain", "r2"], ["list"]):
        corrupt(run(store_target, "responses", *args), "response 'r")
    corrupt(run(store_target, "responses", "chain", "r2"), "response 'r1'")
    found = doctor(store_target)
    assert sorted(f.get("response_id") for f in found if f["check"] == "database values") == ["r1", "r3"], found
    with ResponseStore(store_target) as rs:
        with pytest.raises(StateCorrupted, match="response 'r3'"):
            rs.list()


def test_doctor_is_ok_on_healthy_values(store_target: str, sessions: SessionStore) -> None:
    with ResponseStore(store_target) as rs:
        rs.save({"id": "r1", "output": []})
    r = run(store_target, "doctor", "--json")
    values = [f for f in json.loads(r.stdout)["findings"] if f["check"] == "database values"]
    assert values and values[0]["ok"] and "3 session item(s)" in values[0]["detail"], values
