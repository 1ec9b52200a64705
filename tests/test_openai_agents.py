"""AgentStateSession with the real OpenAI Agents SDK (`openai-agents`, test extra): the SDK's Runner
over two turns with a local fake Model (no network), then the history read back through
`agentstate sessions show --json`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.memory import Session, SessionSettings
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from agentstate import InvalidInput, SessionStore
from agentstate.integrations.openai_agents import AgentStateSession

AGENTSTATE_CLI = str(Path(sys.executable).parent / "agentstate")

set_tracing_disabled(True)


class FakeModel(Model):
    """Answers each turn with a canned message and records the input the Runner gave it."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.inputs: list[list] = []

    async def get_response(self, system_instructions, input, model_settings, tools, output_schema, handoffs,
                           tracing, *, previous_response_id=None, conversation_id=None, prompt=None, **kw):
        self.inputs.append(json.loads(json.dumps(input if isinstance(input, list) else [input], default=str)))
        n = len(self.inputs)
        text = self.replies.pop(0)
        msg = ResponseOutputMessage(
            id=f"msg_{n}", type="message", role="assistant", status="completed",
            content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
        )
        return ModelResponse(output=[msg], usage=Usage(), response_id=None)

    def stream_response(self, *args, **kwargs):  # pragma: no cover - the test does not stream
        raise NotImplementedError


def where(target: str) -> list[str]:
    return ["--url", target] if target.startswith("postgres") else ["--dir", target]


def texts(items: list[dict]) -> list[tuple[str, str]]:
    out = []
    for it in items:
        content = it["content"]
        text = content if isinstance(content, str) else " ".join(p["text"] for p in content)
        out.append((it["role"], text))
    return out


def test_runner_two_turns_then_cli_show(store_target: str) -> None:
    model = FakeModel(["Paris is the capital of France.", "About 2.1 million people."])
    agent = Agent(name="geo", instructions="Answer briefly.", model=model)
    session = AgentStateSession("conv-1", dir=store_target, tenant="team-a")
    assert isinstance(session, Session)  # the SDK's runtime-checkable protocol

    async def two_turns():
        r1 = await Runner.run(agent, "What is the capital of France?", session=session)
        r2 = await Runner.run(agent, "How many people live there?", session=session)
        return r1.final_output, r2.final_output

    first, second = asyncio.run(two_turns())
    assert (first, second) == ("Paris is the capital of France.", "About 2.1 million people.")
    # turn 2 was given turn 1's history from the session
    assert texts(model.inputs[1]) == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital of France."),
        ("user", "How many people live there?"),
    ]

    r = subprocess.run([AGENTSTATE_CLI, "sessions", "show", "conv-1", "--json", "--tenant", "team-a",
                        *where(store_target)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["session"]["id"] == "conv-1" and doc["session"]["item_count"] == 4
    assert doc["session"]["title"] == "What is the capital of France?"
    assert [i["seq"] for i in doc["items"]] == [1, 2, 3, 4]
    assert texts([i["data"] for i in doc["items"]]) == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital of France."),
        ("user", "How many people live there?"),
        ("assistant", "About 2.1 million people."),
    ]
    assert doc["items"][1]["data"]["type"] == "message" and doc["items"][1]["data"]["id"] == "msg_1"
    # another tenant does not see it
    r = subprocess.run([AGENTSTATE_CLI, "sessions", "show", "conv-1", *where(store_target)],
                       capture_output=True, text=True)
    assert r.returncode == 6 and r.stderr.startswith("error: ")
    session.close()


def test_protocol_methods(store_target: str) -> None:
    s = AgentStateSession("p", dir=store_target)

    async def body():
        assert await s.get_items() == []
        assert await s.pop_item() is None
        await s.clear_session()  # nothing to clear: no error
        await s.add_items([])
        await s.add_items([{"role": "user", "content": f"m{i}"} for i in range(5)])
        assert [i["content"] for i in await s.get_items()] == ["m0", "m1", "m2", "m3", "m4"]
        assert [i["content"] for i in await s.get_items(limit=2)] == ["m3", "m4"]
        assert await s.get_items(limit=0) == []
        assert len(await s.get_items(limit=-1)) == 5
        assert (await s.pop_item())["content"] == "m4"
        await s.add_items([{"role": "assistant", "content": "again"}])
        items = SessionStore(store_target).items("p")
        assert [i.seq for i in items] == [1, 2, 3, 4, 5] and items[-1].data["content"] == "again"
        with pytest.raises(InvalidInput):  # one item that is not strict JSON: the whole batch is refused
            await s.add_items([{"role": "user", "content": "ok"}, {"role": "user", "content": float("nan")}])
        assert len(await s.get_items()) == 5
        await s.clear_session()
        assert await s.get_items() == []

    asyncio.run(body())
    limited = AgentStateSession("p", dir=store_target, session_settings=SessionSettings(limit=2))

    async def settings():
        await limited.add_items([{"role": "user", "content": f"n{i}"} for i in range(4)])
        assert [i["content"] for i in await limited.get_items()] == ["n2", "n3"]
        assert len(await limited.get_items(limit=3)) == 3

    asyncio.run(settings())
    s.close()
    limited.close()


def test_concurrent_batches_stay_whole(store_target: str) -> None:
    store = SessionStore(store_target)
    sessions = [AgentStateSession("shared", store=store) for _ in range(8)]

    async def body():
        await asyncio.gather(*(
            s.add_items([{"type": "note", "writer": w, "i": i} for i in range(10)])
            for w, s in enumerate(sessions)
        ))

    asyncio.run(body())
    items = store.items("shared")
    assert [i.seq for i in items] == list(range(1, 81))
    for start in range(0, 80, 10):  # each batch is contiguous and in its own order
        batch = [i.data for i in items[start:start + 10]]
        assert len({d["writer"] for d in batch}) == 1 and [d["i"] for d in batch] == list(range(10))
    store.close()


def test_session_id_mapping_and_no_sdk_import(tmp_path: Path) -> None:
    s = AgentStateSession("../etc", dir=tmp_path / "store")
    assert s.session_id == "../etc" and s.stored_id == "sdk-.._etc@" + __import__("hashlib").sha256(
        b"../etc").hexdigest()[:32]
    asyncio.run(s.add_items([{"role": "user", "content": "hi"}]))
    assert SessionStore(tmp_path / "store").items(s.stored_id)[0].data == {"role": "user", "content": "hi"}
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]  # the id reached no path
    s.close()
    code = ("import sys, agentstate; import agentstate.integrations.openai_agents; "
            "print(any(m == 'agents' or m.startswith('agents.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
