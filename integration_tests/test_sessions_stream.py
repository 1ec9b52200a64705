"""Export and import stream (issue 15, item 6): peak memory does not grow with the session.

A session of 200,000 items (~40 MB exported) is exported and imported by real `agentstate` processes on
each backend; each one's peak RSS (ru_maxrss of a wrapper's only child) must stay under 150 MB (the old
code held the whole session: ~1.1 GB export / 1.7 GB import at 1,000,000 items). The import is still
one transaction: the same file with a bad last line stores nothing. The export is one snapshot: an
append made while an export is being read does not show up in it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from agentstate_integration import AGENTSTATE_CLI

from agentstate import NotFound, SessionStore

N = 200_000
LIMIT_KB = 150 * 1024

MEASURE = r"""
import resource, subprocess, sys
with open(sys.argv[1], "rb") as stdin, open(sys.argv[2], "wb") as stdout:
    r = subprocess.run(sys.argv[3:], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
sys.stderr.buffer.write(r.stderr)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.fixture(params=["dir", "pg"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "pg":
        return request.getfixturevalue("pg_schema_url")
    return str(tmp_path / "store")


def _where(target: str) -> list[str]:
    return ["--url", target] if target.startswith("postgres") else ["--dir", target]


def _measured(tmp_path: Path, args: list[str], stdin: Path, stdout: Path) -> int:
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    r = subprocess.run([sys.executable, str(script), str(stdin), str(stdout), AGENTSTATE_CLI, *args],
                       capture_output=True, text=True, timeout=900)
    code, peak = (int(x) for x in r.stdout.split())
    assert code == 0, r.stderr
    return peak


def test_export_and_import_of_200000_items_stay_under_150_mb(target: str, tmp_path: Path) -> None:
    with SessionStore(target) as s:
        for start in range(0, N, 10_000):
            s.append("big", [{"role": "user" if i % 2 else "assistant",
                              "content": f"message {i}: " + "lorem ipsum dolor sit amet " * 5}
                             for i in range(start, start + 10_000)])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    exported = tmp_path / "big.jsonl"
    export_kb = _measured(tmp_path, ["sessions", "export", "big", *_where(target)], empty, exported)
    size = exported.stat().st_size
    print(f"export of {N} items ({size} bytes): peak RSS {export_kb} KB")
    lines = exported.read_bytes().splitlines()
    assert len(lines) == N + 1 and json.loads(lines[-1])["seq"] == N
    assert export_kb < LIMIT_KB, export_kb

    out = tmp_path / "out.json"
    import_kb = _measured(tmp_path, ["sessions", "import", "-", "--id", "copy", "--json", *_where(target)],
                          exported, out)
    print(f"import of {N} items: peak RSS {import_kb} KB")
    assert import_kb < LIMIT_KB, import_kb
    assert json.loads(out.read_text())["item_count"] == N
    with SessionStore(target) as s:
        a, b = s.items("big", after=N - 3), s.items("copy", after=N - 3)
        assert [(i.id, i.created_at, i.data) for i in a] == [(i.id, i.created_at, i.data) for i in b]
        assert s.get("copy").title == s.get("big").title

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(exported.read_bytes() + b'{"seq": 1, "data": "not an object"}\n')
    r = subprocess.run([AGENTSTATE_CLI, "sessions", "import", str(bad), "--id", "copy2", *_where(target)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 1 and r.stderr.startswith("error: line"), r.stderr
    with SessionStore(target) as s, pytest.raises(NotFound):
        s.get("copy2")


def test_export_is_one_snapshot(target: str) -> None:
    with SessionStore(target) as s:
        s.append("s", [{"n": i} for i in range(2500)])
        lines = s.export_lines("s")
        head = [next(lines) for _ in range(10)]  # reading has begun (one page in)
        with SessionStore(target) as other:
            other.append("s", [{"n": "late"}])
            other.pop("s")
            other.pop("s")  # seq 2500 is gone for good
        rest = list(lines)
    items = [json.loads(x) for x in head[1:] + rest]
    assert json.loads(head[0])["session"]["item_count"] == 2500
    assert [i["data"]["n"] for i in items] == list(range(2500))
