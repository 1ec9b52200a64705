"""The FastAPI application: routers, one error shape per API, health checks and /metrics.

    app = create_app(config.check(Config(target="/data/store", jwt_secret_file="secret")))

Every route handler runs inside :class:`~agentstate.serve.common.Route`, which turns any failure into one error response
(``errors.render``): an :class:`~agentstate.serve.errors.ApiError`, a library error by class, and
anything unexpected as a logged 500 that says nothing more. FastAPI's own validation (422) never
answers: routes take the raw body (``body``), and a validation error that slips through is a 400.

In front of FastAPI (``App.front``): the request log (``metrics.RequestLog``: every request counted and
logged) and the append route (``hotpath``), which never reaches FastAPI's layers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from .._version import __version__
from ..errors import AgentStateError
from . import chat, conversations, responses
from .auth import Verifier
from .common import Context, Route, json
from .errors import ApiError, render
from .metrics import Metrics, RequestLog
from .stores import Stores

log = logging.getLogger("agentstate.serve")


class App(FastAPI):
    """FastAPI, with ``front`` (the request log and the append route, see create_app) before its layers."""

    front: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.front(scope, receive, send)


def create_app(config: Any) -> FastAPI:
    """The application for a checked :class:`~agentstate.serve.config.Config`."""
    metrics = Metrics()
    stores = Stores(config.target, max_item_bytes=config.max_item_bytes, lock_timeout=config.lock_timeout,
                    cache=config.cache)
    ctx = Context(config=config, verifier=Verifier(config), stores=stores, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        stores.close()

    app = App(title="agentstate", version=__version__, lifespan=lifespan,
                description="Sessions (OpenAI Conversations API) and stored responses over HTTP, "
                            "one tenant per bearer token.")
    app.router.route_class = Route
    for module in (conversations, responses, chat):
        app.include_router(module.router(ctx))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        message = "no such route" if e.status_code == 404 else str(e.detail)
        return render(request.url.path, ApiError(e.status_code, message, headers=getattr(e, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        errs = e.errors()
        where = ".".join(str(p) for p in errs[0].get("loc", ())) if errs else "request"
        return render(request.url.path, ApiError(400, f"{where}: {errs[0].get('msg') if errs else 'invalid'}"))

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> Any:
        return json({"status": "ok"})

    @app.get("/readyz", tags=["health"], summary="The store opens and answers (503 with a reason if not)")
    async def readyz() -> Any:
        try:
            await stores.with_sessions("default", lambda s: s.list(1))
        except AgentStateError as e:
            return json({"status": "unavailable", "reason": str(e)}, 503)
        if config.cache:  # the hot tier's health: a cache that does not answer never fails a request
            from anyio import to_thread

            from ..cache import health

            found = await to_thread.run_sync(health, config.cache)
            return json({"status": "ready", "cache": {"ok": found["ok"], "detail": found["detail"]}})
        return json({"status": "ready"})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (no token)")
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
            open_paths = ("/healthz", "/readyz", "/metrics")
            for path, ops in spec.get("paths", {}).items():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)  # never answered: a bad request is 400
                    if path not in open_paths:
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.ctx = ctx
    from .hotpath import HotPath

    def framework(scope: Any, receive: Any, send: Any) -> Any:
        return FastAPI.__call__(app, scope, receive, send)

    # in front of FastAPI's own layers (its error, telemetry and body-limit middleware: ~8% of the server's
    # CPU per append), the request log, then the append route: every request is logged and counted
    app.front = RequestLog(HotPath(framework, ctx=ctx), metrics=metrics)
    return app


def from_env() -> FastAPI:
    """The app of a ``--workers N`` worker process (its config from the parent, re-checked)."""
    from .. import logs
    from .config import from_env as config_from_env
    from .run import request_logging

    config = config_from_env()
    logs.configure("warning", config.log_format)
    request_logging()
    return create_app(config)
