"""Contract tests of SessionStore, run against every backend (``store_target``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import agentstate
from agentstate import ConflictError, FormatTooNew, InvalidInput, NotFound, SessionStore
from agentstate.sessions.store import Item, SessionInfo
from agentstate.sql.schema import SCHEMA_VERSION

U = {"role": "user", "content": "hello"}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


@pytest.fixture
def store(store_target: str) -> SessionStore:
    s = SessionStore(store_target, tenant="alice")
    yield s
    s.close()


def seqs(items: list[Item]) -> list[int]:
    return [i.seq for i in items]


# -- create / get ---------------------------------------------------------------------------------------


def test_create_defaults_to_a_uuid_and_get_returns_it(store: SessionStore) -> None:
    info = store.create()
    assert isinstance(info, SessionInfo)
    assert str(uuid.UUID(info.id)) == info.id
    assert (info.tenant, info.title, info.metadata, info.item_count) == ("alice", None, None, 0)
    assert info.created_at == info.updated_at and info.created_at.endswith("Z")
    assert store.get(info.id) == info
    assert set(info.to_dict()) == {"id", "tenant", "title", "metadata", "created_at", "updated_at", "item_count",
                                   "version", "expires_at"}


def test_create_with_id_title_metadata_and_duplicate_is_conflict(store: SessionStore) -> None:
    info = store.create("chat-1", title="Trip", metadata={"k": [1, 2**63]})
    assert store.get("chat-1").to_dict() == info.to_dict()
    assert store.get("chat-1").metadata == {"k": [1, 2**63]}
    with pytest.raises(ConflictError):
        store.create("chat-1", title="other")
    assert store.get("chat-1").title == "Trip"


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "x" * 129, "sp ace", "é", 5, "a;drop"])
def test_invalid_session_ids_are_refused(store: SessionStore, bad: object) -> None:
    for call in (lambda: store.create(bad), lambda: store.append(bad, [U]), lambda: store.get(bad)):
        with pytest.raises(InvalidInput):
            call()
    assert store.list().total == 0


@pytest.mark.parametrize("bad", ["", ".t", "a b", "t/x", "x" * 129])
def test_invalid_tenants_are_refused(store_target: str, bad: str) -> None:
    with pytest.raises(InvalidInput):
        SessionStore(store_target, tenant=bad)


def test_missing_session_is_not_found_everywhere(store: SessionStore) -> None:
    for call in (lambda: store.get("nope"), lambda: store.items("nope"), lambda: store.context("nope"),
                 lambda: store.pop("nope"), lambda: store.delete("nope"),
                 lambda: store.append("nope", [U], create=False)):
        with pytest.raises(NotFound) as e:
            call()
        assert e.value.exit_code == 6
    assert store.list().total == 0


# -- append ---------------------------------------------------------------------------------------------


def test_append_creates_the_session_and_numbers_items(store: SessionStore) -> None:
    added = store.append("s", [user("one"), {"type": "function_call", "name": "f", "arguments": "{}"}])
    assert seqs(added) == [1, 2]
    assert added[0].role == "user" and added[1].role is None
    assert len({i.id for i in added}) == 2
    more = store.append("s", [user("three")])
    assert seqs(more) == [3]
    got = store.items("s")
    assert [i.to_dict() for i in got] == [i.to_dict() for i in added + more]
    assert set(got[0].to_dict()) == {"seq", "id", "created_at", "data"}
    assert store.get("s").item_count == 3


def test_items_are_stored_exactly(store: SessionStore) -> None:
    data = {"z": 1, "a": {"big": 2**64 - 1, "neg": -(2**63)}, "role": "tool", "content": "ok", "f": 0.1,
            "u": "snow ☃ \u0000"}
    store.append("s", [data])
    got = store.items("s")[0].data
    assert got == data and list(got) == list(data)
    assert type(got["a"]["big"]) is int


def test_create_false_on_missing_session_stores_nothing(store: SessionStore) -> None:
    with pytest.raises(NotFound):
        store.append("s", [U], create=False)
    assert store.list().total == 0


def test_expect_seq_is_compare_and_append(store: SessionStore) -> None:
    store.append("s", [U], expect_seq=0)
    store.append("s", [U, U], expect_seq=1)
    with pytest.raises(ConflictError) as e:
        store.append("s", [user("stale")], expect_seq=1)
    assert e.value.exit_code == 5
    assert seqs(store.items("s")) == [1, 2, 3]
    with pytest.raises(ConflictError):
        store.append("new", [U], expect_seq=3)
    with pytest.raises(NotFound):
        store.get("new")


def test_idempotency_key_returns_the_first_append(store: SessionStore) -> None:
    first = store.append("s", [user("a"), user("b")], idempotency_key="k1")
    again = store.append("s", [user("different")], idempotency_key="k1")
    assert [i.to_dict() for i in again] == [i.to_dict() for i in first]
    assert seqs(store.items("s")) == [1, 2]
    # a stale expect_seq does not matter for a replay: the append already happened
    assert store.append("s", [user("a"), user("b")], idempotency_key="k1", expect_seq=0) == first
    other = store.append("s", [user("c")], idempotency_key="k2")
    assert seqs(other) == [3]


BAD_ITEMS = [
    ("not an object", ["text"]),
    ("a list", [[1]]),
    ("bad role", [{"role": "robot", "content": "x"}]),
    ("empty text", [{"role": "user", "content": ""}]),
    ("blank text", [{"role": "assistant", "content": " \n\t"}]),
    ("blank text part", [{"role": "user", "content": [{"type": "input_text", "text": "  "}]}]),
    ("empty content list", [{"role": "user", "content": []}]),
    ("user without content", [{"role": "user"}]),
    ("content number", [{"role": "user", "content": 3}]),
    ("NaN", [{"x": float("nan")}]),
    ("inf", [{"x": float("inf")}]),
    ("int > 64 bits", [{"x": 2**64}]),
    ("int < -2**63", [{"x": -(2**63) - 1}]),
    ("non-string key", [{1: "x"}]),
    ("a set", [{"x": {1}}]),
]


@pytest.mark.parametrize("label,bad", BAD_ITEMS, ids=[b[0] for b in BAD_ITEMS])
def test_one_bad_item_refuses_the_whole_append(store: SessionStore, label: str, bad: list) -> None:
    store.append("s", [user("first")])
    before = store.get("s")
    with pytest.raises(InvalidInput):
        store.append("s", [user("fine"), *bad, user("also fine")])
    with pytest.raises(InvalidInput):
        store.append("fresh", [*bad])
    assert store.get("s") == before
    assert seqs(store.items("s")) == [1]
    with pytest.raises(NotFound):
        store.get("fresh")


def test_good_message_shapes(store: SessionStore) -> None:
    items = [
        {"role": "system", "content": "rules"},
        {"role": "developer", "content": "dev"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"},
                                                        {"type": "input_image", "image_url": "x"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
        {"role": "tool", "content": "42", "tool_call_id": "c"},
        {"type": "function_call_output", "call_id": "c", "output": ""},
        {"type": "reasoning", "summary": []},
    ]
    assert seqs(store.append("s", items)) == list(range(1, 8))


def test_max_item_bytes(store_target: str) -> None:
    s = SessionStore(store_target, max_item_bytes=100)
    ok = {"role": "user", "content": "x" * 50}
    store_big = {"role": "user", "content": "x" * 100}
    s.append("s", [ok])
    with pytest.raises(InvalidInput, match="over the limit"):
        s.append("s", [ok, store_big])
    assert s.get("s").item_count == 1
    default = SessionStore(store_target)
    with pytest.raises(InvalidInput):
        default.append("t", [{"blob": "y" * (1 << 20)}])
    default.append("t", [{"blob": "y" * ((1 << 20) - 20)}])
    s.close()
    default.close()


def test_many_items_in_one_append(store: SessionStore) -> None:
    added = store.append("s", [{"n": i} for i in range(5000)])
    assert seqs(added) == list(range(1, 5001))
    assert store.get("s").item_count == 5000
    assert [i.data["n"] for i in store.context("s", 3)] == [4997, 4998, 4999]


# -- title ----------------------------------------------------------------------------------------------


def test_title_is_the_first_user_message_cut_at_50(store: SessionStore) -> None:
    store.append("s", [{"role": "system", "content": "sys"}])
    assert store.get("s").title is None
    text = "Plan a three-day trip to Lisbon with a budget of 800 euros please"
    store.append("s", [{"role": "assistant", "content": "hi"}, user(text), user("second")])
    assert store.get("s").title == text[:50]
    store.append("s", [user("later")])
    assert store.get("s").title == text[:50]


def test_title_from_content_parts_and_explicit_title_kept(store: SessionStore) -> None:
    store.append("p", [{"role": "user", "content": [{"type": "input_text", "text": "Parts work"}]}])
    assert store.get("p").title == "Parts work"
    store.create("t", title="Mine")
    store.append("t", [user("not the title")])
    assert store.get("t").title == "Mine"


# -- reading --------------------------------------------------------------------------------------------


def test_items_limit_after_and_context(store: SessionStore) -> None:
    store.append("s", [{"n": i} for i in range(1, 31)])
    assert seqs(store.items("s", limit=5)) == [1, 2, 3, 4, 5]
    assert seqs(store.items("s", after=27)) == [28, 29, 30]
    assert seqs(store.items("s", limit=2, after=10)) == [11, 12]
    assert store.items("s", after=30) == []
    assert seqs(store.context("s")) == list(range(11, 31))
    assert seqs(store.context("s", limit=3)) == [28, 29, 30]
    assert seqs(store.context("s", limit=100)) == list(range(1, 31))
    assert store.context("s", limit=0) == []
    for bad in (-1, "3", 1.5, True):
        with pytest.raises(InvalidInput):
            store.items("s", limit=bad)
        with pytest.raises(InvalidInput):
            store.context("s", limit=bad)


def test_pop_frees_its_seq(store: SessionStore) -> None:
    store.create("s")
    assert store.pop("s") is None
    store.append("s", [user("a"), user("b")])
    popped = store.pop("s")
    assert popped is not None and popped.seq == 2 and popped.data == user("b")
    assert store.get("s").item_count == 1
    assert seqs(store.append("s", [user("c")])) == [2]
    assert [i.data["content"] for i in store.items("s")] == ["a", "c"]


def test_delete_removes_everything_and_frees_the_id(store: SessionStore) -> None:
    store.append("s", [user("a")], idempotency_key="k")
    store.delete("s")
    with pytest.raises(NotFound):
        store.get("s")
    with pytest.raises(NotFound):
        store.delete("s")
    added = store.append("s", [user("b")], idempotency_key="k")
    assert seqs(added) == [1] and added[0].data == user("b")


# -- tenants --------------------------------------------------------------------------------------------


def test_tenants_are_apart(store_target: str) -> None:
    alice = SessionStore(store_target, tenant="alice")
    bob = SessionStore(store_target, tenant="bob")
    default = SessionStore(store_target)
    assert default.tenant == "default"
    alice.append("shared-id", [user("alice's")])
    for call in (lambda: bob.get("shared-id"), lambda: bob.items("shared-id"), lambda: bob.pop("shared-id"),
                 lambda: bob.delete("shared-id"), lambda: bob.append("shared-id", [U], create=False)):
        with pytest.raises(NotFound):
            call()
    assert bob.list().total == 0 and bob.list().items == []
    assert bob.prune(0) == []
    bob.create("shared-id", title="bob's")
    bob.append("shared-id", [user("bob's")])
    assert [i.data["content"] for i in alice.items("shared-id")] == ["alice's"]
    assert [i.data["content"] for i in bob.items("shared-id")] == ["bob's"]
    assert alice.get("shared-id").title == "alice's"
    bob.delete("shared-id")
    assert alice.get("shared-id").item_count == 1
    for s in (alice, bob, default):
        s.close()


# -- list -----------------------------------------------------------------------------------------------


def test_list_most_recent_first_with_total(store: SessionStore) -> None:
    for name in ("a", "b", "c"):
        store.append(name, [U])
    store.append("a", [U])
    page = store.list()
    assert [s.id for s in page.items] == ["a", "c", "b"]
    assert page.total == 3 and page.next_cursor is None


def test_list_paging_while_others_change(store: SessionStore) -> None:
    ids = [f"s{i:03d}" for i in range(40)]
    for sid in ids:
        store.create(sid)
    seen: list[str] = []
    changed: set[str] = set()
    page = store.list(limit=7)
    assert page.total == 40
    k = 0
    while True:
        seen.extend(s.id for s in page.items)
        if page.next_cursor is None:
            break
        # touch one session already listed and one not listed yet, and add a new one
        store.append(seen[0], [U])
        pending = [i for i in ids if i not in seen and i not in changed]
        if pending:
            store.append(pending[-1], [U])
            changed.add(pending[-1])
        store.create(f"new{k}")
        k += 1
        page = store.list(limit=7, cursor=page.next_cursor)
    unchanged = [i for i in ids if i not in changed and i != seen[0]]
    for sid in unchanged:
        assert seen.count(sid) == 1, sid
    assert len(seen) == len(set(seen))


def test_list_cursor_and_limit_validation(store: SessionStore) -> None:
    store.create("a")
    for bad in ("garbage", "", "eyJ4IjoxfQ", 5):
        with pytest.raises(InvalidInput):
            store.list(cursor=bad)
    for bad in (0, -1, "5", 10**9):
        with pytest.raises(InvalidInput):
            store.list(limit=bad)


# -- prune ----------------------------------------------------------------------------------------------


def test_prune_deletes_whole_sessions_not_updated_for_that_long(store: SessionStore) -> None:
    store.append("old", [U])
    store.append("also-old", [U])
    assert store.prune("30d") == []
    assert store.prune(3600) == []
    import time

    time.sleep(0.4)  # margins of 0.2 s both ways: "fresh" is pruned only if its append and the prune take longer
    store.append("fresh", [U])
    pruned = store.prune(0.2)
    assert sorted(pruned) == ["also-old", "old"]
    assert [s.id for s in store.list().items] == ["fresh"]
    with pytest.raises(InvalidInput):
        store.prune("soon")
    with pytest.raises(InvalidInput):
        store.prune(-1)


# -- export / import ------------------------------------------------------------------------------------


def test_export_import_round_trip(store: SessionStore) -> None:
    store.create("src", title="T", metadata={"m": 1})
    store.append("src", [user("a"), {"type": "function_call", "name": "f"}])
    lines = list(store.export_lines("src"))
    assert len(lines) == 3
    info = store.import_lines(lines, "copy")
    assert (info.id, info.title, info.metadata, info.item_count) == ("copy", "T", {"m": 1}, 2)
    assert [i.to_dict() for i in store.items("copy")] == [i.to_dict() for i in store.items("src")]
    with pytest.raises(ConflictError):
        store.import_lines(lines)  # the exported id "src" exists
    plain = store.import_lines([b'{"role":"user","content":"plain"}\n', b"\n", b'{"type":"x"}'], "plain")
    assert plain.item_count == 2 and plain.title == "plain"
    with pytest.raises(InvalidInput):
        store.import_lines([b'{"role":"user","content":"ok"}', b'{"role":"user","content":""}'], "bad")
    with pytest.raises(NotFound):
        store.get("bad")


# -- the SQLite file (directory backend only) -----------------------------------------------------------


def test_database_file_and_pragmas(tmp_path) -> None:
    d = tmp_path / "store"
    s = SessionStore(str(d))
    s.list()
    assert not d.exists()  # reading a store that does not exist creates nothing
    s.append("s", [U])
    db = d / "agentstate.db"
    assert db.stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    for extra in ("agentstate.db-wal", "agentstate.db-shm"):
        if (d / extra).exists():
            assert (d / extra).stat().st_mode & 0o077 == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 2048  # a new database's (schema.PAGE_SIZE)
    conn.close()
    s.close()


@contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``mnt`` for the block (root only: CI runs as root)."""
    assert os.geteuid() == 0, "this test mounts a tmpfs (CI runs as root)"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_named_as_such_and_nothing_changes(tmp_path) -> None:
    """A real full disk (a 512 KB tmpfs): SQLite cannot size agentstate.db-shm and says "disk I/O error";
    reads and writes say the disk is full (ENOSPC, exit 1), doctor says so instead of suggesting a
    restore, nothing stored changes, and once space is freed everything works."""
    from agentstate import StateStore, doctor
    from agentstate.errors import StorageError

    with tmpfs(tmp_path / "small", "512k") as mnt:
        d = mnt / "store"
        with SessionStore(str(d)) as s:
            s.append("s", [U])
        before = {p.name: p.read_bytes() for p in d.iterdir()}
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # every block left
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        s = SessionStore(str(d))
        for call in (s.list, lambda: s.items("s"), lambda: s.append("s", [U]), lambda: s.create("t")):
            with pytest.raises(StorageError) as e:
                call()
            assert "the disk is full" in e.value.message and "nothing was changed" in e.value.message
            assert e.value.details["errno"] == "ENOSPC" and e.value.exit_code == 1
        s.close()
        report = doctor.diagnose(StateStore(str(d)))
        bad = [f for f in report.bad if f["check"].startswith(("database", "responses"))]
        assert bad and all(f.get("disk_full") for f in bad), report.bad
        assert any("the disk is full" in line for line in report.summary())
        assert not any("restore it from a copy" in line for line in report.summary())
        assert {p.name: p.read_bytes() for p in d.iterdir() if not p.name.endswith(("-wal", "-shm"))} == before
        os.unlink(mnt / "filler")
        with SessionStore(str(d)) as s:
            assert [i.seq for i in s.append("s", [U])] == [2]
            assert [i.seq for i in s.items("s")] == [1, 2]


