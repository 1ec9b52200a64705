"""`agentstate sessions ... --ttl / --where / update / cache stats`, `--cache`, `doctor --cache`, on every backend."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from agentstate.cli import app

runner = CliRunner()
CLEAN = {"AGENTSTATE_DIR": None, "AGENTSTATE_URL": None, "AGENTSTATE_TENANT": None, "AGENTSTATE_CACHE": None,
         "AGENTSTATE_SESSION_TTL": None, "AGENTSTATE_LOG_LEVEL": None}


def cli(target: str, *args: str, code: int = 0, env: dict | None = None, err: bool = True):
    where = ["--url", target] if target.startswith("postgres") else ["--dir", target]
    r = runner.invoke(app, [*args, *where], env={**CLEAN, **(env or {})})
    assert r.exit_code == code, (args, r.exit_code, r.stdout, r.stderr)
    if code and err:
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
    return r


def test_ttl_where_update_and_prune(store_target: str) -> None:
    cli(store_target, "sessions", "create", "--id", "a", "--metadata", '{"agent_id":"a1","channel":"web"}',
        "--ttl", "7d")
    cli(store_target, "sessions", "create", "--id", "b", "--metadata", '{"agent_id":"a1","n":2,"vip":true}')
    cli(store_target, "sessions", "append", "c", "--content", "hi", "--ttl", "1h")
    page = json.loads(cli(store_target, "sessions", "list", "--where", "agent_id=a1", "--json").stdout)
    assert [s["id"] for s in page["sessions"]] == ["b", "a"] and page["total"] == 2
    assert page["sessions"][1]["expires_at"] is not None and page["sessions"][0]["expires_at"] is None
    both = json.loads(cli(store_target, "sessions", "list", "--where", "agent_id=a1", "--where", "channel=web",
                          "--json").stdout)
    assert [s["id"] for s in both["sessions"]] == ["a"] and both["total"] == 1
    assert "b  0 items" in cli(store_target, "sessions", "list", "--where", "n:=2", "--where", "vip:=true").stdout
    assert "0 of 0 session(s)" in cli(store_target, "sessions", "list", "--where", "n=2").stdout  # a string
    cli(store_target, "sessions", "update", "b", "--metadata", '{"agent_id":"a2"}')
    assert json.loads(cli(store_target, "sessions", "list", "--where", "agent_id=a1", "--json").stdout)["total"] == 1
    cli(store_target, "sessions", "update", "zz", "--metadata", "{}", code=6)
    cli(store_target, "sessions", "update", "b", "--metadata", "[1]", code=1)
    cli(store_target, "sessions", "list", "--where", "nokey", code=2)  # a bad option value: exit 2, as every one
    cli(store_target, "sessions", "create", "--id", "d", "--ttl", "0", code=2)
    cli(store_target, "sessions", "append", "d", "--content", "x", "--ttl", "soon", code=2)
    assert "pruned 0 session(s)" in cli(store_target, "sessions", "prune").stdout
    r = cli(store_target, "sessions", "list", env={"AGENTSTATE_SESSION_TTL": "nope"}, code=2)
    assert "AGENTSTATE_SESSION_TTL" in r.stderr


def test_cache_option_stats_and_doctor(store_target: str, cache_url: str) -> None:
    cli(store_target, "sessions", "append", "a", "--content", "hi", "--cache", cache_url)
    for _ in range(3):
        out = json.loads(cli(store_target, "sessions", "show", "a", "--last", "5", "--json",
                             env={"AGENTSTATE_CACHE": cache_url}).stdout)
        assert [i["data"]["content"] for i in out["items"]] == ["hi"]
    stats = json.loads(cli(store_target, "sessions", "cache", "stats", "--cache", cache_url, "--json").stdout)
    assert stats["tenants"] == [{"tenant": "default", "hits": 2, "misses": 1, "promotions": 1, "keys": 1,
                                 "hit_rate": 0.6667}]
    assert "ok   cache: " in cli(store_target, "doctor", "--cache", cache_url).stdout
    bad = cli(store_target, "doctor", "--cache", "redis://127.0.0.1:1/0", code=1, err=False)  # a finding
    assert "BAD  cache: " in bad.stdout
    cli(store_target, "sessions", "list", "--cache", "http://x", code=2)
    cli(store_target, "sessions", "list", env={"AGENTSTATE_CACHE": "nope"}, code=2)
    cli(store_target, "sessions", "cache", "stats", code=2)
    cli(store_target, "sessions", "cache", "stats", "--cache", "redis://127.0.0.1:1/0", code=1)
    # the cache down: the command still works from the store
    r = cli(store_target, "sessions", "show", "a", "--last", "1", "--cache", "redis://127.0.0.1:1/0")
    assert "hi" in r.stdout
