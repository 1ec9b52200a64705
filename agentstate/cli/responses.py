"""Response commands: `agentstate responses save|get|chain|list|rm`.

Each is one ResponseStore call (agentstate.responses); these parse, call and render. Every command
takes --max-responses N (the tenant's cap, applied by saves) and --max-item-bytes (saves), so a
script can pass the same options to all of them.
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
    "rebuild a chain (oldest first), list, soft-delete. With --max-responses N, a save that takes the tenant "
    "over N evicts whole least recently used chains (never a part of one).\n\n" + EXIT_CODES,
    no_args_is_help=False,
)
app.add_typer(responses_app, name="responses")

TEXT_WIDTH = 100
MaxOpt = Annotated[int, typer.Option(
    "--max-responses", metavar="N", min=0,
    help="Cap the tenant at N responses: a save over it evicts least recently used whole chains (0 = no cap).")]
ItemBytesOpt = Annotated[int | None, typer.Option(
    "--max-item-bytes", metavar="BYTES", min=1, help="The largest response a save accepts, encoded [default 1 MiB].")]


@responses_app.callback(invoke_without_command=True)
def _responses_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UsageError("missing command (save, get, chain, list, rm); see `agentstate responses --help`")


def _store(o: Opts, max_responses: int = 0, max_item_bytes: int | None = None, writing: bool = False) -> Any:
    from ..responses import DEFAULT_MAX_ITEM_BYTES, ResponseStore

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
    from ..codec import parse_json
    from ..errors import InvalidInput

    if file == "-":
        data = sys.stdin.buffer.read()
        what = "stdin"
    else:
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as e:
            from ..fileio import describe

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
        if o.json:
            emit_json([i.to_dict() for i in infos] if isinstance(value, list) else infos[0].to_dict())
            return
        for info in infos:
            where = "a new chain" if info.previous_response_id is None else \
                f"after {info.previous_response_id} (chain {info.root_id}, {info.depth + 1} responses)"
            out(printable(f"saved {info.id}: {where}"))
            for root in info.evicted:
                out(printable(f"evicted chain {root} (over --max-responses {max_responses})"))

    run(body)


@responses_app.command("get", cls=Command, epilog=EXIT_CODES)
def get(
    response_id: Annotated[str, typer.Argument(metavar="ID")],
    max_responses: MaxOpt = 0,
    include_deleted: Annotated[bool, typer.Option(
        "--include-deleted", help="Also a soft-deleted response (as chains see it).")] = False,
) -> None:
    """Print a response exactly as saved (exit 6 if missing or deleted)."""

    def body(o: Opts) -> None:
        store = _store(o, max_responses)
        response = store.get_for_chain(response_id) if include_deleted else store.get(response_id)
        store.close()
        emit(o, response, dumps_pretty(response))

    run(body)


@responses_app.command("chain", cls=Command, epilog=EXIT_CODES)
def chain(
    response_id: Annotated[str, typer.Argument(metavar="ID")],
    max_responses: MaxOpt = 0,
) -> None:
    """The conversation ending at ID: root first, ID last, soft-deleted links included."""

    def body(o: Opts) -> None:
        store = _store(o, max_responses)
        responses = store.chain(response_id)
        store.close()
        if o.json:
            emit_json(responses)
            return
        for n, r in enumerate(responses, 1):
            out(printable(f"{n:>6}  {r.get('id')}  {_summary(r)}"))

    run(body)


@responses_app.command("list", cls=Command, epilog=EXIT_CODES)
def list_responses(
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    max_responses: MaxOpt = 0,
) -> None:
    """List responses, newest first (soft-deleted ones are left out)."""

    def body(o: Opts) -> None:
        page = _store(o, max_responses).list(limit=limit, cursor=cursor)
        if o.json:
            emit_json(page_json(page, "responses"))
            return
        for r in page.items:
            prev = f"after {r.previous_response_id}" if r.previous_response_id else "root"
            out(printable(f"{r.id}  {r.created_at}  {prev}  {_summary(r)}"))
        out(page_footer(page, "response"))

    run(body)


@responses_app.command("rm", cls=WriteCommand, epilog=EXIT_CODES)
def rm(
    response_id: Annotated[str, typer.Argument(metavar="ID")],
    max_responses: MaxOpt = 0,
) -> None:
    """Soft-delete a response: hidden from get and list, still part of chains (exit 6 if missing or deleted)."""

    def body(o: Opts) -> None:
        _store(o, max_responses, writing=True).delete(response_id)
        emit(o, {"deleted": response_id}, f"deleted {response_id} (it still serves the chains through it)")

    run(body)
