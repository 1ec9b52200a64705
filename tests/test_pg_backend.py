"""What only the PostgreSQL backend has: URLs and schemas, the optional driver, migrations, the
advisory lock's holder record, server trouble as one clear error, recovery from the previous version.
(The shared contract runs on both backends through ``store_target``.)"""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest
from backend_view import put, stored
from pgserver import schema_sql as sql
from pgserver import schema_url
from state_holder import StateHolder

import agentstate
from agentstate import (
    ConflictError,
    FormatTooNew,
    InvalidInput,
    NotFound,
    SessionStore,
    StateCorrupted,
    StateLocked,
    StateStore,
    StorageError,
)
from agentstate.integrations.openai_agents import AgentStateSession
from agentstate.sql.pg import redact, split_url
from agentstate.sql.schema import MIGRATIONS, SCHEMA_VERSION
from agentstate.state import codec
from agentstate.state.pgstore import PgStateStore

CLI = [sys.executable, "-m", "agentstate"]


def doc(serial: int, resources: dict, lineage: str = "lineage-1") -> bytes:
    return codec.encode_document(serial=serial, lineage=lineage, updated_at="2024-01-01T00:00:00Z",
                                 resources_bytes=codec.encode_value(resources))


# -- URLs, schemas, the optional driver -------------------------------------------------------------


def test_a_url_gives_the_pg_store_and_schemas_keep_projects_apart(pg_url, monkeypatch):
    a, b = schema_url(pg_url, "proj_a"), schema_url(pg_url, "proj_b")
    for url in (a, b, a.replace("postgresql://", "postgres://", 1)):
        assert isinstance(StateStore(url), PgStateStore)
    with StateStore(a).transaction() as st:
        st.resources["x"] = "a"
    with StateStore(b).transaction() as st:
        st.resources["x"] = "b"
    assert StateStore(a).read().resources == {"x": "a"}
    assert StateStore(b).read().resources == {"x": "b"}
    schema = "env_" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("AGENTSTATE_PG_SCHEMA", schema)
    with StateStore(pg_url).transaction() as st:
        st.resources["x"] = "env"
    assert sql(schema_url(pg_url, schema), "SELECT count(*) FROM schema_migrations") == [(SCHEMA_VERSION,)]
    monkeypatch.delenv("AGENTSTATE_PG_SCHEMA")
    assert split_url(pg_url)[1] == "agentstate"  # the default
    assert "schema" not in split_url(a)[0]  # ours, stripped before libpq sees it


@pytest.mark.parametrize("name", ["bad-name", "1x", "", "a" * 64, 'x"; DROP TABLE y; --', "a b"])
def test_a_bad_schema_name_is_refused_before_any_sql(pg_url, name):
    with pytest.raises(InvalidInput, match="schema name"):
        StateStore(f"{pg_url}?schema={name}")