def test_a_store_on_a_read_only_filesystem_reads_and_refuses_writes_clearly(tmp_path) -> None:
    """WAL mode cannot create agentstate.db-wal/-shm on a read-only filesystem, so a plain open fails even
    to read: the file is read as immutable instead (it is the whole committed state when no WAL is left),
    writes say EROFS; a WAL left with writes in it (and no -shm) is an EROFS error that says what to do,
    never a read that silently misses them; doctor calls neither damage."""
    from agentstate import ResponseStore, StateStore, doctor
    from agentstate.errors import StorageError

    mnt = tmp_path / "ro"

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)

    with tmpfs(mnt, "4m"):
        d = mnt / "store"
        with SessionStore(str(d)) as s:
            s.append("s", [U])
        with ResponseStore(str(d)) as r:
            r.save({"id": "resp_1", "object": "response", "output": []})
        remount("ro")
        with SessionStore(str(d)) as s:
            assert [i.seq for i in s.items("s")] == [1] and s.list().items[0].id == "s"
            with pytest.raises(StorageError) as e:
                s.append("s", [U])
            assert e.value.details["errno"] == "EROFS" and e.value.exit_code == 1
        with ResponseStore(str(d)) as r:
            assert r.get("resp_1")["id"] == "resp_1"
        assert doctor.diagnose(StateStore(str(d))).ok

        remount("rw")
        code = (f"import os, sys; sys.path.insert(0, {os.getcwd()!r}); from agentstate import SessionStore; "
                f"SessionStore({str(d)!r}).append('s', [{{'role': 'user', 'content': 'two'}}]); os._exit(0)")
        subprocess.run([sys.executable, "-c", code], check=True)  # its WAL is left behind, not folded in
        assert (d / "agentstate.db-wal").stat().st_size > 0
        (d / "agentstate.db-shm").unlink()
        remount("ro")
        with SessionStore(str(d)) as s:
            with pytest.raises(StorageError) as e:
                s.items("s")
            assert e.value.details["errno"] == "EROFS" and "agentstate.db-wal holds writes" in e.value.message
        report = doctor.diagnose(StateStore(str(d)))
        assert report.bad and all(f.get("read_only") for f in report.bad if f["check"].startswith("database"))
        assert any("read-only filesystem" in line for line in report.summary())
        assert not any("restore it from a copy" in line for line in report.summary())
        remount("rw")
        with SessionStore(str(d)) as s:
            assert [i.data["content"] for i in s.items("s")] == ["hello", "two"]


