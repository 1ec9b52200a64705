"""`agentstate serve` with the official `openai` client (base_url=.../v1), unchanged, against a real
server process on a free loopback port; the chat API, health checks, /metrics and /openapi.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve_proc import CLI, ServeProc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = ServeProc(tmp_path_factory.mktemp("serve")).start()
    yield srv
    assert srv.stop() == 0


def client(server: ServeProc, sub: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.token(sub), max_retries=0)


def test_conversations_with_the_openai_client(server: ServeProc) -> None:
    oa = client(server)
    conv = oa.conversations.create(items=[{"type": "message", "role": "user", "content": "Hello"}],
                                   metadata={"topic": "demo"})
    assert conv.id.startswith("conv_") and conv.object == "conversation" and conv.metadata == {"topic": "demo"}
    assert isinstance(conv.created_at, int)
    added = oa.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"reply {i}"}]}
        for i in range(5)])
    assert len(added.data) == 5 and all(it.id and it.type == "message" for it in added.data)
    # paging both orders: the client follows last_id/has_more
    asc = [it.id for it in oa.conversations.items.list(conv.id, order="asc", limit=2)]
    desc = [it.id for it in oa.conversations.items.list(conv.id, order="desc", limit=2)]
    assert len(asc) == 6 and desc == asc[::-1]
    page = oa.conversations.items.list(conv.id, order="asc", limit=2)
    assert page.has_more and [it.id for it in page.data] == asc[:2]
    first = oa.conversations.items.retrieve(asc[0], conversation_id=conv.id)
    assert first.role == "user" and first.content == "Hello"
    # delete one from the middle: the others stay, in order
    after = oa.conversations.items.delete(asc[2], conversation_id=conv.id)
    assert after.id == conv.id
    left = [it.id for it in oa.conversations.items.list(conv.id, order="asc")]
    assert left == asc[:2] + asc[3:]
    with pytest.raises(openai.NotFoundError):
        oa.conversations.items.retrieve(asc[2], conversation_id=conv.id)
    updated = oa.conversations.update(conv.id, metadata={"topic": "changed", "k": "v"})
    assert updated.metadata == {"topic": "changed", "k": "v"}
    assert oa.conversations.retrieve(conv.id).metadata == {"topic": "changed", "k": "v"}
    deleted = oa.conversations.delete(conv.id)
    assert deleted.deleted and deleted.id == conv.id
    with pytest.raises(openai.NotFoundError) as e:
        oa.conversations.retrieve(conv.id)
    assert e.value.body["code"] == "not_found"


def test_listing_conversations_pages_most_recent_first(server: ServeProc) -> None:
    oa = client(server, "lister")
    ids = [oa.conversations.create(items=[{"role": "user", "content": f"c{i}"}]).id for i in range(5)]
    with server.client("lister") as http:
        seen, after = [], None
        while True:
            page = http.get("/v1/conversations", params={"limit": 2, **({"after": after} if after else {})}).json()
            assert page["total"] == 5
            seen += [c["id"] for c in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == ids[::-1]
        one = http.get("/v1/conversations", params={"limit": 1}).json()["data"][0]
        assert one["item_count"] == 1 and one["title"] == "c4" and isinstance(one["updated_at"], int)


def test_responses_with_the_openai_client(server: ServeProc) -> None:
    saved = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "output": [],
             "input": [{"type": "message", "role": "user", "content": f"q{i}"} for i in range(3)],
             "zeta": 1, "alpha": 18446744073709551615, "text": "é ✓ 🙂"}
    with server.client() as http:
        assert http.put("/v1/responses/resp_1", content=json.dumps(saved)).status_code == 201
        assert http.put("/v1/responses/resp_1", content=json.dumps(saved)).status_code == 409
        raw = http.get("/v1/responses/resp_1").content
    assert raw == json.dumps(saved, ensure_ascii=False, separators=(",", ":")).encode()  # exactly as saved
    oa = client(server)
    items = list(oa.responses.input_items.list("resp_1", limit=2))
    assert [it.content for it in items] == ["q2", "q1", "q0"]  # newest first, paged by 2
    asc = list(oa.responses.input_items.list("resp_1", order="asc"))
    assert [it.content for it in asc] == ["q0", "q1", "q2"]
    got = oa.responses.retrieve("resp_1")
    assert got.id == "resp_1"
    oa.responses.delete("resp_1")
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve("resp_1")
    with server.client() as http:  # the chain still resolves through a soft-deleted link
        http.put("/v1/responses/resp_2", json={"id": "resp_2", "previous_response_id": "resp_1"}).raise_for_status()
        chain = http.get("/v1/responses/resp_2/chain").json()
    assert [r["id"] for r in chain["data"]] == ["resp_1", "resp_2"]


def test_chat_api_round_trip(server: ServeProc) -> None:
    with server.client("carol") as http:
        r = http.post("/api/carol/chat", json={"message": "hi there"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["response"] == "hi there" and body["user_message_id"] != body["assistant_message_id"]
        cid = body["conversation_id"]
        r = http.post("/api/carol/chat", json={"message": "again", "conversation_id": cid}).json()
        assert r["conversation_id"] == cid
        listing = http.get("/api/carol/conversations").json()
        assert listing["total"] == 1 and listing["conversations"][0]["message_count"] == 4
        detail = http.get(f"/api/carol/conversations/{cid}").json()
        assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2
        assert http.post("/api/carol/chat", json={"message": "x", "conversation_id": "conv_nope"}).json() == {
            "error": "not_found", "message": "conversation 'conv_nope' not found"}
        assert http.delete(f"/api/carol/conversations/{cid}").status_code == 200
        assert http.get(f"/api/carol/conversations/{cid}").status_code == 404


def test_health_metrics_and_openapi(server: ServeProc) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/conversations/{conversation_id}/items" in spec["paths"] and "/api/{user_id}/chat" in spec["paths"]
    add = spec["paths"]["/v1/conversations/{conversation_id}/items"]["post"]
    assert add["requestBody"]["content"]["application/json"]["schema"]["required"] == ["items"]
    assert add["security"] == [{"bearer": []}] and "422" not in json.dumps(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200
    with server.client("metrics") as http:
        conv = http.post("/v1/conversations", json={}).json()["id"]
        http.post(f"/v1/conversations/{conv}/items", json={"items": [{"role": "user", "content": "x"}]})
    text = httpx.get(server.url + "/metrics").text
    assert ('agentstate_http_requests_total{method="POST",route="/v1/conversations/{conversation_id}/items",'
            'status="200"}') in text  # the append's hot path is counted under its route
    for name in ("agentstate_write_transactions_total", "agentstate_appends_total",
                 "agentstate_group_commit_batch_size", "agentstate_http_request_duration_seconds_bucket",
                 'agentstate_http_requests_total{method="POST",route="/v1/conversations",status="200"}'):
        assert name in text, name


def test_the_request_log_has_one_line_per_request_and_never_a_token(server: ServeProc) -> None:
    token = server.token("logged")
    httpx.get(server.url + "/v1/conversations/conv_logme", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 10
    while True:  # the line is written once the response is sent: the client can read the log before that
        log = server.log.read_text()
        line = [x for x in log.splitlines() if "/v1/conversations/conv_logme" in x]
        if line or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(line) == 1 and " 404 " in line[0] and "tenant=logged" in line[0], line
    assert token not in log and token.split(".")[2] not in log


def test_history_written_over_http_reads_back_with_the_cli(server: ServeProc) -> None:
    oa = client(server, "cli-reader")
    conv = oa.conversations.create(items=[{"role": "user", "content": "from http"}])
    out = subprocess.run([*CLI, "sessions", "show", conv.id, "--json", "--dir", str(server.store),
                          "--tenant", "cli-reader"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert "from http" in out.stdout and shown


def test_local_commands_never_import_the_server_stack(tmp_path: Path) -> None:
    code = (
        "import sys, agentstate\n"
        "agentstate.SessionStore(sys.argv[1]).append('s', [{'role': 'user', 'content': 'hi'}])\n"
        "from agentstate.cli import main\n"
        "for args in (['show', '--json'], ['sessions', 'show', 's', '--json'], ['--help']):\n"
        "    try: main([*args, '--dir', sys.argv[1]] if args != ['--help'] else args)\n"
        "    except SystemExit: pass\n"
        "bad = [m for m in ('fastapi', 'uvicorn', 'jwt', 'prometheus_client', 'starlette', 'pydantic')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_without_the_extra_serve_says_how_to_install_it(tmp_path: Path) -> None:
    code = ("import sys\nfor m in ('fastapi', 'uvicorn', 'jwt', 'prometheus_client'): sys.modules[m] = None\n"
            "from agentstate.cli import main\nmain(['serve', '--auth', 'none'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: agentstate serve needs the serve extra: pip install 'agentstate[serve]'\n"


@pytest.mark.parametrize("args, message", [
    (["--auth", "none", "--host", "0.0.0.0"], "refused on 0.0.0.0"),
    ([], "needs --jwt-secret-file"),
    (["--jwt-secret-file", "/nonexistent/secret"], "cannot read the JWT secret file"),
    (["--auth", "bogus"], "--auth must be jwt or none"),
    (["--auth", "none", "--agent", "no_such_module:f"], "cannot import no_such_module"),
    (["--auth", "none", "--agent", "agentstate.serve"], "--agent takes MODULE:CALLABLE"),
    (["--auth", "none", "--agent-timeout", "nan"], "--agent-timeout must be a positive number"),
    (["--auth", "none", "--agent-timeout", "inf"], "--agent-timeout must be a positive number"),
    (["--auth", "none", "--agent-timeout=-1"], "--agent-timeout must be a positive number"),
])
def test_bad_settings_are_exit_2_before_listening(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([*CLI, "serve", "--dir", str(tmp_path / "s"), "--port", "0", *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and message in proc.stderr


def test_short_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abc\n")
    proc = subprocess.run([*CLI, "serve", "--port", "0", "--jwt-secret-file", str(tmp_path / "short")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "needs at least 32" in proc.stderr


def test_readyz_is_503_with_a_reason_when_the_store_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    srv = ServeProc(tmp_path, store=tmp_path / "not-a-dir").start()
    try:
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable" and r.json()["reason"]
        with srv.client() as http:
            r = http.post("/v1/conversations", json={})
        assert r.status_code == 503 and "\n" not in r.json()["error"]["message"]
    finally:
        assert srv.stop() == 0


def test_a_held_writer_lock_is_423_and_nothing_changes(tmp_path: Path) -> None:
    import fcntl

    srv = ServeProc(tmp_path, extra=["--lock-timeout", "0.3", "--log-format", "json"]).start()
    try:
        with srv.client() as http:
            conv = http.post("/v1/conversations", json={}).json()["id"]
            with open(srv.store / "agentstate.db.lock", "r+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # another process holds the store's writer lock
                r = http.post(f"/v1/conversations/{conv}/items", json={"items": [{"role": "user", "content": "x"}]})
                assert r.status_code == 423 and r.json()["error"]["code"] == "locked", r.text
                assert http.get(f"/v1/conversations/{conv}/items").json()["data"] == []  # reads do not wait
            r = http.post(f"/v1/conversations/{conv}/items", json={"items": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
    finally:
        assert srv.stop() == 0
    lines = [json.loads(x) for x in srv.log.read_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "agentstate.serve.access"]
    assert any(" 423 " in x["message"] for x in access) and all("tenant=" in x["message"] for x in access)


def test_serving_a_postgresql_store(tmp_path: Path, pg_schema_url: str) -> None:
    srv = ServeProc(tmp_path)
    srv.store = None  # type: ignore[assignment]
    srv.extra = ["--url", pg_schema_url]
    _start_with(srv)
    try:
        oa = client(srv, "pg-tenant")
        conv = oa.conversations.create(items=[{"role": "user", "content": "on postgres"}])
        oa.conversations.items.create(conv.id, items=[{"role": "assistant", "content": "yes"}])
        assert [it.content for it in oa.conversations.items.list(conv.id, order="asc")] == ["on postgres", "yes"]
        first = next(iter(oa.conversations.items.list(conv.id, order="asc")))
        oa.conversations.items.delete(first.id, conversation_id=conv.id)
        assert [it.content for it in oa.conversations.items.list(conv.id)] == ["yes"]
    finally:
        assert srv.stop() == 0
    from agentstate import SessionStore

    assert [it.data["content"] for it in SessionStore(pg_schema_url, tenant="pg-tenant").items(conv.id)] == ["yes"]


def _start_with(srv: ServeProc) -> None:
    """Start ``srv`` with its ``extra`` options only (no --dir)."""
    import time

    from tests.serve_proc import free_port

    srv.port = free_port()
    srv.logf = open(srv.log, "ab")
    srv.proc = subprocess.Popen([*CLI, "serve", "--port", str(srv.port), "--jwt-secret-file", str(srv.secret_file),
                                 *srv.extra], stdout=srv.logf, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, srv.log.read_text()
        try:
            if httpx.get(srv.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("server did not start")


def test_tenants_share_one_database(server: ServeProc) -> None:
    """A store object per tenant, one database behind them all: 60 tenants' requests do not open 60
    databases (a connection per thread per tenant would run the process out of descriptors)."""
    import os

    def fds() -> int:
        return len(os.listdir(f"/proc/{server.proc.pid}/fd"))

    with server.client("warm") as http:
        for _ in range(20):
            http.post("/v1/conversations", json={"items": [{"role": "user", "content": "x"}]}).raise_for_status()
    before = fds()
    for i in range(60):
        with server.client(f"tenant-{i}") as http:
            http.post("/v1/conversations", json={"items": [{"role": "user", "content": "x"}]}).raise_for_status()
            http.get("/v1/conversations").raise_for_status()
    assert fds() - before < 20, (before, fds())


def test_serve_with_a_cache_reads_through_the_hot_tier(tmp_path: Path, cache_url: str) -> None:
    """`serve --cache URL`: /readyz reports the hot tier's health; a conversation written over HTTP is
    read back through the cache (a hit counted in `sessions cache stats`), exactly as stored."""
    srv = ServeProc(tmp_path, extra=["--cache", cache_url]).start()
    try:
        ready = httpx.get(srv.url + "/readyz", timeout=10).json()
        assert ready["status"] == "ready" and ready["cache"]["ok"] is True, ready
        oa = client(srv, "cached")
        conv = oa.conversations.create(items=[{"role": "user", "content": "hot"}])
        oa.conversations.items.create(conv.id, items=[{"role": "assistant", "content": "tier"}])
        for _ in range(3):  # items are listed from the durable store (a page by item id is not cached)
            assert [it.content for it in oa.conversations.items.list(conv.id, order="asc")] == ["hot", "tier"]
        for _ in range(3):  # the conversation's info: the first read promotes, the next ones hit
            assert oa.conversations.retrieve(conv.id).id == conv.id
    finally:
        assert srv.stop() == 0
    stats = subprocess.run([*CLI, "sessions", "cache", "stats", "--json", "--dir", str(srv.store),
                            "--cache", cache_url], capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    rows = {r["tenant"]: r for r in json.loads(stats.stdout)["tenants"]}
    assert rows["cached"]["keys"] == 1 and rows["cached"]["hits"] >= 2, rows
