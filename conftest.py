"""Fixtures shared by tests/ and integration_tests/: the throwaway PostgreSQL and Redis servers.

``pg_server`` (session scope) starts one server for the whole run on first use and stops it at
the end (tests/pgserver.py). If it cannot start, every test that needs it errors with the
server's log: the suite fails loudly, nothing is skipped. ``redis_server`` (session scope) is a throwaway
redis-server the same way (tests/redisserver.py); ``cache_url`` a URL of it, flushed for each test. ``pg_url`` is its base URL;
``pg_schema_url`` a URL naming a fresh PostgreSQL schema (created by agentstate on first use).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid

import pytest

# tests/pgserver.py and tests/redisserver.py, importable as ``pgserver`` and ``redisserver`` from any test
# (without putting tests/ on sys.path).
for _name in ("pgserver", "redisserver"):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(
            _name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", f"{_name}.py")
        )
        _mod = importlib.util.module_from_spec(_spec)
        sys.modules[_name] = _mod
        _spec.loader.exec_module(_mod)

from pgserver import PgServer, schema_url  # noqa: E402
from redisserver import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    server = PgServer.start_new()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    return pg_server.url


@pytest.fixture
def pg_schema_url(pg_url: str) -> str:
    return schema_url(pg_url, "t_" + uuid.uuid4().hex[:16])


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer.start_new()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def cache_url(redis_server: RedisServer) -> str:
    """The suite's redis-server (restarted if a test stopped it), emptied for this test."""
    import redis

    if not redis_server.running():
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url
