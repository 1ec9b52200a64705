"""What every command group shares: the root group, the global options (declared once, here),
``run()`` (errors to exit codes), and the output helpers.

A command group is a module in ``agentstate/cli/`` with a ``typer.Typer`` named ``app``; its
commands use ``cls=Command`` (readers) or ``cls=WriteCommand`` (commands that take the lock: they
also accept ``--lock-timeout``), and nested groups ``cls=Group``. Each body runs through
``run(lambda o: ...)``, which hands it the resolved :class:`Opts`. Register the module with one
line in ``agentstate/cli/__init__.py``.

The global options are accepted before the command (``agentstate --dir s list``) and after it
(``agentstate list --dir s``); after wins.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import MutableMapping
from typing import Annotated, Any

import typer

try:  # typer >= 0.28 carries its own copy of click: use the one its classes are built on
    from types import SimpleNamespace

    from typer._click import core as _core
    from typer._click import exceptions as _exc
    from typer._click import globals as _globals
    from typer._click import types as _types

    click: Any = SimpleNamespace(
        Command=_core.Command, Context=_core.Context,
        Parameter=_core.Parameter, STRING=_types.STRING, UsageError=_exc.UsageError,
        get_current_context=_globals.get_current_context,
    )
except ImportError:  # pragma: no cover - older typer is built on click itself
    import click  # type: ignore[no-redef]
from typer.core import TyperCommand, TyperGroup, TyperOption

from ..names import is_url, redact_url
from .output import (  # noqa: F401 - the commands import these from here
    _printable,
    compact,
    dumps_pretty,
    emit_json,
    err,
    fancy,
    out,
    page_footer,
    page_json,
    printable,
    write_stdout,
)

EXIT_CODES = (
    "Exit codes: 0 success; 1 error (bad input, I/O failure); 2 usage error (a bad option, argument or "
    "environment variable); 3 lock not acquired within the timeout (or held by a live process); "
    "4 state corrupted with no valid backup; 5 conflict (serial or lineage mismatch, lock ID mismatch, "
    "a newer format); 6 not found; 130/143 interrupted (SIGINT/SIGTERM)."
)

ENVIRONMENT = (
    "Environment: AGENTSTATE_DIR (store directory, default ./.agentstate), AGENTSTATE_URL (a postgresql:// "
    "store instead), AGENTSTATE_PG_SCHEMA (the PostgreSQL schema, default agentstate), AGENTSTATE_TENANT "
    "(sessions and responses only; default: default), AGENTSTATE_LOCK_TIMEOUT (default 30s), "
    "AGENTSTATE_STATEMENT_TIMEOUT (PostgreSQL readers' statement timeout, default 30s; 0: none), "
    "AGENTSTATE_LOG_LEVEL, AGENTSTATE_LOG_FORMAT, AGENTSTATE_CACHE (a Redis hot tier for sessions), "
    "AGENTSTATE_SESSION_TTL (a default time to live for sessions; none unless set); "
    "AGENTSTATE_SERVE_CONFIG is internal (set by `serve --workers` for its worker processes)."
)

# The largest integer both SQL engines store (a signed 64-bit BIGINT): every integer option is checked
# against its own range up front (exit 2), so nothing out of range ever reaches the library or SQL.
MAX_INT = 2**63 - 1

GLOBAL_PANEL = "Global options (before or after the command)"


class UsageError(Exception):
    """A usage error found by agentstate itself (not by the option parser): exit 2."""


# -- the global options, declared once ----------------------------------------------------------------
# (parameter name, flags, kind, metavar, help); kind: "value", "flag" or "count".
_SHARED: tuple[tuple[str, tuple[str, ...], str, str | None, str], ...] = (
    ("g_dir", ("--dir",), "value", "DIR", "Store directory (env AGENTSTATE_DIR; default ./.agentstate)."),
    ("g_url", ("--url",), "value", "URL",
     "A postgresql:// store instead of a directory (env AGENTSTATE_URL); not with --dir."),
    ("g_tenant", ("--tenant",), "value", "TENANT", "Tenant for sessions and responses (env AGENTSTATE_TENANT; "
                                                    "default: default); refused by state commands."),
    ("g_cache", ("--cache",), "value", "URL", "A Redis hot tier in front of the sessions: redis://HOST:PORT/DB or "
                                             "unix:///PATH?db=N (env AGENTSTATE_CACHE)."),
    ("g_json", ("--json",), "flag", None, "Machine-readable output on stdout."),
    ("g_verbose", ("-v", "--verbose"), "count", None, "More logging on stderr: -v info, -vv debug."),
    ("g_log_level", ("--log-level",), "value", "LEVEL",
     "debug, info, warning or error (env AGENTSTATE_LOG_LEVEL; default warning)."),
    ("g_log_format", ("--log-format",), "value", "FORMAT",
     "text or json, one JSON object a line on stderr (env AGENTSTATE_LOG_FORMAT; default text)."),
    ("g_debug", ("--debug",), "flag", None, "Show a traceback on errors."),
)
_TIMEOUT = ("g_lock_timeout", ("--lock-timeout",), "value", "DURATION",
            "How long to wait for the lock: 500ms, 10s, 2m or seconds; 0 = one attempt "
            "(env AGENTSTATE_LOCK_TIMEOUT; default 30s).")
SHARED_NAMES = tuple(s[0] for s in _SHARED) + (_TIMEOUT[0],)
_META = "agentstate.given"


def _shared_params(writing: bool) -> list[click.Parameter]:
    params: list[click.Parameter] = []
    for name, flags, kind, metavar, help in (*_SHARED, *((_TIMEOUT,) if writing else ())):
        if kind == "value":
            p = TyperOption(param_decls=[name, *flags], type=click.STRING, default=None, metavar=metavar,
                            help=help, rich_help_panel=GLOBAL_PANEL)
        elif kind == "flag":
            p = TyperOption(param_decls=[name, *flags], is_flag=True, default=False, help=help,
                            rich_help_panel=GLOBAL_PANEL)
        else:
            p = TyperOption(param_decls=[name, *flags], count=True, default=0, help=help, metavar="",
                            rich_help_panel=GLOBAL_PANEL)
        params.append(p)
    return params


def _refuse_option_values(cmd: click.Command, args: list[str], stop_at_command: bool) -> None:
    """``--delete --dir s`` must not take ``--dir`` as the address: an option that takes a value and is
    followed by something that looks like an option (starts with ``-``, other than ``-`` alone) is refused.
    ``--delete=-x`` still passes a value that starts with a dash."""
    takes_value = set()
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "option" and not getattr(p, "is_flag", False) \
                and not getattr(p, "count", False):
            takes_value.update(p.opts)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return
        if a in takes_value:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and nxt.startswith("-") and nxt != "-":
                raise UsageError(
                    f"{a} needs a value, but the next argument {_printable(nxt)!r} looks like an option; "
                    f"use {a}=VALUE for a value that starts with '-'"
                )
            i += 2
            continue
        if stop_at_command and not a.startswith("-"):
            return
        i += 1


def _take_shared(ctx: click.Context) -> None:
    """Move the global options out of ``ctx.params`` (the callback does not take them) into ctx.meta,
    merged with what an outer group got: a value given later wins, flags add up."""
    given: dict[str, Any] = dict(ctx.meta.get(_META) or {})
    for name in SHARED_NAMES:
        if name not in ctx.params:
            continue
        value = ctx.params.pop(name)
        if name == "g_verbose":
            given[name] = given.get(name, 0) + (value or 0)
        elif name in ("g_json", "g_debug"):
            given[name] = bool(given.get(name)) or bool(value)
        elif value is not None:
            given[name] = value
    ctx.meta[_META] = given


class _Shared:
    writing = False
    _stop_at_command = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.params.extend(_shared_params(self.writing))  # type: ignore[attr-defined]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _refuse_option_values(self, args, self._stop_at_command)  # type: ignore[arg-type]
        return super().parse_args(ctx, args)  # type: ignore[misc]

    def invoke(self, ctx: click.Context) -> Any:
        _take_shared(ctx)
        return super().invoke(ctx)  # type: ignore[misc]


class Command(_Shared, TyperCommand):
    """A command that takes the global options (a reader: no --lock-timeout)."""


class WriteCommand(Command):
    """A command that takes the store's lock: also --lock-timeout."""

    writing = True


