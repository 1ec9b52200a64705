"""The throwaway PostgreSQL server the suite starts (tests/pgserver.py, ../conftest.py)."""

from __future__ import annotations

import os

import psycopg


def test_server_is_real_durable_and_unprivileged(pg_server, pg_url):
    with psycopg.connect(pg_url) as conn:
        fsync, user, su = conn.execute(
            "SELECT current_setting('fsync'), current_user, current_setting('is_superuser')"
        ).fetchone()
    assert fsync == "on"  # durability is under test: never turned off
    assert user == "agentstate"
    if os.geteuid() == 0:  # PostgreSQL refuses root: the server runs as a system user
        pid = int(open(os.path.join(pg_server.data, "postmaster.pid")).readline())
        assert os.stat(f"/proc/{pid}").st_uid != 0


def test_schema_urls_are_fresh(pg_schema_url, request):
    other = request.getfixturevalue("pg_url")
    assert pg_schema_url.startswith(other + "?schema=t_")
