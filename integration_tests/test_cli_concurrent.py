"""Concurrent `agentstate` processes on one store: no lost update, exactly-one-winner conflicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "agentstate")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTATE_")}


def _start_all(argvs: list[list[str]]) -> list[tuple[int, bytes, bytes]]:
    procs = [subprocess.Popen([CLI, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()) for a in argvs]
    out = []
    for p in procs:
        o, e = p.communicate(timeout=120)
        out.append((p.returncode, o, e))
    return out


def _read(d: Path) -> dict:
    r = subprocess.run([CLI, "show", "--dir", str(d), "--json"], capture_output=True, timeout=60, env=_env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ten_concurrent_sets_all_land(tmp_path: Path) -> None:
    d = tmp_path / "store"
    results = _start_all([["apply", "--set", f"addr{n}={n}", "--dir", str(d), "--lock-timeout", "60s", "--json"]
                          for n in range(10)])
    for rc, _out, err in results:
        assert rc == 0, err
        assert b"Traceback" not in err
    serials = sorted(json.loads(out)["serial"] for _, out, _ in results)
    assert serials == list(range(1, 11))  # each apply was its own transaction
    doc = _read(d)
    assert doc["resources"] == {f"addr{n}": n for n in range(10)}
    assert doc["serial"] == 10
    assert not [p.name for p in d.iterdir() if ".tmp-" in p.name or ".restore-" in p.name]


def test_expect_serial_has_exactly_one_winner(tmp_path: Path) -> None:
    d = tmp_path / "store"
    assert subprocess.run([CLI, "apply", "--set", "seed=0", "--dir", str(d)], env=_env(), timeout=60).returncode == 0
    results = _start_all([["apply", "--set", f"winner={n}", "--expect-serial", "1", "--dir", str(d),
                           "--lock-timeout", "60s", "--json"] for n in range(6)])
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0] + [5] * 5, [(rc, e) for rc, _, e in results]
    for rc, out, err in results:
        if rc == 5:
            assert len(err.splitlines()) == 1 and err.startswith(b"error: ")
            assert json.loads(out)["error"]["code"] == "conflict"
    doc = _read(d)
    assert doc["serial"] == 2
    winner = next(json.loads(out) for rc, out, _ in results if rc == 0)
    assert winner == {"serial": 2, "created": ["winner"], "updated": [], "deleted": []}


def test_concurrent_rm_of_one_address_removes_it_once(tmp_path: Path) -> None:
    d = tmp_path / "store"
    assert subprocess.run([CLI, "apply", "--set", "x=1", "--set", "keep=1", "--dir", str(d)], env=_env(),
                          timeout=60).returncode == 0
    results = _start_all([["rm", "x", "--dir", str(d), "--lock-timeout", "60s"] for _ in range(5)])
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 6, 6, 6, 6], [(rc, e) for rc, _, e in results]
    doc = _read(d)
    assert doc["resources"] == {"keep": 1} and doc["serial"] == 2
