"""Fixtures shared by tests/.

``store_target``: where a contract test keeps its store, parametrized over the backends. "dir" is a
fresh store directory; "pg" (added by the PostgreSQL backend) is a URL naming a fresh schema on the
throwaway server the suite starts. Contract tests of state, lock, sessions, responses and the CLI take
this fixture so that they run unchanged against every backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ["dir", "pg"]


@pytest.fixture(params=BACKENDS)
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "dir":
        return str(tmp_path / "store")
    if request.param == "pg":  # a fresh PostgreSQL schema on the suite's server (../conftest.py)
        return request.getfixturevalue("pg_schema_url")
    raise AssertionError(f"unknown backend {request.param}")


AGENTS_BACKENDS = ["agentstate-dir", "agentstate-pg", "sdk-sqlite"]


@pytest.fixture(params=AGENTS_BACKENDS)
def agents_backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, where) for the Agents SDK session conformance tests: AgentStateSession on a store
    directory or a PostgreSQL schema, or, for comparison, the SDK's own SQLiteSession on a file."""
    if request.param == "agentstate-dir":
        return request.param, str(tmp_path / "store")
    if request.param == "agentstate-pg":
        return request.param, request.getfixturevalue("pg_schema_url")
    if request.param == "sdk-sqlite":
        return request.param, str(tmp_path / "sdk.db")
    raise AssertionError(f"unknown backend {request.param}")
