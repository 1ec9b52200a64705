"""Session commands: `agentstate sessions create|append|pop|show|list|update|rm|prune|export|import|cache stats`.

Each is one SessionStore call (agentstate.sessions); these parse, call and render.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import (
    EXIT_CODES,
    Command,
    CursorOpt,
    Group,
    LimitOpt,
    Opts,
    UsageError,
    WriteCommand,
    emit,
    emit_json,
    fancy,
    int_option,
    out,
    page_footer,
    page_json,
    printable,
    run,
    write_stdout,
)

app = typer.Typer()
sessions_app = typer.Typer(
    cls=Group,
    help="Conversation histories (sessions) in the store's agentstate.db: append from many processes at once, "
    "pop the last item, read back the last N items, list, remove, prune, export and import. With --json a "
    "stored item sits under \"data\".\n\n" + EXIT_CODES,
    no_args_is_help=False,
)
app.add_typer(sessions_app, name="sessions")

TEXT_WIDTH = 100


@sessions_app.callback(invoke_without_command=True)
def _sessions_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UsageError("missing command (create, append, pop, show, list, update, rm, prune, export, import, "
                         "cache); "
                         "see `agentstate sessions --help`")


_opened: list[Any] = []  # the stores a command opened, closed when it ends (_run)


def _store(o: Opts, writing: bool = False) -> Any:
    from ..sessions.store import SessionStore

    store = SessionStore(o.target, tenant=o.tenant, lock_timeout=o.lock_timeout() if writing else None,
                         cache=o.cache or "")
    _opened.append(store)
    return store


def _run(body: Any) -> None:
    """common.run, closing the command's stores at its end (not whenever they are collected: an in-process
    caller, e.g. a test's CliRunner, must not keep connections to a file it then replaces)."""

    def closing(o: Opts) -> Any:
        try:
            return body(o)
        finally:
            while _opened:
                _opened.pop().close()

    run(closing)


TtlOpt = Annotated[str | None, typer.Option(
    "--ttl", metavar="DURATION", help="Expire the session this long after this write: 7d, 12h, 30m or seconds "
                                      "(default: AGENTSTATE_SESSION_TTL, else never).")]


def _summary(data: dict[str, Any]) -> str:
    """One line for an item: its text if it is a message, else its type and a compact JSON."""
    from ..sessions.checks import _text_of

    text = _text_of(data.get("content"))
    if text is None:
        import orjson

        text = orjson.dumps(data).decode()
    text = " ".join(text.split())
    return text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 3] + "..."


def _print_items(items: list[Any]) -> None:
    for it in items:
        kind = it.role or str(it.data.get("type") or "item")
        out(printable(f"{it.seq:>6}  {kind:<10} {_summary(it.data)}"))


