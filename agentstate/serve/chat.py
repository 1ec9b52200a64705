"""``/api/{user_id}/...``: the chat contract of the chat backends this server replaces.

``POST /api/{user_id}/chat`` persists the user message (a new conversation unless
``conversation_id`` names one), loads the history, calls the agent runner (``--agent``) with it as
a list of ``{"role", "content"}`` messages, persists the reply and returns both ids. A runner that
raises or outlasts ``agent_timeout`` is 502: the user message stays, no assistant message is stored.
Errors are ``{"error": code, "message": text}``. ``{user_id}`` must be the token's tenant (403).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request

from . import body as bodies
from . import schemas
from .auth import check_user
from .common import Context, Route, json, query_int
from .config import is_async
from .errors import ApiError, bad_request

log = logging.getLogger("agentstate.serve")

MAX_MESSAGE = 10_000
HISTORY = 100  # messages the runner gets (the most recent)
AGENT_THREADS = 32  # agent calls running at once (a synchronous agent runs in a thread of its own pool)


def _summary(info: Any) -> dict[str, Any]:
    return {"id": info.id, "title": info.title, "message_count": info.item_count, "created_at": info.created_at,
            "updated_at": info.updated_at}


def _message(it: Any) -> dict[str, Any]:
    return {"id": it.id, "role": it.data.get("role"), "content": it.data.get("content"), "created_at": it.created_at}


def router(ctx: Context) -> APIRouter:
    r = APIRouter(route_class=Route, prefix="/api/{user_id}", tags=["chat"])
    cfg = ctx.config

    def tenant_of(request: Request, user_id: str) -> str:
        tenant = ctx.verifier.tenant(request)
        check_user(tenant, user_id)
        return tenant

    agents = anyio.CapacityLimiter(AGENT_THREADS)  # agent calls never take the store calls' threads

    async def run_agent(messages: list[dict[str, Any]]) -> str:
        runner = cfg.runner
        try:
            with anyio.fail_after(cfg.agent_timeout):
                if is_async(runner):
                    reply = await runner(messages)
                else:
                    reply = await anyio.to_thread.run_sync(runner, messages, abandon_on_cancel=True, limiter=agents)
        except TimeoutError:
            raise ApiError(502, f"the agent did not answer within {cfg.agent_timeout:g}s; the user message is kept",
                           code="agent_timeout") from None
        except Exception as e:  # noqa: BLE001 - the agent's failure, whatever it is, is a 502
            log.warning("agent %s raised %s: %s", cfg.agent, type(e).__name__, str(e)[:200])
            raise ApiError(502, f"the agent failed ({type(e).__name__}); the user message is kept",
                           code="agent_failed") from None
        if not isinstance(reply, str) or not reply.strip():
            raise ApiError(502, "the agent returned no reply text; the user message is kept", code="agent_failed")
        return reply

    @r.post("/chat", summary="Send a message; the agent's reply is persisted and returned",
            openapi_extra=schemas.body(schemas.CHAT))
    async def chat(user_id: str, request: Request) -> Any:
        tenant = tenant_of(request, user_id)
        body = await bodies.json_object(request, cfg.max_body_bytes)
        bodies.only(body, ("message", "conversation_id"))
        message = bodies.field(body, "message", str, required=True)
        if not 1 <= len(message) <= MAX_MESSAGE or not message.strip():
            raise bad_request(f"'message' must be 1 to {MAX_MESSAGE} characters, not only whitespace",
                              param="message")
        cid = bodies.field(body, "conversation_id", str)
        new = cid is None
        if new:
            cid = "conv_" + uuid.uuid4().hex
        user_msg = {"role": "user", "content": message}

        def persist_user(s: Any) -> tuple[Any, list[Any]]:
            stored = s.append(cid, [user_msg], create=new)
            return stored[0], s.context(cid, HISTORY)

        user_item, history = await ctx.stores.with_sessions(tenant, persist_user, write=True)
        ctx.metrics.appends.inc()
        reply = await run_agent([{"role": it.data.get("role"), "content": it.data.get("content")}
                                 for it in history if it.role is not None])
        stored = await ctx.stores.with_sessions(
            tenant, lambda s: s.append(cid, [{"role": "assistant", "content": reply}], create=False), write=True)
        ctx.metrics.appends.inc()
        return json({"conversation_id": cid, "user_message_id": user_item.id,
                     "assistant_message_id": stored[0].id, "response": reply})

    @r.get("/conversations", summary="The user's conversations, most recently updated first")
    async def conversations(user_id: str, request: Request) -> Any:
        tenant = tenant_of(request, user_id)
        n = query_int(request, "limit", 20, 1, 100)
        offset = query_int(request, "offset", 0, 0, 9_900)
        page = await ctx.stores.with_sessions(tenant, lambda s: s.list(offset + n))
        return json({"conversations": [_summary(i) for i in page.items[offset:]], "total": page.total})

    @r.get("/conversations/{conversation_id}", summary="A conversation and its messages, oldest first")
    async def detail(user_id: str, conversation_id: str, request: Request) -> Any:
        tenant = tenant_of(request, user_id)
        info, items = await ctx.stores.with_sessions(tenant, lambda s: s.show(conversation_id))
        return json({**_summary(info), "messages": [_message(it) for it in items]})

    @r.delete("/conversations/{conversation_id}", summary="Delete a conversation")
    async def delete(user_id: str, conversation_id: str, request: Request) -> Any:
        tenant = tenant_of(request, user_id)
        await ctx.stores.with_sessions(tenant, lambda s: s.delete(conversation_id), write=True)
        return json({"id": conversation_id, "deleted": True})

    return r
