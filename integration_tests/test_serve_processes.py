"""`agentstate serve` as a process: SIGTERM drains in-flight requests and exits 0; SIGKILL at random
moments while 8 clients append loses no acknowledged append and leaves none half-present; an agent
that fails or times out is 502 with the user message kept; --workers 2 serves one store."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from integration_tests.procs import integrity, seeded_rng
from tests.serve_proc import ServeProc

HERE = Path(__file__).resolve().parent
AGENT_ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    srv = ServeProc(tmp_path, extra=["--agent", "serve_agents:slow"], env=AGENT_ENV).start()
    results: list[httpx.Response] = []

    def chat() -> None:
        with srv.client() as http:
            results.append(http.post("/api/alice/chat", json={"message": "take your time"}))

    t = threading.Thread(target=chat)
    t.start()
    time.sleep(0.5)  # the request is in the agent now
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(30)
    t.join(30)
    assert code == 0, srv.log.read_text()[-2000:]
    assert results and results[0].status_code == 200 and results[0].json()["response"] == "slow reply"
    assert time.monotonic() - started >= 0.5  # it waited for the request
    # and the reply was committed before the exit
    srv2 = ServeProc(tmp_path).start()
    with srv2.client() as http:
        listing = http.get("/api/alice/conversations").json()
    assert listing["conversations"][0]["message_count"] == 2
    assert srv2.stop() == 0
    assert "Traceback" not in srv.log.read_text()


@pytest.mark.parametrize("agent, status", [("serve_agents:boom", 502), ("serve_agents:stuck", 502),
                                           ("serve_agents:async_echo", 200)])
def test_a_failing_agent_is_502_and_keeps_the_user_message(tmp_path: Path, agent: str, status: int) -> None:
    srv = ServeProc(tmp_path, extra=["--agent", agent, "--agent-timeout", "1"], env=AGENT_ENV).start()
    try:
        with srv.client() as http:
            r = http.post("/api/alice/chat", json={"message": "hello"})
            assert r.status_code == status, r.text
            conv = http.get("/api/alice/conversations").json()["conversations"][0]
            detail = http.get(f"/api/alice/conversations/{conv['id']}").json()
        if status == 502:
            assert set(r.json()) == {"error", "message"} and "user message is kept" in r.json()["message"]
            assert [m["role"] for m in detail["messages"]] == ["user"]
        else:
            assert r.json()["response"] == "async: hello"
            assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    finally:
        assert srv.stop() == 0


CLIENTS = 8
ITEMS_PER_APPEND = 3


def test_sigkill_while_8_clients_append_loses_no_acknowledged_append(tmp_path: Path) -> None:
    rng = seeded_rng()
    rounds = int(os.environ.get("AGENTSTATE_SERVE_KILL_ROUNDS", "6"))
    srv = ServeProc(tmp_path).start()
    with srv.client() as http:
        convs = [http.post("/v1/conversations", json={}).json()["id"] for _ in range(CLIENTS)]
    acked: list[set[str]] = [set() for _ in range(CLIENTS)]
    sent: list[set[str]] = [set() for _ in range(CLIENTS)]
    errors: list[str] = []
    for rnd in range(rounds):
        if rnd:
            srv.start()
        stop = threading.Event()

        def client(k: int, rnd: int = rnd, stop: threading.Event = stop) -> None:
            n = 0
            with srv.client(timeout=10.0) as http:
                while not stop.is_set():
                    tag = f"c{k}-r{rnd}-n{n}"
                    n += 1
                    sent[k].add(tag)
                    items = [{"role": "user", "content": f"{tag} part {j}", "tag": tag, "part": j}
                             for j in range(ITEMS_PER_APPEND)]
                    try:
                        r = http.post(f"/v1/conversations/{convs[k]}/items", json={"items": items})
                    except httpx.HTTPError:
                        return  # the server died under this request: its outcome is unknown
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        return
                    acked[k].add(tag)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.5))
        srv.kill()  # SIGKILL
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert integrity(srv.store) == ["ok"]
    srv.start()
    try:
        with srv.client() as http:
            for k, conv in enumerate(convs):
                found: dict[str, list[int]] = {}
                after = None
                while True:
                    params = {"order": "asc", "limit": 100, **({"after": after} if after else {})}
                    page = http.get(f"/v1/conversations/{conv}/items", params=params).json()
                    for it in page["data"]:
                        found.setdefault(it["tag"], []).append(it["part"])
                    if not page["has_more"]:
                        break
                    after = page["last_id"]
                missing = acked[k] - set(found)
                assert not missing, f"acknowledged appends lost: {sorted(missing)[:5]}"
                half = {t: parts for t, parts in found.items() if parts != list(range(ITEMS_PER_APPEND))}
                assert not half, f"half-present appends: {half}"
                assert set(found) <= sent[k]
        assert sum(len(a) for a in acked) > CLIENTS * rounds  # the clients did append in every round
    finally:
        assert srv.stop() == 0


def test_two_workers_serve_one_store(tmp_path: Path) -> None:
    srv = ServeProc(tmp_path, extra=["--workers", "2"]).start()
    try:
        with srv.client() as http:
            ids = [http.post("/v1/conversations", json={"items": [{"role": "user", "content": f"w{i}"}]}).json()["id"]
                   for i in range(10)]
            assert http.get("/v1/conversations", params={"limit": 100}).json()["total"] == 10
            assert all(http.get(f"/v1/conversations/{c}").status_code == 200 for c in ids)
    finally:
        assert srv.stop() == 0
