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
    """Entry point (the ``agentstate`` console script). Exits with the documented exit code."""
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
