"""``/v1/conversations``: OpenAI's Conversations API over the session store.

A conversation is a session (its id, ``conv_`` + 32 hex digits when the server makes it, is the
session id); an item is a session item, its id the store's item id. Items are returned as stored,
with that ``id`` and a ``type`` (an item with a ``role`` and no ``type`` is a ``"message"``).
Listing conversations (``GET /v1/conversations``) is agentstate's own: the hosted API has none.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request

from . import body as bodies
from . import schemas
from .common import Context, Route, json, list_query, query_int, query_str, unix
from .errors import bad_request

MAX_ITEMS = 20
MAX_METADATA = 16
MAX_KEY = 64
MAX_VALUE = 512


def conversation(info: Any, *, listing: bool = False) -> dict[str, Any]:
    out = {"id": info.id, "object": "conversation", "created_at": unix(info.created_at),
           "metadata": info.metadata or {}}
    if listing:
        out.update(item_count=info.item_count, title=info.title, updated_at=unix(info.updated_at))
    return out


def item(it: Any) -> dict[str, Any]:
    data = it.data
    out: dict[str, Any] = {"id": it.id}
    if "type" not in data:
        out["type"] = "message"
    for k, v in data.items():
        if k != "id":
            out[k] = v
    return out


def item_list(items: list[Any], has_more: bool) -> dict[str, Any]:
    data = [item(it) for it in items]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def check_items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise bad_request("'items' must be an array of items", param="items")
    if len(value) > MAX_ITEMS:
        raise bad_request(f"'items' holds {len(value)} items; at most {MAX_ITEMS} per request", param="items")
    for i, it in enumerate(value):
        if not isinstance(it, dict):
            raise bad_request(f"items[{i}] must be an object", param=f"items[{i}]")
        kind = it.get("type")
        if kind is None and "role" not in it:
            raise bad_request(f"items[{i}] needs a 'type' (or a 'role' for a message)", param=f"items[{i}]")
        if kind is not None and (not isinstance(kind, str) or not 0 < len(kind) <= 64):
            raise bad_request(f"items[{i}].type must be a string of 1 to 64 characters", param=f"items[{i}].type")
        if kind == "message" and "role" not in it:
            raise bad_request(f"items[{i}] is a message without a 'role'", param=f"items[{i}].role")
    return value


def check_metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("'metadata' must be an object of string pairs", param="metadata")
    if len(value) > MAX_METADATA:
        raise bad_request(f"'metadata' has {len(value)} keys; at most {MAX_METADATA}", param="metadata")
    for k, v in value.items():
        if not 0 < len(k) <= MAX_KEY:
            raise bad_request(f"a metadata key must be 1 to {MAX_KEY} characters", param="metadata")
        if not isinstance(v, str) or len(v) > MAX_VALUE:
            raise bad_request(f"metadata[{k[:64]!r}] must be a string of at most {MAX_VALUE} characters",
                              param="metadata")
    return value


ADD_ITEMS_PATH = "/v1/conversations/{conversation_id}/items"


async def append_items(ctx: Context, conversation_id: str, request: Request) -> Any:
    """``POST /v1/conversations/{id}/items`` through FastAPI (``hotpath`` answers it before FastAPI, the
    same way: the token, then the body read under its limit, then ``append``)."""
    tenant = ctx.verifier.tenant(request)
    raw = await bodies.read(request, ctx.config.max_body_bytes)
    return json(await append(ctx, tenant, conversation_id, raw))


async def append(ctx: Context, tenant: str, conversation_id: str, raw: bytes) -> dict[str, Any]:
    """The append route's work once the token is checked and the body read: its answer's JSON."""
    body = bodies.parse_object(raw)
    bodies.only(body, ("items",))
    items = check_items(bodies.field(body, "items", list, required=True))
    stored = await ctx.stores.append(tenant, conversation_id, items)
    ctx.metrics.appends.inc()
    return item_list(stored, False)


def router(ctx: Context) -> APIRouter:
    r = APIRouter(route_class=Route, prefix="/v1/conversations", tags=["conversations"])
    limit = ctx.config.max_body_bytes

    @r.post("", summary="Create a conversation (optionally with up to 20 items and metadata)",
            openapi_extra=schemas.body(schemas.CREATE_CONVERSATION))
    async def create(request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        body = await bodies.json_object(request, limit)
        bodies.only(body, ("items", "metadata"))
        items = check_items(bodies.field(body, "items", list, default=[]))
        metadata = check_metadata(body.get("metadata"))
        cid = "conv_" + uuid.uuid4().hex
        info = await ctx.stores.with_sessions(tenant, lambda s: s.start(cid, items, metadata), write=True)
        return json(conversation(info))

    @r.get("", summary="List conversations, most recently updated first (agentstate's own)")
    async def listing(request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        n = query_int(request, "limit", 20, 1, 100)
        after = query_str(request, "after")
        page = await ctx.stores.with_sessions(
            tenant, lambda s: s.list(n) if after is None else s.list_after(after, n))
        data = [conversation(info, listing=True) for info in page.items]
        return json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                     "last_id": data[-1]["id"] if data else None, "has_more": page.next_cursor is not None,
                     "total": page.total})

    @r.get("/{conversation_id}", summary="Retrieve a conversation")
    async def retrieve(conversation_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        info = await ctx.stores.with_sessions(tenant, lambda s: s.get(conversation_id))
        return json(conversation(info))

    @r.post("/{conversation_id}", summary="Update a conversation's metadata",
            openapi_extra=schemas.body(schemas.UPDATE_CONVERSATION))
    async def update(conversation_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        body = await bodies.json_object(request, limit)
        bodies.only(body, ("metadata",))
        if "metadata" not in body:
            raise bad_request("missing required parameter 'metadata'", param="metadata")
        metadata = check_metadata(body["metadata"])
        info = await ctx.stores.with_sessions(tenant, lambda s: s.update_metadata(conversation_id, metadata),
                                                 write=True)
        return json(conversation(info))

    @r.delete("/{conversation_id}", summary="Delete a conversation and its items")
    async def delete(conversation_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        await ctx.stores.with_sessions(tenant, lambda s: s.delete(conversation_id), write=True)
        return json({"id": conversation_id, "object": "conversation.deleted", "deleted": True})

    @r.post(ADD_ITEMS_PATH[len("/v1/conversations"):], summary="Add items to a conversation (one transaction)",
            openapi_extra=schemas.body(schemas.ADD_ITEMS))
    async def add_items(conversation_id: str, request: Request) -> Any:
        return await append_items(ctx, conversation_id, request)

    @r.get("/{conversation_id}/items", summary="List a conversation's items")
    async def list_items(conversation_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        n, order, after = list_query(request)
        items, more = await ctx.stores.with_sessions(
            tenant, lambda s: s.item_page(conversation_id, n, after_id=after, order=order))
        return json(item_list(items, more))

    @r.get("/{conversation_id}/items/{item_id}", summary="Retrieve an item")
    async def get_item(conversation_id: str, item_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        it = await ctx.stores.with_sessions(tenant, lambda s: s.get_item(conversation_id, item_id))
        return json(item(it))

    @r.delete("/{conversation_id}/items/{item_id}", summary="Delete an item; returns the conversation")
    async def delete_item(conversation_id: str, item_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)

        def call(s: Any) -> Any:
            s.delete_item(conversation_id, item_id)
            return s.get(conversation_id)

        info = await ctx.stores.with_sessions(tenant, call, write=True)
        return json(conversation(info))

    return r
