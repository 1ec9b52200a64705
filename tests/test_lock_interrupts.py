"""A signal anywhere in ``Lock.acquire`` (issue 15 item 12): an acquire that raises never leaves the lock
held. A KeyboardInterrupt between the wait loop and the ``try`` (around ``size = max(...)``) reported "not
acquired" but left the descriptor flocked, so this process and every other one then saw a lock held by
"a process that has not written its record".

Deterministic: a trace function raises KeyboardInterrupt at the k-th line executed inside the lock modules
during one acquire, for every k until an acquire completes; after each, this process (on a fresh
descriptor) and another process can take the lock, and the record is blank. Then the same with real
SIGINTs sent at random moments to a process looping acquire/release."""

from __future__ import annotations

import fcntl
import linecache
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import agentstate.state.fileio
import agentstate.state.lock
import agentstate.state.lock_record
from agentstate.state.lock import Lock

FILES = {agentstate.state.lock.__file__, agentstate.state.lock_record.__file__, agentstate.state.fileio.__file__}


def added_fds(earlier: dict) -> dict:
    """Lock descriptors registered since the snapshot ``earlier`` of agentstate.state.lock._fds (a number
    reused by another Lock counts as added). Ones closed meanwhile are not counted: a store an earlier
    test left behind closes its kept descriptor whenever the garbage collector gets to it."""
    return {fd: lk for fd, lk in agentstate.state.lock._fds.items() if earlier.get(fd) is not lk}


def free_here(path: str) -> bool:
    """The kernel's answer on a new open file description (a flock held by this process conflicts too)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def free_elsewhere(path: str) -> bool:
    code = "import sys; from agentstate.state.lock import Lock; lk = Lock(sys.argv[1]); lk.acquire(0); lk.release(); print('ok')"
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and r.stdout == "ok\n"


class InterruptAt:
    """Raise KeyboardInterrupt at the ``k``-th line event in the lock modules (once)."""

    def __init__(self, k: int) -> None:
        self.k, self.seen, self.where = k, 0, None

    def local(self, frame, event, arg):
        if event == "line" and self.where is None:
            self.seen += 1
            if self.seen == self.k:
                self.where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
                raise KeyboardInterrupt
        return self.local

    def __call__(self, frame, event, arg):
        return self.local if frame.f_code.co_filename in FILES and self.where is None else None


def test_an_interrupt_at_size_max_after_the_wait_leaves_the_lock_free(tmp_path: Path, monkeypatch) -> None:
    """The reported spot: between the wait loop and the try (``size = max(RECORD_BLOCK, st.st_size)``)."""
    path = str(tmp_path / "state.json.lock")

    def interrupted_max(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(agentstate.state.lock, "max", interrupted_max, raising=False)
    lk = Lock(path)
    earlier = dict(agentstate.state.lock._fds)  # descriptors of locks other tests still hold
    with pytest.raises(KeyboardInterrupt):
        lk.acquire(0)
    monkeypatch.undo()
    assert not lk.held and not added_fds(earlier)
    assert free_here(path) and free_elsewhere(path)
    lk.acquire(0)
    lk.release()


@pytest.mark.parametrize("stale", [False, True], ids=["blank", "stale-record"])
def test_an_interrupt_at_any_line_of_acquire_leaves_the_lock_free(tmp_path: Path, stale: bool) -> None:
    path = str(tmp_path / "state.json.lock")
    earlier = dict(agentstate.state.lock._fds)  # descriptors of locks other tests still hold
    first = Lock(path)
    first.acquire(0)
    first.release()
    interrupted = []
    for k in range(1, 10_000):
        if stale:  # a record left by a holder that died: the acquire reads it and overwrites it
            other = Lock(path)
            other.acquire(0)
            record = os.pread(other._fd, 4096, 0)
            other.release()
            with open(path, "r+b") as f:
                f.write(record)
        lk, trace = Lock(path), InterruptAt(k)
        sys.settrace(trace)
        try:
            lk.acquire(0)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        if trace.where is None:  # every line had its interrupt: this acquire ran to the end
            assert lk.held
            lk.release()
            break
        interrupted.append(trace.where)
        assert not lk.held, trace.where
        assert free_here(path), f"flock left held after an interrupt at {trace.where}"
        assert not added_fds(earlier), trace.where
        if k % 7 == 0 or "acquire" in trace.where:
            assert free_elsewhere(path), trace.where
        if not stale:
            assert Lock(path).read_holder() is None, trace.where
    assert len(interrupted) > 20 and any("acquire" in w for w in interrupted), interrupted
    assert free_here(path) and free_elsewhere(path)


LOOPER = textwrap.dedent("""
    import fcntl, os, signal, sys, traceback
    from agentstate.state.lock import Lock
    path = sys.argv[1]
    lk, rounds, interrupted, last = Lock(path), 0, 0, ""
    lk.acquire(0)  # warm: every lazy import done (a SIGINT inside orjson's first import can crash a retry)
    lk.release()
    armed = False

    def on_sigint(signum, frame):
        if armed:  # a SIGINT during acquire or release: what Python's default handler does
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    print("ready", flush=True)
    while not os.path.exists(path + ".stop"):
        rounds += 1
        try:
            armed = True
            lk.acquire(5)
            lk.release()
            armed = False
        except KeyboardInterrupt:
            armed = False
            interrupted += 1
            last = traceback.format_exc()
            if lk.held:  # interrupted on the way into release(), before its first line: still held, say so
                lk.release()
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("leak: held=%s after %s" % (lk.held, last.replace(chr(10), " | ")), flush=True)
            break
        finally:
            os.close(fd)
        if lk.held:
            print("leak: the object says held, the kernel says free", flush=True)
            break
    print(rounds, interrupted, flush=True)
