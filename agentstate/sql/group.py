"""Group commit: calls of one process that write to the same SQLite database at the same time share one
transaction, so they share its one WAL fsync (agentstate.sql.durable).

Each call brings ``work(tx)``, the statements of one logical write (an append). The first call finds no
leader and becomes it: it takes the writer lock (``Database.write``), and only then takes every call
queued meanwhile, its own included, as the batch. With more than one call in the batch each work runs in
its own SAVEPOINT: one that raises (a ConflictError of expect_seq, NotFound with create=False...) is rolled
back to it, alone, and its call gets that error; the others' statements stay. Then one COMMIT, and every
call of the batch gets its own outcome, only after the COMMIT returned (durable). A batch of one runs
exactly as a plain ``write()``. The next queued call is then promoted to lead the next batch, so a leader
returns as soon as its own batch is done.

Failures that are the batch's, not one call's, reach every call of it with the same honest outcome:

* the lock not acquired in time, an error opening the database, or a failed COMMIT: the same error
  (a failed COMMIT that could not be written over says "the outcome is unknown", for everyone);
* a storage error inside one work that SQLite answers by rolling back the whole transaction (disk full,
  I/O error): the batch's error;
* the leader interrupted (SIGINT/SIGTERM in the main thread) before the COMMIT: the leader gets its
  Interrupted ("abandoned"); the others were not interrupted and nothing of theirs was written, so they
  go back to the queue and run in the next batch. Interrupted after the COMMIT (its write says
  "committed"), the batch is committed: the others get their results, and are never run again.

A call waiting in the main thread that is interrupted: still queued, it leaves the queue (nothing was
written, the lock was not acquired); already in a running batch, it waits for that batch (a few
milliseconds) and reports the outcome: "committed" or "abandoned".

The group's bookkeeping is signal-safe: a leader takes its batch and hands over (outcomes given, the next
call promoted) each in one step that a signal waits for (``signals.critical``, with the handlers in place
for the whole call), and a signal that lands just before the hand-over began makes :func:`run` do it.
So whatever line a signal lands on, no queued call is left without a leader, and no call's items are
lost or stored twice.

Calls are grouped per database file, lock timeout and I/O seam, across Database objects of the
process (each SessionStore has its own). A forked child starts with no group.

A caller that already holds many calls (a server's one writer thread, fed by its event loop) groups
them itself with :func:`batch` instead of a thread per call: inside the block, this thread's calls on
that Database run at once in the block's one transaction, each in its own SAVEPOINT, and return (or
raise their own error) before anything is durable; the COMMIT is at the end of the block. That caller
answers each call only once the block returned (see :func:`batch`).
"""

from __future__ import annotations

import copy
import os
import threading
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..duration import parse_duration
from ..errors import Interrupted
from ..state import signals
from . import stats
from .engine import Database, storage_error

__all__ = ["Batch", "batch", "run"]

_QUEUED, _LEAD, _TAKEN, _DONE, _GONE = range(5)


class _Call:
    """One call's work and outcome (a Batch's calls; _Entry adds what a queued call waits on)."""

    __slots__ = ("error", "result", "work")

    def __init__(self, work: Callable[[Any], Any]) -> None:
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class _Wake:
    """What a queued call waits on until it is done or leads: ``set`` once (always under the group's
    mutex), ``wait`` until then. Not a threading.Event: a signal's exception raised inside Event.wait
    (right after its Condition took its lock, in Python code) leaves that lock held, and the next wait of
    the same call deadlocks on it. Here the wait is one C call, a lock's acquire: a signal's exception ends
    it before it took the lock or after, and ``is_set`` tells a wait again that it is over."""

    __slots__ = ("_lock", "is_set")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._lock.acquire()
        self.is_set = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            self._lock.release()

    def wait(self) -> None:
        if not self.is_set:
            self._lock.acquire()  # returns once set() released it; a signal may interrupt it
            self._lock.release()


class _Entry(_Call):
    __slots__ = ("event", "state")

    def __init__(self, work: Callable[[Any], Any], state: int) -> None:
        super().__init__(work)
        self.state = state
        # A call that waits in the queue waits on its _Wake: made (under the group's mutex) before it is
        # queued behind a leader, so whoever takes it may set it. A call that leads at once needs none.
        self.event: _Wake = None  # type: ignore[assignment]


class _Group:
    __slots__ = ("leading", "mutex", "queue")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.queue: list[_Entry] = []
        self.leading = False

    def promote_next(self) -> None:
        """Under ``mutex``: the first queued call leads the next batch, or nobody leads."""
        if self.queue:
            nxt = self.queue[0]
            nxt.state = _LEAD
            nxt.event.set()
        else:
            self.leading = False


_groups: dict[tuple, _Group] = {}
_groups_mutex = threading.Lock()


def _after_fork_in_child() -> None:
    global _groups_mutex
    _groups.clear()  # a leader of the parent's does not exist here
    _groups_mutex = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _group(key: tuple) -> _Group:
    g = _groups.get(key)
    if g is None:
        with _groups_mutex:
            g = _groups.setdefault(key, _Group())
    return g


