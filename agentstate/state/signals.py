"""SIGINT and SIGTERM during a write: finish it or abandon it, never leave half of it.

A cancelled CI job sends SIGTERM (and a person, Ctrl-C: SIGINT). Python's default for SIGTERM
is to die on the spot, without cleanup; for SIGINT, a KeyboardInterrupt wherever the main
thread happens to be. Here both become an :class:`Interruption` (a ``KeyboardInterrupt``, so no
``except Exception`` swallows it) raised at the next bytecode, which unwinds through the
write path's ``finally`` clauses: temp files are removed, the lock is released. Between the
rename that publishes a new version and the directory fsync that makes it durable
(:func:`critical`), signals are held and delivered right after, so a write is either abandoned
before its rename or finished.

The write paths wrap themselves in :func:`guarded`, which installs the handlers for its
duration (main thread only; signals are delivered to the main thread) and turns an
Interruption into :class:`agentstate.errors.Interrupted` (exit 130 or 143) saying which
outcome it was. The CLI calls :func:`install` once at start, so a signal anywhere in a
command ends in one line and the right exit code.

A handler someone else installed is respected: it is called (after any critical section)
instead of raising. A signal that is ignored (SIG_IGN, e.g. SIGINT under ``nohup``) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from _thread import get_ident as _get_ident

try:  # the C functions behind signal.signal/getsignal, without their enum conversions (~20x cheaper:
    import _signal as _sig  # this runs on every transaction)
except ImportError:  # pragma: no cover - not CPython
    _sig = signal  # type: ignore[assignment]
from typing import Any

from ..errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

_previous: dict[int, Any] = {}  # signal -> the handler ours replaced (to call, or restore)
_installed_by: list[str] = []  # "install" (for good) or "guarded" (restored on exit)
_critical = 0  # depth of critical sections in the main thread
_pending: list[int] = []  # signals received during a critical section
_deferred: list[int] = []  # signals received inside a _Guarded block's own entry or exit (see there)
_closed = False  # set by block(): the CLI reported its outcome; signals are dropped from then on


class Interruption(KeyboardInterrupt):
    """A SIGINT or SIGTERM, raised in the main thread. ``outcome``: "committed" when it was
    held through a critical section that completed, else "abandoned" (set by whoever knows)."""

    def __init__(self, signal_number: int, outcome: str = "abandoned") -> None:
        super().__init__(NAMES.get(signal_number, f"signal {signal_number}"))
        self.signal_number = signal_number
        self.outcome = outcome


def _in_main_thread() -> bool:  # get_ident: a C call, where current_thread() costs ~10x more (per write)
    return _get_ident() == threading.main_thread().ident


def _deliver(signum: int, frame: Any) -> None:
    prev = _previous.get(signum)
    if callable(prev) and prev is not signal.default_int_handler:
        prev(signum, frame)
        return
    raise Interruption(signum)


def _handler(signum: int, frame: Any) -> None:
    if _closed:
        return  # the outcome is reported (block() below): a late signal is dropped
    if _critical:
        if signum not in _pending:
            _pending.append(signum)
        return
    if frame is not None and _in_guard(frame):  # raised there, it would leave the guard half done
        if signum not in _deferred:
            _deferred.append(signum)
        return
    _deliver(signum, frame)


def _in_guard(frame: Any) -> bool:
    """Whether ``frame`` is a _Guarded block's own entry or exit, or an install they call."""
    code = frame.f_code
    if code in _GUARD_CODES:
        return True
    back = frame.f_back
    return code in _INSTALL_CODES and back is not None and back.f_code in _GUARD_CODES


def _install() -> bool:
    """Put our handler on SIGINT and SIGTERM (unless ignored); True if anything was installed."""
    if not _in_main_thread():
        return False
    done = False
    for sig in SIGNALS:
        current = _sig.getsignal(sig)
        if current is _handler or current == signal.SIG_IGN or current is None:
            continue  # None: set from C (not by Python); leave it alone
        _previous[sig] = current
        _sig.signal(sig, _handler)
        done = True
    return done


