"""The docs' examples run: every `sh` block of quickstart.md, and README's examples."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _blocks(doc: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (ROOT / doc).read_text(), re.S)


def _section_blocks(doc: str, heading: str) -> list[str]:
    text = (ROOT / doc).read_text()
    section = text[text.index(heading):]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("AGENTSTATE_DIR", None)
    return subprocess.run(
        ["bash", "-c", "set -e\n" + script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_quickstart_runs(tmp_path: Path) -> None:
    blocks = _blocks("quickstart.md")
    assert len(blocks) >= 8
    r = _run("\n".join(blocks), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Apply complete: 2 created" in out
    assert "exit code 6" in out  # show of a missing address
    assert "exit code 3" in out  # the lock timeout
    assert "force-unlock" in r.stderr and "long-agent-run" in r.stderr
    assert "corruption detected" in r.stderr and "fallback used" in r.stderr
    assert "recovery persisted" in r.stderr
    assert "exit code 1" in out  # doctor before the repair
    assert "exit code 4" in out  # both files bad
    assert list(tmp_path.glob(".agentstate/state.json.corrupt-*"))  # evidence kept


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = _blocks("README.md")
    shared = set(_section_blocks("README.md", "## Sharing a store"))  # run against a server, below
    setup, examples = blocks[0], [b for b in blocks[1:] if b not in shared]
    assert "agentstate apply examples/agents.json" in setup and ".ci/run" in setup
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "agents.json").write_bytes((ROOT / "examples" / "agents.json").read_bytes())
    r = _run("\n".join(examples), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exit 5" in r.stdout
    assert '"created":["note"]' in r.stdout


def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "'updated': ['agent.a']" in r.stdout


def test_readme_sharing_section_runs_against_a_server(tmp_path: Path, pg_schema_url: str) -> None:
    """README's "Sharing a store": the setup block names the extra and AGENTSTATE_URL; the rest runs
    against the suite's PostgreSQL server (tests/pgserver.py) with AGENTSTATE_URL set to it."""
    setup, *examples = _section_blocks("README.md", "## Sharing a store")
    assert "agentstate[postgres]" in setup and "export AGENTSTATE_URL=postgresql://" in setup
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "agents.json").write_bytes((ROOT / "examples" / "agents.json").read_bytes())
    os.environ["AGENTSTATE_URL"] = pg_schema_url
    try:
        r = _run("\n".join(examples), tmp_path)
    finally:
        del os.environ["AGENTSTATE_URL"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"serial":2' in r.stdout and '"run.current":{"id":43' in r.stdout
    assert "free" in r.stdout
    assert not (tmp_path / ".agentstate").exists()  # all of it went to the server
