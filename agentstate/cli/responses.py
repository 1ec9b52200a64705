"""Response commands: `agentstate responses save|get|chain|list|rm|prune|export|import`.

Each is one ResponseStore call (agentstate.responses); these parse, call and render. --max-responses N
(the tenant's cap) and --max-item-bytes are offered only where they act: on the commands that save
(save, import). With --json, a stored response sits under "data" (as a session item does).
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
    dumps_pretty,
    emit,
    emit_json,
    int_option,
    out,
    page_footer,
    page_json,
    printable,
    run,
)

app = typer.Typer()
responses_app = typer.Typer(
    cls=Group,
    help="OpenAI Responses-API objects in the store's agentstate.db, chained by previous_response_id: save, get, "
    "rebuild a chain (oldest first), list, soft-delete, prune whole chains, export and import. With --max-responses "
    "N, a save that takes the tenant over N evicts whole least recently used chains (never a part of one). With "
    "--json a stored response sits under \"data\".\n\n" + EXIT_CODES,
    no_args_is_help=False,
)
app.add_typer(responses_app, name="responses")

TEXT_WIDTH = 100
MaxOpt = Annotated[int, int_option(
    "--max-responses",
    "Cap the tenant at N responses: a save over it evicts least recently used whole chains (0 = no cap).")]
ItemBytesOpt = Annotated[int | None, int_option(
    "--max-item-bytes", "The largest response a save accepts, encoded [default 1 MiB].", minimum=1,
    metavar="BYTES")]


@responses_app.callback(invoke_without_command=True)
def _responses_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UsageError("missing command (save, get, chain, list, rm, prune, export, import); "
                         "see `agentstate responses --help`")


def _store(o: Opts, max_responses: int = 0, max_item_bytes: int | None = None, writing: bool = False) -> Any:
    from ..responses.store import DEFAULT_MAX_ITEM_BYTES, ResponseStore

    return ResponseStore(o.target, tenant=o.tenant, max_responses=max_responses,
                         max_item_bytes=max_item_bytes or DEFAULT_MAX_ITEM_BYTES,
                         lock_timeout=o.lock_timeout() if writing else None)


def _summary(response: dict[str, Any]) -> str:
    """One line for a response: its output text if it has some, else compact JSON."""
    import orjson

    texts: list[str] = []
    output = response.get("output")
    for item in output if isinstance(output, list) else []:
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    text = " ".join(texts) if texts else orjson.dumps(response).decode()
    text = " ".join(text.split())
    return text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 3] + "..."


def _read(file: str) -> Any:
    from ..errors import InvalidInput
    from ..state.codec import parse_json
    from .inputs import read_document

    if file == "-":
        data = read_document(sys.stdin.buffer, "stdin")
        what = "stdin"
    else:
        try:
            with open(file, "rb") as f:
                data = read_document(f, file)
        except OSError as e:
            from ..state.fileio import describe

            raise InvalidInput(f"cannot read {file}: {describe(e)}") from None
        what = file
    value = parse_json(data, what)
    if isinstance(value, list):
        if not value:
            raise InvalidInput(f"{what} holds an empty list: nothing to save")
        return value
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must hold a JSON object (a response) or a list of them")
    return value


@responses_app.command("save", cls=WriteCommand, epilog=EXIT_CODES)
def save(
    file: Annotated[str, typer.Argument(metavar="FILE|-", help="A response as a JSON object (or a list of them, "
                                        "saved in one transaction); - reads stdin.")],
    max_responses: MaxOpt = 0,
    max_item_bytes: ItemBytesOpt = None,
) -> None:
    """Save a response (exit 5 if its id exists, 6 if its previous_response_id does not)."""

    def body(o: Opts) -> None:
        value = _read(file)
        store = _store(o, max_responses, max_item_bytes, writing=True)
        infos = store.save_many(value) if isinstance(value, list) else [store.save(value)]
        _print_saved(o, infos, max_responses)

    run(body)


def _print_saved(o: Opts, infos: list[Any], max_responses: int) -> None:
    """A save's report, the same shape whatever the number of responses: {"saved": [info, ...]}."""
    if o.json:
        emit_json({"saved": [i.to_dict() for i in infos]})
        return
    for info in infos:
        where = "a new chain" if info.previous_response_id is None else \
            f"after {info.previous_response_id} (chain {info.root_id}, {info.depth + 1} responses)"
        out(printable(f"saved {info.id}: {where}"))
        for root in info.evicted:
            out(printable(f"evicted chain {root} (over --max-responses {max_responses})"))


@responses_app.command("get", cls=Command, epilog=EXIT_CODES)
def get(
    response_id: Annotated[str, typer.Argument(metavar="ID")],
    include_deleted: Annotated[bool, typer.Option(
        "--include-deleted", help="Also a soft-deleted response (as chains see it).")] = False,
) -> None:
    """Print a response exactly as saved (exit 6 if missing, or deleted without --include-deleted).
    With --json: the store's facts and the response under "data"."""

    def body(o: Opts) -> None:
        store = _store(o)
        response = store.get_for_chain(response_id) if include_deleted else store.get(response_id)
        if o.json:
            doc = store.info(response_id).to_dict()
            del doc["evicted"]
            doc["data"] = response
            store.close()
            emit_json(doc)
            return
        store.close()
        out(printable(dumps_pretty(response)))

    run(body)