@pytest.mark.parametrize("bad", ["zz", float("nan"), -1, float("inf")])
def test_a_bad_lock_timeout_is_refused_when_the_store_is_made(tmp_path, bad) -> None:
    from agentstate import ResponseStore, StateStore

    for make in (SessionStore, ResponseStore, StateStore):
        with pytest.raises(InvalidInput, match="lock timeout"):
            make(str(tmp_path / "s"), lock_timeout=bad)
    assert not (tmp_path / "s").exists()
    assert SessionStore(str(tmp_path / "s"), lock_timeout="2s").lock_timeout == 2.0


def test_doctor_gives_a_bad_database_lock_its_own_remedy_not_a_restore(tmp_path) -> None:
    from agentstate import StateStore, doctor

    d = tmp_path / "s"
    with SessionStore(str(d)) as s:
        s.append("s", [U])
    (d / "agentstate.db.lock").unlink()
    os.mkfifo(d / "agentstate.db.lock")  # not a regular file: the lock finding says to move it away
    report = doctor.diagnose(StateStore(str(d)))
    assert [f["check"] for f in report.bad] == ["database lock"] and "move it away" in report.bad[0]["detail"]
    assert not any("restore it from a copy" in line for line in report.summary())


def test_newer_schema_is_refused_and_never_touched(tmp_path) -> None:
    d = tmp_path / "store"
    s = SessionStore(str(d))
    s.append("s", [U])
    s.close()
    db = d / "agentstate.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = db.read_bytes()
    s = SessionStore(str(d))
    for call in (lambda: s.append("s", [U]), lambda: s.get("s"), lambda: s.list(), lambda: s.create("x")):
        with pytest.raises(FormatTooNew) as e:
            call()
        assert e.value.exit_code == 5
    s.close()
    assert db.read_bytes() == before


