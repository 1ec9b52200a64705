"""Rich rendering for people at a terminal. Imported only when stdout is a TTY."""

from __future__ import annotations

from typing import Any

import orjson
from rich.console import Console
from rich.json import JSON
from rich.markup import escape
from rich.table import Table


def state_table(state: Any) -> None:
    console = Console()
    lineage = state.lineage if state.source != "new" else "- (no store yet)"
    console.print(
        f"[bold]serial[/] {state.serial}  [bold]lineage[/] {lineage}  "
        f"[bold]updated[/] {state.updated_at or '-'}"
        + ("  [yellow](served from the backup; `agentstate doctor --repair` restores state.json)[/]"
           if state.source == "backup" else "")
    )
    table = Table("address", "value", show_lines=False)
    for address in sorted(state.resources):
        value = orjson.dumps(state.resources[address], option=orjson.OPT_SORT_KEYS).decode()
        value = value if len(value) < 200 else value[:197] + "..."
        table.add_row(escape(address), escape(value))
    if state.resources:
        console.print(table)
    else:
        console.print("[dim]no resources[/]")


def value(v: Any) -> None:
    Console().print(JSON(orjson.dumps(v, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()))
