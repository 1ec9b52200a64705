"""AgentStateSession as a drop-in for the OpenAI Agents SDK's sessions (issue 20).

Every test runs on three backends (tests/conftest.py ``agents_backend``): AgentStateSession on a
store directory, AgentStateSession on PostgreSQL, and, for comparison, the SDK's own SQLiteSession.
The behaviours are those of the SDK's documented Session protocol and of its SQLiteSession; every
one is the same on all three except the documented deviations (docs/format.md "Agents SDK
sessions"), each asserted explicitly with ``deviation(...)``, never skipped.
"""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from agents import Agent, Runner, SessionSettings, SQLiteSession, set_tracing_disabled
from agents.memory import OpenAIResponsesCompactionSession, Session
from agents.memory.session import _session_accepts_wrapper
from test_openai_agents import FakeModel

from agentstate import SessionStore
from agentstate.integrations.openai_agents import AgentStateSession, stored_id

set_tracing_disabled(True)

MSG = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


class Backend:
    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where
        self.opened: list[Any] = []

    @property
    def agentstate(self) -> bool:
        return self.kind.startswith("agentstate")

    def make(self, session_id: str = "s", **kw: Any) -> Any:
        if self.agentstate:
            s = AgentStateSession(session_id, dir=self.where, **kw)
        else:
            s = SQLiteSession(session_id, self.where, **kw)
        self.opened.append(s)
        return s

    @contextmanager
    def writes_blocked(self, session_id: str):
        """Another holder of the write lock ``session_id``'s writers wait for, until the block ends (a thread):
        on a directory the database's one writer lock, on PostgreSQL that session's own lock."""
        started, release = threading.Event(), threading.Event()
        if self.agentstate:
            store = SessionStore(self.where)

            def hold() -> None:
                from agentstate.integrations.openai_agents import stored_id

                with store._write("hold", stored_id(session_id)):
                    started.set()
                    release.wait()
        else:
            lock = SQLiteSession._file_locks[Path(self.where).resolve()]

            def hold() -> None:
                with lock:
                    started.set()
                    release.wait()
        t = threading.Thread(target=hold)
        t.start()
        started.wait()
        try:
            yield
        finally:
            release.set()
            t.join()
            if self.agentstate:
                store.close()

    def deviation(self, agentstate: Any, sdk: Any) -> Any:
        """The expected value where agentstate deviates from SQLiteSession on purpose (documented)."""
        return agentstate if self.agentstate else sdk


@pytest.fixture
def be(agents_backend: tuple[str, str]):
    b = Backend(*agents_backend)
    yield b
    for s in b.opened:
        s.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the protocol --------------------------------------------------------------------------------------


def test_protocol_round_trip_and_limits(be: Backend) -> None:
    s = be.make("conv")
    assert isinstance(s, Session)
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    rich = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"x\": [1, 2.5, \"é🙂\"]}",
            "nested": {"a": [None, True, {"b": ""}]}}

    async def body() -> None:
        assert await s.get_items() == [] and await s.pop_item() is None
        await s.clear_session()
        await s.add_items([])
        await s.add_items(items)
        await s.add_items([rich])
        assert await s.get_items() == [*items, rich]
        assert await s.get_items(2) == [items[4], rich]
        assert await s.get_items(limit=0) == []
        assert await s.get_items(limit=-1) == [*items, rich]  # SQLite: a negative LIMIT is no limit
        assert await s.get_items(limit=100) == [*items, rich]
        assert await s.pop_item() == rich
        assert await s.pop_item() == items[4]
        other = be.make("conv")  # a second object on the same id sees the same history
        assert await other.get_items() == items[:4]
        assert await be.make("other").get_items() == []
        await s.clear_session()
        assert await other.get_items() == [] and await s.pop_item() is None

    run(body())