def test_garbage_database_is_corrupted_not_a_traceback(tmp_path) -> None:
    d = tmp_path / "store"
    d.mkdir()
    (d / "agentstate.db").write_bytes(b"this is not a database at all" * 200)
    s = SessionStore(str(d))
    with pytest.raises(agentstate.StateCorrupted) as e:
        s.list()
    assert e.value.exit_code == 4
    with pytest.raises(agentstate.StateCorrupted):
        s.append("s", [U])
    s.close()


def test_symlinked_database_is_refused(tmp_path) -> None:
    d = tmp_path / "store"
    d.mkdir()
    target = tmp_path / "elsewhere.db"
    os.symlink(target, d / "agentstate.db")
    s = SessionStore(str(d))
    with pytest.raises(agentstate.StorageError, match="symlink"):
        s.append("s", [U])
    assert not target.exists()


def test_import_agentstate_does_not_load_sqlite3() -> None:
    code = "import agentstate, sys; agentstate.SessionStore; print('sqlite3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- doctor's checks of agentstate.db (directory backend) -----------------------------------------------


def _findings(d) -> dict[str, dict]:
    from agentstate.sql import check

    return {f["check"]: f for f in check(str(d))}


def test_check_reports_a_healthy_database(tmp_path) -> None:
    d = tmp_path / "store"
    assert _findings(d)["database"]["ok"]  # no database yet: nothing wrong
    s = SessionStore(str(d), tenant="a")
    s.append("x", [U])
    s.append("y", [U])
    SessionStore(str(d), tenant="b").append("x", [U])
    found = _findings(d)
    assert all(f["ok"] for f in found.values()), found
    assert {"database schema", "database integrity", "session counts", "database lock"} <= set(found)
    assert "3 session(s) in 2 tenant(s)" in found["session counts"]["detail"]
    s.close()


