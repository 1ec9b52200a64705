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

from starlette.requests import Request

from ..errors import AgentStateError
from .common import Context
from .conversations import ADD_ITEMS_PATH, append_items
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
        request = Request(scope, receive)
        try:
            response = await append_items(self.ctx, conversation_id, request)
        except ApiError as e:
            response = render(path, e)
        except AgentStateError as e:
            response = render(path, from_library(e))
        except Exception as e:  # noqa: BLE001 - as common.Route: a logged 500 that says nothing more
            log.error("internal error on POST %s: %s", path, type(e).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            response = render(path, ApiError(500, "internal error; nothing was changed by this request"))
        await response(scope, receive, send)
