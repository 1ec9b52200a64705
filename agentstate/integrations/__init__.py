"""Adapters that let agent frameworks keep their state in agentstate.

Each lives in its own module and is imported only by name (``import agentstate`` imports none of
them, nor any framework):

* ``agentstate.integrations.openai_agents.AgentStateSession``: the OpenAI Agents SDK's Session.
"""