def block() -> None:
    """Block SIGINT and SIGTERM for the rest of the process (the CLI's last step, once its outcome is
    reported: interpreter shutdown restores the default handlers, which would turn a late signal into a kill).

    A signal that arrived just before is dropped too: pthread_sigmask runs the Python handlers of the
    signals already caught, and an Interruption raised there would replace the reported outcome with a
    traceback (the caller also catches one raised before this function's first line)."""
    global _closed
    _closed = True
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def _uninstall() -> None:
    for sig, prev in list(_previous.items()):
        if _sig.getsignal(sig) is _handler:
            _sig.signal(sig, prev)
        del _previous[sig]


def install() -> None:
    """Handle SIGINT and SIGTERM as Interruptions for the rest of the process (the CLI's start).

    orjson is loaded first, with both signals held: its module initialisation calls into Python
    (``import json``, ...) without checking for errors, so an Interruption (or Python's own
    KeyboardInterrupt) raised in there crashes the process with SIGSEGV, then or at the next
    ``import orjson``. A signal that arrives meanwhile is delivered when they are released, to
    the handlers just installed: an Interruption raised here."""
    held = _in_main_thread() and hasattr(signal, "pthread_sigmask")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS) if held else None
    try:
        import orjson  # noqa: F401

        if _install() or not _installed_by:
            _installed_by[:] = ["install"]
    finally:
        if before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


class _Nothing:
    """A reusable context manager that does nothing: what critical() and guarded() return where they
    have nothing to do (any thread but the main one, or handlers already in place), without building a
    generator-based context manager on every transaction."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()


def critical(outcome: str | None = "committed") -> Any:
    """Hold SIGINT/SIGTERM until the block ends (the rename and the directory fsync), then deliver
    the first one held: an Interruption whose ``outcome`` is set to ``outcome`` if the block completed."""
    if not _in_main_thread() or _sig.getsignal(signal.SIGTERM) is not _handler:
        return _NOTHING  # our handler is not installed here: nothing to hold
    return _Critical(outcome)


class _Critical:
    """critical()'s section: a class, not a generator-based context manager (it runs on every write)."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: str | None) -> None:
        self.outcome = outcome

    def __enter__(self) -> None:
        global _critical
        _critical += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        global _critical
        _critical -= 1
        if not _critical and _pending:
            _deliver_held(exc_type is None, self.outcome)


def _deliver_held(ok: bool, outcome: str | None) -> None:
    """Deliver the first signal held through a block that ended (``ok``: without an error) as an
    Interruption whose ``outcome`` is set to ``outcome``. If the block failed, its error (an
    unknown-outcome fsync failure, a failed write) is the news and already ends the command: the held
    signal is dropped rather than hide that error."""
    signum = _pending.pop(0)
    _pending.clear()
    if ok:
        try:
            _deliver(signum, None)
        except Interruption as e:
            if outcome:
                e.outcome = outcome
            raise


def interrupted(e: KeyboardInterrupt, what: str, committed: str | None = None, locked: bool = True) -> Interrupted:
    """The Interrupted error for an Interruption (or a plain KeyboardInterrupt: SIGINT) during ``what``.

    ``committed``: the sentence saying what was committed, if the write completed (else it was
    abandoned); ``locked``: whether the lock had been acquired (and is now released)."""
    signum = getattr(e, "signal_number", signal.SIGINT)
    name = NAMES.get(signum, f"signal {signum}")
    tail = "; the lock is released" if locked else " (the lock was not acquired)"
    if committed is not None:
        msg = f"interrupted by {name} after the {what} completed: {committed}{tail}"
        outcome = "committed"
    else:
        msg = (f"interrupted by {name}; the {what} was abandoned before it replaced anything: "
               f"the stored state is unchanged{tail}")
        outcome = "abandoned"
    return Interrupted(msg, signal_number=signum, outcome=outcome)


