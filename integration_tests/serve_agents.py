"""Agent runners for `agentstate serve --agent serve_agents:NAME` in the integration tests."""

from __future__ import annotations

import time


def slow(messages: list[dict]) -> str:
    time.sleep(1.5)
    return "slow reply"


def boom(messages: list[dict]) -> str:
    raise RuntimeError("the model is down")


def stuck(messages: list[dict]) -> str:
    time.sleep(30)
    return "too late"


async def async_echo(messages: list[dict]) -> str:
    return "async: " + messages[-1]["content"]
