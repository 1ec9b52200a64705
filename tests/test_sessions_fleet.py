"""Sessions for a fleet: time to live and sessions found by metadata (``list(where=...)``), on every
backend, with examples and a hypothesis model. The clock is agentstate.sessions._utcnow, replaced by a
fixed, steppable one (no sleeping, no timing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentstate.sessions.store as sessions_mod
from agentstate import InvalidInput, NotFound, SessionStore
from agentstate.sessions.where import parse_where
from agentstate.sql import Stmt
from agentstate.sql.schema import MIGRATIONS

U = {"role": "user", "content": "hi"}
BASE = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = BASE

    def __call__(self) -> str:
        return self.t.isoformat(timespec="microseconds").replace("+00:00", "Z")

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(sessions_mod, "_utcnow", c)
    return c


# -- expiry ------------------------------------------------------------------------------------------------


def test_ttl_expires_a_session_for_every_read_at_once(store_target: str, clock: Clock) -> None:
    s = SessionStore(store_target, tenant="t")
    info = s.create("a", ttl="1h")
    assert info.expires_at == "2026-01-01T01:00:00.000000Z"
    s.append("a", [U])
    s.append("keep", [U])
    assert s.list().total == 2
    clock.advance(3599)
    assert [i.data for i in s.context("a")] == [U]
    clock.advance(1)  # now == expires_at: gone
    for read in (lambda: s.get("a"), lambda: s.context("a"), lambda: s.items("a"), lambda: s.show("a"),
                 lambda: s.pop("a"), lambda: s.delete("a"), lambda: s.update_metadata("a", {"x": 1})):
        with pytest.raises(NotFound):
            read()
    page = s.list()
    assert [i.id for i in page.items] == ["keep"] and page.total == 1
    assert s.prune() == ["a"]  # its rows are removed by prune
    assert s.list().total == 1 and s.prune() == []
    s.close()


def test_append_extends_and_a_write_that_notices_an_expired_session_starts_anew(store_target: str,
                                                                                 clock: Clock) -> None:
    s = SessionStore(store_target, tenant="t")
    s.append("a", [U], ttl=60)
    clock.advance(50)
    s.append("a", [U], ttl="60s")  # extends: 60 s from now
    clock.advance(50)
    assert len(s.items("a")) == 2
    s.append("a", [U])  # no ttl: the expiry stays
    assert s.get("a").expires_at == "2026-01-01T00:01:50.000000Z"
    clock.advance(100)
    with pytest.raises(NotFound):
        s.get("a")
    with pytest.raises(NotFound):
        s.append("a", [U], create=False)
    s.append("a", [{"role": "user", "content": "again"}])  # the expired session is removed, a new one starts
    assert [i.seq for i in s.items("a")] == [1] and s.get("a").expires_at is None
    assert s.list().total == 1
    s.create("b", ttl=1)
    clock.advance(1)
    assert s.create("b").item_count == 0  # create over an expired id
    s.close()


def test_default_ttl_is_opt_in(store_target: str, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    assert SessionStore(store_target).append("a", [U]) and SessionStore(store_target).get("a").expires_at is None
    monkeypatch.setenv("AGENTSTATE_SESSION_TTL", "7d")
    s = SessionStore(store_target)
    assert s.default_ttl == 7 * 86400
    s.append("b", [U])
    assert s.get("b").expires_at == "2026-01-08T00:00:00.000000Z"
    s2 = SessionStore(store_target, default_ttl="1h")
    s2.append("b", [U])
    assert s2.get("b").expires_at == "2026-01-01T01:00:00.000000Z"
    for bad in ("0", "-1", "soon", 0, True):
        with pytest.raises(InvalidInput):
            SessionStore(store_target, default_ttl=bad)
        with pytest.raises(InvalidInput):
            s.create("c", ttl=bad)
    monkeypatch.setenv("AGENTSTATE_SESSION_TTL", "nope")
    with pytest.raises(InvalidInput, match="AGENTSTATE_SESSION_TTL"):
        SessionStore(store_target)


# -- where -------------------------------------------------------------------------------------------------


def test_where_finds_sessions_by_metadata(store_target: str, clock: Clock) -> None:
    s = SessionStore(store_target, tenant="t")
    s.create("s1", metadata={"agent_id": "a1", "channel": "web", "n": 1, "vip": True})
    clock.advance(1)
    s.create("s2", metadata={"agent_id": "a1", "channel": "sms", "n": 1.0, "nested": {"x": 1}})
    clock.advance(1)
    s.create("s3", metadata={"agent_id": "a2", "channel": "web", "n": "1"})
    clock.advance(1)
    SessionStore(store_target, tenant="other").create("s4", metadata={"agent_id": "a1"})

    def ids(**where: Any) -> list[str]:
        page = s.list(where=where)
        assert page.total == len(page.items)
        return [i.id for i in page.items]

    assert ids(agent_id="a1") == ["s2", "s1"]
    assert ids(agent_id="a1", channel="web") == ["s1"]
    assert ids(n=1) == ["s2", "s1"] and ids(n="1") == ["s3"] and ids(vip=True) == ["s1"]
    assert ids(vip=1) == [] and ids(agent_id="zz") == []
    s.append("s1", [U])  # most recently updated first
    assert ids(agent_id="a1") == ["s1", "s2"]
    s.update_metadata("s2", {"agent_id": "a3"})
    assert ids(agent_id="a1") == ["s1"] and ids(agent_id="a3") == ["s2"] and ids(channel="sms") == []
    assert s.get("s2").metadata == {"agent_id": "a3"}
    s.update_metadata("s2", None)
    assert ids(agent_id="a3") == [] and s.get("s2").metadata is None
    s.delete("s1")
    assert ids(agent_id="a1") == []
    with pytest.raises(NotFound):
        s.update_metadata("nope", {})
    for bad in ({}, {"x": None}, {"x": [1]}, {"x": float("nan")}, {"": "a"}, "agent_id=a1"):
        with pytest.raises(InvalidInput):
            s.list(where=bad)  # type: ignore[arg-type]
    s.close()


def test_where_pages_with_cursors_and_counts_matches(store_target: str, clock: Clock) -> None:
    s = SessionStore(store_target, tenant="t")
    for i in range(25):
        s.create(f"s{i:02d}", metadata={"agent_id": "a" if i % 2 else "b", "i": i})
        if i % 5 == 0:
            clock.advance(1)  # ties on updated_at too
    seen, cursor = [], None
    while True:
        page = s.list(limit=4, cursor=cursor, where={"agent_id": "a"})
        assert page.total == 12
        seen += [i.id for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    want = sorted((f"s{i:02d}" for i in range(25) if i % 2), key=lambda x: (s.get(x).updated_at, x), reverse=True)
    assert seen == want
    s.create("x", metadata={"agent_id": "a"}, ttl=10)
    assert s.list(where={"agent_id": "a"}).total == 13
    clock.advance(10)
    assert s.list(where={"agent_id": "a"}).total == 12
    s.close()


def test_parse_where() -> None:
    assert parse_where(["agent_id=a1", "channel=web"]) == {"agent_id": "a1", "channel": "web"}
    assert parse_where(["n:=5", "vip:=true", "s:=\"x\"", "eq=a=b"]) == {"n": 5, "vip": True, "s": "x", "eq": "a=b"}
    for bad in ("noequals", "=v", "n:=nope", "a=1|a=2"):
        with pytest.raises(InvalidInput):
            parse_where(bad.split("|"))


# -- a model -----------------------------------------------------------------------------------------------

KEYS = ("agent", "channel", "n")
VALUES = st.sampled_from(["a", "b", 1, 2, 1.0, True, False, "1"])
META = st.one_of(st.none(), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3))
SIDS = st.sampled_from(["s1", "s2", "s3", "s4"])
TTL = st.one_of(st.none(), st.sampled_from([1, 5, 30]))
OPS = st.lists(st.one_of(
    st.tuples(st.just("create"), SIDS, META, TTL),
    st.tuples(st.just("append"), SIDS, TTL),
    st.tuples(st.just("meta"), SIDS, META),
    st.tuples(st.just("delete"), SIDS),
    st.tuples(st.just("advance"), st.sampled_from([1, 4, 10])),
    st.tuples(st.just("prune")),
    st.tuples(st.just("list"), st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=2)),
), max_size=25)


def _same(a: Any, b: Any) -> bool:
    def kind(v):
        return ("b" if isinstance(v, bool) else "n" if isinstance(v, (int, float)) else "s")
    return kind(a) == kind(b) and a == b


@pytest.mark.parametrize("backend", ["dir", "pg", "dir+cache", "pg+cache"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_ttl_and_where_against_a_model(backend: str, ops: list[tuple], tmp_path_factory: pytest.TempPathFactory,
                                       request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    from pgserver import schema_url

    clock = Clock()
    monkeypatch.setattr(sessions_mod, "_utcnow", clock)
    target = (str(tmp_path_factory.mktemp("model") / "store") if backend.startswith("dir")
              else schema_url(request.getfixturevalue("pg_url"), "m_" + uuid.uuid4().hex[:12]))
    cache = request.getfixturevalue("cache_url") if backend.endswith("+cache") else None
    s = SessionStore(target, tenant="t", cache=cache)  # through the hot tier: the same answers
    model: dict[str, dict[str, Any]] = {}  # id -> {"meta", "updated", "expires", "items"}

    def live() -> dict[str, dict[str, Any]]:
        now = clock()
        return {k: v for k, v in model.items() if v["expires"] is None or v["expires"] > now}

    def exp(ttl: int | None) -> str | None:
        return None if ttl is None else (clock.t + timedelta(seconds=ttl)).isoformat(
            timespec="microseconds").replace("+00:00", "Z")

    for op in ops:
        kind = op[0]
        if kind == "create":
            _, sid, meta, ttl = op
            if sid in live():
                with pytest.raises(agentstate_conflict()):
                    s.create(sid, metadata=meta, ttl=ttl)
            else:
                s.create(sid, metadata=meta, ttl=ttl)
                model[sid] = {"meta": meta, "updated": clock(), "expires": exp(ttl), "items": 0}
        elif kind == "append":
            _, sid, ttl = op
            s.append(sid, [U], ttl=ttl)
            old = live().get(sid)
            m = old or {"meta": None, "expires": None, "items": 0}
            model[sid] = {"meta": m["meta"], "updated": clock(), "items": m["items"] + 1,
                          "expires": exp(ttl) if ttl is not None else m["expires"]}
        elif kind == "meta":
            _, sid, meta = op
            if sid in live():
                s.update_metadata(sid, meta)
                model[sid].update(meta=meta, updated=clock())
            else:
                with pytest.raises(NotFound):
                    s.update_metadata(sid, meta)
        elif kind == "delete":
            _, sid = op
            if sid in live():
                s.delete(sid)
                del model[sid]
            else:
                with pytest.raises(NotFound):
                    s.delete(sid)
        elif kind == "advance":
            clock.advance(op[1])
        elif kind == "prune":
            gone = sorted(set(model) - set(live()))
            assert sorted(s.prune()) == gone
            for sid in gone:
                del model[sid]
        elif kind == "list":
            where = op[1]
            want = sorted(((v["updated"], k) for k, v in live().items()
                           if v["meta"] and all(key in v["meta"] and _same(v["meta"][key], val)
                                                for key, val in where.items())), reverse=True)
            page = s.list(where=where, limit=2)
            got, cursor = [i.id for i in page.items], page.next_cursor
            while cursor:
                nxt = s.list(where=where, limit=2, cursor=cursor)
                got += [i.id for i in nxt.items]
                cursor = nxt.next_cursor
            assert got == [k for _, k in want] and page.total == len(want)
        # every step: the whole picture
        page = s.list(limit=100)
        alive = live()
        assert page.total == len(alive)
        assert {i.id: i.item_count for i in page.items} == {k: v["items"] for k, v in alive.items()}
        for sid in ("s1", "s2", "s3", "s4"):
            if sid in alive:
                assert s.get(sid).metadata == alive[sid]["meta"]
                assert len(s.context(sid, 50)) == alive[sid]["items"]
            else:
                with pytest.raises(NotFound):
                    s.get(sid)
                with pytest.raises(NotFound):
                    s.context(sid)
    s.close()


def agentstate_conflict() -> type[Exception]:
    from agentstate import ConflictError

    return ConflictError


_OLD_SESSION = Stmt(both="INSERT INTO sessions (tenant, id, title, metadata, created_at, updated_at, last_seq, "
                         "item_count) VALUES ('t', :id, NULL, :m, '2026-01-01T00:00:00.000000Z', "
                         "'2026-01-01T00:00:00.000000Z', 0, 0)")
_NO_TAGS = Stmt(both="DELETE FROM session_tags WHERE tenant = 't'")
_MIGRATE_TAGS = Stmt(sqlite=MIGRATIONS[2]["sqlite"][-1], postgres=MIGRATIONS[2]["postgres"][-1])


def test_the_migration_indexes_metadata_written_before_it(store_target: str) -> None:
    """Schema version 3's INSERT ... SELECT over existing sessions (run here on rows written without tags)
    gives the tags the library would have written, for strings, booleans and integers, on both dialects."""
    s = SessionStore(store_target, tenant="t")
    s.create("keep", metadata={"agent_id": "zz"})
    meta = '{"agent_id":"a1","vip":true,"off":false,"n":42,"big":-7,"x":1.5,"nested":{"a":1},"l":[1],"none":null}'
    with s.db.write("test") as tx:  # (module-level statements: the engines cache a text by its Stmt's id)
        for sid in ("old1", "old2"):
            tx.run(_OLD_SESSION, id=sid, m=meta)
        tx.run(_NO_TAGS)
        tx.run(_MIGRATE_TAGS)
    for where, want in (({"agent_id": "a1"}, ["old2", "old1"]), ({"vip": True}, ["old2", "old1"]),
                        ({"off": False}, ["old2", "old1"]), ({"n": 42}, ["old2", "old1"]), ({"big": -7}, ["old2", "old1"]),
                        ({"agent_id": "zz"}, ["keep"]), ({"n": "42"}, [])):
        assert [i.id for i in s.list(where=where).items] == want, where
    s.close()
