"""State commands: apply, plan, show, list, rm."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import (
    EXIT_CODES,
    Command,
    Opts,
    UsageError,
    WriteCommand,
    compact,
    dumps_pretty,
    emit_json,
    fancy,
    int_option,
    on_wait,
    out,
    printable,
    run,
)

app = typer.Typer()

SET_HELP = (
    "ADDRESS=VALUE, repeatable. VALUE is JSON when it looks like JSON: it starts with { [ \" a digit, - + or ., "
    "or is true, false, null, NaN or Infinity (any case); it must then be valid JSON that can be stored exactly. "
    "Anything else is a plain string (--set note=hello); quote a string that looks like JSON "
    "(--set 'v=\"1.2.3\"')."
)


def _read_spec(spec: str) -> bytes:
    from ..errors import InvalidInput
    from ..state.fileio import describe
    from .inputs import read_document

    if spec == "-":
        return read_document(sys.stdin.buffer, "spec -")
    try:
        with open(spec, "rb") as f:
            return read_document(f, f"spec {spec}")
    except FileNotFoundError:
        raise InvalidInput(f"spec file {spec} does not exist", hint="check the path, or pass - to read stdin") from None
    except IsADirectoryError:
        raise InvalidInput(f"spec {spec} is a directory, not a JSON file", hint="pass a JSON file") from None
    except OSError as e:
        raise InvalidInput(f"cannot read spec {spec}: {describe(e)}", hint="check the file and its permissions") from None


VALUE_WIDTH = 120


def _changes(p: Any) -> list[str]:
    """Each change with its values, as Terraform's plan shows them: + created, ~ updated, - deleted."""
    values = p.values
    lines = [f"+ {a} = {compact(values[a][1], VALUE_WIDTH)}" for a in p.created]
    lines += [f"~ {a}: {compact(values[a][0], VALUE_WIDTH)} -> {compact(values[a][1], VALUE_WIDTH)}"
              for a in p.updated]
    lines += [f"- {a} (was {compact(values[a][0], VALUE_WIDTH)})" for a in p.deleted]
    return lines


def _print_plan(p: Any, verb: str) -> None:
    for line in _changes(p):
        out(line)
    counts = f"{len(p.created)} created, {len(p.updated)} updated, {len(p.deleted)} deleted"
    if verb == "plan":
        out(f"Plan: {counts} (state at serial {p.serial})." if p.changed else f"No changes (serial {p.serial}).")
    else:
        out(f"{verb}: {counts}; serial {p.serial}." if p.changed else f"No changes; serial {p.serial}.")


@app.command(cls=WriteCommand, epilog=EXIT_CODES)
def apply(
    spec: Annotated[str | None, typer.Argument(help="JSON spec file, or - for stdin.", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP, metavar="ADDRESS=VALUE")] = None,
    delete: Annotated[list[str] | None, typer.Option("--delete", help="ADDRESS to delete. Repeatable.",
                                                     metavar="ADDRESS")] = None,
    expect_serial: Annotated[
        int | None, int_option("--expect-serial", "Refuse (exit 5) unless the state is at this serial.")
    ] = None,
) -> None:
    """Make the state's resources equal SPEC's {"resources": {...}}, and/or --set and --delete single ones."""

    def body(o: Opts) -> None:
        from ..state import planner as planning

        if spec is None and not set_ and not delete:
            raise UsageError("nothing to apply: give a SPEC file (or - for stdin), --set or --delete")
        resources = planning.parse_spec(_read_spec(spec), f"spec {spec}") if spec is not None else None
        sets = [planning.parse_assignment(s) for s in set_ or []]
        store = o.store(writing=True)
        p = planning.apply(store, resources=resources, sets=sets, deletes=delete or [], expect_serial=expect_serial,
                           on_wait=on_wait)
        emit_json(p.to_dict()) if o.json else _print_plan(p, "Apply complete")

    run(body)


@app.command(cls=Command, epilog=EXIT_CODES)
def plan(
    spec: Annotated[str | None, typer.Argument(help="JSON spec file, or - for stdin.", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP, metavar="ADDRESS=VALUE")] = None,
    delete: Annotated[list[str] | None, typer.Option("--delete", help="ADDRESS to delete. Repeatable.",
                                                     metavar="ADDRESS")] = None,
) -> None:
    """Show what `apply` with the same SPEC, --set and --delete would change, with old and new values.
    Takes no lock and writes nothing."""

    def body(o: Opts) -> None:
        from ..state import planner as planning

        if spec is None and not set_ and not delete:
            raise UsageError("nothing to plan: give a SPEC file (or - for stdin), --set or --delete")
        resources = planning.parse_spec(_read_spec(spec), f"spec {spec}") if spec is not None else None
        sets = [planning.parse_assignment(s) for s in set_ or []]
        p = planning.plan(o.store(), resources=resources, sets=sets, deletes=delete or [])
        emit_json(p.to_dict()) if o.json else _print_plan(p, "plan")

    run(body)


@app.command(cls=Command, epilog=EXIT_CODES)
def show(address: Annotated[str | None, typer.Argument(help="Show only this resource's value.")] = None) -> None:
    """Show the state (or one resource's value: a string as plain text, anything else as JSON). Takes no lock."""

    def body(o: Opts) -> None:
        if address is not None:
            from ..state.planner import get

            value = get(o.store(), address)
            if o.json:
                emit_json(value)
            elif isinstance(value, str):
                out(printable(value))
            elif fancy():
                from . import render

                render.value(value)
            else:
                out(dumps_pretty(value))
            return
        state = o.store().read()
        if o.json:
            doc = state.to_dict()
            if state.source == "new":  # no store yet: there is no lineage until the first write
                doc["lineage"] = None
            emit_json(doc)
            return
        if fancy():
            from . import render

            render.state_table(state)
            return
        lineage = state.lineage if state.source != "new" else "- (no store yet)"
        out(f"serial: {state.serial}\nlineage: {lineage}\nupdated_at: {state.updated_at or '-'}")
        if state.source == "backup":
            out("source: the backup (state.json is damaged; `agentstate doctor --repair` restores it)")
        out(f"resources: {len(state.resources)}")
        for a in sorted(state.resources):
            out(f"  {a} = {compact(state.resources[a])}")

    run(body)


@app.command("list", cls=Command, epilog=EXIT_CODES)
def list_() -> None:
    """List resource addresses, one a line. Takes no lock."""

    def body(o: Opts) -> None:
        addresses = sorted(o.store().read().resources)
        if o.json:
            emit_json(addresses)
        elif addresses:
            out("\n".join(addresses))

    run(body)


@app.command(cls=WriteCommand, epilog=EXIT_CODES)
def rm(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to remove.")],
    expect_serial: Annotated[int | None, int_option("--expect-serial", "Refuse (exit 5) unless at this serial.")] = None,
) -> None:
    """Remove resources and say what was removed. Exit 6 (and nothing removed) if any address is missing."""

    def body(o: Opts) -> None:
        from ..state import planner as planning

        p = planning.remove(o.store(writing=True), addresses, expect_serial=expect_serial, on_wait=on_wait)
        if o.json:
            emit_json(p.to_dict())
            return
        for line in _changes(p):
            out(line)
        n = len(p.deleted)
        out(f"Removed {n} resource{'s' if n != 1 else ''}; serial {p.serial}.")

    run(body)