def _rich_show(info: Any, items: list[Any]) -> None:
    """At a terminal: the session's facts, then its items as a table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    title = escape(info.title) if info.title is not None else "[dim](untitled)[/]"
    console.print(f"[bold]{escape(info.id)}[/]  {title}  [dim]{info.item_count} items, "
                  f"updated {info.updated_at}[/]")
    if not items:
        console.print("[dim]no items[/]")
        return
    table = Table("seq", "role / type", "content")
    for it in items:
        table.add_row(str(it.seq), escape(it.role or str(it.data.get("type") or "item")), escape(_summary(it.data)))
    console.print(table)


def _rich_list(page: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if page.items:
        table = Table("id", "items", "updated", "title")
        for info in page.items:
            table.add_row(escape(info.id), str(info.item_count), info.updated_at,
                          escape(info.title) if info.title is not None else "[dim](untitled)[/]")
        console.print(table)
    console.print(f"[dim]{len(page.items)} of {page.total} session(s)[/]"
                  + (f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""))


def _info_line(info: Any) -> str:
    title = info.title if info.title is not None else "(untitled)"
    return printable(f"{info.id}  {info.item_count} items  updated {info.updated_at}  {title}")


@sessions_app.command("create", cls=WriteCommand, epilog=EXIT_CODES)
def create(
    session_id: Annotated[str | None, typer.Option("--id", help="The session id (default: a new UUID).")] = None,
    title: Annotated[str | None, typer.Option(
        "--title", help="A title of at most 200 characters (default: the first user message).")] = None,
    metadata: Annotated[str | None, typer.Option("--metadata", help="A JSON object kept with the session.")] = None,
    ttl: TtlOpt = None,
) -> None:
    """Create an empty session and print its id (an existing id is a conflict, exit 5)."""

    def body(o: Opts) -> None:
        from ..state.codec import parse_json

        meta = None if metadata is None else parse_json(metadata, "--metadata")
        _check_ttl_option(ttl)
        info = _store(o, True).create(session_id, title=title, metadata=meta, ttl=ttl)
        if o.json:
            emit_json(info.to_dict())
        else:
            out(info.id)

    _run(body)


def _check_ttl_option(ttl: str | None) -> None:
    """A bad --ttl is a usage error (exit 2) naming the option, as a bad --older-than or --lock-timeout."""
    if ttl is None:
        return
    from ..errors import InvalidInput
    from ..sessions.where import check_ttl

    try:
        check_ttl(ttl)
    except InvalidInput as e:
        raise UsageError(f"--ttl: {e.message}") from None


def _read_items(args: list[str], role: str | None, content: str | None) -> list[Any]:
    from ..errors import InvalidInput
    from ..state.codec import parse_json

    items: list[Any] = []
    for i, arg in enumerate(args, 1):
        if arg == "-":
            from .inputs import read_lines

            for n, line in enumerate(read_lines(sys.stdin.buffer, "stdin"), 1):
                if line.strip():
                    items.append(parse_json(line, f"stdin line {n}"))
        else:
            items.append(parse_json(arg, f"ITEM_JSON {i}"))
    if content is not None:
        items.append({"role": role or "user", "content": content})
    elif role is not None:
        raise UsageError("--role needs --content TEXT")
    if not items:
        raise UsageError("nothing to append: give ITEM_JSON arguments, - for JSON lines on stdin, or --content TEXT")
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise InvalidInput(f"item {i} is not a JSON object")
    return items


@sessions_app.command("append", cls=WriteCommand, epilog=EXIT_CODES)
def append(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="The session (created if missing).")],
    item_json: Annotated[list[str] | None, typer.Argument(
        metavar="[ITEM_JSON]...", help="Items as JSON objects; - reads JSON lines from stdin.")] = None,
    role: Annotated[str | None, typer.Option("--role", help="Role of the --content message (default user).")] = None,
    content: Annotated[str | None, typer.Option("--content", help="Append a message with this text.")] = None,
    expect_seq: Annotated[int | None, int_option(
        "--expect-seq", "Append only if the session's last seq is N (else exit 5).")] = None,
    expect_version: Annotated[int | None, int_option(
        "--expect-version", "Append only if the session's version is still N, as `show --json` gave it: "
        "any write since, a pop included, changes it (else exit 5).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="A retry with the same key stores nothing and prints the first append's items.")
    ] = None,
    no_create: Annotated[bool, typer.Option("--no-create", help="Exit 6 if the session does not exist.")] = False,
    ttl: TtlOpt = None,
) -> None:
    """Append items to a session, all in one transaction: all of them or, on any bad item, none."""

    def body(o: Opts) -> None:
        _check_ttl_option(ttl)
        items = _read_items(item_json or [], role, content)
        added = _store(o, True).append(session_id, items, expect_seq=expect_seq, expect_version=expect_version,
                                       idempotency_key=idempotency_key, create=not no_create, ttl=ttl)
        if o.json:
            emit_json({"session_id": session_id, "items": [i.to_dict() for i in added]})
        elif added:
            seqs = f"seq {added[0].seq}" if len(added) == 1 else f"seqs {added[0].seq}-{added[-1].seq}"
            out(printable(f"appended {len(added)} item(s) to {session_id} ({seqs})"))
        else:
            out(printable(f"appended nothing to {session_id}"))

    _run(body)


@sessions_app.command("show", cls=Command, epilog=EXIT_CODES)
def show(
    session_id: Annotated[str, typer.Argument(metavar="ID")],
    last: Annotated[int | None, int_option("--last", "Only the last N items.")] = None,
) -> None:
    """Show a session and its items, oldest first."""

    def body(o: Opts) -> None:
        info, items = _store(o).show(session_id, last=last)
        if o.json:
            emit_json({"session": info.to_dict(), "items": [i.to_dict() for i in items]})
            return
        if fancy():
            _rich_show(info, items)
            return
        out(_info_line(info))
        _print_items(items)

    _run(body)


@sessions_app.command("list", cls=Command, epilog=EXIT_CODES)
def list_sessions(
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    where: Annotated[list[str] | None, typer.Option(
        "--where", metavar="KEY=VALUE", help="Only sessions whose metadata has KEY equal to the string VALUE "
                                             "(KEY:=JSON for a number or boolean); repeat: all must match.")] = None,
) -> None:
    """List sessions, most recently updated first (expired ones are gone)."""

    def body(o: Opts) -> None:
        from ..errors import InvalidInput
        from ..sessions.where import check_where, parse_where

        try:  # a malformed --where is a usage error (exit 2), as any bad option value
            conditions = parse_where(where) if where else None
            if conditions:
                check_where(conditions)
        except InvalidInput as e:
            raise UsageError(e.message if e.message.startswith("--where") else f"--where: {e.message}") from None
        page = _store(o).list(limit=limit, cursor=cursor, where=conditions)
        if o.json:
            emit_json(page_json(page, "sessions"))
            return
        if fancy():
            _rich_list(page)
            return
        for info in page.items:
            out(_info_line(info))
        out(page_footer(page, "session"))

    _run(body)


@sessions_app.command("pop", cls=WriteCommand, epilog=EXIT_CODES)
def pop(session_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Remove the session's last item and print it (its seq is free again); nothing if the session is empty."""

    def body(o: Opts) -> None:
        item = _store(o, True).pop(session_id)
        if o.json:
            emit_json({"session_id": session_id, "items": [item.to_dict()] if item else []})
        elif item is None:
            out(printable(f"{session_id} is empty: nothing to pop"))
        else:
            out(printable(f"popped seq {item.seq} from {session_id}"))
            _print_items([item])

    _run(body)