def run(db: Any, operation: str, work: Callable[[Any], Any], lock_timeout: float | str | None = None) -> Any:
    """``work(tx)`` committed in a transaction of ``db`` (a sql.engine.Database), possibly shared with
    other calls of this process; its return value once durable, or its error (see the module docstring).
    Inside this thread's :func:`batch` of ``db``: its return value at once, durable at the block's end."""
    b = _local.batch
    if b is not None and b.db is db:
        return b.run(work)
    timeout = db.lock_timeout if lock_timeout is None else parse_duration(lock_timeout, "lock timeout")
    files = db.files
    key = (db.path, timeout, None if type(files).__module__ == "agentstate.state.fileio" else id(files))
    assert isinstance(db, Database)
    g = _group(key)
    e = _Entry(work, _QUEUED)
    lead = _Lead(e)
    # The handlers in place for the whole call (main thread; the write's own guarded() is then a no-op), so
    # that critical() holds a signal through the group's bookkeeping: taking a batch, handing it over.
    with signals.guarded():
        try:
            with g.mutex:
                if g.leading:
                    e.event = _Wake()
                g.queue.append(e)
                if not g.leading:
                    g.leading, e.state = True, _LEAD  # no call (no signal check) between the two stores
            if e.state != _LEAD:
                _follow(g, e, db, operation)  # handles an interruption while it waits
                if e.state == _DONE:
                    return e.outcome()
            return _lead(g, lead, db, operation, timeout)  # handles one while it leads
        except KeyboardInterrupt as ki:  # a signal in a gap between those steps (the CLI turns signals into these)
            with g.mutex:
                leads = e.state == _LEAD or lead.batch is not None
                if not leads:
                    if e.state == _DONE and e.error is None:  # a follower's write completed before the signal
                        raise signals.interrupted(ki, operation, locked=False,
                                                  committed=_committed_to(operation, db)) from None
                    if e.state != _QUEUED or e not in g.queue:
                        raise  # taken by a batch already: the write path reports it
                    g.queue.remove(e)  # nothing of it ran: it leaves
                    e.state = _GONE
            if leads:  # it leads, or led: its hand-over, unless that ran already (then this is a no-op)
                _hand_over(g, lead, ki)
                if lead.box and e.error is None:  # (its own error in a batch: its statements were rolled back)
                    raise signals.interrupted(ki, operation, committed=_committed_to(operation, db)) from None
            raise signals.interrupted(ki, operation, locked=lead.batch is not None) from None


def _follow(g: _Group, e: _Entry, db: Any, operation: str) -> None:
    """Wait until ``e`` is done or promoted to leader (see the module docstring for interruptions)."""
    caught: KeyboardInterrupt | None = None
    while True:
        try:
            e.event.wait()
            if caught is None:
                return
            break
        except KeyboardInterrupt as ki:
            with g.mutex:
                if e.state in (_QUEUED, _LEAD):  # nothing of it ran: leave the queue
                    g.queue.remove(e)
                    if e.state == _LEAD:
                        g.promote_next()
                    e.state = _GONE
                    raise signals.interrupted(ki, operation, locked=False) from None
            caught = caught or ki  # in a running batch: wait for its outcome
    err = e.error
    if err is not None and getattr(err, "details", {}).get("outcome") == "unknown":
        raise err
    what = _committed_to(operation, db) if err is None else None
    raise signals.interrupted(caught, operation, committed=what, locked=False) from None


def _committed_to(operation: str, db: Any) -> str:
    """What an Interrupted says was committed (as Database.write says it)."""
    return f"the {operation} is committed to {db.path}"


class _Lead:
    """What one leader has done so far (``batch``: the calls it took, None before; ``box``: non-empty once
    its transaction committed and is durable; ``handed``: its hand-over ran), so that the hand-over can be
    run again, and only once, after a signal cut the leader short."""

    __slots__ = ("batch", "box", "e", "handed")

    def __init__(self, e: _Entry) -> None:
        self.e = e
        self.batch: list[_Entry] | None = None
        self.box: list[Any] = []
        self.handed = False


def _lead(g: _Group, lead: _Lead, db: Any, operation: str, timeout: float) -> Any:
    e = lead.e
    try:
        with db.write(operation, timeout, done=lead.box) as tx:
            with signals.critical(None), g.mutex:  # a signal waits until the batch is taken, whole
                lead.batch = batch = g.queue
                g.queue = []
                for x in batch:
                    x.state = _TAKEN
            if len(batch) == 1:
                e.result = e.work(tx)  # an error rolls the transaction back and is this call's alone
            else:
                for x in batch:
                    _run_one(db, tx, x, operation)
    except BaseException as exc:
        while not lead.handed:
            try:
                _hand_over(g, lead, exc)
            except KeyboardInterrupt:  # a signal held through it, or that came just before: this write's
                pass  # own error is the news (as when a critical section fails), and the hand-over is done
        raise
    _hand_over(g, lead, None)
    return e.outcome()


