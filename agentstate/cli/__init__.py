"""The ``agentstate`` command: a thin typer layer over the library.

Commands live one group per module (state, lock, doctor, ...); conventions in ``common.py``.
A module is imported only when one of its commands runs (or for ``--help``), so a command loads
only what it needs (no rich, psutil or sqlite3 for ``show --json``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .._version import __version__
from .common import ENVIRONMENT, EXIT_CODES, RootGroup, UsageError, out

# Command name -> the module of agentstate.cli that defines it (its ``app``). One line per command group.
RootGroup.registry = {
    **dict.fromkeys(("apply", "plan", "show", "list", "rm"), "state"),
    **dict.fromkeys(("lock", "force-unlock"), "lock"),
    "doctor": "doctor",
    "sessions": "sessions",
    "responses": "responses",
    "migrate": "migrate",
    "serve": "serve",
}

app = typer.Typer(
    name="agentstate",
    cls=RootGroup,
    help="Crash-safe local state for agents and CI.\n\n" + EXIT_CODES + "\n\n" + ENVIRONMENT,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)] = False,
) -> None:
    if version:
        out(f"agentstate {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        raise UsageError(f"missing command ({', '.join(RootGroup.registry)}); see `agentstate --help`")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on ``argv`` (default: sys.argv[1:]); exits (SystemExit) with the documented exit code."""
    from ..state import signals

    try:
        signals.install()  # SIGINT/SIGTERM: a write finishes or is abandoned cleanly; exit 130/143, one line
        typer.main.get_command(app).main(args=sys.argv[1:] if argv is None else argv, prog_name="agentstate")
    except KeyboardInterrupt as e:  # between commands' own handling (parsing, start-up)
        err = signals.outside(e)
        sys.stderr.write(f"error: {err}\n")
        sys.exit(err.exit_code)
    finally:
        # The outcome is decided and reported. Interpreter shutdown puts the default handlers back, so a
        # signal landing from here on would kill the process and replace the documented exit code with a
        # bare "killed by signal": block both; a pending one is discarded when the process exits. One whose
        # handler runs before block() takes effect is dropped as well (it came after the outcome).
        try:
            signals.block()
        except KeyboardInterrupt:
            signals.block()


def console() -> None:
    """The ``agentstate`` console script and ``python -m agentstate``: main(), then the process ends at
    once (_end_process). A program calling main() itself keeps its interpreter."""
    try:
        main()
    except SystemExit as e:
        _end_process(e.code)
        raise


def _end_process(code: object) -> None:
    """End the process now that the command's outcome is reported: atexit handlers (logging's flush...)
    and the flush of stdout/stderr as at a normal exit, but not the interpreter's teardown of every module
    and object, which is ~20 ms of a short command's wall time and does nothing a command needs (its stores
    were closed by the command; the kernel releases descriptors and locks). Returns (the caller raises the
    SystemExit as usual) when that is not certain: another non-daemon thread still running, or an exit
    status that is not a number."""
    import threading

    if not (code is None or type(code) is int) or any(
        t.is_alive() and not t.daemon and t is not threading.main_thread() for t in threading.enumerate()
    ):
        return
    import atexit
    import os

    atexit._run_exitfuncs()
    rc = code or 0
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - as Python's own exit: a failed flush of stdout is status 120
        rc = rc or 120
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(rc)