def test_check_finds_damage_and_a_wrong_count(tmp_path) -> None:
    d = tmp_path / "store"
    s = SessionStore(str(d))
    s.append("x", [{"n": i, "pad": "p" * 200} for i in range(2000)])
    s.close()
    conn = sqlite3.connect(d / "agentstate.db")
    conn.execute("UPDATE session_counts SET sessions = 7")
    conn.commit()
    conn.close()
    found = _findings(d)
    assert not found["session counts"]["ok"] and found["database integrity"]["ok"]
    with open(d / "agentstate.db", "r+b") as f:  # clobber a page in the middle of the b-trees
        f.seek(4096 * 60 + 64)
        f.write(os.urandom(2000))
    found = _findings(d)
    assert not found["database integrity"]["ok"], found["database integrity"]


def test_check_reports_a_newer_schema(tmp_path) -> None:
    d = tmp_path / "store"
    SessionStore(str(d)).append("x", [U])
    conn = sqlite3.connect(d / "agentstate.db")
    conn.execute("PRAGMA user_version = 42")
    conn.close()
    found = _findings(d)
    assert not found["database schema"]["ok"] and "newer" in found["database schema"]["detail"]


def test_prune_with_an_enormous_age_prunes_nothing(store: SessionStore) -> None:
    store.append("s", [U])
    assert store.prune(10**12) == []
    assert store.list().total == 1


