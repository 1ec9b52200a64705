"""Running a command's body: set up logging, call the library, and turn every outcome into the
documented exit code with one `error:` line (and the JSON error with --json); never a traceback
unless --debug."""

from __future__ import annotations

import os
from collections.abc import Callable

import typer

from ..names import redact_url
from .common import Opts, UsageError, click, current_opts
from .output import emit_json, err


def run(body: Callable[[Opts], int | None]) -> None:
    """Resolve the options, configure logging, run ``body(opts)``, and turn every failure into one
    stderr line (and a JSON error with --json) and its exit code."""
    from .. import logs
    from ..errors import AgentStateError

    opts = current_opts()
    code = 0
    try:
        opts.resolve()
        logs.configure(opts.log_level, opts.log_format, lazy=True)  # logging loads at the first record
        if opts.log_level == "debug":
            logs.getLogger("agentstate.cli").debug(
                "%s: store %s", click.get_current_context().command_path,
                redact_url(opts.url) if opts.url is not None else (opts.dir or "./.agentstate (default)"))
        code = body(opts) or 0
    except UsageError as e:
        _fail(opts, "usage", str(e), 2, {})
    except AgentStateError as e:
        from ..hints import add_hint

        add_hint(e)
        _traceback(opts)
        _fail(opts, e.code, _in_group(str(e)), e.exit_code, e.to_dict())
    except KeyboardInterrupt as e:  # SIGINT/SIGTERM outside any write (a write turns it into Interrupted)
        from ..state.lock import release_held
        from ..state.signals import outside

        release_held()  # one that escaped a transaction's clean-up: its lock must not outlive the report
        err = outside(e)
        _fail(opts, err.code, _in_group(str(err)), err.exit_code, err.to_dict())
    except BrokenPipeError:
        os._exit(1)
    except OSError as e:
        _traceback(opts)
        from ..state.fileio import describe

        where = getattr(e, "filename", None)
        if where is None and getattr(e, "agentstate_stdout", False):
            what, check = f"cannot write to stdout: {describe(e)}", "check where the output goes"
        else:
            what = f"cannot access {where}: {describe(e)}" if where else f"I/O error: {describe(e)}"
            check = "check --dir and its permissions"
        _fail(opts, "io_error", _in_group(f"{what}; {check}; the stored state is unchanged"), 1, {})
    except typer.Exit:
        raise
    except Exception as e:  # never a traceback unless --debug
        from ..state.signals import behind, outside

        signal = behind(e)
        if signal is not None:  # SIGINT/SIGTERM, re-raised by Python as another exception
            from ..state.lock import release_held

            release_held()
            error = outside(signal)
            _fail(opts, error.code, _in_group(str(error)), error.exit_code, error.to_dict())
        _traceback(opts)
        _fail(opts, "internal", f"internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)", 1,
              {})
    raise typer.Exit(code)




def _in_group(message: str) -> str:
    """``message`` in the words of the command's group: sessions and responses are not "the stored state"
    (the state document), so their errors say that nothing was changed."""
    ctx = click.get_current_context(silent=True)
    words = (getattr(ctx, "command_path", "") or "").split()
    if len(words) > 1 and words[1] in ("sessions", "responses"):
        return message.replace("the stored state is unchanged", "nothing was changed")
    return message


def _traceback(opts: Opts) -> None:
    if opts.debug:
        import traceback

        traceback.print_exc()


def _fail(opts: Opts, code: str, message: str, exit_code: int, details: dict) -> None:
    err(message)
    if opts.json:
        body = {"code": code, "message": message}
        body.update({k: v for k, v in details.items() if k not in ("code", "message")})
        body["exit_code"] = exit_code
        emit_json({"error": body})
    raise typer.Exit(exit_code)