@sessions_app.command("update", cls=WriteCommand, epilog=EXIT_CODES)
def update(
    session_id: Annotated[str, typer.Argument(metavar="ID")],
    metadata: Annotated[str, typer.Option("--metadata", metavar="JSON",
                                          help="The session's new metadata: a JSON object (null clears it).")],
) -> None:
    """Replace a session's metadata (what --where finds it by)."""

    def body(o: Opts) -> None:
        from ..state.codec import parse_json

        info = _store(o, True).update_metadata(session_id, parse_json(metadata, "--metadata"))
        emit(o, info.to_dict(), f"updated session {info.id}")

    run(body)


@sessions_app.command("rm", cls=WriteCommand, epilog=EXIT_CODES)
def rm(session_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="The sessions to delete.")]) -> None:
    """Delete sessions and all their items, in one transaction: all of them, or none if any is missing (exit 6)."""

    def body(o: Opts) -> None:
        ids = _store(o, True).delete(*session_ids)
        emit(o, {"deleted": ids}, "\n".join(printable(f"removed session {sid}") for sid in ids))

    _run(body)


def check_prune_age(older_than: str, yes: bool, dry_run: bool, what: str) -> None:
    """An age of 0 would delete every one of the tenant's {what}: refused (exit 2) without --yes."""
    from ..duration import parse_duration
    from ..errors import InvalidInput

    try:
        seconds = parse_duration(older_than, "age")
    except InvalidInput as e:
        raise UsageError(f"--older-than: {e.message}") from None
    if seconds == 0 and not yes and not dry_run:
        raise UsageError(f"--older-than {older_than} would delete every one of the tenant's {what}; nothing was "
                         "deleted: add --yes to mean it, or --dry-run to see them")


@sessions_app.command("prune", cls=WriteCommand, epilog=EXIT_CODES)
def prune(
    older_than: Annotated[str | None, typer.Option(
        "--older-than", metavar="AGE", help="Also delete sessions not updated for AGE: 30d, 12h, 90m or seconds.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Needed with an AGE of 0 (every session of the tenant).")
                   ] = False,
) -> None:
    """Delete whole sessions that have expired (--ttl), and those not updated for a while (--older-than);
    --dry-run only lists them."""

    def body(o: Opts) -> None:
        if older_than is not None:
            check_prune_age(older_than, yes, dry_run, "sessions")
        ids = _store(o, not dry_run).prune(older_than, dry_run=dry_run)
        if dry_run:
            emit(o, {"would_delete": ids, "dry_run": True},
                 "\n".join([f"would prune {len(ids)} session(s) (dry run: nothing deleted)"]
                           + [printable(f"- {sid}") for sid in ids]))
        else:
            emit(o, {"deleted": ids}, "\n".join([f"pruned {len(ids)} session(s)"] + [printable(f"- {sid}") for sid in ids]))

    _run(body)


OutputOpt = Annotated[str | None, typer.Option(
    "-o", "--output", metavar="FILE", help="Write to FILE (created 0600, replaced whole once complete; a device or "
    "FIFO is written to) instead of stdout.")]