def test_nul_characters(store: SessionStore) -> None:
    """Found by the model test: a NUL in a user message went into the title, which PostgreSQL's TEXT
    cannot hold. Items keep it (JSON escapes it); the derived title drops it; a given title refuses it."""
    store.append("s", [{"role": "user", "content": "a\x00b"}])
    assert store.items("s")[0].data == {"role": "user", "content": "a\x00b"}
    assert store.get("s").title == "ab"
    store.append("t", [{"role": "user", "content": "\x00"}, {"role": "user", "content": "next"}])
    assert store.get("t").title == "next"
    with pytest.raises(InvalidInput):
        store.create("u", title="x\x00")
    with pytest.raises(InvalidInput):
        store.append("s", [U], idempotency_key="k\x00")
    assert store.get("s").item_count == 1


# -- issue 15, item 9: expect_version detects any write since the caller read (ABA) -------------------------


def test_expect_version_detects_a_pop_then_an_append_expect_seq_does_not(store: SessionStore) -> None:
    store.append("s", [user("a")])
    seen = store.get("s")
    assert seen.version > 0
    store.pop("s")
    store.append("s", [user("b")])  # the same seq again, different item: ABA for expect_seq
    now = store.get("s")
    assert now.item_count == seen.item_count and now.version > seen.version
    with pytest.raises(ConflictError) as e:
        store.append("s", [user("stale")], expect_version=seen.version)
    assert e.value.details["version"] == now.version
    assert [i.data["content"] for i in store.items("s")] == ["b"]
    # expect_seq keeps meaning "the last seq is N", so it lets this stale writer through (documented)
    store.append("s", [user("c")], expect_seq=seen.item_count)
    got = store.append("s", [user("d")], expect_version=store.get("s").version)
    assert got[0].data["content"] == "d"