class Group(_Shared, TyperGroup):
    """A nested command group (``agentstate lock ...``) that takes the global options too."""

    writing = True
    _stop_at_command = True


# -- the root group ---------------------------------------------------------------------------------


def _usage_message(e: BaseException) -> str:
    if isinstance(e, UsageError):
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


class RootGroup(Group):
    """``agentstate``: usage errors become one ``error:`` line (and a JSON error with --json), exit 2;
    commands are imported only when named (``registry``: command name -> module in agentstate.cli).

    It handles errors itself so that ``agentstate ...`` and ``CliRunner().invoke(app, ...)`` behave alike.
    """

    registry: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.registry)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.registry.get(cmd_name)
        if module is None:
            return None
        cmd = _built.get(cmd_name)
        if cmd is None:
            from importlib import import_module

            cmd = _built[cmd_name] = _build(import_module(f"agentstate.cli.{module}").app, ctx, cmd_name)
        return cmd

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            from difflib import get_close_matches

            close = get_close_matches(args[0], list(self.registry)) if args else []
            if close and "Did you mean" not in e.message:
                e.message = f"{e.message.rstrip('.')}. Did you mean {', '.join(map(repr, close))}?"
            raise

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in (args[: args.index("--")] if "--" in args else args)
        try:
            rc = self._main(args, prog_name or "agentstate", complete_var, extra)
        except KeyboardInterrupt as e:  # SIGINT/SIGTERM outside a command's run(): parsing, importing it, unwinding
            rc = _interrupted(e, as_json)
        except UsageError as e:
            rc = _usage_fail(_usage_message(e), as_json)
        except Exception as e:
            if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click's UsageError and kin
                if isinstance(getattr(e, "exit_code", None), int) and e.exit_code != 2:  # type: ignore[attr-defined]
                    err(e.format_message())  # type: ignore[attr-defined]
                    rc = e.exit_code  # type: ignore[attr-defined]
                else:
                    rc = _usage_fail(_usage_message(e), as_json)
            elif type(e).__name__ == "Abort":
                err("aborted; the stored state is unchanged")
                rc = 1
            else:
                from ..state.signals import behind

                signal = behind(e)
                if signal is None:
                    raise
                rc = _interrupted(signal, as_json)
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

    def _main(self, args: list[str], prog_name: str, complete_var: str | None, extra: dict[str, Any]) -> Any:
        """typer's main() with standalone_mode=False, minus its ``except KeyboardInterrupt: raise Exit(130)``
        (typer >= 0.28; older typer: an Abort): that turned a SIGTERM or SIGINT landing outside a command's
        run() into a silent exit 130, whichever the signal. Here it reaches main() above, which reports it."""
        self._main_shell_completion(extra, prog_name, complete_var)
        try:
            with self.make_context(prog_name, args, **extra) as ctx:
                return self.invoke(ctx)
        except typer.Exit as e:
            return e.exit_code
        except EOFError as e:
            raise typer.Abort() from e
        except BrokenPipeError:  # `agentstate --help | head -1`: as typer does, exit 1 quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