def test_session_settings(be: Backend) -> None:
    assert be.make("a").session_settings == SessionSettings()
    s = be.make("b", session_settings={"limit": 1})
    assert isinstance(s.session_settings, SessionSettings) and s.session_settings.limit == 1
    assert be.make("c", session_settings=SessionSettings(limit=2)).session_settings.limit == 2
    with pytest.raises(TypeError, match="limitt"):
        be.make("d", session_settings={"limitt": 1})

    async def body() -> None:
        await s.add_items(MSG)
        assert await s.get_items() == MSG[1:]
        assert await s.get_items(limit=2) == MSG

    run(body())
    # the Runner with a dict limit (an AttributeError before issue 20)
    model = FakeModel(["first", "second"])
    agent = Agent(name="a", model=model)
    r = be.make("runner", session_settings={"limit": 1})

    async def turns() -> None:
        await Runner.run(agent, "one", session=r)
        await Runner.run(agent, "two", session=r)

    run(turns())
    assert [i.get("content") for i in model.inputs[1]][-1] == "two" and len(model.inputs[1]) == 2


def test_runner_with_empty_input(be: Backend) -> None:
    model = FakeModel(["answer"])
    s = be.make("empty")
    result = run(Runner.run(Agent(name="a", model=model), "", session=s))
    assert result.final_output == "answer"
    history = run(s.get_items())
    assert history[0] == {"role": "user", "content": ""} and len(history) == 2


# -- close -----------------------------------------------------------------------------------------------


def test_use_after_close_is_runtime_error(be: Backend) -> None:
    s = be.make("closing")
    run(s.add_items(MSG))
    s.close()
    s.close()  # twice: fine

    async def body() -> None:
        for call in (s.get_items(), s.add_items([]), s.add_items(MSG), s.pop_item(), s.clear_session()):
            with pytest.raises(RuntimeError, match="closed"):
                await call

    run(body())
    assert run(be.make("closing").get_items()) == MSG  # nothing changed


def test_await_close(be: Backend) -> None:
    s = be.make("aclose")

    async def body() -> None:
        await s.add_items(MSG)
        await s.close()

    if be.agentstate:
        run(body())  # deviation: close() is also awaitable, as the SDK's async backends' close()
        with pytest.raises(RuntimeError):
            run(s.get_items())
    else:
        with pytest.raises(TypeError):  # SQLiteSession.close() returns None
            run(body())
    assert run(be.make("aclose").get_items()) == MSG


# -- cancellation ----------------------------------------------------------------------------------------


def test_cancelled_add_items_waiting_for_the_lock(be: Backend) -> None:
    """Cancelled while waiting for the write lock: the CancelledError surfaces only once the write is
    done, all of it; nothing changes after that."""
    s = be.make("cancel")
    batch = [{"role": "user", "content": f"c{i}"} for i in range(20)]

    async def body() -> list[Any]:
        with be.writes_blocked("cancel"):
            task = asyncio.create_task(s.add_items(batch))
            await asyncio.sleep(0.3)  # the worker is waiting for the lock
            task.cancel()
            for _ in range(20):
                await asyncio.sleep(0)
            assert not task.done()  # not before the write is settled
        with pytest.raises(asyncio.CancelledError):
            await task
        return await s.get_items()

    seen = run(body())
    assert seen == batch
    assert run(be.make("cancel").get_items()) == seen  # and stays so


def test_cancelled_before_the_worker_starts_stores_nothing(be: Backend) -> None:
    s = be.make("early")

    async def body() -> None:
        task = asyncio.create_task(s.add_items(MSG))
        task.cancel()  # before it ever runs
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())
    assert run(s.get_items()) == []


def test_cancelled_while_queued_for_a_worker_stores_nothing(be: Backend) -> None:
    """Cancelled after add_items handed its write to the executor but before a worker thread took it
    (every worker busy): the cancellation surfaces once the write is settled; agentstate's never runs
    (deviation: the SDK's runs all the same)."""
    import concurrent.futures
    import threading

    s = be.make("queued")
    gate = threading.Event()

    async def body() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        busy = loop.run_in_executor(None, gate.wait)  # the only worker
        task = asyncio.create_task(s.add_items(MSG))
        for _ in range(20):
            await asyncio.sleep(0)  # add_items is now waiting on its queued write
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        gate.set()
        await busy
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())
    assert run(be.make("queued").get_items()) == be.deviation([], MSG)


