"""``agentstate serve``: the store over HTTP, OpenAI Conversations-compatible, one tenant per token.

    agentstate serve --dir .agentstate --jwt-secret-file secret.txt       # http://127.0.0.1:8765

The modules, by concern (FastAPI, uvicorn, PyJWT and prometheus-client are imported only here, by
``agentstate serve``; the ``serve`` extra installs them):

- ``config``: the server's settings and the checks made at start (keys, agent, host), exit 2 if bad.
- ``app``: the FastAPI application factory: routers, error handlers, health checks, /metrics.
- ``auth``: the bearer token -> the request's tenant (401/403).
- ``body``: a request body read under its size limit (413) and parsed with the store's JSON rules (400).
- ``errors``: every failure as one HTTP error, in OpenAI's shape on /v1 and the chat API's on /api.
- ``stores``: one SessionStore/ResponseStore per tenant, every call in a worker thread.
- ``conversations``, ``responses``, ``chat``: the routes; ``common``: what they share (the ``Route``
  class that renders every failure, JSON responses, query parameters); ``schemas``: their JSON bodies
  for /openapi.json.
- ``hotpath``: the append route answered without the framework's layers (the same handler).
- ``appender``: the append route's writes, committed in groups by one writer thread.
- ``metrics``: Prometheus counters, the request log line (one per request, never a token).
- ``run``: uvicorn with SIGTERM draining in-flight requests and exit 0.

This module itself stays light: ``agentstate.serve:echo`` is the built-in agent runner.
"""

from __future__ import annotations

from typing import Any


def echo(messages: list[dict[str, Any]]) -> str:
    """The built-in agent runner (``--agent agentstate.serve:echo``): replies with the last user message."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
