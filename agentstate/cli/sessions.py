"""Session commands: `agentstate sessions create|append|show|list|update|rm|prune|export|import|cache stats`.

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
    out,
    page_footer,
    page_json,
    printable,
    run,
)

app = typer.Typer()
sessions_app = typer.Typer(
    cls=Group,
    help="Conversation histories (sessions) in the store's agentstate.db: append from many processes at once, "
    "read back the last N items, list, prune, export and import.\n\n" + EXIT_CODES,
    no_args_is_help=False,
)
app.add_typer(sessions_app, name="sessions")

TEXT_WIDTH = 100


@sessions_app.callback(invoke_without_command=True)
def _sessions_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UsageError("missing command (create, append, show, list, update, rm, prune, export, import, cache); "
                         "see `agentstate sessions --help`")


def _store(o: Opts, writing: bool = False) -> Any:
    from ..sessions import SessionStore

    return SessionStore(o.target, tenant=o.tenant, lock_timeout=o.lock_timeout() if writing else None,
                        cache=o.cache or "")


TtlOpt = Annotated[str | None, typer.Option(
    "--ttl", metavar="DURATION", help="Expire the session this long after this write: 7d, 12h, 30m or seconds "
                                      "(default: AGENTSTATE_SESSION_TTL, else never).")]


def _summary(data: dict[str, Any]) -> str:
    """One line for an item: its text if it is a message, else its type and a compact JSON."""
    from ..sessions import _text_of

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
    title: Annotated[str | None, typer.Option("--title", help="A title (default: the first user message).")] = None,
    metadata: Annotated[str | None, typer.Option("--metadata", help="A JSON object kept with the session.")] = None,
    ttl: TtlOpt = None,
) -> None:
    """Create an empty session and print its id (an existing id is a conflict, exit 5)."""

    def body(o: Opts) -> None:
        from ..codec import parse_json

        meta = None if metadata is None else parse_json(metadata, "--metadata")
        info = _store(o, True).create(session_id, title=title, metadata=meta, ttl=ttl)
        if o.json:
            emit_json(info.to_dict())
        else:
            out(info.id)

    run(body)


def _read_items(args: list[str], role: str | None, content: str | None) -> list[Any]:
    from ..codec import parse_json
    from ..errors import InvalidInput

    items: list[Any] = []
    for i, arg in enumerate(args, 1):
        if arg == "-":
            for n, line in enumerate(sys.stdin.buffer, 1):
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
    expect_seq: Annotated[int | None, typer.Option(
        "--expect-seq", help="Append only if the session's last seq is N (else exit 5).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="A retry with the same key stores nothing and prints the first append's items.")
    ] = None,
    no_create: Annotated[bool, typer.Option("--no-create", help="Exit 6 if the session does not exist.")] = False,
    ttl: TtlOpt = None,
) -> None:
    """Append items to a session, all in one transaction: all of them or, on any bad item, none."""

    def body(o: Opts) -> None:
        items = _read_items(item_json or [], role, content)
        added = _store(o, True).append(session_id, items, expect_seq=expect_seq, idempotency_key=idempotency_key,
                                       create=not no_create, ttl=ttl)
        if o.json:
            emit_json({"session_id": session_id, "items": [i.to_dict() for i in added]})
        elif added:
            seqs = f"seq {added[0].seq}" if len(added) == 1 else f"seqs {added[0].seq}-{added[-1].seq}"
            out(printable(f"appended {len(added)} item(s) to {session_id} ({seqs})"))
        else:
            out(printable(f"appended nothing to {session_id}"))

    run(body)


@sessions_app.command("show", cls=Command, epilog=EXIT_CODES)
def show(
    session_id: Annotated[str, typer.Argument(metavar="ID")],
    last: Annotated[int | None, typer.Option("--last", metavar="N", help="Only the last N items.")] = None,
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

    run(body)


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
        from ..sessions_where import parse_where

        page = _store(o).list(limit=limit, cursor=cursor, where=parse_where(where) if where else None)
        if o.json:
            emit_json(page_json(page, "sessions"))
            return
        if fancy():
            _rich_list(page)
            return
        for info in page.items:
            out(_info_line(info))
        out(page_footer(page, "session"))

    run(body)


@sessions_app.command("update", cls=WriteCommand, epilog=EXIT_CODES)
def update(
    session_id: Annotated[str, typer.Argument(metavar="ID")],
    metadata: Annotated[str, typer.Option("--metadata", metavar="JSON",
                                          help="The session's new metadata: a JSON object (null clears it).")],
) -> None:
    """Replace a session's metadata (what --where finds it by)."""

    def body(o: Opts) -> None:
        from ..codec import parse_json

        info = _store(o, True).update_metadata(session_id, parse_json(metadata, "--metadata"))
        emit(o, info.to_dict(), f"updated session {info.id}")

    run(body)


@sessions_app.command("rm", cls=WriteCommand, epilog=EXIT_CODES)
def rm(session_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Delete a session and all its items (one transaction)."""

    def body(o: Opts) -> None:
        _store(o, True).delete(session_id)
        emit(o, {"deleted": session_id}, f"removed session {session_id}")

    run(body)


@sessions_app.command("prune", cls=WriteCommand, epilog=EXIT_CODES)
def prune(
    older_than: Annotated[str | None, typer.Option(
        "--older-than", metavar="AGE", help="Also delete sessions not updated for AGE: 30d, 12h, 90m or seconds.")
    ] = None,
) -> None:
    """Delete whole sessions that have expired (--ttl), and those not updated for a while (--older-than)."""

    def body(o: Opts) -> None:
        ids = _store(o, True).prune(older_than)
        emit(o, {"pruned": ids, "count": len(ids)},
             "\n".join([f"pruned {len(ids)} session(s)"] + [f"- {sid}" for sid in ids]))

    run(body)


@sessions_app.command("export", cls=Command, epilog=EXIT_CODES)
def export(session_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Write a session as JSON lines (a header, then one line per item) to stdout."""

    def body(o: Opts) -> None:
        lines = list(_store(o).export_lines(session_id))  # one snapshot, read before anything is written
        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(lines))
        sys.stdout.flush()

    run(body)


@sessions_app.command("import", cls=WriteCommand, epilog=EXIT_CODES)
def import_(
    file: Annotated[str, typer.Argument(metavar="FILE", help="An export (or JSON lines of items); - for stdin.")],
    new_id: Annotated[str | None, typer.Option("--id", metavar="NEW", help="Import under this id.")] = None,
) -> None:
    """Import an exported session as a new session, in one transaction."""

    def body(o: Opts) -> None:
        from ..errors import InvalidInput
        from ..fileio import describe

        if file == "-":
            data = sys.stdin.buffer.read()
        else:
            try:
                with open(file, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise InvalidInput(f"{file} does not exist", hint="check the path, or pass - to read stdin") from None
            except IsADirectoryError:
                raise InvalidInput(f"{file} is a directory, not a JSON lines file") from None
            except OSError as e:
                raise InvalidInput(f"cannot read {file}: {describe(e)}") from None
        info = _store(o, True).import_lines(data.splitlines(), new_id)
        emit(o, info.to_dict(), f"imported {info.item_count} item(s) into session {info.id}")

    run(body)


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
        from ..store import default_dir

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