@responses_app.command("chain", cls=Command, epilog=EXIT_CODES)
def chain(
    response_id: Annotated[str, typer.Argument(metavar="ID")],
) -> None:
    """The conversation ending at ID: root first, ID last, soft-deleted links included.
    With --json: {"responses": [{"id", "previous_response_id", "data"}, ...]}."""

    def body(o: Opts) -> None:
        store = _store(o)
        responses = store.chain(response_id)
        store.close()
        if o.json:
            emit_json({"responses": [{"id": r.get("id"), "previous_response_id": r.get("previous_response_id"),
                                      "data": r} for r in responses]})
            return
        for n, r in enumerate(responses, 1):
            out(printable(f"{n:>6}  {r.get('id')}  {_summary(r)}"))

    run(body)


@responses_app.command("list", cls=Command, epilog=EXIT_CODES)
def list_responses(
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    include_deleted: Annotated[bool, typer.Option(
        "--include-deleted", help="Also soft-deleted responses (their deleted_at is set).")] = False,
) -> None:
    """List responses, newest first (soft-deleted ones are left out unless --include-deleted)."""

    def body(o: Opts) -> None:
        page = _store(o).list(limit=limit, cursor=cursor, include_deleted=include_deleted)
        if o.json:
            emit_json(page_json(page, "responses"))
            return
        for r in page.items:
            prev = f"after {r.previous_response_id}" if r.previous_response_id else "root"
            gone = f"  (deleted {r.info.deleted_at})" if r.info.deleted_at else ""
            out(printable(f"{r.id}  {r.created_at}  {prev}{gone}  {_summary(r)}"))
        out(page_footer(page, "response"))

    run(body)


@responses_app.command("rm", cls=WriteCommand, epilog=EXIT_CODES)
def rm(
    response_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="The responses to soft-delete.")],
) -> None:
    """Soft-delete responses, in one transaction: hidden from get and list, still part of chains. All of them,
    or none if any is missing or already deleted (exit 6)."""

    def body(o: Opts) -> None:
        ids = _store(o, writing=True).delete(*response_ids)
        emit(o, {"deleted": ids},
             "\n".join(printable(f"deleted {rid} (it still serves the chains through it)") for rid in ids))

    run(body)


@responses_app.command("prune", cls=WriteCommand, epilog=EXIT_CODES)
def prune(
    older_than: Annotated[str | None, typer.Option(
        "--older-than", metavar="AGE",
        help="Delete whole chains not saved to for AGE (30d, 12h, 90m or seconds; reads do not count).")] = None,
    deleted: Annotated[bool, typer.Option(
        "--deleted", help="Delete whole chains whose every response is soft-deleted.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Needed with an AGE of 0 (every chain of the tenant).")] = False,
) -> None:
    """Delete whole chains for good (never a part of one), in one transaction: --older-than AGE, --deleted, or
    both. Prints the ids of the responses deleted."""

    def body(o: Opts) -> None:
        from .sessions import check_prune_age

        if older_than is None and not deleted:
            raise UsageError("say what to prune: --older-than AGE, --deleted, or both")
        if older_than is not None:
            check_prune_age(older_than, yes, dry_run, "response chains")
        ids = _store(o, writing=not dry_run).prune(older_than, deleted=deleted, dry_run=dry_run)
        if dry_run:
            emit(o, {"would_delete": ids, "dry_run": True},
                 "\n".join([f"would prune {len(ids)} response(s) (dry run: nothing deleted)"]
                           + [printable(f"- {rid}") for rid in ids]))
        else:
            emit(o, {"deleted": ids}, "\n".join([f"pruned {len(ids)} response(s)"] + [printable(f"- {rid}")
                                                                                        for rid in ids]))

    run(body)


@responses_app.command("export", cls=Command, epilog=EXIT_CODES)
def export(
    output: Annotated[str | None, typer.Option(
        "-o", "--output", metavar="FILE",
        help="Write to FILE (created 0600, replaced whole once complete) instead of stdout.")] = None,
) -> None:
    """Write the tenant's responses as JSON lines (a header, then one line per response, oldest first, soft-deleted
    ones included) to stdout, or to -o FILE."""

    def body(o: Opts) -> None:
        from .sessions import write_lines

        write_lines(list(_store(o).export_lines()), output)

    run(body)


@responses_app.command("import", cls=WriteCommand, epilog=EXIT_CODES)
def import_(
    file: Annotated[str, typer.Argument(metavar="FILE", help="An export (or JSON lines of responses); - for stdin.")],
    max_responses: MaxOpt = 0,
    max_item_bytes: ItemBytesOpt = None,
) -> None:
    """Import exported responses into the tenant, in one transaction: all of them, or none (exit 5 if an id is
    already stored). Soft-deleted ones stay soft-deleted."""

    def body(o: Opts) -> None:
        from .inputs import read_lines
        from .sessions import open_input

        store = _store(o, max_responses, max_item_bytes, writing=True)
        if file == "-":
            infos = store.import_lines(read_lines(sys.stdin.buffer, "stdin"))
        else:
            with open_input(file) as f:
                infos = store.import_lines(read_lines(f, file))
        _print_saved(o, infos, max_responses)

    run(body)
