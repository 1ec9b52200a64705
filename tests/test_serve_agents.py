"""The Agents SDK's own `OpenAIConversationsSession` (built on the `openai` client) against
`agentstate serve`: a Runner with a local fake Model over two turns, then the history read back from
the store with `agentstate sessions show --json`."""

from __future__ import annotations

import asyncio
import json
import subprocess

import openai
import pytest
from agents import Agent, Runner
from agents.memory import OpenAIConversationsSession

from tests.serve_proc import CLI, ServeProc
from tests.test_openai_agents import FakeModel, texts

# A message item's content comes back as stored (the SDK sends a string; the hosted API would return
# parts), which the openai client's pydantic models note in a warning.
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")


@pytest.fixture()
def server(tmp_path):
    srv = ServeProc(tmp_path).start()
    yield srv
    assert srv.stop() == 0


def test_openai_conversations_session_two_turns_then_cli_show(server: ServeProc) -> None:
    model = FakeModel(["Paris is the capital of France.", "About 2.1 million people."])
    agent = Agent(name="geo", instructions="Answer briefly.", model=model)

    async def two_turns() -> tuple[str, str, str, list]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=server.token("team-a"), max_retries=0)
        session = OpenAIConversationsSession(openai_client=client)
        r1 = await Runner.run(agent, "What is the capital of France?", session=session)
        r2 = await Runner.run(agent, "How many people live there?", session=session)
        last = await session.get_items(limit=1)
        return r1.final_output, r2.final_output, session.session_id, last

    first, second, conv_id, last = asyncio.run(two_turns())
    assert (first, second) == ("Paris is the capital of France.", "About 2.1 million people.")
    assert conv_id.startswith("conv_")
    assert texts(last) == [("assistant", "About 2.1 million people.")]
    # turn 2 was given turn 1's history, read back from the server
    assert texts(model.inputs[1]) == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital of France."),
        ("user", "How many people live there?"),
    ]
    r = subprocess.run([*CLI, "sessions", "show", conv_id, "--json", "--tenant", "team-a", "--dir", str(server.store)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["session"]["id"] == conv_id and doc["session"]["item_count"] == 4
    assert texts([i["data"] for i in doc["items"]]) == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital of France."),
        ("user", "How many people live there?"),
        ("assistant", "About 2.1 million people."),
    ]
    # pop_item and clear_session go through the server too
    async def pop_and_clear() -> tuple[object, list]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=server.token("team-a"), max_retries=0)
        session = OpenAIConversationsSession(conversation_id=conv_id, openai_client=client)
        popped = await session.pop_item()
        left = await session.get_items()
        await session.clear_session()
        return popped, left

    popped, left = asyncio.run(pop_and_clear())
    assert texts([popped]) == [("assistant", "About 2.1 million people.")] and len(left) == 3
    r = subprocess.run([*CLI, "sessions", "show", conv_id, "--tenant", "team-a", "--dir", str(server.store)],
                       capture_output=True, text=True)
    assert r.returncode == 6  # deleted