def test_redact_hides_the_password():
    assert redact("postgresql://u:secret@h:5/db?schema=x") == "postgresql://u:***@h:5/db?schema=x"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_importing_agentstate_and_local_commands_never_load_psycopg(tmp_path):
    code = (
        "import sys, agentstate\n"
        "s = agentstate.StateStore(sys.argv[1])\n"
        "with s.transaction() as st: st.resources['a'] = 1\n"
        "agentstate.SessionStore(sys.argv[1]).append('s', [{'role': 'user', 'content': 'hi'}])\n"
        "from agentstate.cli import main\n"
        "try: main(['show', '--json', '--dir', sys.argv[1]])\n"
        "except SystemExit: pass\n"
        "assert 'psycopg' not in sys.modules, 'psycopg was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_without_the_driver_a_url_names_the_extra(pg_schema_url):
    block = "import sys; sys.modules['psycopg'] = None\n"
    lib = block + (
        "import agentstate\n"
        "for make in (agentstate.StateStore, agentstate.SessionStore):\n"
        "    try: make(sys.argv[1]).read() if make is agentstate.StateStore else make(sys.argv[1]).list()\n"
        "    except agentstate.InvalidInput as e: print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", lib, pg_schema_url], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("pip install 'agentstate[postgres]'") == 2
    cli = block + "from agentstate.cli import main; main(['show', '--url', sys.argv[1]])"
    proc = subprocess.run([sys.executable, "-c", cli, pg_schema_url], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert "agentstate[postgres]" in proc.stderr


# -- migrations -----------------------------------------------------------------------------------


def test_migrations_are_recorded_and_a_newer_schema_is_refused_untouched(pg_schema_url):
    with StateStore(pg_schema_url).transaction() as st:
        st.resources["a"] = 1
    versions = [r[0] for r in sql(pg_schema_url, "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    sql(pg_schema_url, "INSERT INTO schema_migrations (version) VALUES (%(v)s)", {"v": SCHEMA_VERSION + 1})
    before = stored(pg_schema_url)
    # A new process (this one remembers the schema as up to date): the CLI, and a fresh interpreter.
    for args in (["show", "--json"], ["sessions", "list"], ["apply", "--set", "a=2"], ["migrate"]):
        proc = subprocess.run([*CLI, *args, "--url", pg_schema_url], capture_output=True, text=True)
        if "No such command" in proc.stderr:
            continue  # a command group not there yet
        assert proc.returncode == 5, (args, proc.stderr)
        assert proc.stderr.startswith("error:") and f"version {SCHEMA_VERSION + 1}" in proc.stderr
        assert proc.stderr.count("\n") == 1
    assert stored(pg_schema_url) == before


def test_a_version_1_schema_is_migrated_to_session_versions(pg_schema_url):
    """Issue 15, item 9: a schema written by the previous agentstate (version 1) gets sessions.version and
    session_counts.clock through the migration machinery on first use; its sessions start at version 1."""
    conninfo, schema = split_url(pg_schema_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sql(pg_schema_url, "CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())")
    for statement in MIGRATIONS[0]["postgres"]:
        sql(pg_schema_url, statement)
    sql(pg_schema_url, "INSERT INTO schema_migrations (version) VALUES (1)")
    sql(pg_schema_url, "INSERT INTO sessions (tenant, id, created_at, updated_at) "
        "VALUES ('default', 'old', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')")
    sql(pg_schema_url, "INSERT INTO session_counts (tenant, sessions) VALUES ('default', 1)")
    with SessionStore(pg_schema_url) as s:
        assert s.get("old").version == 1
        s.append("old", [{"role": "user", "content": "hi"}], expect_version=1)
        assert s.get("old").version == 2
        with pytest.raises(ConflictError):
            s.append("old", [{"role": "user", "content": "stale"}], expect_version=1)
    assert [r[0] for r in sql(pg_schema_url, "SELECT version FROM schema_migrations ORDER BY version")] == list(range(1, SCHEMA_VERSION + 1))


def test_migrate_command_creates_the_schema_explicitly(pg_schema_url):
    proc = subprocess.run([*CLI, "migrate", "--url", pg_schema_url, "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(proc.stdout)
    assert report["applied"] == list(range(1, SCHEMA_VERSION + 1)) and report["found_version"] == 0
    proc = subprocess.run([*CLI, "migrate", "--url", pg_schema_url], capture_output=True, text=True)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout


# -- the lock explains itself ------------------------------------------------------------------------


def test_lock_timeout_names_the_holder_and_force_unlock_ends_its_session(pg_schema_url):
    store = StateStore(pg_schema_url)
    with StateHolder(pg_schema_url, "deploy", hold_for=10) as holder:
        waits: list = []
        with pytest.raises(StateLocked) as ei:
            with store.transaction(lock_timeout=0.3, on_wait=waits.append):
                pass
        e = ei.value
        h = e.holder
        assert e.exit_code == 3 and waits and waits[0]["lock_id"] == h["lock_id"]
        import os
        import socket

        assert (h["pid"], h["hostname"], h["operation"]) == (os.getpid(), socket.gethostname(), "deploy")
        assert h["acquired_at"] and h["lock_id"]
        for part in (str(os.getpid()), "deploy", h["lock_id"], h["acquired_at"], socket.gethostname()):
            assert part in str(e)
        status = store.lock_status()
        assert status["held"] and status["holder"]["lock_id"] == h["lock_id"]
        with pytest.raises(ConflictError):
            store.force_unlock("not-" + h["lock_id"])
        assert store.force_unlock(h["lock_id"])["lock_id"] == h["lock_id"]
        holder.release()
        # its commit found the session ended
        assert len(holder.errors) == 1 and isinstance(holder.errors[0], StorageError)
        assert "\n" not in str(holder.errors[0])
    assert store.read().resources == {}  # nothing of the ended holder's transaction
    assert not store.lock_status()["held"]
    with pytest.raises(NotFound):
        store.force_unlock(h["lock_id"])


def test_a_timeout_of_zero_fails_at_once_when_held(pg_schema_url):
    store = StateStore(pg_schema_url)
    with store.transaction():
        with pytest.raises(StateLocked):
            with StateStore(pg_schema_url).transaction(lock_timeout=0):
                pass


def test_sessions_writers_name_their_holder_too(pg_schema_url):
    from agentstate.sql import open_database

    db = open_database(pg_schema_url)
    sessions = SessionStore(pg_schema_url, lock_timeout=0.2)
    sessions.create(session_id="s")
    with db.write(operation="bulk import", locks=[db.resource("session", "default", "s")]):
        with pytest.raises(StateLocked, match="session 's' .*bulk import"):
            sessions.append("s", [{"role": "user", "content": "x"}])
        sessions.append("other", [{"role": "user", "content": "x"}])  # another session's writer never waits
        status = db.lock_status()
        assert status["held"] and [h["operation"] for h in status["holders"]] == ["bulk import"]
    assert sessions.get("s").item_count == 0 and sessions.get("other").item_count == 1
    db.close()


# -- server trouble -------------------------------------------------------------------------------------


def test_unreachable_server_is_one_clear_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://agentstate@127.0.0.1:{port}/agentstate"
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL at 127.0.0.1") as ei:
        StateStore(url).read()
    assert ei.value.exit_code == 1 and "running" in str(ei.value)
    proc = subprocess.run([*CLI, "apply", "--set", "a=1", "--url", url], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot connect")
    assert proc.stderr.count("\n") == 1


def test_login_refused_and_missing_database_are_one_clear_error(pg_url):
    role = "nologin_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    bad_role = pg_url.replace("agentstate@", f"{role}@", 1)
    with pytest.raises(StorageError, match="cannot log in") as ei:
        StateStore(bad_role).read()
    assert "URL" in str(ei.value)
    with pytest.raises(StorageError, match="does not exist"):
        StateStore(pg_url.rsplit("/", 1)[0] + "/no_such_db").read()


def test_a_dropped_connection_mid_transaction_saves_nothing_and_the_next_call_reconnects(pg_schema_url):
    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        st.resources["a"] = 1
    with pytest.raises(StorageError, match="connection") as ei:
        with store.transaction() as st:
            st.resources["a"] = 2
            backend = store.connector.conn().info.backend_pid
            sql(pg_schema_url, "SELECT pg_terminate_backend(%s)", (backend,))
    assert "nothing was saved" in str(ei.value) or "may or may not" in str(ei.value)
    assert store.read().resources == {"a": 1}  # the same object reconnects
    with store.transaction() as st:
        st.resources["a"] = 3
    assert store.read().serial == 2


def test_disk_full_style_server_errors_are_storage_errors(pg_schema_url):
    # A statement the server refuses mid-transaction (here: a cancelled statement, as a full disk or an
    # administrator would stop it) rolls everything back and is one StorageError.
    store = StateStore(pg_schema_url)
    with pytest.raises(StorageError) as ei:
        with store.transaction() as st:
            st.resources["a"] = 1
            store.connector.conn().execute("SET LOCAL statement_timeout = '10ms'")
            store.connector.conn().execute("SELECT pg_sleep(1)")
    assert ei.value.exit_code == 1
    assert store.read().resources == {}


# -- the document: same bytes, same recovery ------------------------------------------------------------


def test_the_row_holds_the_same_checksummed_document_as_state_json(pg_schema_url, tmp_path):
    for target in (pg_schema_url, str(tmp_path / "d")):
        with StateStore(target).transaction() as st:
            st.resources.update({"a": 1, "b": [1, 2**63]})
        with StateStore(target).transaction() as st:
            st.resources["c"] = "x"
    current, previous = stored(pg_schema_url)
    decoded = codec.decode_document(current)
    assert decoded.serial == 2 and decoded.resources == {"a": 1, "b": [1, 2**63], "c": "x"}
    assert codec.decode_document(previous).serial == 1
    d_current, _ = stored(tmp_path / "d")
    strip = lambda b: codec.decode_document(b).resources  # noqa: E731 - lineage and time differ
    assert strip(current) == strip(d_current)


def test_recovery_from_the_previous_version_as_on_disk(pg_schema_url):
    put(pg_schema_url, current=doc(7, {"k": "new"}).replace(b"new", b"neW"), previous=doc(5, {"k": "old"}))
    store = StateStore(pg_schema_url)
    got = store.read(quiet=True)
    assert (got.serial, got.resources, got.source) == (5, {"k": "old"}, "backup")
    findings = {f["check"]: f["ok"] for f in store.check()}
    assert findings["state"] is False and findings["backup"] is True
    with store.transaction() as st:
        assert st.source == "backup"
    got = store.read()
    # The damaged version's serial (7) counts: never hand a number out twice.
    assert (got.serial, got.resources, got.source) == (8, {"k": "old"}, "state")
    assert codec.decode_document(stored(pg_schema_url)[1]).serial == 5  # the good previous version stays
    put(pg_schema_url, current=b"x", previous=b"y")
    with pytest.raises(StateCorrupted) as ei:
        StateStore(pg_schema_url).read()
    assert ei.value.exit_code == 4 and len(ei.value.tried) == 2


def test_a_newer_document_format_is_refused(pg_schema_url):
    import orjson

    newer = orjson.dumps({"format_version": 99, "serial": 1, "lineage": "x", "resources": {}})
    put(pg_schema_url, current=newer)
    with pytest.raises(FormatTooNew):
        StateStore(pg_schema_url).read()
    with pytest.raises(FormatTooNew):
        with StateStore(pg_schema_url).transaction():
            pass
    assert stored(pg_schema_url)[0] == newer


def test_a_store_object_outlives_a_server_restart(pg_server, pg_schema_url):
    """Connections die with the server; the same objects reconnect on their next call."""
    store, sessions = StateStore(pg_schema_url), SessionStore(pg_schema_url)
    with store.transaction() as st:
        st.resources["a"] = 1
    sessions.append("s", [{"role": "user", "content": "one"}])
    pg_server.stop("fast")
    try:
        with pytest.raises(StorageError, match="cannot connect") as ei:
            store.read()
        assert ei.value.exit_code == 1
        with pytest.raises(StorageError):
            sessions.append("s", [{"role": "user", "content": "lost"}])
    finally:
        pg_server.start()
    assert store.read().resources == {"a": 1}
    with store.transaction() as st:
        st.resources["a"] = 2
    sessions.append("s", [{"role": "user", "content": "two"}])
    assert [i.data["content"] for i in sessions.items("s")] == ["one", "two"]
    assert store.read().serial == 2


def test_disk_full_on_the_server_is_one_clear_error_and_nothing_changes(pg_server, pg_schema_url):
    """A real ENOSPC on the server: the state table (and its TOAST table) moved to a tablespace on a 1 MB tmpfs."""
    import os

    assert os.geteuid() == 0, "this test mounts a tmpfs (CI runs as root)"
    from pathlib import Path

    space = "small_" + uuid.uuid4().hex[:8]
    mnt = Path(pg_server.base) / space  # where the server's user can reach it
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        if pg_server.user is not None:
            os.chown(mnt, *pg_server.user)
        store = StateStore(pg_schema_url)
        with store.transaction() as st:
            st.resources["a"] = 1
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE {space} LOCATION '{mnt}'")
        sql(pg_schema_url, f"ALTER TABLE state_documents SET TABLESPACE {space}")
        sql(pg_schema_url, "ALTER TABLE state_documents ALTER COLUMN data SET STORAGE EXTERNAL")  # no compression
        before = stored(pg_schema_url)
        big = os.urandom(1_500_000).hex()  # 3 MB of text: more than the tablespace holds
        with pytest.raises(StorageError) as ei:
            with store.transaction() as st:
                st.resources["big"] = big
        assert ei.value.exit_code == 1
        assert "out of resources" in str(ei.value) and "free disk space" in str(ei.value)
        assert "No space left on device" in str(ei.value)  # the server's own ENOSPC
        assert "\n" not in str(ei.value)
        assert stored(pg_schema_url) == before
        with store.transaction() as st:  # a write that fits still works
            st.resources["a"] = 2
        assert store.read().serial == 2
        store.close()
    finally:
        try:
            sql(pg_schema_url, "ALTER TABLE state_documents SET TABLESPACE pg_default")
            with psycopg.connect(pg_server.url, autocommit=True) as conn:
                conn.execute(f"DROP TABLESPACE IF EXISTS {space}")
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
            mnt.rmdir()



def test_force_unlock_without_the_privilege_is_refused_and_the_holder_keeps_the_lock(pg_schema_url):
    """A role that may not end the holder's session (here: the holder is a superuser) gets exit 3."""
    role = "app_" + uuid.uuid4().hex[:8]
    schema = split_url(pg_schema_url)[1]
    with StateStore(pg_schema_url).transaction():  # the schema exists (created by the first write)
        pass
    sql(pg_schema_url, f"CREATE ROLE {role} LOGIN")
    sql(pg_schema_url, f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
    sql(pg_schema_url, f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
    as_app = pg_schema_url.replace("agentstate@", f"{role}@", 1)
    holder = StateStore(pg_schema_url)
    with holder.transaction(operation="superuser-job") as st:
        st.resources["a"] = 1
        lock_id = StateStore(as_app).lock_status()["holder"]["lock_id"]
        with pytest.raises(StateLocked, match="cannot end the holder's session") as ei:
            StateStore(as_app).force_unlock(lock_id)
        assert ei.value.exit_code == 3 and "superuser-job" in str(ei.value)
        assert StateStore(pg_schema_url).lock_status()["holder"]["lock_id"] == lock_id
    assert StateStore(as_app).read().resources == {"a": 1}  # the holder's commit went through


def test_reading_never_creates_the_schema(pg_schema_url):
    """As read() of a missing directory creates nothing: reads of a missing schema see an empty store."""
    schema = split_url(pg_schema_url)[1]
    assert StateStore(pg_schema_url).read().source == "new"
    assert StateStore(pg_schema_url).lock_status()["held"] is False
    with pytest.raises(NotFound):
        StateStore(pg_schema_url).force_unlock("x")
    sessions = SessionStore(pg_schema_url)
    assert sessions.list().items == []
    with pytest.raises(NotFound):
        sessions.get("s")
    assert sql(pg_schema_url, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)) == [(0,)]
    findings = StateStore(pg_schema_url).check()
    assert findings and all(f["ok"] for f in findings)
    assert sql(pg_schema_url, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)) == [(0,)]
    sessions.append("s", [{"role": "user", "content": "hi"}])  # the first write creates it
    assert sessions.get("s").item_count == 1


def test_a_schema_dropped_while_in_use_is_one_error_then_recreated(pg_schema_url):
    store = StateStore(pg_schema_url)
    with store.transaction() as st:
        st.resources["a"] = 1
    schema = split_url(pg_schema_url)[1]
    sql(pg_schema_url, f'DROP SCHEMA "{schema}" CASCADE')
    with pytest.raises(StorageError) as ei:
        with store.transaction() as st:
            st.resources["a"] = 2
    assert "\n" not in str(ei.value)
    assert store.read().source == "new"  # the same object sees the empty store...
    with store.transaction() as st:  # ...and its next write creates the schema again
        st.resources["b"] = 1
    assert store.read().resources == {"b": 1}


@pytest.mark.parametrize("url", ["postgresql://[bad/db", "postgres://u@h:5/db?schema=no-good"])
def test_a_malformed_url_is_one_clear_error(url):
    proc = subprocess.run([*CLI, "show", "--url", url], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1  # a bad --url
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


def test_no_repr_shows_a_password() -> None:
    url = "postgresql://alice:s3cret@db.example:5432/app?schema=team"
    for obj in (agentstate.StateStore(url), agentstate.SessionStore(url), agentstate.ResponseStore(url)):
        assert "s3cret" not in repr(obj) and "alice:***@db.example" in repr(obj), repr(obj)
    assert "s3cret" not in repr(AgentStateSession("s1", dir=url))
