"""The ``agentstate`` command: a thin typer layer over the library.

Each command parses its options, calls one library function and renders the result
(plain or rich text for people, ``--json`` for machines). Heavy imports (rich, psutil)
happen only on the paths that need them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .._version import __version__

EXIT_CODES = (
    "Exit codes: 0 success; 1 error (bad input, I/O failure); 2 usage error; "
    "3 lock not acquired within the timeout; 4 state corrupted with no valid backup; "
    "5 conflict (serial or lineage mismatch, lock ID mismatch, a newer format); 6 not found."
)

ENVIRONMENT = (
    "Environment: AGENTSTATE_DIR (store directory, default ./.agentstate), "
    "AGENTSTATE_LOCK_TIMEOUT (default 30s), AGENTSTATE_LOG_LEVEL, AGENTSTATE_LOG_FORMAT, "
    "AGENTSTATE_LOCK_MODE (auto, flock or soft)."
)
COMMANDS = "apply, plan, show, list, rm, lock status, force-unlock, doctor"


class _UsageError(Exception):
    """A usage error found by agentstate itself (not by the option parser): exit 2."""


def _usage_message(e: BaseException, args: list[str]) -> str:
    if isinstance(e, _UsageError):
        return str(e)
    ctx = getattr(e, "ctx", None)
    where = getattr(ctx, "command_path", None) or "agentstate"
    try:
        text = e.format_message()  # type: ignore[attr-defined]
    except Exception:
        text = ""
    if type(e).__name__ == "NoArgsIsHelpError" or not text.strip() or "\n" in text.strip():
        text = f"missing command for `{where}`"
    return f"{text.strip().rstrip('.')}; see `{where} --help`"


class _Group(TyperGroup):
    """The root command: usage errors become one `error:` line (and a JSON error with --json), exit 2.

    It handles them itself so that ``agentstate ...`` and ``CliRunner().invoke(app, ...)`` behave alike.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in (args[: args.index("--")] if "--" in args else args)
        try:
            rc = super().main(args=args, prog_name=prog_name or "agentstate", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _UsageError as e:
            rc = _usage_fail(_usage_message(e, args), as_json)
        except Exception as e:
            if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click's UsageError and kin
                if isinstance(getattr(e, "exit_code", None), int) and e.exit_code != 2:  # type: ignore[attr-defined]
                    _err(e.format_message())  # type: ignore[attr-defined]
                    rc = e.exit_code  # type: ignore[attr-defined]
                else:
                    rc = _usage_fail(_usage_message(e, args), as_json)
            elif type(e).__name__ == "Abort":
                _err("aborted; the stored state is unchanged")
                rc = 1
            else:
                raise
        rc = rc if isinstance(rc, int) else 0
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (`agentstate list | head -1`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        if standalone_mode:
            sys.exit(rc)
        return rc


def _usage_fail(message: str, as_json: bool) -> int:
    _err(message)
    if as_json:
        _emit_json({"error": {"code": "usage", "message": message, "exit_code": 2}})
    return 2


app = typer.Typer(
    name="agentstate",
    cls=_Group,
    help="Crash-safe local state for agents and CI.\n\n" + EXIT_CODES + "\n\n" + ENVIRONMENT,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
lock_app = typer.Typer(help="Inspect the store's lock.\n\n" + EXIT_CODES, no_args_is_help=False)
app.add_typer(lock_app, name="lock")


@lock_app.callback(invoke_without_command=True)
def _lock_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise _UsageError("missing command: use `agentstate lock status`; see `agentstate lock --help`")


DirOpt = Annotated[
    str | None,
    typer.Option("--dir", envvar="AGENTSTATE_DIR", help="Store directory [default: ./.agentstate]", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
LevelOpt = Annotated[
    str,
    typer.Option("-v", "--log-level", envvar="AGENTSTATE_LOG_LEVEL", help="debug, info, warning or error."),
]
FormatOpt = Annotated[
    str, typer.Option("--log-format", envvar="AGENTSTATE_LOG_FORMAT", help="text or json (JSON lines on stderr).")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")]
TimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--lock-timeout",
        envvar="AGENTSTATE_LOCK_TIMEOUT",
        help="How long to wait for the lock: 500ms, 10s, 2m or seconds; 0 = one attempt. [default: 30s]",
        show_default=False,
    ),
]


class _Opts:
    def __init__(self, dir: str | None, json: bool, log_level: str, log_format: str, debug: bool) -> None:
        self.dir, self.json, self.debug = dir, json, debug
        self.log_level, self.log_format = log_level.lower(), log_format.lower()

    def store(self, lock_timeout: str | None = None, *, writing: bool = False):
        """The store; a writing command's --lock-timeout is checked here (a reader takes no lock)."""
        from ..store import StateStore

        timeout = _timeout(lock_timeout) if writing else 30.0
        return StateStore(self.dir, lock_timeout=timeout)


def _timeout(value: str | None) -> float | None:
    """--lock-timeout (or AGENTSTATE_LOCK_TIMEOUT) in seconds; a bad value is a usage error (exit 2)."""
    if value is None:
        value = os.environ.get("AGENTSTATE_LOCK_TIMEOUT") or None
        if value is None:
            return None
    from ..errors import InvalidInput
    from ..lock import parse_duration

    try:
        return parse_duration(value, "--lock-timeout")
    except InvalidInput as e:
        raise _UsageError(str(e)) from None


def _printable(text: str) -> str:
    """``text`` with undecodable bytes (from a non-UTF-8 argv or file name) shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _out(text: str) -> None:
    text = text if text.endswith("\n") else text + "\n"
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        sys.stdout.write(_printable(text))


def _sanitize(value: Any) -> Any:
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_sanitize(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def _emit_json(value: Any) -> None:
    import orjson

    try:
        data = orjson.dumps(value)
    except TypeError:  # a path or message holding bytes that are not UTF-8
        data = orjson.dumps(_sanitize(value))
    sys.stdout.flush()
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


def _err(message: str) -> None:
    line = " ".join(_printable(str(message)).split())  # one line, always
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()


def _run(opts: _Opts, body: Callable[[], int | None]) -> None:
    """Configure logging, run ``body``, and turn every failure into one stderr line and an exit code."""
    from .. import logs
    from ..errors import AgentStateError

    code = 0
    try:
        if opts.log_level not in logs.LEVELS:
            raise _UsageError(f"--log-level must be one of {', '.join(logs.LEVELS)}, not {opts.log_level!r}")
        if opts.log_format not in ("text", "json"):
            raise _UsageError(f"--log-format must be text or json, not {opts.log_format!r}")
        if opts.dir is not None and not opts.dir:
            raise _UsageError("--dir must not be empty (leave it out for ./.agentstate)")
        logs.configure(opts.log_level, opts.log_format)
        code = body() or 0
    except _UsageError as e:
        _fail(opts, "usage", str(e), 2, {})
    except AgentStateError as e:
        _add_hint(e)
        if opts.debug:
            import traceback

            traceback.print_exc()
        _fail(opts, e.code, str(e), e.exit_code, e.to_dict())
    except KeyboardInterrupt:
        _fail(opts, "interrupted", "interrupted; the stored state is unchanged unless the write had completed", 130, {})
    except BrokenPipeError:
        os._exit(1)
    except OSError as e:
        if opts.debug:
            import traceback

            traceback.print_exc()
        from ..fileio import describe

        where = getattr(e, "filename", None)
        what = f"cannot access {where}: {describe(e)}" if where else f"I/O error: {describe(e)}"
        _fail(opts, "io_error", f"{what}; check --dir and its permissions; the stored state is unchanged", 1, {})
    except Exception as e:  # never a traceback unless --debug
        if opts.debug:
            import traceback

            traceback.print_exc()
        _fail(opts, "internal", f"internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)", 1, {})
    raise typer.Exit(code)


ADDRESS_RULE = "an address is 1 to 256 characters, valid UTF-8, without control characters"


def _add_hint(e: Any) -> None:
    """Give a bad-input error without a hint one that says what to do next."""
    from ..errors import InvalidInput

    if not isinstance(e, InvalidInput) or e.hint:
        return
    msg = e.message
    if msg.startswith("address"):
        e.hint = ADDRESS_RULE
    elif msg.startswith("spec"):
        e.hint = 'fix the spec: strict JSON shaped {"resources": {ADDRESS: VALUE, ...}}'
    elif msg.startswith("--set"):
        e.hint = "use --set ADDRESS=VALUE"
    elif "64-bit" not in msg:
        e.hint = "fix the input and retry; the stored state is unchanged"


def _fail(opts: _Opts, code: str, message: str, exit_code: int, details: dict) -> None:
    _err(message)
    if opts.json:
        body = {"code": code, "message": message}
        body.update({k: v for k, v in details.items() if k not in ("code", "message")})
        body["exit_code"] = exit_code
        _emit_json({"error": body})
    raise typer.Exit(exit_code)


def _on_wait(holder: Any) -> None:
    if sys.stderr.isatty():
        who = holder.describe() if holder else "another process"
        sys.stderr.write(f"waiting for the state lock held by {who} (Ctrl-C to stop)\n")
        sys.stderr.flush()


def _fancy() -> bool:
    return sys.stdout.isatty()


def _dumps_pretty(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _read_spec(spec: str) -> bytes:
    from ..errors import InvalidInput
    from ..fileio import describe

    if spec == "-":
        return sys.stdin.buffer.read()
    try:
        with open(spec, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InvalidInput(f"spec file {spec} does not exist", hint="check the path, or pass - to read stdin") from None
    except IsADirectoryError:
        raise InvalidInput(f"spec {spec} is a directory, not a JSON file", hint="pass a JSON file") from None
    except OSError as e:
        raise InvalidInput(f"cannot read spec {spec}: {describe(e)}", hint="check the file and its permissions") from None


def _print_plan(p: Any, verb: str) -> None:
    for sign, items in (("+", p.created), ("~", p.updated), ("-", p.deleted)):
        for a in items:
            _out(f"{sign} {a}")
    counts = f"{len(p.created)} created, {len(p.updated)} updated, {len(p.deleted)} deleted"
    if verb == "plan":
        _out(f"Plan: {counts} (state at serial {p.serial})." if p.changed else f"No changes (serial {p.serial}).")
    else:
        _out(f"{verb}: {counts}; serial {p.serial}." if p.changed else f"No changes; serial {p.serial}.")


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)] = False,
) -> None:
    if version:
        _out(f"agentstate {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        raise _UsageError(f"missing command ({COMMANDS}); see `agentstate --help`")


@app.command(epilog=EXIT_CODES)
def apply(
    spec: Annotated[str | None, typer.Argument(help="JSON spec file, or - for stdin.", show_default=False)] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="ADDRESS=VALUE (JSON, else a string). Repeatable.")
    ] = None,
    delete: Annotated[list[str] | None, typer.Option("--delete", help="ADDRESS to delete. Repeatable.")] = None,
    expect_serial: Annotated[
        int | None, typer.Option("--expect-serial", help="Refuse (exit 5) unless the state is at this serial.")
    ] = None,
    lock_timeout: TimeoutOpt = None,
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """Make the state's resources equal SPEC's {"resources": {...}}, and/or --set and --delete single ones."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> None:
        from .. import planner as planning

        if spec is None and not set_ and not delete:
            raise _UsageError("nothing to apply: give a SPEC file (or - for stdin), --set or --delete")
        resources = planning.parse_spec(_read_spec(spec), f"spec {spec}") if spec is not None else None
        sets = [planning.parse_assignment(s) for s in set_ or []]
        store = opts.store(lock_timeout, writing=True)
        p = planning.apply(
            store, resources, sets=sets, deletes=delete or [], expect_serial=expect_serial, on_wait=_on_wait
        )
        _emit_json(p.to_dict()) if opts.json else _print_plan(p, "Apply complete")

    _run(opts, body)


@app.command(epilog=EXIT_CODES)
def plan(
    spec: Annotated[str, typer.Argument(help="JSON spec file, or - for stdin.")],
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """Show what `apply SPEC` would change. Takes no lock and writes nothing."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> None:
        from .. import planner as planning

        resources = planning.parse_spec(_read_spec(spec), f"spec {spec}")
        p = planning.plan(opts.store(), resources)
        _emit_json(p.to_dict()) if opts.json else _print_plan(p, "plan")

    _run(opts, body)


@app.command(epilog=EXIT_CODES)
def show(
    address: Annotated[str | None, typer.Argument(help="Show only this resource's value.")] = None,
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """Show the state (or one resource). Takes no lock."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> None:
        from ..errors import NotFound

        if address is not None:
            from ..codec import check_address

            check_address(address)
        state = opts.store().read()
        if address is not None:
            if address not in state.resources:
                raise NotFound(f"no resource at {address!r}", hint="`agentstate list` shows the addresses")
            value = state.resources[address]
            if opts.json:
                _emit_json(value)
            elif _fancy():
                from . import render

                render.value(value)
            else:
                _out(_dumps_pretty(value))
            return
        if opts.json:
            doc = state.to_dict()
            if state.source == "new":  # no store yet: there is no lineage until the first write
                doc["lineage"] = None
            _emit_json(doc)
            return
        if _fancy():
            from . import render

            render.state_table(state)
            return
        lineage = state.lineage if state.source != "new" else "- (no store yet)"
        _out(f"serial: {state.serial}\nlineage: {lineage}\nupdated_at: {state.updated_at or '-'}")
        if state.source == "backup":
            _out("source: the backup (state.json is damaged; `agentstate doctor --repair` restores it)")
        _out(f"resources: {len(state.resources)}")
        import orjson

        for a in sorted(state.resources):
            _out(f"  {a} = {orjson.dumps(state.resources[a], option=orjson.OPT_SORT_KEYS).decode()}")

    _run(opts, body)


@app.command("list", epilog=EXIT_CODES)
def list_(
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """List resource addresses, one a line. Takes no lock."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> None:
        addresses = sorted(opts.store().read().resources)
        if opts.json:
            _emit_json(addresses)
        elif addresses:
            _out("\n".join(addresses))

    _run(opts, body)


@app.command(epilog=EXIT_CODES)
def rm(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to remove.")],
    expect_serial: Annotated[int | None, typer.Option("--expect-serial", help="Refuse (exit 5) unless at this serial.")] = None,
    lock_timeout: TimeoutOpt = None,
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """Remove resources. Exit 6 (and nothing removed) if any address is missing."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> None:
        from .. import planner as planning

        p = planning.remove(opts.store(lock_timeout, writing=True), addresses, expect_serial=expect_serial, on_wait=_on_wait)
        _emit_json(p.to_dict()) if opts.json else _print_plan(p, "Removed")

    _run(opts, body)


@lock_app.command("status", epilog=EXIT_CODES)
def lock_status(
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """Show whether the lock is free or held, by whom, and whether the holder looks alive."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> None:
        from ..lock import Holder

        st = opts.store().lock_status()
        if opts.json:
            _emit_json(st)
            return
        if not st["held"]:
            _out(f"free ({st['path']})")
            if st["last_holder"]:
                h = Holder.parse(__import__("orjson").dumps(st["last_holder"]))
                _out(f"last holder, which did not release: {h.describe() if h else '?'}")
            return
        h = Holder.parse(__import__("orjson").dumps(st["holder"])) if st["holder"] else None
        alive = {True: "alive", False: "not running", None: "cannot tell (another host or namespace)"}[st["holder_alive"]]
        _out(f"held by {h.describe() if h else 'an unknown holder'}")
        _out(f"holder process: {alive}" + ("; the lock looks stale" if st["stale"] else ""))
        if h:
            _out(f"to remove it: agentstate force-unlock {h.lock_id}")

    _run(opts, body)


@app.command("force-unlock", epilog=EXIT_CODES)
def force_unlock(
    lock_id: Annotated[str, typer.Argument(help="The lock ID from the lock error or `agentstate lock status`.")],
    force: Annotated[bool, typer.Option("--force", help="Unlock even if the holder is alive on this host.")] = False,
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """Remove the lock, only if LOCK_ID names its current holder (and, without --force, that holder is dead)."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> None:
        holder = opts.store().force_unlock(lock_id, force=force)
        if opts.json:
            _emit_json({"unlocked": True, "holder": holder})
        else:
            _out(f"unlocked: removed the lock of PID {holder['pid']} on {holder['hostname']} (lock ID {lock_id})")

    _run(opts, body)


@app.command(epilog=EXIT_CODES)
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="Persist a recovery: restore state.json from the backup, "
                                                          "keep the bad file aside, remove stray temp files.")] = False,
    lock_timeout: TimeoutOpt = None,
    dir: DirOpt = None,
    json: JsonOpt = False,
    log_level: LevelOpt = "warning",
    log_format: FormatOpt = "text",
    debug: DebugOpt = False,
) -> None:
    """Check the state, backup, lock and stray temp files; exit 1 if any is bad (4 if no valid state)."""
    opts = _Opts(dir, json, log_level, log_format, debug)

    def body() -> int:
        store = opts.store(lock_timeout, writing=repair)
        repaired = None
        if repair:
            repaired = store.repair().serial
        findings = store.check()
        bad = [f for f in findings if not f["ok"]]
        by_check = {f["check"]: f for f in findings}
        state_bad = not by_check.get("state", {"ok": True})["ok"]
        backup = by_check.get("backup", {})
        unrecoverable = state_bad and not (backup.get("ok") and "serial" in backup)  # no valid version left
        if opts.json:
            _emit_json({"ok": not bad, "repaired_serial": repaired, "findings": findings})
        else:
            for f in findings:
                _out(f"{'ok ' if f['ok'] else 'BAD'}  {f['check']}: {f['detail']}")
            if repaired is not None:
                _out(f"repaired: state is valid at serial {repaired}")
            if bad and not repair:
                _out("run `agentstate doctor --repair` to restore from the backup and clean up")
        if not bad:
            return 0
        return 4 if unrecoverable else 1

    _run(opts, body)


def main(argv: list[str] | None = None) -> None:
    """Entry point (the ``agentstate`` console script). Exits with the documented exit code."""
    typer.main.get_command(app).main(args=sys.argv[1:] if argv is None else argv, prog_name="agentstate")
