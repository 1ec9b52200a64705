"""Times that order writes are taken under the lock (issue 15, item 8).

This process holds the store's writer lock 3 s while an `agentstate sessions append` (or `responses save`)
process waits for it: what that write stamps (the item's created_at and the session's updated_at; the
response's created_at) is not before the moment the holder released the lock. It used to be the moment
the writer started waiting, so `prune` right after the acknowledgement could delete the session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentstate import ResponseStore, SessionStore
from agentstate.sessions.store import _utcnow
from agentstate.sql.engine import Database

CLI = str(Path(sys.executable).parent / "agentstate")


@pytest.mark.parametrize("kind", ["sessions", "responses"])
def test_a_write_that_waited_for_the_lock_is_stamped_after_it_got_it(kind: str, tmp_path: Path) -> None:
    d = tmp_path / "store"
    with SessionStore(str(d)) as s:
        s.append("s", [{"role": "user", "content": "first"}])
    if kind == "sessions":
        args = ["sessions", "append", "s", "--content", "late"]
    else:
        body = tmp_path / "r.json"
        body.write_text('{"id": "r1"}')
        args = ["responses", "save", str(body)]
    lk = Database(str(d)).lock()
    lk.acquire(10, "test holder")
    try:
        proc = subprocess.Popen([CLI, *args, "--json", "--dir", str(d)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()  # still waiting for the lock
        released_at = _utcnow()
    finally:
        lk.release()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    if kind == "sessions":
        stamped = [doc["items"][0]["created_at"]]
        with SessionStore(str(d)) as s:
            stamped.append(s.get("s").updated_at)
    else:
        with ResponseStore(str(d)) as r:
            stamped = [doc["saved"][0]["created_at"], r.info("r1").created_at]
    assert all(t >= released_at for t in stamped), (stamped, released_at)