def _interrupted(e: KeyboardInterrupt, as_json: bool) -> int:
    from ..state.signals import outside

    error = outside(e)
    err(str(error))
    if as_json:
        emit_json({"error": error.to_dict()})
    return error.exit_code


_built: dict[str, Any] = {}


def _build(app: typer.Typer, ctx: click.Context, name: str) -> Any:
    """The click command ``name`` of a module's typer ``app``, built alone: typer builds every
    command of a group it converts, and a command runs faster without building its siblings."""
    def named(info: Any) -> str | None:
        if info.name:
            return info.name
        callback = getattr(info, "callback", None)
        return callback.__name__.lower().replace("_", "-") if callback else None

    one = typer.Typer()
    one.registered_commands = [c for c in app.registered_commands if named(c) == name]
    one.registered_groups = [g for g in app.registered_groups if _group_name(g) == name]
    if not one.registered_commands and not one.registered_groups:
        return None
    if one.registered_commands:
        return typer.main.get_group(one).get_command(ctx, name)
    # A group (``sessions``): built without its commands, each of which is built when named (``sessions
    # show`` builds show alone, not its ten siblings: ~15 ms of a command's start-up).
    info = copy.copy(one.registered_groups[0])
    full = info.typer_instance
    info.typer_instance = shell = copy.copy(full)
    shell.registered_commands, shell.registered_groups = [], []
    one.registered_groups = [info]
    group = typer.main.get_group(one).get_command(ctx, name)
    names = [named(c) for c in full.registered_commands] + [_group_name(g) for g in full.registered_groups]
    group.commands = _LazyCommands([n for n in names if n], lambda sub: _build(full, ctx, sub))
    return group


def _group_name(info: Any) -> str | None:
    return info.name or getattr(info.typer_instance.info, "name", None)