def test_version_grows_on_every_write_and_across_delete_and_recreate(store: SessionStore) -> None:
    versions = [store.create("s").version]
    store.append("s", [U])
    versions.append(store.get("s").version)
    store.append("s", [U, U])
    versions.append(store.get("s").version)
    store.pop("s")
    versions.append(store.get("s").version)
    store.append("other", [U])  # another session's writes do not hurt: versions only need to grow
    store.pop("s")
    versions.append(store.get("s").version)
    store.delete("s")
    store.append("s", [U])  # re-created: never a version the old session had
    versions.append(store.get("s").version)
    assert versions == sorted(set(versions)), versions
    assert store.show("s")[0].version == versions[-1]
    assert store.list().items[0].version == versions[-1]


@pytest.mark.parametrize("how", ["delete", "prune", "expired"])
def test_a_recreated_session_never_sees_a_version_it_had(store: SessionStore, how: str, monkeypatch) -> None:
    """On SQLite a write to an existing session advances its own version only (schema version 6: no
    shared clock row per append), so a deletion, whichever path makes it, must fold the session's last
    version into the tenant's clock: else the re-created session would count up through versions the
    old one had, and a stale expect_version would pass (ABA)."""
    from agentstate.sessions import store as store_module

    store.append("s", [U], ttl=None if how == "delete" else "1h")
    seen = {store.get("s").version}
    for _ in range(12):  # the old session's versions run far ahead of everything else in the tenant
        store.append("s", [U])
        seen.add(store.get("s").version)
    store.pop("s")
    seen.add(store.get("s").version)
    later = store_module._iso(datetime.now(UTC) + timedelta(hours=2))
    if how == "delete":
        store.delete("s")
    else:
        monkeypatch.setattr(store_module, "_utcnow", lambda: later)  # two hours on: expired
    if how == "prune":
        assert store.prune() == ["s"]
    store.append("s", [U])  # "expired": this write finds it expired, removes it and starts anew
    assert store.get("s").item_count == 1
    fresh = store.get("s").version
    assert fresh > max(seen), (fresh, sorted(seen))
    for _ in range(12):
        store.append("s", [U])
        assert store.get("s").version not in seen


def test_expect_version_on_a_missing_session(store: SessionStore) -> None:
    with pytest.raises(ConflictError):
        store.append("new", [U], expect_version=3)
    with pytest.raises(NotFound):
        store.get("new")
    store.append("new", [U], expect_version=0)
    with pytest.raises(ConflictError):
        store.append("new", [U], expect_version=0)
    with pytest.raises(InvalidInput):
        store.append("new", [U], expect_version=-1)
    assert store.get("new").item_count == 1


