"""``GET /metrics`` (Prometheus text) and the request log: one line per request.

Counters (this process): ``agentstate_http_requests_total{route,method,status}``, the latency histogram
``agentstate_http_request_duration_seconds{route}``, ``agentstate_appends_total`` (append requests
committed), ``agentstate_write_transactions_total`` (store write transactions committed, read from the
library's counter) and ``agentstate_group_commit_batch_size`` (appends per write transaction: the
library's own batch-size figure when it keeps one, else appends_total / write_transactions_total).

The log line: method, path (no query string), status, milliseconds and tenant, on the
``agentstate.serve.access`` logger, so ``--log-format json`` makes it a JSON line. A token never
appears: headers are not logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("agentstate.serve.access")

_METHODS = frozenset(("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"))
_LINE = "%s %s %d %.1fms tenant=%s"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StoreCollector:
    """Reads the library's counters at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        from ..sql import stats

        now = stats.snapshot()
        writes = now["write_transactions"]
        c = CounterMetricFamily("agentstate_write_transactions", "Store write transactions committed by this process")
        c.add_metric([], writes)
        yield c
        appends = self.metrics.appends_value()
        # the group commits' mean size where the engine groups (SQLite), else appends per transaction
        size = now["average_batch"] or (appends / writes if writes else 0.0)
        g = GaugeMetricFamily("agentstate_group_commit_batch_size",
                              "Mean append requests committed per store write transaction")
        g.add_metric([], size)
        yield g


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import disable_created_metrics

        disable_created_metrics()  # no *_created series: counters since the process started are enough
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("agentstate_http_requests", "HTTP requests by route and status",
                                ("route", "method", "status"), registry=self.registry)
        self.latency = Histogram("agentstate_http_request_duration_seconds", "HTTP request latency",
                                 ("route",), registry=self.registry, buckets=_BUCKETS)
        self.appends = Counter("agentstate_appends", "Append requests committed", registry=self.registry)
        self.registry.register(_StoreCollector(self))
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, template: str, method: str, status: int, seconds: float) -> None:
        """One request counted and timed (the labelled series kept: ``labels()`` costs more than ``inc()``;
        templates, methods and statuses are few)."""
        key = (template, method, status)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = (self.requests.labels(template, method, str(status)),
                                            self.latency.labels(template))
        series[0].inc()
        series[1].observe(seconds)

    def appends_value(self) -> float:
        return self.appends._value.get()

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class RequestLog:
    """Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot path): times the
    request, counts it by route template and status, logs the one line."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.observe(template, method, status[0], elapsed)
            if log.isEnabledFor(logging.INFO):
                tenant = (scope.get("state") or {}).get("tenant", "-")
                # log.info's record without its search of the stack for the caller (no format here names it)
                log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, _LINE, (
                    scope["method"], scope["path"][:300], status[0], elapsed * 1000, tenant), None))
