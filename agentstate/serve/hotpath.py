"""The append route without the framework: ``POST /v1/conversations/{id}/items`` answered before
FastAPI is called at all (its middleware, routing, exception and dependency layers), which cost more
CPU per request than the append itself (the library call is ~0.5 ms of CPU; the framework around it
was about as much again).

The route stays registered with FastAPI (its OpenAPI entry, and the same answers if this layer is
removed); both call ``conversations.append_items``, so the behaviour is one. Errors are rendered
as ``common.Route`` renders them, and the request is counted and logged under the same route
template by ``metrics.RequestLog``, which wraps this layer.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from ..errors import AgentStateError
from .body import receive_body
from .common import Context
from .conversations import ADD_ITEMS_PATH, append
from .errors import ApiError, from_library, render

log = logging.getLogger("agentstate.serve")

_PREFIX = "/v1/conversations/"
_SUFFIX = "/items"


class _Template:
    """What metrics.RequestLog reads of a matched route: its path template."""

    path = ADD_ITEMS_PATH


class HotPath:
    def __init__(self, app: Any, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx
        self.route = _Template()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] != "POST" or not path.startswith(_PREFIX)
                or not path.endswith(_SUFFIX) or scope.get("root_path")):
            await self.app(scope, receive, send)
            return
        conversation_id = path[len(_PREFIX):-len(_SUFFIX)]
        if not conversation_id or "/" in conversation_id:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        scope["path_params"] = {"conversation_id": conversation_id}
        # the two headers read, as Starlette's Headers.get reads them (the first of a repeated one)
        authorization = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"content-length" and length is None:
                length = value.decode("latin-1")
        ctx = self.ctx
        try:
            tenant = ctx.verifier.tenant_of(authorization)
            scope.setdefault("state", {})["tenant"] = tenant  # for the request log, as Request.state would
            raw = await receive_body(receive, length, ctx.config.max_body_bytes)
            body = orjson.dumps(await append(ctx, tenant, conversation_id, raw))
        except ApiError as e:
            await render(path, e)(scope, receive, send)
            return
        except AgentStateError as e:
            await render(path, from_library(e))(scope, receive, send)
            return
        except Exception as e:  # noqa: BLE001 - as common.Route: a logged 500 that says nothing more
            log.error("internal error on POST %s: %s", path, type(e).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            await render(path, ApiError(500, "internal error; nothing was changed by this request"))(scope, receive,
                                                                                                    send)
            return
        # what common.json's Response sends, without building one
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