def test_a_version_1_database_is_migrated_to_session_versions(tmp_path) -> None:
    """A store written by the previous schema (version 1, no version columns) gets them on the next
    write; its sessions start at version 1 and move on with the next write."""
    from agentstate.sql.schema import MIGRATIONS, SCHEMA_VERSION

    d = tmp_path / "store"
    d.mkdir(mode=0o700)
    conn = sqlite3.connect(d / "agentstate.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in MIGRATIONS[0]["sqlite"]:
        conn.execute(statement)
    conn.execute("INSERT INTO sessions (tenant, id, title, metadata, created_at, updated_at, last_seq, item_count) "
                 "VALUES ('default', 'old', NULL, NULL, '2026-01-01T00:00:00.000000Z', "
                 "'2026-01-01T00:00:00.000000Z', 0, 0)")
    conn.execute("INSERT INTO session_counts (tenant, sessions) VALUES ('default', 1)")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    os.chmod(d / "agentstate.db", 0o600)
    with SessionStore(str(d)) as s:
        assert s.get("old").version == 1  # a read migrates (under the writer lock)
        with pytest.raises(ConflictError):
            s.append("old", [U], expect_version=0)  # 0: "no such session"
        s.append("old", [U], expect_version=1)
        assert s.get("old").version == 2 and s.get("old").item_count == 1
    conn = sqlite3.connect(d / "agentstate.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096  # a database keeps the size it was made with
    conn.close()


def test_the_wal_checkpoints_at_the_same_size_whatever_the_page_size(tmp_path) -> None:
    """SQLite's auto-checkpoint counts pages (1,000): at 2 KiB pages it would checkpoint twice as often;
    agentstate's connections set it to 4 MiB of WAL for any page size (4 KiB pages: SQLite's own)."""
    from agentstate.sql.schema import WAL_CHECKPOINT_BYTES

    def autocheckpoint(s: SessionStore) -> int:
        conn = s.db._take(create=False)
        try:
            return conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        finally:
            s.db._give(conn)

    with SessionStore(str(tmp_path / "new")) as s:
        s.append("s", [U])
        assert autocheckpoint(s) * 2048 == WAL_CHECKPOINT_BYTES  # the connection that made the file
    with SessionStore(str(tmp_path / "new")) as s:
        assert autocheckpoint(s) * 2048 == WAL_CHECKPOINT_BYTES  # a later one, of a reader
    old = tmp_path / "old"
    old.mkdir(mode=0o700)
    conn = sqlite3.connect(old / "agentstate.db")
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    os.chmod(old / "agentstate.db", 0o600)
    with SessionStore(str(old)) as s:
        s.append("s", [U])
        assert autocheckpoint(s) == 1000


def test_items_larger_than_a_page_round_trip(tmp_path) -> None:
    """2 KiB pages: an item of 1 KB to 1 MB spans overflow pages, stored and read back byte for byte."""
    with SessionStore(str(tmp_path / "store")) as s:
        sizes = [900, 2000, 2100, 5000, 64_000, 1_000_000]
        s.append("big", [{"type": "blob", "n": n, "data": "x" * n} for n in sizes])
        s.append("big", [{"role": "user", "content": "after"}])
        got = s.items("big")
        assert [len(i.data.get("data", "")) for i in got] == [*sizes, 0]
        assert s.context("big", 2)[0].data == {"type": "blob", "n": 1_000_000, "data": "x" * 1_000_000}


# -- issue 15, item 8: the times that order writes are taken under the lock --------------------------------


def test_updated_at_never_goes_backwards(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentstate.sessions import store as sessions

    store.append("s", [U])
    before = store.get("s").updated_at
    monkeypatch.setattr(sessions, "_utcnow", lambda: "2001-01-01T00:00:00.000000Z")  # the clock stepped back
    if store.db.dialect == "postgres":  # an append is stamped by the server's clock, under the session's lock:
        before = "2999-01-01T00:00:00.000000Z"  # put the session ahead of that clock instead
        conn = store.db.connector.conn()
        with conn.transaction():
            conn.execute("UPDATE sessions SET updated_at = %s WHERE id = 's'", (before,))
    added = store.append("s", [user("b")])
    assert store.get("s").updated_at == before and added[0].created_at == before
    store.pop("s")
    assert store.get("s").updated_at == before