# -- what is accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sid", ["a b", "x" * 5000, "🙂", "../etc/passwd", "/abs", ".hidden", "tab\tnul\x00"])
def test_any_string_session_id(be: Backend, sid: str) -> None:
    s = be.make(sid)
    assert s.session_id == sid
    run(s.add_items(MSG))
    assert run(be.make(sid).get_items()) == MSG
    assert run(be.make(sid + "!").get_items()) == []
    assert not (Path(be.where).parent / "etc").exists()
    if be.agentstate:
        assert SessionStore(be.where).items(stored_id(sid))[0].data == MSG[0]


def test_lookalike_ids_stay_apart(be: Backend) -> None:
    a, b = be.make("a b"), be.make("a_b")
    run(a.add_items([{"n": 1}]))
    run(b.add_items([{"n": 2}]))
    assert run(a.get_items()) == [{"n": 1}] and run(b.get_items()) == [{"n": 2}]


def test_empty_session_id(be: Backend) -> None:
    if be.agentstate:  # deviation: an empty id is refused (SQLiteSession keeps it)
        with pytest.raises(ValueError):
            be.make("")
    else:
        s = be.make("")
        run(s.add_items(MSG))
        assert run(s.get_items()) == MSG


ODD_ITEMS = [
    {"role": "assistant", "content": []},
    {"role": "user", "content": ""},
    {"role": "user", "content": "   "},
    {"role": "user", "content": None},
    {"role": "user", "content": [{"type": "input_text", "text": ""}]},
    {"role": "wizard", "content": "?"},
    {"type": "unknown_item", "x": 1},
    {},
    {"agentstate:value": 5},
    "a bare string",
    [1, 2, 3],
    42,
    None,
    {"role": "user", "content": "x" * (2 << 20)},  # 2 MiB
]


def test_every_json_item_is_stored_as_given(be: Backend) -> None:
    s = be.make("odd")
    run(s.add_items(ODD_ITEMS))
    assert run(s.get_items()) == ODD_ITEMS
    assert run(s.get_items(3)) == ODD_ITEMS[-3:]
    assert run(s.pop_item()) == ODD_ITEMS[-1]
    assert run(s.pop_item()) is None  # the item None


def test_unserializable_item_is_type_error_and_stores_nothing(be: Backend) -> None:
    s = be.make("bad")
    run(s.add_items(MSG))
    for bad in ({"content": object()}, {"content": {1, 2}}, object()):
        with pytest.raises(TypeError) as e:
            run(s.add_items([{"role": "user", "content": "ok"}, bad]))
        assert not isinstance(e.value, ValueError)
    assert run(s.get_items()) == MSG


@pytest.mark.parametrize("item", [{"x": float("nan")}, {"x": float("inf")}, {"x": 2**70}, {1: "int key"}])
def test_values_json_text_cannot_hold_exactly(be: Backend, item: dict) -> None:
    """Deviation: json.dumps writes NaN/Infinity (not JSON), any integer, and turns non-string keys into
    strings; agentstate keeps strict JSON and refuses these (ValueError), storing nothing."""
    s = be.make("strict")
    if be.agentstate:
        with pytest.raises(ValueError):
            run(s.add_items([MSG[0], item]))
        assert run(s.get_items()) == []
    else:
        run(s.add_items([MSG[0], item]))
        assert run(s.get_items()) == [MSG[0], json.loads(json.dumps(item))]


# -- wrapper= and the compaction hooks ---------------------------------------------------------------------


def test_wrapper_keyword(be: Backend) -> None:
    s = be.make("w")
    # deviation: agentstate takes the SDK's optional wrapper= on each method (SQLiteSession does not)
    assert _session_accepts_wrapper(s) == be.deviation(True, False)
    if be.agentstate:
        async def body() -> None:
            w = SimpleNamespace()
            await s.add_items(MSG, wrapper=w)
            assert await s.get_items(wrapper=w) == MSG
            assert await s.pop_item(wrapper=w) == MSG[1]
            await s.clear_session(wrapper=w)
            assert await s.get_items(1, wrapper=None) == []

        run(body())


