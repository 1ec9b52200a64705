"""Power loss at every step of a save: the real loader must find the old or the new version.

Each save runs a real ``StateStore.transaction()`` on top of ``tests/crashfs.CrashFS``,
which records a snapshot after every file operation. For every snapshot, every crash
state (unsynced data and/or names lost, prefixes of namespace operations, torn or
zeroed unsynced data) is written into a real directory and loaded with the real
``StateStore(dir).read()``. Once the transaction has returned (the save is
acknowledged), every crash state must yield the new version.

The number of crash states checked is printed (``pytest -s``) and, when
AGENTSTATE_REPORT_DIR is set, written to ``$AGENTSTATE_REPORT_DIR/powerloss.json``.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from crashfs import CrashFS, Snapshot, materialise

from agentstate import StateCorrupted, StateStore, StorageError
from agentstate.state import codec, fileio

SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"
LINEAGE = str(uuid.UUID(int=42))
TOTALS: dict[str, dict[str, int]] = {}


def resources(n: int) -> dict[str, Any]:
    """A few hundred bytes of resources, different for each n (unicode, nesting, edge ints)."""
    return {
        f"agent.{k}": {"model": f"m-{n}-{k}", "n": n * 10 + k, "text": "zürich ✓ " * (3 + n), "big": 2**64 - 1 - n}
        for k in range(1 + n % 3)
    }


def doc(serial: int, res: dict[str, Any]) -> bytes:
    return codec.encode_document(
        serial=serial, lineage=LINEAGE, updated_at="2024-01-01T00:00:00.000000Z", resources_bytes=codec.encode_value(res)
    )


Version = tuple[int, bytes, str | None]


def version_of(state) -> Version:
    return (state.serial, codec.encode_value(state.resources), None if state.source == "new" and state.serial == 0 else state.lineage)


def load(directory: Path) -> Version | str:
    try:
        return version_of(StateStore(directory).read())
    except StateCorrupted as e:
        return f"StateCorrupted: {e}"


@dataclass
class Outcome:
    cases: int = 0
    distinct: int = 0
    violations: list[str] = field(default_factory=list)
    snapshots: int = 0
    ops: list[str] = field(default_factory=list)


def check_save(
    tmp_path: Path,
    initial: dict[str, Any],
    change: Callable[[Any], None],
    *,
    link_errno: int | None = None,
    max_write: int | None = 128,
    follow_up: bool = True,
    save: Callable[[CrashFS, Path], Version] | None = None,
    also_allowed: tuple[Version, ...] = (),
    final: str = "new",
    fs_class: type[CrashFS] = CrashFS,
) -> Outcome:
    store_dir = tmp_path / "store"
    store_dir.mkdir(mode=0o700)
    fs = fs_class(store_dir, max_write=max_write, link_errno=link_errno)
    for name, data in initial.items():
        if isinstance(data, str):
            fs.put_link(name, data)  # a hard link to the file named by data
            initial = dict(initial, **{name: initial[data]})
        else:
            fs.put(name, data)
    materialise({n: (d, 0o600) for n, d in initial.items()}, str(tmp_path / "old"))
    old = load(tmp_path / "old")
    assert not isinstance(old, str), old

    snaps = fs.record()
    if save is None:
        with StateStore(store_dir, files=fs, lock_timeout=5).transaction() as state:
            change(state)
        new = version_of(state)
    else:
        new = save(fs, store_dir)
    fs.on_op = None
    ack = fs.snapshot("acknowledged")
    assert new != old, "the save must change the version"

    out = Outcome(snapshots=len(snaps) + 1, ops=list(fs.ops))
    seen: dict[tuple, Version | str] = {}
    crash_dir = tmp_path / "crash"
    follow_dir = tmp_path / "follow"

    def judge(snap: Snapshot, acknowledged: bool) -> None:
        for label, state_files in snap.crash_states():
            out.cases += 1
            key = tuple((n, d, m) for n, (d, m) in state_files.items())
            if key not in seen:
                materialise(state_files, str(crash_dir))
                seen[key] = got = load(crash_dir)
                if follow_up and not isinstance(got, str):
                    _follow_up(state_files, follow_dir, got, out)
            got = seen[key]
            if acknowledged:
                allowed = {"new": (new,), "old": (old,), "either": (old, new)}[final]
            else:
                allowed = (old, new, *also_allowed)
            if got not in allowed:
                names = {n: len(d) for n, (d, _) in state_files.items()}
                out.violations.append(
                    f"after op {snap.index} ({snap.label}) [{label}] files={names}: got {_short(got)}, "
                    f"expected {' or '.join(_short(a) for a in allowed)}"
                )

    left = [n for n in ack.files() if n.startswith(fileio.temp_prefixes("state.json"))]
    if left:
        out.violations.append(f"temp files left after an acknowledged save: {left}")
    for snap in snaps:
        judge(snap, acknowledged=False)
    judge(ack, acknowledged=True)
    out.distinct = len(seen)
    return out


def _short(v: Version | str) -> str:
    return v if isinstance(v, str) else f"serial {v[0]} ({len(v[1])}B resources)"


def _follow_up(state_files: dict[str, tuple[bytes, int]], directory: Path, loaded: Version, out: Outcome) -> None:
    """The next real writer after the crash: it must succeed and persist loaded + one change."""
    materialise(state_files, str(directory))
    store = StateStore(directory, lock_timeout=5)
    with store.transaction() as st:
        st.resources["probe"] = 1
        recovering = st.source == "backup"
    after = store.read()
    expected = dict(codec.parse_json(loaded[1]), probe=1)
    leftovers = [e for e in os.listdir(directory) if e.startswith(fileio.temp_prefixes("state.json"))]
    # A recovery skips the serial the lost state.json may have held: at least loaded + 2.
    serial_ok = after.serial >= loaded[0] + 2 if recovering else after.serial == loaded[0] + 1
    if not serial_ok or after.resources != expected or after.source != "state" or leftovers:
        out.violations.append(f"follow-up write from serial {loaded[0]} gave serial {after.serial}, temps {leftovers}")


def record(name: str, out: Outcome) -> None:
    TOTALS[name] = {"cases": out.cases, "distinct": out.distinct, "violations": len(out.violations)}
    print(f"\n[powerloss] {name}: {out.cases} crash states checked ({out.distinct} distinct) "
          f"over {out.snapshots} snapshots, {len(out.violations)} violations")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    cases = sum(t["cases"] for t in TOTALS.values())
    violations = sum(t["violations"] for t in TOTALS.values())
    print(f"\n[powerloss] total: {cases} crash states checked, {violations} violations")
    report_dir = os.environ.get("AGENTSTATE_REPORT_DIR")
    if report_dir and TOTALS:
        os.makedirs(report_dir, exist_ok=True)
        with open(os.path.join(report_dir, "powerloss.json"), "w") as f:
            json.dump({"test": "tests/test_powerloss.py", "cases": cases, "violations": violations,
                       "distinct": sum(t["distinct"] for t in TOTALS.values()), "scenarios": TOTALS}, f, indent=2)


def _set(n: int) -> Callable[[Any], None]:
    def change(state) -> None:
        state.resources = resources(n)

    return change


def _nothing(state) -> None:
    pass


TORN = doc(3, resources(3))[:-40]
SCENARIOS: dict[str, tuple[dict[str, Any], Callable[[Any], None]]] = {
    # a new store: old = empty
    "first": ({}, _set(1)),
    # state.json only: the first backup is made
    "second": ({"state.json": doc(1, resources(1))}, _set(2)),
    # state.json and .bak: the backup is rotated
    "rotation": ({"state.json": doc(2, resources(2)), "state.json.bak": doc(1, resources(1))}, _set(3)),
    # torn state.json, valid backup: a repair (no change) persists the recovery
    "recovery": ({"state.json": TORN, "state.json.bak": doc(2, resources(2))}, _nothing),
    # bad checksum, valid backup, and a change in the same transaction
    "recovery-change": (
        {"state.json": doc(3, resources(3)).replace(b"m-3", b"m-9"), "state.json.bak": doc(2, resources(2))},
        _set(4),
    ),
    # state.json missing, valid backup
    "recovery-missing": ({"state.json.bak": doc(2, resources(2))}, _set(4)),
    # state.json and .bak are one inode (as after a commit that failed at its last rename):
    # renaming over .bak does nothing
    "same-inode": ({"state.json": doc(2, resources(2)), "state.json.bak": "state.json"}, _set(3)),
    # the spare inode (the backup before last, kept by the previous commit) is overwritten in place
    "spare": ({"state.json": doc(2, resources(2)), "state.json.bak": doc(1, resources(1)),
               "state.json.spare": doc(0, {}) + b"x" * 300}, _set(3)),
    # a spare that is also the backup (a second name): never written in place
    "spare-shared": ({"state.json": doc(2, resources(2)), "state.json.bak": doc(1, resources(1)),
                      "state.json.spare": "state.json.bak"}, _set(3)),
    # the temp files of a writer killed before its renames (fixed names) are replaced by the next one
    "temps-left": (
        {"state.json": doc(1, resources(1)), "state.json.tmp-new": b'{"checksum":"sha256:00',
         "state.json.bak.tmp-new": doc(0, {})},
        _set(2),
    ),
}
LINKS = {"link": None, "copy": errno.EPERM}


@pytest.mark.parametrize("links", list(LINKS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_crash_state_yields_old_or_new(tmp_path, scenario, links):
    initial, change = SCENARIOS[scenario]
    out = check_save(tmp_path, initial, change, link_errno=LINKS[links], follow_up=SLOW or links == "link")
    record(f"{scenario}/{links}", out)
    assert out.violations == []
    # The save really went through this layer: the protocol's steps were recorded.
    assert any(op.startswith("fsync ino") for op in out.ops) and out.ops[-1] == "fsync_dir"
    assert any(op.startswith("link ") for op in out.ops) == (links == "link" and "state.json" in initial)
    assert sum(op.startswith("write ") for op in out.ops) >= 2  # short writes were looped over
    assert out.cases >= out.snapshots * 8


@pytest.mark.parametrize("max_write", [None, 1, 7])
def test_short_writes_of_any_size(tmp_path, max_write):
    initial = {"state.json": doc(5, resources(5)), "state.json.bak": doc(4, resources(4))}
    out = check_save(tmp_path, initial, _set(6), max_write=max_write, follow_up=False)
    record(f"short-writes-{max_write}", out)
    assert out.violations == []


def test_two_saves_in_a_row(tmp_path):
    """A crash anywhere in two consecutive saves leaves version 1, 2 or 3, never anything else."""

    def save(fs: CrashFS, store_dir: Path) -> Version:
        store = StateStore(store_dir, files=fs, lock_timeout=5)
        with store.transaction() as st:
            st.resources = resources(2)
        with store.transaction() as st:
            st.resources = resources(3)
        return version_of(st)

    mid = (2, codec.encode_value(resources(2)), LINEAGE)
    out = check_save(tmp_path, {"state.json": doc(1, resources(1))}, _nothing, save=save, follow_up=False,
                     also_allowed=(mid,))
    record("two-saves", out)
    assert out.violations == []


def test_checker_catches_an_unsafe_protocol(tmp_path):
    """The harness can fail: a save that renames before fsync (no fsync at all) is caught."""

    def unsafe(fs: CrashFS, store_dir: Path) -> Version:
        data = doc(2, resources(2))
        path = str(store_dir / "state.json")
        fd = fs.create(path + ".tmp-unsafe")
        fileio.write_all(fs, fd, data)
        fs.close(fd)
        fs.rename(path + ".tmp-unsafe", path)
        fs.fsync_dir(str(store_dir))
        return (2, codec.encode_value(resources(2)), LINEAGE)

    out = check_save(tmp_path, {"state.json": doc(1, resources(1))}, _nothing, save=unsafe, follow_up=False)
    assert out.violations, "a rename of unsynced data must produce corrupt crash states"
    assert any("StateCorrupted" in v for v in out.violations)

    def no_dir_fsync(fs: CrashFS, store_dir: Path) -> Version:
        data = doc(2, resources(2))
        path = str(store_dir / "state.json")
        fd = fs.create(path + ".tmp-nodirsync")
        fileio.write_all(fs, fd, data)
        fs.fsync(fd)
        fs.close(fd)
        fs.rename(path + ".tmp-nodirsync", path)
        return (2, codec.encode_value(resources(2)), LINEAGE)

    (tmp_path / "second").mkdir()
    out = check_save(tmp_path / "second", {"state.json": doc(1, resources(1))}, _nothing, save=no_dir_fsync,
                     follow_up=False)
    # Acknowledged without a directory fsync: losing the rename brings back the old version.
    assert any("acknowledged" in v and "got serial 1" in v for v in out.violations)


class FailingDirSync(CrashFS):
    """CrashFS whose first fsync of the store directory fails with EIO (and persists nothing)."""

    failed = False

    def fsync_dir(self, path: str) -> None:
        if os.path.abspath(path) == self.dir and not self.failed:
            self.failed = True
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        super().fsync_dir(path)


@pytest.mark.parametrize("links", list(LINKS))
def test_failed_directory_fsync_is_fail_stop(tmp_path, links):
    """A commit whose directory fsync fails raises StorageError saying the outcome is unknown, and
    does nothing more (no roll-back: a later fsync would prove nothing). Every crash state, before
    and after the error, yields the old or the new version, and the next writer (follow-up) works
    from whichever it finds."""
    fs_holder: list[CrashFS] = []

    def save(fs: CrashFS, store_dir: Path) -> Version:
        fs_holder.append(fs)
        with pytest.raises(StorageError) as ei:
            with StateStore(store_dir, files=fs, lock_timeout=5).transaction() as st:
                st.resources = resources(3)
        msg = str(ei.value)
        assert "outcome is unknown" in msg and "agentstate doctor" in msg and "unchanged" not in msg, msg
        return (3, codec.encode_value(resources(3)), LINEAGE)

    initial = {"state.json": doc(2, resources(2)), "state.json.bak": doc(1, resources(1))}
    out = check_save(tmp_path, initial, _nothing, save=save, final="either", link_errno=LINKS[links],
                     fs_class=FailingDirSync)
    record(f"dir-fsync-fails/{links}", out)
    assert fs_holder[0].failed
    assert out.ops[-1] == "rename state.json.tmp-new -> state.json" or out.ops[-1].startswith("rename"), out.ops[-3:]
    assert not any("restore" in op for op in out.ops)
    assert out.violations == []


def test_three_saves_reuse_the_spare_and_every_crash_state_is_old_or_new(tmp_path):
    """From the third save on, the new version is written into the spare inode (no inode created or
    freed): a crash anywhere in saves 2-4 leaves version 1 to 4, never anything else."""

    def save(fs: CrashFS, store_dir: Path) -> Version:
        store = StateStore(store_dir, files=fs, lock_timeout=5)
        for n in (2, 3, 4):
            with store.transaction() as st:
                st.resources = resources(n)
        return version_of(st)

    mids = tuple((n, codec.encode_value(resources(n)), LINEAGE) for n in (2, 3))
    out = check_save(tmp_path, {"state.json": doc(1, resources(1))}, _nothing, save=save, follow_up=False,
                     also_allowed=mids)
    record("three-saves", out)
    assert out.violations == []
    assert any(op == "open state.json.spare" for op in out.ops), out.ops  # the spare was reused
    assert sum(op.startswith("create ") for op in out.ops) == 2, out.ops  # saves 2 and 3 only


def test_a_spare_with_another_name_is_never_written_in_place(tmp_path):
    """A spare that someone hard-linked elsewhere (a snapshot tool) keeps its bytes: the commit writes a
    new file instead, and the backup and the outside copy are intact."""
    store = StateStore(tmp_path / "s")
    for n in (1, 2, 3):
        with store.transaction() as st:
            st.resources = resources(n)
    spare = tmp_path / "s" / "state.json.spare"
    assert spare.exists() and spare.stat().st_nlink == 1  # the backup before last, kept
    outside = tmp_path / "snapshot"
    os.link(spare, outside)
    kept = outside.read_bytes()
    with store.transaction() as st:
        st.resources = resources(4)
    assert outside.read_bytes() == kept
    assert store.read().resources == resources(4)
    assert codec.decode_document((tmp_path / "s" / "state.json.bak").read_bytes()).resources == resources(3)