class _LazyCommands(MutableMapping):
    """A group's commands (name -> click command), each built the first time it is looked up; the
    names, in their order, are known without building any (help lists them all, and builds them)."""

    def __init__(self, names: list[str], build: Any) -> None:
        self._names = list(dict.fromkeys(names))
        self._build = build
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        cmd = self._built.get(name)
        if cmd is None:
            if name not in self._names:
                raise KeyError(name)
            cmd = self._built[name] = self._build(name)
            if cmd is None:
                del self._built[name]
                raise KeyError(name)
        return cmd

    def __setitem__(self, name: str, cmd: Any) -> None:
        self._built[name] = cmd
        if name not in self._names:
            self._names.append(name)

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Any:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def _usage_fail(message: str, as_json: bool) -> int:
    err(message)
    if as_json:
        emit_json({"error": {"code": "usage", "message": message, "exit_code": 2}})
    return 2


# -- the resolved options ---------------------------------------------------------------------------


class Opts:
    """The global options after merging (before/after the command) and the environment."""

    def __init__(self, given: dict[str, Any]) -> None:
        self._given = given
        self.json: bool = bool(given.get("g_json"))
        self.debug: bool = bool(given.get("g_debug"))
        self.verbose: int = int(given.get("g_verbose") or 0)
        self.dir: str | None = None
        self.url: str | None = None
        self.log_level = "warning"
        self.log_format = "text"

    def _setting(self, name: str, flag: str, env: str) -> tuple[str | None, str]:
        value = self._given.get(name)
        if value is not None:
            return value, flag
        return os.environ.get(env) or None, env

    def resolve(self) -> None:
        """Check every setting (UsageError naming the option or the variable)."""
        from .. import logs

        level, where = self._setting("g_log_level", "--log-level", "AGENTSTATE_LOG_LEVEL")
        if level is not None:
            if level.lower() not in logs.LEVELS:
                raise UsageError(f"{where} must be one of {', '.join(logs.LEVELS)}, not {level!r}")
            self.log_level = level.lower()
        if self.verbose:
            wanted = "info" if self.verbose == 1 else "debug"
            if logs.LEVELS.index(wanted) < logs.LEVELS.index(self.log_level):
                self.log_level = wanted
        fmt, where = self._setting("g_log_format", "--log-format", "AGENTSTATE_LOG_FORMAT")
        if fmt is not None:
            if fmt.lower() not in ("text", "json"):
                raise UsageError(f"{where} must be text or json, not {fmt!r}")
            self.log_format = fmt.lower()
        if self._given.get("g_lock_timeout") is not None:  # an option given is checked even where unused
            self.lock_timeout()
        self.cache  # noqa: B018 - checked here, a usage error
        if os.environ.get("AGENTSTATE_SESSION_TTL"):
            from ..errors import InvalidInput
            from ..sessions.where import env_ttl

            try:
                env_ttl()
            except InvalidInput as e:
                raise UsageError(e.message) from None
        dir_opt, url_opt = self._given.get("g_dir"), self._given.get("g_url")
        if dir_opt is not None and not dir_opt:
            raise UsageError("--dir must not be empty (leave it out for ./.agentstate)")
        if url_opt is not None and not url_opt:
            raise UsageError("--url must not be empty")
        if url_opt is not None and dir_opt is None and not is_url(url_opt):
            raise UsageError(f"--url takes a postgresql:// or postgres:// URL, not {redact_url(url_opt)!r} "
                             "(a directory goes to --dir)")
        if dir_opt is not None and url_opt is not None:
            raise UsageError("--dir and --url cannot be used together: a store is a directory or a URL")
        if dir_opt is not None:
            self.dir = dir_opt
        elif url_opt is not None:
            self.url = url_opt
        else:
            env_dir, env_url = os.environ.get("AGENTSTATE_DIR") or None, os.environ.get("AGENTSTATE_URL") or None
            if env_dir and env_url:
                raise UsageError("AGENTSTATE_DIR and AGENTSTATE_URL are both set: unset one "
                                 "(or pass --dir or --url to choose)")
            if env_url and not is_url(env_url):
                raise UsageError(f"AGENTSTATE_URL takes a postgresql:// or postgres:// URL, not {redact_url(env_url)!r} "
                                 "(a directory goes to AGENTSTATE_DIR)")
            self.dir, self.url = env_dir, env_url
        if self.url is not None:
            from ..errors import InvalidInput
            from ..sql.pg_conn import split_url_options

            if os.environ.get("AGENTSTATE_STATEMENT_TIMEOUT"):
                from ..duration import parse_duration

                try:
                    parse_duration(os.environ["AGENTSTATE_STATEMENT_TIMEOUT"], "statement timeout")
                except InvalidInput as e:
                    raise UsageError(f"AGENTSTATE_STATEMENT_TIMEOUT: {e}") from None
            try:  # the URL's shape and its schema name: a usage error too, before any connection
                split_url_options(self.url)
            except InvalidInput as e:
                raise UsageError(str(e)) from None

    @property
    def cache(self) -> str | None:
        """--cache or AGENTSTATE_CACHE (None: no hot tier); not a cache URL is a usage error."""
        value, where = self._setting("g_cache", "--cache", "AGENTSTATE_CACHE")
        if value is None:
            return None
        if not value.lower().startswith(("redis://", "rediss://", "unix://")):
            raise UsageError(f"{where} takes redis://HOST:PORT/DB, rediss://... or unix:///PATH?db=N, "
                             f"not {redact_url(value)!r}")
        return value

    @property
    def target(self) -> str | None:
        """The store's location as the library takes it: the URL if given, else the directory (None: default)."""
        return self.url if self.url is not None else self.dir

    @property
    def tenant(self) -> str:
        """--tenant or AGENTSTATE_TENANT (default "default"), validated; a bad one is a usage error."""
        from ..errors import InvalidInput
        from ..names import check_tenant

        value, where = self._setting("g_tenant", "--tenant", "AGENTSTATE_TENANT")
        try:
            return check_tenant(value)
        except InvalidInput as e:
            raise UsageError(f"{where}: {e}") from None

    def lock_timeout(self) -> float | None:
        """--lock-timeout or AGENTSTATE_LOCK_TIMEOUT in seconds (None: the default); a bad one is exit 2."""
        from ..duration import parse_duration
        from ..errors import InvalidInput

        value, where = self._setting("g_lock_timeout", "--lock-timeout", "AGENTSTATE_LOCK_TIMEOUT")
        if value is None:
            return None
        try:
            return parse_duration(value, "duration")
        except InvalidInput as e:
            raise UsageError(f"{where}: {e.message}") from None

    def refuse_tenant(self) -> None:
        """A command of the whole store (the state document, its locks, the schema) refuses --tenant."""
        if self._given.get("g_tenant") is not None:
            where = click.get_current_context().command_path
            raise UsageError(f"--tenant does not apply to `{where}`: the state document is shared by the whole "
                             "store (tenants separate sessions and responses only); leave --tenant out")

    def store(self, *, writing: bool = False):
        """The StateStore at --url or --dir; a writer's lock timeout is checked here (a reader takes no lock).
        --tenant is refused: the state document (and its lock) belong to the whole store; AGENTSTATE_TENANT
        is not read here."""
        from ..state.open import open_state

        self.refuse_tenant()
        timeout = self.lock_timeout() if writing else None
        return open_state(self.target, lock_timeout=30.0 if timeout is None else timeout)