def guarded() -> Any:
    """Install the handlers for the block if nobody has (restored after it)."""
    if _in_place() or not _in_main_thread():
        return _NOTHING  # installed already (the CLI, or an enclosing block), or a thread that cannot install them
    return _Guarded()


def _in_place() -> bool:
    """The handlers are installed for the process (the CLI) or by a block still open (see _Guarded)."""
    return bool(_installed_by) and (_installed_by[0] != "guarded" or _ours())


def _ours() -> bool:
    """Every signal that _install() would take is ours (a signal can cut _uninstall() short between two)."""
    for sig in SIGNALS:
        current = _sig.getsignal(sig)
        if current is not _handler and current != signal.SIG_IGN and current is not None:
            return False
    return True


class _Guarded:
    """guarded()'s block: a class, not a generator-based context manager (it runs on every write).

    A signal that lands inside its own entry or exit (Python checks for one each time a call returns,
    and as a function starts) is deferred, not raised there, where it would leave our handlers installed
    with no block open, or a mark of a block that is over: the exit, once the program's handlers are
    back, raises it again (``signal.raise_signal``) for them, unless the block is ending with an error,
    which is then the news (as with critical()). Should a mark or our handlers be left anyway, the next
    block drops the mark, or adopts the handlers (``_previous`` still holds the program's), and puts the
    program's back at its end. So a library program's handlers are never left replaced by ours, nor its
    writes left without ours."""

    __slots__ = ("mine",)

    def __enter__(self) -> None:
        _deferred.clear()
        if _installed_by == ["guarded"]:  # left by a block whose exit was cut short (see above)
            _installed_by.clear()
        self.mine = mine = not _installed_by and (_install() or (bool(_previous) and _ours()))
        if mine:
            _installed_by.append("guarded")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self.mine:
            _uninstall()
            if not _critical:
                _pending.clear()
            _installed_by.clear()
        if _deferred:
            signum = _deferred[0]
            _deferred.clear()
            if exc_type is None:
                signal.raise_signal(signum)  # to the program's handler, back in place


_GUARD_CODES = frozenset({_Guarded.__enter__.__code__, _Guarded.__exit__.__code__})
_INSTALL_CODES = frozenset({_install.__code__, _uninstall.__code__, _ours.__code__})


def held() -> Any:
    """SIGINT and SIGTERM held for a write that is one call whose outcome is known when it returns (a
    PostgreSQL locked_call), in a program that has not installed agentstate's handlers (library use):
    the call runs with both blocked (pthread_sigmask), and one that arrived meanwhile is delivered when
    it returns, to agentstate's handler, as an Interruption whose ``outcome`` is "committed" (the call
    returned) — what guarded() and critical() give, for three system calls and without installing and
    restoring the handlers on every write. A failed call drops the held signal (its error is the news).

    Where the handlers are installed (the CLI, or an enclosing guarded()) or off the main thread:
    nothing here (the write's own critical() holds them). Where other threads run: guarded(), as a
    multi-step write (a mask is per thread: the kernel would hand a process-directed signal to another
    thread, and its default action, or Python's flag for the main thread, would not wait for the call)."""
    if _in_place() or not _in_main_thread() or _sigmask is None or _sigpending is None:
        return _NOTHING
    if threading.active_count() > 1:
        return _Guarded()
    return _Held()


# The C functions, as _sig's: signal.pthread_sigmask and signal.sigpending turn every number of their
# answer into a Signals enum, which doubled held()'s cost (5.2 -> 2.7 us a call, timeit)
_sigmask = getattr(_sig, "pthread_sigmask", None)
_sigpending = getattr(_sig, "sigpending", None)
_SIGNAL_SET = frozenset(SIGNALS)