def test_compaction_snapshot_replaces_a_suffix_atomically(be: Backend) -> None:
    s = be.make("snap")
    hist = [{"role": "user", "content": f"h{i}"} for i in range(6)]

    async def body() -> None:
        await s.add_items(hist)
        snap = await s._get_compaction_snapshot(3)
        assert snap.items == hist[3:] and snap.complete is False
        whole = await s._get_compaction_snapshot(10)
        assert whole.items == hist and whole.complete is True
        assert await snap.replace_suffix(3, []) is False  # nothing selected
        assert await snap.replace_suffix(1, [{"role": "assistant", "content": "sum"}]) is True
        assert await s.get_items() == [*hist[:4], {"role": "assistant", "content": "sum"}]
        # a stale snapshot (history changed since) replaces nothing
        assert await whole.replace_suffix(0, [{"role": "assistant", "content": "late"}]) is False
        await s.add_items([{"role": "user", "content": "new"}])
        again = await s._get_compaction_snapshot(2)
        await s.add_items([{"role": "user", "content": "newer"}])
        assert await again.replace_suffix(0, []) is False
        assert len(await s.get_items()) == 7
        # prune_prefix drops the leading run of old items it calls expired, in the same transaction
        p = await s._get_compaction_snapshot(2, prune_prefix=lambda it: it.get("content") in ("h0", "h1", "h3"))
        assert await p.replace_suffix(0, [{"role": "assistant", "content": "sum2"}]) is True
        assert await s.get_items() == [hist[2], hist[3], {"role": "assistant", "content": "sum"},
                                       {"role": "assistant", "content": "sum2"}]
        await s.add_items([{"role": "user", "content": "after"}])  # seqs still append after the rewrite
        assert (await s.get_items())[-1] == {"role": "user", "content": "after"}
        assert await s.pop_item() == {"role": "user", "content": "after"}

    run(body())
    if be.agentstate:
        items = SessionStore(be.where).items(s.stored_id)
        assert [i.seq for i in items] == [1, 2, 3, 4]


def test_atomic_replace_items(be: Backend) -> None:
    s = be.make("atomic")
    run(s.add_items(MSG))
    # deviation: agentstate offers _atomic_replace_items (as the SDK's RedisSession); SQLiteSession only
    # the snapshot hook
    assert hasattr(s, "_atomic_replace_items") == be.agentstate
    if not be.agentstate:
        return

    async def body() -> None:
        assert await s._atomic_replace_items([{"role": "assistant", "content": "summary"}]) is True
        assert await s.get_items() == [{"role": "assistant", "content": "summary"}]
        with pytest.raises(TypeError):
            await s._atomic_replace_items([{"content": object()}])
        assert await s.get_items() == [{"role": "assistant", "content": "summary"}]
        assert await s._atomic_replace_items([]) is True
        assert await s.get_items() == []

    run(body())

    class Sub(AgentStateSession):
        pass

    sub = Sub("atomic", dir=be.where)
    assert run(sub._atomic_replace_items([])) is False and run(sub._get_compaction_snapshot(3)) is None
    sub.close()


def test_compaction_session_over_the_backend(be: Backend) -> None:
    """The SDK's OpenAIResponsesCompactionSession (forced manual compaction, a fake client): the history
    becomes the compacted output."""
    s = be.make("compact")
    client = MagicMock()
    client.responses.compact = AsyncMock(return_value=SimpleNamespace(
        output=[{"type": "compaction", "encrypted_content": "abc"}]))
    comp = OpenAIResponsesCompactionSession("compact", s, client=client, compaction_mode="input")

    async def body() -> None:
        await comp.add_items([{"role": "user", "content": f"q{i}"} for i in range(4)])
        await comp.run_compaction({"force": True})
        assert await s.get_items() == [{"type": "compaction", "encrypted_content": "abc"}]

    run(body())
    client.responses.compact.assert_awaited_once()
