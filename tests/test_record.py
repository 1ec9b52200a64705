"""The small frozen value types (agentstate._record.Record) behave as the frozen dataclasses they were,
and a CLI command's start-up builds no dataclass at all."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys

import pytest

from agentstate import Item, SessionInfo
from agentstate.page import Page
from agentstate.sql import Stmt


def test_item_and_session_info_are_frozen_values():
    a = Item(1, "id-1", "2026-01-01T00:00:00.000000Z", {"role": "user", "content": "hi"})
    b = Item(seq=1, id="id-1", created_at="2026-01-01T00:00:00.000000Z", data={"role": "user", "content": "hi"})
    assert a == b and a != Item(2, "id-1", a.created_at, a.data) and a != (1, "id-1", a.created_at, a.data)
    assert repr(a) == ("Item(seq=1, id='id-1', created_at='2026-01-01T00:00:00.000000Z', "
                       "data={'role': 'user', 'content': 'hi'})")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.seq = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del a.id
    with pytest.raises(AttributeError):
        a.other = 1  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(a) == a and a.role == "user"
    info = SessionInfo("s", "default", None, None, "t0", "t1", 3)
    assert (info.version, info.expires_at) == (0, None)
    assert hash(info) == hash(SessionInfo("s", "default", None, None, "t0", "t1", 3, 0, None))
    match info:
        case SessionInfo(sid, tenant):
            assert (sid, tenant) == ("s", "default")


def test_page_and_stmt():
    p: Page[int] = Page([1, 2], "c", 5)
    assert list(p) == [1, 2] and len(p) == 2 and p == Page(items=[1, 2], next_cursor="c", total=5)
    assert Page().items == [] and Page().items is not Page().items
    s = Stmt(both="SELECT * FROM t WHERE a = :a AND b LIKE '%x'")
    assert s.sqlite == s.both and s.postgres == "SELECT * FROM t WHERE a = %(a)s AND b LIKE '%%x'"
    assert s.text("postgres") == s.postgres and Stmt(sqlite="x", postgres="y").text("sqlite") == "x"
    assert "both" not in repr(s)


def test_a_command_start_builds_no_dataclass(tmp_path):
    """Each dataclass costs ~1 ms of start-up (its methods are generated with exec)."""
    code = ("import dataclasses, sys\n"
            "made = []\n"
            "orig = dataclasses._process_class\n"
            "dataclasses._process_class = lambda cls, *a, **k: (made.append(cls.__qualname__), orig(cls, *a, **k))[1]\n"
            "sys.argv = ['agentstate', 'sessions', 'show', 'chat', '--json', '--dir', sys.argv[1]]\n"
            "import runpy\n"
            "try:\n"
            "    runpy.run_module('agentstate', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('MADE', made, file=sys.stderr)\n")
    from agentstate import SessionStore

    with SessionStore(tmp_path / "s") as s:
        s.append("chat", [{"role": "user", "content": "hi"}])
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=60)
    assert '"content":"hi"' in r.stdout, r.stderr
    assert "MADE []" in r.stderr, r.stderr