class _Held:
    __slots__ = ("before",)

    def __enter__(self) -> None:
        self.before = _sigmask(signal.SIG_BLOCK, SIGNALS)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        global _critical
        if not (_SIGNAL_SET & _sigpending()):  # the usual case: nothing arrived (numbers: equal to the enums)
            _sigmask(signal.SIG_SETMASK, self.before)
            return
        mine = _install()  # a signal arrived: delivered to our handler, held as critical() holds it
        if mine:
            _installed_by.append("guarded")
        _critical += 1
        try:
            _sigmask(signal.SIG_SETMASK, self.before)  # the handler runs here: the signal goes to _pending
        finally:
            _critical -= 1
        try:
            if _pending and not _critical:  # the call returned: its outcome is known and committed
                _deliver_held(exc_type is None, "committed")
        finally:
            if mine:  # in _Guarded's order (see there)
                _uninstall()
                _installed_by.clear()


_last_commit: list[Any] = []  # what this process last committed (set by the write paths), for the message


def release_cut_short(lk: Any) -> None:
    """After an Interruption that may have cut a write's own release short (delivered at the first
    bytecode of its ``finally``, before the release ran, or at the entry of ``release()``): release
    ``lk`` (a Lock, or None) now if it is still held, further signals held meanwhile. Else the lock
    would stay held by this process until the Lock is collected, and its record would outlive the process."""
    if lk is not None and lk.held:
        with critical(outcome=None):
            lk.release()


def note_committed(what: str, *args: Any) -> None:
    """A write path says what it committed ("state.json is at serial 5"): a signal that arrives
    afterwards, outside any write, is then reported as arriving after that commit. With ``args``,
    ``what`` is a format string (``what % args``), formatted only if the message is ever needed."""
    _last_commit[:] = [(what, args) if args else what]


def _committed_text() -> str | None:
    if not _last_commit:
        return None
    what = _last_commit[0]
    return what if isinstance(what, str) else what[0] % what[1]


def unknown_outcome(e: KeyboardInterrupt, what: str, where: str) -> Interrupted:
    """The Interrupted error for a signal that cut a COMMIT short after it was sent (its reply unread):
    whether it was committed cannot be known here."""
    signum = getattr(e, "signal_number", signal.SIGINT)
    name = NAMES.get(signum, f"signal {signum}")
    return Interrupted(f"interrupted by {name} while the {what} was committing to {where}: the outcome is unknown "
                       "(run `agentstate sessions show` or `agentstate doctor` to see what is stored)",
                       signal_number=signum, outcome="unknown")


def behind(e: BaseException, link: str = "__cause__", limit: int = 20) -> KeyboardInterrupt | None:
    """The Interruption (or KeyboardInterrupt) that ``e`` was raised from, if any: Python 3.11 re-raises
    one that lands in a ``__set_name__`` (a class statement, a dataclass) as a RuntimeError. ``link``
    "__context__": the one ``e`` replaced while it was being handled (sql/pg_conn.interruption_in).
    At most ``limit`` links are followed (a chain can loop)."""
    cause, seen = getattr(e, link), 0
    while cause is not None and seen < limit:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        cause, seen = getattr(cause, link), seen + 1
    return None


def outside(e: KeyboardInterrupt) -> Interrupted:
    """The Interrupted error for a signal that arrived outside any write (the CLI's last resort)."""
    signum = getattr(e, "signal_number", signal.SIGINT)
    name = NAMES.get(signum, f"signal {signum}")
    if getattr(e, "outcome", None) == "committed":  # held through a COMMIT that completed
        what = _committed_text() or "the write was committed"
        return Interrupted(f"interrupted by {name} after the write completed: {what}",
                           signal_number=signum, outcome="committed")
    if _last_commit:
        return Interrupted(f"interrupted by {name} after the write completed: {_committed_text()}",
                           signal_number=signum, outcome="committed")
    return Interrupted(f"interrupted by {name} outside any write: nothing was written or half-written",
                       signal_number=signum, outcome="abandoned")
