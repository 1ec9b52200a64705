"""``/v1/responses``: the response store, read back as OpenAI's Responses API does, and saved by a gateway.

``GET /v1/responses/{id}`` is the object exactly as saved (key order, big integers and unicode kept:
the body is the codec's bytes of it); ``DELETE`` is the library's soft delete (the chain still
resolves); ``input_items`` pages the saved object's ``input``. agentstate's own: ``PUT`` saves one
(201, 409 for an existing id) and ``/chain`` returns the chain oldest first.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from . import body as bodies
from . import schemas
from .common import Context, Route, json, list_query
from .errors import ApiError, bad_request


def _input_items(rid: str, saved: dict[str, Any]) -> list[dict[str, Any]]:
    """The saved ``input`` as items, each with an id: its own, else ``<response id>:input:<index>``."""
    raw = saved.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    if not isinstance(raw, list):
        return []
    out = []
    for i, it in enumerate(raw):
        if not isinstance(it, dict):
            continue
        item: dict[str, Any] = {"id": it["id"] if isinstance(it.get("id"), str) else f"{rid}:input:{i}"}
        if "type" not in it:
            item["type"] = "message"
        item.update((k, v) for k, v in it.items() if k != "id")
        out.append(item)
    return out


def router(ctx: Context) -> APIRouter:
    r = APIRouter(route_class=Route, prefix="/v1/responses", tags=["responses"])
    limit = ctx.config.max_body_bytes

    @r.get("/{response_id}", summary="Retrieve a stored response exactly as saved")
    async def retrieve(response_id: str, request: Request) -> Any:
        from ..state.codec import encode_value

        tenant = ctx.verifier.tenant(request)
        saved = await ctx.stores.with_responses(tenant, lambda s: s.get(response_id))
        return Response(encode_value(saved), media_type="application/json")

    @r.delete("/{response_id}", summary="Soft-delete a response (its chain still resolves)")
    async def delete(response_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        await ctx.stores.with_responses(tenant, lambda s: s.delete(response_id), write=True)
        return json({"id": response_id, "object": "response.deleted", "deleted": True})

    @r.get("/{response_id}/input_items", summary="List a stored response's input items (newest first)")
    async def input_items(response_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        n, order, after = list_query(request)
        saved = await ctx.stores.with_responses(tenant, lambda s: s.get(response_id))
        items = _input_items(response_id, saved)
        if order == "desc":
            items.reverse()
        if after is not None:
            at = next((i for i, it in enumerate(items) if it["id"] == after), None)
            if at is None:
                raise ApiError(404, f"input item {after[:80]!r} not found in response {response_id[:128]!r}")
            items = items[at + 1:]
        page = items[:n]
        return json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None, "has_more": len(items) > n})

    @r.put("/{response_id}", status_code=201, summary="Save a response (a gateway's store call; agentstate's own)",
           openapi_extra=schemas.body(schemas.RESPONSE))
    async def save(response_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        body = await bodies.json_object(request, limit)
        if "id" not in body:
            raise bad_request("the response must have an 'id' (the one in the path)", param="id")
        if body["id"] != response_id:
            raise bad_request("the response's 'id' is not the one in the path", param="id")
        info = await ctx.stores.with_responses(tenant, lambda s: s.save(body), write=True)
        return json({"id": info.id, "object": "response", "previous_response_id": info.previous_response_id,
                     "root_id": info.root_id, "depth": info.depth, "created_at": info.created_at}, 201)

    @r.get("/{response_id}/chain", summary="The response's chain, oldest first (agentstate's own)")
    async def chain(response_id: str, request: Request) -> Any:
        tenant = ctx.verifier.tenant(request)
        links = await ctx.stores.with_responses(tenant, lambda s: s.chain(response_id))
        ids = [link.get("id") for link in links]
        return json({"object": "list", "data": links, "first_id": ids[0] if ids else None,
                     "last_id": ids[-1] if ids else None, "has_more": False})

    return r
