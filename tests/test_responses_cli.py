"""`agentstate responses ...` run as real processes, on every backend (``store_target``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from responses_raw import is_pg, rows


def _where(target: str) -> list[str]:
    return ["--url", target] if is_pg(target) else ["--dir", target]


def cli(target: str, *args: str, stdin: str | None = None, tenant: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
    extra = ["--tenant", tenant] if tenant else []
    return subprocess.run([sys.executable, "-m", "agentstate", *args, *_where(target), *extra], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60)


def _one_error_line(r: subprocess.CompletedProcess) -> None:
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_save_get_chain_list_rm(store_target: str, tmp_path: Path) -> None:
    f = tmp_path / "r1.json"
    f.write_text('{"id": "r1", "z": 1, "a": 18446744073709551615, '
                 '"output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}]}')
    r = cli(store_target, "responses", "save", str(f))
    assert r.returncode == 0 and "saved r1" in r.stdout, r.stderr
    r = cli(store_target, "responses", "save", "-", "--json", stdin='{"id": "r2", "previous_response_id": "r1"}')
    assert r.returncode == 0 and json.loads(r.stdout)["saved"][0]["root_id"] == "r1"
    r = cli(store_target, "responses", "get", "r1", "--json")
    assert r.returncode == 0
    assert r.stdout.strip().endswith(
        ',"data":{"id":"r1","z":1,"a":18446744073709551615,"output":[{"type":"message",'
        '"content":[{"type":"output_text","text":"Hello"}]}]}}')  # as saved: order, exact int
    r = cli(store_target, "responses", "chain", "r2", "--json")
    assert r.returncode == 0 and [x["id"] for x in json.loads(r.stdout)["responses"]] == ["r1", "r2"]
    r = cli(store_target, "responses", "chain", "r2")
    assert r.returncode == 0 and "Hello" in r.stdout
    r = cli(store_target, "responses", "list", "--json", "--limit", "1")
    page = json.loads(r.stdout)
    assert [x["id"] for x in page["responses"]] == ["r2"] and page["total"] == 2 and page["next_cursor"]
    r = cli(store_target, "responses", "list", "--json", "--cursor", page["next_cursor"])
    assert [x["id"] for x in json.loads(r.stdout)["responses"]] == ["r1"]
    assert json.loads(r.stdout)["responses"][0]["data"]["z"] == 1
    r = cli(store_target, "responses", "rm", "r1")
    assert r.returncode == 0
    r = cli(store_target, "responses", "rm", "r1")
    assert r.returncode == 6
    _one_error_line(r)
    r = cli(store_target, "responses", "get", "r1", "--json")
    assert r.returncode == 6 and json.loads(r.stdout)["error"]["exit_code"] == 6
    r = cli(store_target, "responses", "chain", "r2", "--json")  # the deleted link still serves the chain
    assert r.returncode == 0 and [x["id"] for x in json.loads(r.stdout)["responses"]] == ["r1", "r2"]


def test_exit_codes_and_nothing_stored_on_errors(store_target: str, tmp_path: Path) -> None:
    assert cli(store_target, "responses", "save", "-", stdin='{"id": "a"}').returncode == 0
    before = rows(store_target)
    cases = [
        (5, ["responses", "save", "-"], '{"id": "a", "v": 2}'),  # duplicate id
        (6, ["responses", "save", "-"], '{"id": "b", "previous_response_id": "ghost"}'),  # missing previous
        (1, ["responses", "save", "-"], '{"id": "b", "v": NaN}'),
        (1, ["responses", "save", "-"], '{"id": "b", "v": 123456789012345678901234567890}'),
        (1, ["responses", "save", "-"], '{"id": "b/../c"}'),
        (1, ["responses", "save", "-"], '["not an object"]'),
        (1, ["responses", "save", "-"], '{"no": "id"}'),
        (1, ["responses", "save", "-"], "{broken"),
        (1, ["responses", "save", "-"], ""),
        (1, ["responses", "save", str(tmp_path / "missing.json")], None),
        (1, ["responses", "save", "-", "--max-item-bytes", "10"], '{"id": "b", "text": "long enough to refuse"}'),
        (1, ["responses", "get", "bad id"], None),
        (1, ["responses", "list", "--cursor", "nonsense"], None),
        (6, ["responses", "get", "zzz"], None),
        (6, ["responses", "chain", "zzz"], None),
        (2, ["responses", "list", "--limit", "x"], None),
        (2, ["responses", "save", "-", "--max-responses", "many"], "{}"),
        (2, ["responses"], None),
    ]
    for code, args, stdin in cases:
        r = cli(store_target, *args, stdin=stdin)
        assert r.returncode == code, (args, stdin, r.returncode, r.stderr)
        _one_error_line(r)
    r = cli(store_target, "responses", "get", "a", "--json", tenant="other")  # another tenant: not found
    assert r.returncode == 6
    assert rows(store_target) == before


def test_max_responses_evicts_whole_chains(store_target: str) -> None:
    for body in ('{"id": "a1"}', '{"id": "a2", "previous_response_id": "a1"}', '{"id": "b1"}'):
        assert cli(store_target, "responses", "save", "-", "--max-responses", "3", stdin=body).returncode == 0
    r = cli(store_target, "responses", "save", "-", "--max-responses", "3", "--json",
            stdin='{"id": "b2", "previous_response_id": "b1"}')
    assert r.returncode == 0 and json.loads(r.stdout)["saved"][0]["evicted"] == ["a1"]
    assert cli(store_target, "responses", "get", "a2").returncode == 6
    r = cli(store_target, "responses", "list", "--json")
    assert [x["id"] for x in json.loads(r.stdout)["responses"]] == ["b2", "b1"]


def test_doctor_reports_a_broken_link_and_a_cycle(store_target: str) -> None:
    for body in ('{"id": "a"}', '{"id": "b", "previous_response_id": "a"}', '{"id": "c", "previous_response_id": "b"}',
                 '{"id": "x"}', '{"id": "y", "previous_response_id": "x"}'):
        assert cli(store_target, "responses", "save", "-", stdin=body).returncode == 0
    r = cli(store_target, "doctor", "--json")
    chains = [f for f in json.loads(r.stdout)["findings"] if f["check"] == "responses chains"]
    assert r.returncode == 0 and len(chains) == 1 and chains[0]["ok"], r.stdout
    from responses_raw import raw

    seq_c = raw(store_target, "SELECT seq FROM responses WHERE id = 'c'")[0][0]
    raw(store_target, "UPDATE responses SET previous_id = 'c', previous_seq = :s WHERE id = 'a'", s=seq_c)  # a loop
    raw(store_target, "DELETE FROM responses WHERE id = 'x'")  # y's link now leads nowhere
    r = cli(store_target, "doctor")
    assert r.returncode == 1, r.stdout + r.stderr
    bad = [line for line in r.stdout.splitlines() if line.startswith("BAD") and "responses chains" in line]
    assert any("cycle" in line for line in bad) and any("broken chain link" in line and "'y'" in line for line in bad)
    r = cli(store_target, "responses", "chain", "c")
    assert r.returncode == 4 and "cycle" in r.stderr
    _one_error_line(r)


def test_help_lists_the_responses_commands(tmp_path: Path) -> None:
    r = cli(str(tmp_path / "s"), "responses", "--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("save", "get", "chain", "list", "rm"))
    r = subprocess.run([sys.executable, "-m", "agentstate", "--help"], capture_output=True, text=True, timeout=60)
    assert "responses" in r.stdout
