"""The docs' examples run: README's first line for real in a fresh copy, then every `sh` block of
quickstart.md in that copy as a new user would type them; README's examples and Python example."""

from __future__ import annotations

import os
import re
import shutil
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


def _run(script: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if env is None:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        env.pop("AGENTSTATE_DIR", None)
    return subprocess.run(
        ["bash", "-c", "set -e\n" + script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _newcomer_env(tmp: Path) -> dict[str, str]:
    """A shell as a new user has it: no agentstate on PATH, no venv active, no AGENTSTATE_* settings."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_") and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and p != venv_bin)
    env["TMPDIR"] = str(tmp)  # the quickstart's `mktemp -d` scratch directory lands where the test can see it
    return env


def test_readme_opens_with_exactly_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first = _blocks("README.md")[0]
    assert text.index(first) < text.index("\n## ")  # the first thing a reader sees
    lines = first.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("python3 -m venv .venv && .venv/bin/pip install") and lines[0].endswith(
        ".venv/bin/agentstate apply examples/agents.json && .venv/bin/agentstate show")
    assert lines[1] == "bash .ci/run"


def test_newcomer_readme_first_line_then_quickstart(tmp_path: Path) -> None:
    """A fresh checkout: README's first line for real (venv, pip install, apply, show), then every `sh`
    block of quickstart.md in order, in a shell where nothing made `agentstate` reachable beforehand."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".agentstate", "*.egg-info", "build", "dist", ".hypothesis",
        ".pytest_cache"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = _newcomer_env(scratch)
    assert subprocess.run(["bash", "-c", "command -v agentstate"], env=env, capture_output=True).returncode != 0
    first_line = _blocks("README.md")[0].splitlines()[0]
    r = _run(first_line, checkout, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "agent.planner" in r.stdout and (checkout / ".venv" / "bin" / "agentstate").exists()
    assert (checkout / ".agentstate" / "state.json").exists()

    blocks = _blocks("quickstart.md")
    assert len(blocks) >= 8 and ". .venv/bin/activate" in blocks[0]
    r = _run("\n".join(blocks), checkout, env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.startswith("agentstate ")  # step 1: `agentstate --version` after activating
    assert "Apply complete: 2 created" in out
    assert '~ agent.planner: {"model":"large","temperature":0.2} -> {"model":"large","temperature":0.5}' in out
    assert "exit code 6" in out  # show of a missing address
    assert "exit code 3" in out  # the lock timeout
    assert "long-agent-run" in r.stderr and "stop PID" in r.stderr
    assert "\nstarted\n" in out  # `show run.status`: a string, printed plainly
    assert "corruption detected" in r.stderr and "fallback used" in r.stderr
    assert "recovery persisted" in r.stderr
    assert "exit code 1" in out  # doctor before the repair
    assert "repaired: restored state.json from the backup" in out
    assert "exit code 4" in out  # both files bad
    assert "({'model': 'x'}, {'model': 'y'})" in out  # the Python step's plan values
    assert "     2  assistant  Day 1: Alfama. Day 2: Belem." in out  # step 6: sessions show
    assert '"item_count":2' in out and "1 of 1 session(s)" in out
    assert "     2  resp_2  Day 2: Belem." in out  # step 7: responses chain
    assert '{"id":"resp_2","previous_response_id":"resp_1",' in out and "resp_0" in r.stderr
    scratches = [p for p in scratch.iterdir() if p.is_dir()]
    assert len(scratches) == 1  # everything happened in the scratch directory
    assert "repaired: restored state.json from the backup" in out and "state.json.corrupt-" in out  # evidence kept
    assert "exit code 4\ndone\n" in out  # step 4 damaged a copy: the quickstart's own store is still whole
    assert not (scratches[0] / "damaged").exists() and not list(scratches[0].glob(".agentstate/*.corrupt-*"))
    assert (checkout / ".agentstate" / "state.json").exists() and not list(checkout.glob("spec.json"))


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = _blocks("README.md")
    shared = set(_section_blocks("README.md", "## Sharing a store"))  # run against a server, below
    shared |= set(_section_blocks("README.md", "## Serving over HTTP"))  # on a free port, below
    shared |= set(_section_blocks("README.md", "## Fleet"))  # run against a redis-server, below
    setup, examples = blocks[0], [b for b in blocks[1:] if b not in shared]
    assert "agentstate apply examples/agents.json" in setup and ".ci/run" in setup
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "agents.json").write_bytes((ROOT / "examples" / "agents.json").read_bytes())
    r = _run("\n".join(examples), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exit 5" in r.stdout
    assert "exit 1 (not valid JSON)" in r.stdout
    assert '"created":["note"]' in r.stdout
    assert "\nhello\n" in r.stdout  # show note
    assert "- note (was \"hello\")" in r.stdout  # rm says what it removed
    assert "nothing to repair" in r.stdout
    # the Sessions section
    assert "exit 5 (the session moved on" in r.stdout and "exit 1 (an empty message" in r.stdout
    assert "exit 6 (no such session)" in r.stdout and "imported 4 item(s) into session chat-1-copy" in r.stdout
    assert '"session_id":"chat-1-copy","items":[{"seq":4,' in r.stdout and "exit 6 (no chat-9" in r.stdout
    assert '{"deleted":["chat-1-copy"]}' in r.stdout and "would prune 1 session(s)" in r.stdout
    assert '"title":"Plan three days in Lisbon"' in r.stdout
    assert "[(2, 'assistant'), (3, 'user')]\nHello 1\n" in r.stdout
    # the Responses section
    assert "exit 5 (resp_1 exists" in r.stdout and "exit 6 (no resp_8" in r.stdout and "exit 6 (deleted)" in r.stdout
    assert "     2  resp_2  Day 2: Belem." in r.stdout and '"total":1}' in r.stdout
    assert '"evicted":["resp_1"]' in r.stdout and "exit 6 (evicted with its whole chain)" in r.stdout
    assert '{"saved":[{"id":"other_1","tenant":"bob",' in r.stdout and "pruned 0 response(s)" in r.stdout
    assert "['r1', 'r2'] {'total_tokens': 18446744073709551615}\nr1 1\n" in r.stdout


def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [
        "{'serial': 2, 'created': [], 'updated': ['agent.a'], 'deleted': []}",
        "{'agent.a': ({'model': 'x'}, {'model': 'y'})}",
        "1",
    ], r.stdout


def test_readme_sharing_section_runs_against_a_server(tmp_path: Path, pg_schema_url: str) -> None:
    """README's "Sharing a store": the setup block names the extra and AGENTSTATE_URL; the rest runs
    against the suite's PostgreSQL server (tests/pgserver.py) with AGENTSTATE_URL set to it."""
    setup, _no_docker, *examples = _section_blocks("README.md", "## Sharing a store")
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
    assert '"content":"deploy the agents"' in r.stdout
    assert not (tmp_path / ".agentstate").exists()  # all of it went to the server


def test_readme_postgresql_without_docker_runs(tmp_path: Path) -> None:
    """README's "Without Docker" block, as a user would run it (the apt-get line aside: the package is
    installed here, as .ci/run does): initdb and pg_ctl of Debian's package, a server on a Unix socket in
    its data directory; then agentstate writes and reads through the AGENTSTATE_URL it exported."""
    import tempfile

    from pgserver import _server_user

    setup, block, *_ = _section_blocks("README.md", "## Sharing a store")
    assert "docker run" in setup and "apt-get install -y postgresql" in block and "pg_ctl" in block
    lines = [line for line in block.splitlines() if not line.startswith("sudo apt-get")]
    home = tempfile.mkdtemp(prefix="agentstate-docs-pg-")  # reachable by the unprivileged user (tmp_path is not)
    user = _server_user()  # root: the server must run as an unprivileged user, as the README says
    os.chmod(home, 0o755)
    if user:
        os.chown(home, *user)
    env = {"HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    extra = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    try:
        r = subprocess.run(["bash", "-c", "set -e\n" + "\n".join(lines) + '\necho "URL=$AGENTSTATE_URL"'],
                           cwd=home, env=env, capture_output=True, text=True, timeout=120, **extra)
        assert r.returncode == 0, r.stdout + r.stderr
        url = r.stdout.rsplit("URL=", 1)[1].strip()
        assert url == f"postgresql://agentstate@/postgres?host={home}/agentstate-pg"
        cli = [sys.executable, "-m", "agentstate"]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}
        clean["AGENTSTATE_URL"] = url
        w = subprocess.run([*cli, "apply", "--set", "a=1"], env=clean, capture_output=True, text=True, timeout=60)
        assert w.returncode == 0, w.stderr
        show = subprocess.run([*cli, "show", "--json"], env=clean, capture_output=True, text=True, timeout=60)
        assert show.returncode == 0 and '"resources":{"a":1}' in show.stdout, show.stderr
        assert not (tmp_path / ".agentstate").exists()
    finally:
        subprocess.run(["bash", "-c", lines[0] + "\npg_ctl -m immediate -w stop"], cwd=home, env=env,
                       capture_output=True, timeout=60, **extra)
        shutil.rmtree(home, ignore_errors=True)


def test_readme_serving_section_runs(tmp_path: Path) -> None:
    """"Serving over HTTP": start the server, mint a token, curl a conversation, stop it (exit 0); on a
    free port instead of 8765. The `pip install` line is what the test extra already installed."""
    import socket

    install, script = _section_blocks("README.md", "## Serving over HTTP")
    assert install.startswith("pip install 'agentstate[serve]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run(script.replace("8765", str(port)), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"object":"conversation"' in r.stdout and '"metadata":{"topic":"travel"}' in r.stdout
    assert '"total":1}' in r.stdout and "no token: 401" in r.stdout
    assert " paths\n" in r.stdout and "drained, exit 0" in r.stdout
    assert "Plan three days in Lisbon" in r.stdout  # sessions list shows the title
    assert "tenant=alice" in r.stderr and "Bearer" not in r.stderr  # the request log, no token


def test_readme_fleet_section_runs_against_a_redis_server(tmp_path: Path, cache_url: str) -> None:
    """README's "Fleet": the setup block names the extra, a redis-server without persistence and
    AGENTSTATE_CACHE; the rest runs with AGENTSTATE_CACHE set to the suite's redis-server."""
    setup, *examples = _section_blocks("README.md", "## Fleet")
    assert "agentstate[cache]" in setup and "export AGENTSTATE_CACHE=redis://" in setup and "--save ''" in setup
    os.environ["AGENTSTATE_CACHE"] = cache_url
    try:
        r = _run("\n".join(examples), tmp_path)
    finally:
        del os.environ["AGENTSTATE_CACHE"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"total":1' in r.stdout and '"id":"t-1"' in r.stdout and "t-2  0 items" in r.stdout
    assert '"content":"Where is my order?"' in r.stdout
    assert "default  hits 1  misses 1" in r.stdout  # the second show was a hit
    assert "ok   cache: redis://" in r.stdout
    assert "pruned 0 session(s)" in r.stdout