def write_lines(lines: Any, output: str | None) -> None:
    """JSON lines to stdout, or to ``output``: a new 0600 file beside it, fsynced, then renamed over it, so
    FILE is either the old one or the whole export, never a part. A path that leads to something other than
    a regular file (a device such as /dev/stdout, a FIFO) is written to as it is, never replaced."""
    lines = iter(lines)
    if output is None:
        first = next(lines)  # the header: a missing session fails before any output
        chunk, size = [first], len(first)
        for line in lines:  # streamed: memory does not grow with the session
            chunk.append(line)
            size += len(line)
            if size >= 1 << 20:
                write_stdout(b"".join(chunk))
                chunk, size = [], 0
        write_stdout(b"".join(chunk))
        return
    import os
    import stat

    from ..errors import StorageError
    from ..state.fileio import describe

    try:
        st = os.stat(output)  # what the path leads to (/dev/stdout is a symlink to a descriptor)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise StorageError(f"cannot write {output}: it is a directory; nothing was written", hint="name a file")
    if st is not None and not stat.S_ISREG(st.st_mode):  # a device, a FIFO...: written to, never replaced
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CLOEXEC)
            with os.fdopen(fd, "wb") as f:
                for line in lines:
                    f.write(line)
        except OSError as e:
            raise StorageError(f"cannot write {output}: {describe(e)}", hint="check the device or the path") from None
        return
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StorageError(f"cannot write {output}: {describe(e)}; nothing was written",
                           hint="check the path and its permissions") from None
    try:
        with os.fdopen(fd, "wb") as f:
            for line in lines:
                f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise StorageError(f"cannot write {output}: {describe(e)}; it is unchanged",
                               hint="check the disk and the path") from None
        raise


@sessions_app.command("export", cls=Command, epilog=EXIT_CODES)
def export(session_id: Annotated[str, typer.Argument(metavar="ID")], output: OutputOpt = None) -> None:
    """Write a session as JSON lines (a header, then one line per item) to stdout, or to -o FILE."""

    def body(o: Opts) -> None:
        lines = _store(o).export_lines(session_id)  # one snapshot, read in pages as it is written
        try:
            write_lines(lines, output)
        finally:
            lines.close()

    _run(body)


def open_input(file: str) -> Any:
    """``file`` opened for reading (binary) for an import; a path that cannot be opened is the input's
    fault (exit 1 with one line naming it)."""
    from ..errors import InvalidInput
    from ..state.fileio import describe

    try:
        return open(file, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise InvalidInput(f"{file} does not exist", hint="check the path, or pass - to read stdin") from None
    except IsADirectoryError:
        raise InvalidInput(f"{file} is a directory, not a JSON lines file") from None
    except OSError as e:
        raise InvalidInput(f"cannot read {file}: {describe(e)}") from None


@sessions_app.command("import", cls=WriteCommand, epilog=EXIT_CODES)
def import_(
    file: Annotated[str, typer.Argument(metavar="FILE", help="An export (or JSON lines of items); - for stdin.")],
    new_id: Annotated[str | None, typer.Option("--id", metavar="NEW", help="Import under this id.")] = None,
) -> None:
    """Import an exported session as a new session, in one transaction."""

    def body(o: Opts) -> None:

        from .inputs import read_lines

        store = _store(o, True)
        if file == "-":  # read a line at a time, checked before the lock
            info = store.import_lines(read_lines(sys.stdin.buffer, "stdin"), new_id)
        else:
            with open_input(file) as f:
                info = store.import_lines(read_lines(f, file), new_id)
        emit(o, info.to_dict(), f"imported {info.item_count} item(s) into session {info.id}")

    _run(body)


cache_app = typer.Typer(cls=Group, help="The Redis hot tier (--cache URL or AGENTSTATE_CACHE).", no_args_is_help=False)
sessions_app.add_typer(cache_app, name="cache")


@cache_app.callback(invoke_without_command=True)
def _cache_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UsageError("missing command (stats); see `agentstate sessions cache --help`")


@cache_app.command("stats", cls=Command, epilog=EXIT_CODES)
def cache_stats() -> None:
    """Hits, misses, promotions and cached sessions per tenant of this store."""

    def body(o: Opts) -> None:
        from ..cache import stats
        from ..names import default_dir

        url = o.cache
        if url is None:
            raise UsageError("sessions cache stats needs --cache URL (or AGENTSTATE_CACHE)")
        try:
            rows = stats(url, o.target if o.target is not None else default_dir())
        except Exception as e:  # noqa: BLE001 - a Redis failure is one line, exit 1
            from ..errors import StorageError

            raise StorageError(f"cache does not answer: {type(e).__name__}: {e}") from None
        if o.json:
            emit_json({"tenants": rows})
            return
        for r in rows:
            rate = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}"
            out(printable(f"{r['tenant']}  hits {r['hits']}  misses {r['misses']}  hit rate {rate}  "
                          f"promotions {r['promotions']}  keys {r['keys']}"))
        if not rows:
            out("no cached sessions")

    run(body)