""")


def test_sigint_at_random_moments_of_acquire_never_leaves_it_held(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json.lock")
    script = tmp_path / "looper.py"
    script.write_text(LOOPER)
    proc = subprocess.Popen([sys.executable, str(script), path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        rng = random.Random(int(os.environ.get("AGENTSTATE_TEST_SEED", "15")))
        for _ in range(400):
            time.sleep(rng.uniform(0, 0.003))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGINT)
    finally:
        Path(path + ".stop").touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "leak" not in out, out
    rounds, interrupted = map(int, out.split())
    assert rounds > 50 and interrupted > 20, out
    assert free_here(path) and free_elsewhere(path)


def test_an_interruption_that_escapes_a_transaction_never_leaves_its_lock_behind(tmp_path: Path, monkeypatch) -> None:
    """A signal handled at the entry of a context manager's ``__exit__``, before it resumes the transaction's
    generator, leaves the generator suspended with the lock held (until it is garbage-collected, at
    interpreter shutdown or never). The CLI releases every lock the process still holds before it reports
    the interruption, so the record is blank and the lock free once the command has answered."""
    from typer.testing import CliRunner

    from agentstate import StateStore
    from agentstate.cli import app
    from agentstate.state import planner, signals

    store_dir = tmp_path / "s"
    with StateStore(store_dir).transaction() as st:
        st.resources["a"] = 1
    kept: list = []

    def escaping_apply(store, **kw):  # the transaction entered, then the signal escapes it
        cm = store.transaction(operation="apply")
        cm.__enter__()
        kept.append(cm)  # still referenced: the generator stays suspended, holding the lock
        raise signals.Interruption(signal.SIGTERM)

    monkeypatch.setattr(planner, "apply", escaping_apply)
    r = CliRunner().invoke(app, ["apply", "--set", "a=2", "--dir", str(store_dir)])
    assert r.exit_code == 143, r.output
    assert "interrupted by SIGTERM" in r.output
    lock_path = str(store_dir / "state.json.lock")
    assert kept and Path(lock_path).read_bytes().strip() == b""  # the record is blank
    assert free_here(lock_path) and free_elsewhere(lock_path)
    assert StateStore(store_dir).read().resources == {"a": 1}
    kept.clear()  # the generator's own clean-up later is harmless: the lock was already released
    assert agentstate.state.lock.release_held() == 0


class SignalAt:
    """A SIGTERM delivered at the ``k``-th line run in agentstate's modules, where a real one could be: the
    handlers ours (a library write installs them) and no critical section open (one holds signals). Not
    at the line event Python 3.11 repeats for a ``with`` statement as its block ends: it comes before the
    context manager's ``__exit__`` runs, where no real signal is checked for (that happens once a call
    returns), and raising there would leave the manager's lock held as no signal can. Nor at a ``try:``
    line: it compiles to a NOP that no handler of the function covers (its exception table starts after
    it), where a real signal is never checked for either, so raising there would skip the very
    ``finally`` the try opens, and those of every enclosing try of the function."""

    def __init__(self, k: int, skip: tuple[str, ...] = ()) -> None:
        from agentstate.state import signals

        self.signals, self.k, self.seen, self.where, self.skip = signals, k, 0, None, skip
        self.lines: dict[int, set[int]] = {}

    def _with_exit(self, frame) -> bool:
        seen = self.lines.setdefault(id(frame), set())
        again = frame.f_lineno in seen
        seen.add(frame.f_lineno)
        return again and linecache.getline(frame.f_code.co_filename, frame.f_lineno).lstrip().startswith("with ")

    def local(self, frame, event, arg):
        s = self.signals
        if event == "call":
            self.lines.pop(id(frame), None)
        if event == "line" and (self._with_exit(frame) or _is_try(frame)):
            return self.local
        if event == "line" and self.where is None and not s._critical and s._installed_by and not s._closed:
            self.seen += 1
            if self.seen == self.k:
                self.where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
                raise s.Interruption(signal.SIGTERM)
        return self.local

    def __call__(self, frame, event, arg):
        name = frame.f_code.co_filename
        if "/agentstate/" not in name or self.where is not None or name.endswith(self.skip):
            return None
        return self.local


def _is_try(frame) -> bool:
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno).lstrip().startswith("try:")


def _every_line(run, check, skip: tuple[str, ...] = ()) -> list[str]:
    """``run()`` with a signal at its k-th line, for every k until a run completes; ``check(error)`` after
    each (None when it completed). The spots interrupted. Not inside agentstate/state/signals.py itself
    (whose bookkeeping a signal inside it could leave inconsistent for the rest of this process); the
    handlers and that bookkeeping are checked after every run and put back at the end."""
    from agentstate.state import signals

    before = {sig: signal.getsignal(sig) for sig in signals.SIGNALS}

    def reset() -> None:  # a line-level trace can raise where no real signal lands (between a ``with``
        for sig, handler in before.items():  # statement's __enter__ and its block, say): start each run clean
            signal.signal(sig, handler)
        signals._installed_by.clear()
        signals._previous.clear()
        signals._pending.clear()
        signals._critical = 0

    try:
        return _each(run, check, (*skip, "/state/signals.py"), reset)
    finally:
        reset()


def _each(run, check, skip: tuple[str, ...], reset) -> list[str]:
    spots = []
    for k in range(1, 20_000):
        trace = SignalAt(k, skip)
        sys.settrace(trace)
        try:
            run()
            error = None
        except BaseException as e:  # noqa: BLE001 - Interrupted, or an Interruption that escaped
            error = e
        finally:
            sys.settrace(None)
        reset()
        check(error, trace.where)
        if trace.where is None:
            return spots
        spots.append(trace.where)
    raise AssertionError("never completed")


def _expected(error, where, n: int, before: int) -> int:
    """The count after one interrupted write, checked against what the caller was told: completed or
    Interrupted "committed": one more; Interrupted otherwise: unchanged; a bare Interruption (the signal
    landed outside the write: before it began, or after it returned) either. Anything else escaping fails."""
    from agentstate.errors import Interrupted

    if error is None or (isinstance(error, Interrupted) and error.details.get("outcome") == "committed"):
        want = {before + 1}
    elif isinstance(error, Interrupted):
        want = {before}
    elif isinstance(error, KeyboardInterrupt):
        want = {before, before + 1}
    else:
        raise AssertionError(f"{where}: {error!r} escaped")
    assert n in want, (where, error, n, before)
    return n


def test_a_signal_at_any_line_of_a_state_transaction_never_leaves_its_lock_held(tmp_path: Path) -> None:
    """Also at the first line of the ``finally`` that releases the lock, before the release runs (what
    integration_tests/test_signals.py's big write hit once in a few hundred CI runs: the record left behind).
    Every run starts from a copy of the same store, so the k-th line is the same line in each."""
    import shutil

    from agentstate import StateStore

    seed = tmp_path / "seed"
    for n in range(3):  # the spare inode in place, as in a steady run
        with StateStore(seed).transaction() as st:
            st.resources["n"] = n
    work = tmp_path / "s"
    lock_path = str(work / "state.json.lock")

    def run() -> None:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(seed, work)
        with StateStore(work).transaction() as st:
            st.resources["n"] += 1

    def check(error, where) -> None:
        _expected(error, where, StateStore(work).read().resources["n"], 2)
        assert free_here(lock_path), f"the lock is held after a signal at {where}"
        assert Path(lock_path).read_bytes().strip() == b"", f"the record was left after a signal at {where}"

    spots = _every_line(run, check)
    assert any("store.py" in s and "transaction" in s for s in spots), spots
    assert agentstate.state.lock.release_held() == 0


def test_a_signal_at_any_line_of_a_database_write_never_leaves_its_lock_held(tmp_path: Path) -> None:
    """The write path's own lines: the group commit's bookkeeping (sql/group.py), engine, lock, the
    session store. After each, the group goes on: the next append of the same process completes (before
    the group's hand-over was re-run after a signal that cut it short, one at the first line of ``_lead``'s
    ``finally``, say, left the group led by nobody, and that append waited forever)."""
    from agentstate import SessionStore

    store = SessionStore(tmp_path / "s")
    store.append("s", [{"type": "zero"}])
    lock_path = str(tmp_path / "s" / "agentstate.db.lock")
    expected = [1]

    def run() -> None:
        store.append("s", [{"type": "more"}])

    def check(error, where) -> None:
        n = len(SessionStore(tmp_path / "s").items("s"))
        expected[0] = _expected(error, where, n, expected[0])
        assert free_here(lock_path), f"the lock is held after a signal at {where}"
        assert Path(lock_path).read_bytes().strip() == b"", f"the record was left after a signal at {where}"
        _goes_on(lambda: store.append("s", [{"type": "next"}]), where)
        expected[0] += 1

    spots = _every_line(run, check)
    assert any("engine.py" in s and "write" in s for s in spots), spots
    assert any("group.py" in s and "_lead" in s for s in spots), spots
    assert any("group.py" in s and "_hand_over" in s for s in spots), spots
    store.close()


def _goes_on(call, where) -> None:
    """``call()`` completes in another thread within 10 s (not: waits forever on a group led by nobody)."""
    out: list[BaseException | None] = []

    def go() -> None:
        try:
            call()
            out.append(None)
        except BaseException as e:  # noqa: BLE001 - reported below
            out.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), f"after a signal at {where} the next write of this process waits forever"
    assert out == [None], (where, out)


def test_a_signal_at_any_line_of_a_group_commit_leader_never_strands_the_calls_behind_it(tmp_path: Path) -> None:
    """Two threads' appends queue behind the main thread's while it waits for the writer lock, so that
    it leads a batch of three; a signal at each line of that leader. Whatever the leader was told, the
    other two calls complete, each stored once: in its batch if that committed, else in the next one,
    led by one of them (their calls were not interrupted). Then the group goes on."""
    from agentstate import SessionStore
    from agentstate.sql import group

    store = SessionStore(tmp_path / "s")
    store.append("s", [{"type": "zero"}])
    lock_path = str(tmp_path / "s" / "agentstate.db.lock")
    leaders, stored_followers = [0], [0]
    followers: list[threading.Thread] = []
    outcomes: list[BaseException | None] = []
    write = store.db.write

    def follower() -> None:
        try:
            store.append("s", [{"type": "follower"}])
            outcomes.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by check()
            outcomes.append(e)

    def queued() -> int:
        return sum(len(g.queue) for key, g in list(group._groups.items()) if key[0] == store.db.path)

    def write_after_followers_queue(*args, **kwargs):  # the leader's db.write: the two queue first
        if threading.current_thread() is threading.main_thread() and not followers:
            for _ in range(2):
                followers.append(threading.Thread(target=follower, daemon=True))
                followers[-1].start()
            deadline = time.monotonic() + 10
            while queued() < 3 and time.monotonic() < deadline:
                time.sleep(0.0005)
            assert queued() == 3, "the two followers did not queue behind the leader"
        return write(*args, **kwargs)

    store.db.write = write_after_followers_queue

    def run() -> None:
        followers.clear()
        outcomes.clear()
        store.append("s", [{"type": "leader"}])

    def check(error, where) -> None:
        for t in followers:
            t.join(10)
            assert not t.is_alive(), f"after a signal at {where} a call queued behind the leader waits forever"
        assert outcomes == [None] * len(followers), (where, outcomes)
        kinds = [i.data["type"] for i in SessionStore(tmp_path / "s").items("s")]
        leaders[0] = _expected(error, where, kinds.count("leader"), leaders[0])
        stored_followers[0] += len(followers)
        assert kinds.count("follower") == stored_followers[0], f"a follower's item is lost or doubled at {where}"
        assert free_here(lock_path), f"the lock is held after a signal at {where}"
        assert Path(lock_path).read_bytes().strip() == b"", f"the record was left after a signal at {where}"
        _goes_on(lambda: store.append("s", [{"type": "next"}]), where)

    spots = _every_line(run, check)
    assert any("group.py" in s and "_lead" in s for s in spots), spots
    assert any("group.py" in s and "_run_one" in s for s in spots), spots  # inside the batch of three
    assert any("engine.py" in s and "write" in s for s in spots), spots
    store.db.write = write
    store.close()


@pytest.mark.parametrize("cut", ["before the handlers were put back", "after the handlers were put back"])
def test_a_signal_that_cuts_a_write_s_guard_short_never_leaves_a_program_s_handlers_replaced(tmp_path: Path,
                                                                                          cut: str) -> None:
    """A library write installs agentstate's handlers for its duration (signals.guarded) and puts the
    program's back at its end. A real signal can land between the steps of that end. Either way the next
    write must run with agentstate's handlers in place (so a signal is held through its commit) and leave
    the program's in place after it: before, a signal that landed before they were put back left
    agentstate's installed for good (a SIGTERM then raised instead of ending the program)."""
    from agentstate import SessionStore
    from agentstate.state import signals

    store = SessionStore(tmp_path / "s")
    store.append("s", [{"n": 0}])
    before = {sig: signal.getsignal(sig) for sig in signals.SIGNALS}
    seen: list[bool] = []
    files = type(store.db.files)

    class Probe(files):
        def datasync(self, fd: int) -> None:  # inside the write's critical section
            seen.append(signal.getsignal(signal.SIGTERM) is signals._handler)
            super().datasync(fd)

    store.db.files = Probe()
    try:
        guard = signals.guarded()
        guard.__enter__()
        assert signal.getsignal(signal.SIGTERM) is signals._handler
        if cut == "before the handlers were put back":  # the block's mark gone, the handlers still ours
            signals._installed_by.clear()
        else:  # the handlers the program's again, the block's mark left
            signals._uninstall()
        store.append("s", [{"n": 1}])
        assert seen == [True], "the next write ran without agentstate's handlers"
        assert {sig: signal.getsignal(sig) for sig in signals.SIGNALS} == before
        assert signals._installed_by == [] and signals._previous == {}
        store.append("s", [{"n": 2}])  # and the one after, as usual
        assert seen == [True, True]
        assert {sig: signal.getsignal(sig) for sig in signals.SIGNALS} == before
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        signals._installed_by.clear()
        signals._previous.clear()
        store.close()
    assert [i.data["n"] for i in SessionStore(tmp_path / "s").items("s")] == [0, 1, 2]


@pytest.mark.parametrize("where", ["entry", "exit"])
def test_a_signal_inside_a_guard_s_own_entry_or_exit_reaches_the_program_once_its_handlers_are_back(
        where: str) -> None:
    """Raised where it landed, inside the guard's own entry or exit, a signal would leave agentstate's
    handlers installed with no write running. It is deferred instead, and raised again for the program's
    own handler once that is back in place; dropped if the block ends with an error (the error is the news)."""
    import types

    from agentstate.state import signals

    got: list[tuple[int, bool]] = []

    def program(signum, frame) -> None:
        got.append((signum, signal.getsignal(signum) is program))

    before = signal.signal(signal.SIGINT, program)
    try:
        for error in (None, RuntimeError("the block's own error")):
            got.clear()
            guard = signals.guarded()
            guard.__enter__()
            assert signal.getsignal(signal.SIGINT) is signals._handler
            code = (signals._Guarded.__enter__ if where == "entry" else signals._Guarded.__exit__).__code__
            signals._handler(signal.SIGINT, types.SimpleNamespace(f_code=code, f_back=None))
            assert got == []  # not raised there
            guard.__exit__(type(error) if error else None, error, None)
            assert signal.getsignal(signal.SIGINT) is program and signals._installed_by == []
            assert got == ([] if error else [(signal.SIGINT, True)])
    finally:
        signal.signal(signal.SIGINT, before)
        signals._installed_by.clear()
        signals._previous.clear()
        signals._deferred.clear()