def current_opts() -> Opts:
    ctx = click.get_current_context()
    return Opts(dict(ctx.meta.get(_META) or {}))


def emit(o: Opts, value: Any, text: str) -> None:
    """``value`` as JSON with --json, else the line ``text`` (undecodable bytes shown as escapes)."""
    if o.json:
        emit_json(value)
    else:
        out(_printable(text))


def int_option(flag: str, help: str, *, minimum: int = 0, maximum: int = MAX_INT, metavar: str = "N") -> Any:
    """The one way a command declares an integer option: checked against [minimum, maximum] by the
    parser (exit 2, naming the option and its range) before anything runs; MAX_INT at most."""
    return typer.Option(flag, metavar=metavar, min=minimum, max=min(maximum, MAX_INT), help=help)


# --limit and --cursor of the list commands, and how they render a page (.items, .next_cursor, .total).
LimitOpt = Annotated[int, int_option("--limit", "At most N on the page (1-10000).", minimum=1, maximum=10_000)]
CursorOpt = Annotated[str | None, typer.Option("--cursor", metavar="C", help="The next_cursor of a previous page.")]


def on_wait(holder: Any) -> None:
    """Tell a person at a terminal that the command waits for the lock."""
    if sys.stderr.isatty():
        who = holder.describe() if holder else "another process"
        sys.stderr.write(f"waiting for the state lock held by {who} (Ctrl-C to stop)\n")
        sys.stderr.flush()


from .running import run  # noqa: E402,F401 - the commands import run from here; it needs what is above
