"""The Redis hot tier (agentstate.cache) against a real redis-server (tests/redisserver.py), on every durable
backend: hits come from Redis alone, every write invalidates, a promotion that read before a write cannot
install, a killed writer's lease keeps readers on the durable store, and Redis gone, paused or flushed
never reaches a caller. The process-level proof is integration_tests/test_cache_kill_loop.py."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import orjson
import pytest
import redis

import agentstate.sessions.store as sessions_mod
from agentstate import InvalidInput, NotFound, SessionStore
from agentstate.cache import LEASE_MS, health, stats

U = [{"role": "user", "content": f"m{i}"} for i in range(30)]


def _seqs(items: list[Any]) -> list[int]:
    return [i.seq for i in items]


def _counts(url: str, target: str, tenant: str = "t") -> dict[str, Any]:
    return next(r for r in stats(url, target) if r["tenant"] == tenant)


def test_reads_are_served_hot_and_writes_invalidate(store_target: str, cache_url: str) -> None:
    s = SessionStore(store_target, tenant="t", cache=cache_url, hot_items=10)
    plain = SessionStore(store_target, tenant="t")
    s.append("a", U)
    assert _seqs(s.context("a", 5)) == [26, 27, 28, 29, 30]  # a miss: read the durable store, promote
    assert _counts(cache_url, store_target)["promotions"] == 1
    for _ in range(3):
        assert s.context("a", 5) == plain.context("a", 5)
        assert s.get("a") == plain.get("a")
        assert s.items("a", after=25) == plain.items("a", after=25)
        assert s.items("a", after=22, limit=2) == plain.items("a", after=22, limit=2)
    c = _counts(cache_url, store_target)
    assert (c["hits"], c["misses"], c["promotions"], c["keys"]) == (12, 1, 1, 1)
    # beyond the window: the durable store answers (and nothing is promoted)
    assert s.context("a", 15) == plain.context("a", 15) and s.items("a", after=3) == plain.items("a", after=3)
    # every kind of write invalidates
    s.append("a", [{"role": "user", "content": "new"}])
    assert s.context("a", 2) == plain.context("a", 2) and s.context("a", 1)[0].data["content"] == "new"
    assert s.pop("a").seq == 31 and _seqs(s.context("a", 1)) == [30]
    s.update_metadata("a", {"agent": "x"})
    assert s.get("a").metadata == {"agent": "x"}
    s.delete("a")
    with pytest.raises(NotFound):
        s.context("a")
    with pytest.raises(NotFound):
        s.get("a")
    s.close()
    plain.close()


def test_a_promotion_that_read_before_a_write_cannot_install(store_target: str, cache_url: str) -> None:
    s = SessionStore(store_target, tenant="t", cache=cache_url)
    other = SessionStore(store_target, tenant="t", cache=cache_url)
    s.append("a", U[:3])
    hot = s.hot
    h, lease, e, st = hot._keys("a")
    gen = hot._begin(keys=[h, lease, st], args=["1", hot.hot_ttl_ms])  # the promotion notes the generation,
    info, items = s.show("a", last=50)  # reads the durable store,
    other.append("a", [{"role": "user", "content": "racing"}])  # a writer commits,
    entry = orjson.dumps({"row": [info.id, info.title, None, info.created_at, info.updated_at, 3, 3, None],
                          "items": [[i.seq, i.id, i.created_at, orjson.dumps(i.data).decode()] for i in items]})
    # and the promotion's install of what it read before that commit is refused
    assert hot._install(keys=[h, lease, st, e], args=[gen, b"3 3\n" + entry, 60000]) == 0
    assert _seqs(s.context("a")) == [1, 2, 3, 4]
    s.close()
    other.close()


def test_a_killed_writers_lease_keeps_readers_on_the_durable_store(store_target: str, cache_url: str) -> None:
    s = SessionStore(store_target, tenant="t", cache=cache_url)
    plain = SessionStore(store_target, tenant="t")
    s.append("a", U[:3])
    assert _seqs(s.context("a")) == [1, 2, 3]  # hot
    hot = s.hot
    h, lease, e, _ = hot._keys("a")
    # a writer took its lease, committed, and was killed before its second bump
    hot._fence_begin(keys=[h, lease, e], args=["dead-writer", LEASE_MS, "7", hot.hot_ttl_ms])
    plain.append("a", [{"role": "user", "content": "committed, never acknowledged"}])
    r = redis.Redis.from_url(cache_url)
    before = _counts(cache_url, store_target)["promotions"]
    for _ in range(3):
        assert _seqs(s.context("a")) == [1, 2, 3, 4]  # the lease: the durable store answers
    assert _counts(cache_url, store_target)["promotions"] == before  # and nothing is promoted meanwhile
    r.delete(lease)  # the lease ends (as it does LEASE_MS after the kill)
    assert _seqs(s.context("a")) == [1, 2, 3, 4]
    assert _counts(cache_url, store_target)["promotions"] == before + 1
    r.close()
    s.close()
    plain.close()


def test_flushall_and_a_lost_generation_never_serve_stale(store_target: str, cache_url: str) -> None:
    s = SessionStore(store_target, tenant="t", cache=cache_url)
    s.append("a", U[:2])
    assert _seqs(s.context("a")) == [1, 2]
    r = redis.Redis.from_url(cache_url)
    _, _, e, _ = s.hot._keys("a")
    entry = r.get(e)
    assert entry is not None
    r.flushall()
    s.append("a", [{"role": "user", "content": "after the flush"}])
    assert _seqs(s.context("a")) == [1, 2, 3]
    # an old entry put back (a restored snapshot) does not match the new generation
    r.set(e, entry)
    assert _seqs(s.context("a")) == [1, 2, 3] and _seqs(s.context("a")) == [1, 2, 3]
    r.close()
    s.close()


def test_redis_down_paused_or_back_never_reaches_a_caller(store_target: str, cache_url: str, redis_server: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    s = SessionStore(store_target, tenant="t", cache=cache_url)
    s.append("a", U[:2])
    assert _seqs(s.context("a")) == [1, 2]  # hot
    caplog.set_level(logging.INFO, logger="agentstate.cache")
    redis_server.stop()
    for i in range(5):
        s.append("a", [{"role": "user", "content": f"down {i}"}])
        assert s.context("a")[-1].data["content"] == f"down {i}"
        assert s.get("a").item_count == 3 + i and len(s.items("a")) == 3 + i
    assert s.list().total == 1
    down = [r for r in caplog.records if r.levelno >= logging.WARNING]  # one warning per outage, not per call
    assert len(down) == 1 and "unavailable" in down[0].getMessage(), [r.getMessage() for r in caplog.records]
    redis_server.start()
    s.hot._down_until = 0  # retry now rather than after RETRY_S
    assert _seqs(s.context("a")) == [1, 2, 3, 4, 5, 6, 7]
    assert s.context("a") == SessionStore(store_target, tenant="t").context("a")
    assert any("answers again" in r.getMessage() for r in caplog.records)
    # paused (slow): every call times out quickly and the durable store answers
    r = redis.Redis.from_url(cache_url)
    r.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    s.append("a", [{"role": "user", "content": "while paused"}])
    assert s.context("a", 1)[0].data["content"] == "while paused"
    r.close()
    s.close()


def test_expiry_applies_to_hot_sessions(store_target: str, cache_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    now = ["2026-01-01T00:00:00.000000Z"]
    monkeypatch.setattr(sessions_mod, "_utcnow", lambda: now[0])
    s = SessionStore(store_target, tenant="t", cache=cache_url)
    s.append("a", U[:2], ttl=60)
    assert _seqs(s.context("a")) == [1, 2] and _seqs(s.context("a")) == [1, 2]  # hot
    now[0] = "2026-01-01T00:01:00.000000Z"
    for read in (lambda: s.context("a"), lambda: s.get("a"), lambda: s.items("a")):
        with pytest.raises(NotFound):
            read()
    s.close()


def test_unix_socket_url_and_bad_urls(tmp_path: Any, redis_server: Any, cache_url: str) -> None:
    s = SessionStore(str(tmp_path / "s"), cache=redis_server.unix_url)
    s.append("a", U[:2])
    assert _seqs(s.context("a")) == [1, 2] and _seqs(s.context("a")) == [1, 2]
    assert _counts(redis_server.unix_url, str(tmp_path / "s"), "default")["hits"] == 1
    s.close()
    for bad in ("http://x", "localhost:6379", ""):
        with pytest.raises(InvalidInput):
            SessionStore(str(tmp_path / "s"), cache=bad or 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        SessionStore(str(tmp_path / "s"), cache=cache_url, hot_ttl=0)


def test_health(cache_url: str, redis_server: Any) -> None:
    ok = health(cache_url)
    assert ok["ok"] and "redis 7" in ok["detail"] or ok["ok"] and "redis" in ok["detail"]
    assert "persistence" not in ok["detail"]
    bad = health("redis://127.0.0.1:1/0")
    assert not bad["ok"] and "does not answer" in bad["detail"]


def test_redis_is_never_imported_without_a_cache_url(tmp_path: Any) -> None:
    code = (
        "import sys, agentstate\n"
        f"s = agentstate.SessionStore({str(tmp_path / 's')!r})\n"
        "s.append('a', [{'role': 'user', 'content': 'x'}]); s.context('a'); s.get('a'); s.list()\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "AGENTSTATE_CACHE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