def _hand_over(g: _Group, lead: _Lead, error: BaseException | None) -> None:
    """The end of a leader's turn, whatever ended it: the calls of its batch get their outcome (see the
    module docstring), and the next queued call leads. All of it or none (a signal waits for its end), and
    once: run() calls it again if a signal landed before it began."""
    # committed: durable (a signal held through the COMMIT did not stop it), or at least past its COMMIT
    # when a signal was not held there (the write says so): run again, the others' items would be stored twice
    committed = bool(lead.box) or (isinstance(error, Interrupted) and error.details.get("outcome") == "committed")
    with signals.critical("committed" if committed else None), g.mutex:
        if lead.handed:
            return
        e, batch = lead.e, lead.batch
        if committed:
            stats.batch(len(batch))
            for x in batch:
                if x is not e:
                    x.state = _DONE
                    x.event.set()
        elif batch is None:  # the lock or the database failed (or a signal came) before the batch was taken
            if e in g.queue:
                g.queue.remove(e)
            if error is not None and not _interrupted(error):  # those queued meanwhile would meet the same
                others, g.queue = g.queue, []
                _fail(others, error)
        elif _interrupted(error):  # the leader's interruption: the others run in the next batch
            others = [x for x in batch if x is not e]
            for x in others:
                x.state = _QUEUED
                x.result = x.error = None
            g.queue[:0] = others
        else:
            _fail([x for x in batch if x is not e], error)
        g.promote_next()
        lead.handed = True


def _interrupted(error: BaseException | None) -> bool:
    return isinstance(error, (KeyboardInterrupt, Interrupted))


def _fail(calls: list[_Entry], error: BaseException | None) -> None:
    """Under the group's mutex: the batch's transaction did not commit, and ``calls`` get its error."""
    for x in calls:
        try:
            x.error = copy.copy(error)
        except Exception:  # noqa: BLE001 - an uncopyable error: the same object
            x.error = error
        x.state = _DONE
        x.event.set()


def _run_one(db: Any, tx: Any, x: _Entry | _Call, operation: str) -> None:
    """One call's work in its own SAVEPOINT: its error rolls back only its statements."""
    import sqlite3

    tx.savepoint()
    try:
        x.result = x.work(tx)
    except sqlite3.Error as err:
        if not tx.rollback_to_savepoint():  # SQLite rolled the whole transaction back: the batch fails
            raise
        x.error = storage_error(err, db.path, f"write ({operation})")
    except Exception as err:  # noqa: BLE001 - this call's own error (ConflictError, NotFound, ...)
        x.error = err
        if not tx.rollback_to_savepoint():
            raise
    else:
        tx.release_savepoint()


class _Local(threading.local):
    batch: Batch | None = None


_local = _Local()


class Batch:
    """The open transaction of a :func:`batch` block: ``calls`` counts the calls run in it (as a group
    commit's batch size does, failed ones included); ``broken`` is the error that ended the transaction
    itself (nothing of the block will commit)."""

    __slots__ = ("broken", "calls", "db", "operation", "tx")

    def __init__(self, db: Any, tx: Any, operation: str) -> None:
        self.db = db
        self.tx = tx
        self.operation = operation
        self.calls = 0
        self.broken: BaseException | None = None

    def run(self, work: Callable[[Any], Any]) -> Any:
        """One call's ``work(tx)`` in its own SAVEPOINT: its result, or its own error (its statements
        rolled back, the others' kept). An error that took the whole transaction is ``broken`` and raised."""
        if self.broken is not None:
            raise self.broken
        x = _Call(work)
        try:
            _run_one(self.db, self.tx, x, self.operation)
        except BaseException as exc:
            self.broken = exc
            raise
        self.calls += 1
        return x.outcome()


@contextmanager
def batch(db: Any, operation: str, lock_timeout: float | str | None = None) -> Iterator[Batch]:
    """One write transaction of ``db`` for the grouped calls (``run``) this thread makes inside the block.

    Each call runs at once in its own SAVEPOINT and returns its result, or raises its own error with its
    statements rolled back, as in a group commit; nothing is durable until the block exits: the COMMIT.
    The caller answers a call only after the block returned. If the block raises (the lock not acquired
    in time, a failed COMMIT, ``Batch.broken``: an error that took the whole transaction, or the
    caller's own), nothing of it was written: every call that had succeeded gets that error. A caller
    must leave the block once ``broken`` is set (further calls raise it again)."""
    timeout = db.lock_timeout if lock_timeout is None else parse_duration(lock_timeout, "lock timeout")
    if _local.batch is not None:
        raise RuntimeError("group.batch() blocks do not nest")
    with db.write(operation, timeout) as tx:
        b = Batch(db, tx, operation)
        _local.batch = b
        try:
            yield b
        finally:
            _local.batch = None
        if b.broken is not None:
            raise b.broken
    if b.calls:
        stats.batch(b.calls)
